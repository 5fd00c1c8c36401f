"""Notebook 01's judges and its computed conclusions (whygpu.lab.nb01), on planted results: this 2-core machine's
(from issue 36: cython above naive, reordered above blocked, a thread speed-up above 2 on 2 cores) and a
16-core machine's, where the order differs.  Fast: no notebook is executed (tests/test_notebook_labs.py does)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from whygpu import lab
from whygpu.lab import nb01

# kernel -> (GFLOP/s, n).  The 2-core figures are issue 36's (python at a small n).
TWO_CORES = {
    "python": (0.023, 64),
    "cython": (4.16, 256),
    "naive": (2.21, 256),
    "reordered": (25.5, 256),
    "blocked": (23.8, 256),
    "packed": (60.0, 256),
    "openmp": (95.0, 256),
}
# A 16-core AVX-512 machine: naive above cython, blocked above reordered, openmp far above packed.
SIXTEEN_CORES = {
    "python": (0.05, 64),
    "cython": (1.8, 256),
    "naive": (2.6, 256),
    "reordered": (20.0, 256),
    "blocked": (31.0, 256),
    "packed": (140.0, 256),
    "openmp": (1400.0, 256),
}


def _steps(text: str) -> dict[str, str]:
    """'hi / lo' -> the step's line."""
    return {m.group(1): line for line in text.splitlines() if (m := re.match(r"\s+(\w+ / \w+):", line))}


@pytest.mark.parametrize("results", [TWO_CORES, SIXTEEN_CORES], ids=["2 cores", "16 cores"])
def test_the_ladder_conclusion_reads_true_on_its_results(results):
    text = nb01.ladder_conclusion(results, l2_bytes=512 * 1024)
    steps = _steps(text)
    order = list(results)
    assert len(steps) == len(order) - 1
    for lo, hi in zip(order, order[1:]):
        line = steps[f"{hi} / {lo}"]
        (g0, n0), (g1, n1) = results[lo], results[hi]
        r = g1 / g0
        if n0 != n1:
            assert f"{hi} at n = {n1}, {lo} at n = {n0}" in line  # two sizes are named, never silently compared
        elif r >= nb01.SAME:
            assert "above" in line and "BELOW" not in line
        elif r <= 1 / nb01.SAME:
            assert "BELOW" in line
        else:
            assert "level" in line
    top = max(results, key=lambda k: results[k][0])
    assert f"Highest: {top}," in text
    assert f"({top} at n = {results[top][1]}, python at n = 64)" in text
    assert "faster" not in text.lower()


def test_two_cores_names_the_rungs_that_did_not_climb():
    text = nb01.ladder_conclusion(TWO_CORES, l2_bytes=512 * 1024)
    steps = _steps(text)
    assert "BELOW" in steps["naive / cython"] and "x0.53" in steps["naive / cython"]
    assert "level" in steps["blocked / reordered"]  # 23.8 / 25.5 is within x1.15
    assert "not every rung measured above" in text and "naive below" in text and "blocked level" in text
    # B at n = 256 is 256 KiB, inside a 512 KiB L2: the tiles have nothing to remove at this size.
    assert "B already fits in L2" in text
    assert "x4,130 the GFLOP/s of python (openmp at n = 256, python at n = 64)" in text


def test_sixteen_cores_reads_every_rung_above():
    text = nb01.ladder_conclusion(SIXTEEN_CORES, l2_bytes=2 * 1024 * 1024)
    assert "Here every rung measured above the one before it." in text
    assert "BELOW" not in text and "fits in L2" not in text
    assert "Highest: openmp, x28,000" in text


def test_blocked_level_with_b_over_l2_does_not_claim_a_reason():
    res = {"reordered": (20.0, 1024), "blocked": (20.5, 1024)}
    text = nb01.ladder_conclusion(res, l2_bytes=512 * 1024)
    assert "B overflows L2" in text and "does not say why" in text


@pytest.mark.parametrize("results", [TWO_CORES, SIXTEEN_CORES], ids=["2 cores", "16 cores"])
def test_the_title_says_what_the_bars_show_and_names_the_top_bar(results):
    title = nb01.ladder_title(results)
    assert title.startswith("GFLOP/s of each rung")
    assert title.endswith("highest: " + max(results, key=lambda k: results[k][0]))
    assert not re.search(r"faster|slower", title, re.IGNORECASE)


def test_rung_reasons_use_this_machines_numbers_and_the_rungs_code():
    rows = [
        {"kernel": "naive", "n": 256, "compute_roof": "scalar", "predicted_gflops": 2.0},
        {"kernel": "reordered", "n": 256, "compute_roof": "simd_baseline", "predicted_gflops": 30.0},
        {"kernel": "packed", "n": 512, "compute_roof": "simd_1t", "predicted_gflops": 90.0},  # another n: left out
    ]
    out = nb01.rung_reasons(rows, {"naive": (1.0, 256), "reordered": (6.0, 256), "packed": (60.0, 256)})
    assert len(out) == 2
    assert out[0].startswith("naive (scalar roof, 2 GFLOP/s): naive runs at 50% of its roof") and "column" in out[0]
    assert "reordered runs at 20% of its roof" in out[1] and "loaded and stored" in out[1]


def test_the_loop_order_conclusion_follows_the_times():
    text = nb01.loop_order_conclusion(0.02, {"python": 0.03, "reordered": 0.0001, "naive": 0.021}, 64)
    assert "python 30 ms against yours 20 ms, python's time / yours = 1.5 (yours took less time)" in text
    assert "reordered's time / yours = 0.005 (yours took more time)" in text
    assert "naive's time / yours = 1.05 (level" in text


def _rounds(t1, speedups):
    return [t1 / s for s in speedups]


def test_threads_above_the_cores_on_two_cores():
    # Issue 36: x2.29 on 2 cores -- the 1-thread rounds were slowed.
    t1 = [0.030, 0.041, 0.031, 0.040, 0.030]
    times = {1: t1, 2: [t / 2.29 for t in t1]}
    text = nb01.thread_conclusion(times, cores=2)
    assert "speed-up x2.29" in text and "above 2, which Amdahl's law forbids" in text
    assert "s = -0.13" in text and "ranged over x1.37" in text


def test_threads_spread_across_one_is_not_measurable():
    # Issue 36: a spread of x0.90-2.16.
    t1 = [0.03] * 5
    times = {1: t1, 2: _rounds(0.03, [0.90, 1.5, 2.16, 1.2, 1.9])}
    text = nb01.thread_conclusion(times, cores=2)
    assert "rounds 0.90-2.16" in text and "not measurable here" in text
    assert "gained x2.16, above 2, which no split" in text
    assert "Amdahl" not in text  # a median from rounds that disagree is no serial fraction


def test_threads_a_spread_without_a_round_above_p():
    times = {1: [0.03] * 5, 2: _rounds(0.03, [0.95, 1.5, 1.8, 1.2, 1.9])}
    text = nb01.thread_conclusion(times, cores=2)
    assert "not measurable here" in text and "no split" not in text


def test_threads_below_one_says_what_the_law_leaves_out():
    times = {1: [0.03] * 5, 2: _rounds(0.03, [0.6, 0.62, 0.8, 0.61, 0.65])}
    text = nb01.thread_conclusion(times, cores=2)
    assert "below 1" in text and "s = 2.23" in text and "other programs on the cores" in text


def test_sixteen_cores_within_amdahl():
    times = {1: [0.1] * 5, 2: _rounds(0.1, [1.9, 1.95, 1.92, 1.9, 1.93]), 16: _rounds(0.1, [11.0] * 5)}
    text = nb01.thread_conclusion(times, cores=16)
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2 threads: speed-up x1.92") and "of the 16 cores: within Amdahl's law" in lines[0]
    assert "s = 0.04" in lines[0] and "96%" in lines[0]
    assert lines[1].startswith("16 threads: speed-up x11") and "s = 0.03" in lines[1] and "69%" in lines[1]


def test_one_core_is_not_measurable():
    assert "not measurable here" in nb01.thread_conclusion({1: [0.1]}, cores=1)


# ---- the judges --------------------------------------------------------------------------------------------------


def _ikj(a, b):
    c = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for i in range(a.shape[0]):
        for p in range(a.shape[1]):
            c[i, :] += a[i, p] * b[p, :]
    return c


def _tiled(a, b, t=8):
    c = np.zeros((a.shape[0], b.shape[1]))
    for i0 in range(0, a.shape[0], t):
        for p0 in range(0, a.shape[1], t):
            c[i0 : i0 + t] += a[i0 : i0 + t, p0 : p0 + t].astype(np.float64) @ b[p0 : p0 + t]
    return c


@pytest.mark.parametrize(
    "answer",
    [_ikj, _tiled, lambda a, b: a @ b, lambda a, b: np.einsum("ik,kj->ij", a, b).tolist()],
    ids=["i-k-j", "tiled float64", "numpy", "einsum as lists"],
)
def test_loop_order_accepts_any_correct_product(answer, capsys):
    assert lab.check("01.loop_order", answer) is True


@pytest.mark.parametrize(
    "answer, says",
    [
        (lambda a, b: b.T @ a.T, "shape"),
        (lambda a, b: np.zeros((24, 28)), "all zeros"),
        (lambda a, b: (a @ b) * (1 + 1e-3), "the float64 product says"),
        (lambda a, b: a.astype(np.float16) @ b.astype(np.float16), "the float64 product says"),
    ],
    ids=["transposed", "zeros", "off by 1e-3", "float16"],
)
def test_loop_order_catches_wrong_products(answer, says, capsys):
    assert lab.check("01.loop_order", answer) is False
    assert says in capsys.readouterr().out


def test_serial_fraction(capsys):
    assert lab.check("01.serial_fraction", lambda S, p: (p / S - 1) / (p - 1)) is True
    assert lab.check("01.serial_fraction", lambda S, p: (1 / S - 1 / p) / (1 - 1 / p)) is True  # the same, rewritten
    assert lab.check("01.serial_fraction", lambda S, p: 1 - S / p) is False
    assert lab.check("01.serial_fraction", lambda S, p: ...) is False
    assert "not answered yet" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("guess, ok", [(40, True), (13, True), (110, True), (12, False), (120, False), (1.0, False)])
def test_predict_ratio_accepts_a_factor_of_three(guess, ok, capsys):
    assert lab.check("01.predict_ratio", guess, measured=38.0) is ok


@pytest.mark.parametrize("guess", [-3, 0, float("nan")])
def test_predict_ratio_rejects_what_is_no_ratio(guess, capsys):
    assert lab.check("01.predict_ratio", guess, measured=38.0) is False
