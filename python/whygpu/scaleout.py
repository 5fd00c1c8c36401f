"""The cost model of data-parallel training on P ranks, measured term by term on this machine, checked
against the step it predicts, and extrapolated to named systems (their public figures).

Data parallelism gives each of P ranks (processes: machines, GPUs, or here the
cores of one box) a slice of the batch and a full copy of the model; after the
backward pass the ranks sum their gradients with an *allreduce*, so every copy
takes the same step.  The model of one step is::

    T(P) = T_compute(b)  +  e * T_allreduce(S, P)

* ``T_compute(b)`` -- one rank's step on its share ``b`` of the global batch
  (strong scaling: b = B/P; weak scaling: b = B).  On this machine it is
  *measured*: one rank alone on B/P samples with the threads each of the P
  ranks gets (not T_compute(B)/P: a smaller batch runs each product less
  efficiently and keeps the per-step costs whole).  P ranks that share fewer
  cores than they need take turns, so their compute is stretched by
  P*T/cores.
* ``T_allreduce(S, P)`` -- summing S bytes of gradient over P ranks: on the
  wire 2(P-1)/P * S/B (a ring, or reduce-scatter + all-gather: each rank
  sends and receives almost twice the gradient, Patarasuk & Yuan 2009,
  nccl-tests' PERFORMANCE.md), plus a latency alpha per step of the
  algorithm and per bucket: 2(P-1) steps for a ring, 2 log2 P for a tree
  (what MPI's large allreduce and NCCL between nodes use).  On this machine
  it is the bare MPI Allreduce of the gradient's size measured on P ranks;
  alpha and B are fitted (:func:`fit_alpha_bandwidth`) to a sweep of sizes
  for the extrapolation.
* ``e`` -- the exposed fraction: the part of the allreduce still waited for
  after the backward pass, measured (DataParallel's ``exposed_s`` over its
  ``allreduce_s``); 1 - e of it hid behind the backward pass.

Sharded (ZeRO stage 1, ``shard="optimizer"``; stage 2, ``shard="gradients"``): the allreduce becomes a
*reduce-scatter* (each rank receives the sum of its 1/P shard of the gradient only: (P-1)/P * S/B on
the wire) after the backward pass, each rank updates its shard (1/P of the optimizer's work), and an
*allgather* of the updated parameters ((P-1)/P * S/B again) -- together the ring allreduce's
2(P-1)/P * S/B::

    T(P) = T_compute(B/P) - T_update + e * T_reduce_scatter(S, P) + T_update / P + T_allgather(S, P)

with ``T_update`` the full optimizer update (measured in the side-by-side run, where each rank
updates everything), the bare Reduce_scatter and Allgather measured on the same ranks, and ``e``
DataParallel's exposed / reduce-scatter; the allgather is counted whole (it ends the step).

The check: this prediction against the measured P-rank step, within 25%
(:data:`MODEL_TOLERANCE`) or the run is measured again and then flagged.
Other systems (:data:`SYSTEMS`) use the compute of their own device -- this
machine's CPU, or a public H100 figure -- and their own links: NVLink inside
a node of 8 GPUs and InfiniBand between nodes (a hierarchical allreduce).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

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
    "ring_allreduce_s",
    "reduce_scatter_s",
    "allgather_s",
    "predict_sharded_step",
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
]

# A model error beyond this (|predicted - measured| / measured) is measured again, then flagged, not explained.
MODEL_TOLERANCE = 0.25
# DataParallel's allreduce below this fraction of the bare Allreduce's bandwidth: the same, measured again.
BANDWIDTH_FLOOR = 0.5

# Public figures for the links the model extrapolates to: *not measured here*.
# Bandwidth is per direction per rank (what an allreduce's sends use); alpha is the
# latency of one message, the figure a small MPI / NCCL message sees.
INTERCONNECTS: dict[str, dict[str, Any]] = {
    "10 GbE": {
        "bandwidth_Bps": 1.25e9,  # 10 Gb/s line rate = 1.25 GB/s (IEEE 802.3ae)
        "alpha_s": 25e-6,  # 10-50 us for an MPI message over TCP/IP
        "source": "public figure: IEEE 802.3ae line rate 10 Gb/s = 1.25 GB/s; MPI over TCP latency ~10-50 us",
    },
    "InfiniBand EDR": {
        "bandwidth_Bps": 12.5e9,  # 100 Gb/s (4 lanes x 25 Gb/s)
        "alpha_s": 1.5e-6,  # ~1-2 us MPI latency
        "source": "public figure: InfiniBand Trade Association roadmap, EDR 4x = 100 Gb/s = 12.5 GB/s; "
        "MPI latency ~1-2 us (NVIDIA/Mellanox ConnectX product briefs)",
    },
    "NVLink 4": {
        "bandwidth_Bps": 450e9,  # 900 GB/s total = 450 GB/s per direction per GPU
        "alpha_s": 3e-6,  # a few us for a small NCCL allreduce step
        "source": "public figure: NVIDIA H100 SXM datasheet, NVLink 900 GB/s total = 450 GB/s per direction, "
        "8 GPUs per HGX/DGX node; latency a few us per step (nccl-tests)",
    },
    "InfiniBand NDR": {
        "bandwidth_Bps": 50e9,  # 400 Gb/s per GPU: DGX H100 has one ConnectX-7 NIC per GPU
        "alpha_s": 5e-6,  # NCCL between nodes: several us per step
        "source": "public figure: NVIDIA DGX H100 user guide, 8 x ConnectX-7 400 Gb/s (50 GB/s) NICs, one per "
        "GPU; NCCL inter-node latency ~5 us per step (nccl-tests)",
    },
}

# The H100's compute, public figures (the same SGEMM figure as the report's GPU section, report/gpu.py):
# NVIDIA H100 SXM datasheet, FP32 67 TFLOP/s peak; cuBLAS float32 SGEMM reaches about 50 TFLOP/s on it.
# The model trains in float32 like the CPU here.  A step is at least its kernel launches: ~5 us each
# (CUDA's launch overhead), 3 per layer (forward, two products in backward).
H100: dict[str, Any] = {
    "name": "H100 SXM",
    "gflops": 50_000.0,
    "launch_s": 5e-6,
    "launches_per_layer": 3,
    "source": "public figure: NVIDIA H100 SXM datasheet (FP32 67 TFLOP/s peak), ~50 TFLOP/s float32 SGEMM; "
    "~5 us per kernel launch, 3 launches per layer",
}

# The larger models the extrapolation adds next to the measured MLP: a 4096-wide MLP (its compute and
# gradient both grow with width squared, so the ratio of the two stays where the batch puts it), and a
# convolutional network, which reuses each weight at every pixel: far more FLOPs per byte of gradient.
LARGER_MODEL: tuple[int, ...] = (784, 4096, 4096, 4096, 10)
RESNET50: dict[str, Any] = {
    "name": "ResNet-50 (public figures)",
    "params": 25_557_032,  # torchvision's resnet50 weights table
    # ~4.1e9 multiply-adds forward per 224x224 image (He et al. 2016 give 3.8e9; torchvision lists 4.09 "GFLOPS",
    # multiply-adds): 2 FLOPs each, and backward about twice forward
    "flops_per_sample": 3 * 2 * 4.1e9,
    "layers": 54,  # 53 convolutions and the classifier
    "source": "public figure: torchvision's resnet50 (25.6 M parameters, 4.09 G multiply-adds forward per image)",
}
EXTRAPOLATION_RANKS: tuple[int, ...] = tuple(2**i for i in range(11))  # 1, 2, 4, ..., 1024

# The systems the extrapolation draws, each with the compute of its own device.  "cpu": a rank computes
# like a rank measured here; "gpu": like the public H100 figure.  Links: one flat link, or NVLink inside a
# node and InfiniBand between nodes (hierarchical).  "this machine" is never drawn past its cores.
SYSTEMS: tuple[dict[str, Any], ...] = (
    {"name": "this machine (shared memory)", "device": "cpu", "link": "fit", "latency": "ring"},
    {"name": "10 GbE, CPU nodes like this one", "device": "cpu", "link": "10 GbE", "latency": "tree"},
    {"name": "InfiniBand EDR, CPU nodes like this one", "device": "cpu", "link": "InfiniBand EDR", "latency": "tree"},
    {
        "name": "H100: NVLink 4 in a node of 8, InfiniBand NDR between nodes",
        "device": "gpu",
        "link": "NVLink 4",
        "inter": "InfiniBand NDR",
        "per_node": 8,
        "latency": "ring",  # NCCL: a ring inside the node, a tree between nodes
    },
)

# Published scaling figures, each drawn beside the curves of its own kind of scaling.
PUBLIC_SCALING: tuple[dict[str, Any], ...] = (
    {
        "scaling": "weak",
        "ranks": 512,
        "efficiency": 0.90,
        "label": "Horovod, ResNet-101 on 512 GPUs (public, weak scaling)",
        "source": "Sergeev & Del Balso 2018, 'Horovod: fast and easy distributed deep learning in TensorFlow', "
        "fig. 6: ~90% scaling efficiency for Inception V3 and ResNet-101 on 512 Pascal GPUs, a fixed batch per GPU",
    },
)


def ring_allreduce_s(nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float) -> float:
    """Seconds of a ring allreduce of ``nbytes`` over ``ranks`` ranks: 2(P-1) alpha + 2(P-1)/P S/B (0 for P = 1)."""
    return allreduce_s(nbytes, ranks, alpha_s, bandwidth_Bps, latency="ring")


def allreduce_s(
    nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float, *, latency: str = "ring", buckets: int = 1
) -> float:
    """An allreduce of ``nbytes`` in ``buckets`` allreduces over one link: 2(P-1)/P S/B on the wire (however
    it is split), and per bucket 2(P-1) latencies (ring) or 2 ceil(log2 P) (tree: reduce then broadcast,
    or recursive halving and doubling)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if latency not in ("ring", "tree"):
        raise ValueError(f"latency must be 'ring' or 'tree', got {latency!r}")
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if ranks == 1:
        return 0.0
    steps = 2 * (ranks - 1) if latency == "ring" else 2 * math.ceil(math.log2(ranks))
    return buckets * steps * alpha_s + 2 * (ranks - 1) / ranks * nbytes / bandwidth_Bps


# DataParallel's shard settings the scale-out measures (ZeRO stages 0, 1, 2), in order.
SHARDS: tuple[str, ...] = ("none", "optimizer", "gradients")


def _half_collective_s(nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float, latency: str, buckets: int):
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if latency not in ("ring", "tree"):
        raise ValueError(f"latency must be 'ring' or 'tree', got {latency!r}")
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if ranks == 1:
        return 0.0
    steps = ranks - 1 if latency == "ring" else math.ceil(math.log2(ranks))
    return buckets * steps * alpha_s + (ranks - 1) / ranks * nbytes / bandwidth_Bps


def reduce_scatter_s(
    nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float, *, latency: str = "ring", buckets: int = 1
) -> float:
    """A reduce-scatter of ``nbytes`` (each rank receives the sum of its 1/P shard): (P-1)/P S/B on the wire,
    and per bucket P-1 latencies (ring) or ceil(log2 P) (recursive halving) -- half an allreduce."""
    return _half_collective_s(nbytes, ranks, alpha_s, bandwidth_Bps, latency, buckets)


def allgather_s(
    nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float, *, latency: str = "ring", buckets: int = 1
) -> float:
    """An allgather into ``nbytes`` (each rank contributes its 1/P shard, all receive everything): the same
    (P-1)/P S/B and latencies as the reduce-scatter; the two together are the ring allreduce."""
    return _half_collective_s(nbytes, ranks, alpha_s, bandwidth_Bps, latency, buckets)


def hierarchical_allreduce_s(
    nbytes: float, ranks: int, intra: dict, inter: dict, per_node: int = 8, *, buckets: int = 1
) -> float:
    """NCCL's shape across nodes of ``per_node`` GPUs: a reduce-scatter inside each node (a ring over
    ``intra``), an allreduce of each GPU's 1/per_node of S between the nodes (each GPU its own NIC on
    ``inter``; a tree for the latency), and an all-gather inside the node.  P <= per_node: one ring."""
    if ranks <= per_node:
        return allreduce_s(nbytes, ranks, intra["alpha_s"], intra["bandwidth_Bps"], latency="ring", buckets=buckets)
    nodes = math.ceil(ranks / per_node)
    inside = allreduce_s(nbytes, per_node, intra["alpha_s"], intra["bandwidth_Bps"], latency="ring", buckets=buckets)
    between = allreduce_s(
        nbytes / per_node, nodes, inter["alpha_s"], inter["bandwidth_Bps"], latency="tree", buckets=buckets
    )
    return inside + between


def system_allreduce_s(system: dict, nbytes: float, ranks: int, buckets: int = 1) -> float:
    """The allreduce on one of :data:`SYSTEMS` (its ``link`` resolved to a dict with alpha_s and bandwidth_Bps)."""
    link = system["link"] if isinstance(system["link"], dict) else INTERCONNECTS[system["link"]]
    if system.get("inter"):
        inter = system["inter"] if isinstance(system["inter"], dict) else INTERCONNECTS[system["inter"]]
        return hierarchical_allreduce_s(nbytes, ranks, link, inter, system.get("per_node", 8), buckets=buckets)
    return allreduce_s(
        nbytes, ranks, link["alpha_s"], link["bandwidth_Bps"], latency=system.get("latency", "ring"), buckets=buckets
    )


def predict_step(compute_s: float, comm_s: float, *, exposed_fraction: float = 1.0) -> dict[str, float]:
    """One data-parallel step by the model: a rank's compute on its share of the batch, plus the exposed
    part of the allreduce (``exposed_fraction`` of ``comm_s``; the rest hid behind the backward pass).
    Returns {"compute_s", "comm_s", "exposed_s", "overlap_s", "step_s"}."""
    e = min(1.0, max(0.0, exposed_fraction))
    return {
        "compute_s": compute_s,
        "comm_s": comm_s,
        "exposed_s": e * comm_s,
        "overlap_s": (1.0 - e) * comm_s,
        "step_s": compute_s + e * comm_s,
    }


def predict_sharded_step(
    compute_s: float,
    update_s: float,
    ranks: int,
    reduce_scatter_s: float,
    allgather_s: float,
    *,
    exposed_fraction: float = 1.0,
) -> dict[str, float]:
    """One sharded data-parallel step by the model: ``compute_s`` is a rank's step on its share *with the full
    optimizer update* (``update_s`` of it, as an unsharded rank does); sharded, the update is update_s / P,
    the reduce-scatter is exposed by ``exposed_fraction`` and the allgather counted whole.  Returns
    {"compute_s" (without the update), "update_s", "reduce_scatter_s", "allgather_s", "comm_s", "exposed_s"
    (of the reduce-scatter), "step_s"}."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    e = min(1.0, max(0.0, exposed_fraction))
    update = max(0.0, min(update_s, compute_s))
    compute = compute_s - update
    return {
        "compute_s": compute,
        "update_s": update / ranks,
        "full_update_s": update,
        "reduce_scatter_s": reduce_scatter_s,
        "allgather_s": allgather_s,
        "comm_s": reduce_scatter_s + allgather_s,
        "exposed_s": e * reduce_scatter_s,
        "overlap_s": (1.0 - e) * reduce_scatter_s,
        "step_s": compute + e * reduce_scatter_s + update / ranks + allgather_s,
    }


def scaling_curve(
    compute_at: Callable[[int], float],
    comm_at: Callable[[int], float],
    ranks: Sequence[int],
    batch: int,
    *,
    exposed_fraction: float = 1.0,
    scaling: str = "strong",
) -> dict[str, list]:
    """Step time, speed-up and scaling efficiency (speed-up / P) at each P, by the model.
    ``compute_at(b)``: a rank's step on b samples; ``comm_at(P)``: the allreduce on P ranks.
    Strong scaling: the global batch is split (b = ceil(B/P); P above B is left out: a rank without a
    sample), speed-up = T(1) / T(P).  Weak scaling: each rank keeps B, speed-up = P T(1) / T(P)."""
    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', got {scaling!r}")
    t1 = compute_at(batch)
    ps, steps, speedups = [], [], []
    for p in ranks:
        if scaling == "strong" and p > batch:
            continue
        b = -(-batch // p) if scaling == "strong" else batch
        t = predict_step(compute_at(b), comm_at(p), exposed_fraction=exposed_fraction)["step_s"]
        ps.append(p)
        steps.append(t)
        speedups.append(t1 / t if scaling == "strong" else p * t1 / t)
    return {
        "ranks": ps,
        "step_s": steps,
        "speedup": speedups,
        "efficiency": [s / p for s, p in zip(speedups, ps)],
    }


def fit_alpha_bandwidth(nbytes: Sequence[float], seconds: Sequence[float], ranks: int) -> dict[str, float]:
    """Least-squares fit of t = 2(P-1) alpha + 2(P-1)/P S/B to allreduce times measured at sizes S on P ranks.

    The residuals are relative (each row divided by its t), so 1 KB and 64 MB weigh the same: an absolute
    fit would let the largest message set everything and leave alpha to noise.  alpha is kept >= 0 (refitting
    B alone if the free fit went negative).  Returns {"alpha_s", "bandwidth_Bps", "rms_rel_error", "points"}."""
    if ranks < 2:
        raise ValueError("the allreduce fit needs at least 2 ranks")
    S = np.asarray(nbytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    ok = np.isfinite(S) & np.isfinite(t) & (t > 0) & (S > 0)
    S, t = S[ok], t[ok]
    if S.size < 2:
        raise ValueError("the allreduce fit needs at least 2 measured sizes")
    x1 = np.full_like(S, 2.0 * (ranks - 1))  # multiplies alpha
    x2 = 2.0 * (ranks - 1) / ranks * S  # multiplies 1/B
    A = np.stack([x1 / t, x2 / t], axis=1)
    (alpha, inv_b), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if alpha < 0 or inv_b <= 0:
        alpha = 0.0
        inv_b = float(np.sum(x2 / t) / np.sum((x2 / t) ** 2))  # 1/B alone, same relative residuals
    if inv_b <= 0:
        raise ValueError("the allreduce times do not grow with size: no bandwidth to fit")
    pred = alpha * x1 + inv_b * x2
    return {
        "alpha_s": float(alpha),
        "bandwidth_Bps": float(1.0 / inv_b),
        "rms_rel_error": float(np.sqrt(np.mean(((pred - t) / t) ** 2))),
        "points": int(S.size),
    }


def mlp_params(widths: Sequence[int]) -> int:
    """Parameters of a Linear-ReLU-...-Linear MLP: weights and biases."""
    return int(sum(a * b + b for a, b in zip(widths[:-1], widths[1:])))


def mlp_step_flops(widths: Sequence[int], batch: int) -> float:
    """FLOPs of one training step: three products per layer (forward, and two in backward), 2 a b each."""
    return 6.0 * batch * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def fit_compute(points: Sequence[tuple[int, float]]) -> dict[str, float]:
    """A rank's step as c0 + c1 b (a fixed per-step cost and a cost per sample), fitted to one-rank steps
    measured at batches b.  Both kept >= 0: with one point, or a fit that went negative, c0 = 0."""
    pts = [(float(b), float(t)) for b, t in points if b > 0 and t > 0 and math.isfinite(t)]
    if not pts:
        raise ValueError("the compute fit needs at least one measured step")
    bs = np.array([b for b, _ in pts])
    ts = np.array([t for _, t in pts])
    c0, c1 = 0.0, float(np.sum(ts * bs) / np.sum(bs * bs))
    if len(set(bs.tolist())) >= 2:
        (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(bs), bs], axis=1), ts, rcond=None)
        if a >= 0 and b > 0:
            c0, c1 = float(a), float(b)
    return {"c0_s": c0, "c1_s_per_sample": c1, "points": len(pts)}


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
        pred = dict(
            predict_sharded_step(
                compute, full_update, P, run["bare_reduce_scatter_s"], run["bare_allgather_s"], exposed_fraction=e
            )
        )
    else:
        e = run["exposed_s"] / run["allreduce_s"] if run.get("allreduce_s") else 1.0
        pred = dict(predict_step(compute, run["bare_allreduce_s"], exposed_fraction=e))
    pred["stretch"] = 1.0 if side else stretch
    pred["compute_from"] = "side by side" if side else "alone"
    pred["exposed_fraction"] = min(1.0, max(0.0, e))
    pred["error"] = (pred["step_s"] - run["step_s"]) / run["step_s"]
    return pred


def is_sharded(run: dict) -> bool:
    """A DataParallel run with its gradient and optimizer state sharded (ZeRO stage 1 or 2)."""
    return (run.get("shard") or "none") != "none" and bool(run.get("data_parallel"))


def judge_run(share: dict, side: dict | None, run: dict, cores: int) -> list[str]:
    """What makes a measured P-rank run untrustworthy ([] when nothing): DataParallel's allreduce below
    :data:`BANDWIDTH_FLOOR` of the bare Allreduce's bandwidth, or the model off by more than
    :data:`MODEL_TOLERANCE`."""
    why = []
    ratio = run.get("bandwidth_ratio")
    if ratio is not None and ratio < BANDWIDTH_FLOOR:
        what = "reduce-scatter" if is_sharded(run) else "allreduce"
        bare = "Reduce_scatter" if is_sharded(run) else "Allreduce"
        why.append(f"DataParallel's {what} at x{ratio:.2f} of the bare {bare}'s bandwidth (< {BANDWIDTH_FLOOR})")
    err = check_run(share, side, run, cores)["error"]
    if abs(err) > MODEL_TOLERANCE:
        why.append(f"model error {100 * err:+.0f}% (beyond {100 * MODEL_TOLERANCE:.0f}%)")
    return why


def _lost(base: dict, share: dict, side: dict | None, run: dict) -> dict[str, Any]:
    """Where the P-rank step lost against perfect scaling (one rank's step / P), in measured parts that add
    up to the loss: the smaller batch per rank, running beside the other ranks, DataParallel's own work, and
    waiting for the allreduce."""
    P = run["ranks"]
    ideal = base["step_s"] / P
    beside_to = side["step_s"] if side else run["compute_s"]
    parts = {
        "ideal_s": ideal,
        "lost_s": run["step_s"] - ideal,
        "batch_s": share["step_s"] - ideal,  # one rank alone on B/P samples, against B's time / P
        "beside_s": beside_to - share["step_s"],  # the P shares computed at once, each step the slowest rank's
        "bookkeeping_s": run["compute_s"] - beside_to,  # DataParallel's copies, tests, weighting
        "exposed_s": run["step_s"] - run["compute_s"],  # waiting for the allreduce after the backward pass
    }
    sharded = is_sharded(run)
    if sharded:
        # the run's compute_s leaves out its update (1/P of it) and the allgather: the update is its own part,
        # against the full update each rank side by side made (negative: time the shard's update saved)
        full_update = ((side or share).get("update_s") or 0.0) if side else (share.get("update_s") or 0.0)
        parts["bookkeeping_s"] = run["compute_s"] - (beside_to - full_update)
        parts["update_s"] = run.get("update_s", 0.0) - full_update
        parts["exposed_s"] = run["step_s"] - run["compute_s"] - run.get("update_s", 0.0)
    lost = parts["lost_s"]
    ms = lambda x: f"{1e3 * x:.3g} ms"  # noqa: E731
    pc = lambda x: f"{100 * x / lost:.0f}%" if lost > 0 else ""  # noqa: E731
    if lost <= 0:
        text = (
            f"The {P}-rank step ({ms(run['step_s'])}) was at least as fast as one rank's step / {P} "
            f"({ms(ideal)}): no efficiency was lost."
        )
    else:
        over = ", taking turns on the cores" if P * run["threads"] > base.get("cores", 10**9) else ""
        text = (
            f"Against perfect scaling ({ms(base['step_s'])} / {P} = {ms(ideal)}) the {P}-rank step "
            f"({ms(run['step_s'])}) lost {ms(lost)}: {ms(parts['batch_s'])} ({pc(parts['batch_s'])}) to the "
            f"smaller batch per rank (one rank alone on {share['batch']} samples took {ms(share['step_s'])}, "
            f"not {ms(ideal)}), {ms(parts['beside_s'])} ({pc(parts['beside_s'])}) to running beside the other "
            f"ranks (shared cores, caches and memory, and each step waiting for the slowest rank{over}), "
            f"{ms(parts['bookkeeping_s'])} ({pc(parts['bookkeeping_s'])}) to DataParallel's own work, and "
            f"{ms(parts['exposed_s'])} ({pc(parts['exposed_s'])}) to waiting for the allreduce."
        )
        if sharded:
            upd = parts["update_s"]
            text = text.replace(
                ", and " + f"{ms(parts['exposed_s'])} ({pc(parts['exposed_s'])}) to waiting for the allreduce.",
                f", {ms(upd)} ({pc(upd)}) to the optimizer update of its 1/{P} shard "
                f"({'less' if upd < 0 else 'more'} than the whole update each rank made side by side), and "
                f"{ms(parts['exposed_s'])} ({pc(parts['exposed_s'])}) to waiting for the reduce-scatter and the "
                "allgather.",
            )
    parts["text"] = text
    return parts


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
            keys = ("compute_s", "reduce_scatter_s", "exposed_s", "update_s", "allgather_s", "step_s")
            r["breakdown"] = {
                "measured": {k: r.get(k, 0.0) for k in keys},
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
        "+ T_allgather(S, P)",
        "terms_sharded": "T_update: the optimizer update of the whole model, measured in the side-by-side run; "
        "T_reduce_scatter, T_allgather: the bare Reduce_scatter and Allgather of the gradient's size on the same "
        "P ranks, measured, each (P-1)/P * S/B on the wire (together the allreduce's 2(P-1)/P * S/B); e: "
        "DataParallel's exposed / reduce-scatter, measured",
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
            }
        )
    return out


MEMORY_KEYS = ("params_bytes", "grads_bytes", "optimizer_bytes", "total_bytes")


def memory_section(doc: dict, max_ranks: int = 16) -> dict | None:
    """Per-rank memory measured in each run (from DataParallel.memory(), or the plain model's buffers for
    one rank) next to the formula (:mod:`whygpu.memory_model`, the last shard padded), the formula's lines
    against P for the figure, and the devices public models need.  None when no run measured memory."""
    from . import memory_model as mm

    runs = [r for r in doc["runs"] if r.get("memory") and not r.get("side_by_side") and not r.get("share_of")]
    if not runs:
        return None
    opt = str(doc["params"].get("optimizer") or "sgd").lower()
    n = int(runs[0]["memory"]["n_params"])
    rows = []
    unsharded_opt = mm.rank_bytes(n, "none", 1, "fp32", opt)["optimizer"]
    for r in sorted(runs, key=lambda x: (x["ranks"], SHARDS.index(x.get("shard") or "none"))):
        shard = r.get("shard") or "none"
        f = mm.rank_bytes(n, shard, r["ranks"], "fp32", opt)
        meas = r["memory"]["max"]
        rows.append(
            {
                "shard": shard,
                "zero_stage": mm.ZERO_STAGE[shard],
                "ranks": r["ranks"],
                "threads": r["threads"],
                "measured": {k: int(meas[k]) for k in MEMORY_KEYS},
                "formula": {k + "_bytes": int(f[k]) for k in ("params", "grads", "optimizer", "total")},
                "dp_formula": r["memory"].get("formula_bytes"),
                "per_rank": r["memory"].get("per_rank"),
                "optimizer_vs_unsharded": meas["optimizer_bytes"] / unsharded_opt if unsharded_opt else None,
                # padding: DataParallel pads each bucket's flat buffer to a multiple of P, the formula the whole
                "formula_error": (meas["total_bytes"] - f["total"]) / f["total"] if f["total"] else None,
                "grads_peak_bytes": r["memory"].get("grads_peak_bytes"),
            }
        )
    top = max(max_ranks, max(r["ranks"] for r in rows))
    ranks = sorted({1, 2, 3, 4, 6, 8, 12, 16, top, *[r["ranks"] for r in rows]})
    ranks = [p for p in ranks if p <= top]
    lines = {
        stage: {
            "ranks": ranks,
            **{
                k + "_bytes": [mm.rank_bytes(n, stage, p, "fp32", opt)[k] for p in ranks]
                for k in ("params", "grads", "optimizer", "total")
            },
        }
        for stage in mm.STAGES
    }
    return {
        "n_params": n,
        "optimizer": opt,
        "precision": "fp32",
        "rows": rows,
        "lines": lines,
        "note": "measured: the bytes of the buffers DataParallel (or, on one rank, the model and optimizer) "
        "allocated for parameters, gradients and optimizer state, the largest over the ranks; formula: "
        f"{mm.bytes_per_param('none', 1, 'fp32', opt)['total']:g} bytes per parameter unsharded, the sharded "
        "parts ceil(n/P) elements per rank; activations not counted",
        "extrapolation": mm.extrapolate_memory(optimizer="adam"),
    }


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
    )
    return annotate(doc)
