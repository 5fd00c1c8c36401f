"""The closing table: the machine the results were measured on (from ``whygpu info``)."""

from __future__ import annotations

from pathlib import Path

from .._idle_threads import describe as describe_idle
from ..bench.machine import blas_summary
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
        ("BLAS", blas_text(m)),
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
    # how long each library's idle threads held a core after a call (older documents do not say)
    rows += [("idle threads", line) for line in describe_idle(m.get("idle_threads") or {})]
    return [("h2", TITLE), ("table", ("", ""), rows)]


def blas_text(m: dict) -> str:
    """The BLAS libraries loaded, NumPy's with its kernel and that kernel's instruction set against the
    CPU's best (and why when it is narrower), as detected when the document was written."""
    libs = m.get("blas") or []
    facts = m.get("blas_facts")
    text = ", ".join(f"{b.get('internal_api')} {b.get('version')}" for b in libs) or "unknown"
    if facts and facts.get("library") != "unknown":
        text += f" (NumPy's: {blas_summary(facts)})"
    return text
