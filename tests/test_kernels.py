"""Correctness of every rung of the ladder against a float64 NumPy reference:
shapes (empty, 1, primes, both sides of every block size, deep-learning
shapes), memory layouts (Fortran, transposed, sliced with steps, negative
strides, broadcast, unaligned), ``out=``, the BLAS rules of ``gemm`` (alpha,
beta, trans_a/trans_b, beta == 0 overwrites, alpha == 0 and k == 0 read
neither A nor B), and hypothesis property tests over shapes and strides.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import whygpu

from ._support import (
    BASIC_SHAPES,
    BLOCKED_TILE_SHAPES,
    DTYPES,
    MLP_SHAPES,
    block_edge_shapes,
    blocking_of,
    check_gemm,
    fits,
    gemm_reference,
    make_matrix,
    size_cap,
)

KERNELS = whygpu.available_kernels(device="cpu")  # the CUDA rungs: tests/test_cuda.py
FAST_KERNELS = [k for k in KERNELS if size_cap(k) is None]


def _id(shape):
    return "x".join(map(str, shape))


def _shapes_for(kernel, dtype):
    shapes = BASIC_SHAPES + BLOCKED_TILE_SHAPES + block_edge_shapes(blocking_of(dtype)) + MLP_SHAPES
    return [s for s in dict.fromkeys(shapes) if fits(kernel, s)]


def _cases(shapes_for):
    return [
        pytest.param(kernel, dtype, shape, id=f"{kernel}-{np.dtype(dtype).name}-{_id(shape)}")
        for kernel in KERNELS
        for dtype in DTYPES
        for shape in shapes_for(kernel, dtype)
    ]


def _small_and_edge(kernel, dtype):
    """A small odd shape for every kernel; one crossing mr, nr, kc and nc for the fast ones."""
    shapes = [(7, 9, 11)]
    if size_cap(kernel) is None:
        bk = blocking_of(dtype)
        shapes.append((2 * bk["mr"] + 3, bk["nc"] + 5, bk["kc"] + 3))
    return shapes


# ---- The registry as the tests see it ------------------------------------------------


def test_kernel_lists_are_in_ladder_order():
    names = whygpu.all_kernels()
    assert names[:7] == ["python", "cython", "naive", "reordered", "blocked", "packed", "openmp"]
    assert "python" in KERNELS  # pure Python needs nothing compiled
    assert KERNELS == [k for k in names if k in KERNELS]  # a subset, same order
    for rung, name in enumerate(names[:7], start=1):
        assert whygpu.kernel_info(name).startswith(f"rung {rung} (cpu): ")


# ---- The tolerance is tight enough to catch a real bug -----------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("m,n,k", [(17, 383, 769), (32, 512, 784), (5, 7, 3)])
def test_tolerance_catches_a_dropped_term(rng, dtype, m, n, k):
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    ref = gemm_reference(a, b)[0]
    good = ref.astype(dtype)
    check_gemm(good, a, b)  # the correctly rounded answer passes
    for p in (0, k - 1):  # a kernel that forgets the first or the last product of one dot product
        bad = good.copy()
        bad[m // 2, n // 3] -= dtype(float(a[m // 2, p]) * float(b[p, n // 3]))
        with pytest.raises(pytest.fail.Exception, match="1 of"):
            check_gemm(bad, a, b)


# ---- Shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,dtype,shape", _cases(_shapes_for))
def test_matmul_shapes(rng, kernel, dtype, shape):
    m, n, k = shape
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    got = whygpu.matmul(a, b, kernel=kernel)
    check_gemm(got, a, b)
    assert got.flags.c_contiguous and got.flags.writeable


def test_matmul_accepts_nested_lists():
    got = whygpu.matmul([[1.0, 2.0], [3.0, 4.0]], [[5.0], [6.0]], kernel="packed")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[17.0], [39.0]])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_exact_small_integers(kernel, dtype):
    # Small integers are exact in float32, so every summation order must give the same bits.
    a = np.arange(-12, 12, dtype=dtype).reshape(4, 6)
    b = np.arange(-15, 15, dtype=dtype).reshape(6, 5)[:, ::-1]
    np.testing.assert_array_equal(whygpu.matmul(a, b, kernel=kernel), (a.astype(np.int64) @ b.astype(np.int64)))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_propagates_only_where_it_should(rng, kernel, dtype):
    m, n, k = (9, 35, 13) if size_cap(kernel) is None else (5, 6, 7)
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    a[2, 3] = np.nan  # row 2 of the result is NaN, nothing else (zero padding must not spread it)
    got = whygpu.matmul(a, b, kernel=kernel)
    assert np.isnan(got[2]).all()
    rows = [i for i in range(m) if i != 2]
    check_gemm(got[rows], a[rows], b)


# ---- Layouts ---------------------------------------------------------------------------


def _unaligned(x):
    """A copy of x whose data pointer is off by one byte (not aligned to its item size)."""
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    y = raw[1:].view(x.dtype).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned
    return y


def _broadcast_rows(x):
    """x's first row repeated: a read-only view with row stride 0."""
    return np.broadcast_to(x[:1], x.shape)


def _read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


LAYOUTS = {
    # name: (how to make a, how to make b) from C-contiguous originals
    "F-F": (np.asfortranarray, np.asfortranarray),
    "C-F": (None, np.asfortranarray),
    "F-C": (np.asfortranarray, None),
    "transposed": ("T", "T"),  # passed as x.T of a C-contiguous (k, m) / (n, k) array
    "step2-step3": (dict(step=(2, 3)), dict(step=(3, 2))),
    "neg-rows": (dict(flip=(True, False)), dict(flip=(True, False))),
    "neg-cols": (dict(flip=(False, True)), dict(flip=(False, True))),
    "neg-both-F": (dict(order="F", flip=(True, True)), dict(flip=(True, True), step=(2, 1))),
    "offset-step-F": (dict(order="F", step=(2, 2), offset=1), dict(order="F", step=(1, 3), offset=2)),
    "broadcast-rows": (_broadcast_rows, _broadcast_rows),
    "read-only": (_read_only, _read_only),
    "unaligned": (_unaligned, _unaligned),
}


def _make_operand(rng, shape, dtype, how):
    if isinstance(how, dict):
        return make_matrix(rng, shape, dtype, **how)
    if how == "T":
        return make_matrix(rng, shape[::-1], dtype).T
    x = make_matrix(rng, shape, dtype)
    return x if how is None else how(x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel,dtype,shape", _cases(_small_and_edge))
def test_matmul_layouts(rng, kernel, dtype, shape, layout):
    m, n, k = shape
    how_a, how_b = LAYOUTS[layout]
    a = _make_operand(rng, (m, k), dtype, how_a)
    b = _make_operand(rng, (k, n), dtype, how_b)
    a_before, b_before = a.copy(), b.copy()
    got = whygpu.matmul(a, b, kernel=kernel)
    check_gemm(got, a, b)
    np.testing.assert_array_equal(a, a_before)  # inputs are never written
    np.testing.assert_array_equal(b, b_before)


OUT_KINDS = ["C", "F", "strided", "strided-F", "negative", "transposed-view"]


def _out_view(parent, kind, m, n):
    """The (m, n) view of `parent` that serves as out / c for each kind."""
    if kind == "strided":
        return parent[1::2, 2::3]
    if kind == "strided-F":
        return parent[1::3, ::2]
    if kind == "negative":
        return parent[m:0:-1, n:0:-1]
    if kind == "transposed-view":
        return parent.T
    return parent


def _make_out(kind, m, n, dtype, fill):
    """(out, parent, inside): an (m, n) view `out` of a larger `parent` filled with
    `fill`, and a boolean mask of the parent's cells that belong to out."""
    parent_shape = {
        "strided": (2 * m + 1, 3 * n + 2),
        "strided-F": (3 * m + 1, 2 * n),
        "negative": (m + 2, n + 1),
        "transposed-view": (n, m),
    }.get(kind, (m, n))
    parent = np.full(parent_shape, fill, dtype=dtype, order="F" if kind in ("F", "strided-F") else "C")
    inside = np.zeros(parent_shape, dtype=bool)
    _out_view(inside, kind, m, n)[...] = True
    out = _out_view(parent, kind, m, n)
    assert out.shape == (m, n) and inside.sum() == m * n
    return out, parent, inside


@pytest.mark.parametrize("out_kind", OUT_KINDS)
@pytest.mark.parametrize("kernel,dtype,shape", _cases(_small_and_edge))
def test_matmul_out(rng, kernel, dtype, shape, out_kind):
    m, n, k = shape
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    out, parent, inside = _make_out(out_kind, m, n, dtype, -7.25)
    out[...] = np.nan  # garbage that must be overwritten, never read
    got = whygpu.matmul(a, b, kernel=kernel, out=out)
    assert got is out
    check_gemm(out, a, b)
    assert (parent[~inside] == -7.25).all(), "matmul wrote outside the out view"


@pytest.mark.parametrize("kernel,dtype,shape", _cases(_small_and_edge))
def test_matmul_unaligned_out(rng, kernel, dtype, shape):
    m, n, k = shape
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    raw = np.zeros(m * n * np.dtype(dtype).itemsize + 2, dtype=np.uint8)
    out = raw[1:-1].view(dtype).reshape(m, n)  # data pointer off by one byte
    assert not out.flags.aligned
    out[...] = np.nan
    assert whygpu.matmul(a, b, kernel=kernel, out=out) is out
    check_gemm(out, a, b)
    assert raw[0] == 0 and raw[-1] == 0


# ---- gemm: alpha, beta, transposes -----------------------------------------------------

ALPHA_BETA = [(1.0, 0.0), (-0.75, 0.0), (1.0, 1.0), (2.5, -1.5), (0.5, 1.0)]


def _gemm_cases():
    for kernel in KERNELS:
        for dtype in DTYPES:
            for shape in _small_and_edge(kernel, dtype):
                for ta in (False, True):
                    for tb in (False, True):
                        for alpha, beta in ALPHA_BETA:
                            yield pytest.param(
                                kernel,
                                dtype,
                                shape,
                                ta,
                                tb,
                                alpha,
                                beta,
                                id=(
                                    f"{kernel}-{np.dtype(dtype).name}-{_id(shape)}-{'T' if ta else 'N'}"
                                    f"{'T' if tb else 'N'}-a{alpha}-b{beta}"
                                ),
                            )


@pytest.mark.parametrize("kernel,dtype,shape,trans_a,trans_b,alpha,beta", list(_gemm_cases()))
def test_gemm_alpha_beta_trans(rng, kernel, dtype, shape, trans_a, trans_b, alpha, beta):
    m, n, k = shape
    a = make_matrix(rng, (k, m) if trans_a else (m, k), dtype)
    b = make_matrix(rng, (n, k) if trans_b else (k, n), dtype)
    c0 = make_matrix(rng, (m, n), dtype)
    c = c0.copy()
    if beta == 0.0:
        c[...] = np.nan  # beta == 0 overwrites: C must not be read
    got = whygpu.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b, kernel=kernel)
    assert got is c
    check_gemm(c, a, b, alpha=alpha, beta=beta, c0=c0, trans_a=trans_a, trans_b=trans_b)


@pytest.mark.parametrize("c_kind", ["F", "strided", "strided-F", "negative", "transposed-view"])
@pytest.mark.parametrize("kernel,dtype,shape", _cases(_small_and_edge))
def test_gemm_updates_noncontiguous_c(rng, kernel, dtype, shape, c_kind):
    m, n, k = shape
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    c, parent, inside = _make_out(c_kind, m, n, dtype, 3.0)
    c0 = make_matrix(rng, (m, n), dtype)
    c[...] = c0  # beta != 0: C is read through its strides, then written back
    got = whygpu.gemm(a, b, c, alpha=-1.25, beta=0.5, kernel=kernel)
    assert got is c
    check_gemm(c, a, b, alpha=-1.25, beta=0.5, c0=c0)
    assert (parent[~inside] == 3.0).all(), "gemm wrote outside the c view"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", [0.0, 1.0, -2.0])
def test_gemm_alpha_zero_reads_neither_a_nor_b(rng, kernel, dtype, beta):
    a = np.full((6, 4), np.nan, dtype=dtype)  # BLAS: with alpha == 0, A and B are not read
    b = np.full((4, 5), np.inf, dtype=dtype)
    c0 = make_matrix(rng, (6, 5), dtype)
    c = c0.copy()
    whygpu.gemm(a, b, c, alpha=0.0, beta=beta, kernel=kernel)
    np.testing.assert_array_equal(c, (dtype(beta) * c0) if beta else np.zeros_like(c0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", [0.0, 1.0, -2.0])
def test_gemm_k_zero_scales_c(rng, kernel, dtype, beta):
    c0 = make_matrix(rng, (6, 5), dtype)
    c = c0.copy()
    if beta == 0.0:
        c[...] = np.nan
    got = whygpu.gemm(np.empty((6, 0), dtype), np.empty((0, 5), dtype), c, alpha=3.0, beta=beta, kernel=kernel)
    assert got is c
    np.testing.assert_array_equal(c, dtype(beta) * c0 if beta else np.zeros_like(c0))
    np.testing.assert_array_equal(
        whygpu.matmul(np.empty((3, 0), dtype), np.empty((0, 2), dtype), kernel=kernel), np.zeros((3, 2), dtype)
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,n", [(0, 5), (6, 0), (0, 0)])
def test_gemm_empty_result(kernel, m, n):
    a = np.ones((m, 4), np.float32)
    b = np.ones((4, n), np.float32)
    c = np.empty((m, n), np.float32)
    assert whygpu.gemm(a, b, c, beta=1.0, kernel=kernel) is c
    got = whygpu.matmul(a, b, kernel=kernel)
    assert got.shape == (m, n) and got.dtype == np.float32


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gemm_without_c_ignores_beta(rng, kernel, dtype):
    a = make_matrix(rng, (5, 7), dtype)  # op(a) = a.T is (7, 5)
    b = make_matrix(rng, (5, 6), dtype)
    got = whygpu.gemm(a, b, alpha=-2.0, beta=5.0, trans_a=True, kernel=kernel)
    check_gemm(got, a, b, alpha=-2.0, trans_a=True)


# ---- Hypothesis: shapes and strides -------------------------------------------------------


def _dim_strategy(kernel, dtype):
    """Sizes up to a kernel's cap, with the block-size edges of the packed kernels mixed in."""
    cap = size_cap(kernel)
    if cap is not None:
        return st.integers(0, cap)
    bk = blocking_of(dtype)
    # nc (up to 8192, from L3) is left to block_edge_shapes' fixed shapes: two dimensions near it
    # would make one example of a slow rung take minutes.
    blocks = [bk["mr"], bk["nr"], bk["kc"], bk.get("mc", bk["mr"])] + ([bk["nc"]] if bk["nc"] <= 1024 else [])
    edges = sorted({v + d for v in blocks for d in (-1, 0, 1)})
    return st.one_of(st.integers(0, 48), st.sampled_from(edges))


@st.composite
def _layouts(draw):
    return dict(
        order=draw(st.sampled_from("CF")),
        step=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        flip=(draw(st.booleans()), draw(st.booleans())),
        offset=draw(st.integers(0, 2)),
    )


@st.composite
def _problem(draw):
    kernel = draw(st.sampled_from(KERNELS))
    dtype = draw(st.sampled_from(DTYPES))
    dim = _dim_strategy(kernel, dtype)
    m, n, k = draw(dim), draw(dim), draw(dim)
    if size_cap(kernel) is None:
        # keep every example quick: at most two dimensions near kc/nc at a time
        while sum(d > 48 for d in (m, n, k)) > 2:
            m = min(m, 48)
    return kernel, dtype, (m, n, k)


@given(
    problem=_problem(),
    la=_layouts(),
    lb=_layouts(),
    out_layout=st.one_of(st.none(), _layouts()),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_property(problem, la, lb, out_layout, seed):
    kernel, dtype, (m, n, k) = problem
    rng = np.random.default_rng(seed)
    a = make_matrix(rng, (m, k), dtype, **la)
    b = make_matrix(rng, (k, n), dtype, **lb)
    out = None
    if out_layout is not None:
        out = make_matrix(rng, (m, n), dtype, **out_layout)
        out[...] = np.nan
    got = whygpu.matmul(a, b, kernel=kernel, out=out)
    if out is not None:
        assert got is out
    check_gemm(got, a, b)


@given(
    problem=_problem(),
    la=_layouts(),
    lb=_layouts(),
    lc=_layouts(),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -1.0, 0.0, 0.5, 3.0]) | st.floats(-4, 4, width=32),
    beta=st.sampled_from([0.0, 1.0, -1.0, 0.25]) | st.floats(-4, 4, width=32),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_property(problem, la, lb, lc, trans_a, trans_b, alpha, beta, seed):
    kernel, dtype, (m, n, k) = problem
    rng = np.random.default_rng(seed)
    a = make_matrix(rng, (k, m) if trans_a else (m, k), dtype, **la)
    b = make_matrix(rng, (n, k) if trans_b else (k, n), dtype, **lb)
    c = make_matrix(rng, (m, n), dtype, **lc)
    c0 = c.copy()
    if beta == 0.0:
        c[...] = np.nan
    got = whygpu.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b, kernel=kernel)
    assert got is c
    check_gemm(c, a, b, alpha=alpha, beta=beta, c0=c0, trans_a=trans_a, trans_b=trans_b)


def test_the_default_kernel_is_openmp_when_built_and_named_by_info():
    import whygpu

    expected = "openmp" if "openmp" in whygpu.available_kernels() else "packed"
    assert whygpu.default_kernel() == expected
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(whygpu.matmul(a, a.T), whygpu.matmul(a, a.T, kernel=expected))
