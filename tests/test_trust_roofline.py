"""``whygpu roofline`` and ``whygpu explain`` on disturbed figures: a kernel measured faster than its
roof is impossible, so its roofs and the kernel are measured once more and, still impossible, the point
is flagged ``disturbed`` and left out of the conclusions -- in the JSON, the CLI table, the report and
the figure.  "The model explains it" only within the model's stated error; the quiet guard's record and
caution; plain numbers.  Every figure here is planted (fake roofs and fake timings): nothing is timed,
so the checks are exact and fast."""

from __future__ import annotations

import importlib
import json

import pytest

import whygpu
import whygpu.predict.roofline as roofline_mod
from whygpu.bench import ladder, trust
from whygpu.bench.probes import best_of_roofs
from whygpu.cli import main
from whygpu.explain import format_bytes, why_below
from whygpu.plots import roofline as plots_roofline
from whygpu.predict.roofline_trust import MODEL_ERROR, impossible_point, pct_text, plain
from whygpu.report import roofline as report_roofline
from whygpu.report.explain import section as explain_section

# The module, not the function ``whygpu.explain`` that the package exports under the same name.
explain_mod = importlib.import_module("whygpu.explain")
THREADS = 2


def _machine(simd: float = 100.0) -> dict:
    """Planted roofs: `simd` GFLOP/s per core for the FMA peak, generous bandwidths."""
    bw = {"L2": 200.0, "L3": 100.0, "DRAM": 50.0}
    return {
        "arch": "planted",
        "threads": THREADS,
        "dtype": "float32",
        "caches": {"L1d": 32 << 10, "L2": 1 << 20, "L3": 8 << 20},
        "compute": {
            "interpreter": 0.05,
            "scalar": 2.0,
            "simd_baseline": simd / 2,
            "simd_1t": simd,
            "simd_all": simd * THREADS,
        },
        "bandwidth": {"1": dict(bw), "all": {k: 2 * v for k, v in bw.items()}},
        "fma_by_arch": {"planted": simd},
    }


TRUE_ROOFS = _machine()  # the machine as it is; a planted first figure may be lower


class Planted:
    """Replaces the measuring functions: each kernel runs at ``speed[name]`` (a list, one entry per
    call: a fraction of its roof *on the true roofs*; the last one repeats), and the roofs measured
    again are ``again``.  Counts the calls."""

    def __init__(self, monkeypatch, speed: dict, again: dict | None = None):
        self.speed = {k: list(v) for k, v in speed.items()}
        self.calls: dict[str, int] = {}
        self.roof_calls = 0
        self.again = again or TRUE_ROOFS
        monkeypatch.setattr(ladder, "measure_matmul", self.measure)
        monkeypatch.setattr(ladder, "scout", self.scout)
        monkeypatch.setattr(roofline_mod, "measure_machine", self.machine)
        monkeypatch.setattr(explain_mod, "measure_machine", self.machine)
        monkeypatch.setattr(
            ladder, "measure_error", lambda *a, **k: {"max_rel_error": 0.0, "error_bound": 1e-6, "unit_roundoff": 6e-8}
        )

    def _seconds(self, name, m, n, k, dtype, threads) -> float:
        model = roofline_mod.kernel_model(
            name, m, n, k, TRUE_ROOFS, dtype=dtype, threads=ladder.threads_used(name, threads)
        )
        return model["predicted_s"] / self.speed[name][min(self.calls.get(name, 1) - 1, len(self.speed[name]) - 1)]

    def measure(self, name, m, n, k, *, dtype="float32", threads=1, repeats=5, budget=2.0, expected=None, seed=0):
        if (m, n, k) != (1, 1, 1):  # (explain also times a 1x1x1 call of a short product: not a re-measure)
            self.calls[name] = self.calls.get(name, 0) + 1
        t = self._seconds(name, m, n, k, dtype, threads)
        return {
            "kernel": name,
            "m": m,
            "n": n,
            "k": k,
            "threads": ladder.threads_used(name, threads),
            "flops": 2.0 * m * n * k,
            "seconds": t * 1.05,
            "seconds_min": t,
            "samples": 3,
            "times": [t, t * 1.05, t * 1.1],
        }

    def scout(self, name, m, n, k, **kw):
        return {"expected_s": 1e-3, "steps": []}

    def machine(self, threads=None, *, quick=False, arch=None):
        self.roof_calls += 1
        return json.loads(json.dumps(self.again))


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """The quiet guard reads a quiet machine at once (no 0.1 s samples of the real one, which other
    programs may be using while the tests run)."""
    monkeypatch.setattr(trust, "sample_load", lambda interval=0.1: {"others": 0.0, "steal": 0.0})
    monkeypatch.setattr(trust, "cpu_times", lambda path="/proc/stat": None)


def _roofline(machine=None, kernels=("naive", "packed")):
    return roofline_mod.run_roofline(
        n=64, kernels=list(kernels), threads=THREADS, repeats=3, budget=0.5, machine=machine or _machine()
    )


# ---------------------------------------------------------------- roofline
def test_a_point_faster_than_its_roof_twice_is_flagged_and_left_out(monkeypatch, tmp_path, capsys):
    fake = Planted(monkeypatch, {"naive": [0.5], "packed": [1.4]})  # packed 1.4x faster than its roof, both tries
    doc = _roofline()
    pts = {p["kernel"]: p for p in doc["points"]}
    p = pts["packed"]
    assert fake.calls == {"naive": 1, "packed": 2}  # measured once more, exactly once; naive not again
    assert fake.roof_calls == 1 and doc["roofs_remeasured"]  # the roofs measured again too
    assert p["disturbed"] is True and p["remeasured"] is True and p["fraction_of_roof"] == pytest.approx(1.4)
    assert "140%" in p["disturbed_reason"] and trust.DISTURBED in p["disturbed_reason"]
    assert pts["naive"]["disturbed"] is False and pts["naive"]["remeasured"] is False
    assert pts["naive"]["fraction_of_roof"] == pytest.approx(0.5)
    assert any("packed" in n and trust.DISTURBED in n for n in doc["notes"])
    assert {"label": "packed n=64, again"}.items() <= doc["quiet"]["blocks"][-1].items()

    # the CLI table
    from whygpu.cli.roofline import _print_roofline

    _print_roofline(doc)
    out = capsys.readouterr().out
    assert "140% (disturbed)" in out and "50%" in out and "50% (disturbed)" not in out

    # the report: flagged in the table, out of the caption's claims, never "explained"
    doc = json.loads(json.dumps(doc))
    monkeypatch.setattr(report_roofline.plots, "plot_roofline", lambda d, path: str(path))
    blocks = report_roofline.section({"roofline": doc}, tmp_path, [], 3)
    text = json.dumps(blocks)
    table = next(b for b in blocks if b[0] == "table")
    row = next(r for r in table[2] if r[0] == "packed")
    assert row[-1] == "disturbed (left out)" and row[-2].endswith("(disturbed)")
    cap = next(b for b in blocks if b[0] == "fig")[2]
    assert "packed reached" not in cap and "packed measured at 140% of its roof" in cap
    assert "packed runs at" not in text and "explains it" not in text
    assert "Flagged: packed measured at 140%" in text
    items = next(b for b in blocks if b[0] == "ul")[1]
    assert any(i.startswith("packed measured at 140% of its roof, which is impossible") for i in items)

    # the figure: a distinct marker and the legend says so
    figs = []
    monkeypatch.setattr(plots_roofline, "_save", lambda fig, path: figs.append(fig) or str(path))
    plots_roofline.plot_roofline(doc, tmp_path / "r.png")
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert "disturbed (left out)" in labels
    assert any(lab.startswith("packed (n=64)") and "disturbed (left out)" in lab for lab in labels)
    assert not any(lab.startswith("naive") and "disturbed" in lab for lab in labels)


def test_a_point_above_a_roof_that_does_not_rise_stays_flagged_with_the_better_draw(monkeypatch):
    # The roofs measured again are the same: 140% of them is impossible, and a slower second draw
    # (90%) must not hide it -- the kernel keeps the better of its two draws, as the roofs keep theirs.
    fake = Planted(monkeypatch, {"naive": [0.5], "packed": [1.4, 0.9]})
    doc = _roofline()
    p = next(p for p in doc["points"] if p["kernel"] == "packed")
    assert fake.calls == {"naive": 1, "packed": 2} and fake.roof_calls == 1
    assert p["remeasured"] is True and p["disturbed"] is True and p["kept"] == "first"
    assert p["fraction_of_roof"] == pytest.approx(1.4)
    assert "140%" in p["disturbed_reason"] and "90%" in p["disturbed_reason"]


def test_the_better_draw_is_kept_when_the_roof_rises_no_bias_downwards(monkeypatch):
    # The roofs were measured at half the true FMA peak; packed runs at 90% of the true roof (180% of the
    # low one), then a disturbed second draw at 60%.  The roofs measured again rise to the truth: the
    # point keeps its better draw, 90% -- keeping the fresh draw would pull the fastest kernel down.
    fake = Planted(monkeypatch, {"naive": [0.5], "packed": [0.9, 0.6]})
    doc = _roofline(machine=_machine(simd=50.0))
    p = next(p for p in doc["points"] if p["kernel"] == "packed")
    assert fake.calls["packed"] == 2 and doc["roofs"]["compute"]["simd_1t"] == 100.0
    assert p["remeasured"] is True and p["disturbed"] is False and p["kept"] == "first"
    assert p["fraction_of_roof"] == pytest.approx(0.9)
    assert not any("disturbed" in n for n in doc["notes"])


def test_blas_is_held_against_the_best_isa_not_whygpus_choice(monkeypatch):
    # whygpu runs portable (WHYGPU_ARCH=portable: a 50 GFLOP/s roof); OpenBLAS picks the CPU's best
    # ISA (100).  NumPy at 90% of that best roof is possible -- against the portable one it read 180%.
    m = _machine(simd=50.0)
    m["fma_by_arch"] = {"portable": 50.0, "planted": 100.0}
    model = roofline_mod.kernel_model("numpy-1t", 256, 256, 256, m, threads=1)
    assert model["compute_gflops"] == pytest.approx(100.0)
    assert roofline_mod.kernel_model("numpy-2t", 256, 256, 256, m, threads=2)["compute_gflops"] == pytest.approx(200)
    assert roofline_mod.kernel_model("packed", 256, 256, 256, m, threads=1)["compute_gflops"] == pytest.approx(50.0)


def test_a_roof_measured_low_is_measured_again_and_the_point_placed_on_the_better_one(monkeypatch):
    # the roofs were taken while another program held the core: half the FMA peak; the kernel runs at 90%
    # of the true roof, so 180% of the low one -- the roofs measured again explain it, nothing is flagged
    fake = Planted(monkeypatch, {"naive": [0.5], "packed": [0.9]})
    doc = _roofline(machine=_machine(simd=50.0))
    p = next(p for p in doc["points"] if p["kernel"] == "packed")
    assert fake.roof_calls == 1 and doc["roofs"]["compute"]["simd_1t"] == 100.0  # the best of both
    assert p["compute_gflops"] == 100.0 and p["fraction_of_roof"] == pytest.approx(0.9)
    assert p["disturbed"] is False and p["remeasured"] is True


def _low_all_core_roof() -> dict:
    """Roofs measured while another program held a core: the all-core FMA roof below one core's."""
    m = _machine()
    m["compute"]["simd_all"] = 85.0
    return m


def test_an_all_core_roof_below_one_core_is_measured_again_and_its_points_flagged(monkeypatch, tmp_path):
    # numpy-2t at 40% of the true 200 GFLOP/s would read 94% of the disturbed 85: "explained" -- it must not be
    fake = Planted(monkeypatch, {"numpy-1t": [0.9], "numpy-2t": [0.4]}, again=_low_all_core_roof())
    doc = _roofline(machine=_low_all_core_roof(), kernels=["numpy"])
    pts = {p["kernel"]: p for p in doc["points"]}
    assert fake.roof_calls == 1 and doc["roofs_remeasured"] and "below one core's" in doc["roofs"]["disturbed"]
    assert pts["numpy-2t"]["disturbed"] and "placed on a disturbed roof" in pts["numpy-2t"]["disturbed_reason"]
    assert not pts["numpy-1t"]["disturbed"] and fake.calls == {"numpy-1t": 1, "numpy-2t": 1}
    doc = json.loads(json.dumps(doc))
    monkeypatch.setattr(report_roofline.plots, "plot_roofline", lambda d, path: str(path))
    items = next(b for b in report_roofline.section({"roofline": doc}, tmp_path, [], 3) if b[0] == "ul")[1]
    two = next(i for i in items if i.startswith("numpy-2t"))
    assert "explains" not in two and "placed on a disturbed roof" in two
    assert "explains it" in next(i for i in items if i.startswith("numpy-1t"))


def test_an_all_core_roof_that_measures_right_the_second_time_clears(monkeypatch):
    fake = Planted(monkeypatch, {"numpy-1t": [0.9], "numpy-2t": [0.9]})
    doc = _roofline(machine=_low_all_core_roof(), kernels=["numpy"])
    assert fake.roof_calls == 1 and "disturbed" not in doc["roofs"] and doc["roofs"]["compute"]["simd_all"] == 200.0
    assert not any(p["disturbed"] for p in doc["points"])


def test_nothing_is_measured_again_when_every_point_is_possible(monkeypatch):
    fake = Planted(monkeypatch, {"naive": [0.5], "packed": [1.0]})  # exactly at the roof: possible
    doc = _roofline()
    assert fake.calls == {"naive": 1, "packed": 1} and fake.roof_calls == 0 and not doc["roofs_remeasured"]
    assert not any(p["disturbed"] or p["remeasured"] for p in doc["points"])
    assert [b["label"] for b in doc["quiet"]["blocks"]] == ["naive n=64", "packed n=64"]


def test_the_roofs_block_is_guarded_and_recorded(monkeypatch):
    Planted(monkeypatch, {"naive": [0.5]})
    doc = roofline_mod.run_roofline(n=64, kernels=["naive"], threads=THREADS, repeats=3, budget=0.5)
    labels = [b["label"] for b in doc["quiet"]["blocks"]]
    assert labels == ["roofs", "naive n=64"] and doc["quiet"]["busy"] is False
    assert all("during" in b for b in doc["quiet"]["blocks"])


# ---------------------------------------------------------------- explain
def test_why_below_explains_only_within_the_stated_error():
    assert MODEL_ERROR == 0.25
    s = why_below("openmp", 0.9)
    assert s == "openmp runs at 90% of its roof: within the model's stated error (25%), so the model explains it."
    s = why_below("naive", 1.08)
    assert s.startswith("naive measured at 108% of its roof, which is impossible") and "explains" not in s
    assert trust.DISTURBED in s
    s = why_below("naive", 0.5)
    assert s.startswith("naive runs at 50% of its roof: it walks B down a column") and "explains" not in s
    assert "explains" not in why_below("packed", 0.74) and "explains" in why_below("packed", 0.75)
    assert "100.4%" in why_below("packed", 1.004)  # not '100%': that would hide that it passed the roof
    assert "disturbed" not in why_below("cuda_wgmma", 1.3) and "lower bound" in why_below("cuda_wgmma", 1.3)


def test_explain_flags_a_kernel_faster_than_its_roof_twice(monkeypatch):
    fake = Planted(monkeypatch, {"naive": [1.08], "packed": [0.9]})
    ex = whygpu.explain(64, 64, 64, kernels=["naive", "packed"], threads=THREADS, machine=_machine(), repeats=3)
    rows = {r["kernel"]: r for r in ex.rows}
    assert fake.calls == {"naive": 2, "packed": 1} and fake.roof_calls == 1 and ex.roofs_remeasured
    assert rows["naive"]["disturbed"] and "108%" in rows["naive"]["disturbed_reason"]
    assert not rows["packed"]["disturbed"]
    text = str(ex)
    assert "108% (disturbed)" in text and "naive measured at 108% of its roof, which is impossible" in text
    assert "naive runs at" not in text
    assert "packed runs at 90% of its roof: within the model's stated error (25%), so the model explains it." in text
    d = json.loads(json.dumps(ex.as_dict()))
    assert d["model_error"] == MODEL_ERROR and d["roofs_remeasured"] and d["quiet"]["blocks"]
    blocks = explain_section({"explain": d}, None, [], 2)
    table = next(b for b in blocks if b[0] == "table")
    assert next(r for r in table[2] if r[0] == "naive")[7] == "108% (disturbed)"
    assert any(b[0] == "p" and b[1].startswith("Flagged: naive measured at 108%") for b in blocks)


def test_explain_re_measures_once_and_keeps_the_better_draw_on_the_risen_roof(monkeypatch):
    # roofs measured at half the truth: packed at 90% of the true roof reads 180%; measured again, the
    # roofs rise and the better draw (90%, not the disturbed 60%) is kept and explained
    fake = Planted(monkeypatch, {"packed": [0.9, 0.6]})
    ex = whygpu.explain(64, 64, 64, kernels=["packed"], threads=THREADS, machine=_machine(simd=50.0), repeats=3)
    r = ex.rows[0]
    assert fake.calls == {"packed": 2} and r["remeasured"] and not r["disturbed"]
    assert r["fraction_of_roof"] == pytest.approx(0.9) and "(disturbed)" not in str(ex)


def _busy(monkeypatch):
    """Another program holds half the cores, before and during every block."""
    monkeypatch.setattr(trust, "sample_load", lambda interval=0.1: {"others": 0.5, "steal": 0.0})
    ticks = iter(range(0, 10**6, 10))

    def reader():  # 10 s of core time per reading: 5 idle, 0 ours -> others 50%
        t = float(next(ticks))
        return {"total": t, "idle": t / 2, "steal": 0.0, "own": 0.0, "cpus": 2}

    monkeypatch.setattr(trust, "cpu_times", reader)


def test_explain_cli_cautions_on_a_busy_machine_once_on_stderr(monkeypatch, tmp_path, capsys):
    Planted(monkeypatch, {"naive": [0.5]})
    monkeypatch.setattr(explain_mod, "_MACHINES", {THREADS: _machine()})
    _busy(monkeypatch)
    rc = main(["explain", "64", "64", "64", "--kernels", "naive", "--threads", str(THREADS), "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0 and err.count("caution: the machine was not quiet") == 1 and "not quiet" not in out
    doc = json.loads((tmp_path / "explain.json").read_text())
    assert doc["quiet"]["busy"] and doc["quiet"]["others_max"] == 0.5


def test_explain_no_measure_creates_no_folder_and_prints_no_caution(monkeypatch, tmp_path, capsys):
    fake = Planted(monkeypatch, {"naive": [0.5]})
    monkeypatch.setattr(explain_mod, "_MACHINES", {THREADS: _machine()})
    _busy(monkeypatch)
    monkeypatch.chdir(tmp_path)
    rc = main(["explain", "64", "64", "64", "--no-measure", "--kernels", "naive", "--threads", str(THREADS)])
    out, err = capsys.readouterr()
    assert rc == 0 and "naive" in out and "not quiet" not in out + err and "caution" not in err
    assert list(tmp_path.iterdir()) == [] and fake.calls == {}


# ---------------------------------------------------------------- building blocks and plain numbers
def test_impossible_point_and_best_of_roofs():
    assert impossible_point({"kernel": "openmp", "fraction_of_roof": 1.43})
    assert not impossible_point({"kernel": "openmp", "fraction_of_roof": 1.0})
    assert not impossible_point({"kernel": "cuda_wgmma", "fraction_of_roof": 1.3})  # its roof is a lower bound
    low, high = _machine(simd=50.0), _machine()
    low["bandwidth"]["1"]["DRAM"] = 80.0
    best = best_of_roofs(low, high)
    assert best["compute"]["simd_all"] == 200.0 and best["bandwidth"]["1"]["DRAM"] == 80.0
    assert best["arch"] == "planted" and best_of_roofs(low, None) is low
    assert best_of_roofs({"fma_gflops": 10.0, "device": "a"}, {"fma_gflops": 12.0, "device": "b"}) == {
        "fma_gflops": 12.0,
        "device": "a",
    }


def test_plain_numbers_never_in_exponent_notation(monkeypatch, tmp_path):
    assert [plain(x) for x in (100.0, 999.6, 1234.0, 2.44, 0.0543, 1e-5)] == [
        "100",
        "1000",
        "1234",
        "2.44",
        "0.0543",
        "0.00001",
    ]
    assert format_bytes(999_600) == "1000 kB" and pct_text(1.0) == "100%" and pct_text(1.004) == "100.4%"
    # a figure whose every number used to come out as 1e+02
    Planted(monkeypatch, {"naive": [0.5], "packed": [1.0]})
    doc = json.loads(json.dumps(_roofline()))
    figs = []
    monkeypatch.setattr(plots_roofline, "_save", lambda fig, path: figs.append(fig) or str(path))
    plots_roofline.plot_roofline(doc, tmp_path / "r.png")
    ax = figs[0].axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()] + [t.get_text() for t in ax.texts]
    texts += [ax.xaxis.get_major_formatter()(v, 0) for v in (1e-5, 100.0)]
    assert "packed (n=64): 100 of 100" in texts
    assert not any("e+" in t or "e-" in t for t in texts), texts


def test_the_l3_roof_is_measured_in_l3_even_when_a_vm_reports_its_hosts_whole_l3():
    from whygpu.bench.probes import _working_sets

    mib = 1 << 20
    # a 2-core guest that reports 480 MiB of L3: half of that would be a DRAM set; 8 L2s per thread is not
    vm = _working_sets({"L2": 2 * mib, "L3": 480 * mib}, 2)
    assert 32 * mib - 48 < vm["L3"] * 24 * 2 <= 32 * mib
    assert vm["DRAM"] * 24 * 2 > 8 * 32 * mib  # DRAM still far beyond it
    # a real 32 MiB L3 shared by 2 cores with 1 MiB L2 each: half of it, as before
    assert 16 * mib - 48 < _working_sets({"L2": mib, "L3": 32 * mib}, 2)["L3"] * 24 * 2 <= 16 * mib
