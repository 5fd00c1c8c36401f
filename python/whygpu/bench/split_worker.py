"""The MPI job behind ``whygpu scaleout --strategy``: one model and one global batch trained by P ranks in each
way -- data parallel (``dp``), ZeRO-1 (``zero1``), tensor parallel (``tp``) and pipeline parallel (``pp``) --
each step timed, its bytes counted and each rank's memory measured; rank 0 writes the JSON.

    mpiexec -n 2 python -m mpi4py -m whygpu.bench.split_worker --json out.json

For the pipeline, at each m of ``--micro`` and each schedule, in this order:

1. **terms apart**: each rank times its own stage's forward and backward on one micro-batch (the last stage's
   forward with its loss), every rank at once after a barrier, without any message (the median of
   ``--repeats``); then the time one activation takes from rank to rank (a ping-pong of that size, half the
   round trip, median);
2. (the prediction is made from these terms alone, by :func:`whygpu.scaleout_split.predict_runs`: the bench
   never imports the model it checks);
3. **the run**: ``--steps`` steps after 2 of warm-up; each step's length is the slowest rank's, and the
   measured bubble is the idle share of the ranks' time: 1 - sum(busy) / (p x length), busy being the time in
   forward and backward passes (waits for messages are idle).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

_clock = time.perf_counter
STRATEGIES = ("dp", "zero1", "tp", "pp")
MEMORY = ("params_bytes", "grads_bytes", "optimizer_bytes")  # dp.memory()'s names


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="whygpu.bench.split_worker")
    p.add_argument("--layers", default="768,1024,1024,1024,512")
    p.add_argument("--batch", type=int, default=512, help="the global batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--micro", default="1,2,4,8", help="the pipeline's micro-batch counts")
    p.add_argument("--schedules", default="gpipe,1f1b")
    p.add_argument("--repeats", type=int, default=7, help="timed calls of each pipeline term")
    p.add_argument("--backend", default="openmp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    return p.parse_args(argv)


def build(widths: list[int]):
    """The model every strategy trains: Linear, ReLU, ... (no ReLU after the last Linear), seeded alike."""
    from whygpu import nn
    from whygpu._random import manual_seed

    manual_seed(0)
    layers: list = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1]))
        if k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def data(widths: list[int], n: int):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, widths[0])).astype(np.float32), rng.integers(0, widths[-1], n)


def _median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def _nbytes(arrays) -> int:
    return int(sum(a.nbytes for a in arrays))


def _slowest(comm, seconds: float) -> float:
    return float(comm.allreduce(seconds, op=_max()))


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _memory(params, opt) -> dict[str, int]:
    """This rank's parameters, gradients and optimizer state, from the arrays themselves."""
    state = getattr(opt, "_states", None)
    arrays = [a for group in (state() if callable(state) else []) for a in group if isinstance(a, np.ndarray)]
    return {
        "params_bytes": _nbytes(p.data for p in params),
        "grads_bytes": _nbytes(p.grad for p in params),
        "optimizer_bytes": _nbytes(arrays),
    }


# ---- data parallel, ZeRO-1, tensor parallel: a step each, timed the same way -----------------------------------


def run_replicated(kind: str, args, widths, comm) -> dict[str, Any]:
    """dp / zero1 / tp: ``args.steps`` Adam steps after 2 warm-up; step = the slowest rank's."""
    import whygpu.distributed as dist
    from whygpu import nn, optim

    P, r = comm.Get_size(), comm.Get_rank()
    x, y = data(widths, args.batch)
    loss_fn = nn.CrossEntropyLoss()
    model = build(widths).to(args.backend)
    if kind == "tp":
        net = dist.tensor_parallel(model)
        opt = optim.Adam(net.parameters(), lr=1e-4)
        xs, ys = x, y  # every rank: the whole batch
    else:
        dp = dist.DataParallel(model, shard="optimizer" if kind == "zero1" else "none")
        opt = dp.optimizer(optim.Adam, lr=1e-4)
        s0, s1 = dist.share(args.batch, P, r)
        xs, ys = np.ascontiguousarray(x[s0:s1]), y[s0:s1]
    steps, sent = [], 0
    for k in range(args.steps + 2):
        comm.Barrier()
        t0 = _clock()
        if kind == "tp":
            net.reset_traffic()
            out = net(xs)
            loss_fn(out, ys)
            net.zero_grad()
            net.backward(loss_fn.backward())
            opt.step()
            tr = net.traffic()
            sent = tr.forward_bytes + tr.backward_bytes
        else:
            out = dp(xs, global_batch=args.batch)
            loss_fn(out, ys)
            dp.zero_grad()
            dp.backward(loss_fn.backward())
            opt.step()
            # the allreduce sums every gradient; ZeRO-1 reduce-scatters them and allgathers the parameters
            sent = dp.last_step["bytes"] * (2 if kind == "zero1" else 1)
        if k >= 2:
            steps.append(_slowest(comm, _clock() - t0))
    if kind == "tp":
        mem = _memory(net.parameters(), opt)
    else:
        m = dp.memory(opt)
        mem = {k: int(m[k]) for k in MEMORY}
    return {"strategy": kind, "step_s": _median(steps), "steps_s": steps, "bytes_per_step": int(sent), **mem}


# ---- pipeline -------------------------------------------------------------------------------------------------


def pipeline_terms(pp, x, y, m: int, repeats: int) -> dict[str, Any]:
    """This rank's forward and backward actions timed without any message (``Pipeline.time_actions``: the
    schedule's order, its stash and buffers, stand-ins for what the neighbours send; every rank at once), the
    medians over ``repeats`` steps' worth; and the time one activation takes from rank to rank."""
    from whygpu import nn

    comm, r = pp.comm, pp.rank
    s1 = int(np.ceil(len(x) / m))  # micro-batch 0's rows (share gives the first ones the extra row)
    loss_fn = nn.CrossEntropyLoss()
    fwd, bwd = [], []
    for k in range(repeats + 1):
        t = pp.time_actions(x, y, loss_fn)
        if k:  # the first is a warm-up
            fwd += t["F"]
            bwd += t["B"]
    pp.zero_grad()
    # one activation, rank to rank: half a ping-pong between neighbours (both directions cost the same here)
    width = int(comm.bcast(pp.out_features, root=0))  # the first boundary's activation
    msg = np.zeros((s1, width), np.float32)
    back = np.empty_like(msg)
    trips = []
    for k in range(repeats + 1):
        comm.Barrier()
        t0 = _clock()
        if r == 0:
            comm.Send(msg, dest=1, tag=7)
            comm.Recv(back, source=1, tag=7)
        elif r == 1:
            comm.Recv(back, source=0, tag=7)
            comm.Send(msg, dest=0, tag=7)
        if k:
            trips.append((_clock() - t0) / 2)
    every = comm.allgather((_median(fwd), _median(bwd)))
    message = float(comm.bcast(_median(trips), root=0))
    return {"forward_s": [f for f, _ in every], "backward_s": [b for _, b in every], "message_s": message}


def run_pipeline(args, widths, comm, schedule_name: str, m: int) -> dict[str, Any]:
    import whygpu.distributed as dist
    from whygpu import nn, optim
    from whygpu.schedules import schedule as make_schedule
    from whygpu.schedules import stash_peak

    P = comm.Get_size()
    x, y = data(widths, args.batch)
    pp = dist.Pipeline(build(widths).to(args.backend), micro_batches=m, schedule=schedule_name)
    opt = optim.Adam(pp.parameters(), lr=1e-4)
    terms = pipeline_terms(pp, x, y, m, args.repeats)
    sched = make_schedule(schedule_name, P, m)
    loss_fn = nn.CrossEntropyLoss()
    steps, bubbles, fwd, bwd, waits = [], [], [], [], []
    for k in range(args.steps + 2):
        pp.zero_grad()
        pp.step(x, y, loss_fn)
        opt.step()
        st = pp.last_step
        length = _slowest(comm, st["step_s"])
        busy = float(comm.allreduce(st["busy_s"]))
        if k >= 2:
            steps.append(length)
            bubbles.append(1.0 - busy / (P * length))
            fwd += [e - s for kind, _, s, e in st["timeline"] if kind == "F"]
            bwd += [e - s for kind, _, s, e in st["timeline"] if kind == "B"]
            waits.append(st["wait_s"])
    st = pp.last_step
    every = comm.allgather(
        {
            "stage": list(pp.balance[pp.rank]),
            "stash_peak": st["stash_peak"],
            "stash_peak_bytes": st["stash_peak_bytes"],
            "messages": st["messages"],
            # what the run's own actions took (medians): beside the terms measured apart, they say which missed
            "forward_s": _median(fwd),
            "backward_s": _median(bwd),
            "wait_s": _median(waits),
            **_memory(pp.parameters(), opt),
        }
    )
    return {
        "strategy": "pp",
        "schedule": schedule_name,
        "micro_batches": m,
        "step_s": _median(steps),
        "steps_s": steps,
        "bubble": _median(bubbles),
        "bubbles": bubbles,
        "bubble_formula": (P - 1) / (m + P - 1),
        "terms": terms,
        "stash_peak_formula": stash_peak(sched.ranks),
        "ranks": every,
        "bytes_per_step": int(sum(e["messages"]["activation_bytes"] + e["messages"]["gradient_bytes"] for e in every)),
    }


def main(argv=None) -> None:
    args = _args(argv)
    os.environ.setdefault("WHYGPU_NUM_THREADS", str(args.threads))
    import whygpu.distributed as dist
    from whygpu._threads import set_num_threads

    comm = dist.init()
    set_num_threads(args.threads)
    widths = [int(w) for w in args.layers.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    runs: list[dict] = []
    t0 = time.time()
    for kind in strategies:
        if kind == "pp":
            for m in (int(v) for v in args.micro.split(",")):
                for name in args.schedules.split(","):
                    runs.append(run_pipeline(args, widths, comm, name, m))
        else:
            mine = run_replicated(kind, args, widths, comm)
            every = comm.allgather({k: mine[k] for k in MEMORY})
            runs.append({**mine, "ranks": every})
    if comm.Get_rank() == 0:
        doc = {
            "ranks": comm.Get_size(),
            "layers": widths,
            "batch": args.batch,
            "steps": args.steps,
            "threads": args.threads,
            "backend": args.backend,
            "optimizer": "adam",
            "wall_s": time.time() - t0,
            "runs": runs,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f)


if __name__ == "__main__":
    main()
