"""The CPU's roofs, measured by the compiled microbenchmarks of ``whygpu._probe``
(FMA peaks, one dependent chain of adds, the interpreter loop, STREAM-triad
bandwidths): what :mod:`whygpu.predict.roofline` models against and the ladder's
"% of peak" divides by."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from .._cpu import cpu_info
from .._threads import get_num_threads

try:
    import whygpu._probe as _probe
except ImportError as exc:  # pragma: no cover - only on a broken build
    _probe = None
    _probe_error: str | None = str(exc)
else:
    _probe_error = None

__all__ = ["fma_peaks", "measure_machine", "best_of_roofs"]


def _need_probe():
    if _probe is None:  # pragma: no cover
        raise RuntimeError(f"whygpu._probe is not available: {_probe_error}")


def _fma_gflops(arch: str, threads: int, target_s: float, samples: int) -> float:
    """Best-of-`samples` GFLOP/s of the FMA chains on `threads` threads.

    The work per thread is calibrated on one thread: on a busy machine a
    parallel calibration run can be delayed by the scheduler and would
    shrink the measurement to almost nothing."""
    per_iter = _probe.fma_flops_per_iter(arch)
    iters = 20_000
    t = _probe.fma_peak_seconds(arch, 1, iters)  # also the warm-up
    while t < target_s / 8:
        iters *= 4
        t = _probe.fma_peak_seconds(arch, 1, iters)
    iters = max(1, int(iters * target_s / t))
    best = min(_probe.fma_peak_seconds(arch, threads, iters) for _ in range(samples))
    return threads * iters * per_iter / best / 1e9


def _scalar_gflops(target_s: float, samples: int) -> float:
    n = 1024  # 8 KiB of floats: stays in L1, so only the add latency counts
    reps = max(1, int(target_s * 2e9 / (2 * n) / 2))  # ~2 GFLOP/s expected
    best = min(_probe.scalar_chain_seconds(n, reps) for _ in range(samples))
    return 2 * n * reps / best / 1e9


def _interpreter_gflops(target_s: float, samples: int) -> float:
    """The pure-Python roof: a dot product of two lists, the simplest loop
    that does one multiply-add per iteration."""
    x = [1.0 + i * 1e-6 for i in range(1000)]
    y = [1.0 - i * 1e-6 for i in range(1000)]

    def dot():
        acc = 0.0
        for p in range(1000):
            acc += x[p] * y[p]
        return acc

    t0 = time.perf_counter()
    dot()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(target_s / one))
    best = math.inf
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(reps):
            dot()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2000 / best / 1e9


def _working_sets(caches: dict, threads: int) -> dict[str, int]:
    """Elements per thread of each triad array so that the 3 arrays sit in
    the named level (half of it, leaving room) but not in the level above.

    The L3 set is at most 8 L2s per thread: a virtual machine may report the
    L3 of every socket of its host (480 MiB on one 2-core guest), and half of
    that is a DRAM working set -- the "L3 roof" then came out at DRAM speed
    (15 GB/s instead of 28), below what a kernel streaming from L3 reaches."""
    l2 = caches.get("L2") or 1 << 20
    l3 = caches.get("L3") or 8 << 20
    out = {"L2": max(1024, l2 // 2 // 24)}
    if l3 > 4 * l2 * threads:
        out["L3"] = max(out["L2"] * 4, min(l3 // 2, 8 * l2 * threads) // 24 // threads)
    dram_total = min(max(4 * l3, 64 << 20), 512 << 20)
    out["DRAM"] = dram_total // 24 // threads
    return out


def _triad_gbps(arch: str, n_per_thread: int, threads: int, target_bytes: float, samples: int) -> float:
    # Bytes the memory level really moves per element: 2 reads and 1 write of 8 bytes, plus the read of
    # the written line that a write-back cache does before the store (read for ownership).  STREAM's
    # own count leaves that read out (24 bytes) and so understates the level by a quarter: a kernel
    # that only reads -- reordered, streaming B from L3 -- reaches ~100% of a 24-byte roof on a quiet
    # machine, and a roof must be an upper bound.
    bytes_per_sweep = 32 * n_per_thread * threads
    sweeps = max(1, int(target_bytes / bytes_per_sweep))
    times = _probe.triad_seconds(arch, n_per_thread, threads, sweeps, samples + 1)[1:]  # drop the first (page faults)
    return bytes_per_sweep * sweeps / min(times) / 1e9


def fma_peaks(threads: int | None = None, *, quick: bool = False, arch: str | None = None) -> dict:
    """Only the FMA peaks (a fraction of a second): {'arch', 'threads',
    'gflops_1t', 'gflops_all'} -- for the "% of peak" columns of the ladder."""
    _need_probe()
    info = cpu_info()
    threads = get_num_threads() if threads is None else int(threads)
    if not info.get("openmp", False):
        threads = 1
    arch = arch or info.get("arch", "portable")
    target_s, samples = (0.015, 3) if quick else (0.04, 5)
    one = _fma_gflops(arch, 1, target_s, samples)
    return {
        "arch": arch,
        "threads": threads,
        "gflops_1t": one,
        "gflops_all": _fma_gflops(arch, threads, target_s, samples) if threads > 1 else one,
    }


def measure_machine(threads: int | None = None, *, quick: bool = False, arch: str | None = None) -> dict:
    """Measure this machine's roofs (about 1 s, 0.4 s with ``quick``).

    Returns a JSON-ready dict: ``compute`` (GFLOP/s per roof of
    :data:`whygpu.predict.roofline.COMPUTE_ROOFS`), ``bandwidth`` ({"1": {level: GB/s}, "all": ...}),
    ``fma_by_arch`` (1-core FMA peak per instruction set), ``threads``,
    ``arch``, ``caches``, ``dtype`` (the peaks are float32) and ``seconds``.
    Peaks are best-of-samples, as in STREAM: a roof is what *can* be reached.
    """
    _need_probe()
    info = cpu_info()
    threads = get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not info.get("openmp", False):
        threads = 1
    arch = arch or info.get("arch", "portable")
    target_s = 0.015 if quick else 0.04
    samples = 3 if quick else 5
    start = time.perf_counter()
    fma_by_arch = {a: _fma_gflops(a, 1, target_s, samples) for a in info.get("supported_archs", ["portable"])}
    compute = {
        "interpreter": _interpreter_gflops(target_s, samples),
        "scalar": _scalar_gflops(target_s, samples),
        "simd_baseline": fma_by_arch.get("portable") or _fma_gflops("portable", 1, target_s, samples),
        "simd_1t": fma_by_arch.get(arch) or _fma_gflops(arch, 1, target_s, samples),
    }
    compute["simd_all"] = _fma_gflops(arch, threads, target_s, samples) if threads > 1 else compute["simd_1t"]
    sets = _working_sets(info.get("caches", {}), threads)
    target_bytes = 0.3e9 if quick else 1e9
    bandwidth: dict[str, dict[str, float]] = {"1": {}, "all": {}}  # threads ("1" or "all") -> level -> GB/s
    for level, n_elems in sets.items():
        bandwidth["1"][level] = _triad_gbps(
            arch, n_elems * (threads if level == "DRAM" else 1), 1, target_bytes, samples
        )
        bandwidth["all"][level] = (
            _triad_gbps(arch, n_elems, threads, target_bytes, samples) if threads > 1 else bandwidth["1"][level]
        )
    return {
        "arch": arch,
        "threads": threads,
        "dtype": "float32",
        "caches": dict(info.get("caches", {})),
        "compute": compute,
        "bandwidth": bandwidth,
        "fma_by_arch": fma_by_arch,
        "triad_elements_per_thread": sets,
        "seconds": time.perf_counter() - start,
    }


# The measured figures of a roofs record: the CPU's (measure_machine) and the GPU's (bench.gpu.measure_gpu).
_ROOF_KEYS = ("compute", "bandwidth", "fma_by_arch", "fma_gflops", "tensor_gflops")


def best_of_roofs(first: dict, again: dict | None, keys: Sequence[str] = _ROOF_KEYS) -> dict:
    """Two measurements of the same roofs (or peaks) as one: each figure under
    ``keys`` the higher of the two.  A roof is what the machine *can* reach
    (best-of samples, as in STREAM), and a busy moment only ever makes it come
    out low, so the best of more samples is the better figure.  Other fields
    are the first's."""
    if not again:
        return first

    def best(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: best(a.get(k), b.get(k)) for k in {**a, **b}}
        if a is None:
            return b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return max(a, b)
        return a

    out = {k: best(v, again[k]) if k in keys and k in again else v for k, v in first.items()}
    out.update({k: again[k] for k in keys if k in again and k not in first})
    return out
