"""The report's "Splitting the model" (issue 35): a planted ``scaleout_split.json`` renders the schedules' grids
with their idle cells counted, the pipeline's table with the planted bubbles, steps and verdicts (a planted miss
marked MISS), counts computed from the document (never typed), each strategy's bytes and memory, the H100
layouts of :func:`whygpu.predict.split_layouts.layout_rows`, and its figures; a missing number is said "not
measured"; without the document the section says which command produces it.  Everything is planted: nothing
is timed, no MPI."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from whygpu.plots.split import bubble_figure, strategies_figure  # noqa: E402
from whygpu.predict.split_layouts import layout_rows, split_layouts  # noqa: E402
from whygpu.report import build_report, load_results  # noqa: E402
from whygpu.report import split as rs  # noqa: E402
from whygpu.scaleout_split import SCHEMA, checks  # noqa: E402

MiB = 2**20
MACHINE = {"cpu": {"model": "Planted CPU 9000", "cores": 2, "arch": "avx2"}}
GRIDS = {
    "p=2, m=1": {
        "gpipe": "rank 0 | F0 .  .  B0\nrank 1 | .  F0 B0 .",
        "1f1b": "rank 0 | F0 .  .  B0\nrank 1 | .  F0 B0 .",
    },
    "p=2, m=2": {
        "gpipe": "rank 0 | F0 F1 .  .  B0 B1\nrank 1 | .  F0 F1 B0 B1 .",
        "1f1b": "rank 0 | F0 F1 .  B0 .  B1\nrank 1 | .  F0 B0 F1 B1 .",
    },
}
# (schedule, m): (measured bubble, simulated bubble, measured step, simulated step)
PIPE = {
    ("gpipe", 1): (0.51, 0.505, 0.100, 0.098),
    ("1f1b", 1): (0.52, 0.51, 0.100, 0.097),
    ("gpipe", 2): (0.36, 0.34, 0.080, 0.078),
    ("1f1b", 2): (0.35, 0.34, 0.080, 0.079),
    ("gpipe", 4): (0.30, 0.22, 0.070, 0.069),  # the bubble misses: 0.30 against 0.2
    ("1f1b", 4): (0.23, 0.22, 0.070, 0.050),  # the step misses: -29%
}


def _rank(params: int, stash: int | None = None, peak: int | None = None) -> dict:
    e = {"params_bytes": params, "grads_bytes": params, "optimizer_bytes": 2 * params}
    if stash is not None:
        e.update(stash_peak=peak, stash_peak_bytes=stash)
    return e


def _pp(schedule: str, m: int) -> dict:
    b, sim, step, pred = PIPE[(schedule, m)]
    peaks = [m, m] if schedule == "gpipe" else [min(m, 2), 1]
    return {
        "strategy": "pp", "schedule": schedule, "micro_batches": m, "step_s": step, "bubble": b,
        "bubble_formula": 1 / (m + 1), "predicted_bubble": sim, "predicted_step_s": pred,
        "terms": {"forward_s": [0.010, 0.010], "backward_s": [0.020, 0.015], "message_s": 0.0001},
        "stash_peak_formula": peaks,
        "ranks": [_rank(3 * MiB, peaks[0] * MiB, peaks[0]), _rank(2 * MiB, peaks[1] * MiB // 2, peaks[1])],
        "bytes_per_step": 1 * MiB,
    }  # fmt: skip


def planted_doc(layouts: dict | None = None) -> dict:
    runs = [
        {"strategy": "dp", "step_s": 0.050, "bytes_per_step": 5 * MiB, "ranks": [_rank(5 * MiB)] * 2},
        {"strategy": "zero1", "step_s": 0.052, "bytes_per_step": 10 * MiB,
         "ranks": [dict(_rank(5 * MiB), optimizer_bytes=5 * MiB)] * 2},
        {"strategy": "tp", "step_s": 0.060, "bytes_per_step": 2 * MiB, "ranks": [_rank(5 * MiB // 2)] * 2},
    ]  # fmt: skip
    runs += [_pp(s, m) for m in (1, 2, 4) for s in ("gpipe", "1f1b")]
    doc = {
        "schema": SCHEMA, "ranks": 2, "layers": [64, 128, 128, 32], "batch": 64, "steps": 3, "threads": 1,
        "backend": "packed", "optimizer": "adam", "runs": runs, "machine": MACHINE, "grids": GRIDS,
    }  # fmt: skip
    doc["checks"] = checks(doc)
    doc["layouts"] = layouts
    return doc


@pytest.fixture(scope="module")
def layouts() -> dict:
    return split_layouts()


def _section(doc: dict | None, tmp_path: Path, others: dict | None = None) -> tuple[list, list[str]]:
    figs: list[str] = []
    docs = dict(others or {})
    if doc is not None:
        docs[rs.KIND] = doc
    return rs.section(docs, tmp_path, figs, 7), figs


def _text(blocks: list) -> str:
    return "\n".join(b[1] if b[0] in ("p", "pre") else b[2] if b[0] == "fig" else "" for b in blocks)


def _table(blocks: list, first: str) -> tuple[tuple, list[tuple]]:
    (t,) = [b for b in blocks if b[0] == "table" and b[1][0] == first]
    return t[1], t[2]


def test_the_counts_are_computed_from_the_document(tmp_path):
    blocks, _ = _section(planted_doc(), tmp_path)
    text = _text(blocks)
    assert (
        "Bubble within 0.05 of the formula: 5 of 6; step simulated within 15% of the measured: 5 of 6; "
        "peak stash as the schedule says: 6 of 6." in text
    )
    # other numbers, other counts: two more bubbles off, a stash unlike the schedule's, a tighter tolerance
    doc = planted_doc()
    for r in doc["runs"]:
        if r.get("micro_batches") == 2:
            r["bubble"] = 0.45
    doc["runs"][-1]["ranks"][0]["stash_peak"] = 3
    doc["checks"] = checks(doc)
    doc["checks"]["step_tol"] = 0.021
    text = _text(_section(doc, tmp_path)[0])
    assert "Bubble within 0.05 of the formula: 3 of 6; step simulated within 2% of the measured: 3 of 6" in text
    assert "peak stash as the schedule says: 5 of 6." in text


def test_the_table_marks_a_planted_miss(tmp_path):
    head, rows = _table(_section(planted_doc(), tmp_path)[0], "schedule")
    assert head[:6] == ("schedule", "m", "bubble measured", "formula", "|diff|", "within 0.05")
    assert head[10] == "within 15%"
    by = {(r[0], r[1]): r for r in rows}
    assert len(rows) == 6
    assert by[("GPipe", "4")][2:6] == ("0.300", "0.200", "0.100", "MISS")
    assert by[("1F1B", "4")][7:11] == ("70 ms", "50 ms", "-29%", "MISS")
    assert by[("GPipe", "1")][2:] == ("0.510", "0.500", "0.010", "ok", "0.505", "100 ms", "98 ms", "-2%", "ok", "ok")
    assert [r[5] for r in rows].count("MISS") == 1 and [r[10] for r in rows].count("MISS") == 1
    # the sentences name the largest gap and how the simulator fared, from the same numbers
    text = _text(_section(planted_doc(), tmp_path)[0])
    assert "The largest gap: GPipe at m = 4, 0.300 measured against 0.200 (the simulator said 0.220)." in text
    assert "closer to the measurement than the formula in 6 of 6 runs" in text
    assert "GPipe's measured bubble fell from 0.510 at m = 1 to 0.300 at m = 4 (the formula: 0.500 to 0.200)" in text
    assert "a stage's backward took x1.5 to x2 its forward" in text
    assert "The simulated step is shorter than the measured one in 6 of 6 runs." in text
    # the one miss of the formula, with what was measured about it (checks' why)
    assert (
        "Where the measured bubble missed the formula, what was measured: GPipe at m = 4: unequal stages: rank 0's "
        "forward + backward took 20% longer than rank 1's" in text
    )
    # a bubble that grows with m: no claim that it fell
    doc = planted_doc()
    doc["runs"][-2]["bubble"] = 0.6
    doc["checks"] = checks(doc)
    text = _text(_section(doc, tmp_path)[0])
    assert "More micro-batches, a smaller bubble" not in text
    assert (
        "From the fewest micro-batches to the most: GPipe's measured bubble rose from 0.510 at m = 1 to 0.600" in text
    )


def test_a_missing_number_is_not_measured(tmp_path):
    doc = planted_doc()
    for r in doc["runs"]:
        if r["strategy"] == "pp" and r["micro_batches"] == 2:
            del r["predicted_bubble"], r["predicted_step_s"]
    for c in doc["checks"]["pipeline"]:
        if c["micro_batches"] == 2:
            del c["step_error"]
    del doc["checks"]["pipeline"][0]["bubble"]
    doc["runs"][3].pop("bubble")
    blocks, _ = _section(doc, tmp_path)
    _, rows = _table(blocks, "schedule")
    assert rows[0][2] == rows[0][4] == rows[0][5] == "not measured"
    two = [r for r in rows if r[1] == "2"]
    assert all(r[6] == r[8] == r[9] == r[10] == "not measured" for r in two)
    assert "Bubble within 0.05 of the formula: 4 of 5 (1 not measured)" in _text(blocks)
    # no checks at all (the pipeline not asked for) and no machine recorded
    doc = planted_doc()
    doc["checks"] = None
    doc["runs"] = doc["runs"][:3]
    del doc["machine"]
    text = _text(_section(doc, tmp_path)[0])
    assert "The pipeline: not measured in this run" in text
    assert "Measured on a machine the document does not record" in text


def test_without_the_document_the_section_says_which_command(tmp_path):
    assert _section(None, tmp_path) == ([], [])  # no scale-out story at all: nothing
    blocks, figs = _section(None, tmp_path, {"scaleout": {"available": False}})
    assert blocks[0] == ("h2", f"7. {rs.TITLE}") and figs == []
    assert "'whygpu scaleout --strategy dp,zero1,tp,pp --ranks 2'" in _text(blocks)
    assert "pip install mpi4py mpich" in _text(blocks)


def test_the_grids_are_shown_and_their_idle_cells_counted(tmp_path):
    blocks, _ = _section(planted_doc(), tmp_path)
    pres = [b[1] for b in blocks if b[0] == "pre"]
    assert len(pres) == 2 and "1F1B, p=2, m=2:\nrank 0 | F0 F1 .  B0 .  B1" in pres[1]
    text = _text(blocks)
    assert "each dot a step the rank sits idle -- the bubble" in text
    assert (
        "p=2, m=2: GPipe 4 of 12 cells idle (0.333), 1F1B 4 of 12 cells idle (0.333); (p - 1)/(m + p - 1) = 0.333"
        in text
    )
    assert "1F1B does not shrink the bubble" in text
    # a grid whose dots are not the formula's: the claim is not made
    doc = planted_doc()
    doc["grids"]["p=2, m=2"]["1f1b"] = "rank 0 | F0 F1 B0 B1\nrank 1 | .  F0 B0 F1 B1 ."
    text = _text(_section(doc, tmp_path)[0])
    assert "1F1B 2 of 10 cells idle (0.200)" in text and "does not shrink the bubble" not in text


def test_each_strategys_bytes_and_memory_come_from_the_document(tmp_path):
    blocks, _ = _section(planted_doc(), tmp_path)
    head, rows = _table(blocks, "strategy")
    assert head[5] == "Adam state MiB"
    by = {r[0]: r for r in rows}
    assert by["dp"] == ("dp", "50 ms", "5.0", "5.0", "5.0", "10.0", "-", "20.0")
    assert by["zero1"][2] == "10.0" and by["zero1"][5] == "5.0"
    assert by["pp 1f1b m=4"][6] == "2.0" and by["pp 1f1b m=4"][7] == "14.0"
    text = _text(blocks)
    assert "zero1 sends 10.0 MiB a step" in text and "x2 dp's" in text
    assert "tp sends 2.0 MiB a step" in text and "x0.4 dp's" in text
    assert "parameters x0.5, gradients x0.5, optimizer state x0.5" in text
    assert "GPipe at m = 4: rank 0 4 (4.0 MiB), rank 1 4 (2.0 MiB); 1F1B at m = 4: rank 0 2 (2.0 MiB)" in text


def test_the_layouts_table_is_layout_rows_with_its_why_and_sources(tmp_path, layouts):
    blocks, _ = _section(planted_doc(layouts), tmp_path)
    assert ("h3", "On H100 nodes: which layout (a model, not measured)") in blocks
    head, rows = _table(blocks, "dp x tp x pp")
    want = layout_rows(layouts)
    assert list(head) == want[0] and [list(r) for r in rows] == want[1:]
    text = _text(blocks)
    assert f"The fastest layout that fits: {layouts['fastest']}. Why: {layouts['why']}" in text
    _, src = _table(blocks, "input")
    assert [r[0] for r in src] == [i["name"] for i in layouts["inputs"]]
    assert all(r[2] == i["source"] for r, i in zip(src, layouts["inputs"]))
    assumed = [i["name"] for i in layouts["inputs"] if i["source"].startswith("assumed")]
    assert assumed and "where the table is weakest: " + ", ".join(assumed) + "." in text
    # without them, said so
    text = _text(_section(planted_doc(None), tmp_path)[0])
    assert "The layouts: not in this document" in text


def test_the_figures_are_written_and_draw_the_document(tmp_path):
    doc = planted_doc()
    blocks, figs = _section(doc, tmp_path)
    assert figs == [str(tmp_path / rs.FIGURE), str(tmp_path / rs.FIGURE_STRATEGIES)]
    assert all(Path(f).stat().st_size > 10_000 for f in figs)
    caps = [b[2] for b in blocks if b[0] == "fig"]
    assert len(caps) == 2 and all("Planted CPU 9000 (2 cores, avx2)" in c for c in caps)
    left, right = bubble_figure(doc).axes[:2]
    lines = {ln.get_label(): ln for ln in left.lines}
    measured = lines["gpipe: measured"]
    assert [round(y, 6) for y in measured.get_ydata()] == [0.51, 0.36, 0.30]
    assert [round(y, 6) for y in lines["1f1b: simulated from terms measured apart"].get_ydata()] == [0.51, 0.34, 0.22]
    formula = lines["formula (p - 1)/(m + p - 1), p = 2"]
    assert all(abs(y - 1 / (x + 1)) < 1e-12 for x, y in zip(formula.get_xdata(), formula.get_ydata()))
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "2", "4"]
    steps = {ln.get_label(): ln for ln in right.lines}
    assert [round(y, 6) for y in steps["1f1b: simulated"].get_ydata()] == [97.0, 79.0, 50.0]
    bars = strategies_figure(doc).axes[0]
    assert [round(p.get_width(), 6) for p in bars.patches[:3]] == [5.0, 10.0, 2.0]


def test_the_report_loads_and_renders_the_section(tmp_path, layouts):
    res = tmp_path / "results"
    res.mkdir()
    (res / "scaleout_split.json").write_text(json.dumps(planted_doc(copy.deepcopy(layouts))))
    docs = load_results([res])
    assert set(docs) == {rs.KIND}
    rep = build_report(docs, tmp_path / "report")
    md = Path(rep["markdown"]).read_text()
    html = Path(rep["html"]).read_text()
    assert "## 1. Splitting the model" in md and "<h3>The bubble against the number of micro-batches</h3>" in html
    assert "| GPipe | 4 | 0.300 | 0.200 | 0.100 | MISS |" in md
    assert len(re.findall(r"<img alt='Figure \d+' src='data:image/png;base64,", html)) == 2
    assert "<pre>GPipe, p=2, m=1:" in html
    # its words are in the glossary
    assert "**bubble**" in md and "**micro-batch**" in md and "**GPipe, 1F1B**" in md


# ---- the demo ------------------------------------------------------------------------------------------------------
def test_the_demo_skips_the_split_without_mpi_and_saves_it_with(tmp_path, monkeypatch):
    """Without MPI the demo says so in one line and writes nothing; with it, the document run_split returns is
    saved as scaleout_split.json with the plan's settings, and the report shows the section."""
    import whygpu.scaleout_split as so_split
    from whygpu.bench import scaleout as bso
    from whygpu.cli.demo import DEMO_PLANS, _split

    notes: list[str] = []
    monkeypatch.setenv(bso.NO_MPI_ENV, "1")
    _split(DEMO_PLANS["quick"], tmp_path, notes.append)
    assert not (tmp_path / "scaleout_split.json").exists()
    assert len(notes) == 1 and notes[0].startswith("no strategy comparison (splitting the model): ")
    assert "pip install mpi4py mpich" in notes[0]
    asked: dict = {}

    def fake(**kw):
        asked.update(kw)
        return planted_doc()

    monkeypatch.setattr(bso, "mpi_status", lambda: {"available": True, "mpiexec": "mpiexec", "reason": None})
    monkeypatch.setattr(so_split, "run_split", fake)
    for name in ("quick", "full"):
        plan = DEMO_PLANS[name]
        _split(plan, tmp_path, notes.append)
        assert asked["ranks"] == 2 and asked["layers"] == plan["split_layers"] and asked["micro"] == plan["split_micro"]
        assert (asked["batch"], asked["steps"]) == (plan["split_batch"], plan["split_steps"])
    assert DEMO_PLANS["quick"]["split_steps"] <= DEMO_PLANS["full"]["split_steps"]
    assert json.loads((tmp_path / "scaleout_split.json").read_text())["schema"] == SCHEMA
    rep = build_report(load_results([tmp_path / "scaleout_split.json"]), tmp_path / "report")
    assert "## 1. Splitting the model" in Path(rep["markdown"]).read_text()
