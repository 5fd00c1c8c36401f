"""The scale-out measurement one MPI job runs (``mpiexec -n P python -m mpi4py -m whygpu.bench.scaleout_worker``):
timed data-parallel training steps, or a sweep of bare Allreduce calls; rank 0 writes the JSON.

Started by :func:`whygpu.bench.scaleout.launch`, which sets the threads per
rank (WHYGPU_NUM_THREADS, OMP_NUM_THREADS, the BLAS variables) before the
ranks start.  ``--mode step``: the MLP on the given back end, each rank on
its share of every global batch, wrapped in ``whygpu.distributed.DataParallel``
when there is more than one rank (one rank trains the plain model: the
baseline); per step the wall time and ``dp.last_step``; then a bare
``Allreduce`` of the gradient's size in the same job, for comparison.
``--mode sweep``: bare ``Allreduce`` of float32 buffers at each size.
``--shard optimizer|gradients``: DataParallel shards the optimizer state (ZeRO-1), and the gradient
(ZeRO-2), over the ranks; the job then also times a bare ``Reduce_scatter`` and ``Allgather`` of
the gradient's size; ``--prefetch`` leaves each step's allgather in flight until the next forward pass
needs a layer (``DataParallel(prefetch=True)``); ``--first-bucket-mb`` sets DataParallel's first bucket
(default: its own).  Every ``--mode step`` job reports each rank's bytes
of parameters, gradients and optimizer state (``dp.memory()``, or the plain model's and optimizer's buffers),
and whether every rank ended with the same weights (``weights_identical``: the ranks' SHA-256 of every
parameter's bytes, allgathered and compared; ``weights_sha256``: rank 0's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Any

import numpy as np

_clock = time.perf_counter
_MEMORY_KEYS = ("params_bytes", "grads_bytes", "optimizer_bytes", "total_bytes")


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="whygpu.bench.scaleout_worker")
    p.add_argument("--mode", choices=("step", "sweep"), required=True)
    p.add_argument("--layers", default="784,2048,2048,10")
    p.add_argument("--batch", type=int, default=512, help="the global batch")
    p.add_argument("--backend", default="openmp")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument(
        "--first-bucket-mb", type=float, default=None, help="DataParallel's first_bucket_mb (default: its own, 1 MiB)"
    )
    p.add_argument("--sizes", default="1024", help="sweep: message sizes in bytes")
    p.add_argument("--budget", type=float, default=0.25, help="sweep: seconds per size, about")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", choices=("none", "optimizer", "gradients"), default="none")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="sgd")
    p.add_argument("--prefetch", action="store_true", help="sharded: DataParallel(prefetch=True)")
    p.add_argument(
        "--independent",
        action="store_true",
        help="step: P ranks each train the plain model on their share, without communicating (side by side)",
    )
    p.add_argument("--json", required=True, help="where rank 0 writes its result")
    return p.parse_args(argv)


def _timed_allreduce(comm, MPI, buf: np.ndarray, reps: int) -> list[float]:
    """Seconds of each of `reps` in-place sum-allreduces of buf (after a barrier and one untimed call)."""
    comm.Barrier()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    times = []
    for _ in range(reps):
        t0 = _clock()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append(_clock() - t0)
    return times


def _timed_reduce_scatter_allgather(comm, MPI, nbytes: int, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of `reps` bare Reduce_scatter_block and Allgather calls on a float32 gradient of `nbytes`
    (padded to a multiple of P, as a sharded DataParallel pads its flat buffer)."""
    P = comm.Get_size()
    shard = max(1, -(-(nbytes // 4) // P))
    full = np.ones(shard * P, dtype=np.float32)
    part = np.empty(shard, dtype=np.float32)
    rs, ag = [], []
    comm.Barrier()
    comm.Reduce_scatter_block(full, part, op=MPI.SUM)  # untimed first calls
    comm.Allgather(part, full)
    for _ in range(reps):
        comm.Barrier()
        t0 = _clock()
        comm.Reduce_scatter_block(full, part, op=MPI.SUM)
        t1 = _clock()
        comm.Allgather(part, full)
        t2 = _clock()
        rs.append(t1 - t0)
        ag.append(t2 - t1)
    return rs, ag


def _optimizer(name: str, model, dp=None):
    """The optimizer; through ``dp.optimizer`` where DataParallel makes it (sharded: state for this rank's
    shard only; and what ``dp.memory()`` counts), else on the model's parameters."""
    from whygpu import optim

    kw: dict[str, Any] = {"lr": 1e-3 if name == "adam" else 0.01}
    cls: Any = optim.Adam if name == "adam" else optim.SGD
    if name == "momentum":
        kw["momentum"] = 0.9
    if dp is not None and callable(getattr(dp, "optimizer", None)):
        return dp.optimizer(cls, **kw)
    return cls(model.parameters(), **kw)


def _plain_memory(model, opt, ranks: int) -> dict:
    """Bytes of the buffers the plain model and its optimizer allocated (one rank, or ranks side by side)."""
    params = list(model.parameters())
    states = [x for lst in opt._states() for x in lst if x is not None]
    p = int(sum(x.data.nbytes for x in params))
    g = int(sum(x.grad.nbytes for x in params if x.grad is not None))
    o = int(sum(getattr(x, "nbytes", 0) for x in states))
    n = int(sum(x.data.size for x in params))
    src = "the model's and optimizer's buffers"
    return {"params_bytes": p, "grads_bytes": g, "optimizer_bytes": o, "total_bytes": p + g + o, "n_params": n,
            "shard": "none", "ranks": ranks, "formula_bytes": None, "source": src}  # fmt: skip


def _data_parallel(dist, model, a):
    """DataParallel, sharded where asked: a clear error where this whygpu.distributed has no shard= yet."""
    kw = {} if a.first_bucket_mb is None else {"first_bucket_mb": a.first_bucket_mb}
    if a.shard == "none":
        return dist.DataParallel(model, bucket_mb=a.bucket_mb, **kw)
    import inspect

    if "shard" not in inspect.signature(dist.DataParallel).parameters:
        raise SystemExit(
            f"--shard {a.shard}: this whygpu.distributed.DataParallel has no shard= (ZeRO stage 1/2) parameter"
        )
    return dist.DataParallel(model, bucket_mb=a.bucket_mb, shard=a.shard, prefetch=a.prefetch, **kw)


def _sweep(a, comm, MPI) -> dict:
    sizes = [int(s) for s in a.sizes.split(",")]
    out: dict = {"bytes": [], "seconds": [], "seconds_min": [], "seconds_max": [], "reps": []}
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), dtype=np.float32)
        t0 = _clock()
        _timed_allreduce(comm, MPI, buf, 1)
        first = _clock() - t0
        reps = comm.bcast(int(min(200, max(5, a.budget / max(first / 2, 1e-7)))), root=0)  # every rank the same
        times = _timed_allreduce(comm, MPI, buf, reps)
        out["bytes"].append(buf.nbytes)
        out["seconds"].append(float(np.median(times)))
        out["seconds_min"].append(float(np.min(times)))
        out["seconds_max"].append(float(np.max(times)))
        out["reps"].append(reps)
    return out


def _steps(a, comm, MPI) -> dict:
    import whygpu.distributed as dist
    from whygpu import nn
    from whygpu._threads import set_num_threads
    from whygpu.bench.measure import blas_threads
    from whygpu.bench.train import build_mlp, synthetic_clusters

    P, r = comm.Get_size(), comm.Get_rank()
    set_num_threads(a.threads)
    layers = [int(w) for w in a.layers.split(",")]
    n_batches = 4
    X, y = synthetic_clusters(a.batch * n_batches, layers[0], layers[-1], seed=0)  # the same data on every rank
    lo, hi = dist.share(a.batch, P, r)
    model = build_mlp(layers, a.backend, seed=0)
    loss_fn = nn.CrossEntropyLoss()
    dp = _data_parallel(dist, model, a) if P > 1 and not a.independent else None
    opt = _optimizer(a.optimizer, model, dp)
    records = []
    with blas_threads(a.threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(a.warmup + a.steps):
            s = (i % n_batches) * a.batch
            xb, yb = X[s + lo : s + hi], y[s + lo : s + hi]
            if P > 1 and not (dp is not None and a.prefetch):
                comm.Barrier()  # untimed: every rank starts the step together, as after an allreduce
            # (with prefetch no barrier: the ranks meet in the next forward pass, waiting for the allgather,
            # and that wait is the step's; an untimed barrier would hide it)
            t0 = _clock()
            if dp is not None:
                loss_fn(dp(xb), yb)
                t1 = _clock()
                dp.zero_grad()
                dp.backward(loss_fn.backward(), weight=(hi - lo) / a.batch)
                tu = _clock()
                opt.step()
                t2 = _clock()
                rec = dict(dp.last_step)
                rec.setdefault("update_s", t2 - tu)  # unsharded: the whole update, timed here
            else:
                loss_fn(model(xb), yb)
                t1 = _clock()
                model.zero_grad()
                tb = _clock()
                model.backward(loss_fn.backward())
                rec = {"backward_s": _clock() - tb, "allreduce_s": 0.0, "exposed_s": 0.0, "bytes": 0, "buckets": 0}
                tu = _clock()
                opt.step()
                t2 = _clock()
                rec["update_s"] = t2 - tu
            rec.update(step_s=t2 - t0, forward_s=t1 - t0)
            if i >= a.warmup:
                records.append(rec)
        if dp is not None and a.prefetch:
            for p in model.parameters():  # reading .data waits for the last step's allgather, still in flight,
                p.data  # noqa: B018   so that it does not share the wire with the bare calls below
        bare: list[float] = []
        bare_rs: list[float] = []
        bare_ag: list[float] = []
        if dp is not None:
            buf = np.ones(max(1, records[-1]["bytes"] // 4), dtype=np.float32)
            bare = _timed_allreduce(comm, MPI, buf, max(a.steps, 5))
            if a.shard != "none":
                bare_rs, bare_ag = _timed_reduce_scatter_allgather(comm, MPI, records[-1]["bytes"], max(a.steps, 5))
    mem = dict(dp.memory()) if dp is not None and hasattr(dp, "memory") else _plain_memory(model, opt, P)
    mem.setdefault("source", "DataParallel.memory(): the buffers it allocated")
    mem_ranks = comm.allgather(mem)
    if a.independent and P > 1:
        # side by side, a step is over when the slowest rank is done (as it is once an allreduce joins them)
        per_rank = comm.allgather([x["step_s"] for x in records])
        for i, x in enumerate(records):
            x["step_s"] = max(steps[i] for steps in per_rank)
    # every rank's weights, bit for bit: a SHA-256 of every parameter's bytes (a sum of the values
    # would miss two ranks whose differences cancel, or that differ below the sum's rounding)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(np.ascontiguousarray(p.data).tobytes())  # (prefetch: reading .data waits for it)
    hashes = comm.allgather(digest.hexdigest())
    rank_step = comm.allgather(float(np.median([x["step_s"] for x in records])))
    return {
        "data_parallel": dp is not None,
        "independent": bool(a.independent and P > 1),
        "backend": a.backend,
        "batch": a.batch,
        "layers": layers,
        "steps": records,
        "bare_allreduce_s": bare,
        "bare_reduce_scatter_s": bare_rs,
        "bare_allgather_s": bare_ag,
        "shard": a.shard if dp is not None else "none",
        "prefetch": bool(dp is not None and a.prefetch),
        "optimizer": a.optimizer,
        "memory": {
            "per_rank": mem_ranks,
            "max": {k: max(int(m[k]) for m in mem_ranks) for k in _MEMORY_KEYS},
            "n_params": int(mem_ranks[0]["n_params"]),
            "formula_bytes": mem_ranks[0].get("formula_bytes"),
            "grads_peak_bytes": max((m.get("grads_peak_bytes") or 0 for m in mem_ranks), default=0) or None,
            "source": mem_ranks[0]["source"],
        },
        "rank_step_s": rank_step,
        "weights_sha256": hashes[0],
        "weights_identical": len(set(hashes)) == 1,
    }


def main(argv=None) -> None:
    a = _args(argv)
    from mpi4py import MPI

    import whygpu.distributed as dist

    dist.init()
    comm = dist.comm()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res = _sweep(a, comm, MPI) if a.mode == "sweep" else _steps(a, comm, MPI)
    if comm.Get_rank() == 0:
        res.update(
            ranks=comm.Get_size(),
            threads=a.threads,
            load_average=load,
            mpi_library=MPI.Get_library_version().strip().splitlines()[0],
        )
        with open(a.json, "w") as f:
            json.dump(res, f)
    comm.Barrier()


if __name__ == "__main__":
    main()
