"""``whygpu ladder``: GFLOP/s of every rung over a range of sizes.

Each rung of the ladder adds one idea (compilation, loop order, cache
blocking, SIMD + packing, threads); measuring them side by side, with
NumPy's BLAS (and a GPU, when there is one) as references, shows how much
each idea buys on this machine.  A measurement predicted to exceed the
per-measurement budget is skipped, with a note, unless ``force``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Callable

import numpy as np

from .._api import matmul
from .._memory import check_product_fits
from .._registry import KERNELS, KernelUnavailableError, available_kernels, get_kernel
from .._threads import check_threads, get_num_threads
from .machine import machine_info
from .measure import Estimator, blas_threads, format_seconds, gflops, matmul_flops, time_call
from .probes import fma_peaks
from .progress import Progress

__all__ = [
    "SCHEMA",
    "run_ladder",
    "measure_matmul",
    "calibrate",
    "scout",
    "threads_used",
    "resolve_kernels",
    "ladder_summary",
    "pct_of_peak",
    "series_device",
    "series_precision",
    "measure_error",
    "split_unavailable",
    "ERROR_METRIC",
]

SCHEMA = "whygpu.ladder/1"
_CALIBRATION_N = 32


def _numpy_refs(threads: int) -> list[str]:
    return ["numpy-1t"] + ([f"numpy-{threads}t"] if threads > 1 else [])


def series_device(name: str) -> str:
    """'cuda' for the CUDA rungs and the cuBLAS reference, 'cpu' for everything else."""
    if name == "cublas":
        return "cuda"
    kern = KERNELS.get(name)
    return kern.device if kern is not None else "cpu"


def series_precision(name: str, dtype: str = "float32") -> str:
    """What a series multiplies in: the inputs' dtype for the CPU kernels and NumPy,
    'float32', 'tf32' or 'bf16' for the CUDA ones (the registry's ``precision``)."""
    if name == "cublas":
        return "float32"  # strict float32: TF32 off (whygpu.bench.gpu.vendor_runner)
    kern = KERNELS.get(name)
    return (kern.precision if kern is not None else None) or dtype


def split_unavailable(names: Sequence[str] | None) -> tuple:
    """(names without the known-but-unusable kernels, [{"kernel", "device", "reason"}] for those).

    Named kernels that exist but cannot run here are listed with the reason
    instead of raising; with ``names`` None (or ["all"]) the list holds every
    unusable CPU kernel, and the unusable CUDA kernels only where a GPU is
    usable (without one, every CUDA kernel is out for the one reason the GPU
    sections already give).  Unknown names are left in (resolve_kernels raises)."""
    from .gpu import gpu_usable

    out = []
    if names is None or list(names) == ["all"]:
        gpu = gpu_usable()
        for k in KERNELS.values():
            if (k.device == "cpu" or gpu) and not k.available:
                out.append({"kernel": k.name, "device": k.device, "reason": k.unavailable()})
        return names, out
    kept = []
    for name in names:
        kern = KERNELS.get(name) if isinstance(name, str) else None
        why = kern.unavailable() if kern is not None else None
        if kern is None or why is None:
            kept.append(name)
        elif not any(u["kernel"] == name for u in out):
            out.append({"kernel": name, "device": kern.device, "reason": why})
    return kept, out


# How the error against the float64 reference is measured (everywhere: ladder, explain, roofline, report).
ERROR_METRIC = (
    "max relative error: max|C - C64| / max|C64|, where C64 is the product of the same float32 "
    "inputs computed in float64"
)


def measure_error(
    name: str, m: int, n: int, k: int, *, dtype: str = "float32", threads: int = 1, seed: int = 0
) -> dict:
    """One (m, k) @ (k, n) product of series `name` on standard-normal data against the
    same product computed in float64 (:data:`ERROR_METRIC`).

    Returns {"n", "m", "k", "precision", "unit_roundoff", "max_rel_error", "error_bound"}:
    ``error_bound`` is what the precision guarantees for this data -- every entry is off
    by at most gamma * (|A| |B|)_ij with gamma = 2u + u^2 (each product of two operands
    rounded to unit roundoff u) + 2 (k + 2) u_sum (1 + 2u) (the sums, float32 or float64),
    so the max error is at most gamma * max(|A| |B|) / max|C64|."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if name.startswith("numpy-"):
        with blas_threads(int(name[6:-1])):
            c = np.matmul(a, b)
    elif name == "cublas":
        import whygpu.cuda as wc

        c = wc.vendor_matmul(a, b)
        if c is None:
            raise KernelUnavailableError("'cublas' needs CuPy or PyTorch with a usable GPU")
    else:
        kern = KERNELS[name]
        c = matmul(a, b, kernel=name, threads=threads if kern.parallel else 1)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    top = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(c.astype(np.float64) - ref))) if ref.size else 0.0
    precision = series_precision(name, dtype)
    u_sum = 2.0**-53 if dtype == "float64" else 2.0**-24
    if precision == "float64":
        u = 2.0**-53
    else:
        from ..cuda import UNIT_ROUNDOFF

        u = UNIT_ROUNDOFF[precision]
    gamma = 2 * u + u * u + 2 * (k + 2) * u_sum * (1 + 2 * u)
    mag = float(np.max(np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))) if ref.size else 0.0
    return {
        "m": m,
        "n": n,
        "k": k,
        "precision": precision,
        "unit_roundoff": u,
        "max_rel_error": err / top if top > 0 else err,
        "error_bound": gamma * mag / top if top > 0 else 0.0,
    }


def resolve_kernels(
    names: Sequence[str] | None, threads: int, *, references: bool = True, gpu: bool = True
) -> list[str]:
    """The measured series, in ladder order: the requested (or all available)
    kernels, then NumPy on 1 and all threads, then the CUDA kernels where a
    GPU is usable (``gpu``) and cuBLAS (through CuPy or PyTorch) when one of
    them reaches the GPU.  Unknown names raise ValueError, unusable ones
    KernelUnavailableError."""
    from .gpu import vendor_name

    if names is None or list(names) == ["all"]:
        cpu = [k for k in available_kernels() if KERNELS[k].device == "cpu"]
        gpu_k = [k for k in available_kernels() if KERNELS[k].device != "cpu"] if gpu else []
        out = cpu + (_numpy_refs(threads) if references else []) + gpu_k
        if gpu_k and references and vendor_name():
            out.append("cublas")
        return out
    out = []
    for name in names:
        if name == "numpy":
            out += [r for r in _numpy_refs(threads) if r not in out]
        elif name.startswith("numpy-") and name.endswith("t") and name[6:-1].isdigit():
            out.append(name)
        elif name == "cublas":
            if vendor_name() is None:
                raise KernelUnavailableError("'cublas' needs CuPy or PyTorch with a usable GPU (neither is here)")
            if name not in out:
                out.append(name)
        else:
            get_kernel(name)  # raises for unknown / unavailable
            if name not in out:
                out.append(name)
    return out


def _runner(name: str, a, b, c, threads: int):
    """(callable, context manager or None) that computes c = a @ b with `name`."""
    if name.startswith("numpy-"):
        t = int(name[6:-1])
        return (lambda: np.matmul(a, b, out=c)), blas_threads(t)
    if name == "cublas":
        from .gpu import vendor_runner

        fn = vendor_runner(a, b)
        if fn is None:
            raise KernelUnavailableError("'cublas' needs CuPy or PyTorch with a usable GPU")
        return fn, None
    kern = KERNELS[name]
    if kern.device == "cuda":
        return _cuda_runner(name, a, b, c), None
    th = threads if kern.parallel else 1
    return (lambda: matmul(a, b, kernel=name, threads=th, out=c)), None


def _cuda_runner(name: str, a, b, c):
    """A GPU kernel timed on data already on the GPU (transfers are not the
    kernel's speed), waiting for it to finish; through NumPy arrays (with
    transfers) if this whygpu.cuda has no device arrays."""
    try:
        import whygpu.cuda as wc

        da, db = wc.to_device(a), wc.to_device(b)
        dc = wc.empty(c.shape, c.dtype)

        def fn():
            wc.matmul(da, db, kernel=name, out=dc)
            wc.synchronize()  # launches are asynchronous: time the work, not the launch

        return fn
    except (ImportError, AttributeError, TypeError):
        return lambda: matmul(a, b, kernel=name, out=c)


def threads_used(name: str, threads: int) -> int:
    if name.startswith("numpy-"):
        return int(name[6:-1])
    kern = KERNELS.get(name)
    return threads if kern is not None and kern.parallel else 1


def _measure(fn, ctx, *, repeats, budget, expected):
    if ctx is None:
        return time_call(fn, repeats=repeats, budget=budget, expected=expected)
    with ctx:
        return time_call(fn, repeats=repeats, budget=budget, expected=expected)


def calibrate(name: str, *, dtype: str = "float32", threads: int = 1, n: int = _CALIBRATION_N, seed: int = 0) -> float:
    """Seconds per call of series `name` on a tiny n x n product (also a warm-up)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    fn, ctx = _runner(name, a, b, c, threads)
    return _measure(fn, ctx, repeats=2, budget=0.2, expected=None).best


def measure_matmul(
    name: str,
    m: int,
    n: int,
    k: int,
    *,
    dtype: str = "float32",
    threads: int = 1,
    repeats: int = 5,
    budget: float = 2.0,
    expected: float | None = None,
    seed: int = 0,
) -> dict:
    """Time one (m, k) @ (k, n) product on series `name`; a measurement record."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = np.empty((m, n), dtype)
    fn, ctx = _runner(name, a, b, c, threads)
    tm = _measure(fn, ctx, repeats=repeats, budget=budget, expected=expected)
    flops = matmul_flops(m, n, k)
    rec = {
        "kernel": name,
        "m": m,
        "n": n,
        "k": k,
        "dtype": dtype,
        "device": series_device(name),
        "precision": series_precision(name, dtype),
        "threads": threads_used(name, threads),
        "flops": flops,
        "gflops": gflops(flops, tm.median),
    }
    rec.update(tm.as_dict())
    return rec


def scout(
    name: str, m: int, n: int, k: int, *, dtype: str = "float32", threads: int = 1, budget: float = 2.0, seed: int = 0
) -> dict:
    """How long one (m, k) @ (k, n) call of `name` will take, found cheaply.

    Times the shape scaled down by 2^j (each dimension), from a tiny one up,
    doubling while the next step is predicted to cost under a quarter of the
    budget -- so an estimate is always extrapolated from the largest size
    that was cheap to run, not from a tiny one (a parallel kernel's fixed
    costs, or a slow kernel leaving the caches, would fool that).
    Returns {"expected_s": seconds at the full shape, "steps": [(j, seconds)]}.
    """
    j = 0
    while matmul_flops(max(m >> j, 1), max(n >> j, 1), max(k >> j, 1)) > 2e5 and (m >> j, n >> j, k >> j) != (0, 0, 0):
        j += 1
    steps = []
    t_last, f_last = None, None
    while j >= 0:
        shape = (max(m >> j, 1), max(n >> j, 1), max(k >> j, 1))
        f = matmul_flops(*shape)
        if t_last is not None:
            predicted = t_last * f / f_last * Estimator.MARGIN
            if predicted > budget / 4:
                break
        rec = measure_matmul(name, *shape, dtype=dtype, threads=threads, repeats=2, budget=budget / 8, seed=seed)
        t_last, f_last = rec["seconds_min"], f
        steps.append((j, t_last))
        j -= 1
    assert t_last is not None and f_last is not None  # (the first step always runs)
    full = matmul_flops(m, n, k)
    expected = t_last if f_last == full else t_last * full / f_last * Estimator.MARGIN
    return {"expected_s": expected, "steps": steps}


def _cost(expected: float | None, repeats: int, budget: float) -> float:
    """Seconds a measurement is expected to take (warm-up + samples)."""
    if expected is None:
        return 0.01
    warm = expected if expected < budget / 4 else 0.0
    return warm + max(expected, min(repeats * expected, budget))


def run_ladder(
    *,
    sizes: Sequence[int],
    kernels: Sequence[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    repeats: int = 5,
    budget: float = 2.0,
    force: bool = False,
    references: bool = True,
    progress: bool = False,
    quick_peak: bool = False,
    peak: dict | None = None,
    gpu_sizes: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda s: None,
    seed: int = 0,
) -> dict:
    """Measure the ladder; returns the ``whygpu.ladder/1`` document.

    sizes: square sizes n (m = n = k); budget: seconds per measurement (a
    call predicted to take longer is skipped unless ``force``); peak: FMA
    peaks already measured (:func:`whygpu.roofline.fma_peaks`, plus
    ``gpu_gflops`` from :func:`whygpu.bench.gpu.gpu_peak`), else measured here.
    gpu_sizes: the sizes for the GPU series (default: ``sizes``) -- a GPU
    needs n in the thousands before its launch overheads stop mattering.
    """
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    gpu_sizes = sizes if gpu_sizes is None else sorted({int(n) for n in gpu_sizes})
    if not gpu_sizes or gpu_sizes[0] < 1:
        raise ValueError(f"gpu_sizes must be positive integers, got {gpu_sizes}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    threads = get_num_threads() if threads is None else check_threads(threads)
    kernels, unavailable = split_unavailable(kernels)
    for u in unavailable:
        log(f"{u['kernel']} not measured: {u['reason']}")
    names = resolve_kernels(kernels, threads, references=references)
    if dtype != "float32":  # the GPU rungs are float32 only
        names = [k for k in names if series_device(k) == "cpu"]
    gpu_names = [k for k in names if series_device(k) == "cuda"]
    largest = max(([sizes[-1]] if len(gpu_names) < len(names) else []) + ([gpu_sizes[-1]] if gpu_names else []) or [0])
    if largest:  # before anything is allocated: a size that cannot fit is refused, not met by the OOM killer
        check_product_fits(largest, largest, largest, dtype)
    rng = np.random.default_rng(seed)
    est = Estimator()
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    t_start = time.perf_counter()

    # Calibrate every series at a tiny size: the first estimate, and a warm-up.
    for name in names:
        n0 = min(_CALIBRATION_N, (gpu_sizes if name in gpu_names else sizes)[0])
        est.record(name, matmul_flops(n0, n0, n0), calibrate(name, dtype=dtype, threads=threads, n=n0))

    # Each series' error against the float64 reference, once, at a small size (the
    # precision sets it, not the size): n = 64, or the series' smallest size below that.
    errors = {}
    for name in names:
        n_err = min(64, (gpu_sizes if name in gpu_names else sizes)[0])
        errors[name] = measure_error(name, n_err, n_err, n_err, dtype=dtype, threads=threads, seed=seed)

    if peak is None:
        peak = fma_peaks(threads, quick=quick_peak)
    if gpu_names and not peak.get("gpu_gflops"):
        from .gpu import gpu_peak

        g = gpu_peak(quick=True)
        if g:
            peak = {
                **peak,
                "gpu_gflops": g["fma_gflops"],
                "gpu_device": g["device"],
                "gpu_tensor_gflops": g.get("tensor_gflops") or {},
            }
    measurements, skipped = [], []
    plan = [(n, name) for n in sizes for name in names if name not in gpu_names] + [
        (n, name) for n in gpu_sizes for name in gpu_names
    ]

    def remaining(i):
        return sum(
            _cost(est.predict(nm, matmul_flops(n, n, n)), repeats, budget)
            for n, nm in plan[i:]
            if force or (est.predict(nm, matmul_flops(n, n, n)) or 0) <= budget
        )

    with Progress(len(plan), "ladder", progress) as bar:
        for i, (n, name) in enumerate(plan):
            flops = matmul_flops(n, n, n)
            expected = est.predict(name, flops)
            if i == 0 or plan[i - 1][0] != n:
                a = rng.standard_normal((n, n)).astype(dtype)
                b = rng.standard_normal((n, n)).astype(dtype)
                c = np.empty((n, n), dtype)
            bar.show(f"{name} n={n}", remaining(i))
            if expected is not None and expected > budget and not force:
                skipped.append(
                    {
                        "kernel": name,
                        "n": n,
                        "predicted_s": expected,
                        "reason": f"one call would take ~{format_seconds(expected)} (budget {format_seconds(budget)})",
                    }
                )
                log(
                    f"skipped {name} at n={n}: one call would take ~{format_seconds(expected)} "
                    f"(budget {format_seconds(budget)} per measurement; --all runs it)"
                )
                bar.advance()
                continue
            fn, ctx = _runner(name, a, b, c, threads)
            tm = _measure(fn, ctx, repeats=repeats, budget=budget, expected=expected)
            est.record(name, flops, tm.median)
            rec = {
                "kernel": name,
                "n": n,
                "m": n,
                "k": n,
                "dtype": dtype,
                "device": series_device(name),
                "precision": series_precision(name, dtype),
                "threads": threads_used(name, threads),
                "flops": flops,
                "gflops": gflops(flops, tm.median),
            }
            rec.update(tm.as_dict())
            measurements.append(rec)
            bar.advance()

    doc = {
        "schema": SCHEMA,
        "machine": minfo,
        "params": {
            "sizes": sorted(set(sizes) | (set(gpu_sizes) if gpu_names else set())),
            "cpu_sizes": sizes,
            "gpu_sizes": gpu_sizes if gpu_names else [],
            "kernels": names,
            "dtype": dtype,
            "threads": threads,
            "repeats": repeats,
            "budget_s": budget,
            "force": force,
        },
        "peak": peak,
        "measurements": measurements,
        "skipped": skipped,
        "errors": errors,
        "error_metric": ERROR_METRIC,
        "unavailable": unavailable,
        "seconds": time.perf_counter() - t_start,
    }
    doc["summary"] = ladder_summary(doc)
    return doc


def pct_of_peak(rec: dict, peak: dict | None) -> float:
    """% of the FMA peak of what the measurement used: 1 core for the serial
    rungs, all of them for the parallel ones, the whole GPU for the CUDA ones."""
    if not peak:
        return float("nan")
    if rec.get("device", "cpu") != "cpu":
        prec = rec.get("precision") or "float32"
        # a tensor-core rung against the tensor-core peak in its precision, the others against the FMA peak
        g = peak.get("gpu_gflops") if prec == "float32" else (peak.get("gpu_tensor_gflops") or {}).get(prec)
        return 100.0 * rec["gflops"] / g if g else float("nan")
    p = (
        peak["gflops_1t"]
        if rec["threads"] <= 1
        else peak["gflops_all"] * min(rec["threads"], peak["threads"]) / peak["threads"]
    )
    if rec.get("dtype") == "float64":
        p /= 2  # the peak is measured in float32; a register holds half as many float64
    return 100.0 * rec["gflops"] / p


def ladder_summary(doc: dict) -> dict:
    """Per series: the largest size measured and its GFLOP/s and % of peak;
    per rung: the speed-up over the previous rung, at the largest size both
    were measured at."""
    by: dict[str, dict[int, dict]] = {}  # kernel -> n -> measurement
    for rec in doc["measurements"]:
        by.setdefault(rec["kernel"], {})[rec["n"]] = rec
    order = [k for k in doc["params"]["kernels"] if k in by]
    rows = []
    prev = None
    for name in order:
        pts = by[name]
        n_max = max(pts)
        rec = pts[n_max]
        row = {
            "kernel": name,
            "n": n_max,
            "gflops": rec["gflops"],
            "seconds": rec["seconds"],
            "threads": rec["threads"],
            "pct_peak": pct_of_peak(rec, doc.get("peak")),
            "device": series_device(name),
            "reference": name not in KERNELS,
            "precision": rec.get("precision") or series_precision(name, rec.get("dtype", "float32")),
        }
        err = (doc.get("errors") or {}).get(name)
        if err:
            row.update(max_rel_error=err["max_rel_error"], error_n=err["n"])
        if not row["reference"] and prev is not None:
            common = set(by[prev]) & set(pts)
            if common:
                n_c = max(common)
                row.update(prev=prev, speedup_prev=pts[n_c]["gflops"] / by[prev][n_c]["gflops"], speedup_n=n_c)
        if not row["reference"]:
            prev = name
        rows.append(row)
    # The whole span: the best CPU rung over the slowest, at their common size (or extrapolated rates).
    cpu_rungs = [r for r in rows if not r["reference"] and r["device"] == "cpu"]
    span = None
    if len(cpu_rungs) >= 2:
        first, best = cpu_rungs[0], max(cpu_rungs, key=lambda r: r["gflops"])
        span = {
            "slowest": first["kernel"],
            "fastest": best["kernel"],
            "ratio": best["gflops"] / first["gflops"],
            "slowest_n": first["n"],
            "fastest_n": best["n"],
        }
    return {"rows": rows, "span": span, "gpu": _gpu_summary(by, rows, cpu_rungs)}


def _gpu_summary(by: dict, rows: list, cpu_rungs: list) -> dict | None:
    """The best CUDA rung at its largest size, against cuBLAS and the best CPU
    rung at the largest size each shares with it; None without GPU series."""
    gpu_rungs = [r for r in rows if not r["reference"] and r["device"] == "cuda"]
    if not gpu_rungs:
        return None
    n_top = max(r["n"] for r in gpu_rungs)
    best = max((r for r in gpu_rungs if r["n"] == n_top), key=lambda r: r["gflops"])
    out = {"best": best["kernel"], "n": best["n"], "gflops": best["gflops"], "pct_peak": best["pct_peak"]}
    if "cublas" in by:
        common = set(by["cublas"]) & set(by[best["kernel"]])
        if common:
            n_c = max(common)
            out.update(
                cublas_n=n_c,
                cublas_gflops=by["cublas"][n_c]["gflops"],
                vs_cublas=by[best["kernel"]][n_c]["gflops"] / by["cublas"][n_c]["gflops"],
            )
    if cpu_rungs:
        cpu = max(cpu_rungs, key=lambda r: r["gflops"])
        common = set(by[cpu["kernel"]]) & set(by[best["kernel"]])
        out.update(best_cpu=cpu["kernel"], best_cpu_gflops=cpu["gflops"], best_cpu_n=cpu["n"])
        if common:
            n_c = max(common)
            out.update(vs_cpu_n=n_c, vs_cpu=by[best["kernel"]][n_c]["gflops"] / by[cpu["kernel"]][n_c]["gflops"])
    return out
