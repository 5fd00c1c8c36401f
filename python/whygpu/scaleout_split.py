"""``whygpu scaleout --strategy dp,zero1,tp,pp``: one model and one global batch trained by P ranks in each of the
four ways, measured side by side (:mod:`whygpu.bench.split_worker`), and the pipeline's bubble and step checked
against the formula and the step simulator, each predicted from terms measured apart before the run.

The document (``scaleout_split.json``, schema ``whygpu.split/1``) holds the machine, the settings, every run
(step time, bytes sent per step, each rank's parameters, gradients, optimizer state and, for the pipeline, its
peak stash), the step-by-rank grids of both schedules, the checks (the measured bubble within
``BUBBLE_TOL`` of (p - 1)/(m + p - 1); the simulated step within ``STEP_TOL`` of the measured one) and, where
:mod:`whygpu.predict.split_layouts` is there, the layouts of a large MLP on H100 nodes it extrapolates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench.split_worker import STRATEGIES

__all__ = [
    "BUBBLE_TOL", "STEP_TOL", "DEFAULT_LAYERS", "run_split", "predict_runs", "checks", "print_split", "schedule_grids",
]  # fmt: skip

SCHEMA = "whygpu.split/1"
BUBBLE_TOL = 0.05  # absolute: the measured bubble against (p - 1)/(m + p - 1)
STEP_TOL = 0.15  # relative: the simulated step against the measured one
# Stages that balance at p = 2: stage 0 (768 x 1024 and 1024 x 1024) and stage 1 (1024 x 1024 and 1024 x 512)
# cost the same, since the first stage computes no dX for its first layer (2 x 768 = 3 x 512).
DEFAULT_LAYERS = (768, 1024, 1024, 1024, 512)


def check_strategies(text: str | Sequence[str]) -> list[str]:
    """The strategies asked for, checked: dp, zero1, tp, pp (comma-separated), in that order."""
    asked = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in asked if s not in STRATEGIES]
    if unknown or not asked:
        raise ValueError(f"--strategy takes some of {', '.join(STRATEGIES)} (comma-separated), got {text!r}")
    return [s for s in STRATEGIES if s in asked]


def schedule_grids(p: int, m: int) -> dict[str, str]:
    """The step-by-rank grid of each schedule for p stages and m micro-batches (unit-time steps)."""
    from .schedules import grid, schedule

    return {name: grid(schedule(name, p, m)) for name in ("gpipe", "1f1b")}


def predict_runs(doc: dict) -> None:
    """Each pipeline run's step and bubble simulated from its terms measured apart (each stage's forward and
    backward on one micro-batch, one message), added to it as ``predicted_step_s`` and ``predicted_bubble``:
    :func:`whygpu.predict.simulate_pipeline` takes nothing else, so the run it is checked on cannot leak in."""
    from .predict.pipeline import simulate_pipeline
    from .schedules import schedule

    for r in doc["runs"]:
        if r["strategy"] != "pp":
            continue
        t = r["terms"]
        sim = simulate_pipeline(
            schedule(r["schedule"], doc["ranks"], r["micro_batches"]), t["forward_s"], t["backward_s"], t["message_s"]
        )
        r["predicted_step_s"], r["predicted_bubble"] = sim.step_s, sim.bubble


def stage_imbalance(terms: dict) -> tuple[float, int, int]:
    """How much longer the slowest stage's forward + backward took than the fastest's, measured apart, and
    which ranks those were: (fraction, slowest, fastest).  The formula assumes 0."""
    totals = [f + b for f, b in zip(terms["forward_s"], terms["backward_s"])]
    slow, fast = max(range(len(totals)), key=totals.__getitem__), min(range(len(totals)), key=totals.__getitem__)
    return totals[slow] / totals[fast] - 1.0, slow, fast


def checks(doc: dict) -> dict[str, Any]:
    """Each pipeline run judged: its bubble against the formula (and against the bubble simulated from the
    stages' measured times, which the formula takes as equal), its simulated step against the measured; a miss
    of the formula names the unequal stages where they were measured unequal by more than 5%."""
    rows = []
    for r in doc["runs"]:
        if r["strategy"] != "pp":
            continue
        step_err = r["predicted_step_s"] / r["step_s"] - 1.0
        imb, slow, fast = stage_imbalance(r["terms"])
        ok = abs(r["bubble"] - r["bubble_formula"]) <= BUBBLE_TOL
        why = None
        if not ok:
            why = (
                f"unequal stages: rank {slow}'s forward + backward took {imb:.0%} longer than rank {fast}'s, measured "
                f"apart (the formula takes them equal); simulated with them, the bubble is {r['predicted_bubble']:.3f}"
                if imb > 0.05
                else "not explained by the stages' measured times (within 5% of each other): waits the simulator "
                "does not see"
            )
        rows.append(
            {
                "schedule": r["schedule"],
                "micro_batches": r["micro_batches"],
                "bubble": r["bubble"],
                "bubble_formula": r["bubble_formula"],
                "bubble_ok": ok,
                "bubble_simulated": r["predicted_bubble"],
                "bubble_simulated_ok": abs(r["bubble"] - r["predicted_bubble"]) <= BUBBLE_TOL,
                "stage_imbalance": imb,
                "why": why,
                "step_error": step_err,
                "step_ok": abs(step_err) <= STEP_TOL,
                "stash_ok": [e["stash_peak"] for e in r["ranks"]] == r["stash_peak_formula"],
            }
        )
    return {"bubble_tol": BUBBLE_TOL, "step_tol": STEP_TOL, "pipeline": rows}


def run_split(
    ranks: int = 2,
    layers: Sequence[int] = DEFAULT_LAYERS,
    batch: int = 512,
    steps: int = 8,
    strategies: Sequence[str] = STRATEGIES,
    micro: Sequence[int] = (1, 2, 4, 8),
    schedules: Sequence[str] = ("gpipe", "1f1b"),
    threads: int = 1,
    timeout: float = 600.0,
    log: Callable[[str], None] = print,
) -> dict:
    """Launch the worker on ``ranks`` ranks and return the ``whygpu.split/1`` document."""
    from .bench.machine import machine_info
    from .bench.scaleout import ScaleoutError, _env, mpi_status, run_job

    st = mpi_status()
    if not st["available"]:
        raise ScaleoutError(f"the strategies need mpi4py and mpiexec: {st['reason']}")
    if ranks < 2:
        raise ValueError("splitting the model needs at least 2 ranks")
    log(f"measuring {', '.join(strategies)} on {ranks} ranks x {threads} thread(s): MLP {'-'.join(map(str, layers))}, "
        f"global batch {batch}, {steps} steps each")  # fmt: skip
    args = ["--layers", ",".join(map(str, layers)), "--batch", str(batch), "--steps", str(steps)]
    args += ["--strategies", ",".join(strategies), "--micro", ",".join(map(str, micro))]
    args += ["--schedules", ",".join(schedules), "--threads", str(threads)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whygpu-split-") as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [st["mpiexec"], "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "whygpu.bench.split_worker"]
        cmd += [*args, "--json", str(out)]
        try:
            status, text = run_job(cmd, _env(threads), timeout)
        except subprocess.TimeoutExpired:
            raise ScaleoutError(f"mpiexec -n {ranks} (the strategies) timed out after {timeout:g} s") from None
        if status != 0 or not out.exists():
            tail = " | ".join(text.strip().splitlines()[-8:])
            raise ScaleoutError(f"mpiexec -n {ranks} (the strategies) failed (status {status}): {tail or 'no output'}")
        doc = json.loads(out.read_text())
    doc["schema"] = SCHEMA
    doc["machine"] = machine_info()
    doc["measure_s"] = time.perf_counter() - t0
    doc["grids"] = {f"p={ranks}, m={m}": schedule_grids(ranks, m) for m in sorted(set(micro)) if m <= 8}
    if "pp" in strategies:
        predict_runs(doc)
    doc["checks"] = checks(doc) if "pp" in strategies else None
    doc["layouts"] = _layouts()
    return doc


def _layouts() -> dict | None:
    """The H100 layouts of a large MLP (:mod:`whygpu.predict.split_layouts`), or None where it is missing."""
    try:
        from .predict.split_layouts import split_layouts
    except ImportError:
        return None
    return split_layouts()


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def print_split(doc: dict, out: Callable[[str], None] = print) -> None:
    """The strategies side by side, the pipeline's bubble and step against the formula and the simulator."""
    P, model = doc["ranks"], "-".join(map(str, doc["layers"]))
    out(f"\nOne model (MLP {model}), one global batch ({doc['batch']}), Adam, on {P} ranks x {doc['threads']} "
        "thread(s): each strategy's step, what it sends and what each rank holds (the largest rank's)")  # fmt: skip
    head = ("strategy", "step ms", "MiB sent/step", "params MiB", "grads MiB", "Adam MiB", "stash MiB")
    out("  " + f"{head[0]:<16}" + "".join(f"{h:>14}" for h in head[1:]))
    for r in doc["runs"]:
        name = r["strategy"] if r["strategy"] != "pp" else f"pp {r['schedule']} m={r['micro_batches']}"
        ranks = r["ranks"]
        held = [max(e[k] for e in ranks) for k in ("params_bytes", "grads_bytes", "optimizer_bytes")]
        stash = _mb(max(e.get("stash_peak_bytes", 0) for e in ranks)) if r["strategy"] == "pp" else "-"
        cells = [f"{r['step_s'] * 1e3:.1f}", _mb(r["bytes_per_step"]), *map(_mb, held), stash]
        out("  " + f"{name:<16}" + "".join(f"{c:>14}" for c in cells))
    ck = doc.get("checks")
    if not ck:
        return
    out(
        "\nThe pipeline's bubble (idle share of the ranks' time) against (p - 1)/(m + p - 1), and the step "
        "simulated from terms measured apart (each stage's forward and backward, one message) before each run:"
    )
    out(f"  {'schedule':<8} {'m':>3} {'bubble':>7} {'formula':>8} {'|diff|':>7}      {'simulated':>9}  "
        f"{'stages':>7}  {'step vs simulated':>18}")  # fmt: skip
    for c in ck["pipeline"]:
        d = abs(c["bubble"] - c["bubble_formula"])
        miss_b = "" if c["bubble_ok"] else " MISS"
        miss_s = "" if c["step_ok"] else " MISS"
        sim = c.get("bubble_simulated")
        out(f"  {c['schedule']:<8} {c['micro_batches']:>3} {c['bubble']:7.3f} {c['bubble_formula']:8.3f} "
            f"{d:7.3f}{miss_b:5} {'-' if sim is None else f'{sim:9.3f}'}  {c.get('stage_imbalance', 0):+7.0%}  "
            f"{c['step_error']:+12.0%}{miss_s}")  # fmt: skip
    n, rows = len(ck["pipeline"]), ck["pipeline"]
    out(f"  bubble within {ck['bubble_tol']} of the formula: {sum(c['bubble_ok'] for c in rows)} of {n} (of the "
        f"simulated: {sum(c.get('bubble_simulated_ok', False) for c in rows)}); simulated step within "
        f"{ck['step_tol']:.0%}: {sum(c['step_ok'] for c in rows)} of {n}; peak stash as the schedule says: "
        f"{sum(c['stash_ok'] for c in rows)} of {n}")  # fmt: skip
    for c in rows:
        if c.get("why"):
            out(f"  {c['schedule']} m = {c['micro_batches']} misses the formula: {c['why']}")
    out("  (stages: how much longer the slowest stage's forward + backward took than the fastest's, measured apart)")
