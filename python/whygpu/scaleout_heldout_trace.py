"""Chrome traces of the held-out runs (:mod:`whygpu.scaleout_heldout`): each run's simulated timeline
(the simulator's events, every rank alike) and an *approximate* measured one built from the worker's
per-step clocks and ``DataParallel.last_step``.

The measured trace is one step (the timed step whose wall time is the median) of rank 0, laid out from
what the worker records: the forward pass (``forward_s``, with the loss; with prefetch, less the wait
for the allgather, drawn after it as one wait), the backward pass (``backward_s``), the exposed wait
(``exposed_s``), the update (``update_s``), the blocking allgather (sharded without prefetch), and what
is left of the step (zero_grad, the loss's gradient, bookkeeping) as one "other" event at the end, so
that the compute lane adds up to the measured step.  On the communication lane: the gradients'
collectives as one interval from the first bucket's start to the last one's completion
(``first_start_s``, ``last_done_s`` from the backward pass's start; the union of the buckets,
``allreduce_s``, may be shorter), and the allgather.  Approximate: the order inside the forward pass
(prefetch's waits are interleaved with the layers, drawn as one), the gap between the forward and the
backward pass (drawn at the end), and the per-bucket intervals (drawn as one); the trace's metadata says so.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .predict import Event, StepResult, validate_chrome_trace, write_chrome_trace

__all__ = ["measured_events", "write_traces"]

APPROXIMATE = (
    "approximate: one step of rank 0 (the median step) laid out from the worker's clocks and DataParallel.last_step; "
    "prefetch's waits drawn as one after the forward pass, the time between the phases (zero_grad, the loss's "
    "gradient) as one 'other' event at the end, the buckets' collectives as one interval from the first start to "
    "the last completion"
)


def _f(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else 0.0


def measured_events(raw: dict, shard: str, prefetch: bool) -> list[Event]:
    """The approximate measured timeline of the median step (see the module docstring)."""
    steps = raw["steps"]
    s = steps[int(np.argsort([x["step_s"] for x in steps])[len(steps) // 2])]
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


def write_traces(trace_dir: str | Path, row: dict, res: StepResult, raw: dict) -> dict[str, Any]:
    """Write ``<label>.simulated.json`` and ``<label>.measured.json`` into ``trace_dir``, validate both,
    and return their paths and each lane's busy time (the measured compute lane's against the step)."""
    d = Path(trace_dir)
    d.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", row["label"]).strip("-").lower()
    meta = {"configuration": row["label"], "how": row["how"], "sources": row["prediction"]["sources"]}
    sim = d / f"{slug}.simulated.json"
    smeta = {**meta, "kind": "simulated", "predicted_at": row["prediction"]["at"]}
    write_chrome_trace(sim, res.rank_timelines(), metadata=smeta)
    cfg = row["config"]
    events = measured_events(raw, cfg["shard"], cfg["prefetch"])
    mes = d / f"{slug}.measured.json"
    write_chrome_trace(mes, events, metadata={**meta, "kind": "measured", "approximate": APPROXIMATE})
    busy = validate_chrome_trace(mes)
    validate_chrome_trace(sim)
    compute_s = sum(v for (pid, tid), v in busy.items() if pid == 0 and tid == 1)  # seconds
    step = max(e.end for e in events) if events else 0.0
    return {"simulated": str(sim), "measured": str(mes), "measured_compute_lane_s": compute_s,
            "measured_step_s": step}  # fmt: skip
