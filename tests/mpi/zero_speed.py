"""A measurement, not a test: issue 25's speed target for ZeRO stage 1.

    OMP_NUM_THREADS=2 timeout 600 mpiexec -n 2 python tests/mpi/zero_speed.py [steps]

The MLP 784-2048-2048-10, global batch 512, openmp, Adam, on 2 cores.  Settings
alternate step by step in one job, so a disturbance of the shared machine hits
all alike:

* ``1x2``: rank 0 alone, plain Sequential, 2 OpenMP threads, the whole batch (rank 1
  sleeps in a blocking read, off the cores: see Gate);
* ``2x1 none``: 2 ranks x 1 thread, DataParallel (allreduce, full Adam on every rank);
* ``2x1 optimizer``: 2 ranks x 1 thread, shard="optimizer" (reduce-scatter, Adam on
  half the parameters, allgather);
* ``2x1 opt+prefetch``: shard="optimizer", prefetch=True (the allgather left in flight by
  step() and waited for layer by layer in the next forward pass: allgather_wait_s).  Its timed
  step follows an untimed one with no barrier between, so that it waits for an allgather in
  flight as every step of a prefetched loop does;
* ``2x1 gradients``: shard="gradients".

A step is forward, loss, backward (with its communication) and the optimizer step (with
the allgather).  Rank 0 prints each setting's median step and the ratio step(1x2) /
step(2x1 ...): issue 25's target is >= 0.95 for shard="optimizer".  It also prints the
median of the sharded steps' update_s, reduce_scatter_s, allgather_s (allgather_wait_s with
prefetch) and exposed_s, and the
ceiling: 1x2's forward + backward against 2 ranks' forward + backward side by side on their
shares without communicating (no 2x1 setting can beat it: each rank still packs the whole
weight matrices for half the rows, and the ranks share caches and memory).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu._threads import set_num_threads
from whygpu.bench.measure import blas_threads
from whygpu.bench.train import build_mlp, synthetic_clusters

LAYERS, BATCH = [784, 2048, 2048, 10], 512
# libgomp's idle worker spins for GOMP_SPINCOUNT (300,000) pauses after a parallel region -- several
# ms on Zen 4 -- before it sleeps.  Interleaved, the 1x2 step's second thread was still spinning on
# rank 1's core when the 2x1 step began: rank 1's forward pass ran 5-8 ms slower (measured, 784-2048-
# 2048-10), and the sharded step's "exposed" wait on rank 0 absorbed it.  A pause between settings
# lets every setting start as it would in a loop of its own steps.
SETTLE_S = 0.05
KEYS = ("update_s", "reduce_scatter_s", "allgather_s", "allgather_wait_s", "exposed_s", "backward_s")


class Gate:
    """Rank 1 waits in a blocking read() on a FIFO while rank 0 runs the 1x2 step alone: asleep in
    the kernel, with no timer waking it.  (MPICH's Barrier busy-polls a core; an Ibarrier tested
    every 0.5 ms woke rank 1 2000 times a second on the core that rank 0's second OpenMP thread
    runs on, and a 1x2 step beside such a poller measured up to 25% slower here.)  Both ranks are
    on this machine, so a FIFO in a shared temporary folder joins them."""

    def __init__(self, comm):
        self.rank = comm.Get_rank()
        path = comm.bcast(tempfile.mkdtemp(prefix="zero_speed_") if self.rank == 0 else None)
        fifo = os.path.join(path, "gate")
        if self.rank == 0:
            os.mkfifo(fifo)
        comm.Barrier()
        # open() blocks until the other end is open too
        self.f = open(fifo, "wb", buffering=0) if self.rank == 0 else open(fifo, "rb", buffering=0)
        comm.Barrier()
        if self.rank == 0:
            os.unlink(fifo)
            os.rmdir(path)

    def open(self) -> None:
        """Rank 0: let rank 1 go on.  Rank 1: sleep until rank 0 does."""
        if self.rank == 0:
            self.f.write(b"x")
        elif self.f.read(1) != b"x":
            raise SystemExit("rank 0 ended")


def dp_step(dp, opt, xb, yb) -> None:
    """One training step of a DataParallel model: forward, loss, backward (its reduction), optimizer step."""
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(dp(xb, global_batch=BATCH), yb)
    dp.zero_grad()
    dp.backward(loss_fn.backward())
    opt.step()


def main(steps: int = 15, warmup: int = 3) -> None:
    comm = dist.init()
    P, r = comm.Get_size(), comm.Get_rank()
    if P != 2:
        raise SystemExit("run it with mpiexec -n 2")
    X, y = synthetic_clusters(BATCH * 4, LAYERS[0], LAYERS[-1], seed=0)
    loss_fn = nn.CrossEntropyLoss()
    single = build_mlp(LAYERS, "openmp", seed=0) if r == 0 else None
    single_opt = optim.Adam(single.parameters(), lr=1e-3) if single is not None else None
    runs = {}
    for name, shard, prefetch in (
        ("none", "none", False),
        ("optimizer", "optimizer", False),
        ("opt+prefetch", "optimizer", True),
        ("gradients", "gradients", False),
    ):
        model = build_mlp(LAYERS, "openmp", seed=0)
        dp = dist.DataParallel(model, shard=shard, prefetch=prefetch)
        runs[f"2x1 {name}"] = (dp, dp.optimizer(optim.Adam, lr=1e-3))
    times: dict[str, list[float]] = {"1x2": [], **{k: [] for k in runs}}
    parts: dict[str, dict[str, list[float]]] = {k: {} for k in runs}
    compute: dict[str, list[float]] = {"1x2": [], "2x1": []}  # forward + backward only
    apart = build_mlp(LAYERS, "openmp", seed=0)
    clock = time.perf_counter
    lo, hi = dist.share(BATCH, P, r)
    gate = Gate(comm)
    with blas_threads(1), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(warmup + steps):
            s = (i % 4) * BATCH
            xb, yb = X[s : s + BATCH], y[s : s + BATCH]
            # 1 rank x 2 threads: rank 0 alone, rank 1 asleep
            comm.Barrier()
            time.sleep(SETTLE_S)
            if single is not None and single_opt is not None:
                set_num_threads(2)
                with blas_threads(2):
                    t0 = clock()
                    loss_fn(single(xb), yb)
                    single.zero_grad()
                    single.backward(loss_fn.backward())
                    tc = clock() - t0
                    single_opt.step()
                    t = clock() - t0
                if i >= warmup:
                    times["1x2"].append(t)
                    compute["1x2"].append(tc)
            gate.open()
            set_num_threads(1)
            time.sleep(SETTLE_S)
            # the ceiling: 2 ranks side by side on their shares, forward and backward only, no communication
            comm.Barrier()
            t0 = clock()
            loss_fn(apart(xb[lo:hi]), yb[lo:hi])
            apart.zero_grad()
            apart.backward(loss_fn.backward())
            t = clock() - t0
            if i >= warmup:
                compute["2x1"].append(max(comm.allgather(t)))
            for name, (dp, opt) in runs.items():
                comm.Barrier()
                if dp.prefetch:
                    # Steady state: an untimed step leaves its allgather in flight, and the timed step
                    # starts right after it, with no barrier, so its forward pass waits for that allgather
                    # as a loop of prefetched steps does.  (Timed from a barrier instead, the allgather
                    # finished in the untimed barrier and the other settings' steps: a fairer-looking
                    # figure that no training loop gets.)
                    dp_step(dp, opt, xb[lo:hi], yb[lo:hi])
                t0 = clock()
                dp_step(dp, opt, xb[lo:hi], yb[lo:hi])
                t = clock() - t0
                if dp.prefetch:  # untimed: nothing of it still in flight into the next setting
                    for p in dp.parameters():
                        p.data  # noqa: B018  (reading .data waits for its allgather)
                if i >= warmup:
                    times[name].append(max(comm.allgather(t)))  # the step ends when the slower rank's does
                    for k in KEYS:
                        if k in dp.last_step and np.isfinite(dp.last_step[k]):
                            parts[name].setdefault(k, []).append(dp.last_step[k])
    if r == 0:
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{steps} steps each, interleaved; median step, ms (ratio = step(1x2) / step(setting)):")
        for k, v in med.items():
            extra = "  ".join(f"{p} {1e3 * float(np.median(x)):.1f}" for p, x in parts.get(k, {}).items())
            print(f"  {k:15s} {1e3 * v:7.1f}  ratio {med['1x2'] / v:.3f}  {extra}")
        c1, c2 = (float(np.median(compute[k])) for k in ("1x2", "2x1"))
        print(
            f"forward + backward only: 1x2 {1e3 * c1:.1f} ms, 2x1 side by side without communicating "
            f"{1e3 * c2:.1f} ms: ratio {c1 / c2:.3f}, the ceiling of any 2x1 setting's compute"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
