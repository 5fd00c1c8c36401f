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


def _cell(s: dict, i: int) -> str:
    """'x1.85 (1.80-1.90)': the median speed-up and its min-max over the rounds; '*' marks a disturbed point."""
    if s["threads"][i] == 1 and not s["disturbed"][i]:
        return "x1"  # by definition: each round's 1-thread sample is its own reference
    lo, hi = s["speedup_low"][i], s["speedup_high"][i]
    cell = f"x{_g(s['speedup'][i])}" + (f" ({_g(lo)}-{_g(hi)})" if lo != hi else "")
    return cell + (" disturbed*" if s["disturbed"][i] else "")


def _serial_cells(s: dict) -> list[str]:
    from ..bench.scaling import percent

    if s.get("serial_disturbed"):
        return ["disturbed*", "-"]
    if not s.get("fitted"):
        return ["no fit", "-"]
    lim = s.get("max_speedup")
    return [percent(s["serial_fraction"]), "none" if lim is None or not math.isfinite(lim) else f"x{_g(lim)}"]


def _print_scaling(doc: dict) -> None:
    from ..bench.scaling import fit_text, plain_text, speedup_text
    from ..bench.trust import DISTURBED

    ths = doc["params"]["threads"]
    rows = [[s["label"]] + [_cell(s, i) for i in range(len(ths))] + _serial_cells(s) for s in doc["series"]]
    rounds = sorted({s.get("rounds", 1) for s in doc["series"]})
    n_rounds = f"{rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else str(rounds[0])
    print(
        f"Speed-up over 1 thread: median of {n_rounds} interleaved round{'s' if rounds[-1] > 1 else ''} (min-max); "
        "serial fraction and limit from Amdahl's law"
    )
    print(_table(["series"] + [f"{p} thr" for p in ths] + ["serial", "limit"], rows, right=range(1, len(ths) + 3)))
    flagged = False
    for s in doc["series"]:
        for i in range(len(ths)):
            if s["disturbed"][i]:
                flagged = True
                print(f"* {s['label']}: {speedup_text(s, i)}")
        if s.get("serial_disturbed"):
            flagged = True
            print(f"* {s['label']}: {s['fit_note']}; {DISTURBED}")
    if doc.get("note"):
        print(f"({doc['note']})")
    for s in doc["series"]:
        plain = [plain_text(s)] if plain_text(s) else []
        # With the note above saying why nothing was fitted, the plain speed-up is what is left to say.
        fit = [] if not s.get("fitted") and doc.get("note") else [fit_text(s)]
        if plain or fit:
            print(f"{s['label']}: {'; '.join(plain + fit)}")
    for s in doc["series"]:
        steps = s.get("steps") or []
        if s["kind"] == "train" and len(steps) >= 2:
            a, b = steps[0], steps[-1]
            print(
                f"training step, per step: matmul {1e3 * a['matmul_s']:.3g} -> {1e3 * b['matmul_s']:.3g} ms, "
                f"everything else {1e3 * a['other_s']:.3g} -> {1e3 * b['other_s']:.3g} ms "
                f"({a['threads']} -> {b['threads']} threads)"
            )
    if flagged:
        print("(* a figure the hardware cannot produce, measured twice: the machine was disturbed, not the code)")


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
