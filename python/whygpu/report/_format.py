"""The report's building block (``Block``) and the number formats every section shares."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..bench.measure import format_binary_bytes, format_figure
from ..plots._common import ms_text, pct_text

# A report is a list of blocks, rendered twice (render.py), to Markdown and to HTML:
# ("h1", text), ("h2", text), ("h3", text: a subsection), ("p", text), ("fig", png name, caption),
# ("table", header, rows), ("ul", items), ("pre", text).
Block = tuple  # ("h1"|"h2"|"h3"|"p"|"fig"|"table"|"ul"|"pre"|"glossary", ...)

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
    return pct_text(x)


def _ms(s: float) -> str:
    return ms_text(s)


def _cache(b: int) -> str:
    """Cache sizes in binary units, as the vendors write them (32 KiB, 1 MiB)."""
    return format_binary_bytes(b)
