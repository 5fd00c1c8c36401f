"""The extrapolation of data-parallel training to other systems, by the step simulator: for a system of
:data:`~whygpu.predict.scaleout_model.SYSTEMS`, a model and P ranks, the simulator's inputs are built
from *that system's* figures and :func:`~whygpu.predict.stepsim.simulate` replays DDP's schedule on
them (``StepConfig(P, bucket_mb=25, first_bucket_mb=1)``, DDP's defaults), so the overlap at 512 GPUs
follows from the schedule and the link speeds, not from a fraction measured on two CPU ranks here.

The inputs, each with its source:

* **Compute** (:func:`compute_times`), per layer: the forward product, dW and dX (the first layer has no
  dX), each ``2 * b * fan_in * fan_out`` FLOPs at the rank's share ``b`` of the batch.  On the H100:
  the datasheet's FP32 peak times an efficiency (cuBLAS SGEMM's ~50 of 67 TFLOP/s), plus one kernel
  launch each -- public figures.  On CPU nodes "like this one": this machine's fitted step ``c0 + c1 b``
  of the MLP measured here (less its measured update), scaled by FLOPs per sample for the other models and
  split over the kernels by their FLOPs -- measured here.  ReLUs, biases and the loss are not separate
  kernels (their time is in the CPU fit; on the GPU they are left out).  ResNet-50 has no per-layer
  structure here: its FLOPs and parameters are split over ``RESNET50["layers"]`` equal layers.
* **Update** (:func:`update_cost`): on the GPU memory-bound at the public HBM bandwidth (SGD reads the
  weights and the gradient and writes the weights: 3 bytes per byte of parameters; momentum 5, Adam 7),
  one launch per call; on CPUs the update measured here per byte of parameters, or none where it was
  not measured.
* **Collectives** (:func:`collective_costs`): allreduce, reduce-scatter and allgather on P ranks as
  ``latency + bytes / bandwidth`` curves built from the link's alpha and B (a ring: 2(P-1) alpha and
  2(P-1)/P S/B for the allreduce, half each for the other two; a tree between CPU nodes: 2 ceil(log2 P)
  alpha).  For the H100 nodes the curve is built directly from the hierarchical cost (a ring over NVLink
  inside the node of 8, a tree over InfiniBand between nodes on 1/8 of the bytes): it is affine in the
  bytes, so the curve *is* :func:`~whygpu.predict.scaleout_model.hierarchical_allreduce_s` at that P.
* **Interference** (:func:`interference_for`): none on the GPU (assumed: NCCL runs on its own SMs and
  copy engines beside the kernels); on CPUs the probe measured here where the caller has one, else 1.0,
  "not measured".

:func:`extrapolation` returns the ``extrapolation`` section of the ``whygpu.scaleout/1`` document: per
system and model, strong and weak scaling curves (``ranks``, ``step_s``, ``exposed_s``, ``speedup``,
``efficiency``) and the ``sources`` of their inputs, in the simulator's own words ("measured here",
"public figure", "assumed", "not measured").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._inputs import CollectiveCosts, CollectiveCurve, ComputeTimes, Interference, LayerTimes, UpdateCost
from .scaleout_model import (
    EXTRAPOLATION_RANKS,
    H100,
    INTERCONNECTS,
    LARGER_MODEL,
    PUBLIC_SCALING,
    RESNET50,
    SYSTEMS,
    mlp_params,
    mlp_step_flops,
)
from .stepsim import StepConfig, StepResult, simulate

__all__ = [
    "UPDATE_TRAFFIC",
    "CpuFigures",
    "mlp_model",
    "resnet_model",
    "split_by_flops",
    "compute_times",
    "update_cost",
    "collective_costs",
    "interference_for",
    "simulate_system",
    "system_curves",
    "extrapolation",
]

# Bytes the optimizer's update reads and writes per byte of parameters (float32, in place): SGD reads
# w and g and writes w; momentum also reads and writes v; Adam m and v.
UPDATE_TRAFFIC: dict[str, int] = {"sgd": 3, "momentum": 5, "adam": 7}
DDP_BUCKET_MB, DDP_FIRST_BUCKET_MB = 25.0, 1.0  # PyTorch DDP's bucket_cap_mb and first bucket


def _sim_source(text: str) -> str:
    """The simulator's source field for a curve's source text: the same words (the simulator admits
    "measured here", "public figure", "assumed" and "not measured"); anything else is an assumption."""
    from ._inputs import SOURCES

    if any(text == s or text.startswith(s + ":") for s in SOURCES):
        return text
    return "assumed: " + text


@dataclass(frozen=True)
class CpuFigures:
    """What a CPU rank measured here says, for the CPU systems: its step fitted as ``c0_s + c1_s_per_sample
    * b`` for the MLP measured here (``flops_per_sample`` of it, ``bytes`` of gradient), the update that
    step included (``update_s``; None: not measured), the threads per rank, and the interference probe
    (``{"compute_slowdown", "comm_slowdown", "source"}``; None: not measured)."""

    c0_s: float
    c1_s_per_sample: float
    flops_per_sample: float
    bytes: int
    threads: int = 1
    update_s: float | None = None
    interference: dict | None = None


# -- the models, as layers ------------------------------------------------------------------------------
def mlp_model(widths: Sequence[int], measured: bool = False) -> dict[str, Any]:
    """An MLP as the extrapolation's model: one layer per Linear (``layer_flops``: one product's FLOPs per
    sample, 2 fan_in fan_out; ``layer_bytes``: its float32 weights and bias)."""
    w = [int(x) for x in widths]
    n = mlp_params(w)
    return {
        "name": "MLP " + "-".join(map(str, w)),
        "measured": measured,
        "params": n,
        "bytes": 4 * n,
        "flops_per_sample": mlp_step_flops(w, 1),
        "layers": len(w) - 1,
        "layer_flops": [2.0 * a * b for a, b in zip(w[:-1], w[1:])],
        "layer_bytes": [4 * (a * b + b) for a, b in zip(w[:-1], w[1:])],
        "source": "the MLP's widths: one layer per Linear (ReLUs, biases and the loss not separate kernels)",
    }


def resnet_model() -> dict[str, Any]:
    """ResNet-50 from its public totals, split over ``RESNET50["layers"]`` equal layers (the package has
    no per-layer structure for it): each a third of its per-layer FLOPs forward, dW and dX."""
    L, n = int(RESNET50["layers"]), int(RESNET50["params"])
    per, extra = divmod(n, L)
    return {
        "name": RESNET50["name"],
        "measured": False,
        "params": n,
        "bytes": 4 * n,
        "flops_per_sample": RESNET50["flops_per_sample"],
        "layers": L,
        "layer_flops": [RESNET50["flops_per_sample"] / 3 / L] * L,
        "layer_bytes": [4 * (per + (1 if i < extra else 0)) for i in range(L)],
        "source": RESNET50["source"] + f"; split over {L} equal layers (no per-layer structure in the package), "
        "each product a third of its FLOPs",
    }


def split_by_flops(
    layer_flops: Sequence[float], layer_bytes: Sequence[int], forward_s: float, backward_s: float
) -> tuple[LayerTimes, ...]:
    """Layers whose forward kernels share ``forward_s`` and whose dW and dX kernels share ``backward_s``
    in proportion to their FLOPs (``layer_flops``: one product of each layer; the first layer has no dX)."""
    f = [float(x) for x in layer_flops]
    fsum = math.fsum(f)
    bsum = math.fsum(f) + math.fsum(f[1:])
    if fsum <= 0:
        raise ValueError("the layers have no FLOPs to split the compute by")
    out = []
    for i, (x, nb) in enumerate(zip(f, layer_bytes)):
        share = backward_s * x / bsum
        out.append(
            LayerTimes(
                forward_s=forward_s * x / fsum,
                backward_dw_s=share if nb else 0.0,
                backward_dx_s=share if i > 0 else 0.0,
                param_bytes=int(nb),
                name=f"layer {i}",
            )
        )
    return tuple(out)


# -- the inputs ----------------------------------------------------------------------------------------
def _gpu_rate() -> float:
    return H100["peak_gflops"] * 1e9 * H100["efficiency"]


def compute_times(device: str, model: dict, b: int, cpu: CpuFigures | None = None) -> tuple[ComputeTimes, str]:
    """One rank's layers on ``b`` samples on ``device`` ("gpu": the public H100 figures; "cpu": ``cpu``,
    measured here), and the source text of the figures."""
    flops, nbytes = model["layer_flops"], model["layer_bytes"]
    if device == "gpu":
        rate, launch = _gpu_rate(), H100["launch_s"]
        layers = tuple(
            LayerTimes(
                forward_s=launch + b * x / rate,
                backward_dw_s=launch + b * x / rate,
                backward_dx_s=launch + b * x / rate if i > 0 else 0.0,
                param_bytes=int(nb),
                name=f"layer {i}",
            )
            for i, (x, nb) in enumerate(zip(flops, nbytes))
        )
        src = (
            f"public figure: {H100['name']} FP32 peak {H100['peak_gflops'] / 1e3:g} TFLOP/s x efficiency "
            f"{H100['efficiency']:.2f} ({H100['efficiency_source']}); {1e6 * H100['launch_s']:g} us launch per "
            "kernel; each product 2 b fan_in fan_out FLOPs"
        )
        return ComputeTimes(layers, source=_sim_source(src)), src
    if cpu is None:
        raise ValueError("a CPU system needs the compute measured here (CpuFigures)")
    fixed = max(0.0, cpu.c0_s - (cpu.update_s or 0.0))
    kernels = fixed + cpu.c1_s_per_sample * b * model["flops_per_sample"] / cpu.flops_per_sample
    # the kernels' time split by FLOPs: forward one product per layer, backward dW and dX (not layer 0's dX)
    fwd_flops, all_flops = math.fsum(flops), 2 * math.fsum(flops) + math.fsum(flops[1:])
    layers = split_by_flops(flops, nbytes, kernels * fwd_flops / all_flops, kernels * (1 - fwd_flops / all_flops))
    src = (
        f"measured here: a rank of {cpu.threads} thread(s) on this machine, the MLP's step fitted as "
        f"{1e3 * cpu.c0_s:.3g} ms + {1e6 * cpu.c1_s_per_sample:.3g} us per sample (less its measured update), "
        "scaled by FLOPs per sample to this model and split over its kernels by their FLOPs (an assumption)"
    )
    return ComputeTimes(layers, source=_sim_source(src)), src


def update_cost(device: str, optimizer: str = "sgd", cpu: CpuFigures | None = None) -> tuple[UpdateCost, str]:
    """The optimizer's update: on the GPU memory-bound at the public HBM bandwidth (``UPDATE_TRAFFIC``
    bytes moved per byte of parameters, one launch per call); on a CPU the update measured here per byte."""
    if device == "gpu":
        traffic = UPDATE_TRAFFIC.get(optimizer, UPDATE_TRAFFIC["sgd"])
        src = (
            f"public figure: {H100['name']} HBM3 {H100['hbm_Bps'] / 1e12:g} TB/s (datasheet); {optimizer} moves "
            f"{traffic} bytes per byte of parameters (memory-bound, an assumption); one launch per call"
        )
        cost = UpdateCost(per_byte_s=traffic / H100["hbm_Bps"], per_call_s=H100["launch_s"], source=_sim_source(src))
        return cost, src
    if cpu is None or cpu.update_s is None or cpu.bytes <= 0:
        src = "not measured: no update time measured here, none simulated (it is in the compute fit)"
        return UpdateCost(source=_sim_source(src)), src
    src = (
        f"measured here: the {optimizer} update of the MLP's {cpu.bytes / 1e6:.3g} MB, {1e3 * cpu.update_s:.3g} ms "
        "on one rank, per byte of parameters"
    )
    return UpdateCost(per_byte_s=cpu.update_s / cpu.bytes, source=_sim_source(src)), src


def _link(x: Any) -> dict:
    return x if isinstance(x, dict) else {"name": x, **INTERCONNECTS[x]}


def _curve(kind: str, ranks: int, latency_s: float, per_byte_s: float, src: str) -> CollectiveCurve:
    bw = math.inf if per_byte_s <= 0 else 1.0 / per_byte_s
    return CollectiveCurve(kind, ranks, latency_s=latency_s, bandwidth_Bps=bw, source=_sim_source(src))


def collective_costs(system: dict, ranks: int) -> tuple[CollectiveCosts, str]:
    """The allreduce, reduce-scatter and allgather on ``ranks`` ranks of ``system`` (its ``link`` an
    :data:`INTERCONNECTS` name or a dict with ``alpha_s``, ``bandwidth_Bps``, ``source``), from the link's
    public alpha and B; hierarchical systems (``inter``) by their hierarchical cost, built directly."""
    P = int(ranks)
    link = _link(system["link"])
    if system.get("inter") and P > int(system.get("per_node", 8)):
        inter, n = _link(system["inter"]), int(system.get("per_node", 8))
        nodes = math.ceil(P / n)
        lat = 2 * (n - 1) * link["alpha_s"] + 2 * math.ceil(math.log2(nodes)) * inter["alpha_s"]
        per_byte = 2 * (n - 1) / n / link["bandwidth_Bps"] + 2 * (nodes - 1) / nodes / n / inter["bandwidth_Bps"]
        src = (
            f"{'public figure' if not link['source'].startswith('measured') else 'measured here'}: hierarchical "
            f"allreduce built directly (a ring of {n} over {link['name']} inside each node, a tree over "
            f"{inter['name']} between the nodes on 1/{n} of the bytes; reduce-scatter and allgather half "
            f"of it); {link['source']}; {inter['source']}"
        )
    else:
        steps = P - 1 if system.get("latency", "ring") == "ring" or P == 1 else math.ceil(math.log2(P))
        lat = 2 * steps * link["alpha_s"]
        per_byte = 2 * (P - 1) / P / link["bandwidth_Bps"]
        shape = "ring" if system.get("latency", "ring") == "ring" else "tree (latency 2 ceil(log2 P) alpha)"
        src = f"{link['source']}; a {shape} on {link['name']}: 2(P-1)/P S/B, half each for reduce-scatter and allgather"
        if not src.startswith(("public figure", "measured here")):
            src = "public figure: " + src
    curves = (
        _curve("allreduce", P, lat, per_byte, src),
        _curve("reduce_scatter", P, lat / 2, per_byte / 2, src),
        _curve("allgather", P, lat / 2, per_byte / 2, src),
    )
    return CollectiveCosts(curves), src


def interference_for(device: str, cpu: CpuFigures | None = None) -> tuple[Interference, str]:
    """None on the GPU (assumed); on a CPU the probe measured here, or 1.0 where it was not measured."""
    if device == "gpu":
        src = "assumed: no interference, NCCL runs on its own SMs and copy engines beside the kernels"
        return Interference(source=_sim_source(src)), src
    probe = cpu.interference if cpu else None
    if probe:
        src = "measured here: " + str(probe.get("source", "the interference probe")).split(": ", 1)[-1]
        inter = Interference(
            compute_slowdown=float(probe["compute_slowdown"]),
            comm_slowdown=float(probe["comm_slowdown"]),
            source=_sim_source(src),
        )
        return inter, src
    src = "not measured: no interference probe in this document, 1.0 (none) simulated"
    return Interference(source=_sim_source(src)), src


def simulate_system(
    system: dict, model: dict, ranks: int, b: int, *, cpu: CpuFigures | None = None, optimizer: str = "sgd"
) -> tuple[StepResult, dict[str, str]]:
    """One DDP step of ``model`` on ``ranks`` ranks of ``system`` with ``b`` samples per rank, simulated;
    returns the result and the sources of its inputs."""
    dev = system["device"]
    compute, c_src = compute_times(dev, model, b, cpu)
    update, u_src = update_cost(dev, optimizer, cpu)
    costs, k_src = collective_costs(system, ranks)
    inter, i_src = interference_for(dev, cpu)
    cfg = StepConfig(ranks=int(ranks), bucket_mb=DDP_BUCKET_MB, first_bucket_mb=DDP_FIRST_BUCKET_MB)
    res = simulate(compute, update, costs, inter, cfg)
    return res, {"compute": c_src, "update": u_src, "collectives": k_src, "interference": i_src}


def system_curves(
    system: dict,
    model: dict,
    ranks: Sequence[int],
    batch: int,
    *,
    cpu: CpuFigures | None = None,
    optimizer: str = "sgd",
    cache: dict | None = None,
) -> list[dict[str, Any]]:
    """Strong (b = ceil(B/P), P <= B) and weak (b = B) scaling curves of ``model`` on ``system``, each point
    a simulated step: ``ranks``, ``step_s``, ``exposed_s``, ``speedup`` (strong T(1)/T(P), weak P T(1)/T(P)),
    ``efficiency`` (speed-up / P), ``buckets``, and the inputs' ``sources``."""
    cache = {} if cache is None else cache

    def step(p: int, b: int) -> tuple[StepResult, dict[str, str]]:
        key = (system["name"], model["name"], p, b)
        if key not in cache:
            cache[key] = simulate_system(system, model, p, b, cpu=cpu, optimizer=optimizer)
        return cache[key]

    t1, _ = step(1, batch)
    out = []
    for scaling in ("strong", "weak"):
        ps: list[int] = []
        steps: list[float] = []
        exposed: list[float] = []
        speedups: list[float] = []
        buckets: list[int] = []
        sources: dict[str, str] = {}
        for p in ranks:
            if scaling == "strong" and p > batch:
                continue
            r, src = step(p, -(-batch // p) if scaling == "strong" else batch)
            for k, v in src.items():  # a hierarchical system's collectives change with P: each once
                if v not in sources.get(k, "").split(" / "):
                    sources[k] = f"{sources[k]} / {v}" if k in sources else v
            ps.append(p)
            steps.append(r.step_s)
            exposed.append(r.exposed_s)
            speedups.append((1 if scaling == "strong" else p) * t1.step_s / r.step_s)
            buckets.append(len(r.buckets))
        out.append(
            {
                "system": system["name"],
                "device": system["device"],
                "model": model["name"],
                "scaling": scaling,
                "ranks": ps,
                "step_s": steps,
                "exposed_s": exposed,
                "speedup": speedups,
                "efficiency": [s / p for s, p in zip(speedups, ps)],
                "buckets": buckets,
                "sources": {**sources, "model": model["source"]},
            }
        )
    return out


def extrapolation(
    widths: Sequence[int],
    batch: int,
    *,
    cpu: CpuFigures,
    local_link: dict,
    max_local_ranks: int,
    optimizer: str = "sgd",
    systems: Sequence[dict] = SYSTEMS,
) -> dict[str, Any]:
    """The extrapolation section: curves for each of ``systems`` and three models (the MLP of ``widths``
    measured here, :data:`LARGER_MODEL`, :data:`RESNET50`), every point simulated.  ``local_link``: this
    machine's shared memory as a link (``alpha_s``, ``bandwidth_Bps`` fitted here, ``source``), for the
    system whose link is "fit", drawn up to ``max_local_ranks``."""
    models = [mlp_model(widths, measured=True), mlp_model(LARGER_MODEL), resnet_model()]
    resolved = []
    for sysd in systems:
        s = dict(sysd)
        if s["link"] == "fit":
            s["link"] = {"name": "this machine's shared memory", **local_link}
            s["max_ranks"] = max(1, int(max_local_ranks))
        s["public"] = sysd["link"] != "fit"  # its link (and for the GPU its compute) are public figures
        resolved.append(s)
    cache: dict = {}
    curves: list[dict] = []
    for s in resolved:
        ranks = [p for p in EXTRAPOLATION_RANKS if p <= s.get("max_ranks", 10**9)]
        for m in models:
            curves += system_curves(s, m, ranks, batch, cpu=cpu, optimizer=optimizer, cache=cache)
    cpu_sys = next(s for s in resolved if s["device"] == "cpu")
    gpu_sys = next((s for s in resolved if s["device"] == "gpu"), None)
    for m in models:
        m["flops"] = m["flops_per_sample"] * batch
        m["flops_per_byte"] = m["flops"] / m["bytes"]
        # one rank's step on the whole batch on each device (P = 1: no communication), simulated
        m["cpu_step_s"] = simulate_system(cpu_sys, m, 1, batch, cpu=cpu, optimizer=optimizer)[0].step_s
        if gpu_sys is not None:
            m["gpu_step_s"] = simulate_system(gpu_sys, m, 1, batch, optimizer=optimizer)[0].step_s
        m.pop("layer_flops")
        m.pop("layer_bytes")
    links = [{"name": "this machine (shared memory)", **local_link, "public": False}]
    links += [{"name": k, **v, "public": True} for k, v in INTERCONNECTS.items()]
    sources = {
        "public figure": [
            f"{H100['name']} compute: {H100['source']}",
            f"{H100['name']} HBM bandwidth for the update: {H100['hbm_Bps'] / 1e12:g} TB/s",
            *(f"{k}: {v['source']}" for k, v in INTERCONNECTS.items()),
            f"ResNet-50: {RESNET50['source']}",
        ],
        "measured here": [
            f"CPU compute: {cpu.c0_s * 1e3:.3g} ms + {cpu.c1_s_per_sample * 1e6:.3g} us per sample, a rank of "
            f"{cpu.threads} thread(s), fitted to the one-rank steps",
            "CPU update: " + ("not measured" if cpu.update_s is None else f"{1e3 * cpu.update_s:.3g} ms for the MLP"),
            f"this machine's shared memory: {local_link['source']}",
        ]
        + (["CPU interference: the probe"] if cpu.interference else []),
        "assumed": [
            "the schedule: PyTorch DDP's buckets (25 MiB, the first 1 MiB), each bucket's allreduce posted once "
            "its last layer's dW is done, one collective at a time",
            "GPU: no interference (NCCL on its own SMs and copy engines); per-layer kernels of 2 b fan_in "
            "fan_out FLOPs each at one efficiency, plus a launch",
            "CPU: the kernels' time split over the layers by FLOPs"
            + ("" if cpu.interference else "; no interference (not measured)"),
            "ResNet-50: equal layers (no per-layer structure in the package)",
        ],
    }
    return {
        "ranks": list(EXTRAPOLATION_RANKS),
        "batch": batch,
        "threads_per_rank": cpu.threads,
        "method": "each point a step simulated (whygpu.predict.simulate) with DDP's buckets on the system's "
        "own figures: overlap follows from the schedule and the link speeds",
        "compute_fit": {"c0_s": cpu.c0_s, "c1_s_per_sample": cpu.c1_s_per_sample},
        "compute_note": f"Every point is a simulated step (whygpu.predict.simulate): DDP's 25 MiB buckets, each "
        "allreduce beside the rest of the backward pass, so what stays exposed follows from the schedule and the "
        f"link. CPU rows compute like one rank of {cpu.threads} thread(s) here ({1e3 * cpu.c0_s:.3g} ms + "
        f"{1e6 * cpu.c1_s_per_sample:.3g} us per sample, fitted to the one-rank steps, other models scaled by "
        f"FLOPs per sample; measured here); H100 rows: {H100['peak_gflops'] / 1e3:g} TFLOP/s FP32 peak x "
        f"{H100['efficiency']:.2f} = {H100['gflops'] / 1e3:g} TFLOP/s and {1e6 * H100['launch_s']:g} us per "
        "kernel launch, the update at the HBM bandwidth, no interference (public figures and assumptions)",
        "systems": [
            {k: v for k, v in s.items() if k not in ("link", "inter")}
            | {"link": _link(s["link"])["name"], "inter": s.get("inter")}
            for s in resolved
        ],
        "interconnects": links,
        "gpu": dict(H100),
        "models": models,
        "curves": curves,
        "sources": sources,
        "public_points": [dict(x) for x in PUBLIC_SCALING],
    }
