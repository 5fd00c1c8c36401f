"""What every figure module shares: the palette (one colour per kernel, the same in every figure), line
styles, the CPU line of a title, number labels, and saving a Figure as PNG.  Figures use matplotlib's
object-oriented API (``Figure`` on an Agg canvas), never ``pyplot``."""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["kernel_color"]

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
_EXTRA = ["#17becf", "#e377c2", "#393b79", "#637939", "#843c39"]


def kernel_color(name: str, _seen: dict[str, str] = {}) -> str:  # noqa: B006 - a stable palette
    base = name.split("-")[0].split("[")[0]
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


def _cpu_title(doc: dict) -> str:
    cpu = doc.get("machine", {}).get("cpu", {})
    return f"{cpu.get('model', 'this CPU')}, {cpu.get('cores', '?')} cores, {cpu.get('arch', '?')}"


def _save(fig: Figure, path) -> str:
    fig.savefig(path, dpi=_DPI, format="png")
    return str(path)


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
