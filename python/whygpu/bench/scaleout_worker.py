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
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

_clock = time.perf_counter


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="whygpu.bench.scaleout_worker")
    p.add_argument("--mode", choices=("step", "sweep"), required=True)
    p.add_argument("--layers", default="784,2048,2048,10")
    p.add_argument("--batch", type=int, default=512, help="the global batch")
    p.add_argument("--backend", default="openmp")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--sizes", default="1024", help="sweep: message sizes in bytes")
    p.add_argument("--budget", type=float, default=0.25, help="sweep: seconds per size, about")
    p.add_argument("--threads", type=int, default=1)
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
    from whygpu import nn, optim
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
    dp = dist.DataParallel(model, bucket_mb=a.bucket_mb) if P > 1 and not a.independent else None
    opt = optim.SGD(model.parameters(), lr=0.01)
    records = []
    with blas_threads(a.threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(a.warmup + a.steps):
            s = (i % n_batches) * a.batch
            xb, yb = X[s + lo : s + hi], y[s + lo : s + hi]
            if P > 1:
                comm.Barrier()  # untimed: every rank starts the step together, as after an allreduce
            t0 = _clock()
            if dp is not None:
                loss_fn(dp(xb), yb)
                t1 = _clock()
                dp.zero_grad()
                dp.backward(loss_fn.backward(), weight=(hi - lo) / a.batch)
                opt.step()
                t2 = _clock()
                rec = dict(dp.last_step)
            else:
                loss_fn(model(xb), yb)
                t1 = _clock()
                model.zero_grad()
                tb = _clock()
                model.backward(loss_fn.backward())
                rec = {"backward_s": _clock() - tb, "allreduce_s": 0.0, "exposed_s": 0.0, "bytes": 0, "buckets": 0}
                opt.step()
                t2 = _clock()
            rec.update(step_s=t2 - t0, forward_s=t1 - t0)
            if i >= a.warmup:
                records.append(rec)
        bare = []
        if dp is not None:
            buf = np.ones(max(1, records[-1]["bytes"] // 4), dtype=np.float32)
            bare = _timed_allreduce(comm, MPI, buf, max(a.steps, 5))
    if a.independent and P > 1:
        # side by side, a step is over when the slowest rank is done (as it is once an allreduce joins them)
        per_rank = comm.allgather([x["step_s"] for x in records])
        for i, x in enumerate(records):
            x["step_s"] = max(steps[i] for steps in per_rank)
    checksum = float(sum(np.asarray(p.data, dtype=np.float64).sum() for p in model.parameters()))
    sums = comm.allgather(checksum)
    rank_step = comm.allgather(float(np.median([x["step_s"] for x in records])))
    return {
        "data_parallel": dp is not None,
        "independent": bool(a.independent and P > 1),
        "backend": a.backend,
        "batch": a.batch,
        "layers": layers,
        "steps": records,
        "bare_allreduce_s": bare,
        "rank_step_s": rank_step,
        "weights_spread": float(max(sums) - min(sums)),
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
