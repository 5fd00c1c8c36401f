"""Splitting a large MLP over H100 nodes (issue 35): every layout dp x tp x pp of a cluster, its bytes per GPU,
whether it fits, and its step, extrapolated from public figures by the pipeline schedule's own timing and the step
simulator.  :func:`split_layouts` returns the document, :func:`layout_rows` its table.

The layout.  Tensor parallelism (tp) splits each (Linear, ReLU, Linear) pair as Megatron does: a column layer and
a row layer, one allreduce of the output forward ("g") and one of dX backward ("f").  tp divides the GPUs of a
node, so those allreduces stay on NVLink.  Pipeline parallelism (pp) cuts the pairs into pp contiguous stages of
equal counts (a pair is never cut).  Data parallelism (dp) copies the pipeline: dp = GPUs / (tp pp).  Ranks are
numbered tp first, then pp, then dp, so a stage boundary crosses nodes only where the ranks do, and a dp group
spans nodes once tp pp fills one.  Only layouts whose pipelines tile the nodes are drawn (tp pp divides a node,
or a node divides tp pp).

The batch.  Each of the dp replicas gets B / dp samples, in m micro-batches (default 4 pp, the largest divisor of
B / dp up to it: m >= 4 p keeps the 1F1B bubble near 20% or less).

Memory, per GPU, of the worst stage: its parameters, gradients and optimizer state (memory_model's bytes per
parameter, no ZeRO: each replica holds its stage whole), plus its activation stash.  A stage keeps, per micro-batch,
what whygpu.nn keeps: each Linear its input (for dW), each ReLU its input (for its mask); a column layer's input is
whole on every tp rank, the hidden layer is split.  The stash is the schedule's own peak
(``schedules.stash_peak``: min(m, p - r) on 1F1B's rank r, m on GPipe's).  Not counted: buffers in flight, the
framework, fragmentation.  So "fits" is optimistic.

Time.  Each product is 2 b fan_in fan_out / tp FLOPs at the H100's FP32 rate times its efficiency, plus a launch
(extrapolate.py's figures).  A stage's forward and backward per micro-batch also carry its tp allreduces (ring
on NVLink, not overlapped: the next product needs the sum) and the message to the next stage (alpha + S / B;
InfiniBand when the boundary crosses nodes; each tp rank sends the whole activation on its own NIC; not
overlapped with compute).  Those per-stage durations go to ``schedules.timed`` for the real schedule (GPipe or
1F1B), which gives when each stage's last backward ends; the bubble is that time less the stage's own work,
measured, not the closed form.  Then each stage's gradients are allreduced over its dp group (a ring of the
members inside a node on NVLink, a tree between nodes on InfiniBand on 1/k of the bytes) and updated at the HBM
bandwidth: :func:`~whygpu.predict.stepsim.simulate` replays DDP's buckets over that stage's last micro-batch, so
the allreduce overlaps the last backward and what stays exposed is simulated (the cool-down's idle gaps, which
could hide more, are not used).  The step is the latest stage's end.  A layout's parts are that stage's (stage 0
in both schedules), so they add up to the step: its kernels, tp allreduces, messages, its idle time inside the
pipeline (the bubble, which includes waiting on heavier stages: the first computes no dX for the model's input),
the exposed dp allreduce and the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..schedules import SCHEDULES, measured_bubble, schedule, stash_peak, timed
from ._inputs import SOURCES, CollectiveCosts, CollectiveCurve, ComputeTimes, Interference, LayerTimes, UpdateCost
from .extrapolate import DDP_BUCKET_MB, DDP_FIRST_BUCKET_MB, UPDATE_TRAFFIC
from .memory_model import OPTIMIZER_STATE_FLOATS, bytes_per_param
from .scaleout_model import H100, INTERCONNECTS, mlp_params, mlp_step_flops
from .stepsim import StepConfig, simulate

__all__ = ["DEFAULT_WIDTHS", "PARTS", "split_layouts", "pipeline_time", "layout_rows"]

# A deep, wide MLP: 16 pairs 8192 -> 32768 -> 8192 (the transformer's 4x MLP, without the attention), 32 Linears,
# 8.6e9 parameters: 137 GB of fp32 Adam state, more than an 80 GB GPU holds, so pure data parallelism cannot run.
DEFAULT_WIDTHS: tuple[int, ...] = (8192,) + (32768, 8192) * 16
DEFAULT_BATCH = 8192
ITEMSIZE = 4  # float32
PARTS = ("compute_s", "tp_allreduce_s", "p2p_s", "bubble_s", "dp_exposed_s", "update_s")
_PART_NAMES = {
    "compute_s": "compute",
    "tp_allreduce_s": "tensor-parallel allreduces",
    "p2p_s": "pipeline messages",
    "bubble_s": "the pipeline bubble",
    "dp_exposed_s": "the data-parallel allreduce (exposed)",
    "update_s": "the optimizer update",
}


def _whole(what: str, v: object, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{what} must be a whole number of at least {low}, got {v!r}")
    return int(v)


def _figures(figures: dict | None) -> dict[str, dict]:
    """The GPU and its two links: extrapolate.py's public figures, each overridable (a test plants its own)."""
    figs = {
        "gpu": dict(H100),
        "intra": {"name": "NVLink 4", **INTERCONNECTS["NVLink 4"]},
        "inter": {"name": "InfiniBand NDR", **INTERCONNECTS["InfiniBand NDR"]},
    }
    for key, over in (figures or {}).items():
        if key not in figs:
            raise ValueError(f"figures has {key!r}: the figures are gpu, intra (NVLink) and inter (InfiniBand)")
        figs[key] = {**figs[key], **over}
    for key, f in figs.items():
        src = str(f.get("source", ""))
        if not any(src == s or src.startswith(s + ":") for s in SOURCES):
            raise ValueError(f"figures[{key!r}] needs a source starting with one of {', '.join(SOURCES)}")
    return figs


def _pieces(widths: Sequence[int]) -> list[tuple[int, ...]]:
    """The model's Linears as units a stage holds whole: (column, row) pairs, a last odd Linear alone."""
    n = len(widths) - 1
    return [tuple(range(i, min(i + 2, n))) for i in range(0, n, 2)]


def _split(n: int, parts: int) -> list[int]:
    """n units in ``parts`` contiguous groups of equal counts, the first n % parts one larger."""
    return [n // parts + (1 if r < n % parts else 0) for r in range(parts)]


def _ring_s(nbytes: float, ranks: int, link: dict) -> float:
    """A ring allreduce on one link: 2(P-1) alpha + 2(P-1)/P S/B (0 for one rank)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * link["alpha_s"] + 2 * (ranks - 1) / ranks * nbytes / link["bandwidth_Bps"]


def _dp_curve(dp: int, per_node: int, figs: dict) -> tuple[CollectiveCurve, str]:
    """The allreduce over a dp group with ``per_node`` members in each node: a ring of them on NVLink, a tree
    between the dp / per_node nodes on InfiniBand on 1/per_node of the bytes (extrapolate.py's hierarchy)."""
    k, nodes = per_node, dp // per_node
    intra, inter = figs["intra"], figs["inter"]
    lat = 2 * (k - 1) * intra["alpha_s"] + 2 * math.ceil(math.log2(nodes)) * inter["alpha_s"]
    per_byte = 2 * (k - 1) / k / intra["bandwidth_Bps"] + 2 * (nodes - 1) / nodes / k / inter["bandwidth_Bps"]
    how = f"a ring of {k} on {intra['name']}" + (f", a tree of {nodes} nodes on {inter['name']}" if nodes > 1 else "")
    src = f"public figure: {how}; {intra['source']}; {inter['source']}"
    curve = CollectiveCurve("allreduce", dp, lat, math.inf if per_byte <= 0 else 1 / per_byte, src)
    return curve, how


def _stage(widths: Sequence[int], layers: Sequence[int], tp: int, b: int, figs: dict) -> dict[str, Any]:
    """One GPU of a stage (the tp rank with the largest share) on a micro-batch of b: its kernels, tp allreduces,
    parameters and stashed activation elements, and its layers as the simulator's LayerTimes."""
    gpu, nv = figs["gpu"], figs["intra"]
    rate, launch = gpu["peak_gflops"] * 1e9 * gpu["efficiency"], gpu["launch_s"]
    n_lin, paired = len(widths) - 1, (len(widths) - 1) // 2 * 2
    out: dict[str, Any] = {"compute_f": 0.0, "compute_b": 0.0, "tp_f": 0.0, "tp_b": 0.0, "params": 0, "acts": 0}
    times = []
    for i in layers:
        fin, fout = widths[i], widths[i + 1]
        role = "replicated" if i >= paired else ("column" if i % 2 == 0 else "row")
        a = -(-fin // tp) if role == "row" else fin  # this rank's share of the product's inner size
        c = -(-fout // tp) if role == "column" else fout
        out["params"] += a * c + c  # a row layer's bias is whole on every rank, added once after the sum
        prod = launch + 2.0 * b * a * c / rate
        dx = prod if i > 0 else 0.0  # nobody needs the model input's gradient
        tp_f = _ring_s(ITEMSIZE * b * fout, tp, nv) if role == "row" else 0.0  # g: sum the output
        tp_b = _ring_s(ITEMSIZE * b * fin, tp, nv) if role == "column" and i > 0 else 0.0  # f: sum dX
        out["compute_f"] += prod
        out["compute_b"] += prod + dx
        out["tp_f"] += tp_f
        out["tp_b"] += tp_b
        out["acts"] += b * a + (b * c if i < n_lin - 1 else 0)  # the Linear's input, its ReLU's input
        times.append(LayerTimes(prod + tp_f, prod, dx + tp_b, ITEMSIZE * (a * c + c), f"layer {i}"))
    out["layer_times"] = tuple(times)
    return out


def pipeline_time(forward_s: Sequence[float], backward_s: Sequence[float], m: int, name: str = "1f1b") -> dict:
    """The real schedule ``name`` of p = len(forward_s) stages and m micro-batches timed by its dependencies
    (``schedules.timed``: each action starts once its rank is free and what it waits for is done): each stage's
    ``end_s`` (its last action), ``busy_s`` (m (t_f + t_b)), ``pipeline_s`` (the last end), ``bubble`` (idle
    rank-time / (p x pipeline_s), measured) and ``stash`` (``schedules.stash_peak``)."""

    p = len(forward_s)
    sched = schedule(name, p, m)
    timing = timed(sched.ranks, list(forward_s), list(backward_s))
    ends = [max(t.end for t in lane) for lane in timing]
    return {
        "end_s": ends,
        "busy_s": [m * (f + b) for f, b in zip(forward_s, backward_s)],
        "pipeline_s": max(ends),
        "bubble": measured_bubble(timing),
        "stash": stash_peak(sched.ranks),
    }


def _default_m(per_replica: int, pp: int) -> int:
    return max(d for d in range(1, min(per_replica, 4 * pp) + 1) if per_replica % d == 0)


def _layouts(total: int, g: int, n_pieces: int, batch: int, given: Sequence | None) -> list[tuple[int, int, int]]:
    """(dp, tp, pp) to draw: the given (tp, pp) checked, or every tp dividing a node and pp whose pipelines tile
    the nodes, with at least one pair per stage and a sample per replica."""
    if given is None:
        out = []
        for tp in (d for d in range(1, g + 1) if g % d == 0):
            for pp in (d for d in range(1, total // tp + 1) if (total // tp) % d == 0):
                tiles = g % (tp * pp) == 0 or (tp * pp) % g == 0
                if tiles and pp <= n_pieces and batch % (total // (tp * pp)) == 0:
                    out.append((total // (tp * pp), tp, pp))
        return out
    out = []
    for item in given:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"a layout is (tp, pp), got {item!r}")
        tp, pp = _whole("tp", item[0]), _whole("pp", item[1])
        if g % tp:
            raise ValueError(f"tp = {tp} does not divide gpus_per_node = {g}: tensor parallelism stays in a node")
        if total % (tp * pp):
            raise ValueError(f"tp x pp = {tp * pp} does not divide the {total} GPUs: dp would not be whole")
        if g % (tp * pp) and (tp * pp) % g:
            raise ValueError(f"tp x pp = {tp * pp} pipelines do not tile nodes of {g} GPUs")
        if pp > n_pieces:
            raise ValueError(f"pp = {pp} stages but the model has only {n_pieces} (Linear, ReLU, Linear) pairs")
        if batch % (total // (tp * pp)):
            raise ValueError(f"the global batch {batch} does not split over dp = {total // (tp * pp)} replicas")
        out.append((total // (tp * pp), tp, pp))
    return out


def _evaluate(widths, dp, tp, pp, m, b, g, schedule, optimizer, figs, mem_bytes, cache) -> dict[str, Any]:
    pieces = _pieces(widths)
    counts, stage_layers, at = _split(len(pieces), pp), [], 0
    for c in counts:
        stage_layers.append([i for piece in pieces[at : at + c] for i in piece])
        at += c
    stages = [_stage(widths, ls, tp, b, figs) for ls in stage_layers]
    # messages: stage s sends its output forward (in its F) and stage s + 1 sends its dX back (in its B)
    for st in stages:
        st["send_f"] = st["send_b"] = 0.0
    boundaries, crossing = [], []
    for s in range(pp - 1):
        crosses = (tp * (s + 1)) % g == 0
        crossing.append(crosses)
        link = figs["inter" if crosses else "intra"]
        t = link["alpha_s"] + ITEMSIZE * b * widths[stage_layers[s + 1][0]] / link["bandwidth_Bps"]
        stages[s]["send_f"] += t
        stages[s + 1]["send_b"] += t
        boundaries.append(link["name"])
    fwd = [st["compute_f"] + st["tp_f"] + st["send_f"] for st in stages]
    bwd = [st["compute_b"] + st["tp_b"] + st["send_b"] for st in stages]
    pipe = pipeline_time(fwd, bwd, m, schedule)
    # the data-parallel allreduce of each stage's gradients and its update, simulated over its last micro-batch
    per_node = max(1, g // (tp * pp))
    curve, dp_how = _dp_curve(dp, min(per_node, dp), figs)
    traffic = UPDATE_TRAFFIC[optimizer]
    gpu = figs["gpu"]
    upd = UpdateCost(_sim_src(gpu["source"]), per_byte_s=traffic / gpu["hbm_Bps"], per_call_s=gpu["launch_s"])
    inter = Interference(source="assumed: no interference, NCCL runs on its own SMs and copy engines")
    bpp = bytes_per_param("none", 1, "fp32", optimizer)
    ddp = StepConfig(dp, bucket_mb=DDP_BUCKET_MB, first_bucket_mb=DDP_FIRST_BUCKET_MB)  # DDP's buckets
    rows = []
    for r, st in enumerate(stages):
        key = (st["layer_times"], dp, curve.latency_s, curve.bandwidth_Bps)
        if key not in cache:
            ct = ComputeTimes(st["layer_times"], source=_sim_src(gpu["source"]))
            res = simulate(ct, upd, CollectiveCosts((curve,)), inter, ddp)
            cache[key] = (res.exposed_s, res.update_s, math.fsum(c.bare_s for c in res.collectives))
        exposed, update, dp_all = cache[key]
        state = {k: bpp[k] * st["params"] for k in ("params", "grads", "optimizer")}
        act = ITEMSIZE * st["acts"]
        total = sum(state.values()) + pipe["stash"][r] * act
        parts = {
            "compute_s": m * (st["compute_f"] + st["compute_b"]),
            "tp_allreduce_s": m * (st["tp_f"] + st["tp_b"]),
            "p2p_s": m * (st["send_f"] + st["send_b"]),
            "bubble_s": pipe["end_s"][r] - pipe["busy_s"][r],
            "dp_exposed_s": exposed,
            "update_s": update,
        }
        rows.append(
            {
                "stage": r,
                "layers": stage_layers[r],
                "params": st["params"],
                "forward_s": fwd[r],
                "backward_s": bwd[r],
                "end_s": pipe["end_s"][r],
                "finish_s": pipe["end_s"][r] + exposed + update,
                "dp_allreduce_s": dp_all,
                "parts": parts,
                "memory": {
                    **{k + "_bytes": v for k, v in state.items()},
                    "state_bytes": sum(state.values()),
                    "activation_bytes_per_micro": act,
                    "stash_micro_batches": pipe["stash"][r],
                    "activation_bytes": pipe["stash"][r] * act,
                    "total_bytes": total,
                },
            }
        )
    crit = max(rows, key=lambda x: x["finish_s"])
    worst = max(rows, key=lambda x: x["memory"]["total_bytes"])
    largest = max(PARTS, key=lambda k: crit["parts"][k])
    return {
        "label": f"dp {dp} x tp {tp} x pp {pp}",
        "dp": dp,
        "tp": tp,
        "pp": pp,
        "m": m,
        "micro_batch": b,
        "schedule": schedule,
        "boundaries": boundaries,
        "pipeline_crosses_nodes": any(crossing),
        "dp_group": dp_how if dp > 1 else "none (dp = 1)",
        "memory": {**worst["memory"], "worst_stage": worst["stage"]},
        "fits": worst["memory"]["total_bytes"] <= mem_bytes,
        "step_s": crit["finish_s"],
        "critical_stage": crit["stage"],
        "parts": dict(crit["parts"]),
        "dp_allreduce_s": crit["dp_allreduce_s"],
        "bubble_fraction": pipe["bubble"],
        "pipeline_s": pipe["pipeline_s"],
        "largest": largest,
        "stages": rows,
    }


def _sim_src(text: str) -> str:
    return text if any(text == s or text.startswith(s + ":") for s in SOURCES) else "assumed: " + text


def split_layouts(
    widths: Sequence[int] = DEFAULT_WIDTHS,
    global_batch: int = DEFAULT_BATCH,
    nodes: int = 4,
    gpus_per_node: int = 8,
    micro_batches: int | None = None,
    schedule: str = "1f1b",
    optimizer: str = "adam",
    precision: str = "fp32",
    memory_gb: float = 80.0,
    *,
    layouts: Sequence[tuple[int, int]] | None = None,
    figures: dict | None = None,
) -> dict[str, Any]:
    """Every layout dp x tp x pp of ``nodes`` x ``gpus_per_node`` GPUs for the MLP of ``widths`` trained on
    ``global_batch`` samples a step (or only the given ``layouts``, as (tp, pp)): its bytes per GPU, whether
    they fit in ``memory_gb`` (1e9 bytes), the step and its parts (see the module's docstring), the fastest
    layout that fits and a sentence saying why.  ``micro_batches``: m for every layout (a layout whose B / dp
    it does not divide is skipped, and listed), None: 4 pp or the largest divisor of B / dp below it.
    ``figures``: overrides of the GPU ("gpu") and links ("intra", "inter"), each with a source.  JSON-ready.
    Raises ValueError naming a bad argument."""
    w = list(widths) if isinstance(widths, (list, tuple)) else widths
    if not isinstance(w, list) or len(w) < 2:
        raise ValueError(f"widths must list at least 2 layer widths (one Linear), got {widths!r}")
    for x in w:
        _whole("every width", x)
    batch = _whole("global_batch", global_batch)
    n_nodes, g = _whole("nodes", nodes), _whole("gpus_per_node", gpus_per_node)
    if micro_batches is not None:
        _whole("micro_batches (m; None: 4 x pp)", micro_batches)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}: the schedules are {', '.join(SCHEDULES)}")
    if optimizer not in OPTIMIZER_STATE_FLOATS or optimizer not in UPDATE_TRAFFIC:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_FLOATS)}, got {optimizer!r}")
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32' (the H100 figures here are FP32 ones), got {precision!r}")
    if isinstance(memory_gb, bool) or not isinstance(memory_gb, (int, float)) or not memory_gb > 0:
        raise ValueError(f"memory_gb must be a number of GB above 0, got {memory_gb!r}")
    figs = _figures(figures)
    total = n_nodes * g
    todo = _layouts(total, g, len(_pieces(w)), batch, layouts)
    if not todo:
        raise ValueError(f"no layout of {total} GPUs splits the batch {batch} and the model's pairs")
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    cache: dict = {}
    for dp, tp, pp in todo:
        per = batch // dp
        m = _default_m(per, pp) if micro_batches is None else int(micro_batches)
        if per % m:
            why = f"B / dp = {per} samples per replica do not split into m = {m} micro-batches"
            if layouts is not None:
                raise ValueError(f"dp {dp} x tp {tp} x pp {pp}: {why}")
            skipped.append({"dp": dp, "tp": tp, "pp": pp, "why": why})
            continue
        out.append(_evaluate(w, dp, tp, pp, m, per // m, g, schedule, optimizer, figs, memory_gb * 1e9, cache))
    if not out:
        raise ValueError(f"no layout can run: {'; '.join(s['why'] for s in skipped)}")
    n = mlp_params(w)
    bpp = bytes_per_param("none", 1, "fp32", optimizer)["total"]
    result: dict[str, Any] = {
        "model": {
            "name": "MLP " + "-".join(map(str, w))
            if len(w) <= 6
            else f"MLP of {len(w) - 1} Linears, widths {w[:3]}...",
            "widths": w,
            "params": n,
            "flops_per_sample": mlp_step_flops(w, 1),
            "bytes_per_param": bpp,
            "state_bytes": bpp * n,
        },
        "cluster": {"nodes": n_nodes, "gpus_per_node": g, "gpus": total, "memory_gb": float(memory_gb)},
        "global_batch": batch,
        "schedule": schedule,
        "optimizer": optimizer,
        "precision": precision,
        "layouts": sorted(out, key=lambda x: (x["tp"] * x["pp"], x["tp"])),
        "skipped": skipped,
        "inputs": _inputs(figs, w, batch, memory_gb, micro_batches, optimizer, schedule),
        "method": "per layout: per-stage forward and backward times (kernels, tensor-parallel allreduces, pipeline "
        "messages) timed by whygpu.schedules.timed on the real schedule; each stage's data-parallel "
        "allreduce and update simulated by whygpu.predict.simulate (DDP's buckets over its last micro-batch)",
    }
    fitting = [x for x in out if x["fits"]]
    result["fastest"] = min(fitting, key=lambda x: x["step_s"])["label"] if fitting else None
    result["why"] = _explain(result)
    return result


def _inputs(figs, widths, batch, memory_gb, m, optimizer, schedule) -> list[dict[str, Any]]:
    """Every input of the prediction with its source, in extrapolate.py's words."""
    gpu, nv, ib = figs["gpu"], figs["intra"], figs["inter"]
    default_model = tuple(widths) == DEFAULT_WIDTHS
    return [
        {"name": "compute", "value": gpu["peak_gflops"] * gpu["efficiency"] * 1e9, "source": gpu["source"]},
        {"name": "kernel launch", "value": gpu["launch_s"], "source": gpu["source"]},
        {"name": "HBM bandwidth (update)", "value": gpu["hbm_Bps"], "source": gpu["source"]},
        {"name": f"{nv['name']} (tp allreduces, dp inside a node)", "value": nv["bandwidth_Bps"],
         "source": nv["source"]},
        {"name": f"{ib['name']} (pipeline messages and dp between nodes)", "value": ib["bandwidth_Bps"],
         "source": ib["source"]},
        {"name": "memory per GPU", "value": memory_gb * 1e9,
         "source": "public figure: NVIDIA H100 SXM, 80 GB HBM3" if memory_gb == 80 else "assumed: the caller's"},
        {"name": "model", "value": list(widths), "source": "assumed: " + (
            "a deep, wide MLP chosen so that its fp32 Adam state (137 GB) outgrows one 80 GB GPU"
            if default_model else "the caller's widths")},
        {"name": "global batch", "value": batch, "source": "assumed: the caller's (or the default)"},
        {"name": "micro-batches", "value": m if m is not None else "4 pp (or the largest divisor of B / dp below)",
         "source": "assumed: m >= 4 p keeps the 1F1B bubble near 20% or less (Narayanan et al. 2021)"},
        {"name": "schedule", "value": schedule, "source": "assumed: the caller's; timed by its dependencies"},
        {"name": "optimizer state", "value": bytes_per_param("none", 1, "fp32", optimizer)["total"],
         "source": "public figure: ZeRO (Rajbhandari et al. 2020): fp32 4 + 4 bytes, Adam 8 more, no sharding"},
        {"name": "update traffic", "value": UPDATE_TRAFFIC[optimizer],
         "source": "assumed: the update is memory-bound, bytes moved per byte of parameters"},
        {"name": "activation stash", "value": "each Linear's and each ReLU's input per stashed micro-batch",
         "source": "assumed: what whygpu.nn keeps for the backward pass; buffers in flight not counted"},
        {"name": "tensor-parallel allreduces", "value": "a ring of tp on NVLink, in the critical path",
         "source": "assumed: Megatron's f and g block the next product"},
        {"name": "pipeline messages", "value": "alpha + S / B per micro-batch and boundary, added to the sender",
         "source": "assumed: not overlapped with compute; every tp rank sends the whole activation on its NIC"},
        {"name": "data-parallel allreduce", "value": "overlapped with the last micro-batch's backward",
         "source": "assumed: DDP's buckets (25 MiB, the first 1 MiB), simulated by whygpu.predict.simulate"},
        {"name": "interference", "value": 1.0,
         "source": "assumed: none, NCCL runs on its own SMs and copy engines beside the kernels"},
        {"name": "placement", "value": "tp, then pp, then dp", "source": "assumed: ranks numbered tp first"},
    ]  # fmt: skip


def _ms(s: float) -> str:
    return f"{1e3 * s:.4g} ms"


def _explain(result: dict) -> str:
    """The sentence that names the fastest layout that fits and the term that decides."""
    lays, mem = result["layouts"], result["cluster"]["memory_gb"]
    model = result["model"]
    said = []
    pure = next((x for x in lays if x["tp"] == 1 and x["pp"] == 1), None)
    if pure is not None and not pure["fits"]:
        state = model["state_bytes"] / 1e9
        if state > mem:
            said.append(
                f"pure data parallel does not fit: {model['bytes_per_param']:g} bytes/param x {model['params']:.3g} "
                f"params = {state:.4g} GB > {mem:g} GB"
            )
        else:
            said.append(
                f"pure data parallel does not fit: {state:.4g} GB of state + "
                f"{pure['memory']['activation_bytes'] / 1e9:.4g} GB of activations > {mem:g} GB"
            )
    fitting = sorted((x for x in lays if x["fits"]), key=lambda x: x["step_s"])
    if not fitting:
        least = min(lays, key=lambda x: x["memory"]["total_bytes"])
        said.append(
            f"no layout fits: the smallest, {least['label']}, needs {least['memory']['total_bytes'] / 1e9:.4g} GB "
            f"a GPU > {mem:g} GB"
        )
        return "; ".join(said) + "."
    best = fitting[0]
    head = (
        f"{best['label']} (m = {best['m']}) is the fastest of the {len(fitting)} layouts that fit "
        f"({len(lays)} drawn): {_ms(best['step_s'])} a step, its largest term {_PART_NAMES[best['largest']]} "
        f"({_ms(best['parts'][best['largest']])})"
    )
    said.insert(0, head)
    if len(fitting) > 1:
        nxt = fitting[1]
        diff = {k: nxt["parts"][k] - best["parts"][k] for k in PARTS}
        lose, gain = max(PARTS, key=diff.__getitem__), min(PARTS, key=diff.__getitem__)
        text = (
            f"the next, {nxt['label']}, takes {_ms(nxt['step_s'])} ({100 * (nxt['step_s'] / best['step_s'] - 1):.2g}% "
            f"more): it loses most on {_PART_NAMES[lose]} "
            f"({_ms(nxt['parts'][lose])} against {_ms(best['parts'][lose])})"
        )
        if diff[gain] < 0:
            text += (
                f" and gains most on {_PART_NAMES[gain]} ({_ms(nxt['parts'][gain])} against {_ms(best['parts'][gain])})"
            )
        said.append(text)
    faster = [x for x in lays if not x["fits"] and x["step_s"] < best["step_s"]]
    if faster:
        f = min(faster, key=lambda x: x["step_s"])
        said.append(
            f"{f['label']} would be faster ({_ms(f['step_s'])}) but needs "
            f"{f['memory']['total_bytes'] / 1e9:.4g} GB a GPU"
        )
    return "; ".join(said) + "."


LAYOUT_HEAD = ["dp x tp x pp", "m", "GB per GPU", "fits", "step ms", "bubble %", "largest term"]


def layout_rows(result: dict) -> list[list[str]]:
    """The report's table: a header, then one row per layout (the fastest that fits marked with *)."""
    rows = [list(LAYOUT_HEAD)]
    for x in result["layouts"]:
        star = " *" if x["label"] == result.get("fastest") else ""
        rows.append(
            [
                f"{x['dp']} x {x['tp']} x {x['pp']}{star}",
                str(x["m"]),
                f"{x['memory']['total_bytes'] / 1e9:.3g}",
                "yes" if x["fits"] else "no",
                f"{1e3 * x['step_s']:.4g}",
                f"{100 * x['bubble_fraction']:.3g}",
                f"{_PART_NAMES[x['largest']]} ({1e3 * x['parts'][x['largest']]:.3g} ms)",
            ]
        )
    return rows
