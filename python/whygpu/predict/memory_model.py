"""How many bytes of training state each rank holds, with and without sharding (ZeRO), and how many devices a
public-size model needs just to hold it.

Data parallelism as first built keeps on every rank a full copy of the parameters, of their gradients and
of the optimizer's state (Adam: two moments per parameter).  ZeRO -- Rajbhandari, Rasley, Ruwase and He,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020 -- splits ("shards") them
over the P ranks instead, one stage at a time:

=================  =====================  ============================  ===============================
shard              ZeRO stage             fp32 Adam, bytes / parameter  mixed-precision Adam
=================  =====================  ============================  ===============================
``none``           plain data parallel    4 + 4 + 8                     2 + 2 + 12
``optimizer``      1: optimizer state     4 + 4 + 8/P                   2 + 2 + 12/P
``gradients``      2: + gradients         4 + 4/P + 8/P                 2 + 2/P + 12/P
``parameters``     3: + parameters        (4 + 4 + 8)/P                 (2 + 2 + 12)/P
=================  =====================  ============================  ===============================

(parameters + gradients + optimizer state).  Mixed precision, as in the ZeRO paper (its section 3.1,
"K = 12"): fp16/bf16 parameters and gradients (2 bytes each) and, in the optimizer's state, an fp32
master copy of the parameters and Adam's fp32 momentum and variance (4 + 4 + 4 bytes).  Stage 3 is here
"on paper": whygpu.distributed builds stages 1 and 2.

Counted: these three only.  *Not* counted: activations (they grow with the batch and the sequence
length, and are what activation checkpointing trades for compute), temporary buffers, communication
buffers, the framework's own memory and fragmentation -- so the device counts below are lower bounds.
"""

from __future__ import annotations

import math
from typing import Any

from .scaleout_model import SHARDS

__all__ = [
    "STAGES",
    "ZERO_STAGE",
    "PRECISIONS",
    "OPTIMIZER_STATE_FLOATS",
    "PUBLIC_MODELS",
    "DEVICES",
    "bytes_per_param",
    "shard_elements",
    "rank_bytes",
    "devices_needed",
    "devices_reason",
    "kept_bytes",
    "extrapolate_memory",
]

# What each shard setting splits over the ranks (the ZeRO stage in parentheses): cumulative.
STAGES: tuple[str, ...] = ("none", "optimizer", "gradients", "parameters")
ZERO_STAGE = {"none": 0, "optimizer": 1, "gradients": 2, "parameters": 3}
_SHARDED = {
    "none": (),
    "optimizer": ("optimizer",),
    "gradients": ("optimizer", "grads"),
    "parameters": ("optimizer", "grads", "params"),
}
KEYS = ("params", "grads", "optimizer")

# Floats of state per parameter each optimizer keeps (momentum: one buffer; Adam: m and v).
OPTIMIZER_STATE_FLOATS = {"sgd": 0, "momentum": 1, "adam": 2}

# Bytes per parameter of the parameters and gradients, and of each optimizer float; "master" is the fp32 copy
# of the parameters that mixed precision keeps in the optimizer's state (the ZeRO paper's K = 12 for Adam:
# 4 master + 4 momentum + 4 variance).
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {"param": 4, "grad": 4, "state": 4, "master": 0, "label": "fp32"},
    "mixed": {"param": 2, "grad": 2, "state": 4, "master": 4, "label": "mixed precision (fp16/bf16 + fp32 master)"},
}

# Public models and devices the extrapolation uses: round parameter counts of two public size classes (Llama 2
# 7B has 6.74e9, Llama 2 70B 6.9e10: Touvron et al. 2023), and the memory of two public devices.
PUBLIC_MODELS: tuple[dict[str, Any], ...] = (
    {"name": "7B model", "params": 7_000_000_000, "source": "a 7e9-parameter model, e.g. Llama 2 7B (6.74e9)"},
    {"name": "70B model", "params": 70_000_000_000, "source": "a 7e10-parameter model, e.g. Llama 2 70B (6.9e10)"},
)
DEVICES: tuple[dict[str, Any], ...] = (
    {"name": "80 GB (H100 / A100 80GB)", "bytes": 80e9, "source": "public figure: NVIDIA H100 SXM / A100 80GB"},
    {"name": "141 GB (H200)", "bytes": 141e9, "source": "public figure: NVIDIA H200 SXM, 141 GB HBM3e"},
)


def _check(stage: str, ranks: int, precision: str, optimizer: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"shard must be one of {', '.join(STAGES)}; got {stage!r}")
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be an integer >= 1, got {ranks!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if optimizer not in OPTIMIZER_STATE_FLOATS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_FLOATS)}; got {optimizer!r}")


def _full(precision: str, optimizer: str) -> dict[str, float]:
    """Bytes per parameter of each part, unsharded."""
    pr = PRECISIONS[precision]
    return {
        "params": pr["param"],
        "grads": pr["grad"],
        "optimizer": pr["master"] + pr["state"] * OPTIMIZER_STATE_FLOATS[optimizer],
    }


def bytes_per_param(stage: str, ranks: int, precision: str = "fp32", optimizer: str = "adam") -> dict[str, float]:
    """Bytes per parameter each rank holds: {"params", "grads", "optimizer", "total"}; a sharded part is 1/P
    of its unsharded figure (fp32 Adam, shard="optimizer", P = 4: 4 + 4 + 8/4 = 10)."""
    _check(stage, ranks, precision, optimizer)
    out = {k: v / ranks if k in _SHARDED[stage] else float(v) for k, v in _full(precision, optimizer).items()}
    out["total"] = sum(out[k] for k in KEYS)
    return out


def shard_elements(n: int, ranks: int) -> int:
    """Elements of one rank's shard of a flat buffer of n: ceil(n / P) (the last shard padded)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return -(-int(n) // ranks)


def rank_bytes(
    n_params: int, stage: str, ranks: int, precision: str = "fp32", optimizer: str = "adam", *, pad: bool = True
) -> dict[str, float]:
    """Bytes one rank holds for a model of ``n_params`` parameters: {"params", "grads", "optimizer", "total"}.
    ``pad``: a sharded part holds ceil(n/P) elements, as the buffers are allocated (the last shard padded);
    without, n/P (the extrapolation: a parameter count is round anyway)."""
    _check(stage, ranks, precision, optimizer)
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 0:
        raise ValueError(f"n_params must be an integer >= 0, got {n_params!r}")
    per_shard = shard_elements(n_params, ranks) if pad else n_params / ranks
    out = {k: v * (per_shard if k in _SHARDED[stage] else n_params) for k, v in _full(precision, optimizer).items()}
    out["total"] = sum(out[k] for k in KEYS)
    return out


def devices_needed(
    n_params: int, device_bytes: float, stage: str, precision: str = "fp32", optimizer: str = "adam"
) -> dict[str, Any]:
    """The fewest devices of ``device_bytes`` each whose per-rank training state (parameters, gradients,
    optimizer state; *not* activations) fits: {"devices": int or None, "per_rank_bytes", "why"}.
    None when no count suffices: the parts that are not sharded alone exceed one device."""
    _check(stage, 1, precision, optimizer)
    if not device_bytes > 0:
        raise ValueError(f"device_bytes must be > 0, got {device_bytes!r}")
    full = _full(precision, optimizer)
    whole = sum(v for k, v in full.items() if k not in _SHARDED[stage]) * n_params  # on every rank, whatever P
    split = sum(v for k, v in full.items() if k in _SHARDED[stage]) * n_params  # divided by P
    if whole > device_bytes or (split and whole >= device_bytes):  # whole + split / P > device for every P
        unsharded = " + ".join(k for k in KEYS if k not in _SHARDED[stage])
        return {
            "devices": None,
            "per_rank_bytes": None,
            "why": f"the unsharded {unsharded} alone take {whole / 1e9:.4g} GB per rank: more than "
            f"{device_bytes / 1e9:.4g} GB at any P",
        }
    p = max(1, math.ceil(split / (device_bytes - whole))) if split else 1
    while p > 1 and whole + split / (p - 1) <= device_bytes:  # guard against float rounding of the ceil
        p -= 1
    while whole + split / p > device_bytes:
        p += 1
    return {"devices": p, "per_rank_bytes": whole + split / p, "why": ""}


def kept_bytes(n_params: int, stage: str, precision: str = "fp32", optimizer: str = "adam") -> float:
    """Bytes of the training state a stage does not shard: on every rank, whatever P."""
    _check(stage, 1, precision, optimizer)
    return sum(v for k, v in _full(precision, optimizer).items() if k not in _SHARDED[stage]) * n_params


_NAMES = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state"}


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def devices_reason(
    n_params: int, device_bytes: float, stage: str, precision: str = "fp32", optimizer: str = "adam"
) -> str:
    """Why :func:`devices_needed` gives the count it gives, in one sentence worked from the same numbers: what
    stays whole on every device, what it leaves of the device for the sharded part, and that part over what is
    left (a 70B model in mixed precision with ZeRO-2 on 141 GB: 140 GB of 2-byte parameters on every device leave
    1 GB a device for the 980 GB it shards, so 980 devices)."""
    need = devices_needed(n_params, device_bytes, stage, precision, optimizer)
    if need["devices"] is None:
        return need["why"]
    full = _full(precision, optimizer)
    kept = [k for k in KEYS if k not in _SHARDED[stage] and full[k]]
    split_k = [k for k in KEYS if k in _SHARDED[stage] and full[k]]
    whole = sum(full[k] for k in kept) * n_params
    split = sum(full[k] for k in split_k) * n_params
    gb = lambda b: f"{b / 1e9:.4g} GB"  # noqa: E731
    width = "fp32" if precision == "fp32" else "fp16/bf16"
    bpp = lambda ks: " + ".join(f"{full[k]:g}" for k in ks)  # noqa: E731
    devs = f"{need['devices']} device{'s' if need['devices'] > 1 else ''}"
    if not split:
        return f"nothing is sharded: all {gb(whole)} ({bpp(kept)} bytes a parameter) fit on one device"
    shards = f"the {gb(split)} of {_and([_NAMES[k] for k in split_k])} it shards ({bpp(split_k)} bytes a parameter)"
    if not kept:
        return f"everything is sharded: {shards} over {gb(device_bytes)} a device needs {devs}"
    return (
        f"{gb(whole)} of {_and([_NAMES[k] for k in kept])} ({bpp(kept)} bytes a parameter, {width}) on every device "
        f"leave {gb(device_bytes - whole)} of its {gb(device_bytes)} for {shards}: {devs}"
    )


def extrapolate_memory(
    models: tuple[dict[str, Any], ...] = PUBLIC_MODELS,
    devices: tuple[dict[str, Any], ...] = DEVICES,
    optimizer: str = "adam",
) -> dict[str, Any]:
    """For each public model, precision and device: the devices each shard stage needs just to hold the training
    state (bytes per rank at that count), and the per-rank bytes at one device.  A JSON-ready document."""
    rows = []
    for m in models:
        for precision in PRECISIONS:
            for d in devices:
                row: dict[str, Any] = {
                    "model": m["name"],
                    "params": m["params"],
                    "precision": precision,
                    "device": d["name"],
                    "device_bytes": d["bytes"],
                    "unsharded_bytes": rank_bytes(m["params"], "none", 1, precision, optimizer, pad=False)["total"],
                }
                for stage in STAGES:
                    row[stage] = devices_needed(m["params"], d["bytes"], stage, precision, optimizer)
                rows.append(row)
    return {
        "optimizer": optimizer,
        "stages": list(STAGES),
        "zero_stage": dict(ZERO_STAGE),
        "bytes_per_param": {p: _full(p, optimizer) for p in PRECISIONS},  # unsharded; a sharded part / P
        "models": [dict(m) for m in models],
        "devices": [dict(d) for d in devices],
        "rows": rows,
        "not_counted": "activations, temporary and communication buffers, the framework's own memory and "
        "fragmentation",  # so every count is a lower bound
        "source": "bytes per parameter: Rajbhandari et al., ZeRO, SC 2020 (mixed-precision Adam: 2 + 2 + 12)",
    }


MEMORY_KEYS = ("params_bytes", "grads_bytes", "optimizer_bytes", "total_bytes")


def memory_section(doc: dict, max_ranks: int = 16) -> dict | None:
    """Per-rank memory measured in each run (from DataParallel.memory(), or the plain model's buffers for
    one rank) next to the formula (:mod:`whygpu.predict.memory_model`, the last shard padded), the formula's lines
    against P for the figure, and the devices public models need.  None when no run measured memory."""

    runs = [r for r in doc["runs"] if r.get("memory") and not r.get("side_by_side") and not r.get("share_of")]
    if not runs:
        return None
    opt = str(doc["params"].get("optimizer") or "sgd").lower()
    n = int(runs[0]["memory"]["n_params"])
    rows = []
    unsharded_opt = rank_bytes(n, "none", 1, "fp32", opt)["optimizer"]
    for r in sorted(runs, key=lambda x: (x["ranks"], SHARDS.index(x.get("shard") or "none"))):
        shard = r.get("shard") or "none"
        f = rank_bytes(n, shard, r["ranks"], "fp32", opt)
        meas = r["memory"]["max"]
        rows.append(
            {
                "shard": shard,
                "zero_stage": ZERO_STAGE[shard],
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
                k + "_bytes": [rank_bytes(n, stage, p, "fp32", opt)[k] for p in ranks]
                for k in ("params", "grads", "optimizer", "total")
            },
        }
        for stage in STAGES
    }
    return {
        "n_params": n,
        "optimizer": opt,
        "precision": "fp32",
        "rows": rows,
        "lines": lines,
        "note": "measured: the bytes of the buffers DataParallel (or, on one rank, the model and optimizer) "
        "allocated for parameters, gradients and optimizer state, the largest over the ranks; formula: "
        f"{bytes_per_param('none', 1, 'fp32', opt)['total']:g} bytes per parameter unsharded, the sharded "
        "parts ceil(n/P) elements per rank; activations not counted",
        "extrapolation": extrapolate_memory(optimizer="adam"),
    }


MEMORY_HEAD = (
    "ranks x threads", "shard (ZeRO)", "params", "grads (between steps; peak)", "optimizer state", "total",
    "opt. vs unsharded",
)  # fmt: skip


def memory_rows(mem: dict, unit: str = "") -> list[list[str]]:
    """The memory table (:func:`memory_section`'s ``rows``) as text, one row per run: measured / formula
    in MB (1e6 bytes) for each kind of state, as the CLI prints it and the report shows it (``unit``: " MB").
    The measured gradient is what a rank holds between steps; where stage 2 freed the full gradient
    once reduced, the most it held at once during the backward pass follows (", peak ...")."""

    def mb(b) -> str:
        return "n/a" if b is None else f"{b / 1e6:.3g}{unit}"

    rows = []
    for row in mem["rows"]:
        x, f = row["measured"], row["formula"]
        cells = [f"{mb(x[k])} / {mb(f[k])}" for k in ("params_bytes", "grads_bytes", "optimizer_bytes")]
        if row.get("grads_peak_bytes"):
            cells[1] += f", peak {mb(row['grads_peak_bytes'])}"
        rows.append(
            [
                f"{row['ranks']} x {row['threads']}",
                f"{row['shard']} ({row['zero_stage']})",
                *cells,
                f"{mb(x['total_bytes'])} / {mb(f['total_bytes'])}",
                "-" if row["optimizer_vs_unsharded"] is None else f"x{row['optimizer_vs_unsharded']:.3g}",
            ]
        )
    return rows
