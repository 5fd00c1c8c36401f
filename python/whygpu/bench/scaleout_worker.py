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
``--events``: every rank also records what it did in each timed step (:class:`_Events`), and rank 0's
JSON gets ``events``: every rank's events of one step (rank 0's median step), for the measured Chrome
trace (:mod:`whygpu.scaleout_heldout_trace`); without it nothing is wrapped and nothing recorded.
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
    p.add_argument("--events", action="store_true", help="step: record each rank's events (see _Events)")
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


class _Events:
    """``--events``: what this rank did in each timed step, on its own clock (``time.perf_counter``;
    each event's ``start_s`` and ``end_s`` are seconds from the step's start).

    On the compute lane, each read off the clock at both ends of the code it names: every layer's
    forward kernel (a Linear with the ReLU fused into its GEMM is one event; ``model(x)``'s input check
    before the first and output copy after the last), the loss, ``zero_grad``, the loss's gradient, the
    backward pass's set-up (``dp.backward`` before the last layer: the loss gradient scaled, the buckets
    begun), each layer's backward split where the layer code splits it (a Linear's dW and db until its
    ``_grads_done``, then dX; an activation's dX), each ``ready(i)`` that posts the complete buckets
    (inside a Linear's ``_grads_done``, after each layer, and ``finish``'s), the exposed wait (the
    buckets' last ``_wait_all`` in ``dp.backward``), what ``dp.backward`` does after it, and the update
    (unsharded: ``opt.step()``; sharded: ``opt.step()`` holding the inner optimizer's step on the
    shards, the posting of the allgathers and, without prefetch, the wait for them); with prefetch, the
    forward pass's wait for each layer's allgather.  On the communication lane, each bucket's collective
    from its posting (``Bucket.t_start``) to its completion (``t_done``): the gradients' allreduces or
    reduce-scatters (and the sharded failure count's allreduce), the allgathers, and with prefetch the
    previous step's allgathers that completed in this step (posted before the step: ``start_s`` < 0).
    What no event covers (the layer loop, Python between the calls) stays uncovered.  The cost: the
    wrappers below, a few clock reads per layer and per bucket (nothing is wrapped without --events).
    The instance attributes wrapped: each layer's ``forward`` and ``_backward``, the buckets'
    ``ready`` and ``_wait_all``, ``model._params_needed`` (prefetch), the inner optimizer's ``step``."""

    def __init__(self, model, dp, opt):
        from whygpu.nn import Linear

        self.ev: list[tuple] = []  # (name, lane, start, end, kind, args), absolute clock
        self.waits: list[tuple[float, float]] = []  # the buckets' _wait_all calls
        self.steps: list[list[dict]] = []  # each timed step's events, from its start
        self.names = [f"{type(x).__name__.lower()}{i}" for i, x in enumerate(model.layers)]
        self._linear = Linear
        self._in_dw = False  # inside a Linear's _grads_done: the ready() that posts its buckets
        for i, layer in enumerate(model.layers):
            self._wrap_layer(i, layer)
        self.buckets: Any = None
        self.sharded = dp is not None and dp.shard != "none"
        self.prefetch = False
        if dp is not None:
            self.buckets = b = dp._ensure_buckets()  # (unsharded: what the first backward would make)
            self.prefetch = bool(getattr(b, "prefetch", False))
            wait_all = b._wait_all

            def timed_wait_all() -> None:
                t = _clock()
                try:
                    wait_all()
                finally:
                    self.waits.append((t, _clock()))

            b._wait_all = timed_wait_all
            ready = b.ready  # DataParallel hands it to Sequential as model._grads_ready in each backward
            posts = {(i, dw): (f"post complete buckets (after {'dW ' if dw else ''}{n})", {"layer": i})
                     for i, n in enumerate(self.names) for dw in (False, True)}  # fmt: skip
            posts[(-1, False)] = ("post complete buckets (finish: what is left)", {"layer": -1})

            def timed_ready(i: int) -> None:
                t = _clock()
                ready(i)
                name, args = posts[(i, self._in_dw)]
                self.ev.append((name, "compute", t, _clock(), "post", args))

            b.ready = timed_ready
            need = model._params_needed
            if need is not None:  # prefetch: Sequential waits for each layer's allgather before it
                mine = b._layer_buckets
                waits = [(f"wait allgather before {n}", {"layer": i}) for i, n in enumerate(self.names)]
                gathers = {id(x): (f"allgather b{k}", {"bucket": k, "bytes": int(x.nbytes), "prefetched": True})
                           for k, x in enumerate(b.buckets)}  # fmt: skip

                def needed(i: int) -> None:
                    todo = [x for x in mine[i] if x in b._gathering]  # the previous step's, still arriving
                    t = _clock()
                    need(i)
                    t1 = _clock()
                    if mine[i]:
                        self.ev.append((waits[i][0], "compute", t, t1, "prefetch_wait", waits[i][1]))
                    for x in todo:  # complete now: posted by the previous step's opt.step()
                        name, args = gathers[id(x)]
                        self.ev.append((name, "comm", x.t_start, x.t_done, "allgather", args))

                model._params_needed = needed
            if self.sharded:
                inner = opt.optimizer
                step = inner.step

                def timed_step() -> None:
                    self._read(False)  # the reduce-scatters' times, before the allgathers reuse the fields
                    t = _clock()
                    step()
                    self.ev.append(("update shards", "compute", t, _clock(), "update", {}))

                inner.step = timed_step

    def _wrap_layer(self, i: int, layer) -> None:
        # (names and args made once: a wrapped call costs two clock reads and an append)
        name, nxt = self.names[i], self.names[i + 1] if i + 1 < len(self.names) else ""
        fwd, bwd, add, args = layer.forward, layer._backward, self.ev.append, {"layer": i}
        f_name, fused_name, dw_name, dx_name = (
            f"forward {name}",
            f"forward {name} (+ {nxt}, fused)",
            f"dW {name}",
            f"dX {name}",
        )

        if not isinstance(layer, self._linear):

            def forward(x):
                t = _clock()
                y = fwd(x)
                add((f_name, "compute", t, _clock(), "forward", args))
                return y

            def backward(dy, need_input_grad):
                t = _clock()
                dx = bwd(dy, need_input_grad)
                add((dx_name, "compute", t, _clock(), "backward_dx", args))
                return dx

            layer.forward, layer._backward = forward, backward
            return

        def linear_forward(x, relu=False):
            t = _clock()
            y = fwd(x, relu)
            add((fused_name if relu else f_name, "compute", t, _clock(), "forward", args))
            return y

        seq_done: list = [None]  # Sequential's _grads_done for the call under way (DataParallel: ready(i))
        marks: list[float] = []

        def grads_done() -> None:
            marks.append(_clock())
            done = seq_done[0]
            if done is not None:
                self._in_dw = True
                done()
                self._in_dw = False
            marks.append(_clock())

        def linear_backward(dy, need_input_grad):
            t = _clock()
            seq_done[0] = layer._grads_done
            marks.clear()
            layer._grads_done = grads_done
            try:
                dx = bwd(dy, need_input_grad)
            finally:
                layer._grads_done = seq_done[0]
            t1 = _clock()
            a, b = marks if marks else (t1, t1)
            add((dw_name, "compute", t, a, "backward_dw", args))  # (and db)
            if need_input_grad:
                add((dx_name, "compute", b, t1, "backward_dx", args))
            return dx

        layer.forward, layer._backward = linear_forward, linear_backward  # type: ignore[method-assign]

    def begin(self) -> None:
        self.ev.clear()
        self.waits.clear()

    def _spans(self, allgather: bool) -> list[tuple]:
        """Each bucket's collective as its fields hold it now: (name, posted, completed, kind, args)."""
        out = []
        for k, b in enumerate(self.buckets.buckets):
            if b.kind == "flag":  # sharded: the failure count's own allreduce, with the gradients'
                if not allgather:
                    flag = {"bytes": int(b.buf.nbytes)}
                    out.append(("allreduce failure count", b.t_start, b.t_done, "allreduce", flag))
                continue
            kind = "allgather" if allgather else b.kind
            out.append((f"{kind} b{k}", b.t_start, b.t_done, kind, {"bucket": k, "bytes": int(b.nbytes)}))
        return out

    def _read(self, allgather: bool) -> None:
        for name, s, e, kind, args in self._spans(allgather):
            self.ev.append((name, "comm", s, e, kind, args))

    def after_step(self) -> None:
        """After the step's last clock: the buckets' times (unsharded: the allreduces'; sharded without
        prefetch: the allgathers'; the reduce-scatters' were read before the update, and prefetch's
        allgathers are read as the next forward pass waits for them)."""
        if self.buckets is not None and not self.sharded:
            self._read(False)
        elif self.sharded and not self.prefetch:
            self._read(True)

    def end(self, t0: float, marks: dict[str, float], timed: bool) -> None:
        """The step's events from its start (t0), with the worker's own clocks (``marks``)."""
        m, ev = marks, self.ev
        ev.append(("loss", "compute", m["forward"], m["loss"], "loss", {}))
        ev.append(("zero_grad", "compute", m["loss"], m["zero_grad"], "zero_grad", {}))
        ev.append(("loss gradient", "compute", m["zero_grad"], m["grad"], "loss", {}))
        fw = [e for e in ev if e[4] in ("forward", "prefetch_wait") and e[1] == "compute" and e[2] < m["forward"]]
        if fw:  # model(x) / dp(x) around the layers: the input checked before, the output copied after
            first, last = min(e[2] for e in fw), max(e[3] for e in fw)
            ev.append(("forward set-up (input checked)", "compute", t0, first, "forward_setup", {}))
            ev.append(("forward end (output copied)", "compute", last, m["forward"], "forward_end", {}))
        bw = [e for e in ev if e[4] in ("backward_dw", "backward_dx", "post") and m["grad"] <= e[2] <= m["backward"]]
        if bw:
            first, last = min(e[2] for e in bw), max(e[3] for e in bw)
            ev.append(("backward set-up (before the last layer)", "compute", m["grad"], first, "backward_setup", {}))
            waits = [w for w in self.waits if last <= w[0] and w[1] <= m["backward"]]
            end = last
            if waits:  # finish(): the wait for the collectives the backward pass did not hide
                ev.append(("exposed wait", "compute", waits[-1][0], waits[-1][1], "exposed", {}))
                end = waits[-1][1]
            what = "backward end (the sums delivered)" if self.buckets is not None else "backward end"
            ev.append((what, "compute", end, m["backward"], "backward_end", {}))
        if not self.sharded:
            ev.append(("update", "compute", m["backward"], m["step"], "update", {}))
        else:  # opt.step(), and inside it the shards' update, the allgathers posted and waited for
            ev.append(("opt.step()", "compute", m["backward"], m["step"], "optimizer_step", {}))
            upd = [e for e in ev if e[4] == "update" and e[2] >= m["backward"]]
            end_upd = upd[-1][3] if upd else m["backward"]
            waits = [w for w in self.waits if end_upd <= w[0] and w[1] <= m["step"]]
            if waits:
                ev.append(("post allgathers", "compute", end_upd, waits[-1][0], "post", {}))
                ev.append(("allgather wait", "compute", waits[-1][0], waits[-1][1], "allgather_wait", {}))
            else:  # prefetch: left in flight into the next forward pass
                ev.append(("post allgathers (left in flight)", "compute", end_upd, m["step"], "post", {}))
        if timed:
            out = []
            for n, lane, s, e, k, a in sorted(ev, key=lambda x: (x[1], x[2])):
                out.append({"name": n, "lane": lane, "start_s": s - t0, "end_s": e - t0, "kind": k})
                if a:
                    out[-1]["args"] = a
            self.steps.append(out)


def _gather_events(comm, records: list[dict], ev: _Events) -> dict | None:
    """Every rank's events of one timed step, on rank 0 (None elsewhere): the step whose wall time is
    rank 0's median (the upper one of an even count), the same step on every rank."""
    walls = [x["step_s"] for x in records]
    k = comm.bcast(int(np.argsort(walls)[len(walls) // 2]) if comm.Get_rank() == 0 else None, root=0)
    mine = {"rank": comm.Get_rank(), "step_s": walls[k], "events": ev.steps[k]}
    ranks = comm.gather(mine, root=0)
    if ranks is None:
        return None
    return {"step": k, "ranks": ranks, "clock": "time.perf_counter on each rank, seconds from its step's start",
            "steps_recorded": len(ev.steps)}  # fmt: skip


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
    ev = _Events(model, dp, opt) if a.events else None
    records = []
    with blas_threads(a.threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(a.warmup + a.steps):
            s = (i % n_batches) * a.batch
            xb, yb = X[s + lo : s + hi], y[s + lo : s + hi]
            if P > 1 and not (dp is not None and a.prefetch):
                comm.Barrier()  # untimed: every rank starts the step together, as after an allreduce
            # (with prefetch no barrier: the ranks meet in the next forward pass, waiting for the allgather,
            # and that wait is the step's; an untimed barrier would hide it)
            if ev is not None:
                ev.begin()
            t0 = _clock()
            out = dp(xb) if dp is not None else model(xb)
            tf = _clock()
            loss_fn(out, yb)
            t1 = _clock()
            if dp is not None:
                dp.zero_grad()
                tz = _clock()
                g = loss_fn.backward()
                tg = _clock()
                dp.backward(g, weight=(hi - lo) / a.batch)
                tu = _clock()
                opt.step()
                t2 = _clock()
                rec = dict(dp.last_step)
                rec.setdefault("update_s", t2 - tu)  # unsharded: the whole update, timed here
            else:
                model.zero_grad()
                tz = _clock()
                g = loss_fn.backward()
                tg = _clock()
                model.backward(g)
                tu = _clock()
                rec = {"backward_s": tu - tz, "allreduce_s": 0.0, "exposed_s": 0.0, "bytes": 0, "buckets": 0}
                opt.step()
                t2 = _clock()
                rec["update_s"] = t2 - tu
            rec.update(step_s=t2 - t0, forward_s=t1 - t0)
            if ev is not None:
                ev.after_step()
                marks = {"forward": tf, "loss": t1, "zero_grad": tz, "grad": tg, "backward": tu, "step": t2}
                ev.end(t0, marks, timed=i >= a.warmup)
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
    events = _gather_events(comm, records, ev) if ev is not None else None
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
        **({} if events is None else {"events": events}),
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
