"""Timelines as Chrome traces: the trace-event JSON that PyTorch's profiler writes and that Perfetto
(ui.perfetto.dev) and chrome://tracing open.

:func:`chrome_trace` turns a timeline -- the simulator's (``StepResult.timeline`` or
``rank_timelines()``) or a measured one given as the same :class:`~whygpu.predict.Event` list --
into ``{"traceEvents": [...], "displayTimeUnit": "ms"}``: one complete event (``"ph": "X"``) per
interval with ``ts`` and ``dur`` in microseconds, one process (``pid``) per rank and one thread
(``tid``) per lane (:data:`TIDS`: compute, communication), named by metadata events.
:func:`validate_chrome_trace` checks a trace against the format and returns each lane's busy time,
so that a test (or a student) can see that its events add up to the step.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any, Union

from ._engine import Event

__all__ = ["TIDS", "chrome_trace", "write_chrome_trace", "validate_chrome_trace"]

TIDS = {"compute": 1, "comm": 2}  # one thread per lane
_LANE_NAMES = {"compute": "compute", "comm": "communication"}
# The trace-event format's phases (Trace Event Format, Google, the "ph" table)
_PHASES = frozenset("BEXiIbneSTpFstfPOND" + "CMRc") | {"(", ")"}
_METADATA = frozenset({"process_name", "process_labels", "process_sort_index", "thread_name", "thread_sort_index"})
_SLACK_US = 1e-3  # rounding in ts + dur (microseconds as floats)

Timeline = Union[Iterable[Event], Mapping[int, Iterable[Event]]]


def _events(timeline: Timeline) -> list[Event]:
    if isinstance(timeline, Mapping):
        return [
            Event(e.name, e.lane, e.start, e.end, e.kind, int(r), e.args) for r, evs in timeline.items() for e in evs
        ]
    return list(timeline)


def chrome_trace(timeline: Timeline, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trace of ``timeline``: an iterable of Events (each on its own ``rank``), or a mapping
    rank -> events.  ``metadata`` (the inputs' sources, the configuration, "simulated" or
    "measured") goes into the trace's ``otherData``."""
    events = _events(timeline)
    out: list[dict[str, Any]] = []
    for rank in sorted({e.rank for e in events}):
        out.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        for lane, tid in TIDS.items():
            out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": _LANE_NAMES[lane]}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": rank, "tid": tid, "args": {"sort_index": tid}})
    for e in events:
        if not isinstance(e, Event):
            raise ValueError(f"a timeline holds whygpu.predict.Event objects, got {type(e).__name__}")
        if e.lane not in TIDS:
            raise ValueError(f"event {e.name!r} is on lane {e.lane!r}: the lanes are {sorted(TIDS)}")
        if not (math.isfinite(e.start) and math.isfinite(e.end)) or e.end < e.start:
            raise ValueError(f"event {e.name!r} runs from {e.start} to {e.end}: not a finite interval")
        out.append(
            {
                "name": e.name,
                "ph": "X",
                "ts": e.start * 1e6,
                "dur": (e.end - e.start) * 1e6,
                "pid": e.rank,
                "tid": TIDS[e.lane],
                "cat": e.kind,
                "args": dict(e.args),
            }
        )
    trace: dict[str, Any] = {"traceEvents": out, "displayTimeUnit": "ms"}
    if metadata:
        trace["otherData"] = dict(metadata)
    return trace


def write_chrome_trace(path: str | pathlib.Path, timeline: Timeline, *, metadata: Mapping[str, Any] | None = None):
    """Write :func:`chrome_trace` of ``timeline`` to ``path`` (strict JSON: NaN or infinity in an
    event's args raises ValueError).  Returns the trace written."""
    trace = chrome_trace(timeline, metadata=metadata)
    text = json.dumps(trace, allow_nan=False, indent=None, separators=(",", ":"))
    pathlib.Path(path).write_text(text, encoding="utf-8")
    return trace


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _check_event(i: int, ev: Any) -> None:
    where = f"traceEvents[{i}]"
    if not isinstance(ev, dict):
        raise ValueError(f"{where} must be an object, got {type(ev).__name__}")
    ph = ev.get("ph")
    if not isinstance(ph, str) or ph not in _PHASES:
        raise ValueError(f"{where}: 'ph' must be one of the format's phases, got {ph!r}")
    if not isinstance(ev.get("name", ""), str):
        raise ValueError(f"{where}: 'name' must be a string")
    if "cat" in ev and not isinstance(ev["cat"], str):
        raise ValueError(f"{where}: 'cat' must be a string")
    if "args" in ev and not isinstance(ev["args"], dict):
        raise ValueError(f"{where}: 'args' must be an object")
    for key in ("pid", "tid"):
        if key in ev and (isinstance(ev[key], bool) or not isinstance(ev[key], (int, str))):
            raise ValueError(f"{where}: '{key}' must be an integer (or a string), got {ev[key]!r}")
    if ph == "M":
        if ev.get("name") not in _METADATA or not isinstance(ev.get("args"), dict):
            raise ValueError(f"{where}: a metadata event needs a name in {sorted(_METADATA)} and args")
        return
    if "ts" not in ev or not _number(ev["ts"]):
        raise ValueError(f"{where}: 'ts' (microseconds) must be a finite number, got {ev.get('ts')!r}")
    if ph == "X":
        for key in ("name", "pid", "tid", "dur"):
            if key not in ev:
                raise ValueError(f"{where}: a complete event ('ph': 'X') needs '{key}'")
        if not _number(ev["dur"]) or ev["dur"] < 0:
            raise ValueError(f"{where}: 'dur' must be a finite number >= 0, got {ev['dur']!r}")


def validate_chrome_trace(trace: dict | list | str | pathlib.Path) -> dict[tuple[Any, Any], float]:
    """Check ``trace`` (the dict, a JSON array of events, or a path to the JSON) against the
    trace-event format: ``traceEvents`` a list of objects, each with a known ``ph``; complete events
    (``X``) with a string ``name``, integer ``pid`` and ``tid``, finite ``ts`` and ``dur >= 0``;
    metadata events (``M``) with their args; ``displayTimeUnit`` "ms" or "ns"; and complete events on
    one thread nested or apart, never half-overlapping (the viewers draw them as a stack).

    Returns each lane's busy time in seconds, ``{(pid, tid): seconds}``: the union of its complete
    events.  Raises ValueError naming the first problem."""
    if isinstance(trace, (str, pathlib.Path)):
        trace = json.loads(pathlib.Path(trace).read_text(encoding="utf-8"))
    if isinstance(trace, list):
        events = trace
    elif isinstance(trace, dict):
        found = trace.get("traceEvents")
        if not isinstance(found, list):
            raise ValueError("a trace object needs 'traceEvents', a list of events")
        events = found
        unit = trace.get("displayTimeUnit", "ms")
        if unit not in ("ms", "ns"):
            raise ValueError(f"'displayTimeUnit' must be 'ms' or 'ns', got {unit!r}")
    else:
        raise ValueError(f"a trace is an object with 'traceEvents' or a list of events, got {type(trace).__name__}")
    lanes: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for i, ev in enumerate(events):
        _check_event(i, ev)
        if ev["ph"] == "X":
            lanes.setdefault((ev["pid"], ev["tid"]), []).append((float(ev["ts"]), float(ev["ts"]) + float(ev["dur"])))
    busy = {}
    for lane, spans in sorted(lanes.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends: list[float] = []
        union, reach = 0.0, -math.inf
        for s, e in spans:
            while open_ends and open_ends[-1] <= s + _SLACK_US:
                open_ends.pop()
            if open_ends and e > open_ends[-1] + _SLACK_US:
                raise ValueError(
                    f"pid {lane[0]} tid {lane[1]}: the event at ts {s} us half-overlaps one ending at "
                    f"{open_ends[-1]} us (events on one thread must nest or be apart)"
                )
            open_ends.append(e)
            if e > reach:
                union += e - max(s, reach)
                reach = e
        busy[lane] = union * 1e-6
    return busy
