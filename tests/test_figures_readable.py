"""The report's figures a student can read on any CPU (issue 23): the ladder's step labels are the heights
of the bars that are drawn (issue 32: the speed-up at one size, the table's), every series has its own
colour, and the roofs' labels sit clear of the measured markers.  Every document here is planted by hand:
nothing is timed, and no figure depends on this machine's speed."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from whygpu import plots  # noqa: E402
from whygpu._registry import KERNELS  # noqa: E402
from whygpu.bench.ladder_results import ladder_summary, step_text  # noqa: E402
from whygpu.plots import roofline as plots_roofline  # noqa: E402
from whygpu.plots._common import _marker_boxes, _renderer, kernel_color  # noqa: E402

from ._support import planted_ladder_record as _rec  # noqa: E402

PEAK = {"arch": "planted", "threads": 2, "gflops_1t": 120.0, "gflops_all": 240.0}


def ladder_doc() -> dict:
    """The issue's run: naive skipped above n=512 and reordered falling out of the caches at n=2048, so
    the step at one size (x8.6 at n=512) is not the ratio of the bars drawn (x4.3); blocked is measured
    up to n=1024 only; NumPy on 1 and 2 threads near the FMA peaks, right under their labels' old place."""
    rates = {
        "naive": {256: 2.0, 512: 1.0},
        "reordered": {256: 9.0, 512: 8.6, 1024: 6.0, 2048: 4.3},
        "blocked": {256: 8.0, 512: 7.5, 1024: 7.0},
        "packed": {256: 90.0, 512: 100.0, 1024: 105.0, 2048: 110.0},
        "openmp": {256: 150.0, 512: 190.0, 1024: 205.0, 2048: 215.0},
        "numpy-1t": {256: 100.0, 512: 108.0, 1024: 112.0, 2048: 115.0},
        "numpy-2t": {256: 160.0, 512: 200.0, 1024: 220.0, 2048: 232.0},
    }
    meas = [
        _rec(k, n, g, threads=2 if k in ("openmp", "numpy-2t") else 1) for k, by in rates.items() for n, g in by.items()
    ]
    doc = {
        "schema": "whygpu.ladder/1",
        "machine": {"cpu": {"model": "planted CPU", "cores": 2, "arch": "avx2", "caches": {}}},
        "params": {"sizes": [256, 512, 1024, 2048], "kernels": list(rates), "dtype": "float32", "threads": 2},
        "peak": PEAK,
        "measurements": meas,
        "skipped": [],
        "errors": {},
    }
    doc["summary"] = ladder_summary(doc)
    return doc


def _saved(monkeypatch) -> list:
    saved: list = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    return saved


def test_each_step_label_is_the_bars_height_and_the_tables_speed_up(monkeypatch):
    """A bar is one rung's speed-up over the rung before at one size: the label on it is its height, and the
    same figure as the table's speed-up column (issue 32: not a ratio of two bars at two sizes beside it)."""
    doc = ladder_doc()
    saved = _saved(monkeypatch)
    plots.plot_ladder_steps(doc, "unused.png")
    ax = saved[0].axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    heights = [p.get_height() for p in ax.patches]
    labels = {round(t.get_position()[0]): t.get_text() for t in ax.texts}
    rows = {r["kernel"]: r for r in doc["summary"]["rows"]}
    checked = 0
    for i, tick in enumerate(ticks):
        r = rows[tick.split("\n")[0]]
        assert heights[i] == pytest.approx(r["speedup_prev"], rel=1e-9)
        assert f"vs {r['prev']}" in tick and f"n={r['speedup_n']}" in tick
        shown = labels[i]
        assert step_text(r).startswith(shown.removeprefix("≈ ").split(" ")[0] + " vs " + r["prev"]), (tick, shown)
        checked += 1
    assert checked == len([r for r in rows.values() if "speedup_prev" in r]) >= 4
    # the case: reordered over naive is x8.6 at n=512 -- not the x4.3 of its bar (n=2048) over naive's
    i = next(i for i, t in enumerate(ticks) if t.startswith("reordered"))
    assert labels[i] == "x8.60" and step_text(rows["reordered"]).startswith("x8.60 vs naive at n=512")


def test_every_series_has_its_own_colour():
    names = [k for k in KERNELS] + ["numpy-1t", "numpy-2t", "cublas"]
    colours = {n: kernel_color(n) for n in names}
    dup = {c: [n for n in names if colours[n] == c] for c in set(colours.values())}
    assert all(len(v) == 1 for v in dup.values()), {c: v for c, v in dup.items() if len(v) > 1}
    assert kernel_color("numpy-2t") == kernel_color("numpy-8t") != kernel_color("numpy-1t")
    assert kernel_color("numpy") == kernel_color("numpy-1t")  # the training back end keeps NumPy's purple


def _overlaps(ax, texts) -> list[str]:
    renderer = _renderer(ax.figure)
    boxes = _marker_boxes(ax, pad_px=0.0)
    return [t.get_text() for t in texts if any(t.get_window_extent(renderer).overlaps(b) for b in boxes)]


def test_the_fma_peak_labels_cover_no_marker(monkeypatch):
    saved = _saved(monkeypatch)
    plots.plot_ladder(ladder_doc(), "unused.png")
    ax = saved[0].axes[0]
    peaks = [t for t in ax.texts if t.get_text().startswith("FMA peak")]
    assert len(peaks) == 2 and _overlaps(ax, peaks) == []
    r = _renderer(ax.figure)
    a, b = (t.get_window_extent(r) for t in peaks)
    assert not a.overlaps(b)


def _roofline_doc() -> dict:
    """Roofs of a Zen 3 as in the issue, with a point planted right where the L2 label used to go."""
    compute = {"interpreter": 0.08, "scalar": 2.5, "simd_baseline": 30.0, "simd_1t": 120.0, "simd_all": 240.0}
    bw = {"L2": 112.0, "L3": 60.0, "DRAM": 20.0}
    top = compute["simd_all"]
    x_l2 = top / 4 / bw["L2"] * 1.1  # the old label's left edge, on the L2 diagonal
    pts = [
        {"kernel": "reordered", "n": 1024, "intensity": x_l2 * 1.3, "measured_gflops": top / 4.3},
        {"kernel": "blocked", "n": 1024, "intensity": x_l2 * 1.8, "measured_gflops": top / 4.6},
        {"kernel": "naive", "n": 512, "intensity": 0.25, "measured_gflops": 1.0},
        {"kernel": "packed", "n": 1024, "intensity": 40.0, "measured_gflops": 100.0},
        {"kernel": "numpy-1t", "n": 1024, "intensity": 170.0, "measured_gflops": 112.0},
    ]
    for p in pts:
        p.update(device="cpu", predicted_gflops=p["measured_gflops"] * 1.2, fraction_of_roof=0.83)
    return {
        "machine": {"cpu": {"model": "planted CPU", "cores": 2, "arch": "avx2"}},
        "roofs": {"compute": compute, "bandwidth": {"1": bw, "all": bw}, "threads": 2},
        "points": pts,
    }


def test_the_roofline_labels_cover_no_marker(monkeypatch):
    saved = _saved(monkeypatch)
    plots_roofline.plot_roofline(_roofline_doc(), "unused.png")
    ax = saved[0].axes[0]
    texts = [t for t in ax.texts if "GB/s" in t.get_text() or "GFLOP/s" in t.get_text()]
    assert any(t.get_text().startswith("L2 112 GB/s") for t in texts)
    assert _overlaps(ax, texts) == []


# ---------------------------------------------------------------- why blocking does (not) pay here
def _blocked_vs_reordered(ratio: float, n: int = 1024) -> dict:
    """A summary where blocked is `ratio` times reordered at n, with spreads that overlap when ratio ~ 1."""
    doc = ladder_doc()
    doc["measurements"] = [m for m in doc["measurements"] if m["kernel"] in ("naive", "reordered", "blocked")]
    doc["measurements"] = [m for m in doc["measurements"] if m["kernel"] != "blocked"] + [
        _rec("blocked", m["n"], m["gflops"] * ratio) for m in doc["measurements"] if m["kernel"] == "reordered"
    ]
    doc["params"]["kernels"] = ["naive", "reordered", "blocked"]
    doc["summary"] = ladder_summary(doc)
    return doc


ZEN3 = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 32 << 20}


def test_blocking_not_paying_is_explained_from_this_machines_caches(tmp_path):
    from whygpu.bench.ladder_results import blocking_text
    from whygpu.report.ladder import section

    doc = _blocked_vs_reordered(0.83)  # the x0.83 at n=2048: B is 16 MiB, inside a 32 MiB L3
    doc["machine"]["cpu"]["caches"] = ZEN3
    text = blocking_text(doc["summary"], ZEN3, "float32", {"L3": 60.0})
    assert text.startswith("Cache blocking did not beat reordered here (blocked is x0.83 vs reordered at n=2048")
    assert "slower, as its tile loops cost more than they save" in text
    assert "B is 16 MiB (float32): larger than the 512 KiB L2, but inside the 32 MiB L3" in text
    assert "about 8.60 GB/s at its 4.30 GFLOP/s (n = 2048)" in text  # 4 bytes of B per 2 flops
    assert "the L3 delivers about 60.0 GB/s" in text and "above n = 2896 (float32)" in text
    # the report says it under the steps figure, from the document's own cache sizes
    paras = [b[1] for b in section({"ladder": doc}, tmp_path, [], 2) if b[0] == "p"]
    assert any(p.startswith("Cache blocking did not beat reordered here") and "32 MiB L3" in p for p in paras)
    # B in L2: nothing to save; B beyond L3: DRAM keeps up; a clear win is said as one
    assert "fits in this machine's 64 MiB L2" in blocking_text(doc["summary"], {**ZEN3, "L2": 64 << 20})
    beyond = blocking_text(doc["summary"], {**ZEN3, "L3": 8 << 20}, "float32", {"DRAM": 20.0})
    assert "more than the 8 MiB L3, so reordered re-reads it from DRAM" in beyond and "20.0 GB/s measured" in beyond
    won = _blocked_vs_reordered(1.6)
    assert blocking_text(won["summary"], ZEN3).startswith("Cache blocking pays here: blocked is x1.6")
    assert blocking_text(ladder_summary({**doc, "params": {**doc["params"], "kernels": ["naive"]}}), ZEN3) is None
