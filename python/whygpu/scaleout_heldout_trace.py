"""Chrome traces of the held-out runs (:mod:`whygpu.scaleout_heldout`): each run's simulated timeline
(the simulator's events, every rank alike) and its measured one, from the events every rank recorded.

The measured trace is one timed step (rank 0's median step, the same step on every rank) as the
scale-out worker recorded it with ``--events`` (:class:`whygpu.bench.scaleout_worker._Events`, which
says what each event spans): ``pid`` the rank, ``tid`` the lane.  On the compute lane each event is
an interval of the rank's own clock around the code it names -- each layer's forward kernel, the
loss, ``zero_grad``, the loss's gradient, each layer's dW and dX, the posting of the buckets, the
exposed wait, the update, the allgathers' posting and wait, prefetch's wait before each layer --
and what no event covers (the layer loop, Python between the calls) stays a gap: nothing fills it,
so the lane's busy time (the union of its events) can fall short of the step, and
:func:`write_traces` reports by how much on each rank.  On the communication lane, each bucket's
collective from its posting to its completion; the lane draws one at a time, as the simulator's
does (one MPI progress engine moves them, first posted first), so a collective posted while an
earlier one is still in flight is drawn from that one's completion (the time it was posted, and a
prefetched allgather's posting in the previous step, are in its ``args``).

A run recorded without ``--events`` (an older JSON) gets the *approximate* timeline this module drew
before: rank 0's median step laid out from the worker's per-step clocks and ``DataParallel.last_step``
(forward, backward, exposed wait, update, allgather), with the rest of the step as one "other" event so
that it adds up by construction; its metadata says "approximate".
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .predict import Event, StepResult, validate_chrome_trace, write_chrome_trace

__all__ = ["measured_events", "write_traces", "busy_s", "TOLERANCE"]

TOLERANCE = 0.05  # each rank's compute lane (the union of its events) within 5% of its measured step
RECORDED = (
    "recorded: one timed step (rank 0's median step, the same step on every rank) as each rank recorded it "
    "(scale-out worker --events): compute-lane events around the code they name, gaps left where no event "
    "ran; on the communication lane each bucket's collective from its posting to its completion, drawn one "
    "at a time (a collective posted while an earlier one is in flight starts at that one's completion; "
    "args.posted_s says when it was posted)"
)
APPROXIMATE = (
    "approximate: one step of rank 0 (the median step) laid out from the worker's clocks and DataParallel.last_step; "
    "prefetch's waits drawn as one after the forward pass, the time between the phases (zero_grad, the loss's "
    "gradient) as one 'other' event at the end, the buckets' collectives as one interval from the first start to "
    "the last completion"
)


def _f(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else 0.0


def _median_step(raw: dict) -> dict:
    steps = raw["steps"]
    return steps[int(np.argsort([x["step_s"] for x in steps])[len(steps) // 2])]


def _recorded(raw: dict, rank: int) -> dict | None:
    """Rank ``rank``'s recorded step (``{"rank", "step_s", "events"}``), or None where none was recorded."""
    rec = raw.get("events")
    if not isinstance(rec, dict):
        return None
    return next((r for r in rec.get("ranks") or [] if int(r["rank"]) == rank), None)


def measured_events(raw: dict, shard: str, prefetch: bool, rank: int = 0) -> list[Event]:
    """Rank ``rank``'s measured timeline of one step: its recorded events (see the module docstring), or,
    where the run recorded none, the approximate timeline of rank 0 (none for another rank)."""
    mine = _recorded(raw, rank)
    if mine is None:
        return _approximate_events(raw, shard, prefetch) if rank == 0 and raw.get("events") is None else []
    compute = [
        Event(e["name"], "compute", float(e["start_s"]), float(e["end_s"]), e["kind"], rank, dict(e.get("args") or {}))
        for e in mine["events"]
        if e["lane"] == "compute"
    ]
    comm = _one_at_a_time([e for e in mine["events"] if e["lane"] == "comm"], rank)
    return sorted(compute, key=lambda e: (e.start, -e.end)) + comm


def _one_at_a_time(events: list[dict], rank: int) -> list[Event]:
    """The collectives on one lane, first posted first: each drawn from its posting or the previous one's
    completion, whichever is later (and from the step's start at the earliest), to its completion."""
    out: list[Event] = []
    reach = 0.0
    for e in sorted(events, key=lambda e: (float(e["start_s"]), float(e["end_s"]))):
        posted, done = float(e["start_s"]), float(e["end_s"])
        start = max(posted, reach)
        end = max(done, start)
        args = {**(e.get("args") or {}), "posted_s": posted, "done_s": done}
        out.append(Event(e["name"], "comm", start, end, e["kind"], rank, args))
        reach = end
    return out


def _approximate_events(raw: dict, shard: str, prefetch: bool) -> list[Event]:
    """The approximate measured timeline of rank 0's median step, from the per-step clocks alone (a run
    recorded without ``--events``; see the module docstring)."""
    s = _median_step(raw)
    ev: list[Event] = []
    t = 0.0

    def compute(name: str, dur: float, kind: str) -> None:
        nonlocal t
        if dur > 0:
            ev.append(Event(name, "compute", t, t + dur, kind))
            t += dur

    wait = _f(s.get("allgather_wait_s")) if prefetch else 0.0
    compute("forward (and loss)", max(0.0, _f(s["forward_s"]) - wait), "forward")
    if prefetch and wait > 0:
        ev.append(Event("allgather (previous step's, waited for)", "comm", t, t + wait, "allgather"))
        compute("prefetch wait", wait, "prefetch_wait")
    b0 = t
    compute("backward", _f(s.get("backward_s")), "backward_dx")
    first, last = _f(s.get("first_start_s")), _f(s.get("last_done_s"))
    if last > first:
        kind = "allreduce" if shard == "none" else "reduce_scatter"
        ev.append(Event(f"{kind} (all buckets)", "comm", b0 + first, b0 + last, kind, 0, {"buckets": s.get("buckets")}))
    compute("exposed wait", _f(s.get("exposed_s")), "exposed")
    compute("update", _f(s.get("update_s")), "update")
    if shard != "none" and not prefetch:
        ag = _f(s.get("allgather_s"))
        if ag > 0:
            ev.append(Event("allgather", "comm", t, t + ag, "allgather"))
        compute("allgather wait", ag, "allgather_wait")
    compute("other (zero_grad, loss gradient, bookkeeping)", max(0.0, _f(s["step_s"]) - t), "other")
    return ev


def busy_s(events: list[Event], lane: str = "compute") -> float:
    """The union of ``lane``'s events: the time at least one of them ran."""
    union, reach = 0.0, -math.inf
    for s, e in sorted((x.start, x.end) for x in events if x.lane == lane):
        if e > reach:
            union += e - max(s, reach)
            reach = e
    return union


def write_traces(trace_dir: str | Path, row: dict, res: StepResult, raw: dict) -> dict[str, Any]:
    """Write ``<label>.simulated.json`` and ``<label>.measured.json`` into ``trace_dir`` and validate both.

    Returns their paths, ``recorded`` (False: the approximate timeline), and per rank (``ranks``) its
    measured step, its compute lane's busy time as the validated trace gives it, the time no event
    covers, ``busy_vs_step`` (busy / step - 1) and whether that is within :data:`TOLERANCE`
    (``busy_within_tolerance``: on every rank); ``measured_compute_lane_s`` and ``measured_step_s`` are
    rank 0's."""
    d = Path(trace_dir)
    d.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", row["label"]).strip("-").lower()
    meta = {"configuration": row["label"], "how": row["how"], "sources": row["prediction"]["sources"]}
    sim = d / f"{slug}.simulated.json"
    smeta = {**meta, "kind": "simulated", "predicted_at": row["prediction"]["at"]}
    write_chrome_trace(sim, res.rank_timelines(), metadata=smeta)
    validate_chrome_trace(sim)
    cfg = row["config"]
    rec = raw.get("events")
    if isinstance(rec, dict) and rec.get("ranks"):
        steps = {int(r["rank"]): float(r["step_s"]) for r in rec["ranks"]}
        timeline = {r: measured_events(raw, cfg["shard"], cfg["prefetch"], rank=r) for r in sorted(steps)}
        mmeta: dict[str, Any] = {"recorded": RECORDED, "step": rec.get("step")}
    else:
        timeline = {0: measured_events(raw, cfg["shard"], cfg["prefetch"])}
        steps = {0: float(_median_step(raw)["step_s"])}
        mmeta = {"approximate": APPROXIMATE}
    per_rank = []
    for r, events in timeline.items():
        busy = busy_s(events)
        per_rank.append({"rank": r, "step_s": steps[r], "compute_busy_s": busy, "uncovered_s": steps[r] - busy,
                         "busy_vs_step": busy / steps[r] - 1 if steps[r] > 0 else math.nan})  # fmt: skip
    mes = d / f"{slug}.measured.json"
    write_chrome_trace(mes, timeline, metadata={**meta, "kind": "measured", **mmeta, "per_rank": per_rank})
    lanes = validate_chrome_trace(mes)
    for x in per_rank:  # the busy time the trace itself gives (the same union, from the JSON)
        x["compute_busy_s"] = lanes.get((x["rank"], 1), 0.0)
        x["uncovered_s"] = x["step_s"] - x["compute_busy_s"]
        x["busy_vs_step"] = x["compute_busy_s"] / x["step_s"] - 1 if x["step_s"] > 0 else math.nan
        x["within_tolerance"] = abs(x["busy_vs_step"]) <= TOLERANCE
    return {"simulated": str(sim), "measured": str(mes), "recorded": "recorded" in mmeta, "ranks": per_rank,
            "busy_within_tolerance": all(x["within_tolerance"] for x in per_rank), "tolerance": TOLERANCE,
            "measured_compute_lane_s": per_rank[0]["compute_busy_s"],
            "measured_step_s": per_rank[0]["step_s"]}  # fmt: skip
