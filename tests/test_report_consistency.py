"""One number for one thing (issue 32): a report rendered from planted results states every quantity with one
value -- a rung's speed-up, a GFLOP/s, the FMA peak, a training step's time and matmul share, a thread count's
speed-up, a scale-out run's waiting time and model error, the devices a model needs -- in its figures' labels,
its tables and its sentences alike; the shares of the time lost to scale-out are never negative without saying
what the negative part means; a surprising device count says why; and every term of art the page uses has a
glossary entry.  Every document here is planted: nothing is timed."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from whygpu import _registry  # noqa: E402
from whygpu import scaleout as so  # noqa: E402
from whygpu.bench import scaleout as bso  # noqa: E402
from whygpu.bench import scaling as bscaling  # noqa: E402
from whygpu.bench.ladder_results import ladder_summary  # noqa: E402
from whygpu.bench.measure import Timing  # noqa: E402
from whygpu.report import build_report  # noqa: E402
from whygpu.report import glossary  # noqa: E402

# ---------------------------------------------------------------- planted documents
MACHINE = {"cpu": {"model": "planted CPU", "cores": 2, "arch": "avx512", "caches": {"L2": 1 << 20, "L3": 32 << 20}}}
PEAK = {"arch": "avx512", "threads": 2, "gflops_1t": 117.3, "gflops_all": 234.6}


def _rec(kernel: str, n: int, gflops: float, threads: int = 1, spread: float = 0.03) -> dict:
    flops = 2.0 * n**3
    t = flops / gflops / 1e9
    times = [t, t * (1 + spread), t * (1 - spread)]
    return {
        "kernel": kernel,
        "n": n,
        "dtype": "float32",
        "device": "cpu",
        "precision": "float32",
        "threads": threads,
        "flops": flops,
        "seconds": statistics.median(times),
        "seconds_min": min(times),
        "samples": 3,
        "times": times,
        "gflops": flops / statistics.median(times) / 1e9,
    }


def ladder_doc() -> dict:
    """The issue's shape: python and naive stop at smaller sizes than the rungs after them, so a rung's bar (its
    largest size) over the bar before is not its speed-up at one size (x47.6 against x38.3)."""
    rates = {
        "python": {64: 0.011},
        "cython": {64: 0.09, 128: 0.085},
        "naive": {64: 0.9, 128: 0.8, 256: 0.62},
        "reordered": {128: 8.0, 256: 23.7, 512: 29.5},
        "blocked": {256: 22.0, 512: 27.0},
        "packed": {256: 90.0, 512: 100.0},
        "openmp": {256: 150.0, 512: 190.0},
        "numpy-1t": {256: 100.0, 512: 108.0},
        "numpy-2t": {256: 160.0, 512: 200.0},
    }
    meas = [
        _rec(k, n, g, threads=2 if k in ("openmp", "numpy-2t") else 1) for k, by in rates.items() for n, g in by.items()
    ]
    doc = {
        "schema": "whygpu.ladder/1",
        "machine": MACHINE,
        "params": {"sizes": [64, 128, 256, 512], "kernels": list(rates), "dtype": "float32", "threads": 2,
                   "budget_s": 1.0, "interleaved": True},  # fmt: skip
        "peak": PEAK,
        "measurements": meas,
        "skipped": [],
        "errors": {},
    }
    doc["summary"] = ladder_summary(doc)
    return doc


def train_doc() -> dict:
    def run(name: str, s: float, share: float) -> dict:
        return {"backend": name, "step_s": s, "step_s_low": 0.97 * s, "step_s_high": 1.04 * s,
                "samples_per_s": 256 / s, "matmul_share": share, "accuracy": 0.91, "final_loss": 0.31,
                "threads": 2, "device": "cpu"}  # fmt: skip

    return {
        "schema": "whygpu.train/1",
        "machine": MACHINE,
        "params": {"layers": "784-512-256-10", "batch": 256, "steps": 20},
        "runs": [run("naive", 0.2346, 0.962), run("packed", 0.01234, 0.684), run("openmp", 0.00755, 0.512)],
    }


class _Rounds:
    """time_interleaved with planted samples: seconds by thread count (the 1-thread ones over p otherwise)."""

    def __init__(self, plan: dict[str, list[float]]):
        self.plan = plan

    def __call__(self, fns, *, repeats=5, budget=1.0, contexts=None, expected=None):
        one = self.plan["1"]
        return {
            name: Timing(times=list(self.plan.get(name, [t / (int(name) if name.isdigit() else 1) for t in one])))
            for name in fns
        }


def scaling_doc(monkeypatch) -> dict:
    """Two cores, so 1 and 2 threads: Amdahl's law cannot be fitted from them."""
    monkeypatch.setattr(bscaling, "machine_info", lambda: dict(MACHINE))
    monkeypatch.setattr(bscaling, "_cpus_available", lambda: 2)
    monkeypatch.setattr(bscaling, "check_threads", lambda t, warn=False: int(t))
    plan = {"1": [1.0, 1.02, 0.99], "2": [0.54, 0.55, 0.56], "baseline": [1.0, 1.01, 0.99]}
    monkeypatch.setattr(bscaling, "time_interleaved", _Rounds(plan))
    return bscaling.run_scaling(n=64, threads_list=[1, 2], repeats=3, budget=10.0, numpy=False, peak=False)


N_PARAMS = so.mlp_params([784, 2048, 2048, 10])


class _Launch:
    """A fake mpiexec launch.  Its steps vary, so that a median of the steps' parts is not a part of the median
    step (the issue's 2.2 ms 'waiting' against the table's 1.8 ms exposed), and the sharded update is faster than
    the whole update side by side (the issue's negative share)."""

    STEP = {(1, 1, 512, "plain"): 0.100, (1, 2, 512, "plain"): 0.055, (1, 1, 256, "plain"): 0.060,
            (2, 1, 512, "side"): 0.062, (2, 1, 512, "none"): 0.071, (2, 1, 512, "optimizer"): 0.066,
            (2, 1, 512, "gradients"): 0.067}  # fmt: skip

    def __call__(self, mpiexec, ranks, threads, args, timeout, tick=None):
        mode = args[args.index("--mode") + 1]
        if mode == "sweep":
            sizes = [int(x) for x in args[args.index("--sizes") + 1].split(",")]
            secs = [so.ring_allreduce_s(s, ranks, 5e-6, 2e9) for s in sizes]
            return {"ranks": ranks, "bytes": sizes, "seconds": secs, "seconds_min": secs, "seconds_max": secs,
                    "reps": [5] * len(sizes)}  # fmt: skip
        b = int(args[args.index("--batch") + 1])
        opt = args[args.index("--optimizer") + 1]
        side = "--independent" in args
        shard = args[args.index("--shard") + 1] if "--shard" in args else "none"
        kind = "side" if side else (shard if ranks > 1 else "plain")
        step = self.STEP[(ranks, threads, b, kind)]
        dp = ranks > 1 and not side
        sharded = dp and shard != "none"
        steps = []
        # exposed 1.2, 2.6, 1.8 ms with steps 1.0, 0.4, 1.9 ms apart from the median: medians that do not add up
        for d_step, d_exp in ((0.0, 0.0012), (-0.0006, 0.0026), (0.0009, 0.0018)):
            rec = {"step_s": step + d_step, "forward_s": step / 3, "backward_s": step / 2,
                   "update_s": 0.005 if sharded else 0.010,
                   "allreduce_s": 0.004 if dp else 0.0, "exposed_s": d_exp if dp else 0.0,
                   "bytes": 4 * N_PARAMS if dp else 0, "buckets": 1 if dp else 0}  # fmt: skip
            if sharded:
                rec.update(reduce_scatter_s=0.004, allgather_s=0.003)
            steps.append(rec)
        k = {"sgd": 0, "momentum": 4, "adam": 8}[opt]
        shard_n = -(-N_PARAMS // ranks)
        m = {"params_bytes": 4 * N_PARAMS,
             "grads_bytes": 4 * (shard_n if sharded and shard == "gradients" else N_PARAMS),
             "optimizer_bytes": k * (shard_n if sharded else N_PARAMS)}  # fmt: skip
        m["total_bytes"] = sum(m.values())
        mem = {"per_rank": [dict(m, shard=shard if dp else "none", ranks=ranks)] * ranks, "max": m,
               "n_params": N_PARAMS, "formula_bytes": None, "source": "planted"}  # fmt: skip
        return {"ranks": ranks, "threads": threads, "data_parallel": dp, "backend": "openmp", "batch": b,
                "independent": side, "shard": shard if dp else "none", "optimizer": opt, "memory": mem,
                "steps": steps, "bare_allreduce_s": [0.005] * 5 if dp else [],
                "bare_reduce_scatter_s": [0.004] * 5 if sharded else [],
                "bare_allgather_s": [0.003] * 5 if sharded else [],
                "rank_step_s": [step] * ranks, "weights_spread": 0.0, "mpi_library": "planted MPI",
                "prefetch": False}  # fmt: skip


def scaleout_doc(monkeypatch) -> dict:
    monkeypatch.setenv("WHYGPU_QUIET_WAIT", "0")
    monkeypatch.setattr(bso, "mpi_status", lambda: {"available": True, "mpiexec": "mpiexec", "install": ""})
    monkeypatch.setattr(bso, "_cpus_available", lambda: 2)
    monkeypatch.setattr(bso, "machine_info", lambda: dict(MACHINE))
    monkeypatch.setattr(bso, "launch", _Launch())
    import whygpu._threads

    monkeypatch.setattr(whygpu._threads, "_cpus_available", lambda: 2)
    return so.run_scaleout(ranks=[1, 2], steps=3, shards="all", optimizer="adam")


@pytest.fixture
def report(monkeypatch, tmp_path):
    """The report of every planted document: its blocks, Markdown, HTML and the text of every figure drawn."""
    if not _registry.KERNELS["openmp"].available:
        pytest.skip("built without OpenMP: the planted scaling run times the openmp kernel")
    docs = {"ladder": ladder_doc(), "train": train_doc(), "scaling": scaling_doc(monkeypatch),
            "scaleout": scaleout_doc(monkeypatch)}  # fmt: skip
    return render(docs, monkeypatch, tmp_path)


def render(docs: dict, monkeypatch, tmp_path: Path) -> dict:
    import whygpu.report.page as page

    drawn: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(self, path, *a, **k):
        drawn[Path(str(path)).name] = self
        return save(self, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    blocks: list = []
    real = page._to_markdown

    def markdown(b):
        blocks.extend(b)
        return real(b)

    monkeypatch.setattr(page, "_to_markdown", markdown)
    out = build_report(docs, tmp_path / "rep")
    return {
        "blocks": blocks,
        "md": Path(out["markdown"]).read_text(),
        "html": Path(out["html"]).read_text(),
        "figures": {name: figure_texts(fig) for name, fig in drawn.items()},
    }


def figure_texts(fig: Figure) -> list[str]:
    """Every text a figure shows: titles, labels, tick labels, legends, annotations."""
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    return [t for t in out if t]


def test_render_for_a_look(report):
    print(report["md"])
    for k, v in report["figures"].items():
        print(k, v)
