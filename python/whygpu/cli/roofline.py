"""``whygpu roofline``: the machine's measured roofs with every kernel placed on them, and their tables."""

from __future__ import annotations

import argparse

from ._common import (
    _common_args,
    _dtype_arg,
    _g,
    _measure_args,
    _name_list,
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
        "roofline",
        parents=[_common_args(), _threads_arg(), _measure_args(2.0), _plot_arg(), _dtype_arg()],
        help="measure peak FLOP/s and bandwidth, place every kernel on the roofline",
    )
    s.add_argument("--n", type=_positive_int, default=1024, help="matrix size (default 1024)")
    s.add_argument("--kernels", type=_name_list, default=None, help="comma-separated kernels (default: all)")
    s.add_argument("--quick", action="store_true", help="shorter microbenchmarks")
    s.add_argument(
        "--gpu-n",
        type=_positive_int,
        default=4096,
        help="matrix size for the GPU kernels, where a GPU is usable (default 4096)",
    )
    return s


def _of_roof(p: dict) -> str:
    """'91%', or '143% (disturbed)' for a point still faster than its roof when measured again."""
    from ..predict.roofline import impossible_point
    from ..predict.roofline_trust import pct_text

    flag = p.get("disturbed") or (impossible_point(p) and "remeasured" not in p)  # (an older document)
    return pct_text(p["fraction_of_roof"]) + (" (disturbed)" if flag else "")


def _print_roofline(doc: dict) -> None:
    from ..predict.roofline import COMPUTE_ROOFS, MODEL_ERROR

    r = doc["roofs"]
    print(f"Roofs of this machine (measured; {r['arch']}, {r['threads']} threads, float32)")
    rows = [[k, _g(v), COMPUTE_ROOFS.get(k, "")] for k, v in r["compute"].items()]
    print(_table(["compute roof", "GFLOP/s", "what it is"], rows, right=(1,)))
    print()
    levels = list(r["bandwidth"]["1"])
    rows = [[lvl, _g(r["bandwidth"]["1"][lvl]), _g(r["bandwidth"]["all"].get(lvl))] for lvl in levels]
    print(_table(["bandwidth (STREAM triad)", "GB/s, 1 core", f"GB/s, {r['threads']} cores"], rows, right=(1, 2)))
    print()
    rows = []
    for p in doc["points"]:
        rows.append(
            [
                p["kernel"],
                p["n"],
                p.get("precision") or r.get("dtype", "float32"),
                p["compute_roof"],
                p["bound"],
                _g(p["intensity"]) + (f" {p['intensity_level']}" if p.get("intensity_level") else ""),
                _g(p["predicted_gflops"]),
                _g(p["measured_gflops"]),
                f"{100 * p['error']:+.0f}%",
                _of_roof(p),
            ]
        )
    print(
        "Each kernel against its roof (error = (predicted - measured) / measured time; "
        f"within {100 * doc.get('model_error', MODEL_ERROR):.0f}% below the roof the model explains it)"
    )
    print(
        _table(
            [
                "kernel",
                "n",
                "precision",
                "roof",
                "bound",
                "flop/byte",
                "predicted GFLOP/s",
                "measured GFLOP/s",
                "error",
                "of roof",
            ],
            rows,
            right=(1, 6, 7, 8, 9),
        )
    )
    if r.get("disturbed"):
        print(f"note: the roofs are disturbed: {r['disturbed']}")
    if doc.get("roofs_remeasured"):
        print(
            "note: a figure came out impossible (a kernel faster than its roof, or the all-core roof below "
            "one core's), so the roofs were measured again (each: best of both)"
        )
    for n in doc.get("notes", []):
        print(f"note: {n}")
    for u in doc.get("unavailable") or []:
        print(f"note: {u['kernel']} not measured, unavailable here: {u['reason']}")
    gpu = doc.get("gpu_roofs")
    if gpu:
        print()
        _print_gpu_roofs(gpu)


def _print_gpu_roofs(gpu: dict) -> None:
    print(f"Roofs of the GPU (measured; {gpu['device']}, {gpu['multiprocessors']} SMs)")
    rows = [["float32 FMA peak", f"{_g(gpu['fma_gflops'])} GFLOP/s"]]
    for prec, v in (gpu.get("tensor_gflops") or {}).items():
        rows.append([f"{prec} tensor-core peak (mma.sync)", f"{_g(v)} GFLOP/s"])
    if gpu.get("tensor_reason"):
        rows.append(["tensor-core peak", f"not measured: {gpu['tensor_reason']}"])
    rows += [
        [f"device memory, {lvl} working set", f"{_g(v)} GB/s (read + write)"] for lvl, v in gpu["bandwidth"].items()
    ]
    for d, label in (("h2d", "host -> device"), ("d2h", "device -> host")):
        h = gpu["host"][d]
        rows.append(
            [
                f"{label}, {gpu['bytes']['host_copy'] >> 20} MiB",
                f"pageable {_g(h['pageable'])}, pinned {_g(h['pinned'])}, staged {_g(h['staged'])} GB/s",
            ]
        )
    print(_table(["GPU roof", "measured"], rows))


def run(args) -> int:
    from ..predict.roofline import run_roofline

    out = _prepare_out(args.out)
    doc = run_roofline(
        n=args.n,
        kernels=args.kernels,
        dtype=args.dtype,
        threads=args.threads,
        repeats=args.repeats,
        budget=args.budget,
        force=args.all,
        quick=args.quick,
        progress=_progress(args),
        gpu_n=args.gpu_n,
        log=lambda s: None,
    )
    _print_roofline(doc)
    figures = [("plot_roofline", "roofline.png")]
    if doc.get("gpu_roofs"):
        figures.append(("plot_roofline_gpu", "roofline_gpu.png"))
    _save(out, "roofline", doc, args.plot, figures)
    return 0
