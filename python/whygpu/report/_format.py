"""The report's building block (``Block``) and the number formats every section shares."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ..bench.measure import format_binary_bytes, format_figure

# A report is a list of blocks, rendered twice (render.py), to Markdown and to HTML:
# ("h1", text), ("h2", text), ("p", text), ("fig", png name, caption),
# ("table", header, rows), ("ul", items), ("pre", text).
Block = tuple  # ("h1"|"h2"|"p"|"fig"|"table"|"ul"|"pre"|"glossary", ...)

# The results a report is made from: {kind: document} (see load.py).
Docs = dict[str, dict]

# What every section module exposes: ``section(docs, out, figs, num)`` returns its
# blocks (``[]`` when the results it tells about are absent), draws its figures
# into the folder ``out`` and appends their paths to ``figs``; ``num`` is its
# number on the page, for the sections that are numbered.
Section = Callable[[Docs, Path, list[str], int], list[Block]]


def _g(x: float) -> str:
    """A GFLOP/s or ratio figure with sensible digits."""
    return format_figure(x)


def _pct(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}%" if abs(x) >= 1 or x == 0 else f"{x:.2g}%"


def _ms(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _cache(b: int) -> str:
    """Cache sizes in binary units, as the vendors write them (32 KiB, 1 MiB)."""
    return format_binary_bytes(b)
