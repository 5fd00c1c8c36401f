"""The tensor-core rungs: ``cuda_mma`` (rung 15, TF32 from float32 data),
``cuda_mma_bf16`` (the same kernel in bfloat16) and ``cuda_wgmma`` (rung 16,
Hopper only, bfloat16).

Their results are not float32-accurate, by design, so every check here
follows from the precision instead of a tolerance loosened until it passes.
With unit roundoff u (2**-11 for TF32, 2**-8 for bf16) each operand is off
by at most u relative, a product of two by (2u + u**2), and the float32 sums
add at most (k + 2) 2**-24 of sum |a b| (twice that, for the order of the
additions).  Two references in float64:

* the exact product of the float32 data: the error must stay within the
  bound above -- what a user may expect of the precision;
* the exact product of the operands rounded as the precision says (bf16:
  nearest, ties to even; TF32: nearest, ties away, as cvt.rna): the error
  must stay within the float32 sums' bound alone -- the kernel rounds the
  way it claims, neither more (a bf16 kernel sold as TF32) nor less.

The first part runs everywhere; the part marked ``cuda`` needs a GPU and
runs in CI on the emulated one (tests/test_cuda_emulated.py), where
``mma.sync``, ``ldmatrix`` and ``cp.async`` follow the PTX ISA's fragment
layouts (tests/cuda_emu/ptx.cuh).  ``cuda_wgmma`` (wgmma, TMA) has no CPU
stand-in: there, and on any GPU that is not a Hopper, the checks are that it
says why it cannot run; on a Hopper GPU it takes the same tests as rung 15.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import whygpu
import whygpu.cuda as wc
from whygpu import _registry
from whygpu.nn import _backend

TC_NAMES = ["cuda_mma", "cuda_mma_bf16", "cuda_wgmma"]
GPU = wc.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason=f"no usable GPU: {wc.unavailable_reason()}")
EPS32 = 2.0**-24


def _f32(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


def rounded(x, precision: str) -> np.ndarray:
    """float32 data rounded to the tensor-core precision, as float64."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    if precision == "bf16":  # nearest, ties to even
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    elif precision == "tf32":  # nearest, ties away from zero (cvt.rna)
        u = (u + 0x1000) & 0xFFFFE000
    return (u & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64).reshape(np.shape(x))


def check(got, a_op, b_op, precision, alpha=1.0, beta=0.0, c0=None, bias=None, relu=False):
    """`got` against both references of the module docstring (element-wise bounds)."""
    a64, b64 = a_op.astype(np.float64), b_op.astype(np.float64)
    k = a_op.shape[1]
    u = wc.UNIT_ROUNDOFF[precision]
    mag = abs(alpha) * (np.abs(a64) @ np.abs(b64))
    ref = alpha * (a64 @ b64)
    ref_r = alpha * (rounded(a_op, precision) @ rounded(b_op, precision))
    rest = np.zeros_like(ref)
    if c0 is not None and beta != 0.0:
        rest = beta * c0.astype(np.float64)
    if bias is not None:
        rest = rest + bias.astype(np.float64)
    ref, ref_r = ref + rest, ref_r + rest
    if relu:
        ref, ref_r = np.maximum(ref, 0), np.maximum(ref_r, 0)
    sums = 2 * (k + 2) * EPS32 * (mag * (1 + 2 * u) + np.abs(rest)) + 1e-30
    bound = (2 * u + u * u) * mag + sums
    assert got.shape == ref.shape and got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"{precision}: max error {err.max():.3g} over the bound (max {bound.max():.3g})"
    err_r = np.abs(got.astype(np.float64) - ref_r)
    assert np.all(err_r <= sums), (
        f"{precision}: off the rounded-operand reference by {err_r.max():.3g} "
        f"(float32 sums allow {sums.max():.3g}): not rounding as claimed"
    )


def unavailable(name):
    return _registry.KERNELS[name].unavailable()


def usable(name) -> bool:
    return GPU and unavailable(name) is None


# ---- Everywhere -------------------------------------------------------------------------------


def test_tensor_core_rungs_follow_the_simt_ladder():
    names = whygpu.all_kernels(device="cuda")
    assert names[-3:] == TC_NAMES
    assert [wc._RUNGS[n] for n in TC_NAMES] == [15, 15, 16]
    for name in TC_NAMES:
        assert whygpu.kernel_info(name).startswith(f"rung {wc._RUNGS[name]} (cuda): ")
    assert [_registry.KERNELS[n].precision for n in TC_NAMES] == ["tf32", "bf16", "bf16"]
    assert _registry.KERNELS["cuda_warptile"].precision == "float32"
    assert _registry.KERNELS["packed"].precision is None  # the CPU rungs compute in the inputs' dtype


def test_kernel_unavailable_reason():
    for name in whygpu.all_kernels(device="cuda"):
        why = wc.kernel_unavailable_reason(name)
        assert why == _registry.KERNELS[name].unavailable()
        assert (why is None) == (name in whygpu.available_kernels(device="cuda"))
        if not GPU:
            assert why == wc.unavailable_reason()
    with pytest.raises(ValueError, match="not a CUDA kernel"):
        wc.kernel_unavailable_reason("openmp")


def test_precisions_and_their_unit_roundoff():
    assert wc.PRECISIONS == ("float32", "tf32", "bf16")
    # significand bits (with the implicit one): 24, 11, 8 -> u = 2**-bits
    assert wc.UNIT_ROUNDOFF == {"float32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8}
    assert [wc.precision_of(n) for n in ("cuda_naive", "cuda_warptile", *TC_NAMES)] == [
        "float32",
        "float32",
        "tf32",
        "bf16",
        "bf16",
    ]
    with pytest.raises(ValueError, match="not a CUDA kernel"):
        wc.precision_of("packed")


def test_rounding_reference_is_the_ieee_one():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11, 1 + 3 * 2**-11, -1 - 2**-9, 3.0], np.float32)
    # bf16 keeps 7 fraction bits: 1 + 2**-8 is a tie -> even (1); 1 + 3 * 2**-8 -> 1 + 2**-6 (even)
    assert rounded(x, "bf16").tolist()[:2] == [1.0, 1 + 2**-6]
    # TF32 keeps 10: ties go away from zero
    assert rounded(x, "tf32").tolist()[2:5] == [1 + 2**-10, 1 + 2**-9, -1 - 2**-9]
    assert rounded(x, "float32").tolist() == x.astype(np.float64).tolist()


def test_precision_picks_the_gpu_back_end():
    f = _backend.backend_for_precision
    assert f("cuda", "bf16") == "cuda_mma_bf16"
    assert f("cuda", "tf32") == "cuda_mma"
    assert f("cuda", "float32") == "cuda"
    assert f("cuda_mma", "bf16") == "cuda_mma_bf16" and f("cuda_mma_bf16", "tf32") == "cuda_mma"
    assert f("cuda_wgmma", "bf16") == "cuda_wgmma"
    assert f("cuda_smem", "float32") == "cuda_smem"
    with pytest.raises(ValueError, match="cuda_warptile' computes in float32, not bf16"):
        f("cuda_warptile", "bf16")
    with pytest.raises(ValueError, match="computes in bf16, not tf32"):
        f("cuda_wgmma", "tf32")
    with pytest.raises(ValueError, match="runs on the CPU"):
        f("packed", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        f("cuda", "fp16")


@pytest.mark.skipif(GPU, reason="a GPU is usable here")
def test_mixed_precision_without_a_gpu_says_why():
    from whygpu import nn

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(whygpu.KernelUnavailableError, match="back end 'cuda_mma_bf16' is unavailable"):
        model.to("cuda", precision="bf16")
    assert model.backend == "numpy"


# ---- On a GPU (and the emulated one) ----------------------------------------------------------

SHAPES = [
    (1, 1, 1),
    (0, 3, 2),
    (3, 0, 2),
    (2, 3, 0),
    (1, 7, 3),
    (7, 1, 13),
    (17, 31, 9),
    (33, 65, 31),
    (129, 257, 17),
    (130, 131, 133),
    (70, 50, 300),
]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", TC_NAMES)
def test_an_unusable_tensor_core_rung_says_why(name, rng):
    why = unavailable(name)
    if why is None:
        assert name in whygpu.available_kernels(device="cuda")
        return
    # cuda_wgmma under the emulation or on a GPU that is not a Hopper: refused with the reason, nothing run
    assert name not in whygpu.available_kernels(device="cuda") and len(why) > 20
    a, b = _f32(rng, 3, 4), _f32(rng, 4, 2)
    with pytest.raises(whygpu.KernelUnavailableError, match=f"kernel '{name}' is unavailable: ") as e:
        whygpu.matmul(a, b, kernel=name)
    assert why in str(e.value)
    with pytest.raises(wc.CudaUnavailableError, match="wgmma|Hopper|sm_90a|9.0"):
        wc.matmul(wc.to_device(a), wc.to_device(b), kernel=name)
    assert whygpu.kernel_info(name).endswith(f"[unavailable: {why}]")


def _params(names, cases):
    return [
        pytest.param(
            n,
            *c,
            marks=pytest.mark.skipif(not usable(n), reason=f"{n}: {unavailable(n)}") if GPU and not usable(n) else (),
        )
        for n in names
        for c in cases
    ]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name,m,n,k", _params(["cuda_mma", "cuda_mma_bf16"], SHAPES))
def test_matmul_within_its_precision(name, m, n, k, rng):
    a, b = _f32(rng, m, k), _f32(rng, k, n)
    check(whygpu.matmul(a, b, kernel=name), a, b, wc.precision_of(name))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.skipif(not usable("cuda_wgmma"), reason=f"cuda_wgmma: {unavailable('cuda_wgmma')}")
@pytest.mark.parametrize("m,n,k", SHAPES + [(257, 300, 200), (128, 256, 64)])
def test_wgmma_within_its_precision(m, n, k, rng):
    a, b = _f32(rng, m, k), _f32(rng, k, n)
    check(whygpu.matmul(a, b, kernel="cuda_wgmma"), a, b, "bf16")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", TC_NAMES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_transposes_alpha_beta_and_device_arrays(name, trans_a, trans_b, rng):
    if not usable(name):
        pytest.skip(f"{name}: {unavailable(name)} (test_an_unusable_tensor_core_rung_says_why checks it)")
    prec = wc.precision_of(name)
    for m, n, k in [(37, 45, 29), (36, 44, 28), (129, 130, 67)]:
        a = _f32(rng, k, m) if trans_a else _f32(rng, m, k)
        b = _f32(rng, n, k) if trans_b else _f32(rng, k, n)
        a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
        c0 = _f32(rng, m, n)
        c = c0.copy()
        whygpu.gemm(a, b, c, alpha=-0.75, beta=1.5, trans_a=trans_a, trans_b=trans_b, kernel=name)
        check(c, a_op, b_op, prec, -0.75, 1.5, c0)
        da, db, dc = wc.to_device(a), wc.to_device(b), wc.to_device(np.full((m, n), np.nan, np.float32))
        wc.gemm(da, db, dc, alpha=2.0, beta=0.0, trans_a=trans_a, trans_b=trans_b, kernel=name)  # NaN never read
        check(dc.to_host(), a_op, b_op, prec, 2.0)


@pytest.mark.cuda
@needs_gpu
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(0, 70),
    n=st.integers(0, 70),
    k=st.integers(0, 90),
    name=st.sampled_from(TC_NAMES),
    ta=st.booleans(),
    tb=st.booleans(),
    step=st.integers(1, 3),
    data=st.data(),
)
def test_hypothesis_shapes_and_strides(m, n, k, name, ta, tb, step, data):
    """Any shape, transposed or strided NumPy views (copied to the GPU as they are stored)."""
    if not usable(name):
        return  # test_an_unusable_tensor_core_rung_says_why
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a_store = _f32(rng, *((k, m * step) if ta else (m, k * step)))
    b_store = _f32(rng, *((n * step, k) if tb else (k * step, n)))
    a = a_store[:, ::step].T if ta else a_store[:, ::step]
    b = b_store[::step].T if tb else b_store[::step]
    check(whygpu.matmul(a, b, kernel=name), a, b, wc.precision_of(name))


@pytest.mark.cuda
@needs_gpu
def test_each_precision_rounds_exactly_as_it_says():
    """A tie-free case with a known answer: sum over k of (1 + d) * 1.  1 + 2**-10 is a TF32
    number but not a bf16 one (bf16 rounds it to 1); 1 + 2**-12 is neither (both give 1)."""
    k = 64
    for d, want in (
        (2.0**-10, {"float32": 1 + 2**-10, "tf32": 1 + 2**-10, "bf16": 1.0}),
        (2.0**-12, {"float32": 1 + 2**-12, "tf32": 1.0, "bf16": 1.0}),
    ):
        a = np.full((3, k), 1 + d, np.float32)
        b = np.ones((k, 5), np.float32)
        for name in ["cuda_warptile", *TC_NAMES]:
            if not usable(name):
                continue
            got = whygpu.matmul(a, b, kernel=name)
            np.testing.assert_array_equal(got, np.float32(k * want[wc.precision_of(name)]), err_msg=name)
    da, db = wc.to_device(a), wc.to_device(b)
    # precision= on a DeviceArray call: the same kernel, rounded to bf16
    np.testing.assert_array_equal(wc.matmul(da, db, kernel="cuda_mma", precision="bf16").to_host(), np.float32(k))
    np.testing.assert_array_equal(
        wc.matmul(da, db, kernel="cuda_mma").to_host(), np.float32(k)
    )  # tf32: 1 + 2**-12 -> 1


@pytest.mark.cuda
@needs_gpu
def test_a_precision_a_kernel_does_not_compute_in_is_refused(rng):
    da, db = wc.to_device(_f32(rng, 3, 4)), wc.to_device(_f32(rng, 4, 5))
    with pytest.raises(ValueError, match="cuda_warptile computes in float32 only; bf16 products need a tensor-core"):
        wc.gemm(da, db, kernel="cuda_warptile", precision="bf16")
    with pytest.raises(ValueError, match="cuda_wgmma computes in bf16, not tf32"):
        wc.gemm(da, db, kernel="cuda_wgmma", precision="tf32")
    with pytest.raises(ValueError, match="cuda_mma computes in tf32 or bf16, not float32"):
        wc.gemm(da, db, kernel="cuda_mma", precision="float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        wc.gemm(da, db, kernel="cuda_mma", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        wc.gemm(da, db, kernel="cuda_mma", precision=16)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", ["cuda_mma", "cuda_mma_bf16"])
def test_fused_epilogue_and_the_no_product_paths(name, rng):
    prec = wc.precision_of(name)
    for m, n, k, ta, tb, alpha, beta in [(17, 33, 9, True, False, 0.5, 2.0), (70, 5, 130, False, True, -1.0, 0.0)]:
        a = _f32(rng, *((k, m) if ta else (m, k)))
        b = _f32(rng, *((n, k) if tb else (k, n)))
        c0, bias = _f32(rng, m, n), _f32(rng, n)
        for relu in (False, True):
            dc = wc.to_device(c0)
            wc.gemm(
                wc.to_device(a),
                wc.to_device(b),
                dc,
                alpha=alpha,
                beta=beta,
                trans_a=ta,
                trans_b=tb,
                kernel=name,
                bias=wc.to_device(bias),
                relu=relu,
            )
            check(dc.to_host(), a.T if ta else a, b.T if tb else b, prec, alpha, beta, c0, bias, relu)
    c0 = _f32(rng, 5, 6)
    dc = wc.to_device(c0)  # k == 0: C = beta C, A and B never read
    wc.gemm(wc.empty((5, 0)), wc.empty((0, 6)), dc, beta=0.5, kernel=name)
    np.testing.assert_array_equal(dc.to_host(), (0.5 * c0).astype(np.float32))
    dc = wc.to_device(np.full((5, 6), np.nan, np.float32))  # alpha == 0 and beta == 0: zeros
    wc.gemm(wc.to_device(_f32(rng, 5, 3)), wc.to_device(_f32(rng, 3, 6)), dc, alpha=0.0, beta=0.0, kernel=name)
    np.testing.assert_array_equal(dc.to_host(), np.zeros((5, 6), np.float32))


@pytest.mark.cuda
@needs_gpu
def test_tensor_core_kernels_from_several_threads_at_once(rng):
    """The operand copies are per call (stream-ordered scratch), nothing is shared between calls."""
    names = [n for n in TC_NAMES if usable(n)]
    jobs = [(names[i % len(names)], _f32(rng, 40 + i, 33), _f32(rng, 33, 20 + i)) for i in range(6)]
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            name, a, b = jobs[i]
            results[i] = whygpu.matmul(a, b, kernel=name)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, a, b), got in zip(jobs, results):
        check(got, a, b, wc.precision_of(name))
