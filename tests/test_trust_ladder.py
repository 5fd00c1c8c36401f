"""`whygpu ladder` draws no lesson from a disturbed figure (issue 19): the rungs of
one size are timed interleaved, each block is quiet-guarded and recorded, a rung
above 100% of the FMA peak is measured once more with the peak, and a figure
still impossible is flagged ``disturbed``, shown as such and left out of the
conclusions; a speed-up whose spreads overlap is called noise, never faster.

Impossible figures and spreads are planted (a fake peak, a fake timing, a
hand-made document), so every check is deterministic; nothing asserts a speed."""

from __future__ import annotations

import copy
import json
import statistics

import pytest

import whygpu.bench.ladder as ladder_mod
import whygpu.bench.trust as trust_mod
from whygpu.bench.ladder import run_ladder
from whygpu.bench.ladder_results import ladder_summary, left_out_text, pct_text, step_text
from whygpu.bench.measure import time_interleaved
from whygpu.bench.trust import DISTURBED

# Far above anything a CPU reaches, so no honest rung is ever impossible against it.
REAL_PEAK = {"arch": "planted", "threads": 2, "gflops_1t": 1e6, "gflops_all": 2e6}
# Far below anything a rung reaches: every rung is above 100% of it.
LOW_PEAK = {"arch": "planted", "threads": 2, "gflops_1t": 1e-6, "gflops_all": 2e-6}
SMALL = {"sizes": [32], "repeats": 2, "budget": 0.1, "references": False}


class FakePeaks:
    """fma_peaks, returning the planted peaks in turn (the last one from then on), counting calls."""

    def __init__(self, *peaks):
        self.peaks = list(peaks)
        self.calls = 0

    def __call__(self, threads=None, *, quick=False, arch=None):
        self.calls += 1
        return dict(self.peaks[min(self.calls, len(self.peaks)) - 1])


def _labels(doc):
    return [b["label"] for b in doc["quiet"]["blocks"]]


def _again(doc):
    return [lab for lab in _labels(doc) if lab.endswith("(again)")]


# ---------------------------------------------------------------- measured ladders
def test_a_peak_measured_low_is_measured_again_once_and_nothing_is_flagged(monkeypatch):
    peaks = FakePeaks(LOW_PEAK, REAL_PEAK)
    monkeypatch.setattr(ladder_mod, "fma_peaks", peaks)
    doc = run_ladder(kernels=["naive", "packed"], **SMALL)
    # naive came out impossible against the low peak: the peak and naive were measured once more;
    # packed, measured against the peak as re-measured, was possible the first time
    assert peaks.calls == 2
    assert _again(doc) == ["FMA peak (again)", "naive n=32 (again)"]
    rec = {m["kernel"]: m for m in doc["measurements"]}
    assert rec["naive"]["remeasured"] and not rec["naive"]["disturbed"]
    assert rec["naive"]["first"]["gflops"] > 0
    assert not rec["packed"]["remeasured"] and not rec["packed"]["disturbed"]
    assert doc["peak"]["gflops_1t"] == REAL_PEAK["gflops_1t"]  # the higher of the two kept
    assert doc["peak_remeasured"]["cpu"]["first"]["gflops_1t"] == LOW_PEAK["gflops_1t"]
    s = doc["summary"]
    assert s["left_out"] == [] and left_out_text(s) is None
    assert not any(r["disturbed"] for r in s["rows"])
    assert s["rows"][1]["prev"] == "naive" and s["span"]["slowest"] == "naive"


def test_a_peak_low_both_times_flags_every_rung_and_concludes_nothing(monkeypatch):
    peaks = FakePeaks(LOW_PEAK)
    monkeypatch.setattr(ladder_mod, "fma_peaks", peaks)
    doc = run_ladder(kernels=["naive", "packed"], **SMALL)
    assert peaks.calls == 2  # measured, then once more -- not again for the second rung
    assert _again(doc) == ["FMA peak (again)", "naive n=32 (again)", "packed n=32 (again)"]
    for m in doc["measurements"]:
        assert m["remeasured"] and m["disturbed"] and DISTURBED in m["disturbed_reason"]
    s = doc["summary"]
    assert {(x["kernel"], x["n"]) for x in s["left_out"]} == {("naive", 32), ("packed", 32)}
    assert all(x["pct_peak"] > 100 for x in s["left_out"])
    assert all(r["disturbed"] and "speedup_prev" not in r for r in s["rows"])
    assert s["span"] is None  # no conclusion drawn from disturbed figures
    text = left_out_text(s)
    assert text is not None and "2 measurements" in text and "left out of the conclusions" in text


def _planted_timing(monkeypatch, kernel: str, seconds: float) -> list[list[str]]:
    """time_interleaved, with `kernel`'s samples replaced by an impossible `seconds`; returns the calls."""
    calls: list[list[str]] = []

    def fake(fns, **kw):
        calls.append(list(fns))
        out = time_interleaved(fns, **kw)
        if kernel in out:
            out[kernel].times = [seconds] * len(out[kernel].times)
        return out

    monkeypatch.setattr(ladder_mod, "time_interleaved", fake)
    return calls


def test_a_rung_impossible_twice_is_flagged_shown_and_left_out(monkeypatch, tmp_path, capsys):
    peaks = FakePeaks({**REAL_PEAK, "gflops_1t": 1000.0, "gflops_all": 2000.0})
    monkeypatch.setattr(ladder_mod, "fma_peaks", peaks)
    calls = _planted_timing(monkeypatch, "packed", 1e-9)  # 2 * 32^3 flops in 1 ns: 65,536 GFLOP/s
    doc = run_ladder(kernels=["naive", "reordered", "packed"], **SMALL)
    assert calls == [["naive", "reordered", "packed"], ["packed"]]  # interleaved; packed once more, alone
    assert peaks.calls == 2
    rec = {m["kernel"]: m for m in doc["measurements"]}
    assert rec["packed"]["disturbed"] and rec["packed"]["remeasured"]
    assert not rec["naive"]["disturbed"] and not rec["reordered"]["disturbed"]
    s = doc["summary"]
    rows = {r["kernel"]: r for r in s["rows"]}
    assert rows["packed"]["disturbed"] and rows["packed"]["pct_peak"] > 100
    assert "speedup_prev" not in rows["packed"]  # no step from a disturbed figure
    assert rows["reordered"]["prev"] == "naive"
    assert s["span"]["fastest"] != "packed" and "packed" not in s["span"].get("tied", [])
    assert [x["kernel"] for x in s["left_out"]] == ["packed"]
    assert "packed at n=32" in left_out_text(s)
    # the CLI table shows it flagged, and says it was left out
    from whygpu.cli.ladder import _print_ladder

    _print_ladder(copy.deepcopy(doc))
    out = capsys.readouterr().out
    per_size, summary = [x for x in out.splitlines() if x.startswith("packed")]
    assert "%: disturbed)" in per_size and "% (disturbed)" in summary
    assert "left out of the conclusions" in out
    # the report section too, and its caption does not call the disturbed rung the fastest
    from whygpu.report.ladder import section

    blocks = section({"ladder": copy.deepcopy(doc)}, tmp_path, [], 1)
    table = next(b for b in blocks if b[0] == "table")
    packed_row = next(row for row in table[2] if row[0] == "packed")
    assert packed_row[5].endswith("% (disturbed)")
    texts = " ".join(str(b[-1]) for b in blocks if b[0] in ("p", "fig"))
    assert "left out of the conclusions" in texts and "fastest rung, packed" not in texts


def test_the_figures_draw_a_disturbed_point_hollow_with_its_own_legend(monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from whygpu import plots

    doc = _doc({"naive": [1.0, 1.1, 1.05], "packed": [0.1, 0.11, 0.1]})
    doc["measurements"][1].update(disturbed=True, disturbed_reason=DISTURBED)
    doc["summary"] = ladder_summary(doc)
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    plots.plot_ladder(doc, "unused.png")
    plots.plot_ladder_steps(doc, "unused.png")
    for fig in saved:
        legend = fig.axes[0].get_legend()
        assert legend is not None and "disturbed (left out)" in [t.get_text() for t in legend.get_texts()]
    hollow = [ln for ln in saved[0].axes[0].lines if ln.get_markerfacecolor() == "none" and len(ln.get_xdata())]
    assert [list(ln.get_xdata()) for ln in hollow] == [[64]]


def test_each_size_is_one_guarded_interleaved_block_with_spreads(monkeypatch):
    monkeypatch.setattr(ladder_mod, "fma_peaks", FakePeaks(REAL_PEAK))
    calls = _planted_timing(monkeypatch, "none", 1.0)
    doc = run_ladder(kernels=["naive", "packed"], sizes=[16, 32], repeats=3, budget=1.0, references=False)
    assert calls == [["naive", "packed"], ["naive", "packed"]]
    assert _labels(doc) == ["FMA peak", "ladder n=16", "ladder n=32"]
    q = doc["quiet"]
    assert q["measured"] and all("during" in b for b in q["blocks"])
    for m in doc["measurements"]:
        assert m["gflops_low"] <= m["gflops"] <= m["gflops_high"]
        assert len(m["times"]) == m["samples"] >= 2  # a spread needs two samples
    by_n = {}
    for m in doc["measurements"]:
        by_n.setdefault(m["n"], set()).add(m["samples"])
    assert all(len(v) == 1 for v in by_n.values())  # the same rounds for every rung of a size
    row = doc["summary"]["rows"][1]
    assert row["speedup_low"] <= row["speedup_prev"] <= row["speedup_high"]
    assert isinstance(row["speedup_clear"], bool)


def test_a_busy_machine_is_recorded_and_cautioned(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ladder_mod, "fma_peaks", FakePeaks(REAL_PEAK))
    monkeypatch.setattr(trust_mod, "sample_load", lambda interval=0.1: {"others": 0.4, "steal": 0.08})
    monkeypatch.setattr(trust_mod, "cpu_times", lambda path="/proc/stat": None)  # 'during': the planted load only
    from whygpu.cli import main

    argv = ["ladder", "--sizes", "16", "--kernels", "naive", "--no-numpy", "--repeats", "2", "--budget", "0.05"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "caution: the machine was not quiet" in err and "40%" in err and "steal" in err
    q = json.loads((tmp_path / "ladder.json").read_text())["quiet"]
    assert q["busy"] and q["others_max"] == 0.4 and q["steal_max"] == 0.08


# ---------------------------------------------------------------- planted documents
def _doc(times: dict[str, list[float]], n: int = 64, peak: dict | None = None) -> dict:
    """A ladder document with the given samples (seconds) per kernel, all at size n, 1 thread."""
    flops = 2 * n**3
    meas = []
    for name, ts in times.items():
        med = statistics.median(ts)
        meas.append(
            {
                "kernel": name,
                "n": n,
                "dtype": "float32",
                "device": "cuda" if name.startswith("cuda") else "cpu",
                "precision": "float32",
                "threads": 1,
                "flops": flops,
                "seconds": med,
                "seconds_min": min(ts),
                "samples": len(ts),
                "times": list(ts),
                "gflops": flops / med / 1e9,
            }
        )
    return {
        "schema": "whygpu.ladder/1",
        "machine": {"cpu": {"model": "planted CPU", "cores": 2, "arch": "x86_64"}},
        "params": {"sizes": [n], "kernels": list(times), "dtype": "float32", "repeats": 3, "budget_s": 1.0},
        "peak": peak or REAL_PEAK,
        "measurements": meas,
        "skipped": [],
        "errors": {},
    }


def test_overlapping_spreads_are_within_the_noise_not_faster(tmp_path, capsys):
    doc = _doc({"naive": [1.0, 1.1, 0.9], "reordered": [0.97, 1.05, 0.93], "packed": [0.1, 0.11, 0.105]})
    s = ladder_summary(doc)
    doc["summary"] = s
    rows = {r["kernel"]: r for r in s["rows"]}
    noisy, clear = rows["reordered"], rows["packed"]
    assert noisy["speedup_clear"] is False and noisy["speedup_low"] < 1 < noisy["speedup_high"]
    assert "within the noise" in step_text(noisy) and "faster" not in step_text(noisy)
    assert clear["speedup_clear"] is True and "noise" not in step_text(clear)
    from whygpu.cli.ladder import _print_ladder

    _print_ladder(copy.deepcopy(doc))
    per_size, line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("reordered")]
    assert "within the noise" in line and "faster" not in line
    from whygpu.report.ladder import section

    blocks = section({"ladder": copy.deepcopy(doc)}, tmp_path, [], 1)
    cap = next(b[2] for b in blocks if b[0] == "fig" and b[1] == "ladder_steps.png")
    assert "Within the noise, so not faster: reordered against naive" in cap
    assert "biggest single step on this machine is reordered" not in cap


def test_a_rung_within_the_noise_of_the_fastest_is_not_called_slower(tmp_path, capsys):
    doc = _doc({"naive": [1.0, 1.1, 0.9], "packed": [0.1, 0.11, 0.105], "openmp": [0.095, 0.12, 0.1]})
    doc["summary"] = s = ladder_summary(doc)
    assert s["span"]["fastest"] == "openmp" and s["span"]["tied"] == ["packed"] and s["span"]["clear"]
    from whygpu.cli.ladder import _print_ladder

    _print_ladder(copy.deepcopy(doc))
    out = capsys.readouterr().out
    assert "Fastest over slowest: openmp" in out and "(packed: within the noise of openmp, so not slower)" in out
    from whygpu.report.ladder import section

    cap = next(b[2] for b in section({"ladder": doc}, tmp_path, [], 1) if b[0] == "fig" and b[1] == "ladder.png")
    assert "The fastest rung, openmp, reached" in cap and "(packed within the noise of it" in cap


def test_the_steps_figure_says_noise_in_plain_numbers(monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from whygpu import plots

    doc = _doc({"naive": [1.0, 1.1, 0.9], "reordered": [0.97, 1.05, 0.93], "packed": [0.0625, 0.07, 0.066]})
    doc["summary"] = ladder_summary(doc)
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    plots.plot_ladder_steps(doc, "unused.png")
    labels = [t.get_text() for t in saved[0].axes[0].texts]
    assert any(lab.endswith("≈ x1.03 (noise)") for lab in labels), labels
    assert "x14.7" in labels, labels  # clear: a plain figure, no '≈'
    assert not any("e+" in lab for lab in labels)


def test_an_old_document_with_an_impossible_figure_is_left_out_too():
    doc = _doc({"naive": [1.0, 1.1], "packed": [1e-9, 1e-9]}, peak={**REAL_PEAK, "gflops_1t": 100.0})
    s = ladder_summary(doc)  # no 'disturbed' flags: written before the check
    assert [x["kernel"] for x in s["left_out"]] == ["packed"]
    assert "not measured again" in s["left_out"][0]["reason"]
    assert s["span"] is None and {r["kernel"]: r for r in s["rows"]}["packed"]["disturbed"]


def test_the_gpu_summary_skips_a_disturbed_rung():
    doc = _doc({"packed": [1.0, 1.1], "cuda_naive": [0.01, 0.011], "cuda_warptile": [1e-4, 1.1e-4]})
    doc["peak"] = {**REAL_PEAK, "gpu_gflops": 1e9}
    doc["measurements"][2].update(disturbed=True, disturbed_reason=DISTURBED)
    g = ladder_summary(doc)["gpu"]
    assert g["best"] == "cuda_naive" and g["vs_cpu"] == pytest.approx(100, rel=0.1) and g["vs_cpu_clear"]


@pytest.mark.parametrize(
    ("pct", "disturbed", "text"),
    [
        (99.96, False, "100%"),
        (143.2, True, "143% (disturbed)"),
        (1234.4, False, "1234%"),
        (5.04, False, "5.0%"),
        (0.00123, False, "0.0012%"),
        (0.0, False, "0%"),
        (float("nan"), False, "n/a"),
    ],
)
def test_percentages_are_plain_numbers(pct, disturbed, text):
    assert pct_text(pct, disturbed) == text


def test_a_slower_rung_on_a_busy_machine_is_not_explained(tmp_path):
    from whygpu.report.ladder import section

    doc = _doc({"naive": [1.0, 1.1, 0.9], "packed": [0.1, 0.11, 0.105], "openmp": [0.5, 0.55, 0.52]})
    doc["summary"] = ladder_summary(doc)

    def caption(quiet):
        d = {**copy.deepcopy(doc), "quiet": quiet}
        return next(b[2] for b in section({"ladder": d}, tmp_path, [], 1) if b[1] == "ladder_steps.png")

    quiet = {"busy": False, "blocks": []}
    assert "openmp is x0.2 of packed here (the roofline section says why)" in caption(quiet)
    busy = caption({**quiet, "busy": True})
    assert "openmp is x0.2 of packed" in busy and "roofline section says why" not in busy
    assert "not quiet" in busy


# ---------------------------------------------------------------- re-measuring without bias
def _timings_in_turn(monkeypatch, kernel: str, seconds: list[float]) -> None:
    """time_interleaved, with `kernel`'s samples planted: seconds[i] for its i-th block (the last repeats)."""
    seen = [0]

    def fake(fns, **kw):
        out = time_interleaved(fns, **kw)
        if kernel in out:
            t = seconds[min(seen[0], len(seconds) - 1)]
            seen[0] += 1
            out[kernel].times = [t, t * 1.02]
        return out

    monkeypatch.setattr(ladder_mod, "time_interleaved", fake)


def test_the_better_of_both_draws_is_kept_like_the_peak(monkeypatch):
    # 2 * 32^3 flops: 65.5 GFLOP/s in 1 us at first -- impossible against the first (disturbed) peak of 10 --
    # then a disturbed 22 GFLOP/s.  The peak measured again is 100: the first draw was possible after all,
    # and is kept; keeping the fresh draw would have pulled the fastest rung down by 3x.
    monkeypatch.setattr(
        ladder_mod, "fma_peaks", FakePeaks({**REAL_PEAK, "gflops_1t": 10.0}, {**REAL_PEAK, "gflops_1t": 100.0})
    )
    _timings_in_turn(monkeypatch, "packed", [1e-6, 3e-6])
    doc = run_ladder(kernels=["packed"], **SMALL)
    rec = doc["measurements"][0]
    assert rec["remeasured"] and not rec["disturbed"] and rec["kept"] == "first"
    assert rec["gflops"] == pytest.approx(2 * 32**3 / 1.01e-6 / 1e9)
    assert rec["again"]["gflops"] < rec["gflops"] and rec["first"]["gflops"] == rec["gflops"]
    assert doc["peak"]["gflops_1t"] == 100.0


def test_a_faster_second_draw_is_kept_and_flagged_when_still_impossible(monkeypatch):
    monkeypatch.setattr(ladder_mod, "fma_peaks", FakePeaks({**REAL_PEAK, "gflops_1t": 10.0}))
    _timings_in_turn(monkeypatch, "packed", [2e-6, 1e-6])
    doc = run_ladder(kernels=["packed"], **SMALL)
    rec = doc["measurements"][0]
    assert rec["remeasured"] and rec["disturbed"] and rec["kept"] == "again"
    assert "kept" in rec["disturbed_reason"] and DISTURBED in rec["disturbed_reason"]


def test_blas_is_held_against_the_best_isa_peak(monkeypatch):
    # whygpu runs portable (WHYGPU_ARCH=portable: 10 GFLOP/s); the CPU's best ISA reaches 100, and OpenBLAS
    # uses it.  NumPy at ~65 GFLOP/s is possible against the best ISA -- against portable it read 655%.
    class ByArch(FakePeaks):
        def __call__(self, threads=None, *, quick=False, arch=None):
            self.calls += 1
            g = 100.0 if arch == "wide" else 10.0
            return {"arch": arch or "portable", "threads": 1, "gflops_1t": g, "gflops_all": g}

    peaks = ByArch()
    monkeypatch.setattr(ladder_mod, "fma_peaks", peaks)
    monkeypatch.setattr(ladder_mod, "cpu_info", lambda: {"arch": "portable", "best_arch": "wide"})
    _timings_in_turn(monkeypatch, "numpy-1t", [1e-6])
    doc = run_ladder(kernels=["numpy"], threads=1, sizes=[32], repeats=2, budget=0.1)
    assert doc["peak"]["best_isa"] == {"arch": "wide", "gflops_1t": 100.0, "gflops_all": 100.0}
    rec = doc["measurements"][0]
    assert rec["kernel"] == "numpy-1t" and not rec["remeasured"] and not rec["disturbed"]
    assert 60 < ladder_mod.pct_of_peak(rec, doc["peak"]) < 70
    # whygpu's own rungs stay against whygpu's ISA
    assert ladder_mod.pct_of_peak({**rec, "kernel": "packed"}, doc["peak"]) > 600
    assert "FMA peak, best ISA" in _labels(doc)
