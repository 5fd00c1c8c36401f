"""``whygpu train``: the same MLP, trained for the same number of steps on
each back end -- time per step, samples per second, accuracy, and the share
of the step spent in matrix multiplication (from ``whygpu.nn.profile``).

The data are synthetic (no download): ten Gaussian clusters in 784
dimensions, the shape of MNIST, hard enough that accuracy climbs over the
steps but learnable in a few dozen.  Every back end starts from the same
weights (``whygpu.manual_seed``) and sees the same batches, so the accuracy
column shows they compute the same thing, and the time columns how fast.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .. import nn, optim
from .._memory import check_fits
from .._random import manual_seed
from .._registry import KERNELS
from .._threads import check_threads, get_num_threads, set_num_threads
from ..nn._backend import get_backend
from .machine import machine_info
from .measure import blas_threads, format_seconds, planted_seconds
from .progress import Progress
from .trust import QuietGuard

__all__ = ["SCHEMA", "SWEEP_BATCHES", "run_train", "run_sweep", "step_timer", "synthetic_clusters", "build_mlp"]

SCHEMA = "whygpu.train/1"
_WARMUP = 2  # untimed steps before the profiled ones: first-touch, scratch buffers
SWEEP_BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# The back ends the training figure is about, kept up to this many times the budget (see run_train).
_LESSON_BACKENDS = ("openmp",)
_LESSON_ALLOWANCE = 4.0


def _train_bytes(batch: int, n_samples: int, layers: Sequence[int]) -> int:
    """Bytes of what a run allocates: the data set (float32 features, int64 labels), each layer's activations
    and their gradients for one batch, and the weights, biases and their gradients."""
    data = n_samples * (layers[0] * 4 + 8)
    activations = 2 * batch * sum(layers) * 4
    params = 2 * sum((w_in + 1) * w_out for w_in, w_out in zip(layers, layers[1:])) * 4
    return data + activations + params


def _count(n, what: str) -> int:
    """n as an int >= 1 (a batch, a width, a number of steps: no upper bound,
    unlike a thread count), or TypeError / ValueError saying what was wrong."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{what} must be an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")
    return int(n)


def synthetic_clusters(n: int, features: int = 784, classes: int = 10, seed: int = 0):
    """X float32 (n, features), y int64 (n,): `classes` Gaussian clusters
    whose centres are close enough (relative to the noise) that a linear
    model is not perfect and training takes some steps."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * (0.9 / np.sqrt(features))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + rng.standard_normal((n, features)) * (1.0 / np.sqrt(features)) * 3.0
    X = X * np.sqrt(features) / 4  # ~unit-scale features, like standardized pixels
    return X.astype(np.float32), y.astype(np.int64)


def build_mlp(layers: Sequence[int], backend: str, seed: int = 0):
    """Linear-ReLU-...-Linear with the given widths, on `backend`."""
    if len(layers) < 2:
        raise ValueError(f"layers needs at least an input and an output width, got {list(layers)}")
    manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        mods.append(nn.Linear(int(a), int(b)))
        if i < len(layers) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).to(backend)


def _step_flops(layers: Sequence[int], batch: int) -> float:
    # forward y = x W^T, backward dW = dY^T x and dX = dY W: three products per layer
    return 3 * 2.0 * batch * sum(a * b for a, b in zip(layers[:-1], layers[1:]))


@contextlib.contextmanager
def _threads(backend: str, threads: int | None):
    """Run a back end on `threads` threads: whygpu's kernels read
    get_num_threads(); NumPy's BLAS is pinned with threadpoolctl."""
    old = get_num_threads()
    if threads is not None:
        set_num_threads(threads)
    try:
        if backend == "numpy":
            with blas_threads(threads if threads is not None else old):
                yield
        else:
            yield
    finally:
        set_num_threads(old)


def _estimate_step(backend: str, layers: Sequence[int], batch: int, threads: int, budget: float) -> float:
    """Seconds per training step, estimated from the largest layer's matmul
    (scouted cheaply) scaled to the step's FLOPs -- so a slow back end is
    never run for even one step before we know it fits the budget."""
    from .ladder import scout

    widest = max(zip(layers[:-1], layers[1:]), key=lambda ab: ab[0] * ab[1])
    be = get_backend(backend)
    name = f"numpy-{threads}t" if backend == "numpy" else getattr(be, "kernel", backend)  # cuda -> its rung
    flops = 2.0 * batch * widest[0] * widest[1]
    expected = planted_seconds(name, flops)  # a test's planted speed (measure.PLANT_ENV): nothing scouted
    if expected is None:
        expected = scout(name, batch, widest[1], widest[0], threads=threads, budget=budget)["expected_s"]
    per_flop = expected / flops
    return per_flop * _step_flops(layers, batch) * 1.2  # + the element-wise work


def _one_run(backend: str, X, y, Xte, yte, layers, steps: int, batch: int, lr: float, seed: int) -> dict:
    model = build_mlp(layers, backend, seed)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=lr)
    nb = X.shape[0] // batch

    def step(i):
        s = (i % nb) * batch
        logits = model(X[s : s + batch])
        loss = loss_fn(logits, y[s : s + batch])
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(_WARMUP):
            step(i)
        losses, times = [], []
        with nn.profile(model) as prof:
            for i in range(_WARMUP, _WARMUP + steps):
                t0 = time.perf_counter()
                losses.append(float(step(i)))
                times.append(time.perf_counter() - t0)  # each step's time: the spread of step_s
        ev = model.evaluate(Xte, yte, loss=loss_fn)
    b = prof.breakdown()
    step_s = prof.wall_s / steps
    rows = [{"name": r["name"], "matmul_s": r["matmul_s"] / steps, "other_s": r["other_s"] / steps} for r in b["rows"]]
    return {
        "backend": backend,
        "step_s": step_s,
        "step_s_low": min(times) if times else step_s,
        "step_s_high": max(times) if times else step_s,
        "samples_per_s": batch / step_s,
        "matmul_share": prof.matmul_share,
        "matmul_s": prof.matmul_s / steps,
        "other_s": (prof.wall_s - prof.matmul_s) / steps,
        "accuracy": ev.get("accuracy"),
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "gflops": _step_flops(layers, batch) / step_s / 1e9,
        "rows": rows,
    }


def run_train(
    *,
    steps: int = 30,
    batch: int = 256,
    layers: Sequence[int] = (784, 512, 256, 10),
    backends: Sequence[str] | None = None,
    threads: int | None = None,
    budget: float = 8.0,
    force: bool = False,
    lr: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    sweep_batches: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Train on each back end; returns the ``whygpu.train/1`` document.

    ``budget`` is seconds per back end: one whose estimated time for
    ``steps`` steps exceeds it is skipped (with a note) unless ``force``.
    ``sweep_batches``: the batch sizes of the CPU-versus-GPU sweep
    (:func:`run_sweep`, the document's ``sweep``); by default
    :data:`SWEEP_BATCHES` where a GPU is usable and none elsewhere, ``[]``
    for none.
    """
    steps, batch = _count(steps, "steps"), _count(batch, "batch")
    layers = [_count(w, "layer width") for w in layers]
    if len(layers) < 2:
        raise ValueError("layers needs at least an input and an output width")
    all_b = nn.backends()
    if backends is None:
        names = all_b
    else:
        names = []
        for b in backends:
            get_backend(b)  # ValueError / KernelUnavailableError with the reason
            if b not in names:
                names.append(b)
    th = get_num_threads() if threads is None else check_threads(threads)
    n_train = batch * max(4, min(steps + _WARMUP, 16))
    check_fits(  # before anything is allocated
        _train_bytes(batch, n_train + 2000, layers),
        f"training at batch {batch} (a {n_train + 2000}-sample data set of width {layers[0]}, and the layers "
        f"{'-'.join(map(str, layers))})",
    )
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    t_start = time.perf_counter()
    X, y = synthetic_clusters(n_train + 2000, layers[0], layers[-1], seed)
    X, Xte, y, yte = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
    runs: list[dict] = []
    guard = QuietGuard()
    with Progress(len(names), "train", progress) as bar:
        for name in names:
            be = get_backend(name)
            on_gpu = getattr(be, "device", "cpu") == "cuda"
            parallel = name == "numpy" or (not on_gpu and KERNELS[name].parallel)
            use = th if parallel else 1
            bar.show(name, 0.0)
            with _threads(name, th):
                est = _estimate_step(name, layers, batch, use, budget)
                cost = est * (steps + _WARMUP)
                # The parallel back end is the lesson ("why parallel" without a parallel bar teaches
                # nothing), and its estimate is an extrapolation with a margin: it is kept up to
                # _LESSON_ALLOWANCE times the budget.
                allowed = budget * (_LESSON_ALLOWANCE if name in _LESSON_BACKENDS else 1.0)
                if cost > allowed and not force:
                    why = f"{steps} steps would take ~{format_seconds(cost)} (budget {format_seconds(budget)})"
                    runs.append({"backend": name, "skipped": why, "estimated_step_s": est})
                    log(f"skipped training on {name}: {why}; --all trains it")
                    bar.advance()
                    continue
                with guard.block(f"train {name}"):
                    rec = _one_run(name, X, y, Xte, yte, layers, steps, batch, lr, seed)
                if cost > budget and not force:
                    rec["over_budget"] = (
                        f"kept although {steps} steps were estimated at ~{format_seconds(cost)} (budget "
                        f"{format_seconds(budget)}): the parallel back end is what the figure is about"
                    )
                    log(f"training on {name} {rec['over_budget']}")
            rec["threads"] = use
            rec["device"] = "cuda" if on_gpu else "cpu"
            rec["estimated_step_s"] = est
            runs.append(rec)
            bar.advance()
    sweep = None
    if sweep_batches is None:
        sweep_batches = SWEEP_BATCHES if _gpu_backend_usable() else []
    if sweep_batches:
        sweep = run_sweep(
            batches=sweep_batches,
            layers=layers,
            threads=th,
            budget=budget,
            force=force,
            seed=seed,
            progress=progress,
            log=log,
        )
    return {
        "schema": SCHEMA,
        "machine": minfo,
        "sweep": sweep,
        "params": {
            "steps": steps,
            "batch": batch,
            "layers": "-".join(map(str, layers)),
            "widths": layers,
            "backends": names,
            "threads": th,
            "lr": lr,
            "optimizer": "SGD",
            "warmup_steps": _WARMUP,
            "dataset": f"synthetic: {layers[-1]} Gaussian clusters in {layers[0]} dimensions, "
            f"{n_train} training / {len(yte)} test samples",
            "budget_s": budget,
            "force": force,
        },
        "runs": runs,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t_start,
    }


def step_timer(
    *,
    batch: int = 256,
    backend: str = "openmp",
    layers: Sequence[int] = (784, 512, 256, 10),
    quick: bool = False,
    seed: int = 0,
) -> Callable[[int], dict]:
    """For ``whygpu scaling``: a function threads -> {"seconds": per step,
    "matmul_share", "matmul_s", "other_s"} that times a few training steps
    of the MLP on `backend` with that many threads."""
    steps = 3 if quick else 8
    X, y = synthetic_clusters(batch * 4, layers[0], layers[-1], seed)

    def timed(threads: int) -> dict:
        with _threads(backend, threads):
            rec = _one_run(backend, X, y, X[:batch], y[:batch], list(layers), steps, batch, 0.1, seed)
        return {
            "seconds": rec["step_s"],
            "matmul_share": rec["matmul_share"],
            "matmul_s": rec["matmul_s"],
            "other_s": rec["other_s"],
            "threads": threads,
        }

    return timed


# --------------------------------------------------------------------------
# Where the GPU wins: one MLP step over a sweep of batch sizes, CPU vs GPU
# --------------------------------------------------------------------------
def _gpu_backend_usable() -> bool:
    return "cuda" in nn.backends()


def _timed_steps(backend: str, model, loss_fn, opt, xb, yb, steps: int, graph: bool = False) -> list:
    """Seconds of each of `steps` training steps (after the untimed ones that
    warm up, and with ``graph`` capture, a CUDA graph); each ends with the loss
    read and, on the GPU, the GPU idle -- so a step's time is all of its work,
    not just the queueing of it."""
    be = get_backend(backend)
    sync = getattr(be, "synchronize", None) if getattr(be, "device", "cpu") == "cuda" else None
    graph_step = nn.GraphStep(model, loss_fn, opt) if graph else None

    def step():
        if graph_step is not None:
            loss = graph_step(xb, yb)  # the whole step: one graph launch
        else:
            logits = model(xb)
            loss = loss_fn(logits, yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        if sync is not None:
            sync()
        return float(loss)

    times = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        step()
        if graph_step is not None:
            step()  # the second call captures the graph
            if not graph_step.graphed:
                raise RuntimeError(f"the training step was not captured as a CUDA graph: {graph_step.reason}")
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def run_sweep(
    *,
    batches: Sequence[int] = SWEEP_BATCHES,
    layers: Sequence[int] = (784, 512, 256, 10),
    threads: int | None = None,
    steps: int = 5,
    budget: float = 8.0,
    force: bool = False,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """ms per training step of the MLP over a sweep of batch sizes, for

    * each CPU back end at all cores (``openmp`` and ``numpy``; the faster of
      the two at each batch is "the best CPU"),
    * ``cuda, copied``: the batch is a NumPy array, copied to the GPU every step;
    * ``cuda, resident``: the batch was copied once and stays in GPU memory,
    * ``cuda, copied, graph`` and ``cuda, resident, graph``: the same, with
      the whole step replayed as one CUDA graph (:class:`whygpu.nn.GraphStep`,
      what ``fit`` does),
    * ``cuda, resident, graph, bf16``: the last with every matmul on the bf16
      tensor cores (``model.to("cuda", precision="bf16")``: mixed precision),
      where they are usable -- its ``bf16_gain`` is the speed-up over float32,

    each measured as the median of ``steps`` unprofiled steps.  ``budget`` is
    seconds per (series, batch): a point predicted to take longer (from the
    series' previous batch, or a scouted matmul for its first) is skipped
    unless ``force``.  Returns the ``sweep`` part of the train document, with
    a ``summary``: the smallest batch at which the GPU is faster than the best
    CPU (data copied and data resident), the speed-ups, and the share of the
    copied step that is the copy ((copied - resident) / copied).
    """
    batches = sorted({_count(b, "batch") for b in batches})
    if not batches:
        raise ValueError("batches must name at least one batch size")
    steps = _count(steps, "steps")
    layers = [_count(w, "layer width") for w in layers]
    th = get_num_threads() if threads is None else check_threads(threads)
    cpu = [b for b in ("openmp", "numpy") if b in nn.backends()]
    series = [(b, b, False, False) for b in cpu]
    if _gpu_backend_usable():
        series += [
            ("cuda, copied", "cuda", False, False),
            ("cuda, resident", "cuda", True, False),
            ("cuda, copied, graph", "cuda", False, True),
            ("cuda, resident, graph", "cuda", True, True),
        ]
        if "cuda_mma_bf16" in nn.backends():  # mixed precision: the matmuls on the bf16 tensor cores
            series.append(("cuda, resident, graph, bf16", "cuda_mma_bf16", True, True))
    check_fits(_train_bytes(batches[-1], batches[-1], layers), f"the training sweep at batch {batches[-1]}")
    X, y = synthetic_clusters(batches[-1], layers[0], layers[-1], seed)
    out_series, skipped = [], []
    t_start = time.perf_counter()
    with Progress(len(series) * len(batches), "train sweep", progress) as bar:
        for label, backend, resident, graph in series:
            on_gpu = backend.startswith("cuda")
            pts = []
            per_flop = None  # seconds per FLOP of the last measured batch
            with _threads(backend, th):
                model = build_mlp(layers, backend, seed)
                loss_fn = nn.CrossEntropyLoss()
                opt = optim.SGD(model.parameters(), lr=0.01)
                for b in batches:
                    bar.show(f"{label} batch {b}", 0.0)
                    flops = _step_flops(layers, b)
                    if per_flop is None:
                        est = _estimate_step(backend, layers, b, 1 if on_gpu else th, budget)
                    else:
                        est = per_flop * flops * 1.3
                    if est * (steps + 1) > budget and not force:
                        why = (
                            f"{steps + 1} steps would take ~{format_seconds(est * (steps + 1))} "
                            f"(budget {format_seconds(budget)})"
                        )
                        skipped.append({"series": label, "batch": b, "estimated_step_s": est, "reason": why})
                        log(f"sweep: skipped {label} at batch {b}: {why}; --all runs it")
                        bar.advance()
                        continue
                    xb, yb = X[:b], y[:b]
                    if resident:
                        from .. import cuda as wc

                        xb, yb = wc.to_device(xb), wc.to_device(yb)
                    times = _timed_steps(backend, model, loss_fn, opt, xb, yb, steps, graph)
                    med = float(np.median(times))
                    per_flop = med / flops
                    pts.append(
                        {
                            "batch": b,
                            "step_s": med,
                            "step_s_min": min(times),
                            "samples_per_s": b / med,
                            "gflops": flops / med / 1e9,
                        }
                    )
                    bar.advance()
            out_series.append(
                {
                    "label": label,
                    "backend": backend,
                    "resident": resident,
                    "graph": graph,
                    "device": "cuda" if on_gpu else "cpu",
                    "threads": 1 if on_gpu else th,
                    "points": pts,
                }
            )
    doc = {
        "batches": batches,
        "layers": "-".join(map(str, layers)),
        "steps": steps,
        "threads": th,
        "series": out_series,
        "skipped": skipped,
        "budget_s": budget,
        "seconds": time.perf_counter() - t_start,
    }
    doc["summary"] = sweep_summary(doc)
    return doc


def sweep_summary(sweep: dict) -> dict:
    """Best CPU per batch, where the GPU overtakes it, speed-ups and copy shares."""
    by = {s["label"]: {p["batch"]: p["step_s"] for p in s["points"]} for s in sweep["series"]}
    cpu_labels = [s["label"] for s in sweep["series"] if s["device"] == "cpu"]
    rows = []
    for b in sweep["batches"]:
        cpu = {lbl: by[lbl][b] for lbl in cpu_labels if b in by[lbl]}
        row = {"batch": b}
        if cpu:
            best = min(cpu, key=cpu.__getitem__)
            row.update(best_cpu=best, best_cpu_s=cpu[best])
        for key, lbl in (
            ("copied", "cuda, copied"),
            ("resident", "cuda, resident"),
            ("copied_graph", "cuda, copied, graph"),
            ("resident_graph", "cuda, resident, graph"),
            ("resident_graph_bf16", "cuda, resident, graph, bf16"),
        ):
            if b in by.get(lbl, {}):
                row[f"{key}_s"] = by[lbl][b]
                if cpu:
                    row[f"speedup_{key}"] = cpu[best] / by[lbl][b]
        if "copied_s" in row and "resident_s" in row:
            row["copy_share"] = max(row["copied_s"] - row["resident_s"], 0.0) / row["copied_s"]
        if "resident_s" in row and "resident_graph_s" in row:
            row["graph_gain"] = row["resident_s"] / row["resident_graph_s"]  # what capturing the step bought
        if "resident_graph_s" in row and "resident_graph_bf16_s" in row:
            row["bf16_gain"] = row["resident_graph_s"] / row["resident_graph_bf16_s"]  # bf16 over float32 matmuls
        rows.append(row)
    out: dict[str, Any] = {"rows": rows}
    for key in ("copied", "resident", "copied_graph", "resident_graph"):
        wins = [r["batch"] for r in rows if r.get(f"speedup_{key}", 0) > 1]
        out[f"overtakes_{key}"] = wins[0] if wins else None
    ref = [r for r in rows if "speedup_resident" in r or "speedup_copied" in r]
    if ref:
        at = min(ref, key=lambda r: abs(np.log2(r["batch"] / 1024)))  # batch 1024, or the nearest measured
        out["at_batch"] = at["batch"]
        for k in (
            "speedup_copied",
            "speedup_resident",
            "speedup_copied_graph",
            "speedup_resident_graph",
            "copy_share",
            "graph_gain",
            "bf16_gain",
            "best_cpu",
        ):
            if k in at:
                out[k] = at[k]
        big = max(ref, key=lambda r: r["batch"])
        out["largest_batch"] = big["batch"]
        for k in (
            "speedup_copied",
            "speedup_resident",
            "speedup_copied_graph",
            "speedup_resident_graph",
            "copy_share",
            "graph_gain",
            "bf16_gain",
        ):
            if k in big:
                out[f"{k}_largest"] = big[k]
    return out
