"""``whygpu ladder``: GFLOP/s of every rung over a range of sizes.

Each rung of the ladder adds one idea (compilation, loop order, cache
blocking, SIMD + packing, threads); measuring them side by side, with
NumPy's BLAS (and a GPU, when there is one) as references, shows how much
each idea buys on this machine.  A measurement predicted to exceed the
per-measurement budget is skipped, with a note, unless ``force``.

Figures a student can trust (:mod:`whygpu.bench.trust`): the rungs at one
size are timed interleaved (A B C A B C ...) inside one quiet-guarded block,
so a disturbance hits them all and their ratios stay fair; each keeps its
min-max spread.  A rung above 100% of the FMA peak is impossible: it and the
peak are measured once more, and a figure still impossible is flagged
``disturbed`` and left out of the conclusions (:mod:`whygpu.bench.ladder_results`).
The series' descriptions live in :mod:`whygpu.bench.ladder_series`; every
name of both is re-exported here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .._api import matmul
from .._cpu import cpu_info
from .._memory import check_product_fits
from .._registry import KERNELS, KernelUnavailableError
from .._threads import check_threads, get_num_threads
from .ladder_results import impossible_record, ladder_summary, pct_of_peak, pct_text
from .ladder_series import (
    ERROR_METRIC,
    measure_error,
    resolve_kernels,
    series_device,
    series_precision,
    split_unavailable,
    threads_used,
)
from .machine import machine_info
from .measure import (
    Estimator,
    Timing,
    blas_threads,
    format_seconds,
    gflops,
    matmul_flops,
    planted_seconds,
    time_call,
    time_interleaved,
)
from .probes import best_of_roofs, fma_peaks
from .progress import Progress
from .trust import DISTURBED, QuietGuard, remeasure_once

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

# None, or a function returning a fresh context manager to time a call in (e.g. BLAS on 1 thread)
Ctx = Optional[Callable[[], AbstractContextManager]]


def _runner(name: str, a, b, c, threads: int) -> tuple[Callable[[], object], Ctx]:
    """(callable, None or a function returning a fresh context manager to time it
    in) that computes c = a @ b with `name`."""
    if name.startswith("numpy-"):
        t = int(name[6:-1])
        return (lambda: np.matmul(a, b, out=c)), (lambda: blas_threads(t))
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


def _measure(fn, ctx: Ctx, *, repeats, budget, expected) -> Timing:
    with ctx() if ctx is not None else nullcontext():
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
    return _record(name, m, n, k, dtype, threads, tm)


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
    A speed planted for `name` (WHYGPU_PLANT_GFLOPS, for tests) is used instead of timing.
    """
    planted = planted_seconds(name, matmul_flops(m, n, k))
    if planted is not None:
        return {"expected_s": planted, "steps": []}
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


def _record(name: str, m: int, n: int, k: int, dtype: str, threads: int, tm: Timing) -> dict:
    """A measurement record: the median GFLOP/s with its min-max spread, and the samples."""
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
        "gflops_low": gflops(flops, max(tm.times)),
        "gflops_high": gflops(flops, tm.best),
    }
    rec.update(tm.as_dict())
    return rec


class _Peaks:
    """The FMA peaks the rungs are held against, measured again (each device's
    at most once per run) when a rung comes out above them: a peak timed while
    another program ran is too low.  A disturbance can only lower a peak, so the
    higher of the two measurements is kept, as in STREAM's best-of-samples."""

    def __init__(self, peak: dict, threads: int, quick: bool, guard: QuietGuard):
        self.peak = peak
        self.threads, self.quick, self.guard = threads, quick, guard
        self.again: dict[str, dict] = {}  # device -> {"first", "again", "kept"}

    def remeasure(self, device: str) -> None:
        if device in self.again:
            return
        old = self.peak
        if device == "cpu":
            keys = ["gflops_1t", "gflops_all", "best_isa"]
            with self.guard.block("FMA peak (again)"):
                new = fma_peaks(self.threads, quick=self.quick)
            if "best_isa" in old:  # BLAS's own roof, measured again with the others
                with self.guard.block("FMA peak, best ISA (again)"):
                    new["best_isa"] = _best_isa_peak(new, self.threads, self.quick)
        else:
            from .gpu import gpu_peak

            keys = ["gpu_gflops", "gpu_tensor_gflops"]
            with self.guard.block("GPU peak (again)"):
                g = gpu_peak(quick=True) or {}
            new = {"gpu_gflops": g.get("fma_gflops") or 0.0, "gpu_tensor_gflops": g.get("tensor_gflops") or {}}
        self.peak = best_of_roofs(old, new, keys)
        self.again[device] = {
            "first": {k: old.get(k) for k in keys},
            "again": {k: new.get(k) for k in keys},
            "kept": {k: self.peak.get(k) for k in keys},
        }


@dataclass
class _Setup:
    """What every block of one ladder run shares."""

    dtype: str
    threads: int
    repeats: int
    budget: float
    guard: QuietGuard
    peaks: _Peaks


def _time_block(setup: _Setup, label: str, runners: dict, expected: dict) -> dict[str, Timing]:
    """Time the rungs of one size interleaved (A B C A B C ...) inside one quiet-guarded block.

    A round lasts as long as its slowest rung, so the rounds are as many as
    that rung's budget allows (what it alone would have had), but at least two:
    one sample has no spread, and a figure without one cannot be compared."""
    e_max = max((e for e in expected.values() if e is not None), default=0.0)
    rounds = setup.repeats if e_max <= 0 else min(setup.repeats, max(2, int(setup.budget // e_max)))
    cap = max(setup.budget, 1.5 * rounds * e_max)  # per call: room for those rounds, a stop if a call is slower
    with setup.guard.block(label):
        return time_interleaved(
            {nm: r[0] for nm, r in runners.items()},
            repeats=rounds,
            budget=cap,
            contexts={nm: r[1] for nm, r in runners.items() if r[1] is not None},
            expected=expected,
        )


def _again(setup: _Setup, name: str, n: int, label: str, runner: tuple, expected: float | None) -> dict:
    """One rung at one size measured once more, after its peak is measured again."""
    setup.peaks.remeasure(series_device(name))
    tm = _time_block(setup, f"{name} {label} (again)", {name: runner}, {name: expected})[name]
    return {**_record(name, n, n, n, setup.dtype, setup.threads, tm), "remeasured": False, "disturbed": False}


def _faster(a: dict, b: dict) -> dict:
    """The better of two draws of one rung (the higher median): the peak it is held
    against is the better of two draws too, so neither side is biased."""
    return a if a["gflops"] >= b["gflops"] else b


def _check(rec: dict, peaks: _Peaks, measure_again: Callable[[], dict]) -> dict:
    """The record, or -- when it is above 100% of its peak -- the better of it and
    the record measured once more (with its peak measured again); flagged
    ``disturbed`` when that one is impossible too."""
    draws: list[dict] = []

    def again() -> dict:
        draws.append(measure_again())
        return draws[-1]

    kept, flag = remeasure_once(again, lambda r: impossible_record(r, peaks.peak), first=rec, best=_faster)
    if not flag["remeasured"]:
        return rec
    fields = ("gflops", "gflops_low", "gflops_high", "seconds", "times")
    p1, p2 = pct_of_peak(rec, peaks.peak), pct_of_peak(draws[0], peaks.peak)
    new = dict(kept, remeasured=True, kept="first" if kept is rec else "again")
    new["first"] = {k: rec[k] for k in fields} | {"pct_peak": p1}  # against the peak as it stands now
    new["again"] = {k: draws[0][k] for k in fields} | {"pct_peak": p2}
    if flag["disturbed"]:
        new["disturbed"] = True
        new["disturbed_reason"] = (
            f"{pct_text(p1)} of the peak at first, {pct_text(p2)} when it and the peak were measured again "
            f"(the better of the two, {pct_text(max(p1, p2))}, kept); " + DISTURBED
        )
    else:
        new["disturbed"] = False
        new.pop("disturbed_reason", None)
    return new


def _best_isa_peak(peak: dict, threads: int, quick: bool) -> dict:
    """The FMA peaks at the best instruction set this CPU has.  NumPy's BLAS picks its
    own kernels (OpenBLAS's for the CPU it finds), whatever whygpu's selected ISA is:
    held against a portable (SSE) peak, an idle machine's OpenBLAS looked impossible."""
    best = cpu_info().get("best_arch") or peak.get("arch")
    if not best or best == peak.get("arch"):
        return {"arch": peak.get("arch"), "gflops_1t": peak["gflops_1t"], "gflops_all": peak["gflops_all"]}
    p = fma_peaks(threads, quick=quick, arch=best)
    # a wider ISA is never slower: a disturbed probe must not give BLAS a roof below whygpu's
    return {
        "arch": best,
        "gflops_1t": max(p["gflops_1t"], peak["gflops_1t"]),
        "gflops_all": max(p["gflops_all"], peak["gflops_all"]),
    }


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
    peaks already measured (:func:`whygpu.predict.roofline.fma_peaks`, plus
    ``gpu_gflops`` from :func:`whygpu.bench.gpu.gpu_peak`), else measured here.
    gpu_sizes: the sizes for the GPU series (default: ``sizes``) -- a GPU
    needs n in the thousands before its launch overheads stop mattering.

    At each size the rungs are timed interleaved in one quiet-guarded block
    (``doc["quiet"]``); a rung above 100% of its peak is measured once more
    with the peak (``doc["peak_remeasured"]``), and flagged ``disturbed`` if
    it stays impossible.
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
    cpu_names = [k for k in names if k not in gpu_names]
    largest = max(([sizes[-1]] if cpu_names else []) + ([gpu_sizes[-1]] if gpu_names else []) or [0])
    if largest:  # before anything is allocated: a size that cannot fit is refused, not met by the OOM killer
        check_product_fits(largest, largest, largest, dtype)
    rng = np.random.default_rng(seed)
    est = Estimator()
    guard = QuietGuard()
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    t_start = time.perf_counter()
    # One block per size and device: the rungs in it are timed interleaved.
    blocks = [(n, cpu_names) for n in sizes if cpu_names] + [(n, gpu_names) for n in gpu_sizes if gpu_names]
    plan = [(n, name) for n, group in blocks for name in group]
    # The bar shows from the start: the calibration, the errors and the peaks come first (seconds).
    bar = Progress(len(plan), "ladder", progress)
    bar.show("calibrating every rung at a tiny size", None)

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

    bar.show("measuring the FMA peak (the roof every rung is held against)", None)
    if peak is None:
        with guard.block("FMA peak"):
            peak = fma_peaks(threads, quick=quick_peak)
    if any(k.startswith("numpy-") for k in cpu_names) and "best_isa" not in peak:
        with guard.block("FMA peak, best ISA"):
            peak = {**peak, "best_isa": _best_isa_peak(peak, threads, quick_peak)}
    if gpu_names and not peak.get("gpu_gflops"):
        from .gpu import gpu_peak

        with guard.block("GPU peak"):
            g = gpu_peak(quick=True)
        if g:
            peak = {
                **peak,
                "gpu_gflops": g["fma_gflops"],
                "gpu_device": g["device"],
                "gpu_tensor_gflops": g.get("tensor_gflops") or {},
            }
    setup = _Setup(dtype, threads, repeats, budget, guard, _Peaks(peak, threads, quick_peak, guard))
    measurements, skipped = [], []

    def remaining(i):
        return sum(
            _cost(est.predict(nm, matmul_flops(n, n, n)), repeats, budget)
            for n, nm in plan[i:]
            if force or (est.predict(nm, matmul_flops(n, n, n)) or 0) <= budget
        )

    done = 0
    with bar:
        for n, group in blocks:
            flops = matmul_flops(n, n, n)
            a = rng.standard_normal((n, n)).astype(dtype)
            b = rng.standard_normal((n, n)).astype(dtype)
            c = np.empty((n, n), dtype)
            bar.show(f"n={n}, {len(group)} series interleaved", remaining(done))
            # The skip decision comes before the round: a rung too slow for the budget is not in it.
            todo: dict[str, float | None] = {}
            for name in group:
                expected = est.predict(name, flops)
                if expected is not None and expected > budget and not force:
                    why = f"one call would take ~{format_seconds(expected)} (budget {format_seconds(budget)})"
                    skipped.append({"kernel": name, "n": n, "predicted_s": expected, "reason": why})
                    log(
                        f"skipped {name} at n={n}: one call would take ~{format_seconds(expected)} "
                        f"(budget {format_seconds(budget)} per measurement; --all runs it)"
                    )
                    bar.advance()
                    done += 1
                else:
                    todo[name] = expected
            if not todo:
                continue
            runners = {name: _runner(name, a, b, c, threads) for name in todo}
            label = f"n={n}" + (" (GPU)" if group is gpu_names else "")
            timings = _time_block(setup, f"ladder {label}", runners, todo)
            for name, tm in timings.items():
                est.record(name, flops, tm.median)
                rec = {**_record(name, n, n, n, dtype, threads, tm), "remeasured": False, "disturbed": False}
                again = functools.partial(_again, setup, name, n, label, runners[name], todo[name])
                measurements.append(_check(rec, setup.peaks, again))
                bar.advance()
                done += 1

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
            "interleaved": True,
        },
        "peak": setup.peaks.peak,
        "peak_remeasured": setup.peaks.again,
        "measurements": measurements,
        "skipped": skipped,
        "errors": errors,
        "error_metric": ERROR_METRIC,
        "unavailable": unavailable,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t_start,
    }
    doc["summary"] = ladder_summary(doc)
    return doc
