"""The closing table: the machine the results were measured on (from ``whygpu info``)."""

from __future__ import annotations

from pathlib import Path

from ._format import Block, Docs, _cache

TITLE = "The machine"


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The machine's CPU, caches, BLAS and CUDA, as a table (not numbered)."""
    if "info" not in docs:
        return []
    doc = docs["info"]
    cpu = doc["machine"]["cpu"]
    m = doc["machine"]
    rows = [
        ("CPU", cpu.get("model", "?")),
        ("cores usable", str(cpu.get("cores", "?"))),
        ("instruction set (used / best)", f"{cpu.get('arch', '?')} / {cpu.get('best_arch', '?')}"),
        ("caches", ", ".join(f"{k} {_cache(v)}" for k, v in cpu.get("caches", {}).items()) or "unknown"),
        ("OpenMP", "yes" if cpu.get("openmp") else "no"),
        ("BLAS", ", ".join(f"{b.get('internal_api')} {b.get('version')}" for b in m.get("blas", [])) or "unknown"),
        (
            "CUDA",
            (
                f"available: {m['cuda'].get('device', '')}"
                if m.get("cuda", {}).get("available")
                else f"not available ({m.get('cuda', {}).get('reason', '?')})"
            ),
        ),
        ("kernels", ", ".join(doc.get("kernels", []))),
    ]
    return [("h2", TITLE), ("table", ("", ""), rows)]
