"""The scale-out figure: modelled scaling efficiency against the number of ranks for each interconnect,
strong and weak scaling, with the efficiencies measured on this machine marked."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["plot_scaleout"]

_DPI = 110
_STYLES = ["-", "--", ":"]
_LINK_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def plot_scaleout(doc: dict, path) -> str:
    """Two panels (strong scaling: fixed global batch; weak scaling: fixed batch per rank): efficiency =
    speed-up / P against P = 1..1024, one colour per interconnect, solid for the MLP measured here and dashed
    dashed and dotted for the larger models; the measured runs as black points."""
    ex = doc["extrapolation"]
    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    links = [x["name"] for x in ex["interconnects"]]
    models = [m["name"] for m in ex["models"]]
    measured = [r for r in doc["runs"] if r["ranks"] > 1 and r.get("efficiency") is not None]
    for ax, scaling in zip(axes, ("strong", "weak")):
        for c in ex["curves"]:
            if c["scaling"] != scaling:
                continue
            color = _LINK_COLORS[links.index(c["interconnect"]) % len(_LINK_COLORS)]
            k = models.index(c["model"])
            solid = k == 0
            pub = next(x for x in ex["interconnects"] if x["name"] == c["interconnect"])["public"]
            label = f"{c['interconnect']}{' (public figure)' if pub else ' (fitted here)'}" if solid else None
            ax.plot(
                c["ranks"],
                c["efficiency"],
                color=color,
                linestyle=_STYLES[k % len(_STYLES)],
                linewidth=1.8 if solid else 1.2,
                label=label,
            )
        if scaling == "strong":
            for r in measured:
                ax.plot(r["ranks"], r["efficiency"], "ko", markersize=8, zorder=5)
                ax.annotate(
                    f"measured here: {r['ranks']} x {r['threads']} thr, {100 * r['efficiency']:.0f}%",
                    (r["ranks"], r["efficiency"]),
                    textcoords="offset points",
                    xytext=(8, -4),
                    fontsize=8,
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlim(1, max(ex["ranks"]))
        ax.set_ylim(0, 1.08)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{100 * y:.0f}%"))
        ax.set_xlabel("ranks P")
        ax.grid(True, alpha=0.3)
        what = "fixed global batch" if scaling == "strong" else "fixed batch per rank"
        ax.set_title(f"{scaling} scaling ({what} {ex['batch']})", fontsize=10)
    axes[0].set_ylabel("scaling efficiency = speed-up / P")
    for k, m in enumerate(models):
        what = "measured here" if k == 0 else "compute scaled by FLOPs"
        axes[0].plot([], [], color="black", linestyle=_STYLES[k % len(_STYLES)], label=f"{m} ({what})")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=7.5, loc="lower left")  # the strong panel's lower left has the point
    fig.suptitle("Data parallelism: the cost model T(P) = T_compute/P + ring allreduce - overlap", fontsize=11)
    fig.savefig(path, dpi=_DPI, format="png")
    return str(path)
