"""The section "Splitting the model" (``scaleout_split.json``, schema ``whygpu.split/1``, written by
``whygpu scaleout --strategy dp,zero1,tp,pp``): the schedules' step-by-rank grids, the pipeline's bubble against
the number of micro-batches -- measured, simulated and the formula, judged -- what each strategy sends and holds,
and the layouts of a large model on H100 nodes that :mod:`whygpu.predict.split_layouts` extrapolates.  Every
number in the prose is computed from the document; a key it lacks is said "not measured"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ._format import Block, Docs, _ms

KIND = "split"  # the kind load.classify gives the document
TITLE = "Splitting the model"
FIGURE = "split_bubble.png"
FIGURE_STRATEGIES = "split_strategies.png"
COMMAND = "whygpu scaleout --strategy dp,zero1,tp,pp --ranks 2"
NOT = "not measured"
HOWTO = (
    f"Not run yet: '{COMMAND}' trains one model on one global batch in each of the four ways (data parallel, "
    "ZeRO-1, tensor parallel, pipeline parallel) and writes scaleout_split.json into its output folder; "
    "'whygpu demo' runs it too. It needs mpi4py and an MPI library (pip install mpi4py mpich). Then run "
    "'whygpu report' again with that folder."
)
INTRO = (
    "Data parallelism copies the whole model onto every rank; when the model (or its training state) no longer "
    "fits one device, the model itself is split. Tensor parallelism cuts every pair of layers' matrices across "
    "the ranks (Megatron's column and row layers): each rank holds a slice of every layer and the ranks add their "
    "partial products with an allreduce, forward and backward. Pipeline parallelism gives each rank a stage -- "
    "a contiguous run of layers -- and cuts the batch into m micro-batches that flow through the stages; a rank "
    "waits while the pipeline fills and drains, and that idle time is the bubble. The schedules: GPipe runs "
    "every micro-batch's forward, then every backward; 1F1B alternates one forward and one backward once the "
    "pipeline is full, so each rank keeps fewer micro-batches' activations (its stash) waiting for their backward."
)


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return NOT if x is None else fmt.format(x)


def _mib(b: Any) -> str:
    return NOT if b is None else f"{b / 2**20:.1f}"


def _step(s: Any) -> str:
    return NOT if s is None else _ms(s)


def _optimizer(doc: dict) -> str:
    name = doc.get("optimizer")
    return {"adam": "Adam", "sgd": "SGD"}.get(name, str(name)) if name else "its optimizer"


def machine_text(doc: dict) -> str:
    """The machine the figures came from, as the document recorded it."""
    cpu = (doc.get("machine") or {}).get("cpu") or {}
    if not cpu:
        return "a machine the document does not record"
    return f"{cpu.get('model', 'an unnamed CPU')} ({cpu.get('cores', '?')} cores, {cpu.get('arch', '?')})"


def setting_sentence(doc: dict) -> str:
    model = "-".join(map(str, doc.get("layers") or [])) or "?"
    return (
        f"Measured on {machine_text(doc)}: the MLP {model}, global batch {doc.get('batch', '?')}, "
        f"{_optimizer(doc)}, on {doc.get('ranks', '?')} ranks x {doc.get('threads', '?')} "
        f"thread(s) ({doc.get('backend', '?')} back end), {doc.get('steps', '?')} timed steps per run (medians)."
    )


# ---- the grids ---------------------------------------------------------------------------------------------------
def grid_cells(text: str) -> tuple[int, int]:
    """(idle cells, all cells) of a step-by-rank grid: each row 'rank r | F0 .  B0 ...'."""
    cells = [c for line in text.splitlines() if "|" in line for c in line.split("|", 1)[1].split()]
    return sum(c == "." for c in cells), len(cells)


def _pm(key: str) -> tuple[int, int] | None:
    m = re.search(r"p=(\d+),\s*m=(\d+)", key)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _schedule_name(name: str) -> str:
    return {"gpipe": "GPipe", "1f1b": "1F1B"}.get(name, name)


def grid_blocks(doc: dict) -> list[Block]:
    grids = doc.get("grids") or {}
    blocks: list[Block] = [("h3", "The schedules, step by step")]
    if not grids:
        return blocks + [("p", f"The step-by-rank grids: {NOT} (this document has none).")]
    blocks.append(
        (
            "p",
            "Each row is one rank (one stage), each column one step of equal length: F3 is micro-batch 3's forward "
            "pass through that rank's stage, B3 its backward, and each dot a step the rank sits idle -- the "
            "bubble. Every rank waits for the rank before it to send a micro-batch forward and for the rank after "
            "it to send its gradient back. ('whygpu scaleout --schedule-grid P,M' prints them for any P and M.)",
        )
    )
    said, same = [], True
    for key, by in grids.items():
        text = "\n".join(f"{_schedule_name(name)}, {key}:\n{g}\n" for name, g in by.items()).rstrip()
        blocks.append(("pre", text))
        pm = _pm(key)
        formula = (pm[0] - 1) / (pm[1] + pm[0] - 1) if pm else None
        counts = []
        for name, g in by.items():
            idle, cells = grid_cells(g)
            share = idle / max(cells, 1)
            same = same and formula is not None and abs(share - formula) < 1e-9
            counts.append(f"{_schedule_name(name)} {idle} of {cells} cells idle ({share:.3f})")
        said.append(f"{key}: " + ", ".join(counts) + (f"; (p - 1)/(m + p - 1) = {formula:.3f}" if pm else ""))
    text = "Counted from the grids: " + "; ".join(said) + "."
    if same:
        text += (
            " With every step of one length, the dots' share is the formula's bubble in every grid and both "
            "schedules: 1F1B does not shrink the bubble, it shrinks the stash."
        )
    blocks.append(("p", text))
    return blocks


# ---- the bubble --------------------------------------------------------------------------------------------------
def _pp_run(doc: dict, schedule: str, m: int) -> dict:
    for r in doc.get("runs") or []:
        if r.get("strategy") == "pp" and r.get("schedule") == schedule and r.get("micro_batches") == m:
            return r
    return {}


def judged_rows(doc: dict) -> list[dict]:
    """Each pipeline run, its bubble and step judged from the numbers and the tolerances in the document
    (``checks``); None where a number is missing."""
    ck = doc.get("checks") or {}
    btol, stol = ck.get("bubble_tol"), ck.get("step_tol")
    rows = []
    for c in ck.get("pipeline") or []:
        r = _pp_run(doc, c.get("schedule"), c.get("micro_batches"))
        b, f = c.get("bubble", r.get("bubble")), c.get("bubble_formula", r.get("bubble_formula"))
        diff = None if b is None or f is None else abs(b - f)
        step, pred = r.get("step_s"), r.get("predicted_step_s")
        err = c.get("step_error")
        if err is None and step and pred is not None:
            err = pred / step - 1.0
        rows.append(
            {
                "schedule": c.get("schedule", "?"),
                "m": c.get("micro_batches", "?"),
                "bubble": b,
                "formula": f,
                "diff": diff,
                "bubble_ok": None if diff is None or btol is None else diff <= btol,
                "simulated": r.get("predicted_bubble"),
                "step_s": step,
                "predicted_step_s": pred,
                "step_error": err,
                "step_ok": None if err is None or stol is None else abs(err) <= stol,
                "stash_ok": c.get("stash_ok"),
                "terms": r.get("terms"),
                "why": c.get("why"),
            }
        )
    return rows


def _verdict(ok: bool | None) -> str:
    return NOT if ok is None else "ok" if ok else "MISS"


def _count(rows: list[dict], key: str) -> str:
    judged = [r[key] for r in rows if r[key] is not None]
    text = f"{sum(judged)} of {len(judged)}"
    return text + (f" ({len(rows) - len(judged)} {NOT})" if len(judged) < len(rows) else "")


def counts_sentence(doc: dict, rows: list[dict]) -> str:
    ck = doc.get("checks") or {}
    btol, stol = ck.get("bubble_tol"), ck.get("step_tol")
    return (
        f"Bubble within {_num(btol, '{:g}')} of the formula: {_count(rows, 'bubble_ok')}; step simulated "
        f"within {_num(stol, '{:.0%}')} of the measured: {_count(rows, 'step_ok')}; peak stash as the schedule "
        f"says: {_count(rows, 'stash_ok')}."
    )


def trend_sentence(rows: list[dict]) -> str:
    """How the measured bubble and the formula moved from the smallest m to the largest, per schedule."""
    said, fell = [], True
    for name in dict.fromkeys(r["schedule"] for r in rows):
        mine = sorted((r for r in rows if r["schedule"] == name and r["bubble"] is not None), key=lambda r: r["m"])
        if len(mine) < 2:
            continue
        a, b = mine[0], mine[-1]
        verb = "fell" if b["bubble"] < a["bubble"] else "rose" if b["bubble"] > a["bubble"] else "stayed"
        fell = fell and verb == "fell"
        said.append(
            f"{_schedule_name(name)}'s measured bubble {verb} from {a['bubble']:.3f} at m = {a['m']} to "
            f"{b['bubble']:.3f} at m = {b['m']} (the formula: {_num(a['formula'])} to {_num(b['formula'])})"
        )
    if not said:
        return ""
    return ("More micro-batches, a smaller bubble: " if fell else "From the fewest micro-batches to the most: ") + (
        "; ".join(said) + "."
    )


def gap_sentence(rows: list[dict]) -> str:
    """Where the measured bubble sits against the formula and the simulator, and the largest gap."""
    both = [r for r in rows if r["bubble"] is not None and r["formula"] is not None]
    if not both:
        return f"The measured bubble: {NOT}."
    above = sum(r["bubble"] > r["formula"] for r in both)
    text = f"The measured bubble is above the formula in {above} of {len(both)} runs."
    worst = max(both, key=lambda r: r["diff"])
    text += (
        f" The largest gap: {_schedule_name(worst['schedule'])} at m = {worst['m']}, {worst['bubble']:.3f} "
        f"measured against {worst['formula']:.3f}"
    )
    text += (
        f" (the simulator said {worst['simulated']:.3f})." if worst["simulated"] is not None else " (simulated: n/a)."
    )
    sim = [r for r in both if r["simulated"] is not None]
    if sim:
        closer = sum(abs(r["simulated"] - r["bubble"]) < r["diff"] for r in sim)
        text += (
            f" The simulator -- the schedule timed with each stage's own forward and backward and the message, "
            f"measured apart before the run -- is closer to the measurement than the formula in {closer} of "
            f"{len(sim)} runs: the formula assumes every forward and backward of every stage takes one equal step "
            "and messages cost nothing."
        )
    steps = [r for r in rows if r["step_s"] is not None and r["predicted_step_s"] is not None]
    if steps:
        short = sum(r["predicted_step_s"] < r["step_s"] for r in steps)
        text += f" The simulated step is shorter than the measured one in {short} of {len(steps)} runs."
    terms = [r["terms"] for r in rows if r.get("terms")]
    if terms:
        ratio = [b / f for t in terms for f, b in zip(t.get("forward_s") or [], t.get("backward_s") or []) if f > 0]
        if ratio:
            text += (
                f" Measured apart, a stage's backward took x{min(ratio):.2g} to x{max(ratio):.2g} its forward, not x1."
            )
    return text


def stash_sentence(doc: dict) -> str:
    """Each schedule's peak stash at its largest m, from the runs' ranks."""
    said = []
    for name in ("gpipe", "1f1b"):
        runs = [r for r in doc.get("runs") or [] if r.get("strategy") == "pp" and r.get("schedule") == name]
        if not runs:
            continue
        r = max(runs, key=lambda r: r["micro_batches"])
        ranks = r.get("ranks") or []
        peaks = ", ".join(
            f"rank {i} {e.get('stash_peak', '?')} ({_mib(e.get('stash_peak_bytes'))} MiB)" for i, e in enumerate(ranks)
        )
        said.append(f"{_schedule_name(name)} at m = {r['micro_batches']}: {peaks or NOT}")
    if not said:
        return ""
    return (
        "The stash, in micro-batches whose activations a rank keeps for their backward, at its peak: "
        + "; ".join(said)
        + ". GPipe keeps all m; 1F1B at most p - r on rank r."
    )


def bubble_blocks(doc: dict, out: Path, figs: list[str]) -> list[Block]:
    blocks: list[Block] = [("h3", "The bubble against the number of micro-batches")]
    rows = judged_rows(doc)
    if not rows:
        return blocks + [("p", f"The pipeline: {NOT} in this run (--strategy without pp).")]
    from ..plots.split import plot_bubble

    ck = doc.get("checks") or {}
    blocks.append(
        (
            "p",
            "The formula for the bubble, the idle share of the ranks' time, is (p - 1)/(m + p - 1) for p stages and "
            "m micro-batches. Measured: each step's idle share, 1 - (time in forward and backward passes, summed "
            "over the ranks) / (p x the step), its median over the steps. Simulated: before each run, each rank's "
            "forward and backward passes were timed in the schedule's order with no message (stand-ins for what "
            "the neighbours send), and one message between neighbours was timed; the schedule's own dependencies "
            "timed on those terms alone (nothing of the run itself) give the step and the bubble. "
            + counts_sentence(doc, rows),
        )
    )
    figs.append(plot_bubble(doc, out / FIGURE))
    p = doc.get("ranks", "?")
    cap = (
        f"Left: the bubble of the pipeline on {p} ranks against m, measured here (filled), simulated from terms "
        f"measured apart (open, dashed) and the formula (black), its band the check's tolerance "
        f"(±{_num(ck.get('bubble_tol'), '{:g}')}). Right: the step, measured and simulated. Measured on "
        f"{machine_text(doc)}."
    )
    blocks.append(("fig", FIGURE, cap))
    head = (
        "schedule",
        "m",
        "bubble measured",
        "formula",
        "|diff|",
        f"within {_num(ck.get('bubble_tol'), '{:g}')}",
        "bubble simulated",
        "step measured",
        "step simulated",
        "simulated vs measured",
        f"within {_num(ck.get('step_tol'), '{:.0%}')}",
        "peak stash as the schedule says",
    )
    trows = [
        (
            _schedule_name(r["schedule"]),
            str(r["m"]),
            _num(r["bubble"]),
            _num(r["formula"]),
            _num(r["diff"]),
            _verdict(r["bubble_ok"]),
            _num(r["simulated"]),
            _step(r["step_s"]),
            _step(r["predicted_step_s"]),
            _num(r["step_error"], "{:+.0%}"),
            _verdict(r["step_ok"]),
            _verdict(r["stash_ok"]),
        )
        for r in rows
    ]
    blocks.append(("table", head, trows))
    text = " ".join(t for t in (trend_sentence(rows), gap_sentence(rows), stash_sentence(doc)) if t)
    blocks.append(("p", text))
    misses = [f"{_schedule_name(r['schedule'])} at m = {r['m']}: {r['why']}." for r in rows if r.get("why")]
    if misses:
        blocks.append(("p", "Where the measured bubble missed the formula, what was measured: " + " ".join(misses)))
    return blocks


# ---- the strategies ----------------------------------------------------------------------------------------------
PARTS = ("params_bytes", "grads_bytes", "optimizer_bytes", "stash_peak_bytes")


def _largest(r: dict, key: str) -> int | None:
    vals = [e.get(key) for e in r.get("ranks") or [r] if e.get(key) is not None]
    return max(vals) if vals else None


def _fullest(r: dict) -> int | None:
    ranks = r.get("ranks") or [r]
    tot = [sum(e.get(k) or 0 for k in PARTS) for e in ranks if any(e.get(k) is not None for k in PARTS)]
    return max(tot) if tot else None


def strategy_rows(doc: dict) -> list[tuple[str, ...]]:
    from ..plots.split import run_label

    rows = []
    for r in doc.get("runs") or []:
        stash = _mib(_largest(r, "stash_peak_bytes")) if r.get("strategy") == "pp" else "-"
        rows.append(
            (
                run_label(r),
                _step(r.get("step_s")),
                _mib(r.get("bytes_per_step")),
                *(_mib(_largest(r, k)) for k in PARTS[:3]),
                stash,
                _mib(_fullest(r)),
            )
        )
    return rows


_HOW = {
    "dp": "an allreduce of every gradient",
    "zero1": "a reduce-scatter of the gradients and an allgather of the parameters",
    "tp": "allreduces of activations forward and of their gradients backward, inside every pair of layers",
    "pp": "each micro-batch's activation forward and its gradient back, at the stage boundary",
}


def strategy_sentence(doc: dict) -> str:
    """Each strategy's bytes and memory, against plain data parallelism's where it ran."""
    runs = doc.get("runs") or []
    first: dict[str, dict] = {}
    for r in runs:
        first.setdefault(r.get("strategy", "?"), r)
    dp = first.get("dp")
    said = []
    for name, r in first.items():
        sent = r.get("bytes_per_step")
        text = f"{name} sends {_mib(sent)} MiB a step ({_HOW.get(name, 'its messages')})"
        if dp is not None and r is not dp and dp.get("bytes_per_step") and sent is not None:
            text += f", x{sent / dp['bytes_per_step']:.2g} dp's"
            held = [(k, _largest(r, k), _largest(dp, k)) for k in PARTS[:3]]
            ratios = [
                f"{w} x{a / b:.2g}"
                for (k, a, b), w in zip(held, ("parameters", "gradients", "optimizer state"))
                if a is not None and b
            ]
            if ratios:
                text += "; its largest rank holds, against a dp rank: " + ", ".join(ratios)
        said.append(text)
    text = "Per step: " + "; ".join(said) + "." if said else f"The strategies: {NOT}."
    text += " (The table's memory columns: each part's largest over the ranks; its total: the fullest rank's.)"
    return text + (
        " (The pipeline's bytes are the same at every m: m messages, each 1/m of the batch.)"
        if sum(r.get("strategy") == "pp" for r in runs) > 1
        else ""
    )


def strategy_blocks(doc: dict, out: Path, figs: list[str]) -> list[Block]:
    blocks: list[Block] = [("h3", "What each strategy sends and holds")]
    runs = doc.get("runs") or []
    if not runs:
        return blocks + [("p", f"The strategies: {NOT} (the document has no runs).")]
    from ..plots.split import plot_strategies

    opt = _optimizer(doc)
    blocks.append(("p", strategy_sentence(doc)))
    head = (
        "strategy",
        "step",
        "MiB sent per step",
        "params MiB",
        "grads MiB",
        f"{opt} state MiB",
        "peak stash MiB",
        "total MiB (fullest rank)",
    )
    blocks.append(("table", head, strategy_rows(doc)))
    figs.append(plot_strategies(doc, out / FIGURE_STRATEGIES))
    cap = (
        f"Left: the bytes each run sent per step. Right: what its fullest rank held, in MiB: parameters, "
        f"gradients, {opt} state and (pipeline) the peak stash of activations. Measured on {machine_text(doc)}: "
        "from the buffers the package allocated, not from the operating system."
    )
    blocks.append(("fig", FIGURE_STRATEGIES, cap))
    return blocks


# ---- the layouts on H100 nodes -----------------------------------------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return f"[{', '.join(map(str, v[:3]))}, ...] ({len(v)} values)" if len(v) > 4 else str(list(v))
    return str(v)


def layout_blocks(doc: dict) -> list[Block]:
    L = doc.get("layouts")
    srcs = " ".join(str(i.get("source", "")) for i in (L or {}).get("inputs") or [])
    gpu = "H100" if "H100" in srcs or L is None else "GPU"
    blocks: list[Block] = [("h3", f"On {gpu} nodes: which layout (a model, not measured)")]
    if not L or not L.get("layouts"):
        return blocks + [
            ("p", "The layouts: not in this document (whygpu.predict.split_layouts was not there when it was written).")
        ]
    from ..predict.split_layouts import layout_rows

    md, cl = L.get("model") or {}, L.get("cluster") or {}
    state = md.get("state_bytes")
    blocks.append(
        (
            "p",
            f"The same strategies on a cluster, extrapolated from public figures: the {md.get('name', 'model')} "
            f"({_num(md.get('params'), '{:.3g}')} parameters, {_num(state and state / 1e9, '{:.4g}')} GB of "
            f"{_optimizer(L)} training state in {L.get('precision', '?')}) on {cl.get('nodes', '?')} "
            f"nodes of {cl.get('gpus_per_node', '?')} {gpu}s ({_num(cl.get('memory_gb'), '{:g}')} GB each), "
            f"global batch {L.get('global_batch', '?')}, the {_schedule_name(str(L.get('schedule', '?')))} "
            "schedule: every layout dp x tp x pp, the bytes per GPU of its fullest stage, whether they fit, its "
            "step and the largest term of it (* marks the fastest that fits).",
        )
    )
    rows = layout_rows(L)
    blocks.append(("table", tuple(rows[0]), [tuple(r) for r in rows[1:]]))
    why = str(L.get("why") or "")
    fastest = L.get("fastest")
    lead = f"The fastest layout that fits: {fastest}." if fastest else "No layout fits."
    blocks.append(("p", lead + (" Why: " + why if why else "")))
    if L.get("skipped"):
        blocks.append(
            (
                "p",
                "Not drawn: "
                + "; ".join(
                    f"dp {s.get('dp')} x tp {s.get('tp')} x pp {s.get('pp')} ({s.get('why')})" for s in L["skipped"]
                )
                + ".",
            )
        )
    inputs = L.get("inputs") or []
    if L.get("method"):
        blocks.append(("p", f"How: {L['method']}. Its inputs and where each comes from:"))
    if inputs:
        blocks.append(
            (
                "table",
                ("input", "value", "source"),
                [(str(i.get("name", "?")), _value(i.get("value")), str(i.get("source", "?"))) for i in inputs],
            )
        )
        assumed = [str(i.get("name")) for i in inputs if str(i.get("source", "")).startswith("assumed")]
        if assumed:
            blocks.append(
                ("p", "Assumed, not public figures, and so where the table is weakest: " + ", ".join(assumed) + ".")
            )
    return blocks


# ---- the section -------------------------------------------------------------------------------------------------
def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The grids, the bubble, the strategies and the layouts (from ``scaleout_split.json``); where the
    scale-out story is told without that document, which command produces it; else nothing."""
    doc = docs.get(KIND)
    if doc is None:
        if "scaleout" not in docs:
            return []
        return [("h2", f"{num}. {TITLE}"), ("p", INTRO), ("p", HOWTO)]
    blocks: list[Block] = [("h2", f"{num}. {TITLE}"), ("p", INTRO + " " + setting_sentence(doc))]
    blocks += grid_blocks(doc)
    blocks += bubble_blocks(doc, out, figs)
    blocks += strategy_blocks(doc, out, figs)
    blocks += layout_blocks(doc)
    return blocks
