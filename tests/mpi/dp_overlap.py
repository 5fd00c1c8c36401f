"""A measurement, not a test: how much of DataParallel's allreduce the backward pass hides.

    WHYGPU_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout 300 mpiexec -n 2 python tests/mpi/dp_overlap.py

The MLP of issue 24 (784-2048-2048-10, global batch 512, openmp, 1 thread per
rank), timed as ``whygpu.bench.scaleout_worker`` times it, for each setting
named on the command line (default: all): ``default`` (DataParallel's defaults,
progress by a helper thread), ``test`` (the same buckets, progress by Test()
calls after each layer), ``one-bucket`` (bucket_mb=25 and first_bucket_mb=25:
the buckets before issue 24, one 23 MB bucket).  Settings alternate step by step
so that a disturbance of the shared machine hits all alike.  Each step also
runs a bare ``Allreduce`` of the same bytes.  Rank 0 prints per setting the
medians, exposed / allreduce, and the bare Allreduce's time over DataParallel's
(its bandwidth relative to the bare one).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from mpi4py import MPI

import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu._threads import set_num_threads
from whygpu.bench.measure import blas_threads
from whygpu.bench.train import build_mlp, synthetic_clusters
from whygpu.distributed._buckets import _Progress

SETTINGS = {"default": {}, "test": {}, "one-bucket": {"bucket_mb": 25.0, "first_bucket_mb": 25.0}}


def main(names: list[str], steps: int = 15, warmup: int = 3) -> None:
    comm = dist.init()
    P, r = comm.Get_size(), comm.Get_rank()
    set_num_threads(1)
    layers, batch = [784, 2048, 2048, 10], 512
    X, y = synthetic_clusters(batch * 4, layers[0], layers[-1], seed=0)
    runs = {}
    for name in names:
        model = build_mlp(layers, "openmp", seed=0)
        dp = dist.DataParallel(model, **SETTINGS[name])
        if name == "test":
            dp._ensure_buckets().progress = "test"
        runs[name] = (model, dp, optim.SGD(model.parameters(), lr=0.01), [])
    loss_fn = nn.CrossEntropyLoss()
    clock = time.perf_counter
    _Progress.poll_s = float(os.environ.get("POLL_S", _Progress.poll_s))
    with blas_threads(1), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(warmup + steps):
            s = (i % 4) * batch
            xb, yb = X[s : s + batch], y[s : s + batch]
            for _model, dp, opt, recs in runs.values():
                lo, hi = dist.share(batch, P, r)
                comm.Barrier()
                t0 = clock()
                loss_fn(dp(xb[lo:hi], global_batch=batch), yb[lo:hi])
                dp.zero_grad()
                dp.backward(loss_fn.backward())
                opt.step()
                rec = dict(dp.last_step, step_s=clock() - t0)
                for k, b in enumerate(dp._buckets.buckets):
                    rec[f"b{k}_ms"] = (b.t_done - b.t_start) * 1e3
                    rec[f"b{k}_start_ms"] = (b.t_start - dp._buckets.t_begin) * 1e3
                buf = np.ones(rec["bytes"] // 4, np.float32)
                comm.Barrier()
                t0 = clock()
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                rec["bare_s"] = clock() - t0
                if i >= warmup:
                    recs.append(rec)
    if r == 0:
        print(f"{P} ranks x 1 thread, 784-2048-2048-10, global batch {batch}, openmp; medians of {steps} steps")
        for name, (_m, _dp, _o, recs) in runs.items():
            med = {k: float(np.median([x[k] for x in recs])) for k in recs[0] if k != "progress"}
            print(
                f"{name:>10}: buckets {recs[0]['buckets']} ({recs[0]['progress']})  step {med['step_s'] * 1e3:.1f} ms  "
                f"backward {med['backward_s'] * 1e3:.1f}  allreduce {med['allreduce_s'] * 1e3:.2f} "
                f"(summed {med['allreduce_sum_s'] * 1e3:.2f}, first start at {med['first_start_s'] * 1e3:.1f})  "
                f"exposed {med['exposed_s'] * 1e3:.2f}  exposed/allreduce {med['exposed_s'] / med['allreduce_s']:.2f}  "
                f"bare {med['bare_s'] * 1e3:.2f} ms  bare/allreduce {med['bare_s'] / med['allreduce_s']:.2f}",
                flush=True,
            )
            print("    ", {k: round(v, 2) for k, v in med.items() if k.startswith("b") and k.endswith("ms")})


if __name__ == "__main__":
    main(sys.argv[1:] or list(SETTINGS))
