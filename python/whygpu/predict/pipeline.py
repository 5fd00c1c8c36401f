"""A pipeline schedule (GPipe, 1F1B: :mod:`whygpu.distributed.schedules`) as the step simulator's events, so that
the simulator and the Chrome trace writer (:func:`whygpu.predict.write_chrome_trace`) take the same list of actions
that prints as the step-by-rank grid.

It lives here, not beside the schedules, because ``whygpu.bench`` imports ``whygpu.distributed`` and this package
imports ``whygpu.bench``: ``whygpu.distributed`` importing :class:`~whygpu.predict.Event` would close a circle.
The schedules are imported late, inside :func:`to_events`, so ``import whygpu.predict`` stays free of MPI (importing
``whygpu.distributed`` imports mpi4py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._engine import Event

if TYPE_CHECKING:
    from ..distributed.schedules import Durations, Schedule

__all__ = ["to_events"]

_EVENT_KINDS = {"F": "forward", "B": "backward"}


def to_events(sched: Schedule, forward_s: Durations, backward_s: Durations) -> dict[int, list[Event]]:
    """The schedule as events, rank -> its compute lane (kind "forward" or "backward", named ``F3``, ``B3``, with
    the micro-batch and the schedule's name in ``args``).  ``forward_s`` and ``backward_s`` are each stage's
    seconds: one number for every rank or one per rank.  The times are :func:`~whygpu.distributed.schedules.timed`'s:
    each action starts once its rank is free and what it depends on is done, so unequal stages give the step the
    slowest stage imposes, not the unit grid scaled."""
    from ..distributed.schedules import timed

    return {
        r: [
            Event(
                str(t), "compute", t.start, t.end, _EVENT_KINDS[t.kind], r, {"micro": t.micro, "schedule": sched.name}
            )
            for t in lane
        ]
        for r, lane in enumerate(timed(sched.ranks, forward_s, backward_s))
    }
