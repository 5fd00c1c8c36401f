"""The scale-out section's predictions: the held-out validation (``scaleout_heldout.json``, written by
``whygpu scaleout --held-out``) -- each configuration predicted by the step simulator before it ran, then
run, every term judged against its own measurement -- as a table, its counts, and one run's measured and
simulated timelines one above the other; and the sources of the extrapolated curves' inputs.  Every
number in the prose is computed from the documents."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._format import Block, Docs, _ms

KIND = "scaleout-heldout"  # the kind load.classify gives the held-out document (schema whygpu.scaleout-heldout/1)
SUBTITLE = "Predicted before it ran"
FIGURE = "scaleout_timeline.png"
# the run whose timelines are drawn, where it was measured: plain data parallelism with DDP's buckets
CHOSEN_LAYOUT = "DDP: 1 MiB first + 25 MiB"
HOWTO = (
    "Not run yet: the held-out validation predicts each data-parallel configuration with the step simulator "
    "from terms measured apart, before it runs, then runs it and judges every term. To see it here, run "
    "'whygpu scaleout --held-out' (add --quick for a small model in a minute or two, --trace DIR for the "
    "timelines as Chrome traces), then 'whygpu report' again with its output folder."
)
# a judged term in words
TERM_WORDS = {
    "step": "step",
    "compute": "compute",
    "allreduce": "allreduce in flight",
    "reduce_scatter": "reduce-scatter in flight",
    "exposed": "exposed wait",
    "update": "update",
    "allgather": "allgather in flight",
    "allgather_wait": "allgather waited for",
}


def _words(term: str) -> str:
    return TERM_WORDS.get(term, term.replace("_", " "))


def _tol(rel: float, floor: float | None) -> str:
    """A tolerance as the table and the prose write it: '15%', '25% or 500 us'."""
    return f"{100 * rel:g}%" + (f" or {_ms(floor)}" if floor else "")


def _ms_cell(x: float | None) -> str:
    return "n/a" if x is None else f"{1e3 * x:.3g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def term_verdict(t: dict, row: dict) -> str:
    """A judged term's verdict: within its tolerance, not measured, a miss in a disturbed run, or a model error
    naming the term."""
    if t.get("within") is None:
        return "not measured"
    if t["within"]:
        return "ok"
    if row.get("disturbed"):
        return "missed (disturbed run)"
    return f"model error: {t['term']}"


def table(doc: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The held-out table: one line per judged term of each configuration (the configuration and the run's
    verdict on its first line), predicted and measured in ms, the error, the term's verdict."""
    rows: list[tuple[str, ...]] = []
    for r in doc["heldout"]["rows"]:
        for i, t in enumerate(r["terms"]):
            err = "n/a" if t.get("error") is None else f"{100 * t['error']:+.0f}%"
            config = f"{r['label']} (run: {r['verdict']})" if i == 0 else ""
            term = f"{_words(t['term'])} (within {_tol(t['tolerance'], t.get('floor_s'))})"
            rows.append((config, term, _ms_cell(t["predicted_s"]), _ms_cell(t["measured_s"]), err, term_verdict(t, r)))
    head: tuple[str, ...] = ("configuration (run's verdict)", "term (tolerance)", "predicted ms", "measured ms",
                             "error", "verdict")  # fmt: skip
    return head, rows


def method_sentence(doc: dict) -> str:
    """How the held-out validation works, with the tolerances the document judged by."""
    h = doc["heldout"]
    judged = {t["term"] for r in h["rows"] for t in r["terms"]}
    tols = h.get("tolerances") or {}
    each = "; ".join(f"{_words(k)} {_tol(v['relative'], v.get('floor_s'))}" for k, v in tols.items() if k in judged)
    return (
        "Method: the simulator's inputs -- each layer's compute, the update, each collective's cost curve, and "
        "how a collective and compute slow each other -- were measured apart on the same ranks; each "
        "configuration was predicted from them alone and the prediction kept before it ran; then it ran, and "
        "every term was judged against its own measurement with its own tolerance"
        + (f" ({each})" if each else "")
        + ", so two wrong terms cannot add up to a right step."
    )


def counts_sentence(doc: dict) -> str:
    """The summary's counts in words: held, model errors (and which terms missed how often), disturbed."""
    s = doc["heldout"]["summary"]
    n, ok, me, dist = s["configurations"], s["ok"], s["model_errors"], s["disturbed"]
    missed = s.get("missed_terms") or {}
    which = ", ".join(f"{_words(t)} in {k}" for t, k in sorted(missed.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"Of the {_plural(n, 'configuration')}, {ok} held on every term; {me} missed by a model error"
    text += f" (the term that missed: {which})" if which else ""
    text += (
        f"; {dist} ran while the quiet guard measured other programs on the ranks' cores (disturbed: their "
        "misses are listed, not counted as model errors)."
    )
    return text


def machine_sentence(doc: dict) -> str:
    """The ranks, threads and cores of the runs, with the oversubscription where there was one."""
    hows: list[str] = []
    for r in doc["heldout"]["rows"]:
        if r.get("how") and r["how"] not in hows:
            hows.append(r["how"])
    p = doc.get("params") or {}
    model = f"the MLP {p['layers']} at a global batch of {p['batch']}, " if p.get("layers") else ""
    steps = f"{p['steps']} timed steps per run (medians), " if p.get("steps") else ""
    over = [r for r in doc["heldout"]["rows"] if (r.get("oversubscribed") or 1.0) > 1.0]
    stretch = (
        " The oversubscribed runs share the cores, so their ranks take turns and every term is stretched."
        if over
        else " No run had more threads than cores."
    )
    return f"Here: {model}{steps}on {'; '.join(hows) or 'an unrecorded machine'}." + stretch


def chosen_row(rows: Sequence[dict]) -> dict | None:
    """The run whose timelines the report draws: plain data parallelism with DDP's buckets where it was
    measured, else the first run (only runs that carry a timeline)."""
    with_tl = [r for r in rows if r.get("timeline")]
    for r in with_tl:
        if r.get("layout") == CHOSEN_LAYOUT and (r.get("config") or {}).get("shard", "none") == "none":
            return r
    return with_tl[0] if with_tl else None


def parting_sentence(row: dict) -> str:
    """Where the prediction and the run part: the term (other than the whole step) with the largest absolute
    difference, then the step's own difference, and the time the run spent on what the simulator leaves out."""
    terms = [t for t in row["terms"] if t.get("measured_s") is not None and t.get("predicted_s") is not None]
    parts = [t for t in terms if t["term"] != "step"]
    text = ""
    if parts:
        t = max(parts, key=lambda t: abs(t["predicted_s"] - t["measured_s"]))
        d = t["measured_s"] - t["predicted_s"]
        err = "" if t.get("error") is None else f", {100 * t['error']:+.0f}%"
        text = (
            f"Where they part most: the {_words(t['term'])}, predicted {_ms(t['predicted_s'])} against "
            f"{_ms(t['measured_s'])} measured ({_ms(abs(d))} {'longer' if d > 0 else 'shorter'} in the run{err})."
        )
    step = next((t for t in terms if t["term"] == "step"), None)
    if step is not None:
        err = "" if step.get("error") is None else f" ({100 * step['error']:+.0f}%)"
        text += f" The whole step: predicted {_ms(step['predicted_s'])}, measured {_ms(step['measured_s'])}{err}."
    other = sum(e["end_s"] - e["start_s"] for e in row["timeline"].get("measured") or [] if e.get("kind") == "other")
    if other > 0:
        text += (
            f" The run also spent {_ms(other)} of its step on what the simulator does not model (zero_grad, "
            "the loss's gradient, bookkeeping: 'other' in the upper panel)."
        )
    return text.strip()


def heldout_blocks(docs: Docs, out: Path, figs: list[str]) -> list[Block]:
    """The subsection "Predicted before it ran": the method, the counts, the machine, the held-out table and
    one run's two timelines; where ``scaleout_heldout.json`` is absent, how to produce it."""
    blocks: list[Block] = [("h3", SUBTITLE)]
    doc = docs.get(KIND)
    if doc is None:
        return blocks + [("p", HOWTO)]
    rows = (doc.get("heldout") or {}).get("rows") or []
    if not rows:
        return blocks + [("p", "The held-out document has no configurations to report. " + HOWTO)]
    blocks.append(("p", method_sentence(doc) + " " + machine_sentence(doc)))
    blocks.append(("p", counts_sentence(doc)))
    head, trows = table(doc)
    blocks.append(("table", head, trows))
    r = chosen_row(rows)
    if r is None:
        blocks.append(
            ("p", "This document carries no timelines (it predates them): run the held-out validation again.")
        )
        return blocks
    from ..plots.timeline import plot_timeline

    step: dict[str, Any] = next((t for t in r["terms"] if t["term"] == "step"), {})
    figs.append(plot_timeline(r["timeline"], out / FIGURE, label=r["label"], measured_step_s=step.get("measured_s"),
                              predicted_step_s=step.get("predicted_s")))  # fmt: skip
    why = "plain data parallelism with DDP's buckets" if r.get("layout") == CHOSEN_LAYOUT else "the first run"
    cap = (
        f"One step of {r['label']} ({why}; {r.get('how', 'ranks as recorded')}). Above: measured on rank 0, "
        "one timed step, from the run's own clocks. Below: simulated from the terms measured apart, before the "
        "run. Each panel has a compute lane and a communication lane; the solid line marks the measured step"
        + (f" ({_ms(step['measured_s'])})" if step.get("measured_s") is not None else "")
        + ", the dashed one the predicted step"
        + (f" ({_ms(step['predicted_s'])})" if step.get("predicted_s") is not None else "")
        + f". The run's verdict: {r['verdict']}."
    )
    blocks.append(("fig", FIGURE, cap))
    blocks.append(("p", parting_sentence(r)))
    return blocks


def _flat(v: Any) -> str:
    """A source as text: a string as it is, a dict as 'key: source; ...', a list joined."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_flat(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_flat(x) for x in v)
    return "n/a" if v is None else str(v)


_UNMEASURED = ("assumed", "not measured")


def sources_blocks(ex: dict) -> list[Block]:
    """Under the extrapolation's figure: where each input of the simulated curves comes from (the document's
    ``sources`` and each curve's, grouped where curves share them), and which of them are assumed or not
    measured; [] where the document carries no sources (older documents)."""
    doc_src = ex.get("sources") or {}
    curves = [c for c in ex.get("curves") or [] if c.get("sources")]
    if not doc_src and not curves:
        return []
    blocks: list[Block] = []
    unmeasured: list[str] = []
    text = "The extrapolated curves are the step simulator's, run with each system's figures."
    if doc_src:
        text += " Their inputs come from: " + "; ".join(f"{k}: {_flat(v)}" for k, v in doc_src.items()) + "."
        unmeasured += [k for k, v in doc_src.items() if _flat(v).lower().startswith(_UNMEASURED)]
    if curves:
        keys: list[str] = []
        for c in curves:
            keys += [k for k in c["sources"] if k not in keys]
        groups: dict[tuple[str, ...], list[str]] = {}
        for c in curves:
            vals = tuple(_flat(c["sources"].get(k)) for k in keys)
            name = f"{c.get('system', '?')}: {c.get('model', '?')}"
            if name not in groups.setdefault(vals, []):
                groups[vals].append(name)
            unmeasured += [
                f"{k} ({c.get('system', '?')})"
                for k in keys
                if _flat(c["sources"].get(k)).lower().startswith(_UNMEASURED)
            ]
        text += " Curve by curve (each row: the curves whose inputs share these sources):"
        blocks.append(("p", text))
        blocks.append(("table", ("curves", *keys), [(", ".join(names), *vals) for vals, names in groups.items()]))
    else:
        blocks.append(("p", text))
    seen = list(dict.fromkeys(unmeasured))
    if seen:
        blocks.append(("p", "Assumed or not measured, and so where the curves are weakest: " + ", ".join(seen) + "."))
    return blocks
