"""``whygpu ladder``: GFLOP/s of every kernel over a range of sizes, and its table."""

from __future__ import annotations

import argparse
import math

from ._common import (
    _common_args,
    _dtype_arg,
    _g,
    _int_list,
    _measure_args,
    _name_list,
    _note,
    _plot_arg,
    _prepare_out,
    _progress,
    _save,
    _table,
    _threads_arg,
)

# GPU sizes: a GPU needs n in the thousands before launch overheads and idle
# SMs stop mattering (n = 512 ran at 8% of what n = 4096 did on an H200).
GPU_SIZES = [128, 256, 512, 1024, 2048, 4096]


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "ladder",
        parents=[_common_args(), _threads_arg(), _measure_args(2.0), _plot_arg(), _dtype_arg()],
        help="GFLOP/s of every kernel over a range of sizes",
    )
    s.add_argument(
        "--sizes",
        type=_int_list,
        default=[64, 128, 256, 512, 1024],
        help="matrix sizes n: '64,128,256' or '64:1024' (powers of two; default 64:1024)",
    )
    s.add_argument(
        "--kernels",
        type=_name_list,
        default=None,
        help="comma-separated kernels (default: all available); 'numpy' adds the BLAS references",
    )
    s.add_argument("--no-numpy", action="store_true", help="leave out the NumPy/BLAS references")
    s.add_argument(
        "--gpu-sizes",
        type=_int_list,
        default=GPU_SIZES,
        help="sizes for the GPU kernels, where a GPU is usable (default 128:4096)",
    )
    return s


def _print_ladder(doc: dict) -> None:
    sizes = doc["params"]["sizes"]
    by: dict[str, dict[int, float]] = {}  # kernel -> n -> GFLOP/s
    for r in doc["measurements"]:
        by.setdefault(r["kernel"], {})[r["n"]] = r["gflops"]
    skipped = {(s["kernel"], s["n"]) for s in doc["skipped"]}
    rows = []
    for k in doc["params"]["kernels"]:
        rows.append(
            [k]
            + [
                _g(by.get(k, {}).get(n)) if n in by.get(k, {}) else ("skip" if (k, n) in skipped else "-")
                for n in sizes
            ]
        )
    print(
        f"GFLOP/s, C = A @ B with n x n {doc['params']['dtype']} matrices "
        f"(median of up to {doc['params']['repeats']} runs)"
    )
    print(_table(["kernel"] + [f"n={n}" for n in sizes], rows, right=range(1, len(sizes) + 1)))
    print()
    from ..explain import format_error

    rows = []
    for r in doc["summary"]["rows"]:
        step = f"x{_g(r['speedup_prev'])} vs {r['prev']} @{r['speedup_n']}" if "speedup_prev" in r else ""
        pct = r.get("pct_peak")
        rows.append(
            [
                r["kernel"],
                r["n"],
                _g(r["gflops"]),
                step,
                "n/a" if pct is None or not math.isfinite(pct) else f"{pct:.3g}%",
                r.get("precision", ""),
                format_error(r.get("max_rel_error")),
            ]
        )
    pk = doc.get("peak") or {}
    half = 2 if doc["params"]["dtype"] == "float64" else 1
    gpu_pk = (
        f"; the GPU ({pk.get('gpu_device', 'GPU')}): {_g(pk['gpu_gflops'])} GFLOP/s float32"
        if pk.get("gpu_gflops")
        else ""
    )
    if pk.get("gpu_tensor_gflops"):
        gpu_pk += ", tensor cores " + ", ".join(f"{_g(v)} {p}" for p, v in pk["gpu_tensor_gflops"].items())
    print(
        f"The ladder (measured FMA peak, {doc['params']['dtype']}: {_g(pk.get('gflops_1t', 0) / half)} GFLOP/s on "
        f"1 core, {_g(pk.get('gflops_all', 0) / half)} on {pk.get('threads')}{gpu_pk})"
    )
    print(
        _table(
            ["kernel", "largest n", "GFLOP/s", "speed-up over previous rung", "% of peak", "precision", "max rel err"],
            rows,
            right=(1, 2, 4, 6),
        )
    )
    if doc.get("errors"):
        ns = sorted({e["n"] for e in doc["errors"].values()})
        print(
            f"(% of peak: the tensor-core rungs against the tensor-core peak in their precision; max rel err: "
            f"{doc.get('error_metric', 'against float64')}, at n = {', '.join(map(str, ns))})"
        )
    for u in doc.get("unavailable") or []:
        print(f"{u['kernel']}: not measured, unavailable here: {u['reason']}")
    g = doc["summary"].get("gpu")
    if g:
        line = (
            f"Best GPU rung: {g['best']} at n={g['n']}, {_g(g['gflops'])} GFLOP/s "
            f"({_pct_txt(g.get('pct_peak'))} of the GPU's measured peak)"
        )
        if "vs_cublas" in g:
            line += f"; {100 * g['vs_cublas']:.0f}% of cuBLAS at n={g['cublas_n']}"
        if "vs_cpu" in g:
            line += f"; x{_g(g['vs_cpu'])} the best CPU rung ({g['best_cpu']}) at n={g['vs_cpu_n']}"
        print(line)


def _pct_txt(p) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}%"


def run(args) -> int:
    from ..bench.ladder import run_ladder

    out = _prepare_out(args.out)
    doc = run_ladder(
        sizes=args.sizes,
        kernels=args.kernels,
        dtype=args.dtype,
        threads=args.threads,
        repeats=args.repeats,
        budget=args.budget,
        force=args.all,
        references=not args.no_numpy,
        gpu_sizes=args.gpu_sizes,
        progress=_progress(args),
        log=_note(args),
    )
    _print_ladder(doc)
    _save(out, "ladder", doc, args.plot, [("plot_ladder", "ladder.png"), ("plot_ladder_steps", "ladder_steps.png")])
    return 0
