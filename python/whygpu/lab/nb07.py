"""Notebook 07 (more than one machine): its exercises and the conclusions it computes from its own run.

Exercises:

* ``07.two_ranks``: name the measured part of a step that grew the most from 1 rank to 2 (the student writes
  the code that finds it from the measured parts);
* ``07.allreduce_formula``: write the tree allreduce's time, latency plus bytes over bandwidth, as a function;
* ``07.bigger_batch``: predict the scaling efficiency at P = 8 when the global batch grows, before the model
  computes it.

Conclusions (each a sentence computed from the numbers the notebook just measured or modelled):
:func:`two_ranks_conclusion` (1 rank against 2, from the measured parts of a step) and
:func:`scaling_conclusion` (where a model stops scaling in the table, and what stops it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import Verdict, exercise

# The measured parts of one training step, in the order they happen.
PARTS: tuple[str, ...] = ("forward_s", "backward_s", "exposed_s", "update_s")
PART_NAMES: dict[str, str] = {
    "forward_s": "the forward pass",
    "backward_s": "the backward pass",
    "exposed_s": "waiting for the allreduce",
    "update_s": "the optimizer's update",
}

# One 2-rank run of the notebook's script, measured on a 2-core AMD EPYC (Zen 3) with MPICH: the numbers the
# exercise uses where MPI is missing (labelled as such where they are used).  Seconds per step, medians.
EXAMPLE_ONE: dict[str, float] = {
    "forward_s": 1.5e-4,
    "backward_s": 1.1e-4,
    "exposed_s": 0.0,
    "update_s": 2.5e-5,
    "step_s": 2.8e-4,
}
EXAMPLE_TWO: dict[str, float] = {
    "forward_s": 2.1e-4,
    "backward_s": 2.4e-4,
    "exposed_s": 1.4e-3,
    "update_s": 4.2e-5,
    "step_s": 1.9e-3,
}


def _ms(s: float) -> str:
    return f"{1e3 * s:.3f} ms"


def mean_of_ranks(ranks: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The ranks' per-step parts averaged over the ranks (each rank's own median per step)."""
    keys = set.intersection(*(set(r) for r in ranks))
    return {k: sum(float(r[k]) for r in ranks) / len(ranks) for k in keys}


def added_per_step(one: Mapping[str, float], two: Mapping[str, float]) -> dict[str, float]:
    """Seconds each part of a step added (negative: saved) going from 1 rank to 2."""
    return {p: float(two[p]) - float(one[p]) for p in PARTS}


def two_ranks_conclusion(
    one: Mapping[str, float],
    share_alone: Mapping[str, float] | None,
    two: Mapping[str, float] | None,
    *,
    batch: int,
    grad_bytes: int,
    cores: int | None = None,
    busy_cores: float | None = None,
    reason: str = "",
) -> str:
    """What 1 rank against 2 shows, from the measured parts of a step: ``one``, 1 rank on the whole ``batch``;
    ``share_alone``, 1 rank alone on one rank's share of it; ``two``, a rank of the 2-rank run (the ranks'
    mean); ``cores``, the cores each rank could run on (os.sched_getaffinity, measured in the ranks);
    ``busy_cores``, the ranks' CPU seconds over the wall-clock seconds, summed over the ranks.
    ``two`` None: the 2-rank run was not measurable here (``reason`` says why)."""
    if two is None:
        return (
            f"1 rank: {_ms(one['step_s'])} per step on a batch of {batch}. 2 ranks: not measurable here"
            + (f" ({reason})" if reason else "")
            + "."
        )
    t1, t2 = float(one["step_s"]), float(two["step_s"])
    verdict = "2 ranks took less time per step than 1" if t2 < t1 else "2 ranks took more time per step than 1"
    out = [
        f"Measured here: one step took {_ms(t2)} on 2 ranks against {_ms(t1)} on 1 rank ({verdict}, x{t1 / t2:.2f})."
    ]
    added = added_per_step(one, two)
    most = max(added, key=lambda p: added[p])
    parts = ", ".join(f"{PART_NAMES[p]} {'+' if added[p] >= 0 else '-'}{_ms(abs(added[p]))}" for p in PARTS)
    out.append(f"Per part, 2 ranks against 1: {parts}; the largest change is {PART_NAMES[most]}.")
    c1 = float(one["forward_s"] + one["backward_s"])
    c2 = float(two["forward_s"] + two["backward_s"])
    out.append(
        f"Compute (forward + backward): {_ms(c1)} for the batch of {batch} on 1 rank, {_ms(c2)} for each rank's "
        f"half on 2 ranks ({c2 / c1:.0%} of it, where an even split of the work would give 50%)."
    )
    if share_alone is not None:
        cs = float(share_alone["forward_s"] + share_alone["backward_s"])
        out.append(
            f"One rank alone on that half took {_ms(cs)} ({cs / c1:.0%} of the whole batch's compute: a per-step "
            f"cost that does not shrink with the batch), and beside the other rank x{c2 / cs:.2f} of that."
        )
    if cores is not None:
        busy = f", together keeping {busy_cores:.2f} of them busy" if busy_cores is not None else ""
        out.append(
            f"Both ranks ran on this one machine, each able to run on the same {cores} core(s) (measured in each "
            f"rank){busy}: they share these cores with each other, with the threads that wait on their allreduce "
            f"and with this notebook, and their 'network' is shared memory."
        )
    exposed = float(two["exposed_s"])
    if exposed > 0:
        out.append(
            f"The allreduce of the {grad_bytes / 1e3:.1f} KB gradient kept each rank waiting {_ms(exposed)} per step "
            f"after its backward pass: {exposed / max(t2, 1e-12):.0%} of the 2-rank step, an effective "
            f"{grad_bytes / exposed / 1e6:.0f} MB/s for that many bytes."
        )
    return " ".join(out)


def scaling_conclusion(
    model: str,
    link: str,
    ranks: Sequence[int],
    efficiency: Sequence[float],
    fixed_lost_s: Sequence[float],
    comm_lost_s: Sequence[float],
    *,
    keep: float = 0.5,
) -> str:
    """Where ``model`` stops scaling on ``link`` in a table of scaling efficiency by P, and what stops it.
    ``fixed_lost_s[i]``: the compute at ranks[i] that did not split (a rank's compute on its share minus 1/P
    of one rank's compute on the whole batch: the fixed per-step cost, and rounding); ``comm_lost_s[i]``: the
    allreduce there.  Together they are the time lost against a perfect 1/P split."""
    if not ranks or not (len(ranks) == len(efficiency) == len(fixed_lost_s) == len(comm_lost_s)):
        raise ValueError("ranks, efficiency and the lost times must be non-empty and of one length")
    below = [i for i, e in enumerate(efficiency) if e < keep]
    head = f"{model} on {link}:"
    if not below:
        low = min(range(len(ranks)), key=lambda i: efficiency[i])
        return (
            f"{head} the efficiency stays at or above {keep:.0%} up to P = {ranks[-1]}, the largest P in the table "
            f"(its lowest, {efficiency[low]:.0%}, at P = {ranks[low]}): within this table it keeps scaling."
        )
    i = below[0]
    before = (
        f"{efficiency[i - 1]:.0%} at P = {ranks[i - 1]}, then "
        if i > 0
        else f"already below {keep:.0%} at the first P in the table: "
    )
    fixed, comm = float(fixed_lost_s[i]), float(comm_lost_s[i])
    cause = "the fixed per-step cost each rank still pays" if fixed >= comm else "the allreduce"
    last = f", and {efficiency[-1]:.0%} at P = {ranks[-1]}" if i < len(ranks) - 1 else ""
    return (
        f"{head} the efficiency is {before}{efficiency[i]:.0%} at P = {ranks[i]}, the first P below {keep:.0%}{last}. "
        f"At P = {ranks[i]} the time lost against a perfect 1/P split is {_ms(fixed)} of compute that does not "
        f"split and {_ms(comm)} of allreduce: {cause} is what stops it there."
    )


# ---- Exercises -------------------------------------------------------------------------------------------------


@exercise(
    "07.two_ranks",
    "which measured part of a step grew the most from 1 rank to 2",
    hint="subtract 1 rank's time of each part from 2 ranks' (added[p] = two[p] - one[p] for p in PARTS) and take "
    "the part with the largest difference: max(added, key=added.get).",
)
def _two_ranks(answer: Any, one: Mapping[str, float], two: Mapping[str, float]) -> Verdict:
    added = added_per_step(one, two)
    most = max(added, key=lambda p: added[p])
    name = str(answer).strip()
    if name not in PARTS:
        return Verdict(False, f"{name!r} is not one of the parts {', '.join(PARTS)}.")
    if abs(added[name] - added[most]) <= 1e-6 * max(1.0, abs(added[most])) + 1e-9:
        return Verdict(
            True,
            f"{PART_NAMES[name]} added {_ms(added[name])} per step, the most of any part: that is what the second "
            f"rank cost in this measurement.",
        )
    return Verdict(
        False,
        f"{PART_NAMES[name]} changed by {_ms(added[name])} per step, but {PART_NAMES[most]} by {_ms(added[most])}.",
    )


def _tree_allreduce_s(nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float) -> float:
    if ranks == 1:
        return 0.0
    return 2 * math.ceil(math.log2(ranks)) * alpha_s + 2 * (ranks - 1) / ranks * nbytes / bandwidth_Bps


# (gradient bytes, ranks, alpha, bandwidth): the cases a formula is tried on -- the links of the notebook,
# the digits model's gradient and a large one, P from 1 to 1000 (not a power of 2 too: ceil(log2 P)).
_CASES: tuple[tuple[float, int, float, float], ...] = tuple(
    (S, P, a, bw)
    for S in (38_984.0, 4.2e6, 1e9)
    for P in (1, 2, 3, 8, 64, 1000)
    for a, bw in ((25e-6, 1.25e9), (1.5e-6, 12.5e9))
)


@exercise(
    "07.allreduce_formula",
    "the tree allreduce's time: 2 ceil(log2 P) latencies plus 2(P-1)/P S / bandwidth",
    hint="allreduce_time(S, P, alpha, bw) = 2 * ceil(log2(P)) * alpha + 2 * (P - 1) / P * S / bw, and 0 for P = 1 "
    "(math.ceil, math.log2).",
)
def _allreduce_formula(answer: Callable[[float, int, float, float], float]) -> Verdict:
    for S, P, a, bw in _CASES:
        want = _tree_allreduce_s(S, P, a, bw)
        got = float(answer(S, P, a, bw))
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
            lat = 2 * math.ceil(math.log2(P)) * a if P > 1 else 0.0
            return Verdict(
                False,
                f"for S = {S:.0f} bytes, P = {P}, alpha = {a * 1e6:g} us, bandwidth = {bw / 1e9:g} GB/s your formula "
                f"gives {got * 1e6:.3f} us; the tree allreduce takes {want * 1e6:.3f} us "
                f"({lat * 1e6:.3f} us of latency + {(want - lat) * 1e6:.3f} us of bytes).",
            )
    return Verdict(
        True,
        f"it matches the model on all {len(_CASES)} cases (two links, three gradient sizes, P from 1 to 1000): "
        "the latency grows with log2 P, the bytes on the wire stay below twice the gradient.",
    )


def batch_efficiency(c0_s: float, c1_s: float, comm_s: float, batch: int, ranks: int) -> float:
    """Strong scaling efficiency T(1) / (P T(P)) with a rank's compute c0 + c1 b and nothing hidden."""
    share = -(-batch // ranks)
    return (c0_s + c1_s * batch) / (ranks * (c0_s + c1_s * share + comm_s))


@exercise(
    "07.bigger_batch",
    "predict the scaling efficiency at P ranks when the global batch grows",
    hint="T(1) = c0 + c1 N, T(P) = c0 + c1 N/P + allreduce(S, P); efficiency = T(1) / (P T(P)). The allreduce "
    "and c0 do not change with the batch; only c1 N grows.",
)
def _bigger_batch(answer: float, c0_s: float, c1_s: float, comm_s: float, batch: int, ranks: int) -> Verdict:
    want = batch_efficiency(c0_s, c1_s, comm_s, batch, ranks)
    got = float(answer)
    if got > 1.5:
        return Verdict(False, f"{got:g} looks like a speed-up or a percentage; give the efficiency as a fraction.")
    # A prediction by hand rounds: within 0.05 of the model, or 10% of it.
    if abs(got - want) <= max(0.05, 0.1 * want):
        return Verdict(
            True,
            f"the model gives {want:.1%} at P = {ranks} with a global batch of {batch} (yours {got:.1%}, within "
            f"0.05 or 10% of it): a larger batch gives each rank more per-sample work against the same fixed cost "
            f"and the same allreduce.",
        )
    no_c0 = batch_efficiency(0.0, c1_s, comm_s, batch, ranks)
    why = (
        " -- the efficiency without the fixed per-step cost c0: each rank still pays c0 whole."
        if abs(got - no_c0) <= 0.02
        else ""
    )
    return Verdict(
        False, f"the model gives {want:.1%} at P = {ranks} with a global batch of {batch}, not {got:.1%}{why}"
    )
