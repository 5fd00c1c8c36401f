"""The scale-out figure: the multi-rank step measured here next to the model's terms, and the model's scaling
efficiency against the number of ranks for each system, strong and weak scaling, with the efficiencies
measured here and the published figures each marked beside their own kind of scaling."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

__all__ = ["plot_scaleout", "scaleout_figure", "plot_memory", "memory_figure"]

_DPI = 110
_STYLES = ["-", "--", ":"]
_ZERO = {"none": "ZeRO-0", "optimizer": "ZeRO-1", "gradients": "ZeRO-2", "parameters": "ZeRO-3"}
_PART_COLORS = {"params_bytes": "#1f77b4", "grads_bytes": "#d62728", "optimizer_bytes": "#2ca02c", "total_bytes": "k"}
# parameters and gradients are equal unsharded: thicker dash-dots and larger squares under the gradients' dashes
_PART_STYLE = {"params_bytes": ("-.", 3.2, "s", 10), "grads_bytes": ("--", 1.4, "o", 6),
               "optimizer_bytes": ("--", 1.4, "^", 7), "total_bytes": ("-", 2.0, "D", 6)}  # fmt: skip
_PARTS = {"params_bytes": "parameters", "grads_bytes": "gradients", "optimizer_bytes": "optimizer state",
          "total_bytes": "total"}  # fmt: skip
_SYSTEM_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _breakdown(ax, doc: dict) -> None:
    """Stacked bars, per multi-rank run: measured here (compute, exposed allreduce) and the model (the
    compute of one rank alone on its share, the exposed part of the bare Allreduce)."""
    runs = [r for r in doc["runs"] if r.get("breakdown")]
    # one tick per run, under its pair of bars (measured here: plain; the model: hatched, as the legend says)
    ticks, labels, x, top_all = [], [], 0.0, 0.0
    for r in runs:
        for what, src in (("measured here", r["breakdown"]["measured"]), ("model", r["breakdown"]["model"])):
            # sharded: the update of its shard, and the allgather with the exposed reduce-scatter
            comp, upd = 1e3 * src["compute_s"], 1e3 * src.get("update_s", 0.0)
            # (the allgather the step waited for: with prefetch only a part of it; older documents: all)
            exp = 1e3 * (src["exposed_s"] + src.get("exposed_allgather_s", src.get("allgather_s", 0.0)))
            hatch = None if what == "measured here" else "//"
            ax.bar(x, comp, color="#7f7f7f", hatch=hatch, edgecolor="black", linewidth=0.5)
            if "update_s" in src:
                ax.bar(x, upd, bottom=comp, color="#2ca02c", hatch=hatch, edgecolor="black", linewidth=0.5)
            ax.bar(x, exp, bottom=comp + upd, color="#ff7f0e", hatch=hatch, edgecolor="black", linewidth=0.5)
            x += 1
        labels.append(_run_tag(r))
        ticks.append(x - 1.5)
        top = 1e3 * max(r["breakdown"]["measured"]["step_s"], r["breakdown"]["model"]["step_s"])
        top_all = max(top_all, top)
        err = r.get("prediction_error")
        if err is not None:
            flag = " disturbed" if r.get("disturbed") else ""
            ax.annotate(f"{100 * err:+.0f}%{flag}", (x - 1.5, top), ha="center", va="bottom", fontsize=8)
        x += 0.5
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylim(0, 1.55 * top_all if top_all > 0 else 1.0)  # room for the legend above the bars
    ax.legend(
        handles=[
            Patch(facecolor="#7f7f7f", label="compute (a rank on its share)"),
            Patch(facecolor="#ff7f0e", label="exposed allreduce\n(sharded: reduce-scatter + allgather)"),
            *(
                [Patch(facecolor="#2ca02c", label="update of its shard")]
                if any("update_s" in r["breakdown"]["measured"] for r in runs)
                else []
            ),
            Patch(facecolor="white", edgecolor="black", label="plain: measured here"),
            Patch(facecolor="white", edgecolor="black", hatch="//", label="hatched: the model (terms measured apart)"),
        ],
        fontsize=7,
        loc="upper center",
    )
    ax.set_ylabel("ms per step")
    ax.set_title("one step: measured here and the model", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)


def _setting(r: dict, sep: str = " + ") -> str:
    """A sharded run's ZeRO stage, and prefetch where it was on ("ZeRO-1 + prefetch"); "" unsharded."""
    shard = r.get("shard") or "none"
    if shard == "none" or not r.get("data_parallel"):
        return ""
    return _ZERO.get(shard, shard) + (f"{sep}prefetch" if r.get("prefetch") else "")


def _run_tag(r: dict) -> str:
    """A multi-rank run in a few words, a tick label: "2 x 1", and below it its setting where sharded."""
    setting = _setting(r, sep="\n+ ")
    return f"{r['ranks']} x {r['threads']}" + (f"\n{setting}" if setting else "")


def _measured_points(ax, doc: dict) -> None:
    """The efficiencies measured here, on the strong-scaling panel: the runs the curves model (plain data
    parallelism), or where only sharded runs were measured, those; one label per P, listing each."""
    dp = [r for r in doc["runs"] if r["ranks"] > 1 and r.get("efficiency") is not None and r.get("data_parallel")]
    plain = [r for r in dp if (r.get("shard") or "none") == "none"]
    by_p: dict[int, list[dict]] = {}
    for r in plain or dp:
        by_p.setdefault(r["ranks"], []).append(r)
    for P, rs in by_p.items():
        for r in rs:
            ax.plot(P, r["efficiency"], "ko", markersize=8 if r is rs[0] else 6, zorder=5)
        each = ", ".join(f"{100 * r['efficiency']:.0f}%" + (f" ({_setting(r)})" if _setting(r) else "") for r in rs)
        ax.annotate(
            f"measured here: {P} x {rs[0]['threads']} thr, {each}",
            (P, max(r["efficiency"] for r in rs)),
            textcoords="offset points",
            xytext=(8, -4),
            fontsize=8,
        )


def plot_scaleout(doc: dict, path) -> str:
    """Draw :func:`scaleout_figure` into `path` (PNG); returns the path."""
    scaleout_figure(doc).savefig(path, dpi=_DPI, format="png")
    return str(path)


def scaleout_figure(doc: dict) -> Figure:
    """Three panels: the measured step next to the model's terms; then the model's efficiency = speed-up / P
    against P (strong scaling: fixed global batch; weak: fixed batch per rank), one colour per system, solid
    for the MLP measured here and dashed and dotted for the larger models; black points: measured here;
    a star: a published figure, on the panel of its own kind of scaling."""
    ex = doc["extrapolation"]
    fig = Figure(figsize=(14.0, 4.8), layout="constrained")
    axb, ax_s, ax_w = fig.subplots(1, 3, gridspec_kw={"width_ratios": [0.8, 1.2, 1.2]})
    ax_w.sharey(ax_s)
    _breakdown(axb, doc)
    systems = [s["name"] for s in ex["systems"]]
    models = [m["name"] for m in ex["models"]]
    for ax, scaling in ((ax_s, "strong"), (ax_w, "weak")):
        for c in ex["curves"]:
            if c["scaling"] != scaling:
                continue
            color = _SYSTEM_COLORS[systems.index(c["system"]) % len(_SYSTEM_COLORS)]
            k = models.index(c["model"])
            label = f"model: {c['system']}" if k == 0 else None
            ax.plot(
                c["ranks"],
                c["efficiency"],
                color=color,
                linestyle=_STYLES[k % len(_STYLES)],
                linewidth=1.8 if k == 0 else 1.2,
                marker="o" if len(c["ranks"]) <= 2 else None,  # this machine: a line of two points
                markersize=3,
                label=label,
            )
        if scaling == "strong":
            _measured_points(ax, doc)
        for pt in ex.get("public_points", []):
            if pt["scaling"] == scaling:
                ax.plot(pt["ranks"], pt["efficiency"], "k*", markersize=11, zorder=5)
                ax.annotate(
                    pt["label"],
                    (pt["ranks"], pt["efficiency"]),
                    textcoords="offset points",
                    xytext=(-8, 8),
                    ha="right",
                    fontsize=7.5,
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlim(1, max(ex["ranks"]))
        ax.set_ylim(0, 1.08)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{100 * y:.0f}%"))
        ax.set_xlabel("ranks P")
        ax.grid(True, alpha=0.3)
        what = f"fixed global batch {ex['batch']}, P <= batch" if scaling == "strong" else f"{ex['batch']} per rank"
        ax.set_title(f"model, {scaling} scaling ({what})", fontsize=10)
    ax_s.set_ylabel("scaling efficiency = speed-up / P")
    for k, m in enumerate(models):
        what = "the MLP measured here" if k == 0 else "CPU compute scaled by FLOPs"
        ax_s.plot([], [], color="black", linestyle=_STYLES[k % len(_STYLES)], label=f"{m} ({what})")
    handles, labels = ax_s.get_legend_handles_labels()
    ax_w.legend(handles, labels, fontsize=7, loc="lower left")
    fig.suptitle(
        "Data parallelism: T(P) = T_compute(B/P) + exposed allreduce; the curves are the model, "
        "the black points measured here",
        fontsize=11,
    )
    return fig


_PANELS = (
    ("none", "shard none: every rank all of it"),
    ("optimizer", "shard optimizer (ZeRO-1)"),
    ("gradients", "shard gradients (ZeRO-2)"),
    ("parameters", "shard parameters (ZeRO-3, on paper)"),
)


def plot_memory(doc: dict, path) -> str:
    """Draw :func:`memory_figure` into `path` (PNG); returns the path."""
    memory_figure(doc).savefig(path, dpi=_DPI, format="png")
    return str(path)


def memory_figure(doc: dict) -> Figure:
    """Four panels, one per shard setting: each rank's MB of parameters, gradients, optimizer state and their
    total against P, the formula as lines ("model") and the bytes measured here as points."""
    mem = doc["memory"]
    fig = Figure(figsize=(14.0, 4.2), layout="constrained")
    axes = fig.subplots(1, len(_PANELS), sharey=True)
    for ax, (stage, title) in zip(axes, _PANELS):
        line = mem["lines"][stage]
        for k, name in _PARTS.items():
            ax.plot(
                line["ranks"],
                [b / 1e6 for b in line[k]],
                color=_PART_COLORS[k],
                linewidth=_PART_STYLE[k][1],
                linestyle=_PART_STYLE[k][0],
                label=f"model: {name}",
            )
        for row in mem["rows"]:
            if row["shard"] != stage:
                continue
            for k, name in _PARTS.items():
                ax.plot(
                    [row["ranks"]],
                    [row["measured"][k] / 1e6],
                    marker=_PART_STYLE[k][2],
                    linestyle="None",
                    color=_PART_COLORS[k],
                    markersize=_PART_STYLE[k][3],
                    markeredgecolor="black",
                    label=f"measured here: {name}",
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("ranks P")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("MB per rank (1 MB = 1e6 bytes)")
    handles, labels = [], []
    for ax in axes:  # one legend entry per label, measured where it was
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[-1].legend(handles, labels, fontsize=7, loc="upper right")
    fig.suptitle(
        f"Training state per rank, {mem['n_params']:,} parameters, {mem['precision']} {mem['optimizer']}: "
        "lines the formula, points measured here (activations not counted)",
        fontsize=11,
    )
    return fig
