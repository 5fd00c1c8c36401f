"""``whygpu scaling`` on planted figures: the timing layer (time_interleaved, the FMA probe, the training
step) is replaced by made-up samples, so each guard is checked deterministically -- an impossible speed-up
is measured once more and then flagged and left out of the fit; a figure that is possible the second time
is not flagged; a serial fraction outside [0, 1] is flagged; two thread counts give no fit and say why,
three give one; the 1-thread row off its baseline flags the series; legends and captions use plain numbers;
the quiet guard's record is in the document.  No speed is asserted: every figure here is planted."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from whygpu import _registry
from whygpu.bench import scaling
from whygpu.bench.measure import Timing
from whygpu.bench.scaling import TWO_POINTS, amdahl, check_series, fit_series, percent, run_scaling
from whygpu.bench.trust import DISTURBED

needs_openmp = pytest.mark.skipif(not _registry.KERNELS["openmp"].available, reason="built without OpenMP")


class PlantedRounds:
    """Stands in for time_interleaved: its k-th call returns the k-th planted measurement, seconds by name
    ("1", "2", ..., "baseline"; the last one again when they run out).  A name left out gets the 1-thread
    samples divided by its thread count: ideal scaling."""

    def __init__(self, *measurements: dict[str, list[float]]):
        self.measurements = list(measurements)
        self.calls: list[list[str]] = []

    def __call__(self, fns, *, repeats=5, budget=1.0, contexts=None, expected=None):
        self.calls.append(list(fns))
        plan = self.measurements[min(len(self.calls), len(self.measurements)) - 1]
        one = plan.get("1", [1.0] * repeats)
        return {
            name: Timing(times=list(plan.get(name, [t / (int(name) if name.isdigit() else 1) for t in one])))
            for name in fns
        }


class PlantedPeak:
    """Stands in for the FMA probe: GFLOP/s by thread count, one dict per measurement pass (a pass is
    `per_pass` calls: every thread count and the baseline, in every round)."""

    def __init__(self, per_pass: int, *passes: dict[int, float]):
        self.per_pass, self.passes, self.calls = per_pass, list(passes), 0

    def __call__(self, arch, threads, target_s, samples):
        plan = self.passes[min(self.calls // self.per_pass, len(self.passes) - 1)]
        self.calls += 1
        return plan[threads]


@pytest.fixture
def planted(monkeypatch):
    """Cores as the test says; no machine probe; the real quiet guard (it records, never waits in tests)."""
    monkeypatch.setattr(scaling, "machine_info", lambda: {"cpu": {}})

    def setup(cores: int, rounds: PlantedRounds | None = None, peak: PlantedPeak | None = None):
        monkeypatch.setattr(scaling, "_cpus_available", lambda: cores)
        monkeypatch.setattr(scaling, "check_threads", lambda t, warn=False: int(t))  # counts above the real cores
        monkeypatch.setattr(scaling, "time_interleaved", rounds or PlantedRounds({}))
        if peak is not None:
            monkeypatch.setattr(scaling, "_fma_gflops", peak)

    return setup


def _run(threads, **kw):
    opts = dict(n=8, threads_list=threads, repeats=2, budget=10.0, numpy=False, peak=False)
    opts.update(kw)
    return run_scaling(**opts)


def _printed(doc) -> str:
    from whygpu.cli.scaling import _print_scaling

    buf = io.StringIO()
    with redirect_stdout(buf):
        _print_scaling(doc)
    return buf.getvalue()


def _series(doc, name):
    return next(s for s in doc["series"] if s["name"] == name)


# ---- impossible speed-ups ---------------------------------------------------------------------------


@needs_openmp
def test_fma_x34_on_2_cores_is_flagged_after_exactly_one_remeasure(planted):
    peak = PlantedPeak(6, {1: 10.0, 2: 34.0})  # threads 1, 2 and the baseline, 2 rounds: 6 calls a pass
    planted(2, peak=peak)
    doc = _run([1, 2], peak=True)
    s = _series(doc, "peak")
    assert peak.calls == 12  # measured, then measured once more -- not a third time
    assert s["speedup"] == pytest.approx([1.0, 3.4])
    assert s["remeasured"] and s["disturbed"] == [False, True]
    assert "more than the 2" in s["disturbed_reason"][1]
    assert not s["fitted"] and s["serial_fraction"] is None
    labels = [b["label"] for b in doc["quiet"]["blocks"]]
    assert sum("FMA peak" in x and "measured again" in x for x in labels) == 1
    out = _printed(doc)
    assert "disturbed*" in out and DISTURBED in out
    assert "x3.40 on 2 threads --" in out  # shown flagged, never as a speed-up
    assert "x1.00 faster" not in out


@needs_openmp
def test_flagged_point_is_left_out_of_the_fit(planted):
    # 4 cores, 1-4 threads: the 2-thread point claims x3.4 both times; the others follow f = 10%.
    per_pass = 5 * 2
    good = {p: 10.0 * amdahl(p, 0.1) for p in (1, 2, 3, 4)}
    peak = PlantedPeak(per_pass, {**good, 2: 34.0})
    planted(4, peak=peak)
    s = _series(_run([1, 2, 3, 4], peak=True), "peak")
    assert s["disturbed"] == [False, True, False, False]
    assert s["fitted"] and s["fit_threads"] == [1, 3, 4]
    assert s["serial_fraction"] == pytest.approx(0.1)
    assert "leaving out the disturbed points" in s["fit_note"]


@needs_openmp
def test_impossible_then_possible_is_not_flagged(planted):
    first = {"1": [1.0, 1.0], "2": [0.25, 0.25], "baseline": [1.0, 1.0]}  # x4 on 2 threads
    second = {"1": [1.0, 1.02], "2": [0.55, 0.56], "baseline": [1.01, 1.0]}
    rounds = PlantedRounds(first, second)
    planted(2, rounds)
    s = _series(_run([1, 2]), "openmp")
    assert len(rounds.calls) == 2
    assert s["remeasured"] and s["disturbed"] == [False, False]
    assert s["speedup"][1] == pytest.approx(1 / 0.55, rel=0.03)


@needs_openmp
def test_beyond_the_cores_the_limit_is_the_cores_and_pairs_are_its_own(planted):
    within = {"1": [1.0, 1.0], "2": [0.55, 0.55], "baseline": [1.0, 1.0]}
    beyond = {"1": [2.0, 2.0], "4": [0.6, 0.6]}  # x3.3 on 4 threads: more than 2 cores allow
    rounds = PlantedRounds(within, beyond, beyond)
    planted(2, rounds)
    s = _series(_run([1, 2, 4]), "openmp")
    assert rounds.calls == [["1", "2", "baseline"], ["1", "4"], ["1", "4"]]  # apart, and measured again
    assert s["disturbed"] == [False, False, True]
    assert "2 cores" in s["disturbed_reason"][2]
    assert s["times_1t"][2] == [2.0, 2.0]  # paired with its own block's 1-thread samples


def test_speedups_are_paired_round_by_round():
    # Round 2 ran at half speed for both: the unpaired spreads overlap, the paired ratio does not move.
    chk = check_series([1, 2], {1: [1.0, 2.0], 2: [0.5, 1.0]}, None, 2)
    assert chk["speedup"] == [1.0, 2.0] and chk["speedup_low"][1] == chk["speedup_high"][1] == 2.0
    assert not chk["impossible"]


# ---- the baseline -----------------------------------------------------------------------------------


@needs_openmp
def test_one_thread_row_off_its_baseline_flags_the_series(planted):
    off = {"1": [2.0, 2.1], "2": [1.1, 1.1], "baseline": [1.0, 1.05]}  # openmp on 1 thread = packed, twice as slow?
    rounds = PlantedRounds(off)
    planted(2, rounds)
    s = _series(_run([1, 2]), "openmp")
    assert len(rounds.calls) == 2 and rounds.calls[0][-1] == "baseline"
    assert s["baseline"]["name"] == "packed" and s["baseline"]["differs"]
    assert all(s["disturbed"]) and "baseline" in s["disturbed_reason"][0]


# ---- serial fraction and the fit --------------------------------------------------------------------


@needs_openmp
def test_serial_fraction_outside_0_1_is_flagged(planted):
    slower = {"1": [1.0, 1.0], "2": [2.0, 2.0], "4": [2.5, 2.5], "baseline": [1.0, 1.0]}  # x0.5, x0.4
    rounds = PlantedRounds(slower)
    planted(4, rounds)
    s = _series(_run([1, 2, 4]), "openmp")
    assert len(rounds.calls) == 2  # measured once more
    assert s["serial_disturbed"] and not s["fitted"]
    assert s["serial_fraction"] is None and s["serial_fraction_fit"] == pytest.approx(3.0)
    assert s["max_speedup"] is None
    out = _printed(_run([1, 2, 4]))
    assert "outside 0-100%" in out and DISTURBED in out


def test_fit_amdahl_is_not_clamped():
    assert scaling.fit_amdahl([1, 2, 4], [1.0, 0.5, 0.4]) == pytest.approx(3.0)
    fit = fit_series([1, 2, 4], [1.0, 0.5, 0.4], [False] * 3, 4)
    assert fit["impossible"] and fit["serial_fraction"] is None


@needs_openmp
def test_two_thread_counts_give_no_fit_and_say_why(planted, tmp_path):
    rounds = PlantedRounds({"1": [1.0, 1.0], "2": [0.6, 0.62], "baseline": [1.0, 1.0]})
    planted(2, rounds)
    doc = _run([1, 2])
    s = _series(doc, "openmp")
    assert not s["fitted"] and s["serial_fraction"] is None and s["max_speedup"] is None
    assert s["fit_note"].startswith(TWO_POINTS) and TWO_POINTS in doc["note"]
    out = _printed(doc)
    assert TWO_POINTS in out and "no fit" in out
    assert "x1.64 on 2 threads (x1.61-1.67)" in out  # the plain speed-up, with its spread
    legend = _legend_texts(doc, tmp_path)
    # the figure is about what 2 cores show: the speed-up measured (the text's digits), not a fit
    assert any(t.endswith(": x1.64 on 2 threads (x1.61-1.67)") for t in legend), legend
    assert legend[-1].startswith("Threads on 2 cores: the speed-up measured")


@needs_openmp
def test_three_thread_counts_give_a_fit(planted):
    times = {str(p): [1 / amdahl(p, 0.1)] * 2 for p in (1, 2, 4)}
    planted(4, PlantedRounds({**times, "baseline": [1.0, 1.0]}))
    doc = _run([1, 2, 4])
    s = _series(doc, "openmp")
    assert s["fitted"] and s["fit_threads"] == [1, 2, 4] and doc["note"] is None
    assert s["serial_fraction"] == pytest.approx(0.1) and s["max_speedup"] == pytest.approx(10.0)
    assert "serial fraction of 10%" in scaling.fit_text(s, 16) and "at most x10" in scaling.fit_text(s, 16)


def test_no_limit_is_extrapolated_without_a_measurable_speed_up():
    # f fitted near 1 from speed-ups whose ranges include x1: no 'x1.00 faster on any number of cores'.
    s = {
        "threads": [1, 2, 4],
        "speedup": [1.0, 1.0, 1.01],
        "speedup_low": [1.0, 0.95, 0.96],
        "speedup_high": [1.0, 1.05, 1.06],
        "disturbed": [False] * 3,
        "fitted": True,
        "fit_threads": [1, 2, 4],
        "serial_fraction": 0.99,
    }
    text = scaling.fit_text(s, 16)
    assert "no thread count gave a measurable speed-up" in text and "any number of cores" not in text
    assert "no measurable speed-up on 2 threads" in scaling.speedup_text(s, 1)


# ---- plain numbers ----------------------------------------------------------------------------------


def test_percent_is_plain():
    assert [percent(x) for x in (1.0, 0.995, 0.12, 0.005, 0.0)] == ["100%", "100%", "12%", "0.5%", "0%"]


def _legend_texts(doc, tmp_path) -> list[str]:
    from whygpu.plots import scaling as plots_scaling

    figs = []
    real = plots_scaling._save

    def keep(fig, path):
        figs.append(fig)
        return real(fig, path)

    plots_scaling._save, saved = keep, real
    try:
        plots_scaling.plot_scaling(doc, tmp_path / "scaling.png")
    finally:
        plots_scaling._save = saved
    return [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()] + [figs[0].axes[0].get_title()]


def _fitted_doc(serial: float, flag_last: bool = False) -> dict:
    ths = [1, 2, 4, 8]
    sp = [amdahl(p, serial) for p in ths]
    sp[-1] = 9.0 if flag_last else sp[-1]
    dist = [False, False, False, flag_last]
    fit = fit_series(ths, sp, dist, 8)

    def series(name, kind):
        return {
            "name": name,
            "label": name,
            "kind": kind,
            "threads": ths,
            "cores": 8,
            "speedup": sp,
            "speedup_low": [v * 0.999 if p > 1 else 1.0 for p, v in zip(ths, sp)],
            "speedup_high": [v * 1.001 if p > 1 else 1.0 for p, v in zip(ths, sp)],
            "efficiency": [v / p for v, p in zip(sp, ths)],
            "disturbed": dist,
            "disturbed_reason": [None, None, None, "x9 is more than the 8 threads used allow" if flag_last else None],
            "serial_disturbed": fit["impossible"],
            "steps": [],
            **{k: fit[k] for k in ("fitted", "fit_threads", "fit_note", "serial_fraction", "max_speedup")},
        }

    return {
        "schema": scaling.SCHEMA,
        "machine": {"cpu": {"cores": 8}},
        "params": {"n": 64, "threads": ths, "kernel": "openmp"},
        "cores": 8,
        "note": None,
        "series": [series("openmp", "kernel"), series("peak", "peak"), series("train", "train")],
    }


@pytest.mark.parametrize("serial", [0.995, 0.3, 0.0004])
def test_legend_and_caption_have_plain_numbers(tmp_path, serial):
    from whygpu.report.scaling import section

    doc = _fitted_doc(serial, flag_last=True)
    legend = _legend_texts(doc, tmp_path)
    assert any("serial fraction" in t for t in legend)
    assert "disturbed (left out)" in legend  # the red crosses' one entry
    blocks = section({"scaling": doc}, tmp_path, [], 3)
    caption = next(b[2] for b in blocks if b[0] == "fig")
    table = " ".join(" ".join(r) for b in blocks if b[0] == "table" for r in b[2])
    for text in legend + [caption, table]:
        assert "e+" not in text and "e-0" not in text and "not x" not in text, text
    assert DISTURBED in caption and "x9 is more than" in caption  # the flagged figure is said, not explained
    if serial == 0.3:
        assert "allows at most x3.33 on any number of cores" in caption and "ideal: x32" in caption


def test_old_documents_are_checked_when_read(tmp_path):
    # Written before the checks: medians only, a clamped 2-point fit, x3.4 on 2 cores.
    old = {
        "schema": scaling.SCHEMA,
        "machine": {"cpu": {"cores": 2}},
        "params": {"n": 256, "threads": [1, 2], "kernel": "openmp"},
        "series": [
            {"name": "peak", "label": "FMA peak", "kind": "peak", "threads": [1, 2], "speedup": [1.0, 3.4]}
            | {"seconds": [1.0, 0.29], "efficiency": [1.0, 1.7], "serial_fraction": 0.0, "max_speedup": None}
        ],
    }
    doc = scaling.with_checks(old)
    s = doc["series"][0]
    assert s["disturbed"] == [False, True] and not s["fitted"] and TWO_POINTS in doc["note"]
    assert "disturbed (left out)" in _legend_texts(old, tmp_path)


# ---- the training step and the quiet record ---------------------------------------------------------


@needs_openmp
def test_train_step_gets_the_same_checks_and_the_quiet_record(planted):
    planted(2, PlantedRounds({"1": [1.0, 1.0], "2": [0.6, 0.6], "baseline": [1.0, 1.0]}))
    calls = []

    def step(threads):
        calls.append(threads)
        sec = {1: 1.0, 2: 0.2}[threads]  # x5 on 2 threads: impossible, twice
        return {"seconds": sec, "matmul_share": 0.5, "matmul_s": sec / 2, "other_s": sec / 2, "threads": threads}

    doc = _run([1, 2], train_step=step)
    s = _series(doc, "train")
    assert calls == [1, 2, 1] * 2 * 2  # rounds of 1, 2 and the baseline; 2 rounds; measured twice
    assert s["disturbed"] == [False, True] and s["remeasured"]
    assert s["matmul_share"] == [0.5, 0.5]
    q = doc["quiet"]
    assert {"blocks", "others_max", "steal_max", "busy", "threshold"} <= set(q)
    assert [b["label"].split(":")[0] for b in q["blocks"]] == ["openmp kernel, n=8"] + ["training step"] * 2


# ---- no speed-up above the cores is shown as a result (issue 23) -------------------------------------


def test_a_round_above_the_cores_is_left_out_of_the_range_and_said():
    # Round 3's 1-thread sample was slowed by another program: its ratio, x4 on 2 cores, is impossible.
    chk = check_series([1, 2], {1: [1.0, 1.0, 2.0], 2: [0.55, 0.56, 0.5]}, None, 2)
    assert chk["rounds_left_out"] == [0, 1] and not chk["impossible"]
    assert chk["speedup_high"][1] == pytest.approx(1 / 0.55) and chk["speedup_high"][1] <= 2
    assert chk["speedup"][1] == pytest.approx((1 / 0.55 + 1 / 0.56) / 2)
    s = {
        "threads": [1, 2],
        "cores": 2,
        "disturbed": [False, False],
        "disturbed_reason": [None, None],
        **{k: chk[k] for k in ("speedup", "speedup_low", "speedup_high", "rounds_left_out")},
    }
    text = scaling.speedup_text(s, 1)
    assert "1 round above the 2 cores, impossible, left out" in text and "x4" not in text


def test_most_rounds_above_the_cores_flag_the_point():
    chk = check_series([1, 2], {1: [1.0, 2.0, 2.0], 2: [0.55, 0.5, 0.5]}, None, 2)
    assert chk["impossible"] and chk["reasons"][1] and "more than the 2 threads" in chk["reasons"][1]


def _two_core_doc(kernel: float, probe: float, probe_high: float | None = None) -> dict:
    """A 2-core scaling document: the openmp kernel and the FMA probe on 1 and 2 threads, planted."""

    def series(name, label, kind, v, hi):
        return {
            "name": name,
            "label": label,
            "kind": kind,
            "threads": [1, 2],
            "cores": 2,
            "speedup": [1.0, v],
            "speedup_low": [1.0, v * 0.97],
            "speedup_high": [1.0, hi],
            "rounds_left_out": [0, 0],
            "disturbed": [False, False],
            "disturbed_reason": [None, None],
            **fit_series([1, 2], [1.0, v], [False, False], 2),
        }

    return {
        "schema": scaling.SCHEMA,
        "machine": {"cpu": {"cores": 2}},
        "params": {"n": 1024, "threads": [1, 2], "kernel": "openmp"},
        "cores": 2,
        "note": scaling.doc_note([1, 2], 2),
        "series": [
            series("openmp", "openmp kernel, n=1024", "kernel", kernel, kernel * 1.02),
            series("peak", "FMA peak (microbenchmark)", "peak", probe, probe_high or probe * 1.02),
        ],
    }


def test_the_hardware_limit_is_never_below_what_a_kernel_measured(tmp_path):
    from whygpu.report.scaling import section

    doc = _two_core_doc(kernel=1.87, probe=1.73)
    lim = scaling.probe_limit(doc)
    assert lim["by"] == "openmp" and lim["limit"] == pytest.approx(1.87) and lim["probe"] == pytest.approx(1.73)
    cap = next(b[2] for b in section({"scaling": doc}, tmp_path, [], 3) if b[0] == "fig")
    assert "the hardware's own limit: x1.73" not in cap
    assert "below the openmp kernel, n=1024's measured x1.87" in cap and "the probe was disturbed" in cap
    assert "at least x1.87, at most x2" in cap
    # a probe above the kernel is the limit, and said so
    doc = _two_core_doc(kernel=1.6, probe=1.95)
    assert scaling.probe_limit(doc)["by"] == "peak"
    cap = next(b[2] for b in section({"scaling": doc}, tmp_path, [], 3) if b[0] == "fig")
    assert "the hardware's own limit: x1.95 on 2 threads" in cap


def _axes(doc, tmp_path):
    from whygpu.plots import scaling as plots_scaling

    figs = []
    real = plots_scaling._save
    plots_scaling._save = lambda fig, path: figs.append(fig) or real(fig, path)
    try:
        plots_scaling.plot_scaling(doc, tmp_path / "scaling.png")
    finally:
        plots_scaling._save = real
    return figs[0].axes[0]


def _bar_tops(ax) -> list[tuple[float, float]]:
    """(x, top) of every error bar drawn."""
    out = []
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", lambda: [])():
            if len(seg) == 2 and seg[0][0] == seg[1][0]:
                out.append((float(seg[0][0]), float(max(seg[0][1], seg[1][1]))))
    return out


def test_the_figure_stops_at_the_cores_and_no_bar_rises_above_the_ideal(tmp_path):
    # the samples of the figure: a round at x2.10 on 2 cores is left out when the document is read
    doc = _two_core_doc(kernel=1.87, probe=1.73, probe_high=2.10)
    doc["series"][1].pop("rounds_left_out")  # written before impossible rounds were left out
    doc["series"][1]["times_1t"] = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.26]]
    doc["series"][1]["times"] = [[1.0, 1.0, 1.0], [0.578, 0.6, 0.6]]
    ax = _axes(doc, tmp_path)
    assert ax.get_xlim()[1] == pytest.approx(2.5)  # no axis past the 2 cores
    tops = _bar_tops(ax)
    assert tops and all(top <= min(x, 2) + 1e-9 for x, top in tops)
    checked = scaling.with_checks(doc)["series"][1]
    assert checked["rounds_left_out"] == [0, 1] and checked["speedup_high"][1] == pytest.approx(1 / 0.578)


def test_threads_beyond_the_cores_extend_the_axis_and_the_ideal_stays_at_the_cores(tmp_path):
    doc = _fitted_doc(0.3)
    for s in doc["series"]:
        s["rounds_left_out"] = [0] * 4
    doc["cores"] = 4  # 8 threads on 4 cores: oversubscription asked for, so it is drawn
    ax = _axes(doc, tmp_path)
    assert ax.get_xlim()[1] == pytest.approx(8.5)
    ideal = next(ln for ln in ax.lines if (ln.get_label() or "").startswith("ideal"))
    assert max(ideal.get_ydata()) == pytest.approx(4) and "at most the 4 cores" in ideal.get_label()
