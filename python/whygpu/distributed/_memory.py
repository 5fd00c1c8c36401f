"""``dp.memory()``: the bytes of parameters, gradients and optimizer state this rank holds, measured
from the arrays the package allocated (each allocation once, however many views of it), beside the
formula's figures (ZeRO's: stage 1 divides the optimizer state by P, stage 2 the gradients too)."""

from __future__ import annotations

import math

import numpy as np

from ._sharded import ShardedBuckets, ShardedOptimizer

__all__ = ["memory_report", "state_count"]


def _owner(a) -> tuple[int, int]:
    """(identity, bytes) of the allocation array ``a`` lives in: a view counts its whole base once."""
    while isinstance(a, np.ndarray):
        base = a.base
        if not isinstance(base, np.ndarray):  # as_strided's views hold their array through a wrapper
            base = getattr(base, "base", None)
        if not isinstance(base, np.ndarray):
            break
        a = base
    return id(a), int(a.nbytes)


def _bytes(arrays) -> int:
    seen: dict[int, int] = {}
    for a in arrays:
        if a is not None:
            k, n = _owner(a)
            seen[k] = n
    return sum(seen.values())


def state_count(opt) -> int:
    """How many parameter-sized state arrays the optimizer keeps: Adam 2 (m, v), SGD 1 with momentum, else 0."""
    inner = getattr(opt, "optimizer", opt) if isinstance(opt, ShardedOptimizer) else opt
    if inner is None:
        return 0
    if getattr(inner, "_kind", None) == "sgd" and getattr(inner, "momentum", 0.0) == 0.0:
        return 0
    return len(inner._states())


def memory_report(dp, optimizer=None) -> dict:
    """dp.memory(): see DataParallel.memory."""

    model = dp.module
    params = model.parameters()
    buckets = dp._buckets
    sharded = isinstance(buckets, ShardedBuckets)
    device = model._backend.device is not None
    opt = optimizer if optimizer is not None else dp._optimizer
    # what lives where the model computes (GPU memory for cuda), and the host staging beside it
    p_arrays: list = [p._data for p in params]
    g_arrays: list = [p._grad for p in params]
    staging: list = []
    if buckets is not None:
        bufs = [b.buf for b in buckets.buckets if b.kind != "flag"]
        (staging if device else g_arrays).extend(bufs)
    if sharded:
        assert isinstance(buckets, ShardedBuckets)
        pbufs = [b.pbuf for b in buckets.grad_buckets]
        (staging if device else p_arrays).extend(pbufs)
        if buckets.stage == "gradients":
            (staging if device else g_arrays).extend(b.gshard for b in buckets.grad_buckets)
        if device:  # the shard parameter's own values and gradient on the GPU
            p_arrays += [sp._data for sp in buckets.shard_params]
            g_arrays += [sp._grad for sp in buckets.shard_params]
    states = [s for store in (opt._states() if opt is not None else []) for s in store if s is not None]
    n = model.count_params()
    isz = model._dtype.itemsize
    P = dp.size
    k = state_count(opt)
    out = {
        "params_bytes": _bytes(p_arrays),
        "grads_bytes": _bytes(g_arrays),
        "optimizer_bytes": _bytes(states),
        "shard": dp.shard,
        "ranks": P,
        "n_params": n,
        "optimizer": type(getattr(opt, "optimizer", opt)).__name__ if opt is not None else None,
        "formula_bytes": {
            "params_bytes": n * isz,
            "grads_bytes": math.ceil(n * isz / (P if dp.shard == "gradients" else 1)),
            "optimizer_bytes": math.ceil(k * n * isz / (P if dp.shard != "none" else 1)),
        },
        "host_staging_bytes": _bytes(staging),
        "grads_peak_bytes": buckets.peak_bytes if sharded and buckets.stage == "gradients" else None,
    }
    out["total_bytes"] = out["params_bytes"] + out["grads_bytes"] + out["optimizer_bytes"]
    return out
