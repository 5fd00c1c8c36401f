"""The MPI job that measures the step simulator's terms apart from any training run
(``mpiexec -n P python -m mpi4py -m whygpu.bench.stepterms_worker ...``); rank 0 writes the JSON.

Started by :func:`whygpu.bench.stepterms.measure_terms`, which sets the threads per rank (the
environment, as the scale-out worker's launcher does).  In order, on the same P ranks:

1. **compute alone**: rank 0 times every piece of one step (:mod:`whygpu.bench.stepterms_compute`)
   on its share of the global batch while the other ranks sleep in a barrier that does not spin
   (``Ibarrier`` tested every 5 ms);
2. **compute beside**: every rank times the same pieces at once, without communicating (a barrier
   before each piece, so that the ranks run the same kernel side by side as in a step); a piece's
   figure is the slowest rank's median (the step waits for the slowest);
3. **collectives, bare**: for each kind -- ``Iallreduce`` in place, ``Ireduce_scatter_block`` in
   place (as ``_sharded.py``), ``Iallgather`` in place, and ``Isend`` + ``Irecv`` around a ring --
   at each size, every rank posts the call after a barrier and DataParallel's own progress thread
   (``whygpu.distributed._buckets._Progress``: ``Test()``, then sleep 0.1 ms) moves it while the main
   thread waits; the time is from the post to the thread's completion;
4. **interference**: the probe of :func:`_probe` -- a run of collectives of one size beside a run of
   one layer's GEMMs on every rank, each against its time alone.

Every timing list is reduced to its median with min and max (``stats``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from .stepterms_compute import layer_pieces, stats, time_piece, update_pieces

_clock = time.perf_counter
KINDS = ("allreduce", "reduce_scatter", "allgather", "sendrecv")
QUIET_POLL_S = 5e-3  # how often a rank that waits for rank 0's compute looks whether it is done


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="whygpu.bench.stepterms_worker")
    p.add_argument("--layers", default="784,2048,2048,10")
    p.add_argument("--batch", type=int, default=512, help="the global batch (each rank times its share)")
    p.add_argument("--backend", default="openmp")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="sgd")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="timed calls of each compute piece")
    p.add_argument("--update-elements", default="", help="flat parameter sizes of the update fit (elements)")
    p.add_argument("--sizes", default="4,64,1024,16384,262144,1048576,4194304,16777216,33554432")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--budget", type=float, default=0.2, help="seconds per collective size, about")
    p.add_argument("--max-reps", type=int, default=100)
    p.add_argument("--probe-bytes", type=int, default=0, help="the probe's collective (0: the largest layer's)")
    p.add_argument("--probe-kinds", default="allreduce,reduce_scatter,allgather")
    p.add_argument("--probe-reps", type=int, default=5)
    p.add_argument("--compute-only", action="store_true", help="only the compute pieces, the update and the skew")
    p.add_argument("--json", required=True, help="where rank 0 writes its result")
    return p.parse_args(argv)


def _quiet_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning: a waiting rank leaves rank 0's cores alone."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(QUIET_POLL_S)


# -- compute ------------------------------------------------------------------------------------------
WARMUP_PASSES = 1


def _time_all(pieces, repeats: int, sync: Callable[[], None] | None) -> list[list[float]]:
    out = []
    for pc in pieces:
        if sync is not None:
            sync()
        out.append(time_piece(pc.call, repeats, pc.before))
    return out


def _records(pieces, times: list[list[float]], per_rank: list[list[list[float]]] | None) -> list[dict]:
    """One record per piece: its stats, and (side by side) each rank's median, the figure the slowest."""
    recs = []
    for k, (pc, ts) in enumerate(zip(pieces, times)):
        rec: dict[str, Any] = {"layer": pc.layer, "part": pc.part, "note": pc.note, "bytes": pc.nbytes, **stats(ts)}
        if pc.call is None:
            rec["fused"] = True
        if per_rank is not None:
            meds = [stats(r[k])["median_s"] for r in per_rank]
            rec["per_rank_median_s"] = meds
            rec["rank0_median_s"] = rec["median_s"]
            rec["median_s"] = max(meds)  # the slowest rank: the step waits for it
        recs.append(rec)
    return recs


def _compute(a, comm) -> dict:
    from .. import nn
    from .._threads import set_num_threads
    from ..distributed import share
    from .measure import blas_threads
    from .stepterms_compute import UPDATE_ELEMENTS
    from .train import build_mlp

    P, r = comm.Get_size(), comm.Get_rank()
    set_num_threads(a.threads)
    widths = [int(w) for w in a.layers.split(",")]
    lo, hi = share(a.batch, P, 0)  # rank 0's share: the largest (the step waits for it)
    rows = hi - lo
    rng = np.random.default_rng(r)
    x = rng.standard_normal((rows, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], rows)
    model = build_mlp(widths, a.backend, seed=0)
    elements = [int(e) for e in a.update_elements.split(",") if e] or list(UPDATE_ELEMENTS)
    with blas_threads(a.threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pieces, info = layer_pieces(model, x, y, nn.CrossEntropyLoss())
        pieces += update_pieces(model, a.optimizer, elements)
        _quiet_barrier(comm)
        alone = _time_all(pieces, a.repeats, None) if r == 0 else None
        _quiet_barrier(comm)
        beside = _time_all(pieces, a.repeats, comm.Barrier)
        passes = _passes([pc for pc in pieces if pc.part not in ("update", "model_update")], a.repeats, comm)
    everyone = comm.gather(beside, root=0)
    all_passes = comm.gather(passes, root=0)
    if r != 0:
        return {}
    assert alone is not None and everyone is not None and all_passes is not None
    return {
        "rows": rows,
        "layers": info,
        "alone": _records(pieces, alone, None),
        "beside": _records(pieces, beside, everyone),
        "passes": all_passes,  # [rank][pass] seconds: whole forward + backward passes, every rank at once
    }


def _passes(pieces, repeats: int, comm) -> list[float]:
    """Seconds of whole passes (every compute piece in the step's order, back to back), every rank after a
    barrier, as in a step between two collectives: how far the ranks drift apart doing the same work."""
    calls = [pc.call for pc in pieces if pc.call is not None]
    out = []
    for k in range(WARMUP_PASSES + max(11, repeats)):
        comm.Barrier()
        t0 = _clock()
        for c in calls:
            c()
        if k >= WARMUP_PASSES:
            out.append(_clock() - t0)
    return out


# -- collectives --------------------------------------------------------------------------------------
class _Flight:
    """What DataParallel's progress thread waits on (a Bucket's request, done, error and t_done)."""

    def __init__(self, request) -> None:
        self.request = request
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.t_done = 0.0


class _Ring:
    """An Isend to the next rank and an Irecv from the one before, tested together."""

    def __init__(self, reqs: list) -> None:
        self.reqs = reqs

    def Test(self) -> bool:  # noqa: N802  (an MPI request's name)
        from mpi4py import MPI

        return bool(MPI.Request.Testall(self.reqs))


def _buffers(kind: str, nbytes: int, P: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 buffer a call of ``kind`` is given for about ``nbytes`` (reduce-scatter and
    allgather: padded to P equal shards, as a sharded bucket) and, for sendrecv, the receive buffer."""
    n = max(1, nbytes // 4)
    if kind in ("reduce_scatter", "allgather"):
        n = -(-n // P) * P
    buf = np.ones(n, dtype=np.float32)
    return buf, (np.empty_like(buf) if kind == "sendrecv" else buf)


def _poster(comm, kind: str, buf: np.ndarray, recv: np.ndarray) -> Callable[[], Any]:
    """A function that posts one non-blocking ``kind`` on these buffers and returns its request."""
    from mpi4py import MPI

    P, r = comm.Get_size(), comm.Get_rank()
    if kind == "allreduce":
        return lambda: comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if kind == "reduce_scatter":
        return lambda: comm.Ireduce_scatter_block(MPI.IN_PLACE, buf, op=MPI.SUM)
    if kind == "allgather":
        return lambda: comm.Iallgather(MPI.IN_PLACE, buf)
    if kind == "sendrecv":
        return lambda: _Ring([comm.Irecv(recv, source=(r - 1) % P, tag=7), comm.Isend(buf, dest=(r + 1) % P, tag=7)])
    raise ValueError(f"unknown collective {kind!r}")


def _run_one(post: Callable[[], Any], mode: str) -> float:
    """Post one call and let DataParallel's progress mechanism complete it; its seconds."""
    from ..distributed._buckets import _Progress

    t0 = _clock()
    f = _Flight(post())
    if mode == "thread":
        _Progress.submit(f)  # type: ignore[arg-type]  # it reads request, done, error, t_done
        f.done.wait()
        if f.error is not None:
            raise f.error
        return f.t_done - t0
    while not f.request.Test():  # no MPI_THREAD_MULTIPLE: Test from this thread, as DataParallel then does
        time.sleep(_Progress.poll_s)
    return _clock() - t0


def _sweep(a, comm, mode: str) -> dict:
    sizes = [int(s) for s in a.sizes.split(",") if s]
    out: dict[str, list] = {}
    for kind in [k for k in a.kinds.split(",") if k]:
        rows = []
        for nbytes in sizes:
            buf, recv = _buffers(kind, nbytes, comm.Get_size())
            post = _poster(comm, kind, buf, recv)
            comm.Barrier()
            first = _run_one(post, mode)  # untimed (and sizes the repeats)
            reps = comm.bcast(int(min(a.max_reps, max(5, a.budget / max(first, 1e-7)))), root=0)
            times = []
            for _ in range(reps):
                comm.Barrier()
                times.append(_run_one(post, mode))
            med = comm.allgather(float(np.median(times)))
            rows.append({"bytes": int(buf.nbytes), **stats(times), "per_rank_median_s": med})
        out[kind] = rows
    return out


# -- interference -------------------------------------------------------------------------------------
def _overlap(spans: list[tuple[float, float]], busy: list[tuple[float, float]]) -> list[float]:
    """For each span, the seconds of it that fall inside any of the ``busy`` intervals (disjoint, sorted)."""
    out = []
    for s, e in spans:
        out.append(sum(max(0.0, min(e, be) - max(s, bs)) for bs, be in busy))
    return out


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def slowdown(bare_s: float, spans: list[tuple[float, float]], other: list[tuple[float, float]]) -> float | None:
    """The factor by which work of ``bare_s`` per call ran slower while the other lane was busy, under the
    simulator's rate model: a call of length d that overlapped the other lane for o seconds did
    ``(d - o) + o / f`` = ``bare_s`` of work, so ``f = sum(o) / sum(bare_s - d + o)`` over the calls that
    overlapped (below 1: they ran faster than bare, noise).  None where nothing overlapped, or where the
    calls were so much faster than bare that no factor fits."""
    busy = _merge(other)
    o = _overlap(spans, busy)
    num = sum(oi for oi in o if oi > 0)
    den = sum(bare_s - (e - s) + oi for (s, e), oi in zip(spans, o) if oi > 0)
    if num <= 0 or den <= 0:
        return None
    return num / den


def _gemm(model, rows: int) -> tuple[Callable[[], Any], dict]:
    """The dX GEMM of the model's largest Linear (the one its bucket travels beside), on ``rows`` rows."""
    from ..nn import Linear

    lin = max((m for m in model.layers if isinstance(m, Linear)), key=lambda m: m.weight.size)
    be = model._backend
    dy = np.ones((rows, lin.out_features), dtype=np.float32)
    dx = np.empty((rows, lin.in_features), dtype=np.float32)
    shape = {"m": rows, "n": lin.in_features, "k": lin.out_features, "what": "dX = dY W of the largest Linear"}
    return (lambda: be.matmul_into(dy, lin.weight._data, dx, False, False, 1.0, 0.0)), shape


def _probe_once(comm, post, gemm, reps: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """``reps`` collectives one after another, posted and completed by a helper thread (Test, then sleep
    as DataParallel's), while this thread runs the GEMM back to back until the last one completes."""
    from ..distributed._buckets import _Progress

    comm_spans: list[tuple[float, float]] = []
    finished = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            for _ in range(reps):
                t0 = _clock()
                req = post()
                while not req.Test():
                    time.sleep(_Progress.poll_s)
                comm_spans.append((t0, _clock()))
        except BaseException as e:  # re-raised on the main thread
            errors.append(e)
        finished.set()

    comm.Barrier()
    th = threading.Thread(target=stream, name="whygpu-stepterms-probe", daemon=True)
    gemm_spans = []
    th.start()
    while True:
        s = _clock()
        gemm()
        gemm_spans.append((s, _clock()))
        if finished.is_set():
            break
    th.join()
    if errors:
        raise errors[0]
    return gemm_spans, comm_spans


def _probe(a, comm, mode: str) -> dict:
    """Per kind: the GEMM alone (every rank computing, no communication), the collective alone (bare),
    then both at once ``--probe-reps`` times: the compute and the collective slowdowns of each time."""
    from .._threads import set_num_threads
    from ..distributed import share
    from .measure import blas_threads
    from .train import build_mlp

    widths = [int(w) for w in a.layers.split(",")]
    lo, hi = share(a.batch, comm.Get_size(), 0)
    set_num_threads(a.threads)
    model = build_mlp(widths, a.backend, seed=0)
    gemm, shape = _gemm(model, hi - lo)
    nbytes = a.probe_bytes or int(max(m.weight._data.nbytes for m in model.layers if hasattr(m, "weight")))
    out: dict[str, Any] = {"gemm": shape, "mode": mode}
    with blas_threads(a.threads):
        comm.Barrier()
        g_times = time_piece(gemm, max(5, a.repeats // 2))
        g = comm.allreduce(float(np.median(g_times)), op=_max())
        for kind in [k for k in a.probe_kinds.split(",") if k]:
            buf, recv = _buffers(kind, nbytes, comm.Get_size())
            post = _poster(comm, kind, buf, recv)
            comm.Barrier()
            _run_one(post, mode)
            c_times = []
            for _ in range(5):
                comm.Barrier()
                c_times.append(_run_one(post, mode))
            c = comm.allreduce(float(np.median(c_times)), op=_max())
            n_coll = comm.bcast(int(min(200, max(3, math.ceil(3 * g / max(c, 1e-7)) + 1))), root=0)
            cs, ms = [], []
            for _ in range(a.probe_reps):
                gspans, cspans = _probe_once(comm, post, gemm, n_coll)
                cs.append(slowdown(g, gspans, cspans))
                ms.append(slowdown(c, cspans, gspans))
            out[kind] = {
                "bytes": int(buf.nbytes),
                "collectives_per_rep": n_coll,
                "gemm_bare": {**stats(g_times), "slowest_rank_median_s": g},
                "comm_bare": {**stats(c_times), "slowest_rank_median_s": c},
                "compute_slowdown": _factor(comm, cs),
                "comm_slowdown": _factor(comm, ms),
            }
    return out


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _factor(comm, values: list[float | None]) -> dict:
    """Each rep's factor (None: not measurable), their stats, and every rank's median."""
    ok = [v for v in values if v is not None]
    med = float(np.median(ok)) if ok else None
    return {"values": values, **stats(ok), "median": med, "per_rank_median": comm.allgather(med)}


def main(argv=None) -> None:
    a = _args(argv)
    from mpi4py import MPI

    import whygpu.distributed as dist
    from whygpu.distributed._buckets import progress_mode

    dist.init()
    comm = dist.comm()
    mode = progress_mode()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = _clock()
    res: dict[str, Any] = {"compute": _compute(a, comm)}
    t1 = _clock()
    res["collectives"] = {} if a.compute_only else _sweep(a, comm, mode)
    t2 = _clock()
    res["interference"] = {} if a.compute_only else _probe(a, comm, mode)
    t3 = _clock()
    if comm.Get_rank() == 0:
        res.update(
            ranks=comm.Get_size(),
            threads=a.threads,
            args=vars(a),
            progress=mode,
            load_average=load,
            seconds={"compute": t1 - t0, "collectives": t2 - t1, "interference": t3 - t2},
            mpi_library=MPI.Get_library_version().strip().splitlines()[0],
        )
        with open(a.json, "w") as f:
            json.dump(res, f)
    comm.Barrier()


if __name__ == "__main__":
    main()
