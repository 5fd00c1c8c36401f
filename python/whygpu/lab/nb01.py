"""Notebook 01 (why GPUs): its exercises, and the sentences it concludes with, computed from its own run.

Exercises (checked with ``whygpu.lab.check``):

* ``01.predict_ratio`` -- before measuring, predict how many times naive's GFLOP/s packed reaches at one size;
  right when within a factor of :data:`PREDICT_FACTOR` of the measured ratio.
* ``01.loop_order`` -- write ``matmul(A, B)`` in the i-k-j loop order (the student writes code); right when it
  matches a float64 reference within the float32 rounding that a k-long sum may make.
* ``01.serial_fraction`` -- invert Amdahl's law: the serial fraction s that a speed-up S on p threads implies
  (the student writes code); then the notebook applies it to its own measured speed-up.

Conclusions (each takes what the notebook measured and returns the sentence; tests/test_lab_nb01.py plants
results for this 2-core machine and for a 16-core one): :func:`ladder_title`, :func:`ladder_conclusion`,
:func:`rung_reasons`, :func:`loop_order_conclusion`, :func:`thread_conclusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import Verdict, exercise

__all__ = [
    "LADDER",
    "PREDICT_FACTOR",
    "SAME",
    "ladder_title",
    "ladder_conclusion",
    "rung_reasons",
    "loop_order_conclusion",
    "speedups",
    "thread_conclusion",
]

# The CPU rungs in teaching order (whygpu.available_kernels(device="cpu") lists the ones built here).
LADDER = ("python", "cython", "naive", "reordered", "blocked", "packed", "openmp")

# Two speeds within this factor of each other are "level": a busy machine moves a single timing by that much.
SAME = 1.15

# A predicted ratio within this factor of the measured one is a good prediction.
PREDICT_FACTOR = 3.0

UNIT_ROUNDOFF_F32 = 2.0**-24


def _x(r: float) -> str:
    return f"x{r:.2f}" if r < 10 else f"x{r:,.0f}"


# ---- Exercises ------------------------------------------------------------------------------------------------


@exercise(
    "01.predict_ratio",
    "predict packed's GFLOP/s over naive's at one size, before measuring",
    hint="naive does one multiply-add at a time and waits on memory; packed does a SIMD instruction's worth "
    "(8 float32 lanes with AVX2, each a fused multiply-add) from registers. `whygpu.explain(n, n, n, "
    "measure=False)` gives the roofline model's predicted GFLOP/s of each rung, a prediction you can make "
    "before timing anything.",
)
def _predict_ratio(answer: Any, measured: float) -> Verdict:
    guess = float(answer)
    if not guess > 0 or not math.isfinite(guess):
        return Verdict(False, f"a ratio of two speeds is a positive number, not {answer!r}")
    off = max(guess / measured, measured / guess)
    said = f"you predicted {_x(guess)}, this machine measured {_x(measured)}"
    if off <= PREDICT_FACTOR:
        return Verdict(True, f"{said}: within a factor of {PREDICT_FACTOR:g}, a good prediction")
    way = "low" if guess < measured else "high"
    return Verdict(False, f"{said}: {way} by a factor of {off:.1f} (a good prediction is within {PREDICT_FACTOR:g})")


def _reference_inputs(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Not square, so that a swapped index or a transpose shows.
    return rng.standard_normal((24, 20), dtype=np.float32), rng.standard_normal((20, 28), dtype=np.float32)


def product_error(c: Any, a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    """Whether ``c`` is A @ B: compared with the float64 product within the rounding a float32 sum of k terms
    may make (2 k u |A| |B|, element by element), and what is off if it is not."""
    c = np.asarray(c)
    want = (a.shape[0], b.shape[1])
    if c.shape != want:
        return False, f"C has shape {c.shape}, but A is {a.shape} and B is {b.shape}, so C is {want}"
    if not np.all(np.isfinite(c)):
        return False, "C holds NaN or infinity"
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    bound = 2 * a.shape[1] * UNIT_ROUNDOFF_F32 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(int(np.argmax(err / bound)), err.shape)
    if err[worst] <= bound[worst]:
        return True, f"C matches the float64 product within float32 rounding for k = {a.shape[1]}"
    if not np.any(c):
        return False, "C is all zeros: the loop adds nothing yet (is the inner line still `...`?)"
    return False, (
        f"C[{worst[0]}, {worst[1]}] is {float(c[worst]):.4g}, the float64 product says {float(ref[worst]):.4g}"
    )


@exercise(
    "01.loop_order",
    "write matmul(A, B) in the i-k-j loop order",
    hint="for each row i of C and each p, add A[i, p] times the whole row p of B to row i of C: "
    "`C[i, :] += A[i, p] * B[p, :]` -- every number of B is then read along its row, as it lies in memory.",
)
def _loop_order(answer: Callable[[np.ndarray, np.ndarray], Any]) -> Verdict:
    a, b = _reference_inputs()
    ok, why = product_error(answer(a, b), a, b)
    return Verdict(ok, why)


# (speed-up S, threads p, serial fraction s): Amdahl's S = 1 / (s + (1 - s) / p), solved for s.
_AMDAHL_CASES = ((2.0, 2, 0.0), (1.0, 2, 1.0), (1.6, 2, 0.25), (8.0, 16, 1 / 15), (3.2, 4, 0.0833333333333333))


@exercise(
    "01.serial_fraction",
    "invert Amdahl's law: the serial fraction s a speed-up S on p threads implies",
    hint="start from S = 1 / (s + (1 - s) / p): then 1/S = s + (1 - s)/p; collect the s terms: "
    "s = (p/S - 1) / (p - 1).",
)
def _serial_fraction(answer: Callable[[float, int], Any]) -> Verdict:
    for speedup, p, s in _AMDAHL_CASES:
        got = answer(speedup, p)
        if got is ...:
            return Verdict(False, "serial_fraction still returns ... (not answered yet)")
        if not math.isclose(float(got), s, rel_tol=1e-6, abs_tol=1e-9):
            return Verdict(False, f"a speed-up of {speedup} on {p} threads means s = {s:.4g}; yours gives {got!r}")
    return Verdict(
        True,
        "right on every case: S = p means s = 0 (all parallel), S = 1 means s = 1 (nothing parallel); "
        "S above p would need s below 0, and S below 1 an s above 1 -- neither is serial work",
    )


# ---- Conclusions, computed from the measured results ----------------------------------------------------------

Results = Mapping[str, tuple[float, int]]  # kernel -> (GFLOP/s, n it was measured at)


def _order(results: Results) -> list[str]:
    return [k for k in LADDER if k in results] + [k for k in results if k not in LADDER]


def ladder_title(results: Results) -> str:
    """The figure's title: what its bars show, and the top bar, read from the bars themselves."""
    top = max(results, key=lambda k: results[k][0])
    return f"GFLOP/s of each rung measured on this machine (n under each bar); highest: {top}"


def _step(lo: str, hi: str, results: Results) -> str:
    (g0, n0), (g1, n1) = results[lo], results[hi]
    r = g1 / g0
    head = f"{hi} / {lo}: {_x(r)}"
    if n0 != n1:
        return f"{head} ({hi} at n = {n1}, {lo} at n = {n0}: rates at different sizes)"
    if r >= SAME:
        return f"{head} (above the rung before it, both at n = {n0})"
    if r <= 1 / SAME:
        return f"{head} (BELOW the rung before it, both at n = {n0})"
    return f"{head} (level: within x{SAME:g} either way, no difference measurable here at n = {n0})"


def ladder_conclusion(results: Results, l2_bytes: int | None = None) -> str:
    """What the ladder just measured shows, rung against the rung before it: above, below or level, and the
    matrix size of each, so that no ratio silently compares two sizes.  With ``l2_bytes`` (this machine's L2,
    ``whygpu.cpu_info()["caches"]["L2"]``), where blocked did not measure above reordered it says whether B
    fits in L2 at that size -- then reordered already reads B from a cache, and tiles have nothing to remove."""
    order = _order(results)
    lines = ["Each rung against the one before it (GFLOP/s, a ratio of rates):"]
    lines += [f"  {_step(a, b, results)}" for a, b in zip(order, order[1:])]
    below = [
        b for a, b in zip(order, order[1:]) if results[a][1] == results[b][1] and results[b][0] * SAME <= results[a][0]
    ]
    level = [
        b
        for a, b in zip(order, order[1:])
        if results[a][1] == results[b][1] and 1 / SAME < results[b][0] / results[a][0] < SAME
    ]
    top = max(order, key=lambda k: results[k][0])
    if below or level:
        lines.append(
            "So not every rung measured above the one before it here"
            + (f" ({', '.join(below)} below" if below else " (")
            + ("; " if below and level else "")
            + (f"{', '.join(level)} level" if level else "")
            + "): each rung adds one idea, and an idea pays only where what it removes was the limit on this "
            "machine at this size."
        )
    else:
        lines.append("Here every rung measured above the one before it.")
    if l2_bytes and "blocked" in results and "reordered" in results:
        (gr, nr), (gb, nb) = results["reordered"], results["blocked"]
        b_bytes = 4 * nb * nb  # B, float32
        if nr == nb and gb < SAME * gr:
            fits = b_bytes <= l2_bytes
            lines.append(
                f"blocked is not above reordered at n = {nb}: B holds {b_bytes / 1024:,.0f} KiB, and this "
                f"machine's L2 holds {l2_bytes / 1024:,.0f} KiB, so "
                + (
                    "B already fits in L2 and reordered reads it from there: the tiles have nothing to remove "
                    "at this size (try a product whose B overflows L2)."
                    if fits
                    else "B overflows L2; the measurement does not say why the tiles did not pay here."
                )
            )
    first = order[0]
    lines.append(
        f"Highest: {top}, {_x(results[top][0] / results[first][0])} the GFLOP/s of {first}"
        + (
            f" ({top} at n = {results[top][1]}, {first} at n = {results[first][1]})."
            if results[top][1] != results[first][1]
            else f" (both at n = {results[top][1]})."
        )
    )
    return "\n".join(lines)


def rung_reasons(model_rows: Sequence[Mapping[str, Any]], results: Results) -> list[str]:
    """For each rung the roofline model (``whygpu.explain(..., measure=False).rows``) and the ladder both have
    at the same n: the share of its roof it measured, and why it sits below it (``whygpu.why.why_below``:
    from the rung's own code, or "the measurement does not say why")."""
    from ..why import why_below

    out = []
    for row in model_rows:
        k = row["kernel"]
        if k not in results or results[k][1] != row["n"]:
            continue
        fraction = results[k][0] / row["predicted_gflops"]
        out.append(
            f"{k} ({row['compute_roof']} roof, {row['predicted_gflops']:.3g} GFLOP/s): " + why_below(k, fraction)
        )
    return out


def loop_order_conclusion(yours_s: float, rungs_s: Mapping[str, float], n: int) -> str:
    """Your i-k-j matmul's time against the package's rungs, timed on the same n x n product."""
    parts = []
    for k, t in rungs_s.items():
        r = t / yours_s
        if r >= SAME:
            rel = "yours took less time"
        elif r <= 1 / SAME:
            rel = "yours took more time"
        else:
            rel = f"level, within x{SAME:g}"
        parts.append(f"{k} {t * 1e3:.3g} ms against yours {yours_s * 1e3:.3g} ms, {k}'s time / yours = {r:.3g} ({rel})")
    return f"At n = {n}: " + "; ".join(parts) + "."


def speedups(times: Mapping[int, Sequence[float]]) -> dict[int, tuple[float, float, float]]:
    """threads -> (median, min, max) of each round's speed-up over that round's own 1-thread time."""
    out = {}
    for p, ts in times.items():
        ratios = [t1 / tp for t1, tp in zip(times[1], ts)]
        out[p] = (float(np.median(ratios)), min(ratios), max(ratios))
    return out


def thread_conclusion(times: Mapping[int, Sequence[float]], cores: int) -> str:
    """What the interleaved timings (threads -> seconds per round, with a 1-thread entry) show about threads on
    this machine: a speed-up within Amdahl's law (with the serial fraction it implies), one above the number
    of threads or below 1 (which no serial fraction explains: what the law leaves out, and which rounds show
    it), or rounds that disagree (not measurable here)."""
    if cores < 2 or len(times) < 2:
        return f"This machine has {cores} core(s): a speed-up from threads is not measurable here."
    s1 = times[1]
    noise = max(s1) / min(s1)
    lines = []
    for p, (med, lo, hi) in sorted(speedups(times).items()):
        if p == 1:
            continue
        head = f"{p} threads: speed-up {_x(med)} (rounds {lo:.2f}-{hi:.2f})"
        s = (p / med - 1) / (p - 1)
        if lo <= 1 and hi >= SAME:
            above = f", above {p}, which no split of the work across {p} threads can give" if hi > p * 1.02 else ""
            lines.append(
                f"{head}: the rounds disagree -- at least one gained nothing or lost (x{lo:.2f}) and one gained "
                f"x{hi:.2f}{above}. The machine's speed changed from round to round (other programs, the clock), "
                f"so whether {p} threads help is not measurable here: run it again on an idle machine."
            )
        elif med > p * 1.02:
            lines.append(
                f"{head}: above {p}, which Amdahl's law forbids (it would need s = {s:.2f}, below 0). "
                f"The 1-thread rounds themselves ranged over x{noise:.2f} (fastest to slowest): "
                "what the law leaves out -- a 1-thread round slowed by other programs or a lower clock, "
                "or p cores' caches holding more of the matrices than one core's -- made the difference."
            )
        elif med < 1:
            lines.append(
                f"{head}: below 1 -- the extra threads cost more than they bought. Amdahl's law cannot say "
                f"that (it would need s = {s:.2f}, above 1): the cost of starting and waiting for threads, or "
                f"{'fewer' if p > cores else 'other programs on the'} cores"
                f"{f' than threads ({cores} cores)' if p > cores else ''}, which it leaves out, did."
            )
        else:
            of = f"of the {cores} cores" if p <= cores else f"with only {cores} cores"
            lines.append(
                f"{head} {of}: within Amdahl's law, as if a fraction s = {max(s, 0):.2f} of the work "
                f"were serial (the efficiency, speed-up / threads, is {med / p:.0%})."
            )
    return "\n".join(lines)
