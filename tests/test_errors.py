"""Bad input gets a TypeError or ValueError that says what was wrong -- never a
crash, never a silent conversion: dtypes, dimensions, shapes, ``out``,
kernel names, thread counts, scalars; and the compiled modules called
directly with bad arguments raise instead of touching memory they should not.
"""

from __future__ import annotations

import numpy as np
import pytest

import whygpu
from whygpu import _core, _cython_matmul

KERNELS = whygpu.available_kernels(device="cpu")  # the CUDA rungs: tests/test_cuda.py


@pytest.fixture
def ab():
    rng = np.random.default_rng(3)
    return rng.uniform(-1, 1, (4, 6)).astype(np.float32), rng.uniform(-1, 1, (6, 5)).astype(np.float32)


# ---- dtypes ----------------------------------------------------------------------

BAD_DTYPES = [
    (np.int32, "an integer dtype"),
    (np.int64, "an integer dtype"),
    (np.uint8, "an unsigned integer dtype"),
    (np.bool_, "a boolean dtype"),
    (np.complex64, "a complex dtype"),
    (np.complex128, "a complex dtype"),
    (np.float16, r"an unsupported floating-point dtype \(<f2\)"),
    (np.dtype(">f4"), r"an unsupported floating-point dtype \(>f4\)"),
    (object, "an object dtype"),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype,msg", BAD_DTYPES, ids=lambda x: str(np.dtype(x)) if not isinstance(x, str) else "")
@pytest.mark.parametrize("which", ["a", "b"])
def test_bad_dtype(ab, kernel, dtype, msg, which):
    a, b = ab
    if which == "a":
        a = a.astype(dtype)
    else:
        b = b.astype(dtype)
    with pytest.raises(TypeError, match=rf"^{which} has {msg}.*float32 or float64 in native byte order"):
        whygpu.matmul(a, b, kernel=kernel)
    with pytest.raises(TypeError, match=rf"^{which} has {msg}"):
        whygpu.gemm(a, b, kernel=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_precision_is_not_upcast(ab, kernel):
    a, b = ab
    with pytest.raises(TypeError, match="a is float32 but b is float64.*does not upcast"):
        whygpu.matmul(a, b.astype(np.float64), kernel=kernel)
    with pytest.raises(TypeError, match="a is float64 but b is float32"):
        whygpu.gemm(a.astype(np.float64), b, kernel=kernel)


# ---- dimensions and shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [np.ones(6, np.float32), np.ones((4, 6, 2), np.float32), np.float32(2.0)], ids=["1-D", "3-D", "0-D"]
)
@pytest.mark.parametrize("which", ["a", "b"])
def test_not_a_matrix(ab, bad, which):
    a, b = ab
    args = (bad, b) if which == "a" else (a, bad)
    with pytest.raises(ValueError, match=rf"{which} must be a 2-D array \(a matrix\), got {bad.ndim}-D"):
        whygpu.matmul(*args)


@pytest.mark.parametrize("kernel", KERNELS)
def test_inner_dimensions_must_match(ab, kernel):
    a, b = ab
    with pytest.raises(ValueError, match=r"inner dimensions do not match: op\(a\) is \(4, 6\) and op\(b\) is \(5, 6\)"):
        whygpu.matmul(a, b.T, kernel=kernel)
    with pytest.raises(ValueError, match="inner dimensions do not match"):
        whygpu.gemm(a, b, trans_a=True, kernel=kernel)
    with pytest.raises(ValueError, match="inner dimensions do not match"):
        whygpu.matmul(np.ones((3, 0), np.float32), np.ones((1, 2), np.float32), kernel=kernel)


# ---- out / c -----------------------------------------------------------------------


def test_out_wrong_shape(ab):
    a, b = ab
    with pytest.raises(ValueError, match=r"out has shape \(5, 4\), expected \(4, 5\)"):
        whygpu.matmul(a, b, out=np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"c has shape \(4, 5, 1\), expected \(4, 5\)"):
        whygpu.gemm(a, b, np.empty((4, 5, 1), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.dtype(">f4")], ids=str)
def test_out_wrong_dtype(ab, dtype):
    a, b = ab
    with pytest.raises(TypeError, match=r"out has dtype .*, expected float32 \(the dtype of the inputs\)"):
        whygpu.matmul(a, b, out=np.empty((4, 5), dtype))
    with pytest.raises(TypeError, match="c has dtype"):
        whygpu.gemm(a, b, np.empty((4, 5), dtype), beta=1.0)


@pytest.mark.parametrize("bad", [[[0.0] * 5] * 4, None, 3.0], ids=["list", "None", "float"])
def test_c_or_out_not_an_array(ab, bad):
    a, b = ab
    if bad is not None:  # out=None simply means "allocate"
        with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
            whygpu.matmul(a, b, out=bad)
        with pytest.raises(TypeError, match="c must be a numpy.ndarray"):
            whygpu.gemm(a, b, bad)
    else:
        assert whygpu.matmul(a, b, out=bad).shape == (4, 5)


def test_out_read_only(ab):
    a, b = ab
    out = np.zeros((4, 5), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        whygpu.matmul(a, b, out=out)
    with pytest.raises(ValueError, match="c is read-only"):
        whygpu.gemm(a, b, np.broadcast_to(np.float32(1), (4, 5)), beta=1.0)
    assert (out == 0).all()


OVERLAPS = {
    "out is a": lambda sq, other: whygpu.matmul(sq, other, out=sq),
    "out is b": lambda sq, other: whygpu.matmul(other, sq, out=sq),
    "out is a.T": lambda sq, other: whygpu.matmul(sq, other, out=sq.T),
    "out is a view of a": lambda sq, other: whygpu.matmul(sq[:, :4], other[:4, :3], out=sq[:, 3:6]),
    "c is a": lambda sq, other: whygpu.gemm(sq, other, sq, beta=1.0),
    "c overlaps b": lambda sq, other: whygpu.gemm(other[:, :3], sq[:3, :3], sq[:6, :3]),
}


@pytest.mark.parametrize("case", OVERLAPS)
def test_out_overlapping_an_input(case):
    rng = np.random.default_rng(5)
    sq = rng.uniform(-1, 1, (6, 6)).astype(np.float64)
    other = rng.uniform(-1, 1, (6, 6)).astype(np.float64)
    before = sq.copy()
    with pytest.raises(ValueError, match=r"(out|c) overlaps input [ab]: .*must not share memory"):
        OVERLAPS[case](sq, other)
    np.testing.assert_array_equal(sq, before)  # nothing was written


def test_out_sharing_a_buffer_but_not_memory_is_fine():
    # Interleaved columns of one array: may_share_memory says maybe, shares_memory says no.
    rng = np.random.default_rng(6)
    base = rng.uniform(-1, 1, (5, 8)).astype(np.float32)
    a, out = base[:, ::2], base[:, 1::2]
    b = rng.uniform(-1, 1, (4, 4)).astype(np.float32)
    expected = a.astype(np.float64) @ b
    assert whygpu.matmul(a, b, out=out, kernel="packed") is out
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---- kernel names, threads, scalars -------------------------------------------------------


def test_unknown_kernel_lists_the_usable_ones_first(ab):
    """The usable kernels first; the CUDA rungs (without a GPU) apart, under why they cannot run."""
    a, b = ab
    with pytest.raises(ValueError, match="unknown kernel 'cuda-magic'; kernels usable here: python, cython") as e:
        whygpu.matmul(a, b, kernel="cuda-magic")
    msg = str(e.value)
    usable_part = msg.split("; these ")[0]
    for name in whygpu.all_kernels():
        assert name in msg
        assert (name in usable_part.split(": ")[1].split(", ")) == (name in whygpu.available_kernels())
    if whygpu.all_kernels("cuda") and not whygpu.available_kernels("cuda"):
        assert "these need a GPU (" in msg
    with pytest.raises(ValueError, match="unknown kernel 'Packed'"):
        whygpu.gemm(a, b, kernel="Packed")
    with pytest.raises(ValueError, match="unknown kernel 'nope'; kernels usable here"):
        whygpu.kernel_info("nope")


@pytest.mark.parametrize("kernel", [6, 1.5, b"packed"], ids=repr)
def test_kernel_must_be_a_string(ab, kernel):
    a, b = ab
    with pytest.raises(TypeError, match="kernel must be a string naming a kernel"):
        whygpu.matmul(a, b, kernel=kernel)


@pytest.mark.parametrize(
    "threads,exc,msg",
    [
        (0, ValueError, "threads must be >= 1, got 0"),
        (-1, ValueError, "threads must be >= 1, got -1"),
        (1.5, TypeError, "threads must be an integer >= 1, got 1.5"),
        (2.0, TypeError, "threads must be an integer"),
        (True, TypeError, "threads must be an integer >= 1, got True"),
        ("2", TypeError, "threads must be an integer"),
        (2**40, ValueError, "threads must be <= 1024"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("kernel", ["packed", "openmp"])
def test_bad_threads(ab, kernel, threads, exc, msg):
    if kernel not in KERNELS:
        pytest.skip(f"{kernel} not available")
    a, b = ab
    with pytest.raises(exc, match=msg):
        whygpu.matmul(a, b, kernel=kernel, threads=threads)
    with pytest.raises(exc, match=msg):
        whygpu.gemm(a, b, kernel=kernel, threads=threads)


@pytest.mark.filterwarnings("ignore::whygpu.ThreadsWarning")  # packed runs on one thread: threads=2 is ignored
def test_numpy_integer_threads_are_fine(ab):
    a, b = ab
    got = whygpu.matmul(a, b, threads=np.int64(2), kernel="packed")
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", ["1.0", None, 1j, True, [1.0]], ids=repr)
@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_non_numeric_alpha_beta(ab, name, value):
    a, b = ab
    with pytest.raises(TypeError, match=rf"{name} must be a real number, got"):
        whygpu.gemm(a, b, np.zeros((4, 5), np.float32), **{name: value})


@pytest.mark.parametrize("flag", ["trans_a", "trans_b"])
@pytest.mark.parametrize("value", [1, "yes", None], ids=repr)
def test_trans_flags_must_be_bool(ab, flag, value):
    a, b = ab
    with pytest.raises(TypeError, match=rf"{flag} must be True or False"):
        whygpu.gemm(a, b, **{flag: value})


def test_numpy_scalars_are_fine(ab):
    a, b = ab
    c = np.ones((4, 5), np.float32)
    whygpu.gemm(a, b, c, alpha=np.float32(2.0), beta=np.float64(-1.0), trans_a=np.bool_(False))
    np.testing.assert_allclose(c, 2.0 * (a.astype(np.float64) @ b) - 1.0, rtol=1e-5, atol=1e-5)


# ---- The compiled modules called directly must raise, not crash ----------------------------


def _f32(*shape):
    return np.ones(shape, np.float32)


def _unaligned(shape):
    raw = np.zeros(int(np.prod(shape)) * 4 + 1, np.uint8)
    return raw[1:].view(np.float32).reshape(shape)


_NOT_ONE_FLOAT = "must all be float32 or all float64"
CORE_BAD_CALLS = {
    "kernel id 0": ((0, _f32(3, 4), _f32(4, 5), _f32(3, 5)), ValueError, "unknown kernel id 0"),
    "kernel id 2": ((2, _f32(3, 4), _f32(4, 5), _f32(3, 5)), ValueError, "unknown kernel id 2"),
    "kernel id 8": ((8, _f32(3, 4), _f32(4, 5), _f32(3, 5)), ValueError, "unknown kernel id 8"),
    "threads 0": ((7, _f32(3, 4), _f32(4, 5), _f32(3, 5), 1.0, 0.0, 0), ValueError, "threads must be >= 1"),
    "threads -5": ((6, _f32(3, 4), _f32(4, 5), _f32(3, 5), 1.0, 0.0, -5), ValueError, "threads must be >= 1"),
    "threads 2**40": ((7, _f32(3, 4), _f32(4, 5), _f32(3, 5), 1.0, 0.0, 2**40), TypeError, "incompatible"),
    "1-D a": ((6, _f32(4), _f32(4, 5), _f32(3, 5)), ValueError, "must be 2-D"),
    "3-D c": ((6, _f32(3, 4), _f32(4, 5), _f32(3, 5, 1)), ValueError, "must be 2-D"),
    "inner dims": ((6, _f32(3, 4), _f32(3, 5), _f32(3, 5)), ValueError, "shapes do not match"),
    "c too small": ((6, _f32(30, 40), _f32(40, 50), _f32(3, 5)), ValueError, "shapes do not match"),
    "c too big": ((7, _f32(3, 4), _f32(4, 5), _f32(300, 500)), ValueError, "shapes do not match"),
    "c read-only": ((6, _f32(3, 4), _f32(4, 5), np.broadcast_to(_f32(1, 5), (3, 5))), ValueError, "read-only"),
    "mixed dtypes": ((6, _f32(3, 4), np.ones((4, 5)), _f32(3, 5)), TypeError, _NOT_ONE_FLOAT),
    "c float64": ((5, _f32(3, 4), _f32(4, 5), np.ones((3, 5))), TypeError, _NOT_ONE_FLOAT),
    "int dtype": ((3, np.ones((3, 4), np.int32), _f32(4, 5), _f32(3, 5)), TypeError, _NOT_ONE_FLOAT),
    "byte-swapped": ((6, _f32(3, 4).astype(">f4"), _f32(4, 5), _f32(3, 5)), TypeError, _NOT_ONE_FLOAT),
    "unaligned a": ((6, _unaligned((3, 4)), _f32(4, 5), _f32(3, 5)), ValueError, "aligned"),
    "odd stride": (
        (6, np.lib.stride_tricks.as_strided(np.zeros(64, np.float32), (3, 4), (6, 16)), _f32(4, 5), _f32(3, 5)),
        ValueError,
        "stride that is not a multiple",
    ),
    "reordered, F-order a": (
        (4, np.asfortranarray(_f32(3, 4)), _f32(4, 5), _f32(3, 5)),
        ValueError,
        "need row-contiguous",
    ),
    "blocked, strided c": ((5, _f32(3, 4), _f32(4, 5), _f32(3, 10)[:, ::2]), ValueError, "need row-contiguous"),
    "a is None": ((6, None, _f32(4, 5), _f32(3, 5)), TypeError, "incompatible function arguments"),
    "c is a list": ((6, _f32(3, 4), _f32(4, 5), [[0.0] * 5] * 3), TypeError, "incompatible function arguments"),
    "alpha a string": ((6, _f32(3, 4), _f32(4, 5), _f32(3, 5), "2"), TypeError, "incompatible function arguments"),
}


@pytest.mark.parametrize("case", CORE_BAD_CALLS)
def test_core_gemm_rejects_bad_arguments(case):
    args, exc, msg = CORE_BAD_CALLS[case]
    with pytest.raises(exc, match=msg):
        _core.gemm(*args)


@pytest.mark.parametrize("kernel_id", [3, 4, 5, 6, 7])
def test_core_gemm_empty_operands(kernel_id):
    # NumPy gives empty arrays zero strides; they are never read, so every rung takes them.
    c = np.full((3, 5), 2.0)
    _core.gemm(kernel_id, np.ones((3, 0)), np.ones((0, 5)), c, 1.0, 0.5, 1)
    np.testing.assert_array_equal(c, 1.0)
    _core.gemm(kernel_id, np.ones((0, 4)), np.ones((4, 5)), np.ones((0, 5)))
    _core.gemm(kernel_id, np.ones((3, 4)), np.ones((4, 0)), np.ones((3, 0)))


def test_core_other_functions_reject_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        _core.blocking("float16")
    with pytest.raises(ValueError, match="unknown instruction set 'sse'"):
        _core.blocking("float32", "sse")
    with pytest.raises(ValueError, match="unknown instruction set 'sse'"):
        _core.set_arch("sse")
    with pytest.raises(TypeError):
        _core.set_arch(None)


@pytest.mark.parametrize(
    "args,exc,msg",
    [
        ((_f32(3, 4), _f32(5, 4), _f32(3, 5)), ValueError, "shapes do not match"),
        ((_f32(3, 4), _f32(4, 5), _f32(3, 6)), ValueError, "shapes do not match"),
        ((np.ones((3, 4), np.int32), _f32(4, 5), _f32(3, 5)), TypeError, "No matching signature"),
        ((_f32(3, 4), np.ones((4, 5)), _f32(3, 5)), ValueError, "Buffer dtype mismatch"),
        ((_f32(3, 4), _f32(4, 5), np.broadcast_to(_f32(1, 5), (3, 5))), ValueError, "read-only"),
        ((_f32(3), _f32(3, 5), _f32(3, 5)), TypeError, "No matching signature"),
    ],
    ids=["inner dims", "c shape", "int dtype", "mixed dtypes", "c read-only", "1-D a"],
)
def test_cython_gemm_rejects_bad_arguments(args, exc, msg):
    if _cython_matmul is None:
        pytest.skip("cython kernel not built")
    with pytest.raises(exc, match=msg):
        _cython_matmul.gemm(*args)
