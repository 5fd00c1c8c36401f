"""What every figure module shares: the palette (one colour per kernel, the same in every figure), line
styles, the CPU line of a title, number labels, labels placed clear of the markers, and saving a Figure
as PNG.  Figures use matplotlib's
object-oriented API (``Figure`` on an Agg canvas), never ``pyplot``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

__all__ = ["kernel_color", "place_clear", "ms_text", "pct_text"]

_DPI = 110
_COLORS = {
    "python": "#7f7f7f",
    "cython": "#8c564b",
    "naive": "#d62728",
    "reordered": "#ff7f0e",
    "blocked": "#bcbd22",
    "packed": "#2ca02c",
    "openmp": "#1f77b4",
    "numpy": "#9467bd",
    # NumPy on all threads is another series of the same figure: its own colour, not numpy-1t's purple
    "numpy-all": "#e377c2",
    # the GPU rungs: one sequential palette, light (naive) to dark (warp tiling); cuBLAS in black
    "cuda_naive": "#fdae61",
    "cuda_coalesced": "#f46d43",
    "cuda_smem": "#d53e4f",
    "cuda_1d_tiling": "#9e0142",
    "cuda_2d_tiling": "#5e4fa2",
    "cuda_vectorized": "#3288bd",
    "cuda_warptile": "#00441b",
    "cuda": "#00441b",
    "cublas": "#000000",
    # the tensor-core rungs: magenta to purple, apart from the float32 palette
    "cuda_mma": "#e7298a",
    "cuda_mma_bf16": "#ae017e",
    "cuda_wgmma": "#49006a",
}
# Line styles of the tensor-core roofs, by precision.
_TENSOR_ROOF_STYLE = {"bf16": "-", "tf32": "--"}
_EXTRA = ["#17becf", "#393b79", "#637939", "#843c39", "#7b4173"]


def kernel_color(name: str, _seen: dict[str, str] = {}) -> str:  # noqa: B006 - a stable palette
    base = name.split("-")[0].split("[")[0]
    if base == "numpy" and name.startswith("numpy-") and not name.startswith("numpy-1t"):
        return _COLORS["numpy-all"]  # numpy-2t, numpy-8t, ...: apart from numpy-1t
    if base in _COLORS:
        return _COLORS[base]
    if name not in _seen:
        _seen[name] = _EXTRA[len(_seen) % len(_EXTRA)]
    return _seen[name]


_MARKERS = {"python": "o", "cython": "D", "naive": "o", "reordered": "v", "blocked": "^", "packed": "o", "openmp": "o"}


def _style(name: str) -> dict:
    ref = name.startswith("numpy") or name.startswith("cuda") or name.startswith("gpu")
    dashed = name.startswith("numpy-") and not name.startswith("numpy-1t")
    return {
        "color": kernel_color(name),
        "linestyle": ":" if dashed else ("--" if ref else "-"),
        "marker": "s" if ref else _MARKERS.get(name, "o"),
        "linewidth": 1.6 if ref else 2.0,
        "markersize": 6 if name == "cython" else 5,
    }


def _marker_boxes(ax, pad_px: float = 2.0) -> list[Bbox]:
    """Display-space boxes of every marker drawn on `ax` (lines with a marker and data)."""
    boxes = []
    px = ax.figure.dpi / 72.0
    for ln in ax.lines:
        if not isinstance(ln, Line2D) or str(ln.get_marker()).strip().lower() in ("", "none") or not ln.get_visible():
            continue
        r = ln.get_markersize() * px / 2 + pad_px
        xy = np.asarray(ln.get_xydata(), dtype=float).reshape(-1, 2)
        for x, y in ax.transData.transform(xy) if len(xy) else []:
            boxes.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    return boxes


def _renderer(fig):
    """The figure laid out on an Agg canvas (a bare ``Figure`` has none until it is saved)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def place_clear(ax, text: str, candidates: Sequence[tuple[float, float, dict]], avoid: list | None = None, **kw):
    """Write `text` at the first of `candidates` ((x, y, Axes.text keywords), in order of preference)
    where it overlaps no marker, no box in `avoid` (labels already placed, extended in place) and stays
    inside the axes; the first candidate when none is clear.  A label over a marker hides a measured
    figure, and a student reads the label or the point, not both.

    Call it after the axes' scales, limits and legend are final: it lays the figure out once
    (``canvas.draw``) so that positions on screen are those of the saved PNG."""
    fig = ax.figure
    renderer = _renderer(fig)
    blocked = _marker_boxes(ax) + list(avoid or [])
    inside = ax.get_window_extent(renderer)
    first = None
    for x, y, extra in candidates:
        t = ax.text(x, y, text, **{**kw, **extra})
        bb = t.get_window_extent(renderer)
        fits = inside.x0 <= bb.x0 and bb.x1 <= inside.x1 and inside.y0 <= bb.y0 and bb.y1 <= inside.y1
        if fits and not any(bb.overlaps(b) for b in blocked):
            if first is not None:
                first.remove()
            if avoid is not None:
                avoid.append(bb)
            return t
        if first is None:
            first = t
        else:
            t.remove()
    assert first is not None, "place_clear needs at least one candidate"
    if avoid is not None:
        avoid.append(first.get_window_extent(renderer))
    return first


def _cpu_title(doc: dict) -> str:
    cpu = doc.get("machine", {}).get("cpu", {})
    return f"{cpu.get('model', 'this CPU')}, {cpu.get('cores', '?')} cores, {cpu.get('arch', '?')}"


def _save(fig: Figure, path) -> str:
    fig.savefig(path, dpi=_DPI, format="png")
    return str(path)


# The report's number formats, here so that a figure's label and the report's text write one value alike
# (report/_format.py re-exports them): one number for one thing, not 47.6 on a bar and 47.55 in the text.
def ms_text(s: float) -> str:
    """Seconds as '1.23 s', '4.56 ms' or '789 us' (3 significant digits)."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def pct_text(x: float | None) -> str:
    """A percentage (x in %): '43%', '0.52%', 'n/a'."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}%" if abs(x) >= 1 or x == 0 else f"{x:.2g}%"


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}"


def _series(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in doc.get("measurements", []):
        out.setdefault(rec["kernel"], []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: r["n"])
    return out
