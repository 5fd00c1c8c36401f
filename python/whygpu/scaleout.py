"""The cost model of data-parallel training on P ranks: a ring allreduce fitted to this machine, checked against
the runs measured here, and extrapolated to named interconnects (their public figures) up to 1024 ranks.

Data parallelism gives each of P ranks (processes: machines, GPUs, or here the
cores of one box) a slice of the batch and a full copy of the model; after the
backward pass the ranks sum their gradients with an *allreduce*, so every copy
takes the same step.  The model of one step is::

    T(P) = T_compute / P  +  2(P-1)/P * S/B  +  2(P-1) * alpha  -  overlap

* ``T_compute`` -- one rank's step on the whole global batch, measured (strong
  scaling: each rank computes 1/P of it; weak scaling: each rank keeps the
  batch, so the compute term stays ``T_compute``);
* ``S`` -- the gradient's bytes (4 per parameter in float32);
* the next two terms -- a ring allreduce (Patarasuk & Yuan 2009; Baidu's ring
  allreduce; nccl-tests' PERFORMANCE.md): each rank sends and receives
  2(P-1)/P of S, in 2(P-1) steps of latency ``alpha``, over a link of
  ``B`` bytes/s per direction;
* ``overlap`` -- what of the allreduce hides behind the backward pass.  From
  the measured *exposed fraction* ``e`` (the allreduce time still being waited
  for after backward ended, over the allreduce time): overlap =
  (1 - e) * T_comm, and never more than the backward pass of the rank's
  compute (the only work a gradient's allreduce can run under).

``alpha`` and ``B`` of this machine are fitted (:func:`fit_alpha_bandwidth`)
to a sweep of bare MPI Allreduce calls; those of other interconnects are
*public figures* (:data:`INTERCONNECTS`), not measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

__all__ = [
    "INTERCONNECTS",
    "LARGER_MODEL",
    "RESNET50",
    "EXTRAPOLATION_RANKS",
    "ring_allreduce_s",
    "predict_step",
    "scaling_curve",
    "fit_alpha_bandwidth",
    "mlp_params",
    "mlp_step_flops",
    "annotate",
    "run_scaleout",
]

# Public figures for the interconnects the model extrapolates to: *not measured here*.
# Bandwidth is per direction per rank (what a ring allreduce's sends use); alpha is the
# latency of one message, the figure a small MPI / NCCL message sees.
INTERCONNECTS: tuple[dict[str, Any], ...] = (
    {
        "name": "10 GbE",
        "bandwidth_Bps": 1.25e9,  # 10 Gb/s line rate = 1.25 GB/s (IEEE 802.3ae)
        "alpha_s": 25e-6,  # 10-50 us for an MPI message over TCP/IP
        "public": True,
        "source": "public figure: IEEE 802.3ae line rate 10 Gb/s = 1.25 GB/s; MPI over TCP latency ~10-50 us",
    },
    {
        "name": "InfiniBand EDR",
        "bandwidth_Bps": 12.5e9,  # 100 Gb/s (4 lanes x 25 Gb/s)
        "alpha_s": 1.5e-6,  # ~1-2 us MPI latency
        "public": True,
        "source": "public figure: InfiniBand Trade Association roadmap, EDR 4x = 100 Gb/s = 12.5 GB/s; "
        "MPI latency ~1-2 us (NVIDIA/Mellanox ConnectX product briefs)",
    },
    {
        "name": "NVLink 4 (H100)",
        "bandwidth_Bps": 450e9,  # 900 GB/s total = 450 GB/s per direction
        "alpha_s": 3e-6,  # a few us for a small NCCL allreduce step
        "public": True,
        "source": "public figure: NVIDIA H100 datasheet, NVLink 900 GB/s total = 450 GB/s per direction "
        "(8 GPUs per node; more only through NVLink Switch); latency a few us (nccl-tests)",
    },
)

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
    "source": "public figure: torchvision's resnet50 (25.6 M parameters, 4.09 G multiply-adds forward per image)",
}
EXTRAPOLATION_RANKS: tuple[int, ...] = tuple(2**i for i in range(11))  # 1, 2, 4, ..., 1024


def ring_allreduce_s(nbytes: float, ranks: int, alpha_s: float, bandwidth_Bps: float) -> float:
    """Seconds of a ring allreduce of ``nbytes`` over ``ranks`` ranks: 2(P-1) alpha + 2(P-1)/P S/B (0 for P = 1)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) * alpha_s + 2 * (ranks - 1) / ranks * nbytes / bandwidth_Bps


def predict_step(
    compute_s: float,
    nbytes: float,
    ranks: int,
    alpha_s: float,
    bandwidth_Bps: float,
    *,
    exposed_fraction: float = 1.0,
    backward_fraction: float = 1.0,
    scaling: str = "strong",
) -> dict[str, float]:
    """One data-parallel step on ``ranks`` ranks, by the model: {"compute_s" (per rank), "comm_s", "overlap_s",
    "step_s"}.  ``compute_s`` is one rank's step on the global batch; strong scaling divides it by P, weak
    scaling keeps it.  overlap = (1 - exposed_fraction) * comm, at most backward_fraction * per-rank compute."""
    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', got {scaling!r}")
    per_rank = compute_s / ranks if scaling == "strong" else compute_s
    comm = ring_allreduce_s(nbytes, ranks, alpha_s, bandwidth_Bps)
    e = min(1.0, max(0.0, exposed_fraction))
    overlap = min((1.0 - e) * comm, max(0.0, backward_fraction) * per_rank)
    return {"compute_s": per_rank, "comm_s": comm, "overlap_s": overlap, "step_s": per_rank + comm - overlap}


def scaling_curve(
    compute_s: float,
    nbytes: float,
    ranks: Sequence[int],
    alpha_s: float,
    bandwidth_Bps: float,
    *,
    exposed_fraction: float = 1.0,
    backward_fraction: float = 1.0,
    scaling: str = "strong",
) -> dict[str, list[float]]:
    """Step time, speed-up and scaling efficiency (speed-up / P) at each P.  Strong scaling: speed-up =
    T_compute / T(P), the same global batch done faster.  Weak scaling: speed-up = P T_compute / T(P), the
    throughput of P ranks each on the original batch, over one rank's."""
    steps, speedups = [], []
    for p in ranks:
        t = predict_step(
            compute_s,
            nbytes,
            p,
            alpha_s,
            bandwidth_Bps,
            exposed_fraction=exposed_fraction,
            backward_fraction=backward_fraction,
            scaling=scaling,
        )["step_s"]
        steps.append(t)
        speedups.append(compute_s / t if scaling == "strong" else p * compute_s / t)
    return {
        "ranks": list(ranks),
        "step_s": steps,
        "speedup": speedups,
        "efficiency": [s / p for s, p in zip(speedups, ranks)],
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


def _find(runs: list[dict], ranks: int, threads: int) -> dict | None:
    for r in runs:
        if r["ranks"] == ranks and r["threads"] == threads:
            return r
    return None


def _dp_runs(runs: list[dict]) -> list[dict]:
    return sorted((r for r in runs if r["ranks"] > 1), key=lambda r: r["ranks"])


def annotate(doc: dict) -> dict:
    """Add the model to a measured document (``whygpu.bench.scaleout.measure``), in place, and return it:
    the fit of alpha and B (``fit``), the prediction next to every measured run, a ``summary`` of the ratios
    the issue asks for, and the ``extrapolation`` to the named interconnects for this MLP and a larger one."""
    runs: list[dict] = doc["runs"]
    P_sweep = doc["sweep"]["ranks"]
    fit: dict[str, Any] = dict(fit_alpha_bandwidth(doc["sweep"]["bytes"], doc["sweep"]["seconds"], P_sweep))
    fit.update(ranks=P_sweep, weighting="relative residuals", source="measured here: bare MPI Allreduce sweep")
    doc["fit"] = fit
    dp = _dp_runs(runs)
    ref = dp[-1] if dp else None  # the widest run measured: where the exposed fraction comes from
    e = ref["exposed_s"] / ref["allreduce_s"] if ref and ref["allreduce_s"] > 0 else 1.0
    fb = ref["backward_s"] / ref["compute_s"] if ref and ref["compute_s"] > 0 else 1.0
    e, fb = min(1.0, max(0.0, e)), min(1.0, max(0.0, fb))
    nbytes = ref["bytes"] if ref else 4 * mlp_params(doc["params"]["widths"])
    doc["model"] = {
        "formula": "T(P) = T_compute/P + 2(P-1)/P * S/B + 2(P-1)*alpha - overlap",
        "overlap": "overlap = (1 - e) * T_comm, at most the backward pass of a rank's compute; e = exposed/allreduce "
        f"measured on {ref['ranks'] if ref else '-'} ranks",
        "exposed_fraction": e,
        "backward_fraction": fb,
        "gradient_bytes": nbytes,
        "alpha_s": fit["alpha_s"],
        "bandwidth_Bps": fit["bandwidth_Bps"],
    }
    for r in runs:
        base = _find(runs, 1, r["threads"])
        one = _find(runs, 1, 1)
        full = _find(runs, 1, doc["params"]["cores"])
        r["speedup_vs_1x1"] = one["step_s"] / r["step_s"] if one else None
        r["speedup_vs_1xall"] = full["step_s"] / r["step_s"] if full else None
        if base is None:
            r["predicted_s"] = None
            continue
        r["speedup"] = base["step_s"] / r["step_s"]  # over one rank with the same threads
        r["efficiency"] = r["speedup"] / r["ranks"]
        pred = predict_step(
            base["step_s"],
            r.get("bytes") or nbytes,
            r["ranks"],
            fit["alpha_s"],
            fit["bandwidth_Bps"],
            exposed_fraction=e,
            backward_fraction=fb,
        )
        r["predicted_s"] = pred["step_s"]
        r["predicted_parts"] = pred
        r["prediction_error"] = (pred["step_s"] - r["step_s"]) / r["step_s"]
    doc["summary"] = _summary(doc, ref)
    doc["extrapolation"] = _extrapolate(doc, ref, e, fb)
    return doc


def _summary(doc: dict, ref: dict | None) -> dict:
    runs = doc["runs"]
    one, full = _find(runs, 1, 1), _find(runs, 1, doc["params"]["cores"])
    out: dict[str, Any] = {"ranks": ref["ranks"] if ref else None, "threads": ref["threads"] if ref else None}
    if ref:
        out.update(
            speedup_vs_1x1=one["step_s"] / ref["step_s"] if one else None,
            speedup_vs_1xall=full["step_s"] / ref["step_s"] if full else None,
            exposed_over_allreduce=ref["exposed_s"] / ref["allreduce_s"] if ref["allreduce_s"] > 0 else None,
            dp_over_bare_bandwidth=ref.get("bandwidth_ratio"),
            prediction_error=ref.get("prediction_error"),
            comm_over_compute=ref["allreduce_s"] / ref["compute_s"] if ref["compute_s"] > 0 else None,
            # the fit at the gradient's size next to the bare Allreduce measured at that size: in shared memory the
            # "link" is the cache hierarchy, so one B cannot hold for buffers in cache and out of it
            fit_at_gradient_s=ring_allreduce_s(
                ref["bytes"], ref["ranks"], doc["fit"]["alpha_s"], doc["fit"]["bandwidth_Bps"]
            ),
            bare_at_gradient_s=ref.get("bare_allreduce_s"),
        )
    return out


def _extrapolate(doc: dict, ref: dict | None, e: float, fb: float) -> dict:
    """Strong and weak scaling curves, P = 1..1024, for each interconnect (this machine's fit and the public
    figures) and three models: the MLP measured here, :data:`LARGER_MODEL` and :data:`RESNET50`, whose compute
    is the measured one scaled by FLOPs (the same FLOP rate)."""
    widths = doc["params"]["widths"]
    batch = doc["params"]["batch"]
    threads = ref["threads"] if ref else 1
    base = _find(doc["runs"], 1, threads)
    if base is None:
        return {}
    tc = base["step_s"]
    models: list[dict[str, Any]] = []
    for w, measured in ((list(widths), True), (list(LARGER_MODEL), False)):
        n = mlp_params(w)
        models.append(
            {
                "name": "MLP " + "-".join(map(str, w)),
                "measured": measured,
                "params": n,
                "bytes": 4 * n,
                "flops": mlp_step_flops(w, batch),
            }
        )
    models.append(
        {
            "name": RESNET50["name"],
            "measured": False,
            "params": RESNET50["params"],
            "bytes": 4 * RESNET50["params"],
            "flops": RESNET50["flops_per_sample"] * batch,
            "source": RESNET50["source"],
        }
    )
    for m in models:
        m["flops_per_byte"] = m["flops"] / m["bytes"]
        m["compute_s"] = tc * m["flops"] / models[0]["flops"]  # this machine's FLOP rate, measured on the MLP
    links = [
        {
            "name": "this machine (shared memory)",
            "bandwidth_Bps": doc["fit"]["bandwidth_Bps"],
            "alpha_s": doc["fit"]["alpha_s"],
            "public": False,
            "source": "measured here: fitted to the Allreduce sweep",
        }
    ] + [dict(x) for x in INTERCONNECTS]
    curves = []
    for link in links:
        for m in models:
            for scaling in ("strong", "weak"):
                c = scaling_curve(
                    m["compute_s"],
                    m["bytes"],
                    EXTRAPOLATION_RANKS,
                    link["alpha_s"],
                    link["bandwidth_Bps"],
                    exposed_fraction=e,
                    backward_fraction=fb,
                    scaling=scaling,
                )
                curves.append({"interconnect": link["name"], "model": m["name"], "scaling": scaling, **c})
    return {
        "ranks": list(EXTRAPOLATION_RANKS),
        "batch": batch,
        "threads_per_rank": threads,
        "compute_note": f"a rank computes like {threads} thread(s) of this machine (measured {tc:.4g} s per step "
        f"on the global batch of {batch}); the other models' compute is scaled by their FLOPs (the same FLOP rate)",
        "interconnects": links,
        "models": models,
        "curves": curves,
    }


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
) -> dict:
    """Measure (``whygpu.bench.scaleout.measure``: P ranks under mpiexec) and annotate with the model;
    returns the ``whygpu.scaleout/1`` document."""
    from .bench.scaleout import measure

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
    )
    return annotate(doc)
