"""whygpu.cuda: the CUDA rungs, device arrays, the element-wise training ops.

Two halves.  The first runs everywhere and checks what a machine without a
GPU (or a build without CUDA) must do: register the CUDA kernels, describe
them, refuse them with the reason, map CUDA errors to Python exceptions.
The second (marked ``cuda``) needs a usable GPU and is skipped otherwise; on
a GPU machine ``pytest -m cuda`` checks every CUDA kernel against NumPy over
the same awkward shapes as the CPU ladder, every transpose combination,
alpha/beta, device arrays and the nn ops.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import whygpu
import whygpu.cuda as wc
from whygpu import _registry

# The float32 rungs 8-14 (the tensor-core rungs 15-16 compute in TF32/bf16: test_cuda_tensor_cores.py).
CUDA_NAMES = [
    "cuda_naive",
    "cuda_coalesced",
    "cuda_smem",
    "cuda_1d_tiling",
    "cuda_2d_tiling",
    "cuda_vectorized",
    "cuda_warptile",
]
TC_NAMES = ["cuda_mma", "cuda_mma_bf16", "cuda_wgmma"]
ALL_CUDA = CUDA_NAMES + TC_NAMES
BUILT = importlib.util.find_spec("whygpu._cuda") is not None
GPU = wc.is_available()
no_gpu = pytest.mark.skipif(GPU, reason="a GPU is usable here")
needs_module = pytest.mark.skipif(not BUILT, reason="whygpu was built without CUDA")


def _f32(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


# ---- Everywhere: the registry and the reasons ---------------------------------------------


def test_cuda_kernels_follow_the_cpu_ladder():
    names = whygpu.all_kernels()
    assert names[-len(ALL_CUDA) :] == ALL_CUDA
    for rung, name in enumerate(CUDA_NAMES, start=8):
        assert whygpu.kernel_info(name).startswith(f"rung {rung} (cuda): ")
        assert _registry.KERNELS[name].device == "cuda"
    assert [n for n, _, _ in wc.LADDER] == ALL_CUDA


def test_kernel_lists_by_device():
    assert whygpu.all_kernels(device="cuda") == ALL_CUDA
    assert whygpu.all_kernels(device="cpu") + ALL_CUDA == whygpu.all_kernels()
    # the tensor-core rungs also need their tensor cores (cuda_wgmma: a Hopper GPU)
    usable = [n for n in ALL_CUDA if _registry.KERNELS[n].available]
    assert whygpu.available_kernels(device="cuda") == (usable if GPU else [])
    assert set(CUDA_NAMES) <= set(usable) or not GPU
    assert "python" in whygpu.available_kernels(device="cpu")
    assert not set(whygpu.available_kernels(device="cpu")) & set(ALL_CUDA)
    with pytest.raises(ValueError, match="device must be"):
        whygpu.available_kernels(device="gpu")


def test_kernels_lists_what_was_compiled():
    assert wc.kernels() == (ALL_CUDA if BUILT else [])


def test_cuda_kernels_are_available_exactly_when_a_gpu_is():
    available = whygpu.available_kernels()
    for name in CUDA_NAMES:
        assert (name in available) == GPU
    assert wc.is_available() == (wc.unavailable_reason() is None)


@no_gpu
def test_unavailable_reason_is_a_sentence():
    why = wc.unavailable_reason()
    assert isinstance(why, str) and len(why) > 20
    assert any(word in why for word in ("driver", "GPU", "built without CUDA", "compute capability", "CUDA"))
    if not BUILT:
        assert "built without CUDA" in why


@no_gpu
def test_asking_for_a_cuda_kernel_without_a_gpu_says_why(rng):
    a, b = _f32(rng, 3, 4), _f32(rng, 4, 2)
    why = wc.unavailable_reason()
    for name in ALL_CUDA:
        with pytest.raises(whygpu.KernelUnavailableError, match=f"kernel '{name}' is unavailable: ") as e:
            whygpu.matmul(a, b, kernel=name)
        assert why in str(e.value)
        with pytest.raises(whygpu.KernelUnavailableError):
            whygpu.gemm(a, b, kernel=name)
        assert whygpu.kernel_info(name).endswith(f"[unavailable: {why}]")


@no_gpu
def test_device_memory_without_a_gpu_raises_clearly():
    why = wc.unavailable_reason()
    x = np.ones((2, 3), np.float32)
    for make in (
        lambda: wc.to_device(x),
        lambda: wc.empty((2, 3)),
        lambda: wc.zeros(4),
        lambda: wc.DeviceArray((2, 3)),
        lambda: wc.DeviceArray.from_host(x),
        wc.synchronize,
        wc.memory_info,
    ):
        with pytest.raises(wc.CudaUnavailableError, match="CUDA is unavailable: ") as e:
            make()
        assert why in str(e.value)
    assert wc.device_info() is None
    with pytest.raises(wc.CudaUnavailableError):
        wc.matmul(None, None)


def test_a_build_without_cuda_explains_itself(monkeypatch):
    def missing():
        return None, "whygpu was built without CUDA (no CUDA compiler was found at build time)"

    monkeypatch.setattr(wc, "_load", missing)
    wc.unavailable_reason.cache_clear()
    try:
        assert wc.unavailable_reason().startswith("whygpu was built without CUDA")
        assert not wc.is_available()
        assert wc.kernels() == []
        with pytest.raises(wc.CudaUnavailableError, match="built without CUDA"):
            wc.DeviceArray((2, 2))
        with pytest.raises(wc.CudaUnavailableError, match="built without CUDA"):
            wc.to_device(np.zeros(3, np.float32))
        with pytest.raises(wc.CudaUnavailableError, match="built without CUDA"):
            _ = wc.nn_ops
    finally:
        wc.unavailable_reason.cache_clear()


@needs_module
def test_cuda_error_codes_become_python_exceptions():
    mod = wc._module()
    with pytest.raises(MemoryError, match="CUDA out of memory in cudaMalloc"):
        mod._check_error(2, "cudaMalloc")  # cudaErrorMemoryAllocation
    with pytest.raises(wc.CudaError, match=r"CUDA error in a launch: invalid argument \(cudaErrorInvalidValue\)"):
        mod._check_error(1, "a launch")
    with pytest.raises(wc.CudaError, match="illegal memory access"):
        mod._check_error(700, "synchronize")  # cudaErrorIllegalAddress
    assert issubclass(wc.CudaError, RuntimeError) and issubclass(wc.CudaUnavailableError, RuntimeError)
    mod._check_error(0, "nothing")  # cudaSuccess raises nothing


@needs_module
def test_the_build_names_its_architectures():
    archs = wc._module().compiled_architectures()
    assert archs, "CMAKE_CUDA_ARCHITECTURES was not recorded"
    assert wc._module().runtime_version().count(".") == 1


@pytest.mark.parametrize(
    "cc,archs,runs",
    [
        ((9, 0), "80-real,90-real,90-virtual", True),
        ((8, 0), "80-real,90-real,90-virtual", True),
        ((8, 9), "80-real,90-real,90-virtual", True),  # sm_80 code runs on every 8.x
        ((10, 0), "80-real,90-real,90-virtual", True),  # through the compute_90 PTX
        ((12, 0), "80-real,90-real,90-virtual", True),
        ((7, 5), "80-real,90-real,90-virtual", False),  # a T4: too old
        ((10, 0), "80-real,90-real", False),  # no PTX: nothing for Blackwell
        ((8, 6), "86", True),
        ((9, 0), "90a-real", True),
        ((10, 0), "90a-real", False),
        ((7, 5), "native", True),  # cannot tell: let a launch say
    ],
)
def test_which_gpus_the_compiled_code_runs_on(cc, archs, runs):
    why = wc._arch_reason(cc, archs, "the GPU (Test)")
    assert (why is None) == runs
    if not runs:
        assert f"compute capability {cc[0]}.{cc[1]}" in why and "CMAKE_CUDA_ARCHITECTURES" in why


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_device_gemm_rejects_non_device_arrays_and_cpu_kernels(rng):
    a = _f32(rng, 2, 2)
    with pytest.raises(TypeError, match="must be a whygpu.cuda.DeviceArray"):
        wc.gemm(a, a)
    with pytest.raises(ValueError, match="'packed' is not a CUDA kernel"):
        wc.matmul(wc.to_device(a), wc.to_device(a), kernel="packed")


def test_vendor_reference_is_none_without_cupy_or_torch(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("cupy", "torch") else real(name, *a)
    )
    assert wc.vendor_library() is None
    assert wc.vendor_matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)) is None
    with pytest.raises(TypeError, match="float32"):
        wc.vendor_matmul(np.ones((2, 3)), np.ones((3, 2)))


# ---- On a GPU: every kernel against NumPy -------------------------------------------------

# 0, 1, primes, and non-multiples of every tile (32; 64; 128) and k-step (8; 32).
SHAPES = [
    (0, 0, 0),
    (0, 5, 3),
    (5, 0, 3),
    (4, 5, 0),
    (1, 1, 1),
    (1, 7, 3),
    (7, 1, 13),
    (3, 5, 1),
    (2, 3, 5),
    (17, 31, 9),
    (33, 65, 31),
    (64, 64, 64),
    (131, 67, 37),
    (129, 257, 17),
    (257, 130, 130),
    (128, 128, 128),
    (97, 389, 263),
    (512, 256, 784),
]


def _check(got, a_op, b_op, alpha=1.0, beta=0.0, c0=None):
    """|got - ref| within the float32 bound k * eps * (|alpha| |A||B| + |beta C0|), ref in float64."""
    a64, b64 = a_op.astype(np.float64), b_op.astype(np.float64)
    ref = alpha * (a64 @ b64)
    scale = abs(alpha) * (np.abs(a64) @ np.abs(b64))
    if c0 is not None and beta != 0.0:
        ref = ref + beta * c0.astype(np.float64)
        scale = scale + abs(beta) * np.abs(c0.astype(np.float64))
    k = a_op.shape[1]
    bound = 2 * (k + 2) * np.finfo(np.float32).eps * scale + 1e-30
    assert got.shape == ref.shape and got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max error {err.max()} (bound {bound.max()})"


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("name", CUDA_NAMES)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=str)
def test_matmul_matches_numpy(name, m, n, k, rng):
    a, b = _f32(rng, m, k), _f32(rng, k, n)
    _check(whygpu.matmul(a, b, kernel=name), a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("name", CUDA_NAMES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (37, 45, 29), (36, 44, 28), (129, 257, 17), (130, 131, 133)])
def test_gemm_transposes_alpha_beta(name, trans_a, trans_b, m, n, k, rng):
    a = _f32(rng, k, m) if trans_a else _f32(rng, m, k)
    b = _f32(rng, n, k) if trans_b else _f32(rng, k, n)
    a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
    c0 = _f32(rng, m, n)
    c = c0.copy()
    whygpu.gemm(a, b, c, alpha=-0.75, beta=1.5, trans_a=trans_a, trans_b=trans_b, kernel=name)
    _check(c, a_op, b_op, -0.75, 1.5, c0)
    # beta == 0 overwrites: NaN garbage in c must not leak
    c = np.full((m, n), np.nan, np.float32)
    whygpu.gemm(a, b, c, alpha=2.0, beta=0.0, trans_a=trans_a, trans_b=trans_b, kernel=name)
    _check(c, a_op, b_op, 2.0)
    # the same on device arrays, with the transposes done by the kernel
    da, db = wc.to_device(a), wc.to_device(b)
    dc = wc.to_device(c0)
    wc.gemm(da, db, dc, alpha=-0.75, beta=1.5, trans_a=trans_a, trans_b=trans_b, kernel=name)
    _check(dc.to_host(), a_op, b_op, -0.75, 1.5, c0)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("name", CUDA_NAMES)
def test_odd_layouts_from_numpy(name, rng):
    """Sliced, Fortran-ordered, negative-stride and non-contiguous out arrays."""
    big = _f32(rng, 70, 90)
    a = big[3:60:2, 5:47]  # non-contiguous rows
    b = np.asfortranarray(_f32(rng, 42, 33))
    out = np.zeros((29, 29), np.float32).T  # F-ordered out
    whygpu.matmul(a, b[:, ::-1][:, 4:], kernel=name, out=out)
    _check(out, a, b[:, ::-1][:, 4:])


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_k_zero_and_alpha_zero_scale_c(rng):
    c0 = _f32(rng, 5, 6)
    for name in CUDA_NAMES:
        dc = wc.to_device(c0)
        wc.gemm(wc.empty((5, 0)), wc.empty((0, 6)), dc, beta=0.5, kernel=name)
        np.testing.assert_array_equal(dc.to_host(), (0.5 * c0).astype(np.float32))
        dc = wc.to_device(np.full((5, 6), np.nan, np.float32))
        wc.gemm(wc.to_device(_f32(rng, 5, 3)), wc.to_device(_f32(rng, 3, 6)), dc, alpha=0.0, beta=0.0, kernel=name)
        np.testing.assert_array_equal(dc.to_host(), np.zeros((5, 6), np.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_float64_is_refused_clearly(rng):
    a = rng.uniform(size=(3, 4))
    with pytest.raises(TypeError, match="float32 only"):
        whygpu.matmul(a, a.T.copy(), kernel="cuda_naive")
    with pytest.raises(TypeError, match="float32 only"):
        wc.matmul(wc.to_device(a), wc.to_device(a.T.copy()))


# ---- On a GPU: device arrays --------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4), (4, 3, 2)])
def test_device_array_round_trip(dtype, shape, rng):
    x = (rng.uniform(-50, 50, shape)).astype(dtype)
    d = wc.to_device(x)
    assert d.shape == shape and d.dtype == np.dtype(dtype) and d.size == x.size and d.ndim == len(shape)
    assert d.nbytes == x.nbytes
    back = d.to_host()
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)
    out = np.empty_like(x)
    assert d.to_host(out=out) is out
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(d.copy().to_host(), x)
    d.free()
    assert d.freed
    with pytest.raises(ValueError, match="freed"):
        d.to_host()


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_device_array_api(rng):
    x = _f32(rng, 6, 4)
    with wc.to_device(x) as d:
        v = d.reshape(3, -1)
        assert v.shape == (3, 8) and v.shares_memory(d)
        np.testing.assert_array_equal(v.to_host(), x.reshape(3, 8))
        d.copy_from_host(2 * x)
        np.testing.assert_array_equal(v.to_host(), (2 * x).reshape(3, 8))
        iface = d.__cuda_array_interface__
        assert iface["shape"] == (6, 4) and iface["typestr"] == "<f4" and iface["data"][0] == d.ptr
        assert "DeviceArray(shape=(6, 4), dtype=float32)" in repr(d)
        with pytest.raises(TypeError, match="to_host"):
            np.asarray(d)
        with pytest.raises(TypeError, match="no conversions"):
            d.copy_from_host(x.astype(np.float64))
        with pytest.raises(ValueError, match="shape"):
            d.copy_from_host(x.T)
        with pytest.raises(ValueError, match="cannot reshape"):
            d.reshape(5, -1)
    assert d.freed
    np.testing.assert_array_equal(v.to_host(), (2 * x).reshape(3, 8))  # a view keeps the memory alive
    np.testing.assert_array_equal(wc.zeros((3, 2), np.int64).to_host(), np.zeros((3, 2), np.int64))
    with pytest.raises(TypeError):
        wc.empty((2, 2), np.complex64)
    with pytest.raises(ValueError, match="negative"):
        wc.empty((2, -1))


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_out_of_memory_is_memory_error():
    with pytest.raises(MemoryError, match="CUDA out of memory"):
        wc.empty((1 << 42,), np.float32)  # 16 TiB
    x = wc.to_device(np.ones(4, np.float32))  # and the GPU still works afterwards
    np.testing.assert_array_equal(x.to_host(), np.ones(4, np.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_device_gemm_argument_checks(rng):
    a = wc.to_device(_f32(rng, 3, 4))
    b = wc.to_device(_f32(rng, 4, 5))
    with pytest.raises(ValueError, match="inner dimensions"):
        wc.matmul(a, a)
    sq = wc.to_device(_f32(rng, 4, 4))
    with pytest.raises(ValueError, match="shares memory"):
        wc.gemm(sq, wc.to_device(_f32(rng, 4, 4)), sq)
    with pytest.raises(ValueError, match="c has shape"):
        wc.gemm(a, b, wc.empty((3, 4)))
    with pytest.raises(TypeError, match="float32"):
        wc.gemm(a, b, wc.empty((3, 5), np.float64))
    with pytest.raises(ValueError, match="is not a CUDA kernel"):
        wc.matmul(a, b, kernel="cuda-magic")
    np.testing.assert_allclose(wc.matmul(a, b).to_host(), a.to_host() @ b.to_host(), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_device_info():
    info = wc.device_info()
    assert info["name"] and len(info["compute_capability"]) == 2 and info["multiprocessors"] > 0
    free, total = wc.memory_info()
    assert 0 < free <= total


# ---- On a GPU: the element-wise training ops ------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_nn_ops_match_numpy(rng):
    ops = wc.nn_ops
    rows, cols = 67, 45
    x = 4 * _f32(rng, rows, cols)
    b = _f32(rng, cols)
    dy = _f32(rng, rows, cols)
    dx_, y_ = wc.empty((rows, cols)), wc.to_device(x)
    ops.bias_add(y_, wc.to_device(b))
    np.testing.assert_allclose(y_.to_host(), x + b, rtol=1e-6, atol=1e-6)
    db = wc.to_device(np.full(cols, 0.5, np.float32))
    ops.bias_grad(wc.to_device(dy), db, 0.25)
    np.testing.assert_allclose(db.to_host(), 0.125 + dy.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)

    dx, dd = wc.to_device(x), wc.to_device(dy)
    for slope in (0.0, 0.1):
        y = wc.empty((rows, cols))
        ops.leaky_relu_fwd(dx, y, slope)
        np.testing.assert_array_equal(y.to_host(), np.where(x > 0, x, slope * x).astype(np.float32))
        ops.leaky_relu_bwd(dd, dx, dx_, slope)
        np.testing.assert_allclose(dx_.to_host(), np.where(x > 0, dy, slope * dy), rtol=1e-6, atol=1e-7)
    y = wc.empty((rows, cols))
    ops.sigmoid_fwd(dx, y)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y.to_host(), s, rtol=1e-6, atol=1e-7)
    ops.sigmoid_bwd(dd, y, dx_)
    yh = y.to_host()
    np.testing.assert_allclose(dx_.to_host(), dy * yh * (1 - yh), rtol=1e-5, atol=1e-7)
    ops.tanh_fwd(dx, y)
    np.testing.assert_allclose(y.to_host(), np.tanh(x.astype(np.float64)), rtol=1e-6, atol=1e-6)

    labels = (np.arange(rows) * 7 % cols).astype(np.int64)
    labels[3], labels[5] = -1, cols
    probs = wc.empty((rows, cols))
    out = ops.softmax_xent_fwd(dx, wc.to_device(labels), probs).to_host()
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(probs.to_host(), p, rtol=1e-5, atol=1e-7)
    ok = (labels >= 0) & (labels < cols)
    loss = -np.log(p[np.arange(rows)[ok], labels[ok]]).sum()
    np.testing.assert_allclose(out[0], loss, rtol=1e-5)
    assert out[1] == 2
    ops.softmax_xent_bwd(probs, wc.to_device(labels), dx_, 1.0 / rows)
    ref = probs.to_host() / rows
    ref[np.arange(rows)[ok], labels[ok]] -= 1.0 / rows
    np.testing.assert_allclose(dx_.to_host(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_optimizer_updates_match_numpy(rng):
    ops = wc.nn_ops
    p, g, buf = _f32(rng, 301), _f32(rng, 301), _f32(rng, 301)
    for nesterov in (False, True):
        dp, dbuf = wc.to_device(p), wc.to_device(buf)
        ops.sgd_update(dp, wc.to_device(g), dbuf, 0.1, 0.9, 0.01, nesterov)
        gi = g + 0.01 * p
        bb = 0.9 * buf + gi
        np.testing.assert_allclose(dbuf.to_host(), bb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dp.to_host(), p - 0.1 * (gi + 0.9 * bb if nesterov else bb), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="momentum buffer"):
        ops.sgd_update(wc.to_device(p), wc.to_device(g), None, 0.1, 0.9)
    m, v = _f32(rng, 301), np.abs(_f32(rng, 301))
    dp, dm, dv = wc.to_device(p), wc.to_device(m), wc.to_device(v)
    b1, b2, lr, eps, wd = 0.9, 0.999, 1e-3, 1e-8, 0.01
    bc1, bc2 = 1 - b1**2, 1 - b2**2
    ops.adam_update(dp, wc.to_device(g), dm, dv, lr, b1, b2, eps, wd, bc1, bc2)
    gi = g.astype(np.float64) + wd * p
    mi = b1 * m + (1 - b1) * gi
    vi = b2 * v + (1 - b2) * gi * gi
    np.testing.assert_allclose(dm.to_host(), mi, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dv.to_host(), vi, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        dp.to_host(), p - lr / bc1 * mi / (np.sqrt(vi) / np.sqrt(bc2) + eps), rtol=1e-5, atol=1e-6
    )


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_vendor_reference_agrees_when_installed(rng):
    a, b = _f32(rng, 65, 33), _f32(rng, 33, 17)
    got = wc.vendor_matmul(a, b)
    lib = wc.vendor_library()
    if lib is None:
        assert got is None
    elif got is None:  # documented: installed, but it reaches no GPU (a CPU-only build; the emulated GPU)
        assert not _library_sees_a_gpu(lib), f"{lib} sees a GPU but vendor_matmul returned None"
    else:
        _check(got, a, b)


def _library_sees_a_gpu(lib: str) -> bool:
    try:
        if lib == "torch":
            import torch

            return bool(torch.cuda.is_available())
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# ---- The GPU's roofs (csrc/cuda/probe.cu) and pinned transfers ------------------------------


@no_gpu
@needs_module
def test_probes_and_pinned_memory_without_a_gpu_raise_clearly():
    mod = wc._load()[0]
    for make in (
        lambda: mod.probe.fma_seconds(1, 32, 1),
        lambda: mod.probe.copy_seconds(1024, 1),
        lambda: mod.probe.host_copy_seconds(1024, "h2d", "pinned", 1),
        lambda: wc.pinned_empty(3),
        lambda: wc.is_pinned(np.ones(3)),
        lambda: wc.from_dlpack(np.ones(3)),
        mod.capture_begin,
    ):
        with pytest.raises(wc.CudaUnavailableError, match="CUDA is unavailable: "):
            make()
    from whygpu.bench.gpu import gpu_peak, measure_gpu, vendor_name

    assert measure_gpu() is None and gpu_peak() is None and vendor_name() is None


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_probes_measure_positive_times():
    p = wc._module().probe
    assert p.fma_flops_per_iter() > 0
    p.fma_seconds(2, 64, 4)
    t = p.fma_seconds(2, 64, 4)
    assert np.isfinite(t) and t > 0
    for nbytes in (4, 1000, 1 << 16):
        times = p.copy_seconds(nbytes, 3)
        assert len(times) == 3 and all(np.isfinite(x) and x > 0 for x in times)
    for direction in ("h2d", "d2h"):
        for memory in ("pageable", "pinned", "staged"):
            times = p.host_copy_seconds(1 << 16, direction, memory, 2)
            assert len(times) == 2 and all(np.isfinite(x) and x > 0 for x in times)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_probe_arguments_are_checked():
    p = wc._module().probe
    for bad in (
        lambda: p.fma_seconds(0, 64, 1),
        lambda: p.fma_seconds(1, 0, 1),
        lambda: p.fma_seconds(1, 2048, 1),
        lambda: p.fma_seconds(1, 64, 0),
        lambda: p.copy_seconds(0, 1),
        lambda: p.copy_seconds(64, 0),
        lambda: p.host_copy_seconds(64, "up", "pinned", 1),
        lambda: p.host_copy_seconds(64, "h2d", "locked", 1),
        lambda: p.host_copy_seconds(64, "h2d", "pinned", 0),
    ):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_measure_gpu_reports_every_roof():
    from whygpu.bench.gpu import measure_gpu

    g = measure_gpu(quick=True)
    assert g["fma_gflops"] > 0 and g["multiprocessors"] >= 1
    assert g["bandwidth"]["DRAM"] > 0 and g["bandwidth"]["L2"] > 0
    for d in ("h2d", "d2h"):
        assert all(g["host"][d][m] > 0 for m in ("pageable", "pinned", "staged"))


def _staging_sizes():
    ch = wc._module().staging_chunk_bytes() if GPU else 1 << 22
    return [0, 1, 7, ch - 1, ch, ch + 1, 3 * ch + 7]


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_staged_transfers_round_trip_at_chunk_edges(rng):
    for nbytes in _staging_sizes():
        x = rng.integers(0, 256, nbytes, dtype=np.uint8)
        d = wc.to_device(x)  # pageable -> staged
        np.testing.assert_array_equal(d.to_host(), x)  # staged back
        d.copy_from_host(x[::-1].copy())
        np.testing.assert_array_equal(d.to_host(), x[::-1])
        p = wc.pinned_array(x)  # pinned -> direct
        assert wc.is_pinned(p) == (nbytes > 0)
        np.testing.assert_array_equal(wc.to_device(p).to_host(), x)
        out = wc.pinned_empty(x.shape, x.dtype)
        assert d.to_host(out=out) is out
        np.testing.assert_array_equal(out, x[::-1])


ALL_DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_staged_transfers_of_every_dtype_at_chunk_edges(dtype, rng):
    """Element counts that put a chunk boundary inside, on and just past the end,
    from pageable and pinned arrays, into pageable and pinned `out`s."""
    itemsize = np.dtype(dtype).itemsize
    per_chunk = wc._module().staging_chunk_bytes() // itemsize
    for n in (1, per_chunk - 1, per_chunk, per_chunk + 1, 2 * per_chunk + 3):
        x = rng.integers(0, 100, n).astype(dtype)
        d = wc.to_device(x)
        np.testing.assert_array_equal(d.to_host(), x)
        np.testing.assert_array_equal(wc.to_device(wc.pinned_array(x)).to_host(), x)
        out = wc.pinned_empty(n, dtype)
        d.to_host(out=out)
        np.testing.assert_array_equal(out, x)
        y = x[::-1].copy()
        d.copy_from_host(y)
        out = np.empty_like(x)
        d.to_host(out=out)
        np.testing.assert_array_equal(out, y)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_staged_transfers_from_and_to_unaligned_host_memory(rng):
    """Host views at odd byte offsets (staging memcpys any address)."""
    ch = wc._module().staging_chunk_bytes()
    for nbytes in (1, 5, ch + 3):
        backing = rng.integers(0, 256, nbytes + 1, dtype=np.uint8)
        x = backing[1:]  # contiguous, one byte off
        d = wc.to_device(x)
        np.testing.assert_array_equal(d.to_host(), x)
        out = np.zeros(nbytes + 2, np.uint8)
        d.to_host(out=out[1:-1])
        assert out[0] == 0 and out[-1] == 0  # nothing written around the view
        np.testing.assert_array_equal(out[1:-1], x)
        pinned = wc.pinned_empty(nbytes + 2, np.uint8)
        pinned[...] = 0
        d.to_host(out=pinned[1:-1])  # an interior pointer of pinned memory
        assert pinned[0] == 0 and pinned[-1] == 0
        np.testing.assert_array_equal(pinned[1:-1], x)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_copy_probe_at_sizes_that_are_not_whole_floats():
    p = wc._module().probe
    for nbytes in (1, 2, 3, 5, 4097):
        times = p.copy_seconds(nbytes, 1)
        assert len(times) == 1 and np.isfinite(times[0]) and times[0] > 0
    for bad in (lambda: p.copy_seconds(2**60, 1), lambda: p.host_copy_seconds(2**60, "h2d", "pinned", 1)):
        with pytest.raises(ValueError, match="nbytes"):
            bad()


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_])
def test_pinned_arrays(dtype, rng):
    x = rng.uniform(-9, 9, (37, 5)).astype(dtype)
    p = wc.pinned_empty((37, 5), dtype)
    assert isinstance(p, np.ndarray) and p.shape == (37, 5) and p.dtype == np.dtype(dtype)
    assert p.flags.c_contiguous and p.flags.writeable and wc.is_pinned(p)
    p[...] = x
    np.testing.assert_array_equal(wc.to_device(p).to_host(), x)
    assert not wc.is_pinned(x) and not wc.is_pinned(np.empty(0))
    assert wc.is_pinned(p[3:])  # a view into pinned memory is pinned too
    with pytest.raises(TypeError):
        wc.is_pinned([1, 2])
    with pytest.raises(ValueError):
        wc.pinned_empty((-1, 3))
    with pytest.raises(TypeError):
        wc.pinned_empty(3, np.complex64)
    del p  # freed by its capsule: nothing to see, but nothing may crash either


def _errors_in_threads(work, args_list) -> list:
    """Runs work(*args) in one Python thread per args, all at once; returns what
    went wrong in any of them (a mismatch it appended, or an exception)."""
    import threading

    errors = []

    def run(args):
        try:
            work(errors, *args)
        except Exception as exc:  # pragma: no cover - reported by the caller's assert
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(args,)) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_transfers_from_several_threads_at_once(rng):
    """Each Python thread stages through its own pinned buffers: no global buffer to race on."""
    ch = wc._module().staging_chunk_bytes()
    data = [rng.integers(0, 2**31, (2 * ch + 1000 * i) // 8, dtype=np.int64) for i in range(4)]

    def work(errors, x):
        for _ in range(3):
            if not np.array_equal(wc.to_device(x).to_host(), x):
                errors.append("mismatch")

    assert _errors_in_threads(work, [(x,) for x in data]) == []


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_kernels_and_transfers_from_several_threads_at_once(rng):
    """Python threads launching kernels while others copy: each gets its own product."""
    pairs = [(_f32(rng, 33 + i, 20), _f32(rng, 20, 17 + i)) for i in range(4)]

    def work(errors, a, b):
        ref = a.astype(np.float64) @ b
        for _ in range(3):
            got = wc.matmul(wc.to_device(a), wc.to_device(b)).to_host()
            if np.abs(got - ref).max() > 1e-4:
                errors.append("mismatch")

    assert _errors_in_threads(work, pairs) == []


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_split_k_gives_the_same_product(trans_a, trans_b, rng):
    """The weight-gradient shape: few tiles of C, long k.  Every split (chosen,
    none, forced, more slices than k-tiles) agrees with the float64 reference."""
    m, n, k = 10, 37, 1531
    a = _f32(rng, *((k, m) if trans_a else (m, k)))
    b = _f32(rng, *((n, k) if trans_b else (k, n)))
    c0 = _f32(rng, m, n)
    ref = 0.5 * ((a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)) - 2.0 * c0
    da, db = wc.to_device(a), wc.to_device(b)
    for split in (0, 1, 2, 7, 1000):
        dc = wc.to_device(c0)
        wc.gemm(
            da, db, dc, alpha=0.5, beta=-2.0, trans_a=trans_a, trans_b=trans_b, kernel="cuda_warptile", split_k=split
        )
        np.testing.assert_allclose(dc.to_host(), ref, rtol=0, atol=4 * k * 6e-8 * (np.abs(ref).max() + 1))
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="split_k"):
            wc.gemm(da, db, trans_a=trans_a, trans_b=trans_b, split_k=bad)


# ---- CUDA graphs, asynchronous uploads, one-launch optimizer updates ------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_a_captured_graph_replays_its_work_on_new_data(rng):
    """Nothing runs while capturing; each replay runs the recorded kernels on
    whatever the captured arrays hold then -- including split-k's workspace,
    which the graph allocates itself."""
    mod = wc._module()
    m, n, k = 9, 21, 1200  # few tiles, long k: split-k, with a workspace made inside the graph
    da, db = wc.to_device(_f32(rng, m, k)), wc.to_device(_f32(rng, k, n))
    dc = wc.zeros((m, n))
    before = dc.to_host()
    mod.capture_begin()
    assert mod.is_capturing()
    try:
        wc.gemm(da, db, dc, kernel="cuda_warptile", split_k=4)
        wc.nn_ops.leaky_relu_fwd(dc, dc, 0.0)  # in place: c = relu(a @ b)
    finally:
        graph = mod.capture_end()
    assert not mod.is_capturing()
    np.testing.assert_array_equal(dc.to_host(), before)  # captured, not run
    for _ in range(3):
        a, b = _f32(rng, m, k), _f32(rng, k, n)
        da.copy_from_host(a)
        db.copy_from_host(b)
        graph.replay()
        ref = np.maximum(a.astype(np.float64) @ b, 0)
        np.testing.assert_allclose(dc.to_host(), ref, rtol=0, atol=4 * k * 6e-8 * (np.abs(ref).max() + 1))
    assert graph.replays == 3


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_a_graph_keeps_the_memory_it_uses(rng):
    """Arrays made or dropped while capturing stay allocated as long as the graph."""
    mod = wc._module()
    x = _f32(rng, 50, 7)
    dx = wc.to_device(x)
    out = wc.empty((50, 7))
    mod.capture_begin()
    try:
        tmp = wc.empty((50, 7))  # made during the capture
        wc.nn_ops.tanh_fwd(dx, tmp)
        wc.nn_ops.sigmoid_fwd(tmp, out)
        del tmp  # dropped: a recorded launch still uses it
    finally:
        graph = mod.capture_end()
    assert graph.kept_arrays >= 1
    for _ in range(2):
        junk = [wc.to_device(np.full((50, 7), 9.0, np.float32)) for _ in range(4)]  # reuse freed memory, if any
        graph.replay()
        np.testing.assert_allclose(out.to_host(), 1 / (1 + np.exp(-np.tanh(x.astype(np.float64)))), rtol=1e-5)
        del junk


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_host_copies_and_waits_are_refused_while_capturing(rng):
    mod = wc._module()
    d = wc.to_device(_f32(rng, 4, 4))
    up = mod.Uploader(d)
    mod.capture_begin()
    try:
        for call in (
            lambda: wc.to_device(np.ones(3, np.float32)),
            d.to_host,
            lambda: d.copy_from_host(np.ones((4, 4), np.float32)),
            wc.synchronize,
            lambda: up.load(np.ones((4, 4), np.float32)),
        ):
            with pytest.raises(RuntimeError, match="captures a CUDA graph"):
                call()
        with pytest.raises(RuntimeError, match="already capturing"):
            mod.capture_begin()
    finally:
        graph = mod.capture_end()
    graph.replay()  # an empty graph replays
    with pytest.raises(RuntimeError, match="not capturing"):
        mod.capture_end()
    wc.synchronize()


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_uploader_queues_copies_without_waiting(rng):
    """Each load lands in the target in stream order, even when the host
    array is overwritten right after (the Uploader copied it to pinned memory)."""
    mod = wc._module()
    target = wc.empty((37, 5))
    up = mod.Uploader(target)
    assert up.pinned
    out = wc.empty((37, 5))
    h = _f32(rng, 37, 5)
    for i in range(4):
        h[:] = i
        up.load(h)
        h[:] = -1.0  # too late to change what was queued
        wc.nn_ops.tanh_fwd(up.target, out)
        np.testing.assert_allclose(out.to_host(), np.tanh(np.full((37, 5), i)), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        up.load(np.zeros((5, 37), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        up.load(np.zeros((37, 5)))
    empty = mod.Uploader(wc.empty((0, 3)))
    empty.load(np.zeros((0, 3), np.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_copy_into(rng):
    mod = wc._module()
    a = _f32(rng, 6, 4)
    dst = wc.empty((6, 4))
    mod.copy_into(dst, wc.to_device(a))
    np.testing.assert_array_equal(dst.to_host(), a)
    for bad in (wc.empty((4, 6)), wc.empty((6, 4), np.float64)):
        with pytest.raises(ValueError, match="does not fit"):
            mod.copy_into(dst, bad)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("count", [1, 3, 30])  # 30 > 24 tensors per launch: two launches
def test_one_launch_optimizer_updates_match_the_per_tensor_ones(count, rng):
    ops = wc.nn_ops
    sizes = [int(s) for s in rng.integers(0, 700, count)]
    ps = [_f32(rng, s) for s in sizes]
    gs = [_f32(rng, s) for s in sizes]
    ms = [_f32(rng, s) for s in sizes]
    vs = [np.abs(_f32(rng, s)) for s in sizes]
    dev = lambda xs: [wc.to_device(x) for x in xs]  # noqa: E731
    # SGD with Nesterov momentum, hyperparameters as arguments and from device memory
    for hyper_dev in (False, True):
        dp, dg, db = dev(ps), dev(gs), dev(ms)
        hyper = [0.1, 0.9, 0.01, 1.0]
        ops.optimizer_update(
            "sgd", dp, dg, db, None, hyper, wc.to_device(np.asarray(hyper, np.float32)) if hyper_dev else None
        )
        for p, g, b, got_p, got_b in zip(ps, gs, ms, dp, db):
            gi = g + 0.01 * p
            bb = 0.9 * b + gi
            np.testing.assert_allclose(got_b.to_host(), bb, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got_p.to_host(), p - 0.1 * (gi + 0.9 * bb), rtol=1e-5, atol=1e-6)
    # plain SGD needs no buffers
    dp = dev(ps)
    ops.optimizer_update("sgd", dp, dev(gs), None, None, [0.5, 0.0, 0.0, 0.0])
    for p, g, got in zip(ps, gs, dp):
        np.testing.assert_allclose(got.to_host(), p - 0.5 * g, rtol=1e-5, atol=1e-6)
    # Adam
    b1, b2, lr, eps, wd, t = 0.9, 0.999, 1e-3, 1e-8, 0.01, 3
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    dp, dm, dv = dev(ps), dev(ms), dev(vs)
    ops.optimizer_update("adam", dp, dev(gs), dm, dv, [lr / bc1, b1, b2, eps, wd, 1 / np.sqrt(bc2)])
    for p, g, m, v, got_p, got_m, got_v in zip(ps, gs, ms, vs, dp, dm, dv):
        gi = g.astype(np.float64) + wd * p
        mi = b1 * m + (1 - b1) * gi
        vi = b2 * v + (1 - b2) * gi * gi
        np.testing.assert_allclose(got_m.to_host(), mi, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got_v.to_host(), vi, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            got_p.to_host(), p - lr / bc1 * mi / (np.sqrt(vi) / np.sqrt(bc2) + eps), rtol=1e-5, atol=1e-6
        )


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_one_launch_optimizer_update_argument_checks(rng):
    ops = wc.nn_ops
    p, g = wc.to_device(_f32(rng, 5)), wc.to_device(_f32(rng, 5))
    cases = [
        (("rmsprop", [p], [g], None, None, [0.1, 0, 0, 0]), ValueError, "kind"),
        (("sgd", [p], [g, g], None, None, [0.1, 0, 0, 0]), ValueError, "same length"),
        (("sgd", [p], [g], None, None, [0.1]), ValueError, "4 numbers"),
        (("sgd", [p], [g], None, None, [0.1, 0.9, 0, 0]), ValueError, "momentum buffers is needed"),
        (("adam", [p], [g], [g], None, [1, 1, 1, 1, 1, 1]), ValueError, "v is needed"),
        (("sgd", [p], [wc.to_device(_f32(rng, 6))], None, None, [0.1, 0, 0, 0]), ValueError, "same number"),
        (("sgd", [p], [p], None, None, [0.1, 0, 0, 0]), ValueError, "shares memory"),
        (("sgd", [wc.zeros(5, np.float64)], [g], None, None, [0.1, 0, 0, 0]), TypeError, "float32"),
        (("sgd", [p], [g], None, None, [0.1, 0, 0, 0], wc.zeros(3)), ValueError, "as many"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ops.optimizer_update(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_fit_metrics_sum_loss_and_correct_rows_on_the_gpu(rng):
    ops = wc.nn_ops
    rows, cols = 301, 7
    logits = _f32(rng, rows, cols)
    logits[5] = 0.25  # a tie: np.argmax takes the first
    labels = rng.integers(0, cols, rows)
    acc = wc.zeros(3, np.float64)
    loss = wc.to_device(np.array([1.5, 2.0]))
    for _ in range(2):
        ops.fit_metrics(loss, wc.to_device(logits), wc.to_device(labels), None, acc)
    right = np.count_nonzero(np.argmax(logits, axis=1) == labels)
    np.testing.assert_array_equal(acc.to_host(), [3.0, 4.0, 2 * right])
    # binary targets: a row is right when every output is on the side of its target
    t = (rng.random((rows, cols)) > 0.5).astype(np.float32)
    acc2 = wc.zeros(3, np.float64)
    ops.fit_metrics(wc.to_device(np.array([0.5])), wc.to_device(logits), None, wc.to_device(t), acc2)
    right2 = np.count_nonzero(np.all((logits > 0) == (t >= 0.5), axis=1))
    np.testing.assert_array_equal(acc2.to_host(), [0.5, 0.0, right2])
    # neither: the loss only
    acc3 = wc.zeros(3, np.float64)
    ops.fit_metrics(wc.to_device(np.array([0.5])), wc.to_device(logits), None, None, acc3, weight=0.25)
    np.testing.assert_array_equal(acc3.to_host(), [0.125, 0.0, 0.0])  # weighted: a sum over elements to samples
    with pytest.raises(ValueError, match="acc"):
        ops.fit_metrics(loss, wc.to_device(logits), None, None, wc.zeros(2, np.float64))
    with pytest.raises(ValueError, match="one entry per row"):
        ops.fit_metrics(loss, wc.to_device(logits), wc.to_device(labels[:-1]), None, acc)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("name", CUDA_NAMES)
def test_fused_bias_and_relu_epilogue(name, rng):
    """c = relu(alpha op(a) op(b) + beta c + bias) in one launch, on every rung,
    at edge shapes (k = 0 and alpha = 0 take the no-product path), with split-k."""
    cases = [
        (1, 1, 1, False, False, 1.0, 0.0),
        (17, 33, 9, True, False, 0.5, 2.0),
        (70, 5, 130, False, True, -1.0, 0.0),
        (5, 70, 0, True, True, 1.0, -1.0),
        (9, 31, 700, False, False, 0.0, 0.5),
    ]
    for m, n, k, ta, tb, alpha, beta in cases:
        a = _f32(rng, *((k, m) if ta else (m, k)))
        b = _f32(rng, *((n, k) if tb else (k, n)))
        c0, bias = _f32(rng, m, n), _f32(rng, n)
        prod = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
        for with_bias in (False, True):
            for relu in (False, True):
                ref = alpha * prod + beta * c0 + (bias if with_bias else 0.0)
                ref = np.maximum(ref, 0) if relu else ref
                for split in (0, 3) if name == "cuda_warptile" else (0,):
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
                        split_k=split,
                        bias=wc.to_device(bias) if with_bias else None,
                        relu=relu,
                    )
                    np.testing.assert_allclose(
                        dc.to_host(), ref, rtol=0, atol=4 * max(k, 1) * 6e-8 * (np.abs(ref).max() + 1)
                    )
    da, db = wc.to_device(_f32(rng, 3, 4)), wc.to_device(_f32(rng, 4, 5))
    for bad, exc in (
        (wc.to_device(_f32(rng, 4)), ValueError),
        (wc.zeros(5, np.float64), ValueError),
        (np.zeros(5, np.float32), TypeError),
    ):
        with pytest.raises(exc, match="bias"):
            wc.gemm(da, db, kernel=name, bias=bad)
    with pytest.raises(TypeError, match="relu"):
        wc.gemm(da, db, kernel=name, relu=1)


# ---- DLPack -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_])
def test_dlpack_round_trip_shares_memory(dtype, rng):
    a = (rng.standard_normal((7, 5)) * 10).astype(dtype)
    d = wc.to_device(a)
    assert d.__dlpack_device__() == (2, 0)
    e = wc.from_dlpack(d)
    assert e.ptr == d.ptr and e.shape == d.shape and e.dtype == d.dtype  # no copy
    np.testing.assert_array_equal(e.to_host(), a)
    if dtype == np.float32:  # a write through one is seen through the other
        wc.nn_ops.tanh_fwd(d, e)
        np.testing.assert_allclose(d.to_host(), np.tanh(a), rtol=1e-6)
    del d  # the exported tensor keeps the memory alive for e
    junk = [wc.to_device(np.zeros((7, 5), dtype)) for _ in range(3)]
    assert e.to_host().shape == (7, 5)
    del junk


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_dlpack_refuses_what_it_cannot_share(rng):
    d = wc.to_device(_f32(rng, 3, 4))
    cap = d.__dlpack__()
    wc.from_dlpack(cap)
    with pytest.raises(ValueError, match="used once"):
        wc.from_dlpack(cap)
    with pytest.raises(TypeError, match="CUDA memory"):
        wc.from_dlpack(np.zeros(3, np.float32))  # NumPy has __dlpack__, on the CPU
    with pytest.raises(TypeError, match="__dlpack__"):
        wc.from_dlpack([1.0, 2.0])
    d.__dlpack__(stream=-1)  # an unconsumed capsule frees its tensor when it goes: nothing leaks or crashes
    empty = wc.from_dlpack(wc.empty((0, 3)))
    assert empty.shape == (0, 3)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_dlpack_with_pytorch_and_cupy_when_installed(rng):
    """Zero-copy both ways with the libraries that are installed (a real GPU only)."""
    if "Emulated" in wc.device_info()["name"]:
        pytest.skip("the emulated GPU's memory is host memory: other libraries cannot use it")
    a = _f32(rng, 6, 9)
    tried = 0
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        tried += 1
        d = wc.to_device(a)
        t = torch.from_dlpack(d)
        assert t.data_ptr() == d.ptr and t.is_cuda
        t.mul_(2)
        np.testing.assert_allclose(d.to_host(), 2 * a)
        back = wc.from_dlpack(torch.arange(12, device="cuda", dtype=torch.float32).reshape(3, 4))
        np.testing.assert_array_equal(back.to_host(), np.arange(12, dtype=np.float32).reshape(3, 4))
        with pytest.raises(ValueError, match="C-contiguous"):
            wc.from_dlpack(torch.zeros(4, 3, device="cuda").t())
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        tried += 1
        d = wc.to_device(a)
        c = cupy.from_dlpack(d)
        assert c.data.ptr == d.ptr
        back = wc.from_dlpack(cupy.ones((2, 3), dtype=cupy.float32))
        np.testing.assert_array_equal(back.to_host(), np.ones((2, 3), np.float32))
    if not tried:
        pytest.skip("neither PyTorch (with CUDA) nor CuPy is installed")
