"""Notebook 05's exercises, and the sentences its conclusions are computed with (issue 36).

The notebook trains one network on every back end (``rows``: back end -> ``{"epoch_s": seconds per epoch,
"accuracy": test accuracy}``), then profiles a training step (the share of it spent in matrix multiplication).
What it concludes depends on this machine, so it is computed here from those numbers -- never written in
markdown:

* :func:`ladder_sentence`: which back end trained quickest per epoch here, which slowest, and whether every
  back end reached the same accuracy;
* :func:`threads_sentence`: whether the ``openmp`` rung on this machine's threads helped against ``packed`` on
  one (helped, within the run-to-run noise, or hurt), or that it is not measurable here;
* :func:`conclusion`: Amdahl's law from the measured matmul share (the most any kernel can give, and what a
  kernel k times quicker gives), checked against the profiled steps on packed and openmp, and what threads did.

Exercises: ``05.threads`` (the speed-up of openmp over packed, read from the table, and whether threads helped),
``05.linear_backward`` (a Linear layer's dW, db, dX written in NumPy, checked against a float64 reference and
whygpu's own gradients), ``05.amdahl`` (the largest step speed-up any kernel can give, from the measured share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import Verdict, exercise

__all__ = ["NOISE", "amdahl", "ladder_sentence", "threads_sentence", "conclusion", "IDEAL_CORES"]

# Two timings within 10% of each other are not told apart: on a shared 2-core machine one epoch's time moves by
# that much from run to run.
NOISE = 1.10
# The "machine with more cores" the conclusion also speaks of: a kernel this many times quicker.
IDEAL_CORES = 16


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"  # as Profile.table() prints it: one share, one value


def amdahl(share: float, k: float) -> float:
    """The speed-up of a whole step when the part that takes ``share`` of it gets ``k`` times quicker and the
    rest does not change (Amdahl's law): 1 / ((1 - share) + share / k); k = inf gives the cap 1 / (1 - share)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share is a fraction of the step, between 0 and 1; got {share}")
    if k <= 0:
        raise ValueError(f"k is a speed-up factor, > 0; got {k}")
    rest = 1.0 - share
    denominator = rest + (0.0 if math.isinf(k) else share / k)
    return math.inf if denominator == 0 else 1.0 / denominator


# ---- Conclusions computed from the run ------------------------------------------------------------------------------


def ladder_sentence(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Which back end trained quickest per epoch, which slowest (and how many times its time), and whether the
    test accuracy was the same on every back end -- from the measured ``rows``."""
    if not rows:
        return "No back end was measured."
    order = sorted(rows, key=lambda b: rows[b]["epoch_s"])
    quick, slow = order[0], order[-1]
    out = [
        f"Quickest per epoch here: {quick} ({_ms(rows[quick]['epoch_s'])}); slowest: {slow} "
        f"({_ms(rows[slow]['epoch_s'])}, {rows[slow]['epoch_s'] / rows[quick]['epoch_s']:.0f} times {quick}'s time)."
    ]
    accs = {b: rows[b]["accuracy"] for b in rows}
    lo, hi = min(accs.values()), max(accs.values())
    if hi - lo < 0.5 / 1000:
        out.append(
            f"Test accuracy {hi:.3f} on every back end: same seed, same batches, same weights; only the time differs."
        )
    else:
        spread = ", ".join(f"{b} {a:.3f}" for b, a in accs.items())
        out.append(f"Test accuracy differs between back ends ({spread}): the rounding of float32 sums differs.")
    return " ".join(out)


def _threads_case(rows: Mapping[str, Mapping[str, float]], threads: int) -> tuple[str, float]:
    """("missing" | "one" | "helped" | "noise" | "hurt", packed / openmp seconds per epoch)."""
    if "openmp" not in rows or "packed" not in rows:
        return "missing", math.nan
    r = rows["packed"]["epoch_s"] / rows["openmp"]["epoch_s"]
    if threads <= 1:
        return "one", r
    if r >= NOISE:
        return "helped", r
    if r > 1 / NOISE:
        return "noise", r
    return "hurt", r


def threads_sentence(rows: Mapping[str, Mapping[str, float]], threads: int) -> str:
    """Whether the openmp rung on ``threads`` threads helped against packed on one, from the measured rows."""
    case, r = _threads_case(rows, threads)
    if case == "missing":
        return "openmp against packed: not measurable here (this build has no openmp back end)."
    o, p = _ms(rows["openmp"]["epoch_s"]), _ms(rows["packed"]["epoch_s"])
    head = f"openmp on {threads} thread{'s' if threads != 1 else ''} took {o} per epoch, packed on 1 took {p}"
    if case == "one":
        return head + ": with one thread, what threads add is not measurable here."
    if case == "helped":
        return (
            f"{head}: threads helped here, x{r:.2f} the speed of packed "
            f"({100 * r / threads:.0f}% of the x{threads} that {threads} threads could give at best)."
        )
    if case == "noise":
        return (
            f"{head}: threads did not help measurably here (x{r:.2f}, within the ±{100 * (NOISE - 1):.0f}% "
            "that an epoch's time moves from run to run). Likely why: each matmul of this small network is too "
            "little work to share: starting the threads and waiting for the last one costs about what it saves."
        )
    return (
        f"{head}: threads hurt here, openmp took {1 / r:.2f} times packed's time. Likely why: each "
        "matmul of this small network is too little work to share, and threads that wait for a busy core "
        "(other programs, or more threads than free cores) cost more than they save."
    )


def conclusion(
    rows: Mapping[str, Mapping[str, float]],
    share: float,
    threads: int,
    steps: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The notebook's conclusion, from its own run: Amdahl's cap from the measured matmul ``share`` (of a step on
    packed), what a kernel ``threads`` or 16 times quicker would give, what threads did (``rows``, in its last
    sentence), and -- when
    ``steps`` holds both ``{"packed": {"step_s", "matmul_s"}, "openmp": {...}}`` -- the step's measured speed-up
    beside the one Amdahl predicts from the measured matmul speed-up."""
    cap = amdahl(share, math.inf)
    cap_text = "without limit" if math.isinf(cap) else f"more than x{cap:.1f}"
    out = [
        f"Matrix multiplication took {_pct(share)} of a training step on packed. The other {_pct(1 - share)} "
        f"does not change with the kernel, so no matmul kernel, however quick, can make the step {cap_text} "
        "quicker (Amdahl's law)."
    ]
    ks = sorted({k for k in (threads, IDEAL_CORES) if k > 1})
    parts = []
    for k in ks:
        s = amdahl(share, k)
        who = f"this machine's {k} threads" if k == threads else f"{k} cores"
        parts.append(
            f"x{k} quicker ({who}, used perfectly) makes the step x{s:.2f} quicker, {100 * s / k:.0f}% of x{k}"
        )
    if parts:
        out.append("A kernel " + "; a kernel ".join(parts) + ".")
    if steps and "packed" in steps and "openmp" in steps and threads > 1:
        pk, om = steps["packed"], steps["openmp"]
        k_m = pk["matmul_s"] / om["matmul_s"]
        s_m = pk["step_s"] / om["step_s"]
        predicted = amdahl(share, k_m)
        line = (
            f"Profiled, openmp's matmuls ran x{k_m:.2f} the speed of packed's; Amdahl predicts the step "
            f"x{predicted:.2f} from that, measured x{s_m:.2f}"
        )
        other_p, other_o = pk["step_s"] - pk["matmul_s"], om["step_s"] - om["matmul_s"]
        if abs(s_m / predicted - 1) <= 0.15:
            line += ": the law holds within 15%."
        else:
            line += (
                f": not within 15%, because the rest of the step changed too ({_ms(other_p)} per step on "
                f"packed, {_ms(other_o)} on openmp), which Amdahl's law assumes it does not."
            )
        out.append(line)
    case, r = _threads_case(rows, threads)
    verdict = {
        "helped": "threads helped"
        + (", almost in proportion" if case == "helped" and r >= 0.9 * threads else ", but less than in proportion"),
        "noise": "threads did not help measurably",
        "hurt": "threads hurt",
        "one": "what threads add is not measurable here",
        "missing": "what threads add is not measurable here",
    }[case]
    out.append(
        "So a quicker kernel speeds training up in proportion only while matmul is nearly all of the step: "
        f"here at most {cap_text.replace('more than ', '')}, and {verdict}."
    )
    return "\n".join(out)


# ---- Exercises --------------------------------------------------------------------------------------------------


@exercise(
    "05.threads",
    "From the table: openmp's speed-up over packed (packed's seconds per epoch / openmp's), and did threads help?",
    hint="speedup = rows['packed']['epoch_s'] / rows['openmp']['epoch_s'] (a ratio, above 1 when openmp is "
    f"quicker); helped is True when that is clearly above 1 (x{NOISE:.2f} or more), False when it is 1 or below.",
)
def _threads(answer: Any, rows: Mapping[str, Mapping[str, float]], threads: int) -> Verdict:
    case, r = _threads_case(rows, threads)
    if case == "missing":
        return Verdict(True, threads_sentence(rows, threads))
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return Verdict(False, "answer (speedup, helped): a number and True or False")
    speedup, helped = answer
    if speedup is ... or helped is ...:
        return Verdict(False, "not answered yet: replace both ... (speedup and helped) and run the cell again")
    if not isinstance(helped, (bool, np.bool_)):
        return Verdict(False, f"helped is True or False, not {helped!r}")
    try:
        speedup = float(speedup)
    except (TypeError, ValueError):
        return Verdict(False, f"speedup is a number, not {speedup!r}")
    if not abs(speedup / r - 1) <= 0.03:
        p, o = rows["packed"]["epoch_s"], rows["openmp"]["epoch_s"]
        if abs(speedup - (p - o)) < 1e-9 or abs(speedup - 1e3 * (p - o)) < 1e-6:
            why = "that is a difference of times; a speed-up is a ratio"
        elif abs(speedup * r - 1) <= 0.03:
            why = "that is openmp's time over packed's, the inverse"
        else:
            why = "it is not packed's time over openmp's"
        return Verdict(False, f"speedup {speedup:.3g}, but the table gives x{r:.2f}: {why}.")
    if case == "one":
        return Verdict(True, f"x{r:.2f}; with one thread, whether threads help is not measurable here.")
    if case == "noise":
        return Verdict(True, f"x{r:.2f} is within the ±{100 * (NOISE - 1):.0f}% noise: either answer holds.")
    if bool(helped) != (case == "helped"):
        return Verdict(False, f"x{r:.2f} means threads {'helped' if case == 'helped' else 'did not help'} here.")
    return Verdict(True, f"x{r:.2f}: threads {'helped' if case == 'helped' else 'hurt'} here.")


def _reference(x: np.ndarray, W: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, W, dy = (a.astype(np.float64) for a in (x, W, dy))
    return dy.T @ x, dy.sum(axis=0), dy @ W


@exercise(
    "05.linear_backward",
    "Write linear_backward(x, W, dy) -> (dW, db, dX) for y = x @ W.T + b, in NumPy",
    hint="each gradient has the shape of what it is the gradient of: dW = dy.T @ x (out x in), db = dy summed over "
    "the batch (axis 0), dX = dy @ W (batch x in).",
)
def _linear_backward(answer: Any) -> Verdict:
    from .. import nn  # the layer whose gradients the student's are checked against

    rng = np.random.default_rng(5)
    batch, n_in, n_out = 7, 5, 3  # all different: a transpose cannot pass by accident
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    dy = rng.standard_normal((batch, n_out)).astype(np.float32)
    layer = nn.Linear(n_in, n_out)
    W = layer.weight.data.copy()
    layer(x)
    layer.zero_grad()
    dx_whygpu = layer.backward(dy)
    ours = {"dW": layer.weight.grad, "db": layer.bias.grad if layer.bias is not None else None, "dX": dx_whygpu}
    ref = dict(zip(("dW", "db", "dX"), _reference(x, W, dy)))
    got = answer(x.copy(), W.copy(), dy.copy())
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        return Verdict(False, "linear_backward returns three arrays: (dW, db, dX)")
    if any(g is ... for g in got):
        return Verdict(False, "not answered yet: replace each ... with NumPy code and run the cell again")
    worst = 0.0
    for name, g in zip(("dW", "db", "dX"), got):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != ref[name].shape:
            return Verdict(False, f"{name} has shape {g.shape}; it should be {ref[name].shape}")
        err = float(np.max(np.abs(g - ref[name])))
        if not np.allclose(g, ref[name], rtol=1e-4, atol=1e-5):
            return Verdict(False, f"{name} is off by up to {err:.3g} from the float64 reference")
        worst = max(worst, err)
    agree = max(float(np.max(np.abs(np.asarray(ours[k], np.float64) - ref[k]))) for k in ref)
    return Verdict(
        True,
        f"dW, db and dX match the float64 reference (largest difference {worst:.1e}); whygpu's float32 "
        f"gradients differ from it by {agree:.1e}. Two of the three are matmuls: a Linear layer's backward "
        "pass does twice its forward's matmul work (the first layer skips dX).",
    )


@exercise(
    "05.amdahl",
    "From the measured matmul share: the largest speed-up of a step any faster matmul kernel can give",
    hint="make the matmul take no time at all: what is left of the step is 1 - share of it, so the step gets "
    "1 / (1 - share) times quicker, and no more.",
)
def _amdahl(answer: Any, share: float) -> Verdict:
    try:
        cap_answer = float(answer)
    except (TypeError, ValueError):
        return Verdict(False, f"the answer is a number (a speed-up), not {answer!r}")
    cap = amdahl(share, math.inf)
    if math.isinf(cap):
        return Verdict(True, "the share is 1: with nothing else in the step, there is no cap")
    if abs(cap_answer / cap - 1) <= 0.03:
        return Verdict(
            True,
            f"x{cap:.1f}: {_pct(1 - share)} of the step is not matmul and stays, "
            f"so even an infinitely quick kernel gives at most x{cap:.1f}.",
        )
    if share > 0 and abs(cap_answer * share - 1) <= 0.03:
        why = "1 / share is the speed-up if everything but matmul vanished, the other way round"
    elif cap_answer < 1:
        why = "a speed-up of less than 1 means slower; that is the fraction of the step left, not a speed-up"
    else:
        why = f"with share {share:.3f}, the step's time cannot fall below {_pct(1 - share)} of what it is"
    return Verdict(False, f"x{cap_answer:.3g}, but the cap is x{cap:.1f}: {why}.")
