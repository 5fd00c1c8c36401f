"""The GPU's roofs, measured: what ``whygpu roofline``, ``ladder``, ``explain``
and the report compare the CUDA rungs with when a GPU is usable.

Like the CPU probes (``whygpu._probe``) these are compiled microbenchmarks,
in ``csrc/cuda/probe.cu``, timed with CUDA events:

* **FMA peak** -- every thread of a full grid runs independent chains of
  float32 fused multiply-adds in registers: no memory traffic, so the time
  is the arithmetic units' alone.  This is the compute roof of CUDA rungs 8-14.
* **tensor-core peak** -- every warp of a full grid issues independent chains
  of ``mma.sync`` (bf16 m16n8k16, and TF32 m16n8k8) on registers: the compute
  roof of the tensor-core rungs 15-16 (``cuda_mma``, ``cuda_mma_bf16``,
  ``cuda_wgmma``).  On Hopper, warpgroup ``wgmma`` can go faster than any
  ``mma.sync`` -- so rung 16 may pass this roof, and the report says so.
* **device memory bandwidth** -- a float4 copy kernel, counted as bytes read
  plus bytes written (as STREAM does).  Two working sets: one far larger than
  the L2 cache (DRAM, HBM on a data-centre GPU) and one that fits in it (L2).
* **host <-> device bandwidth** -- the PCIe (or NVLink-C2C) bus, both ways,
  from ordinary *pageable* host memory, from *pinned* (page-locked) memory,
  and *staged*: pageable memory copied through whygpu's own pinned buffers,
  the path ``DeviceArray`` and the ``cuda`` back end use.

All figures are best-of-samples, like the CPU roofs: a roof is what the
hardware *can* do.  :func:`measure_gpu` returns None where no GPU is usable.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["measure_gpu", "gpu_usable", "gpu_peak", "tensor_peaks", "vendor_runner", "vendor_name"]

_THREADS = 256  # threads per block of the FMA probe
_BLOCKS_PER_SM = 8  # 8 x 256 = 2048 threads: a full SM on every GPU since Volta
# The tensor-core probe: 2 x 8 warps per SM, 4 per tensor core (one per SM quarter), each
# with 8 independent mma.sync in flight -- more than the pipes' latency needs.
_MMA_BLOCKS_PER_SM = 2


def gpu_usable() -> bool:
    """True when whygpu's CUDA kernels can run here."""
    try:
        from .. import cuda
    except ImportError:  # pragma: no cover - the module is always there
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver must not break the CPU measurements
        return False


def _probe():
    from .. import cuda

    return cuda._require().probe


def _fma_gflops(sms: int, target_s: float, samples: int) -> float:
    """Best-of-`samples` GFLOP/s of the FMA probe on a grid that fills every SM,
    the work calibrated so that one launch takes about `target_s`."""
    p = _probe()
    blocks = max(1, sms * _BLOCKS_PER_SM)
    per_iter = p.fma_flops_per_iter()
    iters = 64
    t = p.fma_seconds(blocks, _THREADS, iters)  # also the warm-up (first launch loads the module)
    while t < target_s / 8 and iters < (1 << 30):
        iters *= 4
        t = p.fma_seconds(blocks, _THREADS, iters)
    iters = max(1, min(int(iters * target_s / max(t, 1e-9)), 1 << 30))
    best = min(p.fma_seconds(blocks, _THREADS, iters) for _ in range(samples))
    return blocks * _THREADS * iters * per_iter / best / 1e9


def _mma_gflops(sms: int, precision: str, target_s: float, samples: int) -> float:
    """Best-of-`samples` GFLOP/s of the tensor-core probe in `precision` ('bf16' or
    'tf32'), calibrated like :func:`_fma_gflops` -- from one iteration up: a tensor-core
    step is 32 mma.sync per warp, slow to emulate."""
    p = _probe()
    blocks = max(1, sms * _MMA_BLOCKS_PER_SM)
    per_iter = p.mma_flops_per_iter(precision)
    iters = 1
    t = p.mma_seconds(blocks, _THREADS, iters, precision)  # also the warm-up
    while t < target_s / 8 and iters < (1 << 30):
        iters *= 4
        t = p.mma_seconds(blocks, _THREADS, iters, precision)
    iters = max(1, min(int(iters * target_s / max(t, 1e-9)), 1 << 30))
    best = min(p.mma_seconds(blocks, _THREADS, iters, precision) for _ in range(samples))
    return blocks * _THREADS * iters * per_iter / best / 1e9


def tensor_peaks(sms: int, *, quick: bool = True) -> dict:
    """{'tensor_gflops': {'bf16': GFLOP/s, 'tf32': GFLOP/s}} from the tensor-core probe,
    or {'tensor_gflops': {}, 'tensor_reason': why} on a GPU without bf16/TF32 tensor cores."""
    from .. import cuda

    target_s, samples = (0.01, 2) if quick else (0.03, 5)
    try:
        return {
            "tensor_gflops": {prec: _mma_gflops(sms, prec, target_s, samples) for prec in ("bf16", "tf32")},
            "tensor_reason": None,
        }
    except cuda.CudaUnavailableError as exc:
        return {"tensor_gflops": {}, "tensor_reason": str(exc)}
    except AttributeError:  # a whygpu._cuda built before the probe existed
        return {"tensor_gflops": {}, "tensor_reason": "this build's CUDA module has no tensor-core probe"}


def _copy_gbps(nbytes: int, reps: int) -> float:
    times = _probe().copy_seconds(int(nbytes), int(reps))
    return 2 * nbytes / min(times) / 1e9  # read + write


def _host_gbps(nbytes: int, direction: str, memory: str, reps: int) -> float:
    times = _probe().host_copy_seconds(int(nbytes), direction, memory, int(reps))
    return nbytes / min(times) / 1e9


def gpu_peak(*, quick: bool = True) -> dict | None:
    """Only the peaks: {'device', 'multiprocessors', 'fma_gflops', 'tensor_gflops', 'tensor_reason'}
    (see :func:`tensor_peaks`), or None without a GPU."""
    if not gpu_usable():
        return None
    from .. import cuda

    info = cuda.device_info()
    if info is None:  # (None only without a usable GPU)
        return None
    sms = int(info.get("multiprocessors") or 1)
    target_s, samples = (0.01, 3) if quick else (0.03, 5)
    return {
        "device": str(info.get("name", "GPU")),
        "multiprocessors": sms,
        "fma_gflops": _fma_gflops(sms, target_s, samples),
        **tensor_peaks(sms, quick=quick),
    }


def measure_gpu(*, quick: bool = False, log: Callable[[str], None] = lambda s: None) -> dict | None:
    """Measure the GPU's roofs (about a second; less with ``quick``); None without a usable GPU.

    Returns a JSON-ready dict: ``device`` (name), ``device_info``,
    ``fma_gflops`` (float32 peak), ``tensor_gflops`` ({"bf16": GFLOP/s, "tf32": GFLOP/s}
    from the mma.sync probe; empty, with ``tensor_reason``, without tensor cores),
    ``bandwidth`` ({"L2": GB/s, "DRAM": GB/s},
    device-to-device, read + write), ``host`` ({"h2d"|"d2h": {"pageable"|
    "pinned"|"staged": GB/s}}), the byte counts used, and ``seconds``.
    """
    if not gpu_usable():
        return None
    from .. import cuda

    start = time.perf_counter()
    info = cuda.device_info()
    if info is None:  # (None only without a usable GPU)
        return None
    sms = int(info.get("multiprocessors") or 1)
    l2 = int(info.get("l2_cache_bytes") or (4 << 20))
    free, _total = cuda.memory_info()
    target_s, samples = (0.01, 3) if quick else (0.03, 5)
    fma = _fma_gflops(sms, target_s, samples)
    tensor = tensor_peaks(sms, quick=quick)
    # DRAM: buffers 8x the L2 (nothing survives in it between copies), at least 64 MiB
    # (32 quick), at most an eighth of the free memory.  L2: source + destination fill
    # half of it, so they stay resident from one copy to the next.
    dram_bytes = min(max(8 * l2, (32 if quick else 64) << 20), max(free // 8, 1 << 20))
    dram_bytes -= dram_bytes % 16
    l2_bytes = max(4096, (l2 // 4) - (l2 // 4) % 16)
    reps = 5 if quick else 10
    bandwidth = {"L2": _copy_gbps(l2_bytes, reps), "DRAM": _copy_gbps(dram_bytes, reps)}
    host_bytes = (16 if quick else 64) << 20
    host = {
        d: {m: _host_gbps(host_bytes, d, m, 3 if quick else 5) for m in ("pageable", "pinned", "staged")}
        for d in ("h2d", "d2h")
    }
    return {
        "device": str(info.get("name", "GPU")),
        "device_info": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))},
        "multiprocessors": sms,
        "fma_gflops": fma,
        **tensor,
        "bandwidth": bandwidth,
        "host": host,
        "bytes": {"dram_copy": dram_bytes, "l2_copy": l2_bytes, "host_copy": host_bytes},
        "fma_threads": sms * _BLOCKS_PER_SM * _THREADS,
        "mma_warps": sms * _MMA_BLOCKS_PER_SM * _THREADS // 32,
        "emulated": "emulated" in str(info.get("name", "")).lower(),
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------
# cuBLAS, the vendor's reference, through CuPy or PyTorch (never linked by whygpu)
# --------------------------------------------------------------------------
def vendor_name() -> str | None:
    """'cupy' or 'torch' when one of them is installed *and* reaches the GPU; else None."""
    if not gpu_usable():
        return None
    from .. import cuda

    lib = cuda.vendor_library()
    if lib == "cupy":
        try:
            import cupy as cp

            cp.cuda.runtime.getDeviceCount()
            return "cupy"
        except Exception:
            lib = "torch" if _has("torch") else None
    if lib == "torch":
        try:
            import torch

            return "torch" if torch.cuda.is_available() else None
        except Exception:
            return None
    return None


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def vendor_runner(a, b) -> Callable[[], None] | None:
    """A callable computing a @ b with cuBLAS on copies of the float32 NumPy
    arrays already on the GPU (strict float32: TF32 tensor cores off), and
    waiting for it -- or None without CuPy/PyTorch and a GPU."""
    lib = vendor_name()
    if lib == "cupy":
        import cupy as cp

        da, db = cp.asarray(a), cp.asarray(b)
        dc = cp.empty((a.shape[0], b.shape[1]), dtype=cp.float32)

        def run():
            cp.matmul(da, db, out=dc)
            cp.cuda.get_current_stream().synchronize()

        return run
    if lib == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False  # strict float32, like whygpu's kernels
        da, db = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        dc = torch.empty((a.shape[0], b.shape[1]), dtype=torch.float32, device="cuda")

        def run():
            torch.matmul(da, db, out=dc)
            torch.cuda.synchronize()

        return run
    return None
