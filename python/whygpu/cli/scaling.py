"""``whygpu scaling``: speed-up against threads with Amdahl's law fitted, and its table."""

from __future__ import annotations

import argparse
import math

from ._common import (
    _common_args,
    _g,
    _int_list,
    _measure_args,
    _note,
    _plot_arg,
    _positive_int,
    _prepare_out,
    _progress,
    _save,
    _table,
)


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "scaling",
        parents=[_common_args(), _measure_args(2.0), _plot_arg()],
        help="speed-up against threads, with Amdahl's law fitted",
    )
    s.add_argument("--n", type=_positive_int, default=1024, help="matrix size (default 1024)")
    s.add_argument(
        "--threads",
        dest="threads",
        type=_int_list,
        default=None,
        help="thread counts, e.g. '1,2,4' (default: 1 to the number of cores)",
    )
    s.add_argument("--kernel", default="openmp", help="parallel kernel to scale (default openmp)")
    s.add_argument("--batch", type=_positive_int, default=256, help="batch of the training step (default 256)")
    s.add_argument("--no-train", action="store_true", help="leave out the training step")
    return s


def _print_scaling(doc: dict) -> None:
    ths = doc["params"]["threads"]
    rows = []
    for s in doc["series"]:
        f = s["serial_fraction"]
        lim = s.get("max_speedup")
        rows.append(
            [s["label"]]
            + [f"x{_g(v)}" for v in s["speedup"]]
            + [f"{100 * f:.0f}%", "none" if lim is None or not math.isfinite(lim) else f"x{_g(lim)}"]
        )
    print("Speed-up over 1 thread, and the serial fraction Amdahl's law fits")
    print(_table(["series"] + [f"{p} thr" for p in ths] + ["serial", "limit"], rows, right=range(1, len(ths) + 3)))
    for s in doc["series"]:
        steps = s.get("steps") or []
        if s["kind"] == "train" and len(steps) >= 2:
            a, b = steps[0], steps[-1]
            print(
                f"training step, per step: matmul {1e3 * a['matmul_s']:.3g} -> {1e3 * b['matmul_s']:.3g} ms, "
                f"everything else {1e3 * a['other_s']:.3g} -> {1e3 * b['other_s']:.3g} ms "
                f"({a['threads']} -> {b['threads']} threads)"
            )
    if doc.get("note"):
        print(f"({doc['note']})")


def _train_step_fn(args, quick: bool = False):
    """A callable threads -> {"seconds", "matmul_share"} timing one training
    step on the parallel back end, or None when the training stack is absent."""
    try:
        from ..bench.train import step_timer
    except ImportError:
        return None
    return step_timer(batch=args.batch, backend=getattr(args, "kernel", "openmp"), quick=quick)


def run(args) -> int:
    from ..bench.scaling import run_scaling

    out = _prepare_out(args.out)
    step = None if args.no_train else _train_step_fn(args)
    if step is None and not args.no_train:
        _note(args)("the training stack (whygpu.nn) is not available: scaling of the training step skipped")
    doc = run_scaling(
        n=args.n,
        threads_list=args.threads,
        kernel=args.kernel,
        repeats=args.repeats,
        budget=args.budget,
        train_step=step,
        train_label=f"training step, batch {args.batch}",
        progress=_progress(args),
        log=_note(args),
    )
    _print_scaling(doc)
    _save(out, "scaling", doc, args.plot, [("plot_scaling", "scaling.png")])
    return 0
