"""Turn a pytest-benchmark JSON file into Markdown tables of GFLOP/s.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/report_table.py bench.json [--stat min]

One table per suite (ladder, mlp, isa): a row per kernel (with its thread
count), a column per problem size, and in each cell the GFLOP/s and, in
parentheses, the ratio to NumPy run with the same number of threads in the
same column (NumPy's BLAS is pinned to that count by threadpoolctl).
GFLOP/s = 2*m*n*k / time, from the median time by default.

Only the standard library is needed; benchmarks/conftest.py also uses
`markdown_tables` to print the same tables at the end of a benchmark run.
"""

from __future__ import annotations

import argparse
import json
import sys

SUITE_TITLES = {
    "ladder": "The ladder: square float32 matmul, n x n @ n x n",
    "mlp": "MLP layer shapes (float32, forward: batch x in @ in x out)",
    "isa": "What SIMD buys: the packed kernel under each instruction set (float32)",
    "train": "Training step of the MLP 784-512-256-10 (forward + backward + SGD; GFLOP/s of its matmuls)",
    "train-gpu": "Training step of the MLP 784-512-256-10 on the GPU (cuda) and the CPU at every core",
}


def gflops(bench: dict, stat: str = "median"):
    """GFLOP/s of one benchmark entry (a dict as in the JSON), or None without timings."""
    info, stats = bench.get("extra_info", {}), bench.get("stats") or {}
    seconds = stats.get(stat)
    if not seconds or "flops" not in info:
        return None
    return info["flops"] / seconds / 1e9


def _cell(value, base):
    if value is None:
        return "-"
    if base is None or base == 0:
        return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    ratio = value / base
    shown = f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    return f"{shown} ({ratio:.2g}x)" if ratio < 0.1 else f"{shown} ({ratio:.2f}x)"


def markdown_tables(benchmarks, stat: str = "median") -> str:
    """Markdown tables for a list of benchmark entries (dicts with extra_info and stats)."""
    by_suite: dict = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "suite" in info and "row" in info and "column" in info:
            by_suite.setdefault(info["suite"], []).append(bench)
    parts = []
    order = list(SUITE_TITLES) + sorted(set(by_suite) - set(SUITE_TITLES))
    for suite in (s for s in order if s in by_suite):
        entries = by_suite[suite]
        info = [e["extra_info"] for e in entries]
        # columns by problem size, rows in ladder order then thread count (NumPy last)
        columns = sorted({i["column"] for i in info}, key=lambda c: min(i["flops"] for i in info if i["column"] == c))
        rows = sorted(
            {i["row"] for i in info},
            key=lambda r: min(
                (i.get("rung", 99), i.get("threads", 1), i.get("rank", 0), r) for i in info if i["row"] == r
            ),
        )
        value = {(i["row"], i["column"]): gflops(e, stat) for e, i in zip(entries, info)}
        threads = {i["row"]: i.get("threads", 1) for i in info}
        numpy = {
            (i["column"], i.get("threads", 1)): gflops(e, stat)
            for e, i in zip(entries, info)
            if i.get("kernel") == "numpy"
        }
        lines = [
            f"### {SUITE_TITLES.get(suite, suite)}",
            "",
            f"GFLOP/s ({stat} time); in parentheses: ratio to NumPy with the same thread count.",
            "",
            "| kernel | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for row in rows:
            cells = [
                _cell(value.get((row, col)), None if row.startswith("numpy") else numpy.get((col, threads[row])))
                for col in columns
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def machine_summary(data: dict) -> str:
    """One line about the machine from the JSON's machine_info (if whygpu's conftest added it)."""
    mi = data.get("machine_info", {})
    cpu = (mi.get("whygpu") or {}).get("cpu_info", {})
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')}" for b in mi.get("blas", [])) or "unknown BLAS"
    if not cpu:
        return ""
    return (
        f"Machine: {cpu.get('model')} ({cpu.get('cores')} cores usable), whygpu arch {cpu.get('arch')}, "
        f"NumPy on {blas}."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json=FILE")
    parser.add_argument(
        "--stat",
        default="median",
        choices=["median", "min", "mean"],
        help="which time to turn into GFLOP/s (default: median)",
    )
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        data = json.load(f)
    tables = markdown_tables(data.get("benchmarks", []), args.stat)
    if not tables:
        print("no whygpu benchmarks with timings in this file (was it run with --benchmark-disable?)", file=sys.stderr)
        return 1
    summary = machine_summary(data)
    print((summary + "\n\n" if summary else "") + tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
