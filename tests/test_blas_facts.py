"""Reasons from facts (issue 32): NumPy's BLAS kernel, the instruction set it runs and why, detected;
NumPy held against that ISA's roof; and no stock reason anywhere.

Every fact is planted (threadpoolctl's entries, the environment as a dict, the CPU's best ISA, the
measured roofs): nothing here depends on this machine, and no variable reaches a process running NumPy.
"""

from __future__ import annotations

import importlib
import json
from contextlib import nullcontext

import pytest

import whygpu
import whygpu.bench.ladder as ladder
import whygpu.bench.machine as machine_mod
import whygpu.plots.roofline as plots_roofline
import whygpu.report.explain as report_explain
import whygpu.report.machine as report_machine
import whygpu.report.roofline as report_roofline
from whygpu.bench.machine import blas_facts, blas_summary
from whygpu.cli.info import _blas_line
from whygpu.explain import NOT_SAID, why_below
from whygpu.predict.roofline import kernel_model

explain_mod = importlib.import_module("whygpu.explain")  # `whygpu.explain` is also the function

NUMPY_LIB = "/site-packages/numpy.libs/libscipy_openblas64_.so"

# Phrases that are no reason: what the report said of a 1-thread run before (issue 32).
STOCK = ("threading overheads", "packing and threading", "own packing", "on a busy machine")


def _openblas(kernel: str | None, threads: int = 1) -> list[dict]:
    return [
        {
            "internal_api": "openblas",
            "version": "0.3.31",
            "num_threads": threads,
            "architecture": kernel,
            "threading_layer": "pthreads",
            "filepath": NUMPY_LIB,
        }
    ]


def _mkl() -> list[dict]:
    return [
        {
            "internal_api": "mkl",
            "version": "2024.2",
            "num_threads": 1,
            "threading_layer": "intel",
            "filepath": "/lib/libmkl_rt.so",
        }
    ]


def _roofs(whygpu_arch: str = "avx512") -> dict:
    """Planted roofs of an AVX-512 CPU: 1-core FMA peaks of 25 (baseline), 100 (AVX2), 200 (AVX-512)
    GFLOP/s; whygpu's own kernels run ``whygpu_arch``."""
    by_arch = {"portable": 25.0, "avx2": 100.0, "avx512": 200.0}
    bw = {"L2": 1000.0, "L3": 500.0, "DRAM": 200.0}
    return {
        "arch": whygpu_arch,
        "threads": 2,
        "dtype": "float32",
        "caches": {"L1d": 48 << 10, "L2": 1 << 20, "L3": 32 << 20},
        "compute": {
            "interpreter": 0.05,
            "scalar": 2.0,
            "simd_baseline": 25.0,
            "simd_1t": by_arch[whygpu_arch],
            "simd_all": 2 * by_arch[whygpu_arch],
        },
        "bandwidth": {"1": dict(bw), "all": {k: 2 * v for k, v in bw.items()}},
        "fma_by_arch": by_arch,
    }


def _row(facts: dict, kernel: str = "numpy-1t", threads: int = 1) -> dict:
    return kernel_model(kernel, 1024, 1024, 1024, _roofs(), threads=threads, blas=facts)


# ------------------------------------------------------------------ the facts
def test_haswell_kernel_forced_on_an_avx512_cpu():
    f = blas_facts(_openblas("Haswell"), env={"OPENBLAS_CORETYPE": "Haswell"}, cpu_best="avx512")
    assert f["library"] == "openblas" and f["kernel"] == "Haswell" and f["kernel_isa"] == "avx2"
    assert f["cpu_isa"] == "avx512" and f["below"] is True
    assert f["env"] == {"OPENBLAS_CORETYPE": "Haswell"} and f["cause"] == "OPENBLAS_CORETYPE=Haswell is set"


def test_haswell_kernel_unforced_on_an_avx512_cpu_is_an_openblas_that_does_not_know_it():
    f = blas_facts(_openblas("Haswell"), env={}, cpu_best="avx512")
    assert f["below"] is True and f["env"] == {} and f["cause"] == "this OpenBLAS does not know this CPU"


@pytest.mark.parametrize(
    "kernel, cpu, isa", [("SkylakeX", "avx512", "avx512"), ("Haswell", "avx2", "avx2"), ("Zen", "avx2", "avx2")]
)
def test_a_kernel_that_matches_the_cpu(kernel, cpu, isa):
    f = blas_facts(_openblas(kernel), env={}, cpu_best=cpu)
    assert f["kernel_isa"] == isa and f["below"] is False and f["cause"] is None


def test_the_environment_is_read_from_os_environ_by_default(monkeypatch):
    # Only this function reads it here; OpenBLAS, loaded long before, never sees it.
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    f = blas_facts(_openblas("Haswell"), cpu_best="avx512")
    assert f["cause"] == "OPENBLAS_CORETYPE=Haswell is set"


def test_mkl_with_and_without_its_instruction_cap():
    capped = blas_facts(_mkl(), env={"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, cpu_best="avx512")
    assert capped["library"] == "mkl" and capped["kernel"] is None and capped["kernel_isa"] == "avx2"
    assert capped["below"] is True and capped["cause"] == "MKL_ENABLE_INSTRUCTIONS=AVX2 is set"
    free = blas_facts(_mkl(), env={}, cpu_best="avx512")
    assert free["kernel_isa"] is None and free["below"] is None and free["cause"] is None
    # a cap above what the CPU has leaves MKL at the CPU's best
    high = blas_facts(_mkl(), env={"MKL_ENABLE_INSTRUCTIONS": "AVX512"}, cpu_best="avx2")
    assert high["kernel_isa"] == "avx2" and high["below"] is False


def test_unknown_library_and_unknown_kernel(monkeypatch):
    monkeypatch.setattr(machine_mod, "_numpy_blas_name", lambda: None)
    none = blas_facts([], env={}, cpu_best="avx512")
    assert none["library"] == "unknown" and none["kernel_isa"] is None and none["below"] is None
    odd = blas_facts(_openblas("Excavator"), env={}, cpu_best="avx2")
    assert odd["kernel"] == "Excavator" and odd["kernel_isa"] is None and odd["below"] is None


def test_numpys_own_blas_is_chosen_among_several():
    libs = _mkl() + _openblas("SkylakeX")  # PyTorch's MKL loaded first, NumPy's OpenBLAS second
    assert blas_facts(libs, env={}, cpu_best="avx512")["library"] == "openblas"


# ------------------------------------------------------------------ the roof and the sentence
def test_numpy_on_the_haswell_kernel_is_held_against_the_avx2_roof():
    f = blas_facts(_openblas("Haswell"), env={"OPENBLAS_CORETYPE": "Haswell"}, cpu_best="avx512")
    one = _row(f)
    assert one["compute_gflops"] == pytest.approx(100.0) and one["roof_isa"] == "avx2" and one["roof_is_kernel_isa"]
    two = _row(f, "numpy-2t", threads=2)
    assert two["compute_gflops"] == pytest.approx(200.0)  # the all-core roof, scaled to AVX2 alike
    # whygpu's own packed kernel keeps its AVX-512 roof
    assert kernel_model("packed", 1024, 1024, 1024, _roofs(), threads=1)["compute_gflops"] == pytest.approx(200.0)
    s = why_below("numpy-1t", 0.92, row=one)
    assert s.startswith(
        "numpy-1t runs OpenBLAS's Haswell kernel (AVX2) on this AVX-512 CPU because OPENBLAS_CORETYPE=Haswell is "
        "set: it reached 92% of the AVX2 roof, within the model's stated error (25%), so the model explains it"
    )
    assert s.endswith("; unset OPENBLAS_CORETYPE to let OpenBLAS pick its kernel for this CPU.")


def test_an_openblas_that_does_not_know_the_cpu_is_told_to_update():
    f = blas_facts(_openblas("Haswell"), env={}, cpu_best="avx512")
    s = why_below("numpy-1t", 0.92, row=_row(f))
    assert "no OPENBLAS_CORETYPE forces it: this OpenBLAS does not know this CPU" in s
    assert "92% of the AVX2 roof" in s and "a newer OpenBLAS" in s and "unset" not in s


@pytest.mark.parametrize("kernel, cpu", [("SkylakeX", "avx512"), ("Haswell", "avx2"), ("Zen", "avx2")])
def test_a_matching_kernel_says_so(kernel, cpu):
    f = blas_facts(_openblas(kernel), env={}, cpu_best=cpu)
    row = _row(f)
    want = {"avx512": 200.0, "avx2": 100.0}[cpu]
    assert row["compute_gflops"] == pytest.approx(want) and row["roof_isa"] == cpu
    s = why_below("numpy-1t", 0.9, row=row)
    name = {"avx512": "AVX-512", "avx2": "AVX2"}[cpu]
    assert (
        f"OpenBLAS's {kernel} kernel ({name}), this CPU's best instruction set: it reached 90% of the {name} roof" in s
    )
    assert "unset" not in s and "newer" not in s
    # below the model's error, with nothing measured to say why: said plainly
    low = why_below("numpy-1t", 0.46, row=row)
    assert NOT_SAID in low and "explains" not in low


def test_mkl_sentences():
    capped = blas_facts(_mkl(), env={"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, cpu_best="avx512")
    row = _row(capped)
    assert row["compute_gflops"] == pytest.approx(100.0) and row["roof_is_kernel_isa"]
    s = why_below("numpy-1t", 0.9, row=row)
    assert "runs MKL, held to AVX2 by MKL_ENABLE_INSTRUCTIONS=AVX2 on this AVX-512 CPU" in s
    assert "90% of the AVX2 roof" in s and s.endswith("unset MKL_ENABLE_INSTRUCTIONS to let MKL use AVX-512.")
    free = _row(blas_facts(_mkl(), env={}, cpu_best="avx512"))
    # the ISA MKL picks is unknown: held against the CPU's best roof, and said to be an upper bound
    assert free["compute_gflops"] == pytest.approx(200.0) and not free["roof_is_kernel_isa"]
    s = why_below("numpy-1t", 0.5, row=free)
    assert "does not report the instruction set it picks (no MKL_ENABLE_INSTRUCTIONS is set)" in s
    assert "this CPU's best roof (AVX-512), an upper bound" in s and NOT_SAID in s


def test_unknown_blas_says_the_measurement_does_not_say_why(monkeypatch):
    monkeypatch.setattr(machine_mod, "_numpy_blas_name", lambda: None)
    s = why_below("numpy-1t", 0.46, row=_row(blas_facts([], env={}, cpu_best="avx512")))
    assert "a BLAS whygpu cannot identify" in s and NOT_SAID in s
    odd = _row(blas_facts(_openblas("Excavator"), env={}, cpu_best="avx2"))
    s = why_below("numpy-1t", 0.46, row=odd)
    assert "whose instruction set whygpu does not know" in s and "an upper bound" in s and NOT_SAID in s
    # a record without facts (from before they were kept): no reason invented
    assert (
        why_below("numpy-1t", 0.46)
        == f"numpy-1t runs at 46% of its roof: {NOT_SAID} (no record of which BLAS kernel ran)."
    )


@pytest.mark.parametrize(
    "libs, env, cpu",
    [
        (_openblas("Haswell"), {"OPENBLAS_CORETYPE": "Haswell"}, "avx512"),
        (_openblas("Haswell"), {}, "avx512"),
        (_openblas("SkylakeX"), {}, "avx512"),
        (_mkl(), {}, "avx512"),
        ([], {}, "avx2"),
    ],
)
def test_no_stock_phrase_for_a_one_thread_run(libs, env, cpu):
    row = _row(blas_facts(libs, env=env, cpu_best=cpu))
    for fraction in (0.3, 0.46, 0.9):
        s = why_below("numpy-1t", fraction, row=row).lower()
        assert not any(p in s for p in STOCK), s
    tiny = why_below("numpy-1t", 0.05, overhead_s=2e-6, measured_s=3e-6, row=row)
    assert "fixed cost of a call" in tiny and "waking the threads" not in tiny
    assert "waking the threads" in why_below("numpy-2t", 0.05, overhead_s=2e-6, measured_s=3e-6, row=row)


def test_no_stock_reason_for_the_rungs_the_model_should_describe():
    for kernel in ("packed", "openmp", "cublas"):
        s = why_below(kernel, 0.5)
        assert NOT_SAID in s and not any(p in s for p in STOCK), s
    assert "explains it" in why_below("openmp", 0.9)
    # the rungs below their roof by design keep the reason their own code gives
    assert "walks B down a column" in why_below("naive", 0.1) and NOT_SAID not in why_below("naive", 0.1)


def test_a_busy_measurement_is_said_from_the_quiet_record():
    from whygpu.explain import busy_while

    quiet = {
        "threshold": 0.05,
        "blocks": [
            {"label": "openmp 512x512 @ 512x512", "others": 0.6, "during": {"others": 0.9}},
            {"label": "packed 512x512 @ 512x512", "others": 0.0, "during": {"others": 0.01}},
        ],
    }
    assert busy_while(quiet, "openmp") and not busy_while(quiet, "packed") and not busy_while(None, "openmp")
    s = why_below("openmp", 0.5, busy=True)
    assert "other programs held the cores while it was measured" in s and NOT_SAID in s
    assert "other programs" not in why_below("openmp", 0.5)
    assert "other programs" not in why_below("openmp", 0.9, busy=True)  # explained: nothing to add


# ------------------------------------------------------------------ whygpu explain, end to end
class _Quiet:
    def block(self, label):
        return nullcontext()

    def as_dict(self):
        return {"blocks": [], "busy": False, "measured": False}


def test_explain_holds_numpy_against_its_kernels_roof(monkeypatch, tmp_path):
    # OpenBLAS's Haswell kernel forced on an AVX-512 CPU, running at 92% of the AVX2 roof: 46% of AVX-512's
    forced = blas_facts(_openblas("Haswell"), env={"OPENBLAS_CORETYPE": "Haswell"}, cpu_best="avx512")
    monkeypatch.setattr(machine_mod, "blas_facts", lambda *a, **k: forced)
    monkeypatch.setattr(explain_mod, "QuietGuard", _Quiet)
    avx2 = 100.0

    def measure(name, m, n, k, *, dtype="float32", threads=1, repeats=5, budget=2.0, expected=None, seed=0):
        t = 2.0 * m * n * k / (0.92 * avx2 * 1e9)
        return {"kernel": name, "m": m, "n": n, "k": k, "threads": 1, "flops": 2.0 * m * n * k, "seconds": t,
                "seconds_min": t, "seconds_max": t, "samples": [t], "repeats": 1}  # fmt: skip

    monkeypatch.setattr(ladder, "measure_matmul", measure)
    monkeypatch.setattr(ladder, "scout", lambda *a, **k: {"expected_s": 0.01})
    monkeypatch.setattr(
        ladder, "measure_error", lambda *a, **k: {"max_rel_error": 0.0, "error_bound": 1e-6, "unit_roundoff": 6e-8}
    )
    ex = whygpu.explain(1024, 1024, 1024, kernels=["numpy-1t"], threads=1, machine=_roofs())
    (row,) = ex.rows
    assert row["compute_gflops"] == pytest.approx(avx2) and row["roof_isa"] == "avx2"
    assert row["predicted_s"] / row["measured_s"] == pytest.approx(0.92, rel=1e-3)
    text = ex.text()
    assert "simd_1t (AVX2)" in text
    assert "OpenBLAS's Haswell kernel (AVX2) on this AVX-512 CPU because OPENBLAS_CORETYPE=Haswell is set" in text
    assert "92% of the AVX2 roof" in text and not any(p in text for p in STOCK)
    # the report's explain section says the same, from the saved document
    doc = json.loads(json.dumps(ex.as_dict()))
    blocks = report_explain.section({"explain": doc}, tmp_path, [], 2)
    items = next(b for b in blocks if b[0] == "ul")[1]
    assert any("92% of the AVX2 roof" in i and "OPENBLAS_CORETYPE=Haswell" in i for i in items)


# ------------------------------------------------------------------ whygpu info, the report, the figure
def test_info_says_the_kernels_isa_and_why_it_is_below():
    libs = _openblas("Haswell", threads=2)
    m = {"blas": libs, "blas_facts": blas_facts(libs, env={"OPENBLAS_CORETYPE": "Haswell"}, cpu_best="avx512")}
    assert _blas_line(m) == (
        "openblas 0.3.31 (Haswell kernel, AVX2, below this CPU's AVX-512: OPENBLAS_CORETYPE=Haswell is set; 2 threads)"
    )
    m["blas_facts"] = blas_facts(libs, env={}, cpu_best="avx512")
    assert "below this CPU's AVX-512: this OpenBLAS does not know this CPU" in _blas_line(m)
    m["blas_facts"] = blas_facts(libs, env={}, cpu_best="avx2")
    assert _blas_line(m) == "openblas 0.3.31 (Haswell kernel, AVX2, this CPU's best; 2 threads)"
    mkl = blas_facts(_mkl(), env={"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, cpu_best="avx512")
    assert blas_summary(mkl) == "at most AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2), below this CPU's AVX-512: that caps it"
    assert "not reported" in blas_summary(blas_facts(_mkl(), env={}, cpu_best="avx512"))
    table = report_machine.blas_text(m)
    assert "NumPy's: Haswell kernel, AVX2, this CPU's best" in table


def _roofline_doc(facts: dict) -> dict:
    row = _row(facts)
    t = row["flops"] / (0.92 * row["compute_gflops"] * 1e9)
    point = {
        **row,
        "measured_s": t,
        "measured_gflops": row["flops"] / t / 1e9,
        "fraction_of_roof": row["predicted_s"] / t,
        "error": (row["predicted_s"] - t) / t,
        "threads": 1,
        "device": "cpu",
        "remeasured": False,
        "disturbed": False,
    }
    return json.loads(
        json.dumps(
            {
                "machine": {"cpu": {"model": "planted AVX-512 CPU"}},
                "roofs": _roofs(),
                "points": [point],
                "notes": [],
                "unavailable": [],
            }
        )
    )


def test_the_report_and_figure_draw_numpy_against_the_avx2_roof(monkeypatch, tmp_path):
    doc = _roofline_doc(blas_facts(_openblas("Haswell"), env={"OPENBLAS_CORETYPE": "Haswell"}, cpu_best="avx512"))
    lines = plots_roofline._blas_roofs(doc["points"], doc["roofs"])
    assert lines == [(100.0, "NumPy's Haswell kernel (AVX2), 1 core: 100 GFLOP/s")]
    assert plots_roofline._isa_note(doc["points"][0]) == ", AVX2 roof"
    path = plots_roofline.plot_roofline(doc, tmp_path / "roofline.png")
    assert (tmp_path / "roofline.png").exists() and str(path).endswith("roofline.png")
    monkeypatch.setattr(report_roofline.plots, "plot_roofline", lambda d, p: str(p))
    blocks = report_roofline.section({"roofline": doc}, tmp_path, [], 3)
    items = [i for b in blocks if b[0] == "ul" for i in b[1]]
    assert any("92% of the AVX2 roof" in i and "OPENBLAS_CORETYPE=Haswell is set" in i for i in items)
    cells = [c for b in blocks if b[0] == "table" for r in b[2] for c in r]
    assert "simd_1t (AVX2) (100)" in cells
    assert any("AVX2 fused multiply-add, 1 core, the instruction set its Haswell kernel runs" in c for c in cells)


def test_a_matching_kernel_draws_no_extra_roof():
    doc = _roofline_doc(blas_facts(_openblas("SkylakeX"), env={}, cpu_best="avx512"))
    assert plots_roofline._blas_roofs(doc["points"], doc["roofs"]) == []  # its roof is simd_1t, drawn already
