"""The event loop of the step simulator: one rank's two lanes, compute and communication, advanced
from one completion to the next.

The compute lane runs a *program*, a list of operations in order:

* :class:`Compute` -- a kernel of ``work_s`` bare seconds (a layer's forward, dW, dX, an update);
* :class:`Post` -- hand collectives to the communication lane (instant: a non-blocking MPI call);
* :class:`Wait` -- stay idle until the given collectives have completed (recorded as a wait event);
* :class:`Mark` -- note the time the program got there (the backward pass's start, its end).

The communication lane runs the posted collectives one at a time, first posted first (FIFO: as one
MPICH progress engine moves them).  A collective starts only once every rank has posted it: with a
``lag_fraction`` f, the slowest other rank posts it f x (the compute this rank did since the ranks last
met, in a completed wait) later, and the lane waits for that.  Each lane advances at a *rate*: 1 when
it runs alone; with both busy, compute at ``1 / compute_slowdown`` and the collective at
``1 / comm_slowdown``.  The loop finds the next completion at the current rates, advances both lanes'
remaining work to it, and looks again -- so an overlap is simulated, never assumed.  Zero-length
kernels leave no event.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["Event", "Compute", "Post", "Wait", "Mark", "Collective", "run_program", "LANES"]

LANES = ("compute", "comm")
_EPS = 1e-15  # seconds of work left that count as none (rounding in work - dt * rate)


@dataclass(frozen=True)
class Event:
    """One interval of a rank's timeline: ``name``, the ``lane`` it ran on ("compute" or "comm"),
    ``start`` and ``end`` in seconds from the step's start, ``kind`` (forward, backward_dw,
    backward_dx, loss, update, exposed, prefetch_wait, allgather_wait, allreduce, reduce_scatter,
    allgather ...), the ``rank``, and ``args`` (bare seconds, bytes, bucket ...).  A measured timeline
    is a list of the same events."""

    name: str
    lane: str
    start: float
    end: float
    kind: str
    rank: int = 0
    args: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Collective:
    """A collective call: what it moves, its bare time, and (filled in by the run) when it was
    posted, when the communication lane took it up, and when it completed."""

    name: str
    kind: str
    nbytes: int
    work_s: float
    phase: str  # "backward" (the gradients' collectives) or "gather" (ZeRO's allgather of the parameters)
    bucket: int = -1  # -1: not a gradient bucket (the failure count)
    ready: float = math.nan  # when the last rank has posted it (posted + the other ranks' lag)
    posted: float = math.nan
    start: float = math.nan
    end: float = math.nan

    @property
    def done(self) -> bool:
        return not math.isnan(self.end)


@dataclass
class Compute:
    name: str
    kind: str
    work_s: float
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Post:
    collectives: list[Collective]


@dataclass
class Wait:
    on: list[Collective]
    name: str
    kind: str


@dataclass
class Mark:
    name: str
    at: float = math.nan  # filled in by the run


Op = Union[Compute, Post, Wait, Mark]


def run_program(
    program: list[Op], compute_slowdown: float, comm_slowdown: float, rank: int = 0, lag_fraction: float = 0.0
) -> tuple[list[Event], float]:
    """Run ``program`` on the compute lane beside the communication lane.  Returns the events (in the
    order they ended) and the time the program ended (the step).  Fills in each collective's
    posted/ready/start/end.  A wait on a collective never posted, or one left in flight at the end, raises."""
    t = 0.0
    since_met = 0.0  # bare compute seconds since the ranks last met (a completed wait on collectives)
    pc = 0
    events: list[Event] = []
    queue: deque[Collective] = deque()
    kernel: Compute | None = None  # the compute lane's running kernel
    k_left = k_start = 0.0
    comm: Collective | None = None  # the communication lane's running collective
    c_left = 0.0
    wait_start: float | None = None

    def end_collective(c: Collective) -> None:
        c.end = t
        args = {"bytes": c.nbytes, "bare_s": c.work_s, "posted_s": c.posted, "phase": c.phase, "bucket": c.bucket}
        events.append(Event(c.name, "comm", c.start, t, c.kind, rank, args))

    while True:
        # The compute lane: instant operations until a kernel runs or a wait blocks.
        while kernel is None and pc < len(program):
            op = program[pc]
            if isinstance(op, Post):
                for c in op.collectives:
                    c.posted, c.ready = t, t + lag_fraction * since_met
                    queue.append(c)
            elif isinstance(op, Wait):
                if not all(c.done for c in op.on):
                    if wait_start is None:
                        wait_start = t
                    break
                if wait_start is not None and t > wait_start:
                    events.append(
                        Event(op.name, "compute", wait_start, t, op.kind, rank, {"on": [c.name for c in op.on]})
                    )
                wait_start = None
                if op.on:
                    since_met = 0.0  # every rank has taken part in these: they met
            elif isinstance(op, Mark):
                op.at = t
            elif op.work_s > 0:
                kernel, k_left, k_start = op, op.work_s, t
            pc += 1
        # The communication lane: the next collective posted, if idle and every rank has posted it.
        if comm is None and queue and queue[0].ready <= t:
            comm = queue.popleft()
            comm.start, c_left = t, comm.work_s
            if c_left <= 0.0:
                end_collective(comm)
                comm = None
                continue
        lag_dt = queue[0].ready - t if comm is None and queue else math.inf  # the other ranks yet to post
        if kernel is None and comm is None and math.isinf(lag_dt):
            if pc >= len(program):
                break
            raise RuntimeError(f"the program waits at {program[pc]!r} for a collective that was never posted")
        # Both lanes at their current rates; advance to the first completion (or the last rank's post).
        k_rate = 1.0 / compute_slowdown if comm is not None else 1.0
        c_rate = 1.0 / comm_slowdown if kernel is not None else 1.0
        k_dt = k_left / k_rate if kernel is not None else math.inf
        c_dt = c_left / c_rate if comm is not None else math.inf
        dt = min(k_dt, c_dt, lag_dt)
        t += dt
        if kernel is not None:
            k_left = 0.0 if k_dt == dt else k_left - dt * k_rate
            if k_left <= _EPS:
                since_met += kernel.work_s
                args = {"bare_s": kernel.work_s, **kernel.args}
                events.append(Event(kernel.name, "compute", k_start, t, kernel.kind, rank, args))
                kernel = None
        if comm is not None:
            c_left = 0.0 if c_dt == dt else c_left - dt * c_rate
            if c_left <= _EPS:
                end_collective(comm)
                comm = None
    if queue:
        raise RuntimeError(f"the step ended with collectives never completed: {[c.name for c in queue]}")
    return events, t
