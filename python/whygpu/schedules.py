"""Pipeline schedules (GPipe, 1F1B) as pure functions: which forward and backward pass each rank runs, in which
order, and when -- the one list that drives :class:`whygpu.distributed.Pipeline`, prints as a step-by-rank grid,
counts the messages, and feeds the step simulator as events (:func:`whygpu.predict.pipeline.to_events`).  They
need no MPI (``whygpu.distributed.schedules`` re-exports them beside the pipeline).

Pipeline parallelism (issue 35) splits a model's layers into ``p`` contiguous *stages*, one per rank, and the batch
into ``m`` *micro-batches* that flow through them.  Rank r runs ``F i`` (the forward pass of micro-batch i on its
stage) once rank r - 1 has sent it F i's activation, and ``B i`` (its backward) once rank r + 1 has sent the
gradient of that activation -- or, on the last rank, once its own F i has computed the loss.  A *schedule* is the
order in which every rank runs its 2 m actions:

* **GPipe** (Huang et al. 2019): every rank runs all m forwards, then all m backwards.  The backwards run in
  micro-batch order 0..m-1, as picotron's ``train_step_pipeline_afab`` (``input_tensors.pop(0)``) and PyTorch's
  ``ScheduleGPipe`` do: the order in which one process accumulating the same m micro-batches adds their gradients,
  and the order 1F1B's backwards run in, so both schedules sum every gradient in the same order.
* **1F1B** (PipeDream-flush, Narayanan et al. 2021, "Efficient large-scale language model training on GPU clusters
  using Megatron-LM", section 2.2.1; Megatron's ``forward_backward_pipelining_without_interleaving``): rank r runs
  ``min(m, p - r - 1)`` warm-up forwards, then alternates one forward and one backward (the steady state), then
  the remaining backwards (the cool-down).  Its stash -- the micro-batches whose forward has run and whose backward
  has not, whose activations the rank must keep -- peaks at ``min(m, p - r)``; GPipe's at m on every rank.

Nothing here needs MPI.  The order (:class:`Schedule` ``.ranks``) and the times (:func:`timed`) come from one place:
:func:`timed` runs each rank's list in order, each action starting once its rank is free and its dependencies are
done, so a list that cannot run (a missing action, a deadlock) is an error, never a wrong picture.  With every F and
B one time unit long, a step is one column of :func:`grid`, and the measured bubble (idle / all rank-steps) equals
``(p - 1) / (m + p - 1)`` exactly, for both schedules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

__all__ = [
    "Action", "Timed", "Schedule", "Message", "SCHEDULES", "gpipe", "one_f_one_b", "schedule", "timed",
    "check_schedule", "warmup", "stash_peak", "leading_forwards", "bubble_fraction", "measured_bubble", "grid",
    "messages",
]  # fmt: skip

SCHEDULES = ("gpipe", "1f1b")
KINDS = ("F", "B")

Durations = Union[float, Sequence[float]]


@dataclass(frozen=True)
class Action:
    """One thing a rank does: ``kind`` "F" (the forward pass of micro-batch ``micro`` on ``rank``'s stage) or "B"
    (its backward pass)."""

    rank: int
    kind: str
    micro: int

    def __str__(self) -> str:
        return f"{self.kind}{self.micro}"


@dataclass(frozen=True)
class Timed:
    """An :class:`Action` with the time it runs: from ``start`` to ``end`` (time units, or seconds)."""

    rank: int
    kind: str
    micro: int
    start: float
    end: float

    @property
    def action(self) -> Action:
        return Action(self.rank, self.kind, self.micro)

    def __str__(self) -> str:
        return f"{self.kind}{self.micro}"


class Message(NamedTuple):
    """A point-to-point message: "F" sends micro-batch ``micro``'s activation from ``src`` to ``dst`` = src + 1,
    "B" sends the gradient of that activation back from ``src`` to ``dst`` = src - 1."""

    src: int
    dst: int
    kind: str
    micro: int


@dataclass(frozen=True)
class Schedule:
    """A schedule of ``p`` ranks and ``m`` micro-batches: ``ranks[r]`` is the order rank r runs its actions in,
    ``timing[r]`` the same actions with their unit-time steps (:func:`timed`)."""

    name: str
    p: int
    m: int
    ranks: tuple[tuple[Action, ...], ...]
    timing: tuple[tuple[Timed, ...], ...]

    def table(self) -> list[tuple[int, int, str, int]]:
        """Every action as (rank, step, kind, micro), by step then rank."""
        rows = [(t.rank, int(t.start), t.kind, t.micro) for lane in self.timing for t in lane]
        return sorted(rows, key=lambda row: (row[1], row[0]))

    @property
    def steps(self) -> int:
        """The steps the whole schedule takes: 2 (m + p - 1) for GPipe and 1F1B."""
        return int(max(t.end for lane in self.timing for t in lane))


# ---- Arguments ----------------------------------------------------------------------------------------------


def _count(what: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{what} must be a whole number of at least 1, got {v!r} ({type(v).__name__})")
    if int(v) < 1:
        raise ValueError(f"{what} must be at least 1, got {int(v)}")
    return int(v)


def _durations(what: str, v: Durations, p: int) -> list[float]:
    if isinstance(v, bool):
        raise ValueError(f"{what} must be seconds (a number, or one per rank), got {v!r}")
    try:
        values: list[object] = [v] * p if isinstance(v, numbers.Real) else list(v)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be seconds (a number, or one per rank), got {v!r}") from None
    if len(values) != p:
        raise ValueError(f"{what} gives {len(values)} durations for {p} ranks")
    out = []
    for r, d in enumerate(values):
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not math.isfinite(d) or d <= 0:
            raise ValueError(f"{what} of rank {r} must be a finite number of seconds above 0, got {d!r}")
        out.append(float(d))
    return out


# ---- The two schedules ---------------------------------------------------------------------------------------


def _build(name: str, ranks: list[list[Action]], p: int, m: int) -> Schedule:
    frozen = tuple(tuple(lane) for lane in ranks)
    timing = tuple(tuple(lane) for lane in timed(frozen))
    return Schedule(name, p, m, frozen, timing)


def gpipe(p: int, m: int) -> Schedule:
    """GPipe: each rank runs F0..F(m-1), then B0..B(m-1) (micro-batch order; see the module's docstring)."""
    p, m = _count("p (the number of stages)", p), _count("m (the number of micro-batches)", m)
    ranks = [[Action(r, "F", i) for i in range(m)] + [Action(r, "B", i) for i in range(m)] for r in range(p)]
    return _build("gpipe", ranks, p, m)


def warmup(p: int, r: int, m: int) -> int:
    """1F1B's warm-up on rank r: min(m, p - r - 1) forwards before the steady state."""
    return min(m, p - r - 1)


def one_f_one_b(p: int, m: int) -> Schedule:
    """1F1B (PipeDream-flush): rank r runs w = min(m, p - r - 1) warm-up forwards, then m - w pairs (one forward,
    one backward), then the last w backwards; forwards and backwards each in micro-batch order."""
    p, m = _count("p (the number of stages)", p), _count("m (the number of micro-batches)", m)
    ranks = []
    for r in range(p):
        w = warmup(p, r, m)
        lane = [Action(r, "F", i) for i in range(w)]
        for j in range(m - w):
            lane += [Action(r, "F", w + j), Action(r, "B", j)]
        lane += [Action(r, "B", i) for i in range(m - w, m)]
        ranks.append(lane)
    return _build("1f1b", ranks, p, m)


def schedule(name: str, p: int, m: int) -> Schedule:
    """The schedule called ``name`` ("gpipe" or "1f1b") of p stages and m micro-batches."""
    if name == "gpipe":
        return gpipe(p, m)
    if name == "1f1b":
        return one_f_one_b(p, m)
    raise ValueError(f"unknown pipeline schedule {name!r}: the schedules are {', '.join(SCHEDULES)}")


# ---- When each action runs -----------------------------------------------------------------------------------


def _micro_batches(ranks: Sequence[Sequence[Action]], m: int | None = None) -> int:
    """Check that every rank runs F i and B i exactly once for each micro-batch i < m (m: one more than the
    largest micro-batch seen, unless given); return m."""
    if not ranks:
        raise ValueError("a schedule needs at least one rank")
    for r, lane in enumerate(ranks):
        for a in lane:
            if not isinstance(a, (Action, Timed)):
                raise ValueError(f"rank {r}'s list holds {a!r}, not an Action")
            if a.rank != r:
                raise ValueError(f"rank {r}'s list holds {a.kind}{a.micro} of rank {a.rank}")
            if a.kind not in KINDS:
                raise ValueError(f"rank {r} runs an action of kind {a.kind!r}: the kinds are F and B")
            if isinstance(a.micro, bool) or not isinstance(a.micro, int) or a.micro < 0:
                raise ValueError(f"rank {r} runs {a.kind} of micro-batch {a.micro!r}: micro-batches are 0, 1, ...")
    seen = max((a.micro for lane in ranks for a in lane), default=-1) + 1
    if m is None:
        m = seen
    if m < 1:
        raise ValueError("a schedule needs at least one micro-batch")
    for r, lane in enumerate(ranks):
        counts: dict[tuple[str, int], int] = {}
        for a in lane:
            if a.micro >= m:
                raise ValueError(f"rank {r} runs {a.kind}{a.micro}, but there are only {m} micro-batches")
            counts[(a.kind, a.micro)] = counts.get((a.kind, a.micro), 0) + 1
        for kind in KINDS:
            for i in range(m):
                n = counts.get((kind, i), 0)
                if n == 0:
                    raise ValueError(f"rank {r} never runs {kind}{i} (missing action)")
                if n > 1:
                    raise ValueError(f"rank {r} runs {kind}{i} {n} times (doubled action)")
    return m


def _dependencies(a: Action | Timed, p: int) -> list[tuple[int, str, int]]:
    """What ``a`` waits for, as (rank, kind, micro): F i on r needs F i on r - 1; B i on r needs F i on r (its
    own activations) and B i on r + 1 (the gradient it sends back)."""
    if a.kind == "F":
        return [(a.rank - 1, "F", a.micro)] if a.rank > 0 else []
    deps = [(a.rank, "F", a.micro)]
    if a.rank < p - 1:
        deps.append((a.rank + 1, "B", a.micro))
    return deps


def timed(
    ranks: Sequence[Sequence[Action]], forward: Durations = 1.0, backward: Durations = 1.0, message: float = 0.0
) -> list[list[Timed]]:
    """When each action of ``ranks`` (rank r's actions in the order it runs them) runs: every rank runs one action at
    a time, in its list's order, each starting as soon as the rank is free and the actions it depends on are done.

    ``forward`` and ``backward`` are each action's duration: one number for every rank, or one per rank (stages
    of unequal cost); 1.0 (the default) makes the times whole steps.  ``message``: the time an activation or a
    gradient takes from the rank that computed it to the next (0 by default: the unit grid).  Raises ValueError
    naming a missing or doubled action, or, where no rank can go on (a deadlock), what each rank waits for."""
    _micro_batches(ranks)
    p = len(ranks)
    t_f, t_b = _durations("forward", forward, p), _durations("backward", backward, p)
    if isinstance(message, bool) or not isinstance(message, numbers.Real) or not 0 <= message < math.inf:
        raise ValueError(f"message must be a finite number of seconds >= 0, got {message!r}")
    end: dict[tuple[int, str, int], float] = {}
    free = [0.0] * p
    pos = [0] * p
    out: list[list[Timed]] = [[] for _ in range(p)]
    while any(pos[r] < len(ranks[r]) for r in range(p)):
        moved = False
        for r in range(p):
            while pos[r] < len(ranks[r]):
                a = ranks[r][pos[r]]
                deps = _dependencies(a, p)
                if any(d not in end for d in deps):
                    break
                start = max([free[r]] + [end[d] + (message if d[0] != r else 0.0) for d in deps])
                stop = start + (t_f[r] if a.kind == "F" else t_b[r])
                end[(r, a.kind, a.micro)] = stop
                free[r] = stop
                out[r].append(Timed(r, a.kind, a.micro, start, stop))
                pos[r] += 1
                moved = True
        if not moved:
            waits = []
            for r in range(p):
                if pos[r] < len(ranks[r]):
                    a = ranks[r][pos[r]]
                    missing = [f"{k}{i} on rank {q}" for q, k, i in _dependencies(a, p) if (q, k, i) not in end]
                    waits.append(f"rank {r}'s {a.kind}{a.micro} waits for {' and '.join(missing)}")
            raise ValueError(f"the schedule deadlocks (a dependency that cannot be met): {'; '.join(waits)}")
    return out


# ---- Checking a schedule -------------------------------------------------------------------------------------


def leading_forwards(ranks: Sequence[Sequence[Action]]) -> list[int]:
    """Each rank's forwards before its first backward.  For 1F1B that is min(m, p - r): the min(m, p - r - 1)
    warm-up forwards and, when m > p - r - 1, the forward that opens the steady state (with m <= p - r - 1 the two
    cannot be told apart: every forward is warm-up and the list is GPipe's)."""
    out = []
    for lane in ranks:
        n = 0
        for a in lane:
            if a.kind != "F":
                break
            n += 1
        out.append(n)
    return out


def check_schedule(ranks: Sequence[Sequence[Action]], p: int, m: int, name: str) -> list[list[Timed]]:
    """Check that ``ranks`` is the schedule ``name`` of p stages and m micro-batches: every rank runs each F and B
    exactly once, the dependencies can all be met (no deadlock), forwards and backwards each run in micro-batch
    order (the order one process accumulates the gradients in), and the order is GPipe's (all F, then all B) or
    1F1B's (warm-up of min(m, p - r - 1) forwards, then F/B alternating, then the cool-down).  Returns the unit-time
    timing; raises ValueError saying what is wrong."""
    p, m = _count("p (the number of stages)", p), _count("m (the number of micro-batches)", m)
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r}: the schedules are {', '.join(SCHEDULES)}")
    if len(ranks) != p:
        raise ValueError(f"the schedule has {len(ranks)} ranks, not p = {p}")
    _micro_batches(ranks, m)
    timing = timed(ranks)
    for r, lane in enumerate(ranks):
        for kind in KINDS:
            order = [a.micro for a in lane if a.kind == kind]
            if order != list(range(m)):
                raise ValueError(f"rank {r} runs its {kind}s in the order {order}, not micro-batch order 0..{m - 1}")
    lead = leading_forwards(ranks)
    for r, lane in enumerate(ranks):
        kinds = "".join(a.kind for a in lane)
        if name == "gpipe":
            if kinds != "F" * m + "B" * m:
                raise ValueError(f"GPipe's rank {r} runs {kinds}: GPipe runs all {m} forwards, then all backwards")
            continue
        w = warmup(p, r, m)
        if lead[r] != min(m, p - r):
            got = lead[r] - 1 if lead[r] > w else lead[r]
            raise ValueError(
                f"1F1B's rank {r} runs {lead[r]} forwards before its first backward, a warm-up of {got}: 1F1B's "
                f"warm-up on rank {r} is min(m, p - r - 1) = {w} forwards, then one forward and one backward in turn"
            )
        if kinds != "F" * w + "FB" * (m - w) + "B" * w:
            raise ValueError(f"1F1B's rank {r} runs {kinds}: after {w} warm-up forwards it must alternate F and B")
    return timing


# ---- What a schedule costs -----------------------------------------------------------------------------------


def stash_peak(ranks: Sequence[Sequence[Action]]) -> list[int]:
    """For each rank, the most micro-batches whose forward has run and whose backward has not (the activations it
    must keep at once): m on every rank for GPipe, min(m, p - r) for 1F1B."""
    peaks = []
    for lane in ranks:
        held = peak = 0
        for a in lane:
            held += 1 if a.kind == "F" else -1
            peak = max(peak, held)
        peaks.append(peak)
    return peaks


def bubble_fraction(p: int, m: int) -> float:
    """The pipeline bubble's share of a step with equal forward and backward times: (p - 1) / (m + p - 1)."""
    p, m = _count("p (the number of stages)", p), _count("m (the number of micro-batches)", m)
    return (p - 1) / (m + p - 1)


def measured_bubble(timing: Sequence[Sequence[Timed]]) -> float:
    """The idle share of a timed schedule: (idle rank-time) / (p x the step's length), the step running from 0 to
    the last action's end.  For unit times: whole numbers divided once, so it equals the formula exactly."""
    if not timing or not any(timing):
        raise ValueError("a timed schedule needs at least one action")
    length = max(t.end for lane in timing for t in lane)
    busy = sum(t.end - t.start for lane in timing for t in lane)
    total = len(timing) * length
    return (total - busy) / total


def grid(timing: Sequence[Sequence[Timed]] | Schedule) -> str:
    """The step-by-rank grid of a timed schedule: one line per rank, one column per time step, ``F3`` or ``B3``
    where the rank runs micro-batch 3's forward or backward, ``.`` where it is idle.  Times must be whole steps (an
    action of 2 steps fills 2 columns)."""
    lanes = timing.timing if isinstance(timing, Schedule) else timing
    cells: list[list[str]] = []
    length = 0
    for lane in lanes:
        for t in lane:
            if t.start != int(t.start) or t.end != int(t.end):
                raise ValueError(f"the grid needs whole time steps; rank {t.rank}'s {t} runs {t.start}..{t.end}")
            length = max(length, int(t.end))
    for lane in lanes:
        row = ["."] * length
        for t in lane:
            for step in range(int(t.start), int(t.end)):
                row[step] = str(t)
        cells.append(row)
    width = max((len(c) for row in cells for c in row), default=1)
    label = len(f"rank {len(cells) - 1}")
    return "\n".join(
        f"{f'rank {r}':<{label}} | " + " ".join(c.ljust(width) for c in row).rstrip() for r, row in enumerate(cells)
    )


def messages(p: int, m: int, name: str = "1f1b") -> list[Message]:
    """The point-to-point messages one step of schedule ``name`` sends, in the order they are sent (when the action
    that sends them ends; ties by rank): F i on rank r < p - 1 sends its activation to r + 1, B i on rank r > 0 sends
    its input's gradient to r - 1.  2 m (p - 1) in all, for either schedule."""
    sched = schedule(name, p, m)
    sent = []
    for lane in sched.timing:
        for t in lane:
            if t.kind == "F" and t.rank < p - 1:
                sent.append((t.end, t.rank, Message(t.rank, t.rank + 1, "F", t.micro)))
            elif t.kind == "B" and t.rank > 0:
                sent.append((t.end, t.rank, Message(t.rank, t.rank - 1, "B", t.micro)))
    return [msg for _, _, msg in sorted(sent, key=lambda s: (s[0], s[1]))]
