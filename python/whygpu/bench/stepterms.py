"""The step simulator's terms, measured apart from the runs it predicts: per-layer compute of one rank
(forward, dW, dX; alone and with the other ranks' compute beside it), the optimizer's update, the cost
curve of each collective (bare, on the same P ranks), and how much a collective and a GEMM slow each
other down when they share the cores.

:func:`measure_terms` launches :mod:`whygpu.bench.stepterms_worker` on P ranks under mpiexec (as the
scale-out measurement does: the same environment, threads per rank and timeout) and returns the
``whygpu.stepterms/1`` document: the raw medians with their spreads, the fits (:func:`fit_affine`:
latency + bytes / bandwidth per collective, per call + per byte for the update), and how each was
measured (repeats, sizes, threads, ranks, the machine).  :func:`save_terms` / :func:`load_terms` keep
it as JSON; :func:`simulator_fields` turns it into the fields of the simulator's inputs
(``whygpu.predict``'s ``ComputeTimes``, ``UpdateCost``, ``CollectiveCosts``, ``Interference``), each with
its ``source`` ("measured apart: how").  Plain data, not the objects: ``whygpu.predict`` already imports
``whygpu.bench`` (the roofline's probes), so this module does not import it back; the objects are
``ComputeTimes(layers=tuple(LayerTimes(**x) for x in f["compute"]["layers"]), ...)`` (see
:func:`simulator_fields`).

``python -m whygpu.bench.stepterms --ranks 2 --out terms.json`` measures and saves the terms.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "SCHEMA",
    "KINDS",
    "fit_affine",
    "fit_collective",
    "fit_update",
    "assemble",
    "measure_terms",
    "save_terms",
    "load_terms",
    "simulator_fields",
]

SCHEMA = "whygpu.stepterms/1"
KINDS = ("allreduce", "reduce_scatter", "allgather", "sendrecv")
SIZES = (4, 64, 1024, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 32 << 20)  # 4 B to 32 MiB


# -- fits ---------------------------------------------------------------------------------------------
def fit_affine(x: Sequence[float], t: Sequence[float]) -> dict[str, Any]:
    """Least squares of ``t = intercept + slope * x`` with relative residuals (each row divided by its
    t: 4 B and 32 MiB weigh the same, so the small sizes set the intercept and the large the slope).
    The intercept is kept >= 0 (refitting the slope alone) and the slope > 0 or exactly 0 (a slope below
    rounding's, or negative: the intercept alone).
    Exact for timings that lie on a line.  Returns ``{"intercept", "slope", "rms_rel_error", "points"}``."""
    X = np.asarray(x, dtype=float)
    T = np.asarray(t, dtype=float)
    ok = np.isfinite(X) & np.isfinite(T) & (T > 0) & (X >= 0)
    X, T = X[ok], T[ok]
    if X.size < 2 or np.unique(X).size < 2:
        raise ValueError("the fit needs timings at 2 or more different sizes")
    A = np.stack([1.0 / T, X / T], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(T), rcond=None)
    if a < 0:
        a, b = 0.0, float(np.sum(X / T) / np.sum((X / T) ** 2))
    if b * X.max() <= 1e-12 * T.max():  # no growth with size (or rounding's): a flat line
        a, b = float(np.sum(1.0 / T) / np.sum(1.0 / T**2)), 0.0
    pred = a + b * X
    return {
        "intercept": float(a),
        "slope": float(b),
        "rms_rel_error": float(np.sqrt(np.mean(((pred - T) / T) ** 2))),
        "points": int(X.size),
    }


def fit_collective(points: Sequence[dict], min_bytes: float = 0, max_bytes: float = math.inf) -> dict[str, Any]:
    """``latency_s + bytes / bandwidth_Bps`` through the sweep's points (``{"bytes", "median_s"}``) with
    ``min_bytes <= bytes <= max_bytes`` (:func:`fit_affine`); a flat curve has ``bandwidth_Bps = inf``."""
    rows = [p for p in points if min_bytes <= p["bytes"] <= max_bytes]
    f = fit_affine([p["bytes"] for p in rows], [p["median_s"] for p in rows])
    return {
        "latency_s": f["intercept"],
        "bandwidth_Bps": 1.0 / f["slope"] if f["slope"] > 0 else math.inf,
        "rms_rel_error": f["rms_rel_error"],
        "points": f["points"],
        "min_bytes": min(p["bytes"] for p in rows),
        "max_bytes": max(p["bytes"] for p in rows),
    }


def fit_update(points: Sequence[dict]) -> dict[str, Any]:
    """``per_call_s + per_byte_s * bytes`` through the optimizer's step times on flat parameters."""
    f = fit_affine([p["bytes"] for p in points], [p["median_s"] for p in points])
    return {"per_call_s": f["intercept"], "per_byte_s": f["slope"], "rms_rel_error": f["rms_rel_error"],
            "points": f["points"]}  # fmt: skip


# -- the document -------------------------------------------------------------------------------------
def assemble(raw: dict, params: dict, machine: dict | None = None) -> dict:
    """The ``whygpu.stepterms/1`` document from the worker's JSON (rank 0's): the raw figures, the fits,
    and ``params`` (how it was measured)."""
    comp = raw["compute"]
    update: dict[str, Any] = {}
    for where in ("alone", "beside"):
        pts = [{"bytes": r["bytes"], **{k: r[k] for k in ("median_s", "min_s", "max_s", "repeats")}}
               for r in comp[where] if r["part"] == "update"]  # fmt: skip
        model = next((r for r in comp[where] if r["part"] == "model_update"), None)
        update[where] = {"points": pts, "fit": fit_update(pts), "model_update": model}
    colls = {kind: {"points": rows, "fit": fit_collective(rows)} for kind, rows in raw["collectives"].items()}
    return {
        "schema": SCHEMA,
        "params": {
            **params,
            "ranks": raw["ranks"],
            "threads": raw["threads"],
            "share_rows": comp["rows"],
            "progress": raw.get("progress"),
            "mpi_library": raw.get("mpi_library"),
        },  # fmt: skip
        "machine": machine,
        "load_average": raw.get("load_average"),
        "seconds": raw.get("seconds"),
        "layers": comp["layers"],
        "compute": {
            where: [r for r in comp[where] if r["part"] not in ("update", "model_update")]
            for where in ("alone", "beside")
        },  # fmt: skip
        "update": update,
        "collectives": colls,
        "interference": raw["interference"],
        "skew": skew_of(comp.get("passes")),
    }


def skew_of(passes: list[list[float]] | None) -> dict[str, Any] | None:
    """How far the slowest rank lags rank 0 doing the same work: per pass (every rank at once, after a
    barrier), (slowest - rank 0) / rank 0; their median is the simulator's ``lag_fraction``."""
    if not passes or len(passes) < 2:
        return None
    n = min(len(p) for p in passes)
    lags = [(max(p[k] for p in passes) - passes[0][k]) / passes[0][k] for k in range(n) if passes[0][k] > 0]
    if not lags:
        return None
    return {"per_rank_s": passes, "lags": lags, "lag_fraction": float(np.median(lags))}


def measure_terms(
    *,
    ranks: int = 2,
    layers: Sequence[int] = (784, 2048, 2048, 10),
    batch: int = 512,
    threads: int | None = None,
    backend: str | None = None,
    optimizer: str = "sgd",
    repeats: int = 15,
    sizes: Sequence[int] = SIZES,
    kinds: Sequence[str] = KINDS,
    budget: float = 0.2,
    max_reps: int = 100,
    update_elements: Sequence[int] = (),
    probe_bytes: int = 0,
    probe_kinds: Sequence[str] = ("allreduce", "reduce_scatter", "allgather"),
    probe_reps: int = 5,
    timeout: float = 300.0,
    machine: bool = True,
    compute_only: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Measure every term on ``ranks`` ranks x ``threads`` threads (default: the cores shared out) in one
    mpiexec job, each rank on its share of the global ``batch`` of the MLP ``layers`` on ``backend``
    (default openmp, else packed); ``compute_only``: the compute pieces, the update and the skew, not the
    collectives nor the interference (their entries are empty).  Raises
    :class:`whygpu.bench.scaleout.ScaleoutError` where MPI is missing, the job fails, or it runs past
    ``timeout`` seconds (every rank is then ended)."""
    from .._registry import KERNELS
    from .._threads import _cpus_available
    from .scaleout import ScaleoutError, _env, mpi_status, run_job

    st = mpi_status()
    if not st["available"]:
        raise ScaleoutError(f"cannot measure the step's terms: {st['reason']}")
    if not isinstance(ranks, int) or ranks < 1 or batch < ranks:
        raise ValueError(f"ranks must be an integer from 1 to the batch ({batch}), got {ranks!r}")
    cores = _cpus_available()
    threads = max(1, cores // ranks) if threads is None else int(threads)
    if backend is None:
        backend = "openmp" if KERNELS["openmp"].available else "packed"
    args = ["--layers", ",".join(map(str, layers)), "--batch", str(batch), "--backend", backend]
    args += ["--optimizer", optimizer, "--threads", str(threads), "--repeats", str(repeats)]
    args += ["--sizes", ",".join(map(str, sizes)), "--kinds", ",".join(kinds), "--budget", repr(float(budget))]
    args += ["--max-reps", str(max_reps), "--probe-bytes", str(int(probe_bytes))]
    args += ["--probe-kinds", ",".join(probe_kinds), "--probe-reps", str(probe_reps)]
    if update_elements:
        args += ["--update-elements", ",".join(map(str, update_elements))]
    if compute_only:
        args.append("--compute-only")
    minfo = None
    if machine:
        from .machine import machine_info

        minfo = machine_info()
    log(f"measuring the step's terms on {ranks} rank(s) x {threads} thread(s), {backend}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whygpu-stepterms-") as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [st["mpiexec"], "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "whygpu.bench.stepterms_worker"]
        cmd += [*args, "--json", str(out)]
        try:
            status, text = run_job(cmd, _env(threads), timeout)
        except subprocess.TimeoutExpired:
            raise ScaleoutError(f"mpiexec -n {ranks} (the step's terms) timed out after {timeout:g} s") from None
        if status != 0 or not out.exists():
            tail = " | ".join(text.strip().splitlines()[-8:])
            raise ScaleoutError(
                f"mpiexec -n {ranks} (the step's terms) failed (status {status}): {tail or 'no output'}"
            )
        raw = json.loads(out.read_text())
    params = {
        "layers": [int(w) for w in layers],
        "batch": int(batch),
        "backend": backend,
        "optimizer": optimizer,
        "cores": cores,
        "oversubscribed": ranks * threads > cores,
        "repeats": int(repeats),
        "sizes": [int(s) for s in sizes],
        "kinds": list(kinds),
        "budget_s": float(budget),
        "probe_reps": int(probe_reps),
        "mpiexec": st["mpiexec"],
        "wall_s": time.perf_counter() - t0,
        "how": {
            "compute": "each piece of one step (Linear.forward with its fused ReLU; the dW GEMM + bias_grad; the dX "
            "GEMM; other layers' forward/_backward; the loss) timed call by call on rank 0's share of the batch "
            f"after 2 untimed calls, median of {repeats}; 'alone': rank 0 only, the other ranks asleep in a "
            "barrier; 'beside': every rank at once without communicating (the slowest rank's median, and rank 0's); "
            "then whole passes of every rank at once, for how far the ranks drift apart (the skew)",
            "update": f"{optimizer}.step() on one flat parameter of each size, alone and beside, each call cold (a "
            "buffer of twice the last-level cache written just before it, untimed); fitted per call + per byte "
            "(relative least squares)",
            "collectives": "bare, every rank after a barrier: the non-blocking call (Iallreduce in place, "
            "Ireduce_scatter_block in place, Iallgather in place, Isend+Irecv around a ring) moved by "
            "DataParallel's progress thread; median of an adaptive number of calls per size; fitted latency + "
            "bytes / bandwidth (relative least squares over the sizes)",
            "interference": "a run of collectives of one size (posted one after another by a helper thread that "
            "tests and sleeps as DataParallel's) beside the largest Linear's dX GEMM run back to back on every "
            "rank; each side's slowdown inverted from the simulator's rate model against its time alone",
        },
    }
    return assemble(raw, params, minfo)


def save_terms(doc: dict, path: str | Path) -> Path:
    """Write the document as JSON (infinite bandwidths as the string "inf")."""
    p = Path(path)
    p.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")
    return p


def load_terms(path: str | Path) -> dict:
    """Read a document :func:`save_terms` wrote; a ValueError for another schema."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(
            f"{path}: not a {SCHEMA} document (schema {doc.get('schema') if isinstance(doc, dict) else None!r})"
        )
    return _unjson(doc)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _unjson(x: Any) -> Any:
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    if isinstance(x, dict):
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return x


# -- into the simulator's inputs ----------------------------------------------------------------------
def _median(records: list[dict], layer: int, part: str) -> float:
    """The piece's median: rank 0's where the ranks ran side by side (the rank whose step is measured; how
    far the others lag is the skew term), else the one rank's."""
    r = next((r for r in records if r["layer"] == layer and r["part"] == part), None)
    return 0.0 if r is None else float(r.get("rank0_median_s", r["median_s"]))


def simulator_fields(
    doc: dict,
    compute: str = "beside",
    probe: str = "allreduce",
    collective_window: tuple[float, float] = (0, math.inf),
    update_window: tuple[float, float] = (0, math.inf),
    update_from: str = "fit",
) -> dict[str, Any]:
    """The fields of the simulator's inputs, each with ``source="measured apart: how"``::

        {"compute": {"layers": [LayerTimes fields], "source", "loss_s"},
         "update": UpdateCost fields, "collectives": [CollectiveCurve fields], "interference": Interference fields}

    ``compute``: "beside" (the other ranks' compute running at the same time: what a step on shared cores
    sees) or "alone"; the update follows it.  ``probe``: the collective whose interference probe gives the
    slowdowns (a slowdown not measurable, or measured below 1, is 1.0, and the source says so).
    ``collective_window`` and ``update_window``: (min, max) bytes of the points the curves and the update
    are fitted to (default: all; the saved fits).  Over shared memory neither is one line from 4 B to
    32 MiB (caches, MPICH's change of algorithm): a window around the sizes a step sends fits those.
    ``update_from``: "fit" (per call + per byte through the flat parameters) or "model" (the optimizer's
    step on the model's own parameters, timed apart: its seconds per byte, no per-call term)."""
    if update_from not in ("fit", "model"):
        raise ValueError(f"update_from must be 'fit' or 'model', got {update_from!r}")
    if compute not in ("alone", "beside"):
        raise ValueError(f"compute must be 'alone' or 'beside', got {compute!r}")
    p = doc["params"]
    P, T, rows = p["ranks"], p["threads"], p["share_rows"]
    where = f"{P} rank(s) x {T} thread(s), {p['backend']}"
    recs = doc["compute"][compute]
    layers = []
    for i, info in enumerate(doc["layers"]):
        layers.append({
            "forward_s": _median(recs, i, "forward"),
            "backward_dw_s": _median(recs, i, "backward_dw"),
            "backward_dx_s": _median(recs, i, "backward_dx"),
            "param_bytes": int(info["param_bytes"]),
            "name": info["name"],
        })  # fmt: skip
    reps = p["repeats"]
    side = "with the other ranks' compute beside it (rank 0's)" if compute == "beside" else "alone"
    comp = {
        "layers": layers,
        "loss_s": _median(recs, -1, "loss"),
        "source": f"measured apart: per-layer forward/dW/dX on a share of {rows} rows, {where}, {side}, "
        f"median of {reps} calls",
    }
    update = _update(doc, compute, update_window, update_from, f"{where}, {side}")
    curves = []
    for kind, c in doc["collectives"].items():
        f = fit_collective(c["points"], *collective_window)
        curves.append({
            "kind": kind, "ranks": P, "latency_s": f["latency_s"], "bandwidth_Bps": f["bandwidth_Bps"],
            "source": f"measured apart: {kind} bare on {P} ranks, {f['points']} sizes {f['min_bytes']}-"
            f"{f['max_bytes']} B, DataParallel's progress thread, fitted latency + bytes/bandwidth "
            f"(rms {100 * f['rms_rel_error']:.0f}%)",
        })  # fmt: skip
    out = {"compute": comp, "update": update, "collectives": curves, "interference": _interference(doc, probe)}
    sk = doc.get("skew")
    if sk is not None and P > 1:
        out["skew"] = {
            "lag_fraction": sk["lag_fraction"],
            "source": f"measured apart: {len(sk['lags'])} whole forward + backward passes of every rank at once after "
            f"a barrier, no communication, {where}; median of (slowest rank - rank 0) / rank 0",
        }
    return out


def _update(doc: dict, compute: str, window: tuple[float, float], source: str, where: str) -> dict[str, Any]:
    p = doc["params"]
    if source == "model":
        m = doc["update"][compute]["model_update"]
        return {
            "per_byte_s": m["median_s"] / m["bytes"],
            "source": f"measured apart: {p['optimizer']}.step() on the model's {m['bytes']} B of parameters, {where}, "
            f"median of {m['repeats']} calls, per byte",
        }
    upts = [q for q in doc["update"][compute]["points"] if window[0] <= q["bytes"] <= window[1]]
    uf = fit_update(upts)
    sizes = [q["bytes"] for q in upts]
    return {
        "per_call_s": max(0.0, uf["per_call_s"]),
        "per_byte_s": max(0.0, uf["per_byte_s"]),
        "source": f"measured apart: {p['optimizer']}.step() on flat parameters of {min(sizes)}-{max(sizes)} B, "
        f"{where}, fitted per call + per byte (rms {100 * uf['rms_rel_error']:.0f}%)",
    }


def _interference(doc: dict, probe: str) -> dict[str, Any]:
    inter = doc["interference"]
    if probe not in inter:
        have = [k for k in inter if isinstance(inter[k], dict) and "compute_slowdown" in inter[k]]
        raise ValueError(f"no interference probe of {probe!r} in the terms (have {have})")
    r, g = inter[probe], inter["gemm"]
    out: dict[str, Any] = {}
    notes = []
    for key in ("compute_slowdown", "comm_slowdown"):
        v = r[key]["median"]
        if v is None or not math.isfinite(v) or v < 1.0:
            notes.append(f"{key} {'not measurable' if v is None else f'{v:.3g}'} taken as 1")
            v = 1.0
        out[key] = float(v)
    p = doc["params"]
    out["source"] = (
        f"measured apart: {probe} of {r['bytes']} B beside the {g['m']}x{g['n']}x{g['k']} dX GEMM on {p['ranks']} "
        f"rank(s) x {p['threads']} thread(s), median of {len(r['compute_slowdown']['values'])} probes"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    return out


# -- command line -------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m whygpu.bench.stepterms", description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--layers", default="784,2048,2048,10")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="sgd")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", required=True, help="the JSON file to write")
    a = ap.parse_args(argv)
    doc = measure_terms(
        ranks=a.ranks,
        layers=[int(w) for w in a.layers.split(",")],
        batch=a.batch,
        threads=a.threads,
        optimizer=a.optimizer,
        repeats=a.repeats,
        timeout=a.timeout,
        log=lambda s: print(s, file=sys.stderr),
    )
    print(save_terms(doc, a.out))


if __name__ == "__main__":
    main()
