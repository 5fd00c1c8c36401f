"""The report's held-out validation (issue 34): a planted ``scaleout_heldout.json`` renders the table with
exactly the planted errors and verdicts, counts and tolerances read from the document (never typed), the
measured and simulated timelines of the chosen run drawn one above the other with a sentence naming where
they part; without the document the section says how to produce it; the extrapolation's inputs' sources
are listed under its figure when the document carries them.  The timeline figure draws any event lists,
empty lanes included.  Everything here is planted: nothing is timed, no MPI."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import whygpu.scaleout_heldout as h  # noqa: E402
from whygpu.plots.timeline import KINDS, plot_timeline, timeline_figure  # noqa: E402
from whygpu.predict import Event  # noqa: E402
from whygpu.report import build_report, load_results  # noqa: E402
from whygpu.report import scaleout as report_scaleout  # noqa: E402
from whygpu.report import scaleout_predicted as sp  # noqa: E402

ms = 1e-3
DDP = "P=2 none, DDP: 1 MiB first + 25 MiB"
PER = "P=2 optimizer, a bucket per layer"
OVER = "P=3 none, one bucket at the end"
HOW2 = "2 ranks x 1 thread(s) on 2 cores"
HOW3 = "3 ranks x 1 thread(s) on 2 cores (oversubscribed x1.5: the ranks take turns on the cores)"


def _ev(name, lane, start, end, kind) -> dict:
    return {"name": name, "lane": lane, "start_s": start, "end_s": end, "kind": kind}


# The chosen run's timelines: the exposed wait is where they part (3 ms simulated, 4.5 ms measured), and the
# run spends 0.2 ms on 'other'
SIMULATED = [
    _ev("forward fc0", "compute", 0.0, 2 * ms, "forward"), _ev("dW fc0", "compute", 2 * ms, 4 * ms, "backward_dw"),
    _ev("dX fc0", "compute", 4 * ms, 6 * ms, "backward_dx"), _ev("allreduce b0", "comm", 4 * ms, 9 * ms, "allreduce"),
    _ev("exposed", "compute", 6 * ms, 9 * ms, "exposed"), _ev("update fc0", "compute", 9 * ms, 10 * ms, "update"),
]  # fmt: skip
MEASURED = [
    _ev("forward (and loss)", "compute", 0.0, 2 * ms, "forward"),
    _ev("backward", "compute", 2 * ms, 6 * ms, "backward_dx"),
    _ev("allreduce (all buckets)", "comm", 5 * ms, 10.5 * ms, "allreduce"),
    _ev("exposed wait", "compute", 6 * ms, 10.5 * ms, "exposed"),
    _ev("update", "compute", 10.5 * ms, 11.3 * ms, "update"),
    _ev("other (zero_grad, loss gradient, bookkeeping)", "compute", 11.3 * ms, 11.5 * ms, "other"),
]  # fmt: skip


def _row(label, layout, how, over, cfg, pred, meas, disturbed=None, timeline=None) -> dict:
    judged = h.judge(pred, meas)
    v, misses = h.verdict(judged, disturbed)
    row = {"label": label, "layout": layout, "ranks": int(label[2]), "threads": 1, "cores": 2,
           "oversubscribed": over, "how": how, "config": cfg, "prediction": {"terms": pred},
           "measured": {"terms": meas}, "terms": judged, "misses": misses,
           "model_errors": [] if disturbed else misses, "disturbed": disturbed, "verdict": v}  # fmt: skip
    if timeline is not None:
        row["timeline"] = timeline
    return row


def planted_doc() -> dict:
    """Three runs: the chosen one within every term (its exposed wait 1.5 ms off, inside the 2 ms floor), one
    model error (the update, -50%), one disturbed and oversubscribed (the step, -50%)."""
    none = {"shard": "none", "prefetch": False, "bucket_mb": 25.0, "first_bucket_mb": 1.0}
    rows = [
        _row(DDP, "DDP: 1 MiB first + 25 MiB", HOW2, 1.0, none,
             {"step": 10 * ms, "compute": 6 * ms, "allreduce": 5 * ms, "exposed": 3 * ms, "update": 1 * ms},
             {"step": 11.5 * ms, "compute": 6 * ms, "allreduce": 5.5 * ms, "exposed": 4.5 * ms, "update": 0.8 * ms},
             timeline={"simulated": SIMULATED, "measured": MEASURED}),
        _row(PER, "a bucket per layer", HOW2, 1.0, dict(none, shard="optimizer", bucket_mb=0.0, first_bucket_mb=0.0),
             {"step": 10 * ms, "compute": 6 * ms, "reduce_scatter": 2 * ms, "exposed": 1 * ms, "update": 1 * ms,
              "allgather": 2 * ms},
             {"step": 10.5 * ms, "compute": 6 * ms, "reduce_scatter": 2 * ms, "exposed": 1 * ms, "update": 2 * ms,
              "allgather": 2 * ms},
             timeline={"simulated": SIMULATED[:2], "measured": []}),
        _row(OVER, "one bucket at the end", HOW3, 1.5, dict(none, bucket_mb=1e6, first_bucket_mb=1e6),
             {"step": 10 * ms, "compute": 6 * ms, "allreduce": 3 * ms, "exposed": 3 * ms, "update": 1 * ms},
             {"step": 20 * ms, "compute": 6 * ms, "allreduce": 3 * ms, "exposed": 3 * ms, "update": None},
             disturbed="others 20% of the cores"),
    ]  # fmt: skip
    return {
        "schema": h.SCHEMA,
        "available": True,
        "params": {"ranks": [2, 3], "layers": [64, 256, 10], "batch": 64, "steps": 3},
        "heldout": {
            "rows": rows,
            "terms": {},
            "tolerances": {k: {"relative": r, "floor_s": f} for k, (r, f) in h.TOLERANCES.items()},
            "summary": h.summary(rows),
        },
    }


def _blocks(docs: dict, tmp_path: Path) -> tuple[list, list[str]]:
    figs: list[str] = []
    return sp.heldout_blocks(docs, tmp_path, figs), figs


def _table(blocks: list) -> list[tuple]:
    (t,) = [b for b in blocks if b[0] == "table"]
    assert t[1] == ("configuration (run's verdict)", "term (tolerance)", "predicted ms", "measured ms", "error",
                    "verdict")  # fmt: skip
    return t[2]


def _text(blocks: list) -> str:
    return "\n".join(b[1] if b[0] == "p" else b[2] if b[0] == "fig" else "" for b in blocks)


def test_the_planted_summary_is_what_the_rows_say():
    s = planted_doc()["heldout"]["summary"]
    assert s == {"configurations": 3, "ok": 1, "model_errors": 1, "disturbed": 1, "missed_terms": {"update": 1}}


def test_the_table_has_exactly_the_planted_errors_and_verdicts(tmp_path):
    blocks, _ = _blocks({sp.KIND: planted_doc()}, tmp_path)
    rows = _table(blocks)
    assert len(rows) == 5 + 6 + 5
    assert rows[0] == (f"{DDP} (run: ok)", "step (within 15%)", "10", "11.5", "-13%", "ok")
    assert rows[3] == ("", "exposed wait (within 30% or 2 ms)", "3", "4.5", "-33%", "ok")
    assert rows[5][0] == f"{PER} (run: model error: update)"
    assert rows[9] == ("", "update (within 25% or 500 us)", "1", "2", "-50%", "model error: update")
    assert rows[10] == ("", "allgather in flight (within 25% or 500 us)", "2", "2", "+0%", "ok")
    disturbed = f"{OVER} (run: disturbed: others 20% of the cores (misses: step))"
    assert rows[11] == (disturbed, "step (within 15%)", "10", "20", "-50%", "missed (disturbed run)")
    assert rows[15] == ("", "update (within 25% or 500 us)", "1", "n/a", "n/a", "not measured")
    # a model error is named as one, with its term; a disturbed run's miss is not
    verdicts = [r[5] for r in rows]
    assert verdicts.count("model error: update") == 1 and all(
        v in ("ok", "not measured", "missed (disturbed run)", "model error: update") for v in verdicts
    )


def test_the_counts_and_tolerances_are_read_from_the_document(tmp_path):
    blocks, _ = _blocks({sp.KIND: planted_doc()}, tmp_path)
    text = _text(blocks)
    assert (
        "Of the 3 configurations, 1 held on every term; 1 missed by a model error (the term that missed: update "
        "in 1); 1 ran while the quiet guard" in text
    )
    assert "step 15%; compute 25% or 500 us;" in text and "exposed wait 30% or 2 ms" in text
    assert "allgather waited for" not in text.split("Of the")[0]  # only the tolerances of the terms judged
    assert HOW2 in text and HOW3 in text and "oversubscribed" in text
    # other numbers in the document, other words: nothing is typed
    doc = planted_doc()
    doc["heldout"]["summary"] = {"configurations": 7, "ok": 4, "model_errors": 2, "disturbed": 1,
                                 "missed_terms": {"exposed": 2, "step": 1}}  # fmt: skip
    doc["heldout"]["tolerances"]["step"] = {"relative": 0.2, "floor_s": 0.0}
    text = _text(_blocks({sp.KIND: doc}, tmp_path)[0])
    assert "Of the 7 configurations, 4 held on every term; 2 missed by a model error (the term that missed: " in text
    assert "exposed wait in 2, step in 1); 1 ran while" in text
    assert "step 20%;" in text and "step 15%" not in text


def test_the_timelines_of_the_chosen_run_are_drawn_and_where_they_part_is_said(tmp_path):
    blocks, figs = _blocks({sp.KIND: planted_doc()}, tmp_path)
    assert figs == [str(tmp_path / sp.FIGURE)] and (tmp_path / sp.FIGURE).stat().st_size > 10_000
    (fig,) = [b for b in blocks if b[0] == "fig"]
    assert fig[1] == sp.FIGURE and fig[2].startswith(f"One step of {DDP} (plain data parallelism with DDP's buckets")
    assert "measured step (11.5 ms)" in fig[2] and "predicted step (10 ms)" in fig[2]
    parting = blocks[-1][1]
    # the largest difference apart from the step: the exposed wait, 1.5 ms (the allreduce is 0.5 ms off)
    assert parting.startswith(
        "Where they part most: the exposed wait, predicted 3 ms against 4.5 ms measured "
        "(1.5 ms longer in the run, -33%)."
    )
    assert "The whole step: predicted 10 ms, measured 11.5 ms (-13%)." in parting
    assert "200 us of its step on what the simulator does not model" in parting
    # another largest difference planted, another sentence
    doc = planted_doc()
    chosen = doc["heldout"]["rows"][0]
    chosen["terms"] = h.judge({"step": 10 * ms, "update": 1 * ms, "compute": 6 * ms},
                              {"step": 12 * ms, "update": 1.2 * ms, "compute": 8 * ms})  # fmt: skip
    parting = _blocks({sp.KIND: doc}, tmp_path)[0][-1][1]
    assert parting.startswith("Where they part most: the compute, predicted 6 ms against 8 ms measured (2 ms longer")


def test_without_the_ddp_run_the_first_run_with_a_timeline_is_drawn(tmp_path):
    doc = planted_doc()
    del doc["heldout"]["rows"][0]
    blocks, _ = _blocks({sp.KIND: doc}, tmp_path)
    (fig,) = [b for b in blocks if b[0] == "fig"]
    assert fig[2].startswith(f"One step of {PER} (the first run")
    for r in doc["heldout"]["rows"]:
        r.pop("timeline", None)
    blocks, figs = _blocks({sp.KIND: doc}, tmp_path)
    assert figs == [] and "no timelines" in _text(blocks)


def test_a_missing_document_says_how_to_produce_it(tmp_path):
    blocks, figs = _blocks({}, tmp_path)
    assert blocks[0] == ("h3", sp.SUBTITLE) and figs == []
    assert "'whygpu scaleout --held-out'" in blocks[1][1]
    # with the scale-out run's document unavailable and no held-out one, nothing about it
    unavailable = {"schema": "whygpu.scaleout/1", "available": False, "reason": "no mpi4py"}
    got = report_scaleout.section({"scaleout": unavailable}, tmp_path, [], 6)
    assert not any(b[0] == "h3" for b in got)


def test_the_report_loads_renders_and_embeds_the_held_out_part(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "scaleout_heldout.json").write_text(json.dumps(planted_doc()))
    docs = load_results([res])
    assert set(docs) == {sp.KIND}
    rep = build_report(docs, tmp_path / "report")
    md = Path(rep["markdown"]).read_text()
    html = Path(rep["html"]).read_text()
    assert "### Predicted before it ran" in md and "<h3>Predicted before it ran</h3>" in html
    assert f"| {PER} (run: model error: update) | step (within 15%) | 10 | 10.5 | -5% | ok |" in md
    assert "|  | update (within 25% or 500 us) | 1 | 2 | -50% | model error: update |" in md
    assert rep["figures"] == [str(tmp_path / "report" / sp.FIGURE)]
    assert len(re.findall(r"<img alt='Figure \d+' src='data:image/png;base64,", html)) == 1


# ---- the extrapolation's sources, under its figure -----------------------------------------------
@pytest.fixture(scope="module")
def scaleout_doc():
    from .test_report_consistency import scaleout_doc as make

    with pytest.MonkeyPatch.context() as mp:
        return make(mp)


def test_the_scale_out_section_carries_the_held_out_part_or_the_how_to(scaleout_doc, tmp_path):
    blocks = report_scaleout.section({"scaleout": scaleout_doc}, tmp_path, [], 6)
    at = blocks.index(("h3", sp.SUBTITLE))
    assert "'whygpu scaleout --held-out'" in blocks[at + 1][1]
    blocks = report_scaleout.section({"scaleout": scaleout_doc, sp.KIND: planted_doc()}, tmp_path, [], 6)
    at = blocks.index(("h3", sp.SUBTITLE))
    assert blocks[at + 3][0] == "table" and any(b[0] == "fig" and b[1] == sp.FIGURE for b in blocks)


def test_the_extrapolations_sources_are_listed_when_present(scaleout_doc, tmp_path):
    doc = copy.deepcopy(scaleout_doc)
    ex = doc["extrapolation"]
    ex.pop("sources", None)
    for c in ex["curves"]:
        c.pop("sources", None)
    plain = report_scaleout.section({"scaleout": doc}, tmp_path, [], 6)
    assert not any(b[0] == "p" and b[1].startswith("The extrapolated curves are the step simulator's") for b in plain)
    ex["sources"] = {"compute": "public figure: 50 TFLOP/s", "update": "measured here: the update per byte",
                     "collectives": {"allreduce": "public figure: NVLink 450 GB/s"},
                     "interference": "assumed: none between the GPU's kernels and NCCL"}  # fmt: skip
    for c in ex["curves"]:
        c["sources"] = {"compute": "measured here" if c["device"] == "cpu" else "public figure: H100",
                        "interference": "not measured" if c["device"] == "cpu" else "assumed: none"}  # fmt: skip
    blocks = report_scaleout.section({"scaleout": doc}, tmp_path, [], 6)
    at = next(i for i, b in enumerate(blocks) if b[0] == "fig" and b[1] == "scaleout.png")
    p = blocks[at + 1][1]
    assert p.startswith("The extrapolated curves are the step simulator's")
    assert "compute: public figure: 50 TFLOP/s" in p and "collectives: allreduce: public figure: NVLink 450 GB/s" in p
    tab = blocks[at + 2]
    assert tab[0] == "table" and tab[1] == ("curves", "compute", "interference")
    assert {r[1:] for r in tab[2]} == {("measured here", "not measured"), ("public figure: H100", "assumed: none")}
    names = " ".join(r[0] for r in tab[2])
    assert all(f"{c['system']}: {c['model']}" in names for c in ex["curves"])
    weak = blocks[at + 3][1]
    assert weak.startswith("Assumed or not measured") and "interference" in weak


# ---- the figure ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "timeline",
    [
        {"measured": [], "simulated": []},
        {"measured": None},
        {"measured": MEASURED, "simulated": []},
        {"measured": [e for e in MEASURED if e["lane"] == "compute"], "simulated": SIMULATED},
    ],
)
def test_the_timeline_figure_draws_any_event_lists(timeline, tmp_path):
    path = plot_timeline(timeline, tmp_path / "t.png", label="planted")
    assert Path(path).stat().st_size > 5_000
    fig = timeline_figure(timeline, label="planted")
    top, bottom = fig.axes[:2]
    assert top.get_shared_x_axes().joined(top, bottom)
    assert "measured (rank 0)" in top.get_title(loc="left") and "simulated" in bottom.get_title(loc="left")
    assert fig.get_suptitle().startswith("planted: one step, measured (rank 0) above, simulated below")
    for ax, what in ((top, "measured"), (bottom, "simulated")):
        events = timeline.get(what) or []
        assert len(ax.patches) == len(events)
        for lane in ("compute", "communication"):
            empty = not [e for e in events if (e["lane"] == "compute") == (lane == "compute")]
            assert empty == any(t.get_text() == f"(no {lane} events)" for t in ax.texts)


def test_the_timeline_figure_places_colours_and_marks_each_event(tmp_path):
    sim = [Event(e["name"], e["lane"], e["start_s"], e["end_s"], e["kind"]) for e in SIMULATED]  # simulator's
    fig = timeline_figure({"measured": MEASURED, "simulated": sim}, label="planted")
    top, bottom = fig.axes[:2]
    for ax, events in ((top, MEASURED), (bottom, SIMULATED)):
        got = sorted((round(p.get_x(), 9), round(p.get_width(), 9), p.get_y() + p.get_height() / 2) for p in ax.patches)
        want = sorted(
            (
                round(1e3 * e["start_s"], 9),
                round(1e3 * (e["end_s"] - e["start_s"]), 9),
                1 if e["lane"] == "compute" else 0,
            )
            for e in events
        )
        assert got == want
    exposed = next(p for p in top.patches if round(p.get_x(), 6) == 6.0 and p.get_y() > 0.5)
    assert exposed.get_hatch() == KINDS["exposed"][1]
    # the steps: where each compute lane ends, on both panels
    for ax in (top, bottom):
        assert sorted(round(ln.get_xdata()[0], 9) for ln in ax.lines) == [10.0, 11.5]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "measured step: 11.5 ms" in labels and "predicted step: 10 ms" in labels
    assert KINDS["exposed"][2] in labels and KINDS["other"][2] in labels and KINDS["loss"][2] not in labels
    # an unknown kind gets a colour and a legend entry of its own
    fig = timeline_figure({"measured": [_ev("p2p", "comm", 0.0, 1 * ms, "send_recv_new")], "simulated": []})
    assert "send recv new" in [t.get_text() for t in fig.legends[0].get_texts()]
