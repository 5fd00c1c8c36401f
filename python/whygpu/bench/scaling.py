"""``whygpu scaling``: speed-up against thread count, and Amdahl's law.

If a fraction f of the work is serial, p threads can at best give

    S(p) = 1 / (f + (1 - f) / p)        (Amdahl's law)

so S can never exceed 1/f however many cores there are.  We measure S(p)
for the parallel matmul kernel, for NumPy's BLAS, for the FMA
microbenchmark (no memory, no synchronisation: the hardware's own limit)
and, when the training stack is there, for a whole training step -- and fit
f to each.  The fit is least squares on 1/S(p) - 1/p = f (1 - 1/p), a line
through the origin, so f = sum(x y) / sum(x x) with x = 1 - 1/p.

How the figures are kept honest (see :mod:`whygpu.bench.trust`):

* the thread counts of a series are timed in rounds -- 1 thread, 2, ..., p,
  then again -- and each round's speed-up is taken against that round's own
  1-thread sample, so a disturbance hits numerator and denominator alike;
  a series reports the median speed-up with its min-max range;
* every round also times the series' *baseline*: the same work on one core
  measured as a separate entry (for ``openmp``, the serial ``packed`` rung it
  runs as on one thread).  A 1-thread row that differs from it says the
  machine changed under us, so every speed-up of that series is suspect;
* impossible figures -- a speed-up above min(threads, cores), a serial
  fraction outside [0, 1], the 1-thread row off its baseline -- make the
  series be measured once more; still impossible, they are flagged
  ``disturbed`` and left out of the fit and the conclusions;
* Amdahl's law is fitted only from at least three thread counts within the
  cores: with two (1 and p) the one equation has one unknown, and the noise
  is read as the serial fraction.

Judging the figures (the checks, the fit, the words) lives in
:mod:`whygpu.bench.scaling_results`; every name of it is re-exported here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Callable

import numpy as np

from .._api import matmul
from .._cpu import cpu_info
from .._memory import check_product_fits
from .._registry import KERNELS, get_kernel
from .._threads import ThreadsWarning, _cpus_available, check_threads
from .machine import machine_info
from .measure import blas_threads, gflops, matmul_flops, time_interleaved
from .probes import _fma_gflops
from .progress import Progress
from .scaling_results import (
    MIN_FIT_THREADS,
    TWO_POINTS,
    amdahl,
    check_series,
    doc_note,
    fit_amdahl,
    fit_series,
    fit_text,
    percent,
    plain_text,
    probe_limit,
    probe_text,
    speedup_text,
    with_checks,
)
from .trust import QuietGuard, baseline_differs, remeasure_once, spread

__all__ = [
    "SCHEMA",
    "MIN_FIT_THREADS",
    "TWO_POINTS",
    "run_scaling",
    "fit_amdahl",
    "fit_series",
    "check_series",
    "amdahl",
    "percent",
    "speedup_text",
    "plain_text",
    "with_checks",
    "fit_text",
    "probe_limit",
    "probe_text",
]

SCHEMA = "whygpu.scaling/1"
# The serial rung a parallel kernel runs as on one thread (07_openmp.cpp: a team of 1 calls gemm_packed).
_SERIAL_TWIN = {"openmp": "packed"}
# The FMA probe's target time per call: long enough to swamp the start of a thread team.
_PEAK_TARGET_S = 0.03


def _parallel_cpu_kernels() -> list[str]:
    return [k for k, v in KERNELS.items() if v.parallel and v.available and v.device == "cpu"]


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------
def _in_rounds(calls: dict[str, Callable[[], float]], repeats: int, budget: float) -> dict[str, list[float]]:
    """Call each of `calls` (returning its own seconds) once per round, in order, for
    `repeats` rounds or until `budget` seconds per call are used (at least one round)."""
    out: dict[str, list[float]] = {k: [] for k in calls}
    start = time.perf_counter()
    for _ in range(repeats):
        t_round = time.perf_counter()
        for name, call in calls.items():
            out[name].append(call())
        now = time.perf_counter()
        if now - start + (now - t_round) > budget * len(calls):
            break
    return out


Rounds = Callable[[list[int], bool], dict[str, list[float]]]  # (thread counts, with baseline) -> samples by name


def _block(
    guard: QuietGuard, label: str, ps: list[int], rounds: Rounds, with_baseline: bool, cores: int
) -> tuple[dict[int, list[float]], list[float] | None, dict, dict]:
    """One measurement block (guarded), checked, and measured once more when a figure is impossible:
    (times by thread count, baseline samples, check_series, remeasure_once's record)."""
    tries = []

    def measure() -> tuple[dict[int, list[float]], list[float] | None, dict]:
        tries.append(1)
        with guard.block(
            f"{label}: {', '.join(map(str, ps))} threads" + (" (measured again)" if len(tries) > 1 else "")
        ):
            samples = rounds(ps, with_baseline)
        times = {p: list(samples[str(p)]) for p in ps}
        base = samples.get("baseline")
        return times, base, check_series(ps, times, base, cores)

    (times, base, chk), how = remeasure_once(measure, lambda r: bool(r[2]["impossible"]))
    return times, base, chk, how


def _merge(threads: list[int], blocks: list[tuple], cores: int, log: Callable[[str], None], label: str) -> dict:
    """One series from its blocks (within the cores, with the baseline; then those beyond the cores,
    each round with its own 1-thread sample), and Amdahl's law fitted to the undisturbed points."""
    keys = ("speedup", "speedup_low", "speedup_high", "rounds_left_out", "reasons")
    rec: dict = {k: [] for k in ("times", "times_1t", *keys)}
    seen: set[int] = set()
    for times, _, chk, how in blocks:
        if how["remeasured"]:
            log(f"{label}: an impossible figure, measured again" + (" -- still impossible" if how["disturbed"] else ""))
        for i, p in enumerate(times):
            if p in seen:
                continue  # the second block's 1-thread samples: only its pairs' reference
            seen.add(p)
            rec["times"].append(times[p])
            rec["times_1t"].append(times[1])
            for k in keys:
                rec[k].append(chk[k][i])
    rec["baseline"] = blocks[0][1] or []
    rec["remeasured"] = any(b[3]["remeasured"] for b in blocks)
    rec["fit"] = fit_series(threads, rec["speedup"], [r is not None for r in rec["reasons"]], cores)
    return rec


def _series_doc(name: str, label: str, kind: str, threads: list[int], m: dict, baseline_name: str, cores: int) -> dict:
    fit = m["fit"]
    med = m["speedup"]
    return {
        "name": name,
        "label": label,
        "kind": kind,
        "threads": threads,
        "cores": cores,  # the speed-up limit: min(threads, cores)
        "seconds": [spread(t)["median"] for t in m["times"]],
        "times": m["times"],
        # the 1-thread samples each count's speed-ups were paired with, round by round
        "times_1t": m["times_1t"],
        "rounds": len(m["times"][0]),
        "speedup": med,
        "speedup_low": m["speedup_low"],
        "speedup_high": m["speedup_high"],
        # rounds whose ratio passed the cores (their 1-thread sample was disturbed): not in the range
        "rounds_left_out": m["rounds_left_out"],
        "efficiency": [s / p for s, p in zip(med, threads)],
        "baseline": {
            "name": baseline_name,
            "seconds": spread(m["baseline"])["median"] if m["baseline"] else None,
            "times": list(m["baseline"]),
            "differs": bool(m["baseline"]) and baseline_differs(m["times"][0], m["baseline"]),
        },
        "disturbed": [r is not None for r in m["reasons"]],
        "disturbed_reason": m["reasons"],
        "remeasured": m["remeasured"],
        "fitted": fit["fitted"],
        "fit_threads": fit["fit_threads"],
        "fit_note": fit["fit_note"],
        "serial_fraction": fit["serial_fraction"],
        "serial_fraction_fit": fit["serial_fraction_fit"],
        "serial_disturbed": fit["impossible"],
        "max_speedup": fit["max_speedup"],  # None: not fitted, or no serial part seen (no limit)
    }


def run_scaling(
    *,
    n: int = 1024,
    threads_list: Sequence[int] | None = None,
    kernel: str = "openmp",
    dtype: str = "float32",
    repeats: int = 5,
    budget: float = 2.0,
    numpy: bool = True,
    peak: bool = True,
    train_step: Callable[[int], dict] | None = None,
    train_label: str = "training step",
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Measure speed-up against threads; returns the ``whygpu.scaling/1`` document.

    ``train_step(threads)``, when given, must return {"seconds": per step,
    ...} for a training step run with that many threads (see bench/train.py).
    """
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    kern = get_kernel(kernel)
    if kern.device != "cpu":
        raise ValueError(
            f"kernel {kernel!r} runs on the GPU, and scaling measures speed-up against CPU threads; "
            f"scale one of: {', '.join(_parallel_cpu_kernels())} "
            "(the GPU's figures are in 'whygpu ladder', 'roofline' and 'train')"
        )
    if not kern.parallel:
        raise ValueError(
            f"kernel {kernel!r} is not parallel; scaling needs one of: {', '.join(_parallel_cpu_kernels())}"
        )
    if threads_list is None:
        threads_list = list(range(1, _cpus_available() + 1))
    threads = sorted({check_threads(t, warn=False) for t in threads_list} | {1})  # beyond the cores: a note
    check_product_fits(n, n, n, dtype)
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    cores = _cpus_available()
    guard = QuietGuard()
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    flops = matmul_flops(n, n, n)
    twin = _SERIAL_TWIN.get(kernel) if _SERIAL_TWIN.get(kernel) in KERNELS else None
    twin = twin if twin is not None and KERNELS[twin].available else None

    def kernel_rounds(ps: list[int], with_baseline: bool) -> dict[str, list[float]]:
        fns: dict[str, Callable[[], object]] = {
            str(p): partial(matmul, a, b, kernel=kernel, threads=p, out=c) for p in ps
        }
        if with_baseline:  # the serial rung this kernel runs as on one thread, or the kernel itself again
            fns["baseline"] = partial(matmul, a, b, kernel=twin or kernel, out=c)
        return {k: tm.times for k, tm in time_interleaved(fns, repeats=repeats, budget=budget).items()}

    def numpy_rounds(ps: list[int], with_baseline: bool) -> dict[str, list[float]]:
        fns: dict[str, Callable[[], object]] = {str(p): partial(np.matmul, a, b, out=c) for p in ps}
        ctx = {str(p): partial(blas_threads, p) for p in ps}
        if with_baseline:
            fns["baseline"], ctx["baseline"] = partial(np.matmul, a, b, out=c), partial(blas_threads, 1)
        tms = time_interleaved(fns, repeats=repeats, budget=budget, contexts=ctx)
        return {k: tm.times for k, tm in tms.items()}

    arch = cpu_info().get("arch", "portable")

    def peak_rounds(ps: list[int], with_baseline: bool) -> dict[str, list[float]]:
        # "seconds" per GFLOP, so speed-ups come out right; one probe call per thread count per round.
        def probe(q: int) -> float:
            return 1.0 / _fma_gflops(arch, q, _PEAK_TARGET_S, 1)

        calls: dict[str, Callable[[], float]] = {str(p): partial(probe, p) for p in ps}
        if with_baseline:
            calls["baseline"] = partial(probe, 1)
        return _in_rounds(calls, repeats, budget)

    train_recs: dict[int, dict] = {}

    def train_rounds(ps: list[int], with_baseline: bool) -> dict[str, list[float]]:
        assert train_step is not None

        def one(p: int) -> float:
            rec = train_step(p)
            train_recs[p] = rec  # the last round's records: what the step was made of
            return float(rec["seconds"])

        calls: dict[str, Callable[[], float]] = {str(p): partial(one, p) for p in ps}
        if with_baseline:
            calls["baseline"] = lambda: float(train_step(1)["seconds"])
        return _in_rounds(calls, min(repeats, 3), budget)  # a training step is expensive: at most 3 rounds

    plan: list[tuple[str, str, str, str, Rounds]] = [
        (kernel, f"{kernel} kernel, n={n}", "kernel", twin or f"{kernel} on 1 thread", kernel_rounds)
    ]
    if numpy:
        plan.append(("numpy", f"NumPy/BLAS, n={n}", "reference", "numpy on 1 thread", numpy_rounds))
    if peak:
        plan.append(("peak", "FMA peak (microbenchmark)", "peak", "FMA probe on 1 thread", peak_rounds))
    if train_step is not None:
        plan.append(("train", train_label, "train", f"{train_label} on 1 thread", train_rounds))

    within = [p for p in threads if p <= cores]
    beyond = [p for p in threads if p > cores]
    # Threads beyond the cores go last, and NumPy's last of all: threads that share cores leave
    # the machine disturbed for a while after (OpenBLAS's spinning threads slow its next calls up
    # to x50), which would spoil the rounds of the counts within the cores.
    blocks: dict[str, list[tuple]] = {}
    jobs = [(name, within, True) for name, *_ in plan]
    if beyond:
        jobs += sorted(((name, [1] + beyond, False) for name, *_ in plan), key=lambda j: j[0] == "numpy")
    rounds_of = {name: (label, rounds) for name, label, _, _, rounds in plan}
    with Progress(len(jobs), "scaling", progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ThreadsWarning)  # threads beyond the cores are the point here (a note says so)
        for name, ps, with_baseline in jobs:
            label, rounds = rounds_of[name]
            bar.show(f"{label} on {', '.join(map(str, ps))} threads", 0.0)
            blocks.setdefault(name, []).append(_block(guard, label, ps, rounds, with_baseline, cores))
            bar.advance()
    series = []
    for name, label, kind, base_name, _ in plan:
        s = _series_doc(name, label, kind, threads, _merge(threads, blocks[name], cores, log, label), base_name, cores)
        if kind in ("kernel", "reference"):
            s["gflops"] = [gflops(flops, x) for x in s["seconds"]]
        elif kind == "peak":
            s["gflops"] = [1.0 / x for x in s["seconds"]]
        else:
            recs = [train_recs[p] for p in threads]
            s["matmul_share"] = [r.get("matmul_share") for r in recs]
            s["steps"] = recs
        series.append(s)
    if max(threads) > cores:
        log(f"{max(threads)} threads on {cores} cores: beyond {cores}, threads share cores")
    return {
        "schema": SCHEMA,
        "machine": minfo,
        "params": {
            "n": n,
            "threads": threads,
            "kernel": kernel,
            "dtype": dtype,
            "repeats": repeats,
            "budget_s": budget,
        },
        "cores": cores,
        "series": series,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t_start,
        "note": doc_note(within, cores),
    }
