"""Notebook 06's judges and the conclusions it computes (whygpu.lab.nb06), on planted numbers: no notebook is
executed here (tests/test_notebook_labs.py does that)."""

from __future__ import annotations

import math

import pytest

from whygpu import lab
from whygpu.lab import nb06
from whygpu.predict.roofline_gpu import GPU_TRAFFIC

H = nb06.H100_PUBLIC


def quiet_check(capsys, *args, **kwargs):
    ok = lab.check(*args, **kwargs)
    return ok, capsys.readouterr().out


# ---- The traffic model and the roofline -------------------------------------------------------------------------


def test_the_tile_formula_matches_the_packages_traffic_model():
    for kernel, t in nb06.SQUARE_TILES.items():
        assert nb06.model_loads_per_output(kernel, 4096) == pytest.approx(nb06.tiled_loads_per_output(t, 4096))
    assert nb06.tiled_loads_per_output(1, 1000) == 2000  # no tile: a row of A and a column of B


def test_the_public_h100_figures_are_the_cost_models():
    from whygpu.predict.scaleout_model import H100

    assert H["fp32_peak_gflops"] == H100["peak_gflops"] and H["hbm_gbps"] == H100["hbm_Bps"] / 1e9
    assert "public figure" in H["source"]


def test_the_roofline_takes_the_larger_time():
    assert nb06.roofline_seconds(2e9, 1e6, 1.0, 1.0) == (2.0, "compute")
    assert nb06.roofline_seconds(1e9, 4e9, 1.0, 1.0) == (4.0, "memory")
    t, bound = nb06.roofline_seconds(nb06.gemm_flops(4096), nb06.gemm_bytes(4096), 67_000, 3_350)
    assert bound == "compute" and t == pytest.approx(2 * 4096**3 / 67e12)


def test_ridge_and_the_smallest_tile():
    assert nb06.ridge(67_000, 3_350) == pytest.approx(20.0)
    assert nb06.min_square_tile(20.0) == 80  # T / 4 FLOP per byte >= 20
    assert nb06.min_square_tile(3.6) == 15
    assert nb06.min_square_tile(0.1) == 1
    with pytest.raises(ValueError):
        nb06.ridge(0, 1)


def test_cpu_roofs_take_the_best_of_one_and_all_threads():
    machine = {
        "compute": {"simd_1t": 90.0, "simd_all": 80.0},
        "bandwidth": {"1": {"L2": 100.0, "DRAM": 19.0}, "all": {"L2": 50.0, "DRAM": 25.0}},
    }
    assert nb06.cpu_roofs(machine) == (90.0, 25.0)


def test_rung_intensities_come_from_the_traffic_model():
    for k, (per_fma, _) in GPU_TRAFFIC.items():
        assert nb06.rung_intensity(k) == pytest.approx(2 / per_fma)


# ---- The conclusions follow the numbers ---------------------------------------------------------------------------


def test_tiles_conclusion_reads_the_planted_loads():
    s = nb06.tiles_conclusion(1024, {1: 2048.0, 16: 128.0})
    assert "2,048" in s and "128" in s and "by 16" in s and "16 x 16" in s
    with pytest.raises(ValueError):
        nb06.tiles_conclusion(1024, {32: 64.0})


def test_ridge_conclusion_follows_which_ridge_is_higher():
    gpu_higher = nb06.ridge_conclusion(4.0, 20.0)
    assert "GPU's ridge is 5.0 times this CPU's" in gpu_higher and "bigger tiles" in gpu_higher
    cpu_higher = nb06.ridge_conclusion(40.0, 20.0)  # a CPU with many cores and little bandwidth per core
    assert "this CPU's ridge is 2.0 times the GPU's" in cpu_higher and "bigger tiles" not in cpu_higher
    assert "same reuse" in nb06.ridge_conclusion(20.0, 20.0)


def test_bound_rungs_and_their_conclusion():
    rungs = ["cuda_naive", "cuda_smem", "cuda_2d_tiling"]
    b = nb06.bound_rungs(20.0, rungs)
    assert b == {"cuda_naive": "memory", "cuda_smem": "memory", "cuda_2d_tiling": "compute"}
    s = nb06.bound_conclusion(b)
    assert "cuda_naive, cuda_smem would be memory-bound" in s and "first rung with enough reuse is cuda_2d_tiling" in s
    assert "Every rung reaches" in nb06.bound_conclusion(nb06.bound_rungs(0.1, rungs))
    assert "Every rung is memory-bound" in nb06.bound_conclusion(nb06.bound_rungs(1000.0, rungs))


def test_measured_conclusion_states_the_fraction_of_the_roof():
    assert "50% of the roof" in nb06.measured_conclusion(0.010, 0.005, "x")
    assert "measured low" in nb06.measured_conclusion(0.004, 0.005, "x")  # faster than a bound: the roof is wrong
    with pytest.raises(ValueError):
        nb06.measured_conclusion(0.0, 1.0, "x")


# ---- The judges: every correct answer passes, the planted wrong ones fail -------------------------------------------


def test_tile_loads_judge(capsys):
    assert quiet_check(capsys, "06.tile_loads", lambda t, k: 2 * k / t)[0] is True
    assert quiet_check(capsys, "06.tile_loads", lambda t, k: 2 * k // t)[0] is True  # exact where T divides k
    assert quiet_check(capsys, "06.tile_loads", lambda t, k: k / t)[0] is False
    assert quiet_check(capsys, "06.tile_loads", lambda t, k: 2 * k * t)[0] is False
    ok, out = quiet_check(capsys, "06.tile_loads", lambda t, k: ...)
    assert ok is False and "returns nothing yet" in out


def test_h100_time_judge_accepts_the_peak_and_the_sgemm_rate(capsys):
    n = 4096
    flops = 2 * n**3
    assert quiet_check(capsys, "06.h100_time", 1e3 * flops / 67e12, n=n)[0] is True
    assert quiet_check(capsys, "06.h100_time", 1e3 * flops / 50e12, n=n)[0] is True
    mem_ms = 1e3 * 3 * n * n * 4 / 3.35e12
    ok, out = quiet_check(capsys, "06.h100_time", mem_ms, n=n)
    assert ok is False and "memory time alone" in out
    assert quiet_check(capsys, "06.h100_time", 1e3 * flops / 67e9, n=n)[0] is False  # GFLOP/s taken for TFLOP/s


def test_ridge_judge(capsys):
    cpu = dict(cpu_gflops=80.0, cpu_gbps=20.0)
    assert quiet_check(capsys, "06.ridge", (4.0, 20.0), **cpu)[0] is True
    assert quiet_check(capsys, "06.ridge", (4.1, 50_000 / 3_350), **cpu)[0] is True  # the SGEMM rate: fair too
    assert quiet_check(capsys, "06.ridge", (0.25, 0.05), **cpu)[0] is False
    assert quiet_check(capsys, "06.ridge", (4.0, 40.0), **cpu)[0] is False


def test_min_tile_judge(capsys):
    assert quiet_check(capsys, "06.min_tile", 80)[0] is True
    assert quiet_check(capsys, "06.min_tile", 128)[0] is True
    ok, out = quiet_check(capsys, "06.min_tile", 256)
    assert ok is False and "not the smallest" in out
    ok, out = quiet_check(capsys, "06.min_tile", 32)
    assert ok is False and "below the ridge" in out
    assert math.isclose(nb06.ridge(H["fp32_peak_gflops"], H["hbm_gbps"]) * 4, 80)


def test_notebook_06_has_its_four_exercises():
    assert [e.id for e in lab.exercises("06")] == ["06.tile_loads", "06.h100_time", "06.ridge", "06.min_tile"]
