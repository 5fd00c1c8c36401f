"""``whygpu scaling``: speed-up against thread count, and Amdahl's law.

If a fraction f of the work is serial, p threads can at best give

    S(p) = 1 / (f + (1 - f) / p)        (Amdahl's law)

so S can never exceed 1/f however many cores there are.  We measure S(p)
for the parallel matmul kernel, for NumPy's BLAS, for the FMA
microbenchmark (no memory, no synchronisation: the hardware's own limit)
and, when the training stack is there, for a whole training step -- and fit
f to each.  The fit is least squares on 1/S(p) - 1/p = f (1 - 1/p), a line
through the origin, so f = sum(x y) / sum(x x) with x = 1 - 1/p.
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
from .measure import blas_threads, gflops, matmul_flops, time_call
from .probes import _fma_gflops
from .progress import Progress

__all__ = ["SCHEMA", "run_scaling", "fit_amdahl", "amdahl"]

SCHEMA = "whygpu.scaling/1"


def _parallel_cpu_kernels() -> list[str]:
    return [k for k, v in KERNELS.items() if v.parallel and v.available and v.device == "cpu"]


def amdahl(p: float, serial: float) -> float:
    return 1.0 / (serial + (1.0 - serial) / p)


def fit_amdahl(threads: Sequence[int], speedup: Sequence[float]) -> float | None:
    """The serial fraction f that best fits S(p) (None with only p = 1)."""
    xs, ys = [], []
    for p, s in zip(threads, speedup):
        if p > 1 and s > 0:
            xs.append(1 - 1 / p)
            ys.append(1 / s - 1 / p)
    if not xs:
        return None
    f = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return min(1.0, max(0.0, f))


def _series(
    name: str, label: str, kind: str, threads: list[int], seconds: list[float], extra: dict | None = None
) -> dict:
    speedup = [seconds[0] / s for s in seconds]
    # Fit only up to the core count: beyond it threads share cores, which is
    # not what Amdahl's law describes.
    cores = _cpus_available()
    f = fit_amdahl([p for p in threads if p <= cores], [s for p, s in zip(threads, speedup) if p <= cores])
    out = {
        "name": name,
        "label": label,
        "kind": kind,
        "threads": threads,
        "seconds": seconds,
        "speedup": speedup,
        "efficiency": [s / p for s, p in zip(speedup, threads)],
        "serial_fraction": f if f is not None else 0.0,
        "max_speedup": (1 / f) if f else None,
    }  # None: no limit (f = 0)
    if extra:
        out.update(extra)
    return out


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
            f"kernel {kernel!r} is not parallel; scaling needs one of: "
            f"{', '.join(k for k, v in KERNELS.items() if v.parallel and v.available and v.device == 'cpu')}"
        )
    if threads_list is None:
        threads_list = list(range(1, _cpus_available() + 1))
    threads_list = sorted({check_threads(t, warn=False) for t in threads_list} | {1})  # beyond the cores: a note
    check_product_fits(n, n, n, dtype)
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    flops = matmul_flops(n, n, n)

    jobs = [("kernel", p) for p in threads_list]
    if numpy:
        jobs += [("numpy", p) for p in threads_list]
    if peak:
        jobs += [("peak", p) for p in threads_list]
    if train_step is not None:
        jobs += [("train", p) for p in threads_list]
    results: dict[str, list[float]] = {k: [] for k in ("kernel", "numpy", "peak", "train")}  # kind -> seconds
    extras: dict[str, list[dict]] = {"train": []}
    with Progress(len(jobs), "scaling", progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ThreadsWarning)  # threads beyond the cores are the point here (a note says so)
        for kind, p in jobs:
            bar.show(f"{kind} on {p} thread{'s' if p > 1 else ''}", 0.0)
            if kind == "kernel":
                tm = time_call(partial(matmul, a, b, kernel=kernel, threads=p, out=c), repeats=repeats, budget=budget)
                results[kind].append(tm.median)
            elif kind == "numpy":
                with blas_threads(p):
                    tm = time_call(lambda: np.matmul(a, b, out=c), repeats=repeats, budget=budget)
                results[kind].append(tm.median)
            elif kind == "peak":
                g = _fma_gflops(cpu_info().get("arch", "portable"), p, 0.03, 3)
                results[kind].append(1.0 / g)  # "seconds" per GFLOP: speed-ups come out right
            elif train_step is not None:  # "train" (queued only with a train_step)
                rec = train_step(p)
                results[kind].append(rec["seconds"])
                extras["train"].append(rec)
            bar.advance()
    series = [
        _series(
            kernel,
            f"{kernel} kernel, n={n}",
            "kernel",
            threads_list,
            results["kernel"],
            {"gflops": [gflops(flops, s) for s in results["kernel"]]},
        )
    ]
    if numpy:
        series.append(
            _series(
                "numpy",
                f"NumPy/BLAS, n={n}",
                "reference",
                threads_list,
                results["numpy"],
                {"gflops": [gflops(flops, s) for s in results["numpy"]]},
            )
        )
    if peak:
        series.append(
            _series(
                "peak",
                "FMA peak (microbenchmark)",
                "peak",
                threads_list,
                results["peak"],
                {"gflops": [1.0 / s for s in results["peak"]]},
            )
        )
    if train_step is not None:
        shares = [r.get("matmul_share") for r in extras["train"]]
        series.append(
            _series(
                "train",
                train_label,
                "train",
                threads_list,
                results["train"],
                {"matmul_share": shares, "steps": extras["train"]},
            )
        )
    cores = _cpus_available()
    if max(threads_list) > cores:
        log(f"{max(threads_list)} threads on {cores} cores: beyond {cores}, threads share cores")
    return {
        "schema": SCHEMA,
        "machine": minfo,
        "params": {
            "n": n,
            "threads": threads_list,
            "kernel": kernel,
            "dtype": dtype,
            "repeats": repeats,
            "budget_s": budget,
        },
        "series": series,
        "seconds": time.perf_counter() - t_start,
        "note": (
            None
            if len(threads_list) > 2
            else "with two thread counts (1 and p) the Amdahl fit is exact: one equation, one unknown"
        ),
    }
