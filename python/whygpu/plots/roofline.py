"""The roofline figures: the CPU's measured roofs with every CPU rung placed on them, and the GPU's."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..bench.machine import isa_name
from ..predict.roofline_trust import impossible_point, pct_text, plain  # plain: '100' in a legend, never '1e+02'
from ._common import _TENSOR_ROOF_STYLE, _cpu_title, _save, kernel_color, place_clear

__all__ = ["plot_roofline", "plot_roofline_gpu"]

_TENSOR_TEXT = {"fontsize": 8, "color": "#ae017e"}

_ROOF_LABELS = {
    "interpreter": "Python interpreter",
    "scalar": "scalar add chain",
    "simd_baseline": "SIMD, baseline ISA, 1 core",
    "simd_1t": "SIMD FMA, 1 core",
    "simd_all": "SIMD FMA, all cores",
}


def _disturbed(p: dict) -> bool:
    """Still faster than its roof when measured again (or, in an older document, faster at all)."""
    return bool(p.get("disturbed")) or (impossible_point(p) and "remeasured" not in p)


def _roof_points(ax, pts: list, x_none: float, is_ref) -> None:
    """Each kernel at its intensity: measured (filled), predicted (hollow), a
    line between.  Kernels at the same intensity would hide each other, so a
    group is spread a little sideways (by a constant factor: the axis is log).
    A disturbed point (faster than its roof, twice) is a grey cross: shown,
    flagged, and left out of the conclusions."""
    groups: dict[float, list] = {}
    for p in pts:
        groups.setdefault(round(p["intensity"] or x_none, 3), []).append(p["kernel"])
    for p in pts:
        x = p["intensity"] or x_none  # None: all data in L1, no memory roof
        grp = groups[round(x, 3)]
        x *= 1.12 ** (grp.index(p["kernel"]) - (len(grp) - 1) / 2)
        c = kernel_color(p["kernel"])
        ref = is_ref(p["kernel"])
        bad = _disturbed(p)
        ax.plot(
            [x, x],
            [p["measured_gflops"], p["predicted_gflops"]],
            color=c,
            linewidth=1,
            alpha=0.7,
            linestyle=":" if bad else "-",
        )
        ax.plot(
            x,
            p["predicted_gflops"],
            marker="s" if ref else "o",
            markerfacecolor="white",
            markeredgecolor=c,
            markersize=8,
            linestyle="none",
        )
        if bad:
            ax.plot(
                x,
                p["measured_gflops"],
                marker="X",
                color="#888888",
                markeredgecolor=c,
                markersize=10,
                linestyle="none",
                label=f"{p['kernel']} (n={p['n']}): {plain(p['measured_gflops'])} of {plain(p['predicted_gflops'])}, "
                f"{pct_text(p['fraction_of_roof'])} -- disturbed (left out)",
            )
            continue
        ax.plot(
            x,
            p["measured_gflops"],
            marker="s" if ref else "o",
            color=c,
            markersize=8,
            linestyle="none",
            alpha=0.75 if ref else 1.0,
            label=f"{p['kernel']} (n={p['n']}{_isa_note(p)}): {plain(p['measured_gflops'])} of "
            f"{plain(p['predicted_gflops'])}",
        )
    ax.plot(
        [],
        [],
        marker="o",
        markerfacecolor="white",
        markeredgecolor="black",
        linestyle="none",
        label="hollow: roofline prediction",
    )
    if any(_disturbed(p) for p in pts):
        ax.plot([], [], marker="X", color="#888888", linestyle="none", label="disturbed (left out)")


def _isa_note(p: dict) -> str:
    """', AVX2 roof' for a NumPy point: the instruction set of the roof it is held against."""
    return f", {isa_name(p['roof_isa'])} roof" if p["kernel"].startswith("numpy") and p.get("roof_isa") else ""


def _flat_spots(y: float, x_lo: float, x_hi: float, below_first: bool) -> list[tuple[float, float, dict]]:
    """Where a compute roof's label may go: at the right end, the left end or the middle, above the
    line (or below it first, when a roof just above would print over it)."""
    xs = [(x_hi / 1.05, {"ha": "right"}), (x_lo * 1.1, {"ha": "left"}), ((x_lo * x_hi) ** 0.5, {"ha": "center"})]
    above = [(x, y * 1.06, {**k, "va": "bottom"}) for x, k in xs]
    below = [(x, y / 1.06, {**k, "va": "top"}) for x, k in xs]
    return below + above if below_first else above + below


def _slope_spots(y_at: float, gbps: float, top: float, x_lo: float, x_hi: float) -> list[tuple[float, float, dict]]:
    """Where a bandwidth roof's label may go: along its diagonal, first at `y_at`, then further
    up and down it (a measured point may sit on the first spot)."""
    out = []
    for f in (1, 1 / 3, 3, 1 / 9, 9, 1 / 27):
        y = y_at * f
        if y < top and x_lo < y / gbps * 1.1 < x_hi:
            out.append((y / gbps * 1.1, y, {"ha": "left", "va": "top"}))
    return out


def _roof_axes(ax, x_lo: float, x_hi: float, y_lo: float, y_hi: float, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    ax.set_xlabel("arithmetic intensity (flop per byte, from the memory level that limits most)")
    ax.set_ylabel("speed (GFLOP/s)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.25)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="measured GFLOP/s of roof")


def plot_roofline(doc: dict, path) -> str:
    """Log-log roofline: horizontal compute roofs, diagonal bandwidth roofs,
    each kernel at its arithmetic intensity, measured (filled) and predicted
    (hollow)."""
    roofs = doc["roofs"]
    pts = [p for p in doc["points"] if p.get("device", "cpu") == "cpu"]  # the GPU's: plot_roofline_gpu
    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    ax = fig.subplots()
    finite = [p["intensity"] for p in pts if p.get("intensity")]
    x_lo = min([0.05] + [x / 3 for x in finite])
    x_hi = max([200.0] + [x * 3 for x in finite])
    xs = [x_lo * (x_hi / x_lo) ** (i / 200) for i in range(201)]
    blas_lines = _blas_roofs(pts, roofs)
    top = max([*roofs["compute"].values(), *(g for g, _ in blas_lines)])  # the bandwidth slopes rise to it
    prev = None
    labels: list[tuple[str, list, dict]] = []  # (text, spots, keywords): placed once the axes are final
    for name, g in sorted(roofs["compute"].items(), key=lambda kv: -kv[1]):
        if name == "simd_all" and roofs.get("threads", 1) == 1:
            continue
        ax.axhline(g, color="black", linewidth=1, alpha=0.55, linestyle="-")
        label = _ROOF_LABELS.get(name, name)
        if name == "simd_all":
            label = f"SIMD FMA, {roofs.get('threads')} cores"
        below = prev is not None and prev / g < 1.3  # two roofs close together: the lower label under its line
        labels.append((f"{label}: {plain(g)} GFLOP/s", _flat_spots(g, x_lo, x_hi, below), {"fontsize": 7.5}))
        prev = g
    for g, text in blas_lines:
        ax.axhline(g, color=kernel_color("numpy"), linewidth=1, alpha=0.7, linestyle="--")
        labels.append((text, _flat_spots(g, x_lo, x_hi, True), {"fontsize": 7.5, "color": kernel_color("numpy")}))
    styles = {"L2": "-", "L3": "--", "DRAM": ":"}
    for i, (level, gbps) in enumerate(roofs["bandwidth"]["1"].items()):
        ys = [min(top, gbps * x) for x in xs]
        ax.plot(xs, ys, color="#444444", linewidth=1, linestyle=styles.get(level, "-."), alpha=0.7)
        spots = _slope_spots(top / (4 ** (i + 1)), gbps, top, x_lo, x_hi)  # staggered down the diagonals
        if spots:
            labels.append((f"{level} {gbps:.0f} GB/s (1 core)", spots, {"fontsize": 7.5, "color": "#444444"}))
    _roof_points(ax, pts, x_hi / 2, lambda k: k.startswith("numpy"))
    ys_all = [p["measured_gflops"] for p in pts] + list(roofs["compute"].values())
    _roof_axes(
        ax,
        x_lo,
        x_hi,
        min(ys_all) / 3,
        top * 2.5,
        "Roofline of this machine, measured, with every kernel on it\n" + _cpu_title(doc),
    )
    _place(ax, labels)
    return _save(fig, path)


def _blas_roofs(pts: list, roofs: dict) -> list[tuple[float, str]]:
    """NumPy's own roofs, where they are not whygpu's: the FMA roof of the ISA its BLAS kernel runs
    (the AVX2 roof for OpenBLAS's Haswell kernel on an AVX-512 CPU), one line per distinct roof."""
    drawn = list(roofs["compute"].values())
    out: dict[float, str] = {}
    for p in pts:
        if not p["kernel"].startswith("numpy") or not p.get("roof_isa"):
            continue
        g = float(p["compute_gflops"])
        if any(abs(g - d) <= 0.01 * d for d in drawn + list(out)):
            continue  # the same line as a roof already drawn
        f = p.get("blas") or {}
        isa = isa_name(p["roof_isa"])
        what = f"{f['kernel']} kernel ({isa})" if f.get("kernel") and p.get("roof_is_kernel_isa") else f"BLAS ({isa})"
        cores = "1 core" if p["compute_roof"] == "simd_1t" else f"{p.get('threads', '')} cores".strip()
        out[g] = f"NumPy's {what}, {cores}: {plain(g)} GFLOP/s"
    return sorted(out.items(), key=lambda kv: -kv[0])


def _place(ax, labels: list[tuple[str, list, dict]]) -> None:
    """Each roof's label at its first spot that covers no measured point and no other label."""
    placed: list = []
    for text, spots, kw in labels:
        place_clear(ax, text, spots, placed, **kw)


def plot_roofline_gpu(doc: dict, path) -> str:
    """The GPU's roofline: its measured FMA peak and tensor-core peaks (bf16,
    TF32), its L2 and device-memory bandwidths, and each CUDA rung (and
    cuBLAS) at its intensity, measured (filled) and predicted (hollow)."""
    gpu = doc["gpu_roofs"]
    pts = [p for p in doc["points"] if p.get("device") == "cuda"]
    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    ax = fig.subplots()
    finite = [p["intensity"] for p in pts if p.get("intensity")]
    x_lo = min([0.1] + [x / 3 for x in finite])
    x_hi = max([2000.0] + [x * 3 for x in finite])
    xs = [x_lo * (x_hi / x_lo) ** (i / 200) for i in range(201)]
    fma = gpu["fma_gflops"]
    tensor = gpu.get("tensor_gflops") or {}
    top = max([fma, *tensor.values()])  # the highest roof: the bandwidth slopes rise to it
    ax.axhline(fma, color="black", linewidth=1, alpha=0.6)
    labels: list[tuple[str, list, dict]] = [
        (f"float32 FMA peak: {plain(fma)} GFLOP/s", _flat_spots(fma, x_lo, x_hi, False), {"fontsize": 8})
    ]
    # The tensor cores: a second compute roof (per precision), measured by the mma.sync probe.
    for prec, g in tensor.items():
        ax.axhline(g, color="#ae017e", linewidth=1.2, alpha=0.8, linestyle=_TENSOR_ROOF_STYLE.get(prec, ":"))
        spots = _flat_spots(g, x_lo, x_hi, False)
        labels.append((f"{prec} tensor cores (mma.sync): {plain(g)} GFLOP/s", spots[1:] + spots[:1], _TENSOR_TEXT))
    for i, (level, gbps) in enumerate(gpu["bandwidth"].items()):
        ax.plot(
            xs,
            [min(top, gbps * x) for x in xs],
            color="#444444",
            linewidth=1,
            linestyle={"L2": "-", "DRAM": ":"}.get(level, "--"),
            alpha=0.7,
        )
        spots = _slope_spots(top / (4 ** (i + 1)), gbps, top, x_lo, x_hi)
        if spots:
            name = "device memory" if level == "DRAM" else level
            labels.append((f"{name} {plain(gbps)} GB/s", spots, {"fontsize": 8, "color": "#444444"}))
    _roof_points(ax, pts, 1.0, lambda k: k == "cublas")
    ys = [p["measured_gflops"] for p in pts] + [fma, *tensor.values()]
    _roof_axes(
        ax,
        x_lo,
        x_hi,
        min(ys) / 3,
        top * 2.5,
        f"Roofline of the GPU, measured, with every CUDA rung on it\n{gpu['device']}, {gpu['multiprocessors']} SMs",
    )
    _place(ax, labels)
    return _save(fig, path)
