"""Held-out validation of the step simulator (issue 34): predict each data-parallel configuration from
terms measured apart, *then* run it, and judge every term against its own measurement.

For each rank count P, :func:`run_heldout` first measures the simulator's inputs apart
(:func:`whygpu.bench.stepterms.measure_terms`: per-layer compute beside the other ranks, the update, the
bare collectives' cost curves, the interference probe, the ranks' skew) -- never from a run it predicts.
Then, for each configuration (:func:`configurations`: bucket layouts x shard none/optimizer/gradients x
prefetch), it measures the compute, the update and the skew once more, just before (a shared machine's
speed drifts over a minute: measured once for all 15, the compute was off by -22% in one run and +40% in
another, in the same direction for every configuration), simulates the step
(:func:`whygpu.predict.simulate`), records the prediction with a timestamp, and only then launches the
run (:func:`whygpu.bench.scaleout.launch`, the scale-out worker with the matching ``DataParallel``
settings) and compares term by term (:func:`judge`) with :data:`TOLERANCES`:

* ``step``: the whole step, 15%;
* ``exposed``: the wait for the gradients' collectives after the backward pass, 30% or 2 ms;
* ``compute`` (forward + loss + backward kernels), ``allreduce`` / ``reduce_scatter`` (the gradients'
  collectives' time in flight), ``update``, ``allgather`` (in flight) and ``allgather_wait`` (prefetch:
  what the forward pass waited for): 25% or 0.5 ms (the floor: the progress thread polls every 0.1 ms
  and a term of a few hundred microseconds is within the timers' and the schedule's noise).

A term outside its tolerance is a *model error* naming that term.  A run is called *disturbed* only when
the quiet guard measured other programs on the ranks' cores while it ran (:func:`disturbance`); its
misses are then listed but not counted as model errors.  Nothing of a run reaches its prediction: the
prediction is made (and kept) before the run starts, from the terms document alone.

``whygpu scaleout --held-out`` runs this (:mod:`whygpu.cli.scaleout`); the traces it writes are in
:mod:`whygpu.scaleout_heldout_trace`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bench.scaleout import _cpu_times_with_ranks, launch, mpi_status, summarize
from .bench.stepterms import measure_terms, simulator_fields
from .bench.trust import CORE_THRESHOLD, QUIET_THRESHOLD, QuietGuard
from .predict import StepConfig, StepResult, inputs_from_fields, simulate, skew_from_fields

__all__ = [
    "SCHEMA",
    "TOLERANCES",
    "LAYOUTS",
    "QUICK",
    "configurations",
    "predict",
    "predicted_terms",
    "measured_terms",
    "judge",
    "disturbance",
    "run_heldout",
]

SCHEMA = "whygpu.scaleout-heldout/1"
# term -> (relative tolerance, absolute floor in seconds):
# within if |predicted - measured| <= max(rel * measured, floor)
TOLERANCES: dict[str, tuple[float, float]] = {
    "step": (0.15, 0.0),
    "compute": (0.25, 0.5e-3),
    "allreduce": (0.25, 0.5e-3),
    "reduce_scatter": (0.25, 0.5e-3),
    "exposed": (0.30, 2e-3),
    "update": (0.25, 0.5e-3),
    "allgather": (0.25, 0.5e-3),
    "allgather_wait": (0.25, 0.5e-3),
}
# name -> (bucket_mb, first_bucket_mb): as DataParallel takes them (it refuses math.inf: 1e6 MiB is one bucket)
LAYOUTS: dict[str, tuple[float, float]] = {
    "a bucket per layer": (0.0, 0.0),
    "DDP: 1 MiB first + 25 MiB": (25.0, 1.0),
    "one bucket at the end": (1e6, 1e6),
}
# the --quick setting: a small model, few steps, the terms measured briefly
QUICK: dict[str, Any] = {
    "layers": (64, 256, 256, 10),
    "batch": 64,
    "steps": 3,
    "terms": {"repeats": 3, "budget": 0.02, "max_reps": 5, "probe_reps": 2, "sizes": (4, 4096, 65536, 1 << 20)},
}
TERMS_DEFAULT: dict[str, Any] = {"repeats": 7, "budget": 0.1, "max_reps": 30, "probe_reps": 3}


def configurations(
    ranks: int, layouts: Sequence[str] | None = None, shards: Sequence[str] = ("none", "optimizer", "gradients")
) -> list[tuple[str, StepConfig]]:
    """(layout name, StepConfig) for each bucket layout x shard setting, and prefetch on and off for the
    sharded ones."""
    out = []
    for name in LAYOUTS if layouts is None else layouts:
        bucket_mb, first = LAYOUTS[name]
        for sh in shards:
            for pf in (False, True) if sh != "none" else (False,):
                out.append((name, StepConfig(ranks, shard=sh, prefetch=pf, bucket_mb=bucket_mb, first_bucket_mb=first)))
    return out


def config_label(layout: str, cfg: StepConfig) -> str:
    return f"P={cfg.ranks} {cfg.shard}{' +prefetch' if cfg.prefetch else ''}, {layout}"


def _comm_kind(cfg: StepConfig) -> str:
    return "allreduce" if cfg.shard == "none" else "reduce_scatter"


# -- prediction: the terms document and the configuration, nothing else -----------------------------
def _window(terms: dict) -> tuple[float, float]:
    """The collective curves' fit window: the sweep's sizes from a sixteenth of the smallest layer's
    parameters to four times all of them (chosen from the model, before any run), or every size where
    fewer than 3 lie inside."""
    sizes = [int(x["param_bytes"]) for x in terms["layers"] if int(x["param_bytes"]) > 0]
    lo, hi = min(sizes) / 16, 4 * sum(sizes)
    swept = {p["bytes"] for c in terms["collectives"].values() for p in c["points"]}
    return (lo, hi) if sum(lo <= s <= hi for s in swept) >= 3 else (0.0, math.inf)


def predict(terms: dict, cfg: StepConfig) -> tuple[dict[str, Any], StepResult]:
    """Simulate ``cfg`` from the ``whygpu.stepterms/1`` document alone: (the predicted terms with their
    inputs' sources and the time of the prediction, the simulator's result).  The compute is the ranks'
    beside each other; the interference probe is the configuration's own collective."""
    window = _window(terms)
    fields = simulator_fields(terms, compute="beside", probe=_comm_kind(cfg), collective_window=window)
    compute, update, costs, inter = inputs_from_fields(fields)
    skew = skew_from_fields(fields)
    res = simulate(compute, update, costs, inter, cfg, skew)
    pred = {
        "terms": predicted_terms(res),
        "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "buckets": [b.nbytes for b in res.buckets],
        "sources": {
            "compute": compute.source,
            "update": update.source,
            "collectives": {c.kind: c.source for c in costs.curves},
            "interference": inter.source,
            "skew": None if skew is None else f"lag {100 * skew.lag_fraction:.1f}% of the compute; {skew.source}",
            "collective_window_bytes": [w if math.isfinite(w) else None for w in window],  # None: no upper end
        },
    }
    return pred, res


def predicted_terms(res: StepResult) -> dict[str, float]:
    """The simulated step's judged terms (seconds)."""
    cfg = res.config
    out = {"step": res.step_s, "compute": res.compute_s, _comm_kind(cfg): res.backward_comm_s, "exposed": res.exposed_s,
           "update": res.update_s}  # fmt: skip
    if cfg.shard != "none":
        out["allgather"] = res.allgather_s
        if cfg.prefetch:
            out["allgather_wait"] = res.allgather_wait_s
    return out


# -- measurement -----------------------------------------------------------------------------------
def _median(values: Sequence[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(xs)) if xs else None


def measured_terms(raw: dict, cfg: StepConfig) -> dict[str, float | None]:
    """The same terms from the worker's per-step records (``DataParallel.last_step`` and the worker's
    clocks; medians over the timed steps).  compute = forward + backward (prefetch: less the forward
    pass's wait for the allgather); the gradients' collective: ``allreduce_s`` (the union of the buckets'
    start-to-completion intervals: the reduce-scatters' when sharded); allgather: sharded without prefetch
    the blocking allgather, with prefetch the previous step's allgather (``prefetched_allgather_s``) and
    its wait (``allgather_wait_s``)."""
    steps = raw["steps"]
    pf = cfg.prefetch

    def med(fn: Callable[[dict], Any]) -> float | None:
        return _median([fn(s) for s in steps])

    out: dict[str, float | None] = {
        "step": med(lambda s: s["step_s"]),
        "compute": med(lambda s: s["forward_s"] + s["backward_s"] - (s.get("allgather_wait_s") or 0.0) * pf),
        _comm_kind(cfg): med(lambda s: s.get("allreduce_s")),
        "exposed": med(lambda s: s.get("exposed_s")),
        "update": med(lambda s: s.get("update_s")),
    }  # fmt: skip
    if cfg.shard != "none":
        out["allgather"] = med(lambda s: s.get("prefetched_allgather_s" if pf else "allgather_s"))
        if pf:
            out["allgather_wait"] = med(lambda s: s.get("allgather_wait_s"))
    return out


def judge(predicted: dict[str, float], measured: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per predicted term: predicted, measured, error ((predicted - measured) / measured), the
    tolerance and whether it holds (None where the run measured no such term)."""
    rows = []
    for term, p in predicted.items():
        rel, floor = TOLERANCES[term]
        m = measured.get(term)
        err = None if m is None or m <= 0 else (p - m) / m
        within = None if m is None else abs(p - m) <= max(rel * m, floor)
        rows.append({"term": term, "predicted_s": p, "measured_s": m, "error": err, "tolerance": rel,
                     "floor_s": floor, "within": within})  # fmt: skip
    return rows


def disturbance(quiet: dict | None) -> str | None:
    """What the quiet guard measured on the ranks' cores while the run ran, where it is past its
    thresholds (other programs' or the hypervisor's share, or one core taken); None if quiet or unread."""
    d = (quiet or {}).get("during") or {}
    why = [f"{k} {100 * d[k]:.0f}% of the cores" for k in ("others", "steal") if (d.get(k) or 0.0) > QUIET_THRESHOLD]
    if (d.get("core") or 0.0) > CORE_THRESHOLD:
        why.append(f"one core {100 * d['core']:.0f}% taken")
    return "; ".join(why) or None


def verdict(rows: list[dict], disturbed: str | None) -> tuple[str, list[str]]:
    """("ok" | "model error: terms" | "disturbed: why (misses: terms)", the terms that missed)."""
    misses = [r["term"] for r in rows if r["within"] is False]
    if not misses:
        return "ok", misses
    if disturbed:
        return f"disturbed: {disturbed} (misses: {', '.join(misses)})", misses
    return f"model error: {', '.join(misses)}", misses


# -- the orchestration -----------------------------------------------------------------------------
def _guard() -> QuietGuard:
    return QuietGuard(reader=_cpu_times_with_ranks)


def _threads(P: int, cores: int) -> int:
    return max(1, cores // P)


def _worker_args(
    cfg: StepConfig, layers: Sequence[int], batch: int, steps: int, backend: str, opt: str, events: bool = False
) -> list[str]:
    """The scale-out worker's arguments for ``cfg``; ``events``: every rank records its events (the
    measured trace's; the steps' timings are left as they are without it)."""
    from .bench.scaleout import WARMUP

    args = ["--mode", "step", "--batch", str(batch), "--layers", ",".join(map(str, layers)), "--backend", backend]
    args += ["--steps", str(steps), "--warmup", str(WARMUP), "--optimizer", opt, "--shard", cfg.shard]
    args += ["--bucket-mb", repr(float(cfg.bucket_mb)), "--first-bucket-mb", repr(float(cfg.first_bucket_mb))]
    return args + (["--prefetch"] if cfg.prefetch else []) + (["--events"] if events else [])


def run_heldout(
    *,
    ranks: Sequence[int] = (2,),
    layers: Sequence[int] = (784, 2048, 2048, 10),
    batch: int = 512,
    steps: int = 10,
    optimizer: str = "sgd",
    layouts: Sequence[str] | None = None,
    shards: Sequence[str] = ("none", "optimizer", "gradients"),
    only: Sequence[str] | None = None,
    terms_settings: dict | None = None,
    timeout: float = 300.0,
    trace_dir: str | Path | None = None,
    fresh_compute: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Measure the terms apart at each P, then predict and run each configuration; returns the document
    (``{"schema", "params", "quiet", "heldout": {"rows", "terms", "summary", "tolerances"}}``).
    ``only``: labels (:func:`config_label` without the "P=.. " prefix) to keep; ``trace_dir``: write the
    simulated and the measured timeline of each run as Chrome traces; ``fresh_compute``: measure the
    compute, the update and the skew again just before each configuration (apart from its run, as all
    terms; the collectives' curves and the interference stay those measured once per P)."""
    from ._registry import KERNELS
    from ._threads import _cpus_available
    from .bench.scaleout import ScaleoutError

    st = mpi_status()
    if not st["available"]:
        raise ScaleoutError(f"cannot run the held-out validation: {st['reason']}")
    cores = _cpus_available()
    backend = "openmp" if KERNELS["openmp"].available else "packed"
    settings = dict(TERMS_DEFAULT if terms_settings is None else terms_settings)
    guard = _guard()
    rows: list[dict[str, Any]] = []
    terms_docs: dict[str, Any] = {}
    t_start = time.perf_counter()
    for P in sorted(set(int(p) for p in ranks)):
        T = _threads(P, cores)
        stretch = P * T / cores
        how = f"{P} ranks x {T} thread(s) on {cores} cores" + (
            f" (oversubscribed x{stretch:.2g}: the ranks take turns on the cores)" if stretch > 1 else ""
        )
        log(f"measuring the terms apart on {how}")
        with guard.block(f"terms on {P} ranks") as q:
            terms = measure_terms(ranks=P, layers=layers, batch=batch, threads=T, backend=backend,
                                  optimizer=optimizer, timeout=timeout, machine=False, **settings)  # fmt: skip
        terms_docs[str(P)] = {"doc": terms, "quiet": q, "how": how, "measured_at": _now()}
        for layout, cfg in configurations(P, layouts, shards):
            label = config_label(layout, cfg)
            if only is not None and label.split(" ", 1)[1] not in only:
                continue
            cterms, fresh = terms, None
            if fresh_compute:  # the compute, the update and the skew again, just before: the machine drifts
                with guard.block(f"compute terms for {label}") as fq:
                    fresh = measure_terms(ranks=P, layers=layers, batch=batch, threads=T, backend=backend,
                                          optimizer=optimizer, timeout=timeout, machine=False, compute_only=True,
                                          **settings)  # fmt: skip
                cterms = {**terms, **{k: fresh.get(k) for k in ("layers", "compute", "update", "skew")}}
            pred, res = predict(cterms, cfg)  # before the run: nothing of it exists yet
            if fresh is not None:
                pred["compute_terms"] = {"quiet": fq, "skew": fresh.get("skew"),  # measured just before "at"
                                         "compute": fresh["compute"]["beside"],
                                         "update": fresh["update"]["beside"]}  # fmt: skip
            log(f"{label}: predicted {1e3 * pred['terms']['step']:.3g} ms per step; running it")
            with guard.block(label) as q:
                # every held-out run records its events (the report draws one measured timeline; about 1 us per
                # event, some 35 events a step: +15-45 us on a 1 ms step, lost in the noise of a 100 ms one)
                args = _worker_args(cfg, layers, batch, steps, backend, optimizer, events=True)
                raw = launch(st["mpiexec"], P, T, args, timeout)
            meas = measured_terms(raw, cfg)
            judged = judge(pred["terms"], meas)
            why = disturbance(q)
            v, misses = verdict(judged, why)
            row = {
                "label": label, "layout": layout, "ranks": P, "threads": T, "cores": cores, "oversubscribed": stretch,
                "how": how,
                "config": {f: getattr(cfg, f) for f in ("shard", "prefetch", "bucket_mb", "first_bucket_mb")},
                "prediction": pred, "measured": {"terms": meas, "at": _now(), "run": summarize(raw), "quiet": q},
                "terms": judged, "misses": misses, "model_errors": [] if why else misses, "disturbed": why,
                "verdict": v,
            }  # fmt: skip
            from .scaleout_heldout_trace import measured_events

            # the two timelines the report draws one above the other: simulated (the prediction's) and measured
            row["timeline"] = {"simulated": _timeline(res.timeline),
                               "measured": _timeline(measured_events(raw, cfg.shard, cfg.prefetch))}  # fmt: skip
            if trace_dir is not None:
                from .scaleout_heldout_trace import write_traces

                row["traces"] = write_traces(trace_dir, row, res, raw)
            rows.append(row)
            log(f"{label}: measured {1e3 * (meas['step'] or math.nan):.3g} ms: {v}")
    return {
        "schema": SCHEMA,
        "available": True,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t_start,
        "params": {
            "ranks": sorted(set(int(p) for p in ranks)),
            "layers": [int(w) for w in layers],
            "batch": batch,
            "steps": steps,
            "optimizer": optimizer,
            "backend": backend,
            "cores": cores,
            "terms_settings": settings,
            "mpiexec": st["mpiexec"],
        },  # fmt: skip
        "heldout": {
            "rows": rows,
            "terms": terms_docs,
            "tolerances": {k: {"relative": r, "floor_s": f} for k, (r, f) in TOLERANCES.items()},
            "summary": summary(rows),
            "method": "each configuration simulated from the terms measured apart on the same P (before it ran), "
            "then run; every term judged against its own measurement",
        },
    }


def _timeline(events: Sequence[Any]) -> list[dict[str, Any]]:
    """A timeline for the JSON: rank 0's events as {name, lane, start_s, end_s, kind}, to the microsecond
    (an event with a time that is not a number is left out)."""
    out = []
    for e in events:
        if getattr(e, "rank", 0) != 0 or not (math.isfinite(e.start) and math.isfinite(e.end)):
            continue
        out.append({"name": str(e.name), "lane": str(e.lane), "start_s": round(float(e.start), 6),
                    "end_s": round(float(e.end), 6), "kind": str(e.kind)})  # fmt: skip
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def summary(rows: list[dict]) -> dict[str, Any]:
    """How many configurations held, how many missed by a model error (and which terms missed how often),
    how many were disturbed."""
    counts: dict[str, int] = {}
    for r in rows:
        for t in r["model_errors"]:
            counts[t] = counts.get(t, 0) + 1
    return {
        "configurations": len(rows),
        "ok": sum(r["verdict"] == "ok" for r in rows),
        "model_errors": sum(bool(r["model_errors"]) for r in rows),
        "disturbed": sum(bool(r["disturbed"]) for r in rows),
        "missed_terms": counts,
    }


def table_rows(doc: dict) -> list[list[str]]:
    """The held-out table, one line per term of each configuration: configuration, term, predicted,
    measured (ms), error, verdict (the configuration's on its step line, the term's on the others)."""

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{1e3 * x:.3g}"

    out = []
    for r in doc["heldout"]["rows"]:
        for i, t in enumerate(r["terms"]):
            err = "n/a" if t["error"] is None else f"{100 * t['error']:+.0f}%"
            mark = "ok" if t["within"] else ("n/a" if t["within"] is None else "MISS")
            out.append([r["label"] if i == 0 else "", t["term"], ms(t["predicted_s"]), ms(t["measured_s"]), err,
                        r["verdict"] if i == 0 else mark])  # fmt: skip
    return out
