"""The training section: where the time of a training step goes, on each back end."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ._format import Block, Docs, _g, _ms, _pct


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Time per step and its share in matmul, by back end (from ``whygpu train``)."""
    if "train" not in docs:
        return []
    doc = docs["train"]
    runs = [r for r in doc["runs"] if not r.get("skipped")]
    blocks: list[Block] = [("h2", f"{num}. Training: where the time goes")]
    if not runs:
        blocks.append(("p", "No backend was fast enough to train within the budget."))
        return blocks
    figs.append(plots.plot_train(doc, out / "train.png"))
    p = doc["params"]
    fast = min(runs, key=lambda r: r["step_s"])
    slow = max(runs, key=lambda r: r["step_s"])
    cap = (
        f"The same MLP ({p.get('layers')}, batch {p.get('batch')}, {p.get('steps')} steps of SGD) trained on each "
        f"backend; bars split each step into matrix multiplication (coloured) and everything else (grey). "
        f"On {fast['backend']} a step takes {_ms(fast['step_s'])} ({_g(fast['samples_per_s'])} samples/s), "
        f"{_pct(100 * fast['matmul_share'])} of it in matmul"
    )
    if slow is not fast:
        cap += f"; on {slow['backend']} {_ms(slow['step_s'])}, {_pct(100 * slow['matmul_share'])} in matmul"
        # "slower" only when the steps' min-max spreads do not overlap (older documents have no spread)
        if slow.get("step_s_low", slow["step_s"]) > fast.get("step_s_high", fast["step_s"]):
            cap += f" -- x{_g(slow['step_s'] / fast['step_s'])} slower for the same arithmetic"
        else:
            cap += " -- their step times overlap: no back end is measurably faster here"
    cap += (
        ". Matrix multiplication dominates a training step, so faster matmul hardware means faster training -- "
        "until the remaining work dominates (Amdahl's law again)."
    )
    blocks.append(("fig", "train.png", cap))
    rows = [
        (
            r["backend"],
            _ms(r["step_s"]) + (f" ({_ms(r['step_s_low'])}-{_ms(r['step_s_high'])})" if "step_s_low" in r else ""),
            _g(r["samples_per_s"]),
            _pct(100 * r["matmul_share"]),
            f"{100 * r['accuracy']:.1f}%" if r.get("accuracy") is not None else "n/a",
            f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "n/a",
        )
        for r in runs
    ]
    blocks.append(
        ("table", ("backend", "time/step (min-max)", "samples/s", "in matmul", "accuracy", "final loss"), rows)
    )
    skipped = [r for r in doc["runs"] if r.get("skipped")]
    if skipped:
        blocks.append(
            (
                "p",
                "Not trained (over budget; --all includes them): "
                + "; ".join(f"{r['backend']} ({r['skipped']})" for r in skipped)
                + ".",
            )
        )
    return blocks
