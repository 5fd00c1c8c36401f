"""The public figures and formulas of the data-parallel cost model: the links and the H100 the step is
extrapolated to, the collectives' latency-bandwidth costs, and the fits of this machine's figures;
:mod:`whygpu.scaleout` measures and checks with them, and :mod:`whygpu.predict.extrapolate` builds the
step simulator's inputs from them.

Data parallelism gives each of P ranks (processes: machines, GPUs, or here the cores of one box) a slice
of the batch and a full copy of the model; during the backward pass the ranks sum their gradients with
*allreduces*, one per bucket of gradients, so every copy takes the same step.  The step is not a formula
here: it is **simulated** (:func:`whygpu.predict.simulate`, a discrete-event replay of ``DataParallel``'s
schedule: each bucket's collective posted once its last layer's dW is done, travelling beside the rest of
the backward pass, the rank waiting after the backward pass for what has not arrived -- the *exposed*
communication).  What goes in:

* the compute of one rank on its share ``b`` of the global batch, per layer (forward, dW, dX) -- on this
  machine measured apart (the ranks side by side without communicating; :func:`fit_compute` fits
  ``c0 + c1 b`` to the one-rank steps for other batches), on the H100 its public FLOP rate times an
  efficiency, both stated with their sources in :data:`H100`;
* the collectives' costs, latency plus bytes over bandwidth: an allreduce of S bytes over P ranks puts
  2(P-1)/P * S/B on the wire (a ring, or reduce-scatter + all-gather: each rank sends and receives almost
  twice the gradient, Patarasuk & Yuan 2009, nccl-tests' PERFORMANCE.md) plus a latency alpha per step of
  the algorithm: 2(P-1) for a ring, 2 ceil(log2 P) for a tree (what MPI's large allreduce and NCCL between
  nodes use) -- :func:`allreduce_s`; sharded (ZeRO), a reduce-scatter and an allgather, half of it each
  (:func:`reduce_scatter_s`, :func:`allgather_s`).  On this machine the bare MPI calls are measured on the
  same ranks, and alpha and B fitted to a sweep of sizes (:func:`fit_alpha_bandwidth`); on other systems
  alpha and B are the public figures of :data:`INTERCONNECTS`, and an H100 cluster uses NVLink inside a node
  of 8 and InfiniBand between nodes (:func:`hierarchical_allreduce_s`);
* the optimizer's update and how much compute and a collective slow each other when they share cores
  (measured here, or stated as assumed).

No fraction of the communication is carried from one run to another: how much of it the backward pass
hides follows from the schedule, the compute per layer and the link's speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

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

# The H100's compute, public figures (the same figures as the report's GPU section, report/gpu.py): NVIDIA
# H100 SXM datasheet, FP32 67 TFLOP/s peak and 3.35 TB/s of HBM3; cuBLAS float32 SGEMM reaches about 50
# TFLOP/s on it (the efficiency: 50 / 67).  The model trains in float32 like the CPU here.  A kernel is at
# least its launch: ~5 us each (CUDA's launch overhead), 3 per layer (forward, two products in backward).
H100: dict[str, Any] = {
    "name": "H100 SXM",
    "peak_gflops": 67_000.0,
    "efficiency": 50_000.0 / 67_000.0,
    "efficiency_source": "cuBLAS float32 SGEMM reaches ~50 of the 67 TFLOP/s peak on large products, the figure "
    "the report's GPU section quotes; small per-GPU batches reach less, left to the launch cost",
    "gflops": 50_000.0,  # peak x efficiency
    "hbm_Bps": 3.35e12,
    "launch_s": 5e-6,
    "launches_per_layer": 3,
    "source": "public figure: NVIDIA H100 SXM datasheet (FP32 67 TFLOP/s peak, HBM3 3.35 TB/s), ~50 TFLOP/s "
    "float32 SGEMM (efficiency 0.75); ~5 us per kernel launch, 3 launches per layer",
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
    or recursive halving and doubling): a reduce-scatter then an allgather, each half of it."""
    return 2.0 * _half_collective_s(nbytes, ranks, alpha_s, bandwidth_Bps, latency, buckets)


# DataParallel's shard settings the scale-out measures (ZeRO stages 0, 1, 2), in order.
SHARDS: tuple[str, ...] = ("none", "optimizer", "gradients")


def _half_collective_s(nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float, latency: str, buckets: int):
    """A reduce-scatter or an allgather: (P-1)/P S/B on the wire, and per bucket P-1 latencies (ring) or
    ceil(log2 P) (tree)."""
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


def predict_step(compute_s: float, comm_s: float) -> dict[str, float]:
    """The step with nothing hidden -- the bound a student computes by hand, before the simulator: a rank's
    compute on its share of the batch, then the whole allreduce.  Returns {"compute_s", "comm_s",
    "exposed_s", "step_s"}.  (How much of the allreduce the backward pass hides is simulated, not assumed:
    :func:`whygpu.predict.simulate`, :mod:`whygpu.predict.extrapolate`.)"""
    return {"compute_s": compute_s, "comm_s": comm_s, "exposed_s": comm_s, "step_s": compute_s + comm_s}


def scaling_curve(
    compute_at: Callable[[int], float],
    comm_at: Callable[[int], float],
    ranks: Sequence[int],
    batch: int,
    *,
    scaling: str = "strong",
) -> dict[str, list]:
    """Step time, speed-up and scaling efficiency (speed-up / P) at each P with nothing hidden
    (:func:`predict_step`): ``compute_at(b)``, a rank's step on b samples; ``comm_at(P)``, the allreduce on
    P ranks.  Strong scaling: the global batch is split (b = ceil(B/P); P above B is left out: a rank
    without a sample), speed-up = T(1) / T(P).  Weak scaling: each rank keeps B, speed-up = P T(1) / T(P)."""
    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', got {scaling!r}")
    t1 = compute_at(batch)
    ps, steps, speedups = [], [], []
    for p in ranks:
        if scaling == "strong" and p > batch:
            continue
        b = -(-batch // p) if scaling == "strong" else batch
        t = predict_step(compute_at(b), comm_at(p))["step_s"]
        ps.append(p)
        steps.append(t)
        speedups.append(t1 / t if scaling == "strong" else p * t1 / t)
    return {"ranks": ps, "step_s": steps, "speedup": speedups, "efficiency": [s / p for s, p in zip(speedups, ps)]}


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
