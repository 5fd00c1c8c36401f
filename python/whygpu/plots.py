"""The figures of ``whygpu``'s report, drawn from the JSON documents.

Uses matplotlib's object-oriented API on an Agg canvas (``Figure`` +
``savefig``), never ``pyplot``: no window ever opens, no global backend is
switched, and it works on headless machines and in tests.  Every function
takes a document and a path, writes one PNG and returns the path.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .bench.scaling import amdahl

__all__ = [
    "plot_ladder",
    "plot_ladder_steps",
    "plot_scaling",
    "plot_roofline",
    "plot_roofline_gpu",
    "plot_train",
    "plot_train_sweep",
    "plot_benchmarks",
    "kernel_color",
]

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


def plot_ladder(doc: dict, path) -> str:
    """GFLOP/s against n, one line per kernel, log-log, with the FMA peaks."""
    fig = Figure(figsize=(8.4, 5.4), layout="constrained")
    ax = fig.subplots()
    series = _series(doc)
    order = [k for k in doc["params"]["kernels"] if k in series]
    for name in order:
        recs = series[name]
        prec = recs[0].get("precision")
        label = name + (f" ({prec})" if prec in ("tf32", "bf16") else "")  # the tensor cores' input precision
        ax.plot([r["n"] for r in recs], [r["gflops"] for r in recs], label=label, **_style(name))
    peak = dict(doc.get("peak") or {})
    if peak and doc["params"].get("dtype") == "float64":  # half the float32 lanes per register
        peak["gflops_1t"] /= 2
        peak["gflops_all"] /= 2
    if peak:
        # Two close peaks (within ~15%, e.g. 2 cores on one busy core) would print their labels over
        # each other: the lower one's label then goes below its line, the higher one's above.
        multi = peak["threads"] > 1
        low = "gflops_1t" if peak["gflops_1t"] <= peak["gflops_all"] else "gflops_all"
        close = multi and max(peak["gflops_1t"], peak["gflops_all"]) < 1.15 * peak[low]
        roofs = [("gflops_1t", "1 core", "-.")] + ([("gflops_all", f"{peak['threads']} cores", ":")] if multi else [])
        for key, who, style in roofs:
            under = close and key == low
            ax.axhline(peak[key], color="black", linewidth=1, linestyle=style, alpha=0.6)
            ax.text(
                max(doc["params"]["sizes"]),
                peak[key] / 1.08 if under else peak[key] * 1.08,
                f"FMA peak, {who}: {peak[key]:.0f} GFLOP/s",
                fontsize=8,
                alpha=0.8,
                ha="right",
                va="top" if under else "baseline",
            )
    if peak.get("gpu_gflops") and any(
        series_dev == "cuda" for series_dev in (r.get("device") for r in doc.get("measurements", []))
    ):
        ax.axhline(peak["gpu_gflops"], color="#2b6f2b", linewidth=1, linestyle="--", alpha=0.7)
        ax.text(
            max(doc["params"]["sizes"]),
            peak["gpu_gflops"] * 1.08,
            f"GPU float32 FMA peak: {_num(peak['gpu_gflops'])} GFLOP/s",
            fontsize=8,
            alpha=0.8,
            ha="right",
        )
    used = {r.get("precision") for r in doc.get("measurements", []) if r.get("device") == "cuda"}
    for prec, g in (peak.get("gpu_tensor_gflops") or {}).items():
        if prec in used:  # a tensor-core roof only where a rung in that precision was measured
            ax.axhline(g, color="#ae017e", linewidth=1, linestyle=_TENSOR_ROOF_STYLE.get(prec, ":"), alpha=0.7)
            ax.text(
                min(doc["params"]["sizes"]),
                g * 1.08,
                f"GPU {prec} tensor-core peak: {_num(g)} GFLOP/s",
                fontsize=8,
                alpha=0.8,
                ha="left",
                color="#ae017e",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = doc["params"]["sizes"]
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_xlabel("matrix size n  (C = A @ B, all n x n, " + doc["params"].get("dtype", "float32") + ")")
    ax.set_ylabel("speed (GFLOP/s, log scale)")
    ax.set_title(f"The kernel ladder: each rung one idea faster\n{_cpu_title(doc)}", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, title="kernel")
    return _save(fig, path)


def plot_ladder_steps(doc: dict, path) -> str:
    """GFLOP/s of each rung at its largest measured size, with the speed-up
    over the previous rung written on each bar."""
    rows = doc["summary"]["rows"]
    fig = Figure(figsize=(8.4, 4.6), layout="constrained")
    ax = fig.subplots()
    names = [r["kernel"] for r in rows]
    vals = [r["gflops"] for r in rows]
    bars = ax.bar(
        range(len(rows)), vals, color=[kernel_color(x) for x in names], hatch=None, edgecolor="black", linewidth=0.5
    )
    for i, (r, bar) in enumerate(zip(rows, bars)):
        if r.get("reference"):
            bar.set_hatch("//")
            bar.set_alpha(0.6)
        label = f"{_num(r['gflops'])}"
        if "speedup_prev" in r:
            label += f"\nx{_num(r['speedup_prev'])}"
        ax.text(i, r["gflops"] * 1.1, label, ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['kernel']}\nn={r['n']}" for r in rows], fontsize=8)
    ax.set_ylabel("speed (GFLOP/s, log scale)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_ylim(min(vals) / 3, max(vals) * 6)
    ax.set_title(
        "Each rung at its largest measured size (x = speed-up over the rung before)\n" + _cpu_title(doc), fontsize=10
    )
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_scaling(doc: dict, path) -> str:
    """Speed-up against threads for each series, the ideal line, and the
    fitted Amdahl curves (serial fraction in the legend)."""
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    ax = fig.subplots()
    pmax = max(max(s["threads"]) for s in doc["series"]) if doc["series"] else 1
    # Amdahl's curves go on past the measured thread counts: what the fitted
    # serial fraction implies for a machine with more cores.
    xmax = max(16, 4 * pmax)
    xs = [1 + i * (xmax - 1) / 200 for i in range(201)]
    ax.plot(xs, xs, color="black", linewidth=1, linestyle="-", alpha=0.5, label="ideal (speed-up = threads)")
    ax.axvspan(pmax, xmax, color="#f2f2f2", zorder=0)
    ax.text(pmax * 1.05, 1.1, f"beyond {pmax} threads: Amdahl's law extrapolated", fontsize=8, color="#555555")
    for s in doc["series"]:
        color = kernel_color(s["name"]) if s["kind"] != "peak" else "black"
        f = s["serial_fraction"]
        label = f"{s['label']}: serial fraction {100 * f:.2g}%" + (
            f", x{amdahl(xmax, f):.3g} on {xmax}" if len(s["threads"]) > 1 else ""
        )
        ax.plot(
            s["threads"],
            s["speedup"],
            marker="o" if s["kind"] != "peak" else "^",
            linestyle="none",
            color=color,
            markersize=7,
            label=label,
        )
        if len(s["threads"]) > 1:
            ax.plot(
                xs, [amdahl(x, s["serial_fraction"]) for x in xs], color=color, linestyle="--", linewidth=1.2, alpha=0.8
            )
    cores = doc.get("machine", {}).get("cpu", {}).get("cores")
    if cores and cores < pmax:
        ax.axvline(cores, color="grey", linestyle=":", linewidth=1)
        ax.text(cores, 1, f" {cores} cores", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("threads")
    ax.set_ylabel("speed-up over 1 thread (x)")
    ax.set_xticks(sorted({t for s in doc["series"] for t in s["threads"]} | {xmax // 2, xmax}))
    ax.set_xlim(0.5, xmax + 0.5)
    ax.set_ylim(0, xmax * 1.05)
    ax.set_title("Parallel speed-up and Amdahl's law (dashed: fitted)\n" + _cpu_title(doc), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


_ROOF_LABELS = {
    "interpreter": "Python interpreter",
    "scalar": "scalar add chain",
    "simd_baseline": "SIMD, baseline ISA, 1 core",
    "simd_1t": "SIMD FMA, 1 core",
    "simd_all": "SIMD FMA, all cores",
}


def _roof_points(ax, pts: list, x_none: float, is_ref) -> None:
    """Each kernel at its intensity: measured (filled), predicted (hollow), a
    line between.  Kernels at the same intensity would hide each other, so a
    group is spread a little sideways (by a constant factor: the axis is log)."""
    groups: dict[float, list] = {}
    for p in pts:
        groups.setdefault(round(p["intensity"] or x_none, 3), []).append(p["kernel"])
    for p in pts:
        x = p["intensity"] or x_none  # None: all data in L1, no memory roof
        grp = groups[round(x, 3)]
        x *= 1.12 ** (grp.index(p["kernel"]) - (len(grp) - 1) / 2)
        c = kernel_color(p["kernel"])
        ref = is_ref(p["kernel"])
        ax.plot([x, x], [p["measured_gflops"], p["predicted_gflops"]], color=c, linewidth=1, alpha=0.7)
        ax.plot(
            x,
            p["predicted_gflops"],
            marker="s" if ref else "o",
            markerfacecolor="white",
            markeredgecolor=c,
            markersize=8,
            linestyle="none",
        )
        ax.plot(
            x,
            p["measured_gflops"],
            marker="s" if ref else "o",
            color=c,
            markersize=8,
            linestyle="none",
            alpha=0.75 if ref else 1.0,
            label=f"{p['kernel']} (n={p['n']}): {_num(p['measured_gflops'])} of {_num(p['predicted_gflops'])}",
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


def _roof_axes(ax, x_lo: float, x_hi: float, y_lo: float, y_hi: float, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
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
    top = max(roofs["compute"].values())
    prev = None
    for name, g in sorted(roofs["compute"].items(), key=lambda kv: -kv[1]):
        if name == "simd_all" and roofs.get("threads", 1) == 1:
            continue
        ax.axhline(g, color="black", linewidth=1, alpha=0.55, linestyle="-")
        label = _ROOF_LABELS.get(name, name)
        if name == "simd_all":
            label = f"SIMD FMA, {roofs.get('threads')} cores"
        below = prev is not None and prev / g < 1.3  # two roofs close together: the lower label under its line
        ax.text(
            x_hi / 1.05,
            g / 1.06 if below else g * 1.06,
            f"{label}: {_num(g)} GFLOP/s",
            ha="right",
            va="top" if below else "bottom",
            fontsize=7.5,
        )
        prev = g
    styles = {"L2": "-", "L3": "--", "DRAM": ":"}
    for i, (level, gbps) in enumerate(roofs["bandwidth"]["1"].items()):
        ys = [min(top, gbps * x) for x in xs]
        ax.plot(xs, ys, color="#444444", linewidth=1, linestyle=styles.get(level, "-."), alpha=0.7)
        y_at = top / (4 ** (i + 1))  # stagger the labels down the diagonals
        x_at = y_at / gbps
        if x_lo < x_at < x_hi:
            ax.text(
                x_at * 1.1,
                y_at,
                f"{level} {gbps:.0f} GB/s (1 core)",
                fontsize=7.5,
                color="#444444",
                ha="left",
                va="top",
            )
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
    return _save(fig, path)


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
    ax.text(x_hi / 1.05, fma * 1.06, f"float32 FMA peak: {_num(fma)} GFLOP/s", ha="right", va="bottom", fontsize=8)
    # The tensor cores: a second compute roof (per precision), measured by the mma.sync probe.
    for prec, g in tensor.items():
        ax.axhline(g, color="#ae017e", linewidth=1.2, alpha=0.8, linestyle=_TENSOR_ROOF_STYLE.get(prec, ":"))
        ax.text(
            x_lo * 1.1,
            g * 1.06,
            f"{prec} tensor cores (mma.sync): {_num(g)} GFLOP/s",
            ha="left",
            va="bottom",
            fontsize=8,
            color="#ae017e",
        )
    for i, (level, gbps) in enumerate(gpu["bandwidth"].items()):
        ax.plot(
            xs,
            [min(top, gbps * x) for x in xs],
            color="#444444",
            linewidth=1,
            linestyle={"L2": "-", "DRAM": ":"}.get(level, "--"),
            alpha=0.7,
        )
        y_at = top / (4 ** (i + 1))
        if x_lo < y_at / gbps < x_hi:
            ax.text(
                y_at / gbps * 1.1,
                y_at,
                f"{'device memory' if level == 'DRAM' else level} {_num(gbps)} GB/s",
                fontsize=8,
                color="#444444",
                ha="left",
                va="top",
            )
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
    return _save(fig, path)


def plot_train_sweep(doc: dict, path) -> str:
    """ms per training step against batch size: the CPU back ends at all cores,
    the GPU with the batch copied every step and with the data resident,
    each with and without the step captured as one CUDA graph, and the
    resident graph step with bf16 tensor-core matmuls (mixed precision)."""
    sw = doc["sweep"]
    fig = Figure(figsize=(8.8, 5.2), layout="constrained")
    ax = fig.subplots()
    styles: dict[str, dict[str, Any]] = {  # label -> Axes.plot keywords
        "cuda, copied": dict(color="#2b6f2b", linestyle="--", marker="s"),
        "cuda, resident": dict(color="#2b6f2b", linestyle="-", marker="s"),
        "cuda, copied, graph": dict(color="#7a3fb0", linestyle="--", marker="D"),
        "cuda, resident, graph": dict(color="#7a3fb0", linestyle="-", marker="D"),
        "cuda, resident, graph, bf16": dict(color="#d95f02", linestyle="-", marker="^"),
    }
    for ser in sw["series"]:
        pts = ser["points"]
        if not pts:
            continue
        st = styles.get(ser["label"], dict(color=kernel_color(ser["backend"]), linestyle="-", marker="o"))
        lbl = ser["label"] + (f" ({ser['threads']} threads)" if ser["device"] == "cpu" else "")
        ax.plot([p["batch"] for p in pts], [1e3 * p["step_s"] for p in pts], label=lbl, linewidth=2, **st)
    summ = sw["summary"]
    for key, what in (("resident", "GPU (resident) overtakes"), ("copied", "GPU (copied) overtakes")):
        b = summ.get(f"overtakes_{key}")
        if b:
            ax.axvline(b, color="#2b6f2b", alpha=0.3, linestyle=":" if key == "copied" else "-")
            ax.text(
                b * 1.05,
                0.98 if key == "resident" else 0.86,
                f"{what}\nat batch {b}",
                transform=ax.get_xaxis_transform(),
                fontsize=8,
                va="top",
                color="#2b6f2b",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sw["batches"])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    ax.set_xlabel("batch size")
    ax.set_ylabel("time per training step (ms, log scale)")
    ax.set_title(
        f"Where the GPU wins: one training step of the MLP {sw['layers']} by batch size\n" + _cpu_title(doc),
        fontsize=11,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_train(doc: dict, path) -> str:
    """Stacked bars per backend: milliseconds per step in matmul vs the rest."""
    runs = [r for r in doc["runs"] if not r.get("skipped")]
    fig = Figure(figsize=(8.4, 4.8), layout="constrained")
    ax = fig.subplots()
    names = [r["backend"] for r in runs]
    mm = [1e3 * r["step_s"] * r["matmul_share"] for r in runs]
    other = [1e3 * r["step_s"] * (1 - r["matmul_share"]) for r in runs]
    x = range(len(runs))
    ax.bar(x, mm, color=[kernel_color(nm) for nm in names], edgecolor="black", linewidth=0.5)
    ax.bar(x, other, bottom=mm, color="#dddddd", edgecolor="black", linewidth=0.5, hatch="..")
    handles = [
        Patch(facecolor="#777777", edgecolor="black", label="matrix multiplication (coloured)"),
        Patch(
            facecolor="#dddddd",
            edgecolor="black",
            hatch="..",
            label="everything else (bias, activations, loss, update, Python)",
        ),
    ]
    for i, r in enumerate(runs):
        total = 1e3 * r["step_s"]
        ax.text(
            i,
            total * 1.02,
            f"{total:.3g} ms\n{100 * r['matmul_share']:.0f}% matmul",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(x))
    ax.set_xticklabels(names)
    ax.set_ylabel("time per training step (ms)")
    ax.set_ylim(0, max([1e3 * r["step_s"] for r in runs] + [1e-3]) * 1.3)
    p = doc.get("params", {})
    ax.set_title(
        f"Where a training step's time goes: MLP {p.get('layers', '')}, batch {p.get('batch', '?')}\n"
        + _cpu_title(doc),
        fontsize=11,
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_benchmarks(doc: dict, path) -> str:
    """pytest-benchmark results: GFLOP/s per benchmark when they record it
    (extra_info "gflops" or "flops"), else the median time per call; log scale."""
    rows = doc["benchmarks"]
    use_gflops = sum(1 for r in rows if r.get("gflops")) >= max(1, len(rows) // 2)
    if use_gflops:
        rows = [r for r in rows if r.get("gflops")]
    fig = Figure(figsize=(8.4, max(2.5, 0.26 * len(rows) + 1.2)), layout="constrained")
    ax = fig.subplots()
    names = [r["name"] for r in rows]
    vals = [r["gflops"] if use_gflops else r["median_s"] for r in rows]
    ax.barh(range(len(rows)), vals, color=[kernel_color(r.get("kernel") or r["name"]) for r in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "speed (GFLOP/s, from the median time; log scale)" if use_gflops else "median time per call (s, log scale)"
    )
    ax.set_title(f"pytest-benchmark results ({len(rows)} benchmarks)", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)
