"""A sharded optimizer's state as a checkpoint holds it: per parameter, whatever the layout.

On P ranks, the optimizer of ``DataParallel(shard="optimizer" | "gradients")`` keeps, for each
gradient bucket k, the state (SGD's momentum, Adam's m and v) of shard r of the bucket's flat,
zero-padded buffer: c_k = ceil(n_k / P) elements, which cut the parameters wherever the shard
boundaries fall (``_sharded.py``).  That layout depends on P, on the bucket sizes and on the
model, so a checkpoint never holds it.  Instead:

* ``consolidate_state_dict(to)`` gathers every rank's shards of every state array on rank
  ``to`` (one ``Gather`` per bucket and state array), cuts each bucket's flat state back into
  its parameters, and keeps the dict an unsharded optimizer on ``model.parameters()`` would
  return: ``{"state": {i: {"exp_avg": (shape of parameter i), ...}}, "param_groups": [...]}``.
* ``load_state_dict(full)`` does the reverse on each rank for the layout it has now: it lays the
  parameters' state arrays out in each bucket's flat order, pads to P * c_k and keeps shard r.
  No communication: every rank reads the whole state, so a state saved on P = 2 loads on P = 3,
  on P = 1, with other bucket sizes, at stage 1 or 2, or into an unsharded optimizer.
"""

from __future__ import annotations

import numpy as np

from ..nn._state import STATE_NAMES, assign_optimizer_state, check_optimizer_state, optimizer_state_dict

__all__ = ["consolidate", "state_dict", "load_state_dict", "prepare_load"]


def _layout(opt):
    """(buckets, {id(model parameter): its index in model.parameters()}) of a ShardedOptimizer."""
    dp = opt._dp
    buckets = dp._ensure_buckets()
    index = {id(p): i for i, p in enumerate(dp.module.parameters())}
    return buckets, index


def _host(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.to_host()


def consolidate(opt, to: int) -> None:
    """Every rank calls it (a collective); rank ``to`` keeps the full per-parameter state."""
    dp, inner = opt._dp, opt.optimizer
    if isinstance(to, bool) or not isinstance(to, (int, np.integer)) or not 0 <= to < dp.size:
        raise ValueError(f"to must be a rank in 0..{dp.size - 1}, got {to!r}")
    buckets, index = _layout(opt)
    buckets.wait_gathered()  # nothing of the last step still in flight
    names = STATE_NAMES[inner._kind]
    stores = inner._states()
    n = len(dp.module.parameters())
    full: list[dict] = [{} for _ in range(n)]
    mine_have = [any(s is not None for s in store) for store in stores]
    # every rank takes part in the same Gathers: a state array any rank holds is gathered (zeros elsewhere)
    have = [any(h) for h in zip(*dp.comm.allgather(mine_have))] if stores else []
    for name, store, present in zip(names, stores, have):
        if not present:  # SGD without momentum, or no step yet: nothing to gather
            continue
        for k, b in enumerate(buckets.grad_buckets):
            mine = np.ascontiguousarray(_host(store[k]) if store[k] is not None else np.zeros(b.chunk, dp.module.dtype))
            flat = np.empty(b.chunk * dp.size, mine.dtype) if dp.rank == to else None
            dp.comm.Gather(mine, flat, root=to)
            if flat is None:
                continue
            off = 0
            for p in b.params:
                full[index[id(p)]][name] = flat[off : off + p.size].reshape(p.shape).copy()
                off += p.size
    if dp.rank != to:
        opt._consolidated = None
        return
    sd = optimizer_state_dict(inner)  # the hyperparameters and the step count, from the inner optimizer
    state = {}
    for i, entry in enumerate(full):
        if entry:
            if inner._kind == "adam":
                entry["step"] = int(inner.t)
            state[i] = entry
    sd["state"] = state
    sd["param_groups"][0]["params"] = list(range(n))
    opt._consolidated = (inner._steps, sd)


def state_dict(opt) -> dict:
    """The state consolidated on this rank, if it is still the optimizer's state."""
    got = getattr(opt, "_consolidated", None)
    dp = opt._dp
    if got is None:
        raise RuntimeError(
            f"rank {dp.rank} holds no consolidated state: call opt.consolidate_state_dict(to=r) on every rank "
            f"(it is a collective), then opt.state_dict() on rank r"
        )
    steps, sd = got
    if steps != opt.optimizer._steps:
        raise RuntimeError(
            "the state consolidated earlier is out of date (the optimizer has stepped or loaded a state since): "
            "call opt.consolidate_state_dict() again on every rank"
        )
    return sd


def prepare_load(opt, state: dict):
    """load_state_dict's checks: a function that assigns this rank's slices (nothing before)."""
    dp, inner = opt._dp, opt.optimizer
    buckets, index = _layout(opt)
    params = dp.module.parameters()
    per, hyper, step = check_optimizer_state(inner, state, [p.shape for p in params], [p.dtype for p in params])
    names = STATE_NAMES[inner._kind]
    new: list[list] = []  # per state array, per bucket: this rank's slice, or None
    for name in names:
        if not any(name in entry for entry in per.values()):
            new.append([None] * len(buckets.grad_buckets))
            continue
        row = []
        for b in buckets.grad_buckets:
            flat = np.zeros(b.chunk * dp.size, dp.module.dtype)  # the padding's state is zero
            off = 0
            for p in b.params:
                entry = per.get(index[id(p)], {})
                if name in entry:
                    flat[off : off + p.size] = entry[name].ravel()
                off += p.size
            row.append(flat[dp.rank * b.chunk : (dp.rank + 1) * b.chunk].copy())
        new.append(row)
    shard_state = {k: {name: new[j][k] for j, name in enumerate(names) if new[j][k] is not None}
                   for k in range(len(buckets.grad_buckets))}  # fmt: skip

    def apply() -> None:
        buckets.wait_gathered()
        assign_optimizer_state(inner, shard_state, hyper, step)
        opt._consolidated = None

    return apply


def load_state_dict(opt, state: dict) -> None:
    prepare_load(opt, state)()
