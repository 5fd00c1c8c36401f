"""The scaling figure: speed-up against threads for each series (median and min-max range), the ideal
line, Amdahl's law where it could be fitted, and disturbed points marked and left out."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..bench.measure import format_figure
from ..bench.scaling import amdahl, percent, plain_text, with_checks
from ._common import _cpu_title, _save, kernel_color

__all__ = ["plot_scaling", "extrapolated_cores", "any_fit", "measured_title"]


def extrapolated_cores(doc: dict) -> int:
    """The core count Amdahl's law is extrapolated to, in the legend and in the report's text alike: 16, or
    four times the most threads measured."""
    series = doc.get("series") or []
    pmax = max((max(s["threads"]) for s in series), default=1)
    return max(16, 4 * pmax)


def any_fit(doc: dict) -> bool:
    """Whether Amdahl's law was fitted to any series: else the figure and the section show the speed-ups only."""
    return any(s.get("fitted") for s in doc.get("series") or [])


def measured_title(doc: dict) -> str:
    """The title of what a machine that allows no fit does show: 'Threads on 2 cores: the speed-up measured'."""
    cores = doc.get("cores") or doc.get("machine", {}).get("cpu", {}).get("cores") or "?"
    return f"Threads on {cores} core{'' if cores == 1 else 's'}: the speed-up measured"


def _legend(s: dict, extrapolated: int) -> str:
    """Plain numbers: 'serial fraction 12%, x5.3 on 16 (extrapolated)', or without a fit the speed-up measured."""
    if s.get("fitted"):
        f = s["serial_fraction"]
        x = format_figure(amdahl(extrapolated, f))
        return f"{s['label']}: serial fraction {percent(f)}, x{x} on {extrapolated} (extrapolated)"
    if s.get("serial_disturbed"):
        return f"{s['label']}: fit impossible ({percent(s.get('serial_fraction_fit'))}), left out"
    # no fit: the speed-up measured, in the words (and digits) of the report's text
    return f"{s['label']}: {plain_text(s) or 'no undisturbed thread count above 1'}"


def plot_scaling(doc: dict, path) -> str:
    """Speed-up against threads for each series with its min-max range, the ideal
    line, the fitted Amdahl curves (serial fraction in the legend) where at least
    three thread counts allow one, and disturbed points as red crosses.

    The x axis stops at the largest thread count measured: the cores, unless
    threads sharing cores were asked for (then oversubscription is the point).
    No speed-up can pass the cores, so the ideal line is min(threads, cores);
    what Amdahl's law implies for more cores is said in the legend, not drawn."""
    doc = with_checks(doc)
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    ax = fig.subplots()
    series = doc["series"]
    pmax = max(max(s["threads"]) for s in series) if series else 1
    cores = doc.get("cores") or doc.get("machine", {}).get("cpu", {}).get("cores") or pmax
    xmax = max(2, pmax)
    extrapolated = extrapolated_cores(doc)  # the legend's "on N cores": as the report's text
    xs = sorted({1 + i * (xmax - 1) / 200 for i in range(201)} | {float(min(cores, xmax))})
    ideal = "ideal (speed-up = threads)" if xmax <= cores else f"ideal (speed-up = threads, at most the {cores} cores)"
    ax.plot(xs, [min(x, cores) for x in xs], color="black", linewidth=1, linestyle="-", alpha=0.5, label=ideal)
    bad_label = "disturbed (left out)"
    for s in series:
        color = kernel_color(s["name"]) if s["kind"] != "peak" else "black"
        dist = s.get("disturbed") or [False] * len(s["threads"])
        lo = s.get("speedup_low") or s["speedup"]
        hi = s.get("speedup_high") or s["speedup"]
        ok = [i for i, d in enumerate(dist) if not d]
        ax.errorbar(
            [s["threads"][i] for i in ok],
            [s["speedup"][i] for i in ok],
            yerr=[[s["speedup"][i] - lo[i] for i in ok], [hi[i] - s["speedup"][i] for i in ok]],
            marker="o" if s["kind"] != "peak" else "^",
            linestyle="none",
            color=color,
            markersize=7,
            capsize=3,
            label=_legend(s, extrapolated),
        )
        bad = [i for i, d in enumerate(dist) if d]
        if bad:
            ax.plot(
                [s["threads"][i] for i in bad],
                [s["speedup"][i] for i in bad],
                marker="x",
                linestyle="none",
                color="red",
                markersize=10,
                markeredgewidth=2,
                label=bad_label,
            )
            bad_label = "_nolegend_"  # one legend entry for all of them
        if s.get("fitted"):
            f = s["serial_fraction"]
            ax.plot(xs, [amdahl(x, f) for x in xs], color=color, linestyle="--", linewidth=1.2, alpha=0.8)
    if cores < pmax:
        ax.axvline(cores, color="grey", linestyle=":", linewidth=1)
        ax.text(cores, 0.55, f" {cores} cores", color="grey", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel("threads")
    ax.set_ylabel("speed-up over 1 thread (x), median and min-max of the rounds")
    ax.set_xticks(sorted({t for s in series for t in s["threads"]}))
    ax.set_xlim(0.5, xmax + 0.5)
    # Room for the medians (a flagged x50 included) and the ranges; the ranges of points that are results
    # never pass the cores (check_series leaves impossible rounds out).
    tops = [v for s in series for v in s["speedup"]] + [
        hi for s in series for hi, d in zip(s.get("speedup_high") or [], s.get("disturbed") or []) if not d
    ]
    ax.set_ylim(0, max([min(xmax, cores) * 1.15] + [1.1 * v for v in tops]))
    # the lesson this machine can show: a fitted serial fraction where one was fitted, else the speed-ups
    title = "Parallel speed-up and Amdahl's law (dashed: fitted)" if any_fit(doc) else measured_title(doc)
    ax.set_title(title + "\n" + _cpu_title(doc), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
