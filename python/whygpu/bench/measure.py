"""Timing helpers: warm-up, median of repeats, a time budget per
measurement, fair NumPy comparisons, and time estimates.

Why each piece is here:

* warm-up -- the first call pays for page faults, cold caches and lazily
  allocated scratch buffers; it is run once and not counted;
* several calls per sample -- a 64 x 64 product takes microseconds, less
  than the timer's noise, so fast calls are repeated inside one sample;
* median of samples -- robust to a sample spoiled by another process (this
  package is meant for shared laptops and CI machines);
* a budget -- each measurement stops sampling when it has used its share of
  time, so a slow kernel costs one call, not ten;
* ``blas_threads`` -- NumPy's BLAS would otherwise use every core, which
  makes a one-thread kernel look bad for the wrong reason.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

from threadpoolctl import threadpool_limits

__all__ = [
    "Timing",
    "time_call",
    "time_interleaved",
    "blas_threads",
    "gflops",
    "matmul_flops",
    "Estimator",
    "PLANT_ENV",
    "planted_seconds",
    "format_seconds",
]

_MIN_SAMPLE_S = 2e-3  # calls shorter than this are batched inside one sample


@dataclass
class Timing:
    """Seconds per call for each sample (a sample may batch several calls)."""

    times: list[float] = field(default_factory=list)
    calls_per_sample: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def as_dict(self) -> dict:
        return {
            "seconds": self.median,
            "seconds_min": self.best,
            "samples": len(self.times),
            "calls_per_sample": self.calls_per_sample,
            "times": list(self.times),
        }


def time_call(
    fn: Callable[[], object], *, repeats: int = 5, budget: float = 1.0, expected: float | None = None
) -> Timing:
    """Time ``fn()``: warm up, then up to ``repeats`` samples within ``budget`` s.

    ``expected`` (seconds per call, if known) lets a slow call skip the
    warm-up: when one call uses a quarter of the budget or more, a warm-up
    would double the cost for little gain.  At least one sample is always
    taken, so a call longer than the budget is still measured once.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    per_call = expected
    if expected is None or expected < budget / 4:
        t0 = time.perf_counter()
        fn()  # warm-up: not counted
        per_call = time.perf_counter() - t0
    number = max(1, math.ceil(_MIN_SAMPLE_S / max(per_call, 1e-9))) if per_call is not None else 1
    timing = Timing(calls_per_sample=number)
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        timing.times.append((time.perf_counter() - t0) / number)
        if len(timing.times) >= repeats:
            break
        spent = time.perf_counter() - start
        if spent + timing.times[-1] * number > budget:
            break
    return timing


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    budget: float = 1.0,
    contexts: Mapping[str, Callable[[], AbstractContextManager]] | None = None,
    expected: Mapping[str, float | None] | None = None,
) -> dict[str, Timing]:
    """Time several calls interleaved -- A B C A B C ... -- so that whatever
    disturbs the machine for a second disturbs all of them, and their ratio
    stays fair.  One warm-up each (unless ``expected`` says a call is slow),
    then rounds of one sample per call until each has ``repeats`` samples
    or ``budget`` seconds *per call* are used (at least one round).

    ``contexts[name]()`` returns a fresh context manager entered around each
    of that call's samples (e.g. :func:`blas_threads`).  Returns name -> Timing,
    whose ``times[i]`` all come from round i (paired samples).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    contexts = contexts or {}
    expected = expected or {}
    names = list(fns)
    start = time.perf_counter()

    def run(name: str, number: int) -> float:
        ctx = contexts.get(name)
        with ctx() if ctx is not None else nullcontext():
            t0 = time.perf_counter()
            for _ in range(number):
                fns[name]()
            return (time.perf_counter() - t0) / number

    number: dict[str, int] = {}
    for name in names:
        per_call = expected.get(name)
        if per_call is None or per_call < budget / 4:
            per_call = run(name, 1)  # warm-up: not counted
        number[name] = max(1, math.ceil(_MIN_SAMPLE_S / max(per_call, 1e-9)))
    out = {name: Timing(calls_per_sample=number[name]) for name in names}
    while True:
        t_round = time.perf_counter()
        for name in names:
            out[name].times.append(run(name, number[name]))
        rounds = len(out[names[0]].times) if names else repeats
        if rounds >= repeats:
            break
        spent = time.perf_counter() - start
        if spent + (time.perf_counter() - t_round) > budget * len(names):
            break
    return out


def blas_threads(n: int):
    """Context manager pinning NumPy's BLAS (OpenBLAS, MKL, ...) to n threads."""
    return threadpool_limits(limits=int(n), user_api="blas")


def matmul_flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of an (m, k) @ (k, n) product: one multiply
    and one add per term, 2 m n k (the convention of every BLAS benchmark)."""
    return 2 * int(m) * int(n) * int(k)


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else float("nan")


class Estimator:
    """Predicts how long one call of a kernel takes at a new size from its
    last measurement, assuming the same FLOP rate -- with a margin, since
    slow kernels get slower per FLOP as the data leave the caches."""

    MARGIN = 1.3

    def __init__(self):
        self._last = {}

    def record(self, key: str, flops: float, seconds: float) -> None:
        self._last[key] = (flops, seconds)

    def predict(self, key: str, flops: float) -> float | None:
        planted = planted_seconds(key, flops)
        if planted is not None:
            return planted
        if key not in self._last:
            return None
        f0, s0 = self._last[key]
        ratio = flops / f0
        return s0 * ratio * (self.MARGIN if ratio > 1 else 1.0)


# For tests: "would it fit the budget" must not depend on the speed of the machine running the
# test, so a test plants the speeds those decisions see, e.g. WHYGPU_PLANT_GFLOPS="python=0.001,packed=100"
# (series name = GFLOP/s).  Only the predictions are planted: what is measured is still measured.
PLANT_ENV = "WHYGPU_PLANT_GFLOPS"


def planted_seconds(name: str, flops: float) -> float | None:
    """Seconds one call of series `name` doing `flops` is planted to take (``PLANT_ENV``), or None."""
    text = os.environ.get(PLANT_ENV, "").strip()
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            rate = float(value) if sep else 0.0
        except ValueError:
            rate = 0.0
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"{PLANT_ENV}: {item!r} is not NAME=GFLOPS with a positive number")
        if key.strip() == name:
            return flops / (rate * 1e9)
    return None


def format_figure(x) -> str:
    """A GFLOP/s figure or a ratio with sensible digits ("n/a" when missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}"


def format_binary_bytes(nbytes: float) -> str:
    """'32 KiB', '1 MiB', '27.5 KiB': a cache or a buffer, in the binary units a CPU's data sheet uses."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{round(nbytes / scale, 1):g} {unit}"
    return f"{nbytes:.0f} bytes"


def format_seconds(s: float) -> str:
    """'850 us', '12 ms', '3.4 s', '2 min 5 s' -- for estimates and skip notes."""
    if s != s:  # NaN
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{s / 3600:.1f} h"
