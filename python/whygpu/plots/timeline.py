"""The timeline figure: one step of one data-parallel run as two Gantt panels sharing the time axis, the
measured step (rank 0) above and the simulated one (the step simulator's prediction, made before the run)
below, each with a compute lane and a communication lane, coloured by what runs (forward, dW, dX, the
collectives, the waits, the update), with the measured and the predicted step marked on both, so that a
student sees where the prediction and the run part."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from ._common import _renderer, _save, ms_text

__all__ = ["KINDS", "plot_timeline", "timeline_figure"]

# kind -> (colour, hatch, the legend's words), in the legend's order: compute, the waits, then the collectives
KINDS: dict[str, tuple[str, str | None, str]] = {
    "forward_setup": ("#c6dbef", None, "forward set-up / end"),
    "forward": ("#1f77b4", None, "forward"),
    "forward_end": ("#c6dbef", None, "forward set-up / end"),
    "loss": ("#aec7e8", None, "loss (and its gradient)"),
    "zero_grad": ("#c49c94", None, "zero_grad"),
    "backward_setup": ("#c7e9c0", None, "backward set-up / end"),
    "backward": ("#2ca02c", None, "backward"),
    "backward_dw": ("#2ca02c", None, "backward dW (the layer's gradient)"),
    "backward_dx": ("#98df8a", None, "backward dX (the input's gradient)"),
    "post": ("#ffbb78", None, "posting collectives"),
    "backward_end": ("#c7e9c0", None, "backward set-up / end"),
    "optimizer_step": ("#c5b0d5", None, "optimizer step (around the update)"),
    "update": ("#9467bd", None, "update"),
    "exposed": ("#d62728", "//", "exposed: waiting for the gradients' collectives"),
    "prefetch_wait": ("#ff9896", "//", "waiting for a prefetched allgather"),
    "allgather_wait": ("#e377c2", "//", "waiting for the allgather"),
    "other": ("#c7c7c7", None, "other (zero_grad, bookkeeping)"),
    "allreduce": ("#ff7f0e", None, "allreduce"),
    "reduce_scatter": ("#8c564b", None, "reduce-scatter"),
    "allgather": ("#bcbd22", None, "allgather"),
    "sendrecv": ("#17becf", None, "send / receive"),
}
_UNKNOWN = ["#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173"]
_LANES = (("compute", "compute"), ("comm", "communication"))  # (lane, its label), top to bottom


def _style(kind: str, unknown: dict[str, str]) -> tuple[str, str | None, str]:
    if kind in KINDS:
        return KINDS[kind]
    if kind not in unknown:
        unknown[kind] = _UNKNOWN[len(unknown) % len(_UNKNOWN)]
    return unknown[kind], None, kind.replace("_", " ")


def _events(events: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Events as {name, lane, start_s, end_s, kind}: the JSON's dicts, or the simulator's ``Event``s
    (``start``/``end``); events with an end before their start, or times that are not numbers, left out."""
    out = []
    for e in events or ():
        start, end = _get(e, "start_s", _get(e, "start")), _get(e, "end_s", _get(e, "end"))
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            continue
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            continue
        lane = "compute" if str(_get(e, "lane", "compute")) == "compute" else "comm"
        out.append({"name": str(_get(e, "name", "")), "lane": lane, "start_s": start, "end_s": end,
                    "kind": str(_get(e, "kind", "other"))})  # fmt: skip
    return out


def _get(e: Any, key: str, default: Any = None) -> Any:
    return e.get(key, default) if isinstance(e, Mapping) else getattr(e, key, default)


def _step(events: list[dict[str, Any]]) -> float | None:
    """A timeline's step: where its compute lane ends (every lane, where the compute lane is empty)."""
    ends = [e["end_s"] for e in events if e["lane"] == "compute"] or [e["end_s"] for e in events]
    return max(ends) if ends else None


def _panel(
    ax, events: list[dict[str, Any]], title: str, unknown: dict[str, str], x_max: float, names: list
) -> set[str]:
    """One Gantt panel: a bar per event on its lane, the wide ones named (their labels appended to
    ``names``); returns the kinds drawn."""
    kinds = set()
    for y, (lane, _) in enumerate(reversed(_LANES)):
        on = [e for e in events if e["lane"] == lane]
        # the longest first: an event inside another (the update inside the optimizer's step) drawn over it
        for e in sorted(on, key=lambda e: e["start_s"] - e["end_s"]):
            color, hatch, _ = _style(e["kind"], unknown)
            width = 1e3 * (e["end_s"] - e["start_s"])
            ax.barh(y, width, left=1e3 * e["start_s"], height=0.6, color=color, hatch=hatch, edgecolor="black",
                    linewidth=0.4)  # fmt: skip
            kinds.add(e["kind"])
            if e["name"] and width > 0.02 * x_max:  # its name inside the bar, kept where it fits (_fit_names)
                t = ax.text(1e3 * e["start_s"] + width / 2, y, e["name"], ha="center", va="center", fontsize=6.5,
                            clip_on=True, in_layout=False,
                            bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 0.5})  # fmt: skip
                names.append((t, e["start_s"], e["end_s"]))
        if not on:
            ax.text(0.5 * x_max, y, f"(no {dict(_LANES)[lane]} events)", ha="center", va="center", fontsize=8,
                    color="grey")  # fmt: skip
    ax.set_yticks(range(len(_LANES)), [label for _, label in reversed(_LANES)], fontsize=8)
    ax.set_ylim(-0.6, len(_LANES) - 0.4)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    return kinds


def timeline_figure(
    timeline: Mapping[str, Sequence[Any] | None],
    *,
    label: str = "",
    measured_step_s: float | None = None,
    predicted_step_s: float | None = None,
) -> Figure:
    """Two panels sharing the time axis (ms from the step's start): ``timeline["measured"]`` (rank 0) above,
    ``timeline["simulated"]`` below, each a compute and a communication lane; the measured step (solid) and
    the predicted step (dashed) drawn across both.  The steps default to where each compute lane ends."""
    measured = _events(timeline.get("measured"))
    simulated = _events(timeline.get("simulated"))
    m_step = measured_step_s if measured_step_s is not None else _step(measured)
    p_step = predicted_step_s if predicted_step_s is not None else _step(simulated)
    ends = [e["end_s"] for e in measured + simulated] + [s for s in (m_step, p_step) if s is not None]
    x_max = 1e3 * max(ends) * 1.02 if ends and max(ends) > 0 else 1.0
    # (a prefetched allgather posted in the previous step may start before this one)
    x_min = min([0.0] + [1e3 * e["start_s"] for e in measured + simulated])
    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    unknown: dict[str, str] = {}
    names: list = []
    kinds = _panel(top, measured, "measured (rank 0): the run", unknown, x_max, names)
    kinds |= _panel(bottom, simulated, "simulated: the prediction, made before the run", unknown, x_max, names)
    marks = []
    steps: tuple[tuple[float | None, Literal["-", "--"], str], ...] = (
        (m_step, "-", "measured step"),
        (p_step, "--", "predicted step"),
    )
    for step, style, what in steps:
        if step is None:
            continue
        for ax in (top, bottom):
            ax.axvline(1e3 * step, color="black", linestyle=style, linewidth=1.4)
        marks.append(Line2D([], [], color="black", linestyle=style, label=f"{what}: {ms_text(step)}"))
    bottom.set_xlim(x_min, x_max)
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    bottom.set_xlabel("ms from the start of the step")
    order = list(KINDS) + sorted(k for k in kinds if k not in KINDS)
    handles, words = [], set()
    for k in order:
        color, hatch, word = _style(k, unknown)
        if k in kinds and word not in words:  # (set-up and end: one entry)
            words.add(word)
            handles.append(Patch(facecolor=color, hatch=hatch, edgecolor="black", label=word))
    fig.legend(handles=handles + marks, loc="outside right center", fontsize=7.5, frameon=False)
    head = f"{label}: one step" if label else "One step"
    fig.suptitle(f"{head}, measured (rank 0) above, simulated below", fontsize=11)
    _fit_names(fig, names)
    return fig


def _fit_names(fig: Figure, names: list) -> None:
    """Keep a bar's name only where it fits inside the bar, as laid out on the saved PNG."""
    if not names:
        return
    renderer = _renderer(fig)
    for t, start, end in names:
        ax = t.axes
        x0, x1 = (ax.transData.transform((1e3 * v, 0))[0] for v in (start, end))
        if t.get_window_extent(renderer).width > 0.95 * (x1 - x0):
            t.remove()


def plot_timeline(
    timeline: Mapping[str, Sequence[Any] | None],
    path,
    *,
    label: str = "",
    measured_step_s: float | None = None,
    predicted_step_s: float | None = None,
) -> str:
    """Draw :func:`timeline_figure` into ``path`` (PNG); returns the path."""
    fig = timeline_figure(timeline, label=label, measured_step_s=measured_step_s, predicted_step_s=predicted_step_s)
    return _save(fig, path)
