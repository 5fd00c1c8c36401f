"""``whygpu train``: the same MLP trained on each back end, the batch sweep, and their tables."""

from __future__ import annotations

import argparse

from ._common import (
    CliError,
    _common_args,
    _g,
    _int_list,
    _measure_args,
    _name_list,
    _note,
    _plot_arg,
    _positive_int,
    _prepare_out,
    _progress,
    _save,
    _table,
    _threads_arg,
)


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "train",
        parents=[_common_args(), _threads_arg(), _measure_args(10.0, "back end (all its steps)"), _plot_arg()],
        help="train the same MLP on each back end: time per step, share in matmul",
    )
    s.add_argument("--steps", type=_positive_int, default=30, help="training steps per back end (default 30)")
    s.add_argument("--batch", type=_positive_int, default=256, help="batch size (default 256)")
    s.add_argument(
        "--layers", type=_int_list, default=[784, 512, 256, 10], help="layer widths (default 784,512,256,10)"
    )
    s.add_argument(
        "--backends",
        type=_name_list,
        default=None,
        help="comma-separated back ends (default: numpy and every kernel fast enough)",
    )
    s.add_argument(
        "--batches",
        type=_int_list,
        default=None,
        help="batch sizes of the CPU-vs-GPU sweep (default 32:8192 where a GPU is usable, "
        "none elsewhere; given, the CPU back ends are swept even without a GPU)",
    )
    s.add_argument("--no-sweep", action="store_true", help="leave out the batch sweep")
    return s


def _print_train(doc: dict) -> None:
    rows = []
    for r in doc["runs"]:
        if r.get("skipped"):
            rows.append([r["backend"], "skipped", "", "", "", r["skipped"]])
            continue
        rows.append(
            [
                r["backend"],
                f"{1e3 * r['step_s']:.3g} ms",
                _g(r["samples_per_s"]),
                f"{100 * r['matmul_share']:.0f}%",
                f"{100 * r['accuracy']:.1f}%" if r.get("accuracy") is not None else "n/a",
                "",
            ]
        )
    p = doc["params"]
    print(f"MLP {p['layers']}, batch {p['batch']}, {p['steps']} steps of SGD on {p['dataset']}")
    print(_table(["backend", "time/step", "samples/s", "in matmul", "accuracy", "note"], rows, right=(1, 2, 3, 4)))
    if doc.get("sweep"):
        print()
        _print_sweep(doc["sweep"])


def _print_sweep(sw: dict) -> None:
    labels = [s["label"] for s in sw["series"]]
    by = {s["label"]: {pt["batch"]: pt["step_s"] for pt in s["points"]} for s in sw["series"]}
    summ = {r["batch"]: r for r in sw["summary"]["rows"]}
    gpu = any(s["device"] == "cuda" for s in sw["series"])
    rows = []
    for b in sw["batches"]:
        r = summ.get(b, {})
        rows.append(
            [b]
            + [f"{1e3 * by[lbl][b]:.3g}" if b in by[lbl] else "skip" for lbl in labels]
            + (
                [
                    f"x{_g(r['speedup_copied'])}" if "speedup_copied" in r else "-",
                    f"x{_g(r['speedup_resident'])}" if "speedup_resident" in r else "-",
                    f"{100 * r['copy_share']:.0f}%" if "copy_share" in r else "-",
                    f"x{_g(r['graph_gain'])}" if "graph_gain" in r else "-",
                    f"x{_g(r['bf16_gain'])}" if "bf16_gain" in r else "-",
                ]
                if gpu
                else []
            )
        )
    print(
        f"ms per training step of the MLP {sw['layers']} by batch size (median of {sw['steps']} steps; "
        f"CPU back ends on {sw['threads']} threads)"
    )
    extra = (
        ["GPU copied vs best CPU", "GPU resident vs best CPU", "copy share", "graph gain", "bf16 gain"] if gpu else []
    )
    print(_table(["batch"] + labels + extra, rows, right=range(0, len(labels) + 6)))
    if not gpu:
        print("(no GPU is usable here: the sweep has the CPU back ends only)")
    s = sw["summary"]
    for key, what in (("resident", "with the data kept on the GPU"), ("copied", "with the batch copied every step")):
        if any(f"speedup_{key}" in r for r in sw["summary"]["rows"]):
            b = s.get(f"overtakes_{key}")
            print(
                f"The GPU {what} "
                + (
                    f"overtakes the best CPU back end at batch {b}."
                    if b
                    else "never overtook the best CPU back end in this sweep."
                )
            )


def run(args) -> int:
    try:
        from ..bench.train import run_train
    except ImportError as exc:
        raise CliError(f"the training stack (whygpu.nn) is not available in this build: {exc}") from None
    out = _prepare_out(args.out)
    doc = run_train(
        steps=args.steps,
        batch=args.batch,
        layers=args.layers,
        backends=args.backends,
        threads=args.threads,
        budget=args.budget,
        force=args.all,
        progress=_progress(args),
        sweep_batches=[] if args.no_sweep else args.batches,
        log=_note(args),
    )
    _print_train(doc)
    figures = [("plot_train", "train.png")]
    if doc.get("sweep"):
        figures.append(("plot_train_sweep", "train_sweep.png"))
    _save(out, "train", doc, args.plot, figures)
    return 0
