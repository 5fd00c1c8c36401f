"""``whygpu ladder``: GFLOP/s of every kernel over a range of sizes, and its table."""

from __future__ import annotations

import argparse

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
    from ..bench.ladder_results import left_out_text, pct_of_peak, pct_text, step_text, trusted
    from ..explain import format_error

    sizes = doc["params"]["sizes"]
    peak = doc.get("peak")
    by: dict[str, dict[int, str]] = {}  # kernel -> n -> the cell
    for r in doc["measurements"]:
        cell = _g(r["gflops"])
        if not trusted(r, peak):  # shown, flagged: never a plain figure
            cell += f" ({pct_text(pct_of_peak(r, peak))}: disturbed)"
        by.setdefault(r["kernel"], {})[r["n"]] = cell
    skipped = {(s["kernel"], s["n"]) for s in doc["skipped"]}
    rows: list[list] = []
    for k in doc["params"]["kernels"]:
        rows.append([k] + [by.get(k, {}).get(n) or ("skip" if (k, n) in skipped else "-") for n in sizes])
    how = "interleaved " if doc["params"].get("interleaved") else ""
    print(
        f"GFLOP/s, C = A @ B with n x n {doc['params']['dtype']} matrices "
        f"(median of up to {doc['params']['repeats']} {how}runs)"
    )
    print(_table(["kernel"] + [f"n={n}" for n in sizes], rows, right=range(1, len(sizes) + 1)))
    print()
    s = doc["summary"]
    rows = []
    for r in s["rows"]:
        gf = _g(r["gflops"])
        if "gflops_low" in r:
            gf += f" ({_g(r['gflops_low'])}-{_g(r['gflops_high'])})"
        rows.append(
            [
                r["kernel"],
                r["n"],
                gf,
                step_text(r),
                pct_text(r.get("pct_peak"), r.get("disturbed", False)),
                r.get("precision", ""),
                format_error(r.get("max_rel_error")),
            ]
        )
    pk = peak or {}
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
            [
                "kernel",
                "largest n",
                "GFLOP/s (min-max)",
                "speed-up over previous rung (min-max)",
                "% of peak",
                "precision",
                "max rel err",
            ],
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
    if any(not r.get("speedup_clear", True) for r in s["rows"]):
        print("(within the noise: the two rungs' min-max spreads overlap, so neither is faster here)")
    sp = s.get("span")
    if sp and sp["fastest"] != sp["slowest"]:
        rng = f"x{_g(sp['low'])}-{_g(sp['high'])}" if "low" in sp else ""
        if sp.get("clear", True):
            print(
                f"Fastest over slowest: {sp['fastest']} at n={sp['fastest_n']} runs at x{_g(sp['ratio'])} "
                f"the speed of {sp['slowest']} at n={sp['slowest_n']}" + (f" ({rng})" if rng else "")
            )
        else:
            print(f"{sp['fastest']} and {sp['slowest']} cannot be told apart here ({rng}: their spreads overlap)")
        if sp.get("tied"):
            print(f"  ({', '.join(sp['tied'])}: within the noise of {sp['fastest']}, so not slower)")
    note = left_out_text(s)
    if note:
        print(note)
    for u in doc.get("unavailable") or []:
        print(f"{u['kernel']}: not measured, unavailable here: {u['reason']}")
    g = s.get("gpu")
    if g:
        line = (
            f"Best GPU rung: {g['best']} at n={g['n']}, {_g(g['gflops'])} GFLOP/s "
            f"({pct_text(g.get('pct_peak'))} of the GPU's measured peak)"
        )
        if "vs_cublas" in g:
            line += f"; {100 * g['vs_cublas']:.0f}% of cuBLAS at n={g['cublas_n']}"
            if not g.get("vs_cublas_clear", True):
                line += " (within the noise)"
        if "vs_cpu" in g:
            line += f"; x{_g(g['vs_cpu'])} the best CPU rung ({g['best_cpu']}) at n={g['vs_cpu_n']}"
            if not g.get("vs_cpu_clear", True):
                line += " (within the noise)"
        print(line)


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
