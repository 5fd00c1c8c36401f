"""``whygpu demo``: every measurement at laptop-friendly sizes, then a report, reusing the other subcommands' steps."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TypedDict

from ..bench.trust import QUIET_THRESHOLD, QuietGuard, merge_quiet, quiet_caution
from ._common import _common_args, _note, _prepare_out, _progress, _write_json
from .info import _info_doc, _print_info
from .ladder import GPU_SIZES, _print_ladder
from .roofline import _print_gpu_roofs, _print_roofline
from .scaling import _print_scaling, _train_step_fn
from .train import _print_train


class _Plan(TypedDict):
    sizes: list[int]  # the ladder's matrix sizes (CPU rungs)
    repeats: int
    budget: float  # seconds per measurement (the training step: four times this)
    roofline_n: int
    scaling_n: int
    train_steps: int
    train_batch: int
    quick_probes: bool
    gpu_sizes: list[int]  # the ladder's sizes for the CUDA rungs
    gpu_roofline_n: int
    sweep: list[int]  # the training step's batch sizes, CPU against GPU
    scaleout_layers: list[int]  # the data-parallel MLP on ranks 1, 2 (where mpi4py and mpiexec are installed)
    scaleout_batch: int
    scaleout_steps: int
    scaleout_sweep_max: int  # the largest allreduce of the sweep, bytes
    scaleout_shards: list[str]  # DataParallel's shard settings on 2 ranks: the memory lesson (ZeRO 1 and 2)
    scaleout_optimizer: str  # Adam: its state is what sharding divides (SGD has none)
    heldout_layouts: list[str] | None  # the held-out validation's bucket layouts on 2 ranks (None: all three)
    heldout_brief: bool  # its terms measured briefly (QUICK's settings) and once, not again before each run
    split_layers: list[int]  # splitting the model: dp, zero1, tp, pp compared on 2 ranks (whygpu.scaleout_split)
    split_batch: int
    split_steps: int
    split_micro: list[int]  # the pipeline's micro-batch counts m


# The demo's two plans: sizes and budgets that finish in < 3 min (full) and
# < 60 s (quick) on a 2-core laptop, measured in docs/cli.md.
# Where a GPU is usable, its rungs are measured up to n = 4096 and the
# training step over a sweep of batches (32 to 8192) on the CPU and the GPU.
DEMO_PLANS: dict[str, _Plan] = {
    "full": {
        "sizes": [32, 64, 128, 256, 512, 1024, 2048],
        "repeats": 5,
        "budget": 2.0,
        "roofline_n": 1024,
        "scaling_n": 1024,
        "train_steps": 40,
        "train_batch": 256,
        "quick_probes": False,
        "gpu_sizes": GPU_SIZES,
        "gpu_roofline_n": 4096,
        "sweep": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        "scaleout_layers": [784, 1024, 1024, 10],
        "scaleout_batch": 512,
        "scaleout_steps": 6,
        "scaleout_sweep_max": 16 << 20,
        "scaleout_shards": ["none", "optimizer", "gradients"],
        "scaleout_optimizer": "adam",
        "heldout_layouts": None,
        "heldout_brief": False,
        # scaleout_split.DEFAULT_LAYERS (stages that balance at p = 2), 4 steps: about 15 s here
        "split_layers": [768, 1024, 1024, 1024, 512],
        "split_batch": 512,
        "split_steps": 4,
        "split_micro": [1, 2, 4, 8],
    },
    "quick": {
        "sizes": [64, 128, 256, 512],
        "repeats": 3,
        "budget": 0.4,
        "roofline_n": 1024,
        "scaling_n": 512,
        "train_steps": 8,
        "train_batch": 128,
        "quick_probes": True,
        "gpu_sizes": [128, 1024, 4096],
        "gpu_roofline_n": 4096,
        "sweep": [32, 256, 1024, 8192],
        "scaleout_layers": [784, 256, 256, 10],
        "scaleout_batch": 256,
        "scaleout_steps": 4,
        "scaleout_sweep_max": 1 << 20,
        "scaleout_shards": ["none", "optimizer", "gradients"],
        "scaleout_optimizer": "adam",
        "heldout_layouts": ["DDP: 1 MiB first + 25 MiB"],
        "heldout_brief": True,
        # half the widths, a quarter of the batch, 2 steps: a few seconds, the section shown
        "split_layers": [384, 512, 512, 512, 256],
        "split_batch": 128,
        "split_steps": 2,
        "split_micro": [1, 2, 4],
    },
}


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "demo", parents=[_common_args()], help="everything at laptop-friendly sizes, then a report (HTML + Markdown)"
    )
    s.add_argument("--quick", action="store_true", help="smaller sizes: under a minute")
    s.add_argument(
        "--all",
        "--force",
        dest="all",
        action="store_true",
        help="also run measurements predicted to exceed the budget (slow)",
    )
    return s


def _scaleout(plan: _Plan, out, prog: bool, log) -> None:
    """Data parallelism on 1 and 2 ranks at small sizes where mpi4py and mpiexec are installed; elsewhere a
    scaleout.json that says how to get them (the report's section shows it), and the demo goes on."""
    from ..bench.scaleout import INSTALL_HINT, SCHEMA, ScaleoutError, mpi_status
    from ..scaleout import run_scaleout
    from .scaleout import _print_scaleout

    st = mpi_status()
    why = st.get("reason")
    if st["available"]:
        try:
            doc = run_scaleout(
                ranks=[1, 2],
                layers=plan["scaleout_layers"],
                batch=plan["scaleout_batch"],
                steps=plan["scaleout_steps"],
                sweep_max=plan["scaleout_sweep_max"],
                shards=plan["scaleout_shards"],
                optimizer=plan["scaleout_optimizer"],
                timeout=120.0,
                log=log,
                progress=prog,
            )
        except (ScaleoutError, ValueError) as exc:
            why = f"the MPI run failed: {exc}"
        else:
            _print_scaleout(doc)
            _write_json(out, "scaleout", doc)
            _heldout(plan, out, log)
            return
    log(f"no scale-out measurement: {why} ({INSTALL_HINT})")
    _write_json(out, "scaleout", {"schema": SCHEMA, "available": False, "reason": why, "install": INSTALL_HINT})


def _heldout(plan: _Plan, out, log) -> None:
    """The step simulator checked on runs it never saw (whygpu.scaleout_heldout) on 2 ranks, at the demo's
    sizes: the terms measured apart, each configuration predicted, then run; a failure is said and the demo
    goes on (the report's section then says how to run it)."""
    from ..bench.scaleout import ScaleoutError
    from ..scaleout_heldout import QUICK, run_heldout
    from .scaleout import print_heldout

    try:
        doc = run_heldout(
            ranks=[2],
            layers=plan["scaleout_layers"],
            batch=plan["scaleout_batch"],
            steps=plan["scaleout_steps"],
            optimizer=plan["scaleout_optimizer"],
            layouts=plan["heldout_layouts"],
            terms_settings=dict(QUICK["terms"]) if plan["heldout_brief"] else None,
            fresh_compute=not plan["heldout_brief"],
            timeout=120.0,
            log=log,
        )
    except (ScaleoutError, ValueError) as exc:
        log(f"no held-out validation: {exc}")
        return
    print_heldout(doc)
    _write_json(out, "scaleout_heldout", doc)


def _split(plan: _Plan, out, log) -> None:
    """Splitting the model: data parallel, ZeRO-1, tensor and pipeline parallel on 2 ranks, the pipeline's
    bubble against the formula (whygpu.scaleout_split), saved as scaleout_split.json for the report; where MPI
    is missing or the run fails, a line says so and the demo goes on (the report then names the command)."""
    from ..bench.scaleout import INSTALL_HINT, ScaleoutError, mpi_status
    from ..scaleout_split import print_split, run_split

    st = mpi_status()
    if not st["available"]:
        log(f"no strategy comparison (splitting the model): {st.get('reason')} ({INSTALL_HINT})")
        return
    try:
        doc = run_split(
            ranks=2,
            layers=plan["split_layers"],
            batch=plan["split_batch"],
            steps=plan["split_steps"],
            micro=plan["split_micro"],
            timeout=120.0,
            log=log,
        )
    except (ScaleoutError, ValueError) as exc:
        log(f"no strategy comparison (splitting the model): the MPI run failed: {exc}")
        return
    print_split(doc)
    _write_json(out, "scaleout_split", doc)


def run(args) -> int:
    from ..bench.ladder import run_ladder
    from ..bench.scaling import run_scaling
    from ..predict.roofline import measure_machine, run_roofline
    from ..report import build_report, load_results

    plan = DEMO_PLANS["quick" if args.quick else "full"]
    out = _prepare_out(args.out)
    prog, log = _progress(args), _note(args)
    t0 = time.perf_counter()
    timings = {}

    def stage(name):
        print(f"\n== {name} " + "=" * max(0, 60 - len(name)), flush=True)

    print(
        f"whygpu demo{' --quick' if args.quick else ''}: measuring this machine, then writing a report into {out}"
        f" (about {'25 s' if args.quick else '50 s'} on a quiet 2-core machine, more with a GPU)",
        flush=True,
    )
    stage("info")
    info = _info_doc()
    _print_info(info)
    _write_json(out, "info", info)
    busy, steal = info["machine"].get("cpu_busy_before"), info["machine"].get("steal_before")
    if (busy or 0) > QUIET_THRESHOLD or (steal or 0) > QUIET_THRESHOLD:
        log(
            f"other programs are using {100 * (busy or 0):.0f}% of the CPUs"
            + (f" and the host steals {100 * steal:.0f}%" if (steal or 0) > QUIET_THRESHOLD else "")
            + ": each measurement waits a few seconds for quiet, and the report cautions where it did not come"
        )

    stage("roofs of this machine")
    t = time.perf_counter()
    roofs_guard = QuietGuard()  # the roofs are measured here, once for every stage: guarded like the rest
    with roofs_guard.block("roofs (demo)"):
        machine = measure_machine(quick=plan["quick_probes"])
    gpu = None
    if info["machine"]["cuda"].get("available"):
        from ..bench.gpu import measure_gpu

        gpu = measure_gpu(quick=plan["quick_probes"])
        if gpu:
            _print_gpu_roofs(gpu)
    else:
        log(f"no GPU measurements: {info['machine']['cuda'].get('reason')}")
    timings["roofs"] = time.perf_counter() - t

    stage("ladder")
    t = time.perf_counter()
    peak = {
        "arch": machine["arch"],
        "threads": machine["threads"],
        "gflops_1t": machine["compute"]["simd_1t"],
        "gflops_all": machine["compute"]["simd_all"],
    }
    if gpu:
        peak.update(
            gpu_gflops=gpu["fma_gflops"], gpu_device=gpu["device"], gpu_tensor_gflops=gpu.get("tensor_gflops") or {}
        )
    ladder = run_ladder(
        sizes=plan["sizes"],
        repeats=plan["repeats"],
        budget=plan["budget"],
        force=args.all,
        progress=prog,
        log=log,
        peak=peak,
        gpu_sizes=plan["gpu_sizes"],
    )
    timings["ladder"] = time.perf_counter() - t
    _print_ladder(ladder)
    _write_json(out, "ladder", ladder)

    stage("roofline")
    t = time.perf_counter()
    roof = run_roofline(
        n=plan["roofline_n"],
        repeats=plan["repeats"],
        budget=plan["budget"],
        force=args.all,
        machine=machine,
        ladder=ladder,
        progress=prog,
        gpu=gpu,
        gpu_n=plan["gpu_roofline_n"],
    )
    timings["roofline"] = time.perf_counter() - t
    _print_roofline(roof)
    roof["quiet"] = merge_quiet([roofs_guard.as_dict(), roof.get("quiet")])
    _write_json(out, "roofline", roof)

    from .._registry import KERNELS

    if KERNELS["openmp"].available:
        stage("scaling")
        t = time.perf_counter()
        ns = argparse.Namespace(batch=plan["train_batch"], kernel="openmp")
        step = _train_step_fn(ns, quick=args.quick)
        scaling = run_scaling(
            n=plan["scaling_n"],
            repeats=plan["repeats"],
            budget=plan["budget"],
            train_step=step,
            train_label=f"training step, batch {plan['train_batch']}",
            progress=prog,
            log=log,
        )
        timings["scaling"] = time.perf_counter() - t
        _print_scaling(scaling)
        _write_json(out, "scaling", scaling)
    else:
        log(f"no scaling section: {KERNELS['openmp'].unavailable()}")

    try:
        from ..bench.train import run_train
    except ImportError:
        log("the training stack (whygpu.nn) is not available: the training section is left out")
    else:
        stage("train")
        t = time.perf_counter()
        train = run_train(
            steps=plan["train_steps"],
            batch=plan["train_batch"],
            budget=plan["budget"] * 4,
            force=args.all,
            progress=prog,
            log=log,
            sweep_batches=plan["sweep"] if gpu else [],
        )
        timings["train"] = time.perf_counter() - t
        _print_train(train)
        _write_json(out, "train", train)

    stage("scaleout")
    t = time.perf_counter()
    _scaleout(plan, out, prog, log)
    timings["scaleout"] = time.perf_counter() - t

    stage("split the model")
    t = time.perf_counter()
    _split(plan, out, log)
    timings["split"] = time.perf_counter() - t

    stage("report")
    t = time.perf_counter()
    docs = load_results([out])
    res = build_report(docs, out)
    timings["report"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    _write_json(
        out,
        "demo",
        {
            "schema": "whygpu.demo/1",
            "quick": bool(args.quick),
            "seconds": total,
            "stages_s": timings,
            "files": sorted(p.name for p in out.iterdir()),
        },
    )
    caution = quiet_caution(merge_quiet([d.get("quiet") for d in docs.values()]))
    if caution:
        print(f"caution: {caution}", file=sys.stderr, flush=True)
    print(f"\ndemo finished in {total:.0f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    print(f"report: {res['html']}")
    print(f"        {res['markdown']}")
    return 0
