"""The figures of splitting the model (``whygpu scaleout --strategy``, document ``whygpu.split/1``): the
pipeline's bubble against the number of micro-batches m -- measured, simulated from terms measured apart, and
the formula (p - 1)/(m + p - 1) with its tolerance band -- beside its step measured and simulated; and each
strategy's bytes sent per step and memory per rank."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullLocator

from ._common import _cpu_title, _save

__all__ = [
    "plot_bubble",
    "bubble_figure",
    "plot_strategies",
    "strategies_figure",
    "pipeline_runs",
    "run_label",
    "fullest_rank",
]

SCHEDULE_COLORS = {"gpipe": "#1f77b4", "1f1b": "#d62728"}
_EXTRA = ["#2ca02c", "#9467bd", "#ff7f0e"]
# the two schedules' points side by side at one m, not on top of each other (log axis: a factor)
_NUDGE = {"gpipe": 0.95, "1f1b": 1.05}
MEMORY_PARTS = (
    ("params_bytes", "parameters", "#1f77b4"),
    ("grads_bytes", "gradients", "#d62728"),
    ("optimizer_bytes", "optimizer state", "#2ca02c"),
    ("stash_peak_bytes", "peak activation stash", "#ff7f0e"),
)
MIB = float(2**20)


def _color(schedule: str, seen: dict[str, str]) -> str:
    if schedule in SCHEDULE_COLORS:
        return SCHEDULE_COLORS[schedule]
    return seen.setdefault(schedule, _EXTRA[len(seen) % len(_EXTRA)])


def pipeline_runs(doc: dict) -> dict[str, list[dict]]:
    """The pipeline's runs by schedule, each list in increasing m."""
    out: dict[str, list[dict]] = {}
    for r in doc.get("runs") or []:
        if r.get("strategy") == "pp":
            out.setdefault(str(r.get("schedule", "?")), []).append(r)
    for runs in out.values():
        runs.sort(key=lambda r: r["micro_batches"])
    return out


def run_label(r: dict) -> str:
    """A run as the tables and the bars name it: 'dp', 'tp', 'pp 1f1b m=4'."""
    if r.get("strategy") != "pp":
        return str(r.get("strategy", "?"))
    return f"pp {r.get('schedule', '?')} m={r.get('micro_batches', '?')}"


def _ms_axis(ax, ms: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ms))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlim(min(ms) / 1.35, max(ms) * 1.35)
    ax.set_xlabel("micro-batches per step, m")
    ax.grid(True, alpha=0.3)


def bubble_figure(doc: dict) -> Figure:
    """Left: the bubble against m (measured: filled; simulated: open, dashed; the formula: black, with its
    tolerance band).  Right: the step against m, measured and simulated."""
    by = pipeline_runs(doc)
    p = int(doc.get("ranks") or 2)
    tol = (doc.get("checks") or {}).get("bubble_tol")
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    ms = sorted({r["micro_batches"] for runs in by.values() for r in runs}) or [1]
    grid = [ms[0] * (ms[-1] / ms[0]) ** (k / 100) for k in range(101)] if ms[-1] > ms[0] else ms
    formula = [(p - 1) / (m + p - 1) for m in grid]
    left.plot(grid, formula, color="black", linewidth=1.8, label=f"formula (p - 1)/(m + p - 1), p = {p}")
    if tol is not None:
        left.fill_between(
            grid,
            [f - tol for f in formula],
            [f + tol for f in formula],
            color="black",
            alpha=0.08,
            linewidth=0,
            label=f"formula ± {tol:g} (the check's tolerance)",
        )
    seen: dict[str, str] = {}
    for name, runs in by.items():
        c = _color(name, seen)
        x = [r["micro_batches"] * _NUDGE.get(name, 1.0) for r in runs]
        pairs = (("bubble", "predicted_bubble", 1.0, left, "simulated from terms measured apart"),
                 ("step_s", "predicted_step_s", 1e3, right, "simulated"))  # fmt: skip
        for key, predicted, scale, ax, sim_label in pairs:
            meas = [(xi, scale * r[key]) for xi, r in zip(x, runs) if r.get(key) is not None]
            sim = [(xi, scale * r[predicted]) for xi, r in zip(x, runs) if r.get(predicted) is not None]
            if meas:
                ax.plot(*zip(*meas), color=c, marker="o", markersize=7, linewidth=1.6, label=f"{name}: measured")
            if sim:  # open markers, dashed: the same colour, predicted before the run
                ax.plot(*zip(*sim), color=c, marker="o", markersize=7, markerfacecolor="white", linestyle="--",
                        linewidth=1.2, label=f"{name}: {sim_label}")  # fmt: skip
    _ms_axis(left, ms)
    _ms_axis(right, ms)
    left.set_ylim(0, max([0.6] + [r.get("bubble") or 0 for rs in by.values() for r in rs]) * 1.05)
    left.set_ylabel("bubble: idle share of the ranks' time")
    left.set_title("the pipeline's bubble", fontsize=10)
    left.legend(fontsize=7, loc="upper right")
    right.set_ylim(bottom=0)
    right.set_ylabel("ms per step (the slowest rank's)")
    right.set_title("the pipeline's step", fontsize=10)
    if right.lines:
        right.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Pipeline parallelism on {p} ranks, measured on {_cpu_title(doc)}", fontsize=11)
    return fig


def plot_bubble(doc: dict, path) -> str:
    """Write :func:`bubble_figure` as a PNG; returns the path."""
    return _save(bubble_figure(doc), path)


def fullest_rank(r: dict) -> dict:
    """The rank of run r that held the most bytes (parameters, gradients, optimizer state, stash)."""
    ranks = r.get("ranks") or [r]
    return max(ranks, key=lambda e: sum(e.get(k) or 0 for k, _, _ in MEMORY_PARTS))


def strategies_figure(doc: dict) -> Figure:
    """Left: each run's bytes sent per step.  Right: the fullest rank's memory, stacked by part."""
    runs = [r for r in doc.get("runs") or [] if r.get("strategy")]
    labels = [run_label(r) for r in runs]
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    y = list(range(len(runs)))
    sent = [(r.get("bytes_per_step") or 0) / MIB for r in runs]
    left.barh(y, sent, color=["#7f7f7f" if r["strategy"] != "pp" else "#9467bd" for r in runs])
    left.set_yticks(y, labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("MiB sent per step")
    left.set_title("what each strategy sends", fontsize=10)
    left.grid(True, axis="x", alpha=0.3)
    bottom = [0.0] * len(runs)
    for key, _, color in MEMORY_PARTS:
        part = [(fullest_rank(r).get(key) or 0) / MIB for r in runs]
        right.barh(y, part, left=bottom, color=color, edgecolor="black", linewidth=0.4)
        bottom = [b + v for b, v in zip(bottom, part)]
    right.set_xlabel("MiB on the fullest rank")
    right.set_title("what each rank holds", fontsize=10)
    right.grid(True, axis="x", alpha=0.3)
    right.set_xlim(0, 1.02 * max(bottom + [1e-9]))
    handles = [Patch(facecolor=c, label=n) for _, n, c in MEMORY_PARTS]
    right.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    model = "-".join(map(str, doc.get("layers") or [])) or "?"
    fig.suptitle(
        f"MLP {model}, global batch {doc.get('batch', '?')}, {doc.get('ranks', '?')} ranks; "
        f"measured on {_cpu_title(doc)}",
        fontsize=11,
    )
    return fig


def plot_strategies(doc: dict, path) -> str:
    """Write :func:`strategies_figure` as a PNG; returns the path."""
    return _save(strategies_figure(doc), path)
