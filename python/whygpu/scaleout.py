"""Data-parallel training on P ranks measured term by term on this machine, checked against the step
the step simulator predicts from terms measured apart (within :data:`MODEL_TOLERANCE`, or measured again
and flagged as a model error), and extrapolated to named systems by the same simulator on their own
figures (:mod:`whygpu.predict.extrapolate`).  The public figures and the collectives' formulas are in
:mod:`whygpu.predict.scaleout_model`, the per-rank memory in :mod:`whygpu.predict.memory_model`; their
names are re-exported here.

The check of a measured run (:func:`check_run`) reads nothing the run measured of itself: its compute is
the side-by-side run's (or the share run's, stretched), split over the layers by their FLOPs; its
collectives are the bare calls measured in the same command (and the sweep's latency); no interference
is simulated unless a probe measured it.  The run's own step, exposed and in-flight times are compared
with the prediction afterwards, term by term, and never enter it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

from .bench.scaleout_lost import _lost, is_sharded
from .predict import (
    CollectiveCosts,
    CollectiveCurve,
    ComputeTimes,
    Interference,
    StepConfig,
    UpdateCost,
    simulate,
)
from .predict.extrapolate import CpuFigures, extrapolation, mlp_model, split_by_flops
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
    "SHARDS",
    "allreduce_s",
    "hierarchical_allreduce_s",
    "system_allreduce_s",
    "predict_step",
    "scaling_curve",
    "check_run",
    "run_inputs",
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


def _bare_curve(kind: str, P: int, nbytes: int, bare_s: float, latency_s: float, how: str) -> CollectiveCurve:
    """A collective's curve through its bare measurement at the gradient's ``nbytes`` (``bare_s``), with the
    sweep's latency where there is one (never more than half the bare time); a latency of 0 otherwise."""
    lat = min(max(0.0, latency_s), 0.5 * bare_s)
    rest = bare_s - lat
    bw = nbytes / rest if rest > 0 and nbytes > 0 else math.inf
    return CollectiveCurve(kind, P, latency_s=lat, bandwidth_Bps=bw, source="measured apart: " + how)


def run_inputs(
    share: dict,
    side: dict | None,
    run: dict,
    cores: int,
    *,
    widths: Sequence[int] | None = None,
    bucket_mb: float = 25.0,
    first_bucket_mb: float = 1.0,
    fit: dict | None = None,
    interference: dict | None = None,
) -> tuple[ComputeTimes, UpdateCost, CollectiveCosts, Interference, StepConfig, dict[str, Any]]:
    """The simulator's inputs for a measured multi-rank run, from terms measured apart only: the compute of
    the P ranks side by side (or one rank alone on its share, stretched by P*T/cores), split over the layers
    of ``widths`` by their FLOPs (forward and backward as that run timed them); the update that run timed;
    the bare collectives measured in the same job (``bare_allreduce_s``, sharded ``bare_reduce_scatter_s``
    and ``bare_allgather_s``) with the latency of the sweep's fit (``fit``: alpha per step, 2(P-1) of them
    for an allreduce, P-1 for its halves); no interference unless ``interference`` (a probe's
    ``compute_slowdown``, ``comm_slowdown``, ``source``) measured it.  Of ``run`` only its configuration
    is read (ranks, threads, shard, prefetch, the gradient's bytes) and the bare calls."""
    P, T = int(run["ranks"]), int(run["threads"])
    stretch = max(1.0, P * T / max(1, cores))
    src = side if side else share
    scale = 1.0 if side else stretch
    total = float(src["step_s"]) * scale
    upd = min(total, float(src.get("update_s") or 0.0) * scale)
    kernels = total - upd
    fw, bw = src.get("forward_s"), src.get("backward_s")
    assumptions = []
    if widths:
        model = mlp_model(widths)
        flops, nbytes = model["layer_flops"], model["layer_bytes"]
    else:
        flops, nbytes = [1.0], [int(run["bytes"])]
        assumptions.append("no layer widths given: the model as one layer holding the whole gradient")
    if fw and bw and fw + bw > 0:
        frac = float(fw) / float(fw + bw)
        how_fb = "forward and backward in the proportion that run timed them"
    else:
        frac = math.fsum(flops) / (2 * math.fsum(flops) + math.fsum(flops[1:]))
        how_fb = "forward and backward in proportion to their FLOPs"
    layers = split_by_flops(flops, nbytes, kernels * frac, kernels * (1 - frac))
    assumptions.append(
        f"compute split over the layers by their FLOPs (forward one product, backward dW and dX, the first layer "
        f"no dX), {how_fb}; the loss and the ReLUs inside the layers' shares"
    )
    whence = "the ranks side by side, no communication" if side else f"one rank alone on its share x{stretch:.3g}"
    compute = ComputeTimes(layers, source=f"measured apart: {whence}, {1e3 * kernels:.3g} ms without the update")
    param_bytes = sum(x.param_bytes for x in layers)
    update = UpdateCost(
        per_byte_s=upd / param_bytes if param_bytes else 0.0,
        source=f"measured apart: the whole update in the same run ({1e3 * upd:.3g} ms), per byte of parameters",
    )
    alpha = float(fit["alpha_s"]) if fit else 0.0
    lat_how = f"latency from the sweep's fit ({1e6 * alpha:.3g} us per step)" if fit else "latency 0 (no sweep yet)"
    nb = int(run["bytes"])
    curves = [
        _bare_curve("allreduce", P, nb, float(run["bare_allreduce_s"]), 2 * (P - 1) * alpha,
                    f"bare MPI Allreduce of {nb / 1e6:.3g} MB on the same {P} ranks, {lat_how}"),
    ]  # fmt: skip
    sharded = is_sharded(run)
    if sharded:
        for kind, key, what in (
            ("reduce_scatter", "bare_reduce_scatter_s", "Reduce_scatter"),
            ("allgather", "bare_allgather_s", "Allgather"),
        ):
            curves.append(
                _bare_curve(kind, P, nb, float(run[key]), (P - 1) * alpha,
                            f"bare MPI {what} of {nb / 1e6:.3g} MB on the same {P} ranks, {lat_how}")
            )  # fmt: skip
    if interference:
        inter = Interference(
            compute_slowdown=float(interference["compute_slowdown"]),
            comm_slowdown=float(interference["comm_slowdown"]),
            source="measured apart: " + str(interference.get("source", "the interference probe")).split(": ", 1)[-1],
        )
    else:
        inter = Interference(source="not measured: no interference simulated")
        assumptions.append("no interference between compute and the collectives (not measured)")
    cfg = StepConfig(
        ranks=P,
        shard=(run.get("shard") or "none") if sharded else "none",
        prefetch=bool(run.get("prefetch")) and sharded,
        bucket_mb=float(bucket_mb),
        first_bucket_mb=float(first_bucket_mb),
    )
    info = {"stretch": 1.0 if side else stretch, "compute_from": "side by side" if side else "alone",
            "assumptions": assumptions}  # fmt: skip
    return compute, update, CollectiveCosts(tuple(curves)), inter, cfg, info


def predict_run(share: dict, side: dict | None, run: dict, cores: int, **kw: Any) -> dict[str, Any]:
    """The simulated step of a measured run from :func:`run_inputs` (nothing the run measured of itself):
    the breakdown's model terms, the sources of the inputs and the assumptions."""
    compute, update, costs, inter, cfg, info = run_inputs(share, side, run, cores, **kw)
    res = simulate(compute, update, costs, inter, cfg)
    comm = res.backward_comm_s
    pred: dict[str, Any] = {
        "method": f"simulated (whygpu.predict.simulate), {cfg.label}",
        "step_s": res.step_s,
        "exposed_s": res.exposed_s,
        "buckets": len(res.buckets),
        # the simulated fraction of the gradients' collectives still waited for after the backward pass
        "exposed_fraction": res.exposed_s / comm if comm > 0 else 1.0,
        "sources": {
            "compute": compute.source,
            "update": update.source,
            "collectives": {c.kind: c.source for c in costs.curves},
            "interference": inter.source,
        },
        **info,
    }
    if cfg.shard != "none":
        pred.update(
            compute_s=res.compute_s,
            update_s=res.update_s,
            full_update_s=update.per_byte_s * sum(x.param_bytes for x in compute.layers),
            reduce_scatter_s=comm,
            allgather_s=res.allgather_s,
            comm_s=comm + res.allgather_s,
            overlap_s=max(0.0, comm - res.exposed_s),
            exposed_allgather_s=res.allgather_wait_s,
            allgather_exposed_fraction=min(1.0, res.allgather_wait_s / res.allgather_s) if res.allgather_s else 1.0,
        )
    else:  # as the measured compute_s: everything but the wait (the update included)
        pred.update(compute_s=res.compute_s + res.update_s, update_s=res.update_s, comm_s=comm,
                    overlap_s=max(0.0, comm - res.exposed_s))  # fmt: skip
    return pred


def check_run(
    share: dict,
    side: dict | None,
    run: dict,
    cores: int,
    *,
    widths: Sequence[int] | None = None,
    bucket_mb: float = 25.0,
    first_bucket_mb: float = 1.0,
    fit: dict | None = None,
    interference: dict | None = None,
) -> dict:
    """The step simulator's prediction of a measured P-rank step (:func:`predict_run`: terms measured apart
    only), then that prediction next to what the run measured, per term (``terms``: step, exposed, compute,
    the collectives in flight, update, allgather), and the step's ``error`` ((predicted - measured) /
    measured).  The measured times are read only here, after the prediction is made."""
    pred = predict_run(share, side, run, cores, widths=widths, bucket_mb=bucket_mb,
                       first_bucket_mb=first_bucket_mb, fit=fit, interference=interference)  # fmt: skip
    keys = ["step_s", "exposed_s", "compute_s", "update_s"]
    keys += ["reduce_scatter_s", "allgather_s", "exposed_allgather_s"] if is_sharded(run) else []
    terms = {k: {"predicted": pred[k], "measured": run.get(k)} for k in keys}
    terms["allreduce_s" if not is_sharded(run) else "reduce_scatter_s"] = {
        "predicted": pred["comm_s"] if not is_sharded(run) else pred["reduce_scatter_s"],
        "measured": run.get("allreduce_s") if not is_sharded(run) else run.get("reduce_scatter_s"),
    }
    for t in terms.values():
        m = t["measured"]
        t["error"] = (t["predicted"] - m) / m if m else None
    pred["terms"] = terms
    pred["error"] = (pred["step_s"] - run["step_s"]) / run["step_s"]
    return pred


def judge_run(share: dict, side: dict | None, run: dict, cores: int, **kw: Any) -> list[str]:
    """What makes a measured P-rank run untrustworthy ([] when nothing): DataParallel's allreduce below
    :data:`BANDWIDTH_FLOOR` of the bare Allreduce's bandwidth where it did not overlap the backward pass
    (exposed over in flight at least :data:`OVERLAP_FREE`), or a *model error*: the simulated step
    (:func:`check_run`, keywords passed on) off by more than :data:`MODEL_TOLERANCE`."""
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
    chk = check_run(share, side, run, cores, **kw)
    err = chk["error"]
    if abs(err) > MODEL_TOLERANCE:
        why.append(
            f"model error {100 * err:+.0f}% (beyond {100 * MODEL_TOLERANCE:.0f}%): the simulated step "
            f"{1e3 * chk['step_s']:.3g} ms against {1e3 * run['step_s']:.3g} ms measured"
        )
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
        pred = check_run(share, side, r, cores, **_check_kw(doc, fit))
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
    doc["model"] = {
        "formula": "T(P): one step of DataParallel simulated (whygpu.predict.simulate) from terms measured apart",
        "terms": "compute: the P ranks on their shares of the batch side by side without communicating, measured, "
        "split over the layers by their FLOPs (an assumption); the update: timed in that run; the allreduce of "
        "each bucket: a curve through the bare Allreduce of the gradient on the same P ranks, with the sweep's "
        "latency; interference: none unless a probe measured it. The exposed part follows from the schedule: "
        "each bucket's allreduce posted once its last layer's dW is done, beside the rest of the backward pass",
        "tolerance": MODEL_TOLERANCE,
        "bandwidth_floor": BANDWIDTH_FLOOR,
        "gradient_bytes": ref["bytes"] if ref else 4 * mlp_params(doc["params"]["widths"]),
        "alpha_s": fit["alpha_s"],
        "bandwidth_Bps": fit["bandwidth_Bps"],
        "formula_sharded": "T(P): the sharded step simulated -- reduce-scatters beside the backward pass, the "
        "update of this rank's 1/P shard, then the allgathers (with prefetch left in flight into the next "
        "forward pass)",
        "terms_sharded": "compute and the whole update as unsharded (the side-by-side run), the update of a "
        "shard 1/P of it; the reduce-scatter and allgather: curves through the bare Reduce_scatter and "
        "Allgather of the gradient's size on the same P ranks, each (P-1)/P * S/B on the wire (together the "
        "allreduce's 2(P-1)/P * S/B); what of them is waited for is simulated, not measured",
    }
    doc["summary"] = _summary(doc, ref)
    doc["summary"]["sharded"] = _sharded_summary(doc)
    doc["memory"] = memory_section(doc)
    doc["extrapolation"] = _extrapolate(doc, ref)
    return doc


def _check_kw(doc: dict, fit: dict | None = None) -> dict[str, Any]:
    """What :func:`check_run` takes from a document besides the runs: the layers, DataParallel's buckets,
    the sweep's fit and an interference probe where one was measured."""
    p = doc["params"]
    return {
        "widths": p.get("widths"),
        "bucket_mb": float(p.get("bucket_mb") or 25.0),
        "first_bucket_mb": float(p.get("first_bucket_mb") or 1.0),
        "fit": fit,
        "interference": doc.get("interference"),
    }


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


def _extrapolate(doc: dict, ref: dict | None) -> dict:
    """Strong and weak scaling curves for each of :data:`SYSTEMS` and three models (the MLP measured here,
    :data:`LARGER_MODEL`, :data:`RESNET50`), each point a simulated step on the system's own figures
    (:func:`whygpu.predict.extrapolate.extrapolation`).  What it takes from here, for the CPU systems only:
    the one-rank steps (c0 + c1 b fitted to them), the update they timed, the Allreduce sweep's fit (this
    machine's link) and an interference probe where one was measured.  Strong scaling stops at P = B;
    this machine at its cores."""
    p = doc["params"]
    widths, batch, cores = p["widths"], p["batch"], p["cores"]
    threads = ref["threads"] if ref else 1
    ones = [r for r in doc["runs"] if r["ranks"] == 1 and r["threads"] == threads]
    if not ones:
        return {}
    cf = fit_compute([(r["batch"], r["step_s"]) for r in ones])
    whole = next((r for r in ones if r["batch"] == batch and not r.get("share_of")), ones[0])
    cpu = CpuFigures(
        c0_s=cf["c0_s"],
        c1_s_per_sample=cf["c1_s_per_sample"],
        flops_per_sample=mlp_step_flops(widths, 1),
        bytes=4 * mlp_params(widths),
        threads=threads,
        update_s=whole.get("update_s"),
        interference=doc.get("interference"),
    )
    local = {
        "alpha_s": doc["fit"]["alpha_s"],
        "bandwidth_Bps": doc["fit"]["bandwidth_Bps"],
        "source": "measured here: fitted to the Allreduce sweep",
    }
    ex = extrapolation(
        widths, batch, cpu=cpu, local_link=local, max_local_ranks=max(1, cores // threads),
        optimizer=p.get("optimizer") or "sgd",
    )  # fmt: skip
    ex["compute_fit"] = cf
    return ex


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
        # the check while measuring: the same inputs as annotate's, but before the sweep (latency 0)
        judge=lambda share, side, run: judge_run(share, side, run, cores, widths=list(layers), bucket_mb=bucket_mb),
        shards=[shards] if isinstance(shards, str) and shards != "all" else shards,
        optimizer=optimizer,
        prefetch=prefetch,
    )
    return annotate(doc)
