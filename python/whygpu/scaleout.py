"""Data-parallel training on P ranks measured term by term on this machine, checked against the step
the cost model predicts (within :data:`MODEL_TOLERANCE`, or measured again and flagged), and extrapolated
to named systems.  The model's formulas and the public figures are in :mod:`whygpu.predict.scaleout_model`, the
per-rank memory in :mod:`whygpu.predict.memory_model`; the names of both are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

from .bench.scaleout_lost import _lost, is_sharded
from .predict.memory_model import memory_section
from .predict.scaleout_model import (
    EXTRAPOLATION_RANKS,
    H100,
    INTERCONNECTS,
    LARGER_MODEL,
    PUBLIC_SCALING,
    RESNET50,
    SHARDS,
    SYSTEMS,
    allgather_s,
    allreduce_s,
    fit_alpha_bandwidth,
    fit_compute,
    hierarchical_allreduce_s,
    mlp_params,
    mlp_step_flops,
    predict_sharded_step,
    predict_step,
    reduce_scatter_s,
    ring_allreduce_s,
    scaling_curve,
    system_allreduce_s,
)

__all__ = [
    "INTERCONNECTS",
    "SYSTEMS",
    "H100",
    "LARGER_MODEL",
    "RESNET50",
    "PUBLIC_SCALING",
    "EXTRAPOLATION_RANKS",
    "MODEL_TOLERANCE",
    "BANDWIDTH_FLOOR",
    "OVERLAP_FREE",
    "ring_allreduce_s",
    "reduce_scatter_s",
    "allgather_s",
    "predict_sharded_step",
    "allgather_exposed_fraction",
    "SHARDS",
    "allreduce_s",
    "hierarchical_allreduce_s",
    "system_allreduce_s",
    "predict_step",
    "scaling_curve",
    "fit_alpha_bandwidth",
    "fit_compute",
    "mlp_params",
    "mlp_step_flops",
    "judge_run",
    "annotate",
    "run_scaleout",
    "quiet_reading",
    "where_lost",
]

# A model error beyond this (|predicted - measured| / measured) is measured again, then flagged, not explained.
MODEL_TOLERANCE = 0.25
# DataParallel's allreduce below this fraction of the bare Allreduce's bandwidth: the same, measured again.
BANDWIDTH_FLOOR = 0.5
# ... where the collective did not overlap the backward pass: at least this share of it was waited for.
OVERLAP_FREE = 0.9


def _find(runs: list[dict], ranks: int, threads: int, batch: int | None = None) -> dict | None:
    """A run on the whole global batch (not a share run) with these ranks and threads."""
    for r in runs:
        if r.get("share_of"):
            continue
        if r["ranks"] == ranks and r["threads"] == threads and (batch is None or r["batch"] == batch):
            return r
    return None


def _share(runs: list[dict], ranks: int, threads: int) -> dict | None:
    """The one-rank run on the share of `ranks` ranks with `threads` threads."""
    return next((r for r in runs if r.get("share_of") == ranks and r["ranks"] == 1 and r["threads"] == threads), None)


def _side(runs: list[dict], ranks: int, threads: int) -> dict | None:
    """The `ranks` ranks on their shares side by side, without communicating."""
    return next((r for r in runs if r.get("side_by_side") and r["ranks"] == ranks and r["threads"] == threads), None)


def _dp_runs(runs: list[dict]) -> list[dict]:
    """The DataParallel runs by P, and at each P the unsharded one last (the reference the allreduce's
    summary and extrapolation take is the widest unsharded run)."""
    dp = [r for r in runs if r["ranks"] > 1 and not r.get("side_by_side")]
    return sorted(dp, key=lambda r: (r["ranks"], not is_sharded(r)))


def check_run(share: dict, side: dict | None, run: dict, cores: int) -> dict:
    """The model's prediction of a measured P-rank step from its terms measured apart.  Compute: the P ranks
    on their shares side by side without communicating (each step as long as its slowest rank: they share
    the cores, caches and memory, and whatever else runs on the machine, as the P-rank step does); without
    that run, one rank alone on its share, stretched by P*T/cores where the ranks take turns on the cores.
    Communication: the bare Allreduce of the gradient measured on the same P ranks, exposed as
    DataParallel's was."""
    P, T = run["ranks"], run["threads"]
    stretch = max(1.0, P * T / max(1, cores))
    compute = side["step_s"] if side else share["step_s"] * stretch
    pred: dict[str, Any]
    if is_sharded(run):
        # Sharded: the reduce-scatter (exposed as DataParallel's was), the update of 1/P of the parameters
        # (the full update measured in the side-by-side run, or alone, / P) and the allgather, measured bare.
        e = run["exposed_s"] / run["reduce_scatter_s"] if run.get("reduce_scatter_s") else 1.0
        full_update = (side or share).get("update_s") or 0.0
        # prefetch: the share of the allgather the next forward pass still waited for (else all of it)
        g = allgather_exposed_fraction(run)
        pred = dict(
            predict_sharded_step(
                compute,
                full_update,
                P,
                run["bare_reduce_scatter_s"],
                run["bare_allgather_s"],
                exposed_fraction=e,
                allgather_exposed_fraction=g,
            )
        )
        pred["allgather_exposed_fraction"] = min(1.0, max(0.0, g))
    else:
        e = run["exposed_s"] / run["allreduce_s"] if run.get("allreduce_s") else 1.0
        pred = dict(predict_step(compute, run["bare_allreduce_s"], exposed_fraction=e))
    pred["stretch"] = 1.0 if side else stretch
    pred["compute_from"] = "side by side" if side else "alone"
    pred["exposed_fraction"] = min(1.0, max(0.0, e))
    pred["error"] = (pred["step_s"] - run["step_s"]) / run["step_s"]
    return pred


def allgather_exposed_fraction(run: dict) -> float:
    """The part of a sharded run's allgather its step waited for: 1 without prefetch (the allgather ends
    the step); with it, the next forward pass's wait over the allgather's time in flight."""
    if not run.get("prefetch"):
        return 1.0
    ag, waited = run.get("allgather_s") or 0.0, run.get("exposed_allgather_s") or 0.0
    return min(1.0, waited / ag) if ag > 0 else 1.0


def judge_run(share: dict, side: dict | None, run: dict, cores: int) -> list[str]:
    """What makes a measured P-rank run untrustworthy ([] when nothing): DataParallel's allreduce below
    :data:`BANDWIDTH_FLOOR` of the bare Allreduce's bandwidth where it did not overlap the backward pass
    (exposed over in flight at least :data:`OVERLAP_FREE`), or the model off by more than
    :data:`MODEL_TOLERANCE`."""
    why = []
    ratio = run.get("bandwidth_ratio")
    # Only a collective that did not overlap the backward pass is held to the bare call's bandwidth: one
    # that overlapped shared the cores with the backward pass while in flight (on a machine without a core
    # to spare, by design, not by disturbance), so its in-flight time says nothing about other programs;
    # the model's error still judges the step it ends in.
    in_flight = float((run.get("reduce_scatter_s") if is_sharded(run) else run.get("allreduce_s")) or 0.0)
    exposed = run.get("exposed_s")
    overlapped = in_flight > 0 and exposed is not None and float(exposed) / in_flight < OVERLAP_FREE
    if ratio is not None and ratio < BANDWIDTH_FLOOR and not overlapped:
        what = "reduce-scatter" if is_sharded(run) else "allreduce"
        bare = "Reduce_scatter" if is_sharded(run) else "Allreduce"
        why.append(f"DataParallel's {what} at x{ratio:.2f} of the bare {bare}'s bandwidth (< {BANDWIDTH_FLOOR})")
    err = check_run(share, side, run, cores)["error"]
    if abs(err) > MODEL_TOLERANCE:
        why.append(f"model error {100 * err:+.0f}% (beyond {100 * MODEL_TOLERANCE:.0f}%)")
    return why


def where_lost(doc: dict, run: dict) -> dict[str, Any] | None:
    """:func:`_lost` of a multi-rank run of a document, from its runs (a document written before the parts
    matched its table holds older words); None where the runs it needs were not measured."""
    runs, batch = doc["runs"], doc["params"]["batch"]
    base = _find(runs, 1, run["threads"], batch)
    share = _share(runs, run["ranks"], run["threads"])
    if run["ranks"] < 2 or run.get("side_by_side") or base is None or share is None:
        return None
    return _lost(dict(base, cores=doc["params"]["cores"]), share, _side(runs, run["ranks"], run["threads"]), run)


def annotate(doc: dict) -> dict:
    """Add the model to a measured document (``whygpu.bench.scaleout.measure``), in place, and return it:
    the fit of alpha and B (``fit``), per multi-rank run the model's terms next to the measured ones and
    where the lost efficiency went, a ``summary`` of the ratios the issue asks for, and the
    ``extrapolation`` to the named systems for this MLP and two larger models."""
    runs: list[dict] = doc["runs"]
    P_sweep = doc["sweep"]["ranks"]
    cores = doc["params"]["cores"]
    batch = doc["params"]["batch"]
    fit: dict[str, Any] = dict(fit_alpha_bandwidth(doc["sweep"]["bytes"], doc["sweep"]["seconds"], P_sweep))
    fit.update(ranks=P_sweep, weighting="relative residuals", source="measured here: bare MPI Allreduce sweep")
    doc["fit"] = fit
    dp = _dp_runs(runs)
    ref = dp[-1] if dp else None  # the widest run measured (unsharded where one was)
    one, full = _find(runs, 1, 1, batch), _find(runs, 1, cores, batch)
    for r in runs:
        r["speedup_vs_1x1"] = one["step_s"] / r["step_s"] if one and not r.get("share_of") else None
        r["speedup_vs_1xall"] = full["step_s"] / r["step_s"] if full and not r.get("share_of") else None
        r["predicted_s"] = r["prediction_error"] = None
        if r["ranks"] == 1 or r.get("side_by_side"):
            continue
        base = _find(runs, 1, r["threads"], batch)
        share = _share(runs, r["ranks"], r["threads"])
        side = _side(runs, r["ranks"], r["threads"])
        if base is not None:
            r["speedup"] = base["step_s"] / r["step_s"]  # over one rank with the same threads
            r["efficiency"] = r["speedup"] / r["ranks"]
        if share is None or base is None:
            continue
        pred = check_run(share, side, r, cores)
        r["predicted_s"], r["prediction_error"] = pred["step_s"], pred["error"]
        r["model"] = pred
        r["model_within_tolerance"] = abs(pred["error"]) <= MODEL_TOLERANCE
        r["fit_at_gradient_s"] = ring_allreduce_s(r["bytes"], r["ranks"], fit["alpha_s"], fit["bandwidth_Bps"])
        if is_sharded(r):
            r["fit_at_gradient_s"] = 2 * reduce_scatter_s(r["bytes"], r["ranks"], fit["alpha_s"], fit["bandwidth_Bps"])
            keys = (
                *("compute_s", "reduce_scatter_s", "exposed_s", "update_s"),
                *("allgather_s", "exposed_allgather_s", "step_s"),
            )
            measured = {k: r.get(k, 0.0) for k in keys}
            measured["exposed_allgather_s"] = r.get("exposed_allgather_s", r.get("allgather_s", 0.0))
            r["breakdown"] = {
                "measured": measured,
                "model": {k: pred[k] for k in (*keys, "comm_s")},
            }
        else:
            r["breakdown"] = {
                "measured": {
                    "compute_s": r["compute_s"],
                    "allreduce_s": r["allreduce_s"],
                    "exposed_s": r["exposed_s"],
                    "step_s": r["step_s"],
                },
                "model": {k: pred[k] for k in ("compute_s", "comm_s", "exposed_s", "step_s")},
            }
        r["lost"] = _lost(dict(base, cores=cores), share, side, r)
    e = ref["model"]["exposed_fraction"] if ref and ref.get("model") else 1.0
    doc["model"] = {
        "formula": "T(P) = T_compute(B/P) + e * T_allreduce(S, P)",
        "terms": "T_compute(B/P): the P ranks on their shares of the batch side by side without communicating, "
        "measured (and one rank alone on its share, for where the time went); T_allreduce: the bare "
        "Allreduce of the gradient on P ranks, measured (the fit of alpha and B for other P); e: DataParallel's "
        "exposed / allreduce, measured",
        "exposed_fraction": e,
        "tolerance": MODEL_TOLERANCE,
        "bandwidth_floor": BANDWIDTH_FLOOR,
        "gradient_bytes": ref["bytes"] if ref else 4 * mlp_params(doc["params"]["widths"]),
        "alpha_s": fit["alpha_s"],
        "bandwidth_Bps": fit["bandwidth_Bps"],
        "formula_sharded": "T(P) = T_compute(B/P) - T_update + e * T_reduce_scatter(S, P) + T_update / P "
        "+ g * T_allgather(S, P)",
        "terms_sharded": "T_update: the optimizer update of the whole model, measured in the side-by-side run; "
        "T_reduce_scatter, T_allgather: the bare Reduce_scatter and Allgather of the gradient's size on the same "
        "P ranks, measured, each (P-1)/P * S/B on the wire (together the allreduce's 2(P-1)/P * S/B); e: "
        "DataParallel's exposed / reduce-scatter, measured; g: 1 (the allgather ends the step), or with "
        "prefetch the next forward pass's wait / the allgather's time in flight, measured",
    }
    doc["summary"] = _summary(doc, ref)
    doc["summary"]["sharded"] = _sharded_summary(doc)
    doc["memory"] = memory_section(doc)
    doc["extrapolation"] = _extrapolate(doc, ref, e)
    return doc


def _summary(doc: dict, ref: dict | None) -> dict:
    runs = doc["runs"]
    batch, cores = doc["params"]["batch"], doc["params"]["cores"]
    one, full = _find(runs, 1, 1, batch), _find(runs, 1, cores, batch)
    out: dict[str, Any] = {"ranks": ref["ranks"] if ref else None, "threads": ref["threads"] if ref else None}
    if ref:
        out.update(
            speedup_vs_1x1=one["step_s"] / ref["step_s"] if one else None,
            speedup_vs_1xall=full["step_s"] / ref["step_s"] if full else None,
            exposed_over_allreduce=ref["exposed_s"] / ref["allreduce_s"] if ref["allreduce_s"] > 0 else None,
            dp_over_bare_bandwidth=ref.get("bandwidth_ratio"),
            prediction_error=ref.get("prediction_error"),
            model_within_tolerance=ref.get("model_within_tolerance"),
            comm_over_compute=ref["allreduce_s"] / ref["compute_s"] if ref["compute_s"] > 0 else None,
            # the fit at the gradient's size next to the bare Allreduce measured at that size: in shared memory the
            # "link" is the cache hierarchy, so one B cannot hold for buffers in cache and out of it
            fit_at_gradient_s=ref.get("fit_at_gradient_s"),
            bare_at_gradient_s=ref.get("bare_allreduce_s"),
            lost=(ref.get("lost") or {}).get("text"),
            disturbed=[
                f"{r['ranks']} x {r['threads']}: {'; '.join(r['disturbed'])}" for r in runs if r.get("disturbed")
            ],
        )
    return out


def _sharded_summary(doc: dict) -> list[dict]:
    """Per shard setting at the widest P: the step against one rank with every core (the issue's target,
    >= 0.95x for shard="optimizer" on 2 ranks x 1 thread), and the model's error."""
    runs, cores, batch = doc["runs"], doc["params"]["cores"], doc["params"]["batch"]
    full = _find(runs, 1, cores, batch)
    out: list[dict] = []
    dp = _dp_runs(runs)
    if not dp:
        return out
    P = dp[-1]["ranks"]
    for r in dp:
        if r["ranks"] != P:
            continue
        out.append(
            {
                "shard": r.get("shard") or "none",
                "ranks": r["ranks"],
                "threads": r["threads"],
                "step_s": r["step_s"],
                "vs_1xall": full["step_s"] / r["step_s"] if full else None,  # > 1: faster than one rank
                "prediction_error": r.get("prediction_error"),
                "disturbed": bool(r.get("disturbed")),
                "prefetch": bool(r.get("prefetch")),
            }
        )
    return out


def _extrapolate(doc: dict, ref: dict | None, e: float) -> dict:
    """Strong and weak scaling curves for each of :data:`SYSTEMS` and three models: the MLP measured here,
    :data:`LARGER_MODEL` and :data:`RESNET50`.  CPU systems compute like a rank measured here (c0 + c1 b
    fitted to the one-rank steps at B and B/P, the other models scaled by FLOPs per sample) with the
    exposed fraction measured here; the H100 system computes at its public rate, with no overlap
    assumed.  Strong scaling stops at P = B; this machine at its cores."""
    widths = doc["params"]["widths"]
    batch, cores = doc["params"]["batch"], doc["params"]["cores"]
    threads = ref["threads"] if ref else 1
    runs = doc["runs"]
    pts = [(r["batch"], r["step_s"]) for r in runs if r["ranks"] == 1 and r["threads"] == threads]
    if not pts:
        return {}
    cf = fit_compute(pts)
    cap = max(1.0, float(doc["params"].get("bucket_mb") or 25.0)) * 2**20
    models: list[dict[str, Any]] = []
    for w, measured in ((list(widths), True), (list(LARGER_MODEL), False)):
        n = mlp_params(w)
        models.append(
            {
                "name": "MLP " + "-".join(map(str, w)),
                "measured": measured,
                "params": n,
                "bytes": 4 * n,
                "flops_per_sample": mlp_step_flops(w, 1),
                "layers": len(w) - 1,
            }
        )
    models.append(
        {
            "name": RESNET50["name"],
            "measured": False,
            "params": RESNET50["params"],
            "bytes": 4 * RESNET50["params"],
            "flops_per_sample": RESNET50["flops_per_sample"],
            "layers": RESNET50["layers"],
            "source": RESNET50["source"],
        }
    )
    for m in models:
        m["flops"] = m["flops_per_sample"] * batch
        m["flops_per_byte"] = m["flops"] / m["bytes"]
        m["buckets"] = int(ref["buckets"]) if (m["measured"] and ref) else max(1, math.ceil(m["bytes"] / cap))
    mlp_fps = models[0]["flops_per_sample"]
    systems = []
    for sysd in SYSTEMS:
        s = dict(sysd)
        if s["link"] == "fit":
            s["link"] = {
                "name": "this machine's shared memory",
                "alpha_s": doc["fit"]["alpha_s"],
                "bandwidth_Bps": doc["fit"]["bandwidth_Bps"],
                "source": "measured here: fitted to the Allreduce sweep",
            }
            s["max_ranks"] = max(1, cores // threads)  # never past the cores it has
        s["public"] = sysd["link"] != "fit"  # its link (and for the GPU its compute) are public figures
        s["exposed_fraction"] = e if s["device"] == "cpu" else 1.0
        systems.append(s)
    curves = []
    for s in systems:
        for m in models:
            if s["device"] == "cpu":

                def compute_at(b: int, m: dict = m) -> float:
                    return cf["c0_s"] + cf["c1_s_per_sample"] * b * m["flops_per_sample"] / mlp_fps

            else:

                def compute_at(b: int, m: dict = m) -> float:
                    launches = H100["launches_per_layer"] * m["layers"] * H100["launch_s"]
                    return m["flops_per_sample"] * b / (H100["gflops"] * 1e9) + launches

            def comm_at(p: int, m: dict = m, s: dict = s) -> float:
                return system_allreduce_s(s, m["bytes"], p, m["buckets"])

            m[f"{s['device']}_step_s"] = compute_at(batch)  # one rank's step on the whole batch, this device
            ranks = [p for p in EXTRAPOLATION_RANKS if p <= s.get("max_ranks", 10**9)]
            for scaling in ("strong", "weak"):
                c = scaling_curve(
                    compute_at, comm_at, ranks, batch, exposed_fraction=s["exposed_fraction"], scaling=scaling
                )
                curves.append({"system": s["name"], "device": s["device"], "model": m["name"], "scaling": scaling, **c})
    links = [
        {
            "name": "this machine (shared memory)",
            "bandwidth_Bps": doc["fit"]["bandwidth_Bps"],
            "alpha_s": doc["fit"]["alpha_s"],
            "public": False,
            "source": "measured here: fitted to the Allreduce sweep",
        }
    ] + [{"name": k, **v, "public": True} for k, v in INTERCONNECTS.items()]
    return {
        "ranks": list(EXTRAPOLATION_RANKS),
        "batch": batch,
        "threads_per_rank": threads,
        "compute_fit": cf,
        "compute_note": f"CPU rows: a rank computes like one rank of {threads} thread(s) here, "
        f"{1e3 * cf['c0_s']:.3g} ms + {1e6 * cf['c1_s_per_sample']:.3g} us per sample (fitted to the one-rank "
        "steps measured at the global batch and at a rank's share), other models scaled by their FLOPs per "
        f"sample, and hide what the measured e = {e:.2f} says; H100 rows: {H100['gflops'] / 1e3:g} TFLOP/s "
        "float32 and 5 us per kernel launch (public figures), no overlap assumed",
        "systems": [
            {k: v for k, v in s.items() if k not in ("link", "inter")}
            | {
                "link": s["link"]["name"] if isinstance(s["link"], dict) else s["link"],
                "inter": s.get("inter"),
            }
            for s in systems
        ],
        "interconnects": links,
        "gpu": dict(H100),
        "models": models,
        "curves": curves,
        "public_points": [dict(x) for x in PUBLIC_SCALING],
    }


def quiet_reading(doc: dict) -> str:
    """The quiet guard's reading across the ranks' cores: what other programs took before and while each job ran."""
    parts = []
    for r in doc["runs"]:
        q = r.get("quiet") or {}
        d = q.get("during") or {}
        if q.get("others") is None:
            continue
        during = f", {100 * d['others']:.0f}% while it ran" if d.get("others") is not None else ""
        parts.append(f"{r['ranks']} x {r['threads']} ({r['batch']}): {100 * q['others']:.0f}% before{during}")
    if not parts:
        return "the quiet guard could not read the cores' load here (no /proc/stat)"
    busy = (doc.get("quiet") or {}).get("busy")
    return (
        "quiet guard, other programs' share of the ranks' cores: "
        + "; ".join(parts)
        + (" -- not quiet: the times are contended (see the caution)" if busy else " -- quiet")
    )


def run_scaleout(
    *,
    ranks: Sequence[int] = (1, 2),
    layers: Sequence[int] = (784, 2048, 2048, 10),
    batch: int = 512,
    steps: int = 10,
    sweep_max: int = 64 << 20,
    bucket_mb: float = 25.0,
    timeout: float = 300.0,
    log: Callable[[str], None] = lambda s: None,
    progress: bool = False,
    oversubscribe: bool = False,
    shards: Sequence[str] | str = ("none",),
    optimizer: str = "sgd",
    prefetch: bool = False,
) -> dict:
    """Measure (``whygpu.bench.scaleout.measure``: P ranks under mpiexec; a run the model misses by more than
    25%, or whose DataParallel allreduce is below half the bare bandwidth, measured once more) and
    annotate with the model; returns the ``whygpu.scaleout/1`` document."""
    from ._threads import _cpus_available
    from .bench.scaleout import measure

    cores = _cpus_available()
    doc = measure(
        ranks=ranks,
        layers=layers,
        batch=batch,
        steps=steps,
        sweep_max=sweep_max,
        bucket_mb=bucket_mb,
        timeout=timeout,
        log=log,
        progress=progress,
        oversubscribe=oversubscribe,
        judge=lambda share, side, run: judge_run(share, side, run, cores),
        shards=[shards] if isinstance(shards, str) and shards != "all" else shards,
        optimizer=optimizer,
        prefetch=prefetch,
    )
    return annotate(doc)
