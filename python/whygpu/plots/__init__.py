"""The figures of ``whygpu``'s report, drawn from the JSON documents.

Uses matplotlib's object-oriented API on an Agg canvas (``Figure`` +
``savefig``), never ``pyplot``: no window ever opens, no global backend is
switched, and it works on headless machines and in tests.  Every function
takes a document and a path, writes one PNG and returns the path.

One module per section's figures: this one the ladder's, training's and the
benchmarks'; :mod:`whygpu.plots.roofline`, :mod:`whygpu.plots.scaling`,
:mod:`whygpu.plots.scaleout` and :mod:`whygpu.plots.timeline` (a step's measured
and simulated timelines, one above the other) the others;
:mod:`whygpu.plots._common` what they share (palette, titles, labels placed
clear of the markers).  The roofline, scaling and timeline figures are
re-exported here.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..bench.measure import format_figure
from ._common import (
    _TENSOR_ROOF_STYLE,
    _cpu_title,
    _num,
    _save,
    _series,
    _style,
    kernel_color,
    ms_text,
    pct_text,
    place_clear,
)
from .roofline import plot_roofline, plot_roofline_gpu
from .scaling import plot_scaling
from .timeline import plot_timeline

__all__ = [
    "plot_ladder",
    "plot_ladder_steps",
    "plot_scaling",
    "plot_roofline",
    "plot_roofline_gpu",
    "plot_timeline",
    "plot_train",
    "plot_train_sweep",
    "plot_benchmarks",
    "kernel_color",
    "ladder_steps",
    "step_label",
]


def plot_ladder(doc: dict, path) -> str:
    """GFLOP/s against n, one line per kernel, log-log, with the FMA peaks."""
    fig = Figure(figsize=(8.4, 5.4), layout="constrained")
    ax = fig.subplots()
    series = _series(doc)
    order = [k for k in doc["params"]["kernels"] if k in series]
    # a figure left out of the conclusions (impossible, disturbed) is drawn hollow, off its line
    left = {(x["kernel"], x["n"]) for x in (doc.get("summary") or {}).get("left_out") or []}
    left |= {(r["kernel"], r["n"]) for r in doc.get("measurements", []) if r.get("disturbed")}
    for name in order:
        recs = series[name]
        good = [r for r in recs if (name, r["n"]) not in left]
        bad = [r for r in recs if (name, r["n"]) in left]
        prec = recs[0].get("precision")
        label = name + (f" ({prec})" if prec in ("tf32", "bf16") else "")  # the tensor cores' input precision
        look = _style(name)
        ax.plot([r["n"] for r in good], [r["gflops"] for r in good], label=label, **look)
        spread = [r for r in good if "gflops_low" in r]
        if spread:  # the min-max range of the interleaved samples
            ax.vlines(
                [r["n"] for r in spread],
                [r["gflops_low"] for r in spread],
                [r["gflops_high"] for r in spread],
                color=look["color"],
                linewidth=1.2,
                alpha=0.7,
            )
        if bad:
            ax.plot(
                [r["n"] for r in bad],
                [r["gflops"] for r in bad],
                linestyle="none",
                marker=look["marker"],
                markersize=9,
                markerfacecolor="none",
                markeredgecolor=look["color"],
                markeredgewidth=1.6,
                label=None if good else label,
            )
    if left:
        ax.plot(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="black",
            label="disturbed (left out)",
        )
    peak = dict(doc.get("peak") or {})
    if peak and doc["params"].get("dtype") == "float64":  # half the float32 lanes per register
        peak["gflops_1t"] /= 2
        peak["gflops_all"] /= 2
    labels: list[tuple[float, str, bool, dict]] = []  # (y, text, below first, text keywords): placed at the end
    if peak:
        # Two close peaks (within ~15%, e.g. 2 cores on one busy core) would print their labels over
        # each other: the lower one's label then goes below its line first, the higher one's above.
        multi = peak["threads"] > 1
        low = "gflops_1t" if peak["gflops_1t"] <= peak["gflops_all"] else "gflops_all"
        close = multi and max(peak["gflops_1t"], peak["gflops_all"]) < 1.15 * peak[low]
        roofs = [("gflops_1t", "1 core", "-.")] + ([("gflops_all", f"{peak['threads']} cores", ":")] if multi else [])
        for key, who, style in roofs:
            ax.axhline(peak[key], color="black", linewidth=1, linestyle=style, alpha=0.6)
            labels.append((peak[key], f"FMA peak, {who}: {format_figure(peak[key])} GFLOP/s", close and key == low, {}))
    if peak.get("gpu_gflops") and any(
        series_dev == "cuda" for series_dev in (r.get("device") for r in doc.get("measurements", []))
    ):
        ax.axhline(peak["gpu_gflops"], color="#2b6f2b", linewidth=1, linestyle="--", alpha=0.7)
        labels.append(
            (peak["gpu_gflops"], f"GPU float32 FMA peak: {format_figure(peak['gpu_gflops'])} GFLOP/s", False, {})
        )
    used = {r.get("precision") for r in doc.get("measurements", []) if r.get("device") == "cuda"}
    for prec, g in (peak.get("gpu_tensor_gflops") or {}).items():
        if prec in used:  # a tensor-core roof only where a rung in that precision was measured
            ax.axhline(g, color="#ae017e", linewidth=1, linestyle=_TENSOR_ROOF_STYLE.get(prec, ":"), alpha=0.7)
            labels.append((g, f"GPU {prec} tensor-core peak: {format_figure(g)} GFLOP/s", False, {"color": "#ae017e"}))
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
    ax.set_title(f"The kernel ladder: each rung adds one idea\n{_cpu_title(doc)}", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, title="kernel")
    if labels:  # room above the highest roof for its label (else it is pushed under its line)
        top = max(y for y, *_ in labels) * 1.3
        if ax.get_ylim()[1] < top:
            ax.set_ylim(top=top)
    # The roofs' labels last, on the final axes: each where it covers no measured point (nor another label).
    placed: list = []
    lo, hi = min(sizes), max(sizes)
    for y, text, below, kw in labels:
        above_ = [(hi, y * 1.08, {"ha": "right"}), (lo, y * 1.08, {"ha": "left"}), ((lo * hi) ** 0.5, y * 1.08, {})]
        under_ = [(x, y / 1.08, {**k, "va": "top"}) for x, _, k in above_]
        order = under_ + above_ if below else above_ + under_
        place_clear(ax, text, order, placed, fontsize=8, alpha=0.8, va="baseline", ha="center", **kw)
    return _save(fig, path)


def ladder_steps(doc: dict) -> list[dict]:
    """The rows of the steps figure: each rung with a speed-up over the rung before (the summary's
    ``speedup_prev``: the two rungs at the largest size both ran, ratio of their medians, from interleaved
    samples), and each rung left out as disturbed.  The figure, the report's table and its text all read
    these summary fields, so a rung's speed-up is one number wherever it is written."""
    return [r for r in doc["summary"]["rows"] if not r.get("reference") and ("speedup_prev" in r or r.get("disturbed"))]


def step_label(r: dict) -> str:
    """What the steps figure writes on a rung's bar: 'x38.3', '≈ x1.03 (noise)' where the spreads overlap,
    'disturbed' for a rung left out (the same digits as the report's table: ``format_figure``)."""
    if "speedup_prev" not in r:
        return "disturbed\n(left out)"
    x = format_figure(r["speedup_prev"])
    return f"x{x}" if r.get("speedup_clear", True) else f"≈ x{x} (noise)"


def plot_ladder_steps(doc: dict, path) -> str:
    """What each idea buys: one bar per rung, its speed-up over the rung before, both at one size (the
    largest both ran), with the min-max range their spreads allow.  The bar's height is the number written
    on it and the number in the report's table and text (:func:`ladder_steps`)."""
    rows = ladder_steps(doc)
    fig = Figure(figsize=(8.4, 4.6), layout="constrained")
    ax = fig.subplots()
    # a rung left out has no speed-up: an empty, hatched bar at x1 says it is there and not counted
    vals = [r.get("speedup_prev", 1.0) for r in rows]
    bars = ax.bar(
        range(len(rows)), vals, color=[kernel_color(r["kernel"]) for r in rows], edgecolor="black", linewidth=0.5
    )
    for i, (r, bar) in enumerate(zip(rows, bars)):
        if "speedup_prev" not in r:  # shown, but left out of the conclusions
            bar.set_facecolor("white")
            bar.set_edgecolor(kernel_color(r["kernel"]))
            bar.set_hatch("xx")
        top = max(vals[i], r.get("speedup_high", vals[i]))
        if "speedup_low" in r:  # the range the two rungs' min-max spreads allow
            ax.vlines(i, r["speedup_low"], r["speedup_high"], color="black", linewidth=1)
        ax.text(i, top * 1.1, step_label(r), ha="center", va="bottom", fontsize=8)
    if any("speedup_prev" not in r for r in rows):
        ax.legend(
            handles=[Patch(facecolor="white", edgecolor="black", hatch="xx", label="disturbed (left out)")],
            fontsize=8,
            loc="upper right",
        )
    ax.axhline(1.0, color="black", linewidth=0.8, alpha=0.6)  # below: slower than the rung before
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r['kernel']}\nvs {r['prev']}\nn={r['speedup_n']}" if "prev" in r else r["kernel"] for r in rows],
        fontsize=8,
    )
    ax.set_ylabel("speed-up over the rung before (x, log scale)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"x{_num(v)}"))
    lows = [r.get("speedup_low", v) for r, v in zip(rows, vals)] or [1.0]
    highs = [r.get("speedup_high", v) for r, v in zip(rows, vals)] or [1.0]
    ax.set_ylim(min(lows + [1.0]) / 3, max(highs + [1.0]) * 6)
    ax.set_title(
        "What each idea buys: each rung over the rung before, both at one size (≈ = within the noise)\n"
        + _cpu_title(doc),
        fontsize=10,
    )
    ax.grid(True, axis="y", alpha=0.3)
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
            f"{ms_text(r['step_s'])}\n{pct_text(100 * r['matmul_share'])} matmul",
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
