"""A pipeline schedule (GPipe, 1F1B: :mod:`whygpu.schedules`) as the step simulator's events, so that
the simulator and the Chrome trace writer (:func:`whygpu.predict.write_chrome_trace`) take the same list of actions
that prints as the step-by-rank grid.

It lives here, not beside the schedules (:mod:`whygpu.schedules`, pure, below every floor), because the
schedules must not import :class:`~whygpu.predict.Event`: ``whygpu.distributed`` runs them, and this package
imports ``whygpu.bench``, which imports ``whygpu.distributed``.
"""

from __future__ import annotations

from typing import NamedTuple

from ..schedules import Durations, Schedule, timed
from ._engine import Event

__all__ = ["to_events", "PipelineStep", "simulate_pipeline"]

_EVENT_KINDS = {"F": "forward", "B": "backward"}


class PipelineStep(NamedTuple):
    """A simulated pipeline step: its length, the idle share of the ranks' time, and each rank's events."""

    step_s: float
    bubble: float
    events: dict[int, list[Event]]


def simulate_pipeline(
    sched: Schedule, forward_s: Durations, backward_s: Durations, message_s: float = 0.0
) -> PipelineStep:
    """One step of ``sched`` simulated from its terms: each stage's forward and backward seconds per micro-batch
    (one number, or one per stage) and the time a message takes between neighbours.  Each action starts once
    its rank is free and what it waits for has arrived (:func:`~whygpu.schedules.timed`); the step
    ends with the last action, and the bubble is 1 - (busy time) / (p x the step)."""
    events = to_events(sched, forward_s, backward_s, message_s)
    step = max(e.end for lane in events.values() for e in lane)
    busy = sum(e.end - e.start for lane in events.values() for e in lane)
    return PipelineStep(step, 1.0 - busy / (len(events) * step), events)


def to_events(
    sched: Schedule, forward_s: Durations, backward_s: Durations, message_s: float = 0.0
) -> dict[int, list[Event]]:
    """The schedule as events, rank -> its compute lane (kind "forward" or "backward", named ``F3``, ``B3``, with
    the micro-batch and the schedule's name in ``args``).  ``forward_s`` and ``backward_s`` are each stage's
    seconds: one number for every rank or one per rank.  The times are :func:`~whygpu.schedules.timed`'s:
    each action starts once its rank is free and what it depends on is done, so unequal stages give the step the
    slowest stage imposes, not the unit grid scaled; ``message_s`` delays each action that waits for another
    rank's by the message's time."""
    return {
        r: [
            Event(
                str(t), "compute", t.start, t.end, _EVENT_KINDS[t.kind], r, {"micro": t.micro, "schedule": sched.name}
            )
            for t in lane
        ]
        for r, lane in enumerate(timed(sched.ranks, forward_s, backward_s, message=message_s))
    }
