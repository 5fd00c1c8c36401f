"""The benchmarks section: pytest-benchmark's results, as a figure and a table."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ._format import Block, Docs, _g, _ms


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Median time per call, and GFLOP/s where a benchmark records its work (from pytest-benchmark's JSON)."""
    if "benchmark" not in docs:
        return []
    doc = docs["benchmark"]
    rows = []
    for b in doc["benchmarks"]:
        st = b.get("stats", {})
        extra = b.get("extra_info", {}) or {}
        params = b.get("params") or {}
        flops = extra.get("flops")
        med = st.get("median")
        if med is None:
            continue
        kernel = params.get("kernel") or extra.get("kernel")
        rows.append(
            {
                "name": b.get("name", "?"),
                "group": b.get("group") or "",
                "median_s": med,
                "rounds": st.get("rounds"),
                "kernel": kernel if isinstance(kernel, str) else None,
                "gflops": (flops / med / 1e9) if flops else extra.get("gflops"),
            }
        )
    if not rows:
        return []
    figs.append(plots.plot_benchmarks({"benchmarks": rows}, out / "benchmarks.png"))
    fastest = min(rows, key=lambda r: r["median_s"])
    slowest = max(rows, key=lambda r: r["median_s"])
    cap = (
        f"{len(rows)} pytest-benchmark results; median time per call from {fastest['name']} "
        f"({_ms(fastest['median_s'])}) to {slowest['name']} ({_ms(slowest['median_s'])})."
    )
    with_g = [r for r in rows if r["gflops"]]
    if with_g:
        top = max(with_g, key=lambda r: r["gflops"])
        low = min(with_g, key=lambda r: r["gflops"])
        cap += (
            f" The bars show GFLOP/s where a benchmark records its work: from {_g(low['gflops'])} "
            f"({low['name']}) to {_g(top['gflops'])} ({top['name']})."
        )
    table = [
        (r["name"], r["group"], _ms(r["median_s"]), str(r["rounds"] or ""), _g(r["gflops"]) if r["gflops"] else "")
        for r in rows
    ]
    return [
        ("h2", f"{num}. Benchmarks (pytest-benchmark)"),
        ("fig", "benchmarks.png", cap),
        ("table", ("benchmark", "group", "median", "rounds", "GFLOP/s"), table),
    ]
