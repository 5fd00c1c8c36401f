"""The scaling figure: speed-up against threads for each series, the ideal line, and Amdahl's law where it
can be fitted."""

from __future__ import annotations

from matplotlib.figure import Figure

from ._plot_common import _cpu_title, _save, kernel_color
from .bench.scaling import amdahl

__all__ = ["plot_scaling"]


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
