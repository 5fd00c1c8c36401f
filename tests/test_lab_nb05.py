"""Notebook 05's judges and computed conclusions (whygpu.lab.nb05, issue 36), on planted results: this 2-core
machine, where openmp is no quicker than packed, and a 16-core one where it is -- the conclusion reads true on
both. No notebook is executed here (tests/test_notebook_labs.py does that)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from whygpu import lab
from whygpu.lab import nb05


def _rows(packed_ms: float, openmp_ms: float | None, acc: float = 0.929) -> dict:
    rows = {
        "python": {"epoch_s": 2.98, "accuracy": acc},
        "naive": {"epoch_s": 0.0388, "accuracy": acc},
        "packed": {"epoch_s": packed_ms / 1e3, "accuracy": acc},
    }
    if openmp_ms is not None:
        rows["openmp"] = {"epoch_s": openmp_ms / 1e3, "accuracy": acc}
    return rows


# As the issue measured on the 2-core EPYC: openmp 1.4-2.2 ms per epoch against packed's 1.3-1.4.
TWO_CORES = _rows(1.35, 1.4)
TWO_CORES_SLOWER = _rows(1.35, 2.2)
# Planted for a 16-core machine: openmp well ahead of packed.
SIXTEEN_CORES = _rows(1.3, 0.30)


def test_amdahl():
    assert nb05.amdahl(0.83, math.inf) == pytest.approx(1 / 0.17)
    assert nb05.amdahl(0.5, 2) == pytest.approx(1 / 0.75)
    assert nb05.amdahl(0.0, 100) == 1.0
    assert nb05.amdahl(1.0, math.inf) == math.inf
    with pytest.raises(ValueError):
        nb05.amdahl(1.2, 2)


def test_the_ladder_sentence_names_what_was_measured():
    s = nb05.ladder_sentence(TWO_CORES)
    assert s.startswith("Quickest per epoch here: packed (1.4 ms); slowest: python")
    assert "0.929 on every back end" in s
    assert "openmp" in nb05.ladder_sentence(SIXTEEN_CORES).split(";")[0]
    differ = _rows(1.35, 1.4)
    differ["openmp"]["accuracy"] = 0.925
    assert "differs" in nb05.ladder_sentence(differ)


def test_threads_on_two_cores_did_not_help_and_on_sixteen_did():
    assert "did not help measurably" in nb05.threads_sentence(TWO_CORES, 2)
    assert "threads hurt here" in nb05.threads_sentence(TWO_CORES_SLOWER, 2)
    s = nb05.threads_sentence(SIXTEEN_CORES, 16)
    assert "threads helped here, x4.33" in s and "27% of the x16" in s
    assert "not measurable here" in nb05.threads_sentence(_rows(1.3, None), 2)
    assert "not measurable here" in nb05.threads_sentence(TWO_CORES, 1)


def test_the_conclusion_reads_true_on_both_machines():
    two = nb05.conclusion(TWO_CORES, 0.83, 2)
    assert "83.0% of a training step" in two and "more than x5.9 quicker" in two
    assert "x1.71 quicker, 85% of x2" in two  # Amdahl with the 2 cores used perfectly
    assert "threads did not help measurably." in two.splitlines()[-1]
    assert "in proportion" not in two.replace("in proportion only while", "")
    sixteen = nb05.conclusion(SIXTEEN_CORES, 0.83, 16)
    assert "this machine's 16 threads" in sixteen and "x4.51 quicker, 28% of x16" in sixteen
    assert sixteen.splitlines()[-1].endswith("threads helped, but less than in proportion.")
    assert nb05.conclusion(SIXTEEN_CORES, 0.999, 16).count("x16") >= 1
    assert "not measurable here" in nb05.conclusion(_rows(1.3, None), 0.8, 2).splitlines()[-1]


def test_the_conclusion_checks_amdahl_against_the_profiled_steps():
    holds = {"packed": {"step_s": 4.8e-3, "matmul_s": 3.9e-3}, "openmp": {"step_s": 3.5e-3, "matmul_s": 2.6e-3}}
    assert "the law holds within 15%" in nb05.conclusion(TWO_CORES, 3.9 / 4.8, 2, holds)
    # The 2-core run of the notebook under load: the rest of the step grew on openmp.
    grew = {"packed": {"step_s": 4.8e-3, "matmul_s": 3.9e-3}, "openmp": {"step_s": 87.9e-3, "matmul_s": 58.5e-3}}
    text = nb05.conclusion(TWO_CORES_SLOWER, 3.9 / 4.8, 2, grew)
    assert "not within 15%" in text and "0.9 ms per step on packed, 29.4 ms on openmp" in text


# ---- judges ---------------------------------------------------------------------------------------------------------


def _check(capsys, *args, **kw):
    ok = lab.check(*args, **kw)
    return ok, capsys.readouterr().out


def test_threads_judge(capsys):
    r = 1.35 / 1.4
    assert _check(capsys, "05.threads", (r, False), rows=TWO_CORES, threads=2)[0]
    assert _check(capsys, "05.threads", (r, True), rows=TWO_CORES, threads=2)[0]  # within the noise: either
    assert _check(capsys, "05.threads", (round(r, 2), False), rows=TWO_CORES, threads=2)[0]  # read off the table
    ok, out = _check(capsys, "05.threads", (1.35e-3 - 1.4e-3, False), rows=TWO_CORES, threads=2)
    assert ok is False and "a difference of times" in out
    ok, out = _check(capsys, "05.threads", (1 / r, False), rows=TWO_CORES, threads=2)
    assert ok is False and "the inverse" in out
    slower = 1.35 / 2.2
    assert _check(capsys, "05.threads", (slower, False), rows=TWO_CORES_SLOWER, threads=2)[0]
    assert not _check(capsys, "05.threads", (slower, True), rows=TWO_CORES_SLOWER, threads=2)[0]
    quick = 1.3 / 0.3
    assert _check(capsys, "05.threads", (quick, True), rows=SIXTEEN_CORES, threads=16)[0]
    assert not _check(capsys, "05.threads", (quick, False), rows=SIXTEEN_CORES, threads=16)[0]
    assert not _check(capsys, "05.threads", (quick, "yes"), rows=SIXTEEN_CORES, threads=16)[0]
    assert not _check(capsys, "05.threads", (..., ...), rows=SIXTEEN_CORES, threads=16)[0]
    # one thread: the ratio is still read off the table, either answer to "helped" holds
    ok, out = _check(capsys, "05.threads", (r, True), rows=TWO_CORES, threads=1)
    assert ok and "not measurable here" in out
    assert not _check(capsys, "05.threads", (1.35e-3 - 1.4e-3, False), rows=TWO_CORES, threads=1)[0]
    ok, out = _check(capsys, "05.threads", (1.0, True), rows=_rows(1.3, None), threads=2)
    assert ok and "no openmp back end" in out


def test_linear_backward_judge(capsys):
    ok, out = _check(capsys, "05.linear_backward", lambda x, W, dy: (dy.T @ x, dy.sum(axis=0), dy @ W))
    assert ok and "match the float64 reference" in out
    # any correct way is right: float64, einsum, lists
    assert _check(
        capsys,
        "05.linear_backward",
        lambda x, W, dy: (np.einsum("bo,bi->oi", dy, x), list(dy.astype(np.float64).sum(0)), dy @ W),
    )[0]
    ok, out = _check(capsys, "05.linear_backward", lambda x, W, dy: (dy.T @ x, dy.mean(axis=0), dy @ W))
    assert ok is False and "db is off" in out
    ok, out = _check(capsys, "05.linear_backward", lambda x, W, dy: (x.T @ dy, dy.sum(axis=0), dy @ W))
    assert ok is False and "dW has shape (5, 3); it should be (3, 5)" in out
    ok, out = _check(capsys, "05.linear_backward", lambda x, W, dy: (dy.T @ x, dy.sum(axis=0), dy @ W.T))
    assert ok is False and "raised" in out
    ok, out = _check(capsys, "05.linear_backward", lambda x, W, dy: (..., ..., ...))
    assert ok is False and "not answered yet" in out


def test_amdahl_judge(capsys):
    ok, out = _check(capsys, "05.amdahl", 1 / 0.17, share=0.83)
    assert ok and "x5.9" in out
    assert _check(capsys, "05.amdahl", 5.9, share=0.83)[0]  # read off, rounded
    ok, out = _check(capsys, "05.amdahl", 0.17, share=0.83)
    assert ok is False and "fraction of the step left" in out
    ok, out = _check(capsys, "05.amdahl", 1 / 0.83, share=0.83)
    assert ok is False and "1 / share" in out
    assert not _check(capsys, "05.amdahl", 2 * 0.83, share=0.83)[0]
    assert not _check(capsys, "05.amdahl", "six", share=0.83)[0]
