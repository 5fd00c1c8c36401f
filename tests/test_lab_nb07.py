"""Notebook 07's exercises and computed conclusions (whygpu.lab.nb07), on planted numbers: no notebook runs here."""

from __future__ import annotations

import math

import pytest

from whygpu import lab, scaleout
from whygpu.lab import nb07

ONE = {"forward_s": 1.4e-4, "backward_s": 1.1e-4, "exposed_s": 0.0, "update_s": 2.2e-5, "step_s": 2.9e-4}
SHARE = {"forward_s": 1.0e-4, "backward_s": 0.8e-4, "exposed_s": 0.0, "update_s": 2.1e-5, "step_s": 2.0e-4}
# 2 ranks on 2 cores, as measured on the 2-core EPYC: the allreduce's wait dominates
TWO_SLOW = {"forward_s": 2.5e-4, "backward_s": 3.0e-4, "exposed_s": 1.0e-3, "update_s": 5e-5, "step_s": 2.0e-3}
# 2 ranks each with its own cores and a quick link: the step shrinks, the backward pass changes the most
TWO_FAST = {"forward_s": 0.8e-4, "backward_s": 1.9e-4, "exposed_s": 1.0e-5, "update_s": 2.2e-5, "step_s": 1.8e-4}


def test_two_ranks_conclusion_names_the_measured_parts():
    s = nb07.two_ranks_conclusion(ONE, SHARE, TWO_SLOW, batch=64, grad_bytes=38_984, cores=2, busy_cores=0.6)
    assert "2.000 ms on 2 ranks against 0.290 ms on 1 rank" in s
    assert "2 ranks took more time per step than 1" in s
    assert "the largest change is waiting for the allreduce" in s
    assert "the same 2 core(s)" in s and "0.60 of them busy" in s
    assert "x3.06" in s  # beside the other rank: 0.55 ms against 0.18 ms alone
    assert "38.98 KB" not in s and "39.0 KB gradient" in s


def test_two_ranks_conclusion_when_two_ranks_pay():
    s = nb07.two_ranks_conclusion(ONE, SHARE, TWO_FAST, batch=64, grad_bytes=38_984, cores=8, busy_cores=1.9)
    assert "2 ranks took less time per step than 1" in s
    assert "the largest change is the backward pass" in s
    assert "more time" not in s


def test_two_ranks_conclusion_without_mpi_says_not_measurable():
    s = nb07.two_ranks_conclusion(ONE, SHARE, None, batch=64, grad_bytes=38_984, reason="mpi4py is not installed")
    assert "not measurable here (mpi4py is not installed)" in s
    assert "0.290 ms" in s


def test_mean_of_ranks():
    assert nb07.mean_of_ranks([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0, "c": 0.0}]) == {"a": 2.0, "b": 3.0}


def _table(eff, fixed, comm, ranks=(1, 2, 8, 64, 512)):
    return dict(ranks=list(ranks), efficiency=eff, fixed_lost_s=fixed, comm_lost_s=comm)


def test_scaling_conclusion_where_efficiency_stays_high():
    t = _table([1.0, 0.97, 0.93, 0.8, 0.62], [0, 1e-5, 2e-5, 3e-5, 4e-5], [0, 1e-6, 2e-6, 3e-6, 4e-6])
    s = nb07.scaling_conclusion("wide", "InfiniBand EDR", **t)
    assert "stays at or above 50% up to P = 512" in s and "62%, at P = 512" in s
    assert "stops" not in s


def test_scaling_conclusion_agrees_with_its_table_and_names_what_stops_it():
    # the table: 13% at P = 64 -- the conclusion may not say it keeps its efficiency there
    t = _table([1.0, 0.92, 0.6, 0.13, 0.02], [0, 1e-3, 8e-3, 9.6e-3, 9.8e-3], [0, 1e-4, 5e-4, 1.2e-3, 1.4e-3])
    s = nb07.scaling_conclusion("wide", "InfiniBand EDR", **t)
    assert "60% at P = 8, then 13% at P = 64, the first P below 50%, and 2% at P = 512" in s
    assert "the fixed per-step cost each rank still pays is what stops it" in s
    # the same table where the allreduce is the larger loss
    t["comm_lost_s"] = [0, 1e-4, 5e-4, 2e-2, 3e-2]
    assert "the allreduce is what stops it" in nb07.scaling_conclusion("wide", "10 GbE", **t)


def test_scaling_conclusion_when_the_first_step_already_loses_half():
    t = _table([0.4, 0.1], [1e-3, 2e-3], [0.0, 1e-3], ranks=(2, 8))
    s = nb07.scaling_conclusion("digits", "10 GbE", **t)
    assert "already below 50% at the first P in the table: 40% at P = 2" in s


def test_scaling_conclusion_refuses_a_ragged_table():
    with pytest.raises(ValueError):
        nb07.scaling_conclusion("m", "l", [1, 2], [1.0], [0.0], [0.0])


def test_the_exercises_are_registered():
    assert [e.id for e in lab.exercises("07")] == ["07.two_ranks", "07.allreduce_formula", "07.bigger_batch"]


def test_two_ranks_judge(capsys):
    assert lab.check("07.two_ranks", "exposed_s", one=ONE, two=TWO_SLOW) is True
    assert lab.check("07.two_ranks", "backward_s", one=ONE, two=TWO_SLOW) is False
    assert lab.check("07.two_ranks", "backward_s", one=ONE, two=TWO_FAST) is True
    assert lab.check("07.two_ranks", "allreduce", one=ONE, two=TWO_FAST) is False
    assert "not one of the parts" in capsys.readouterr().out


def _tree(S, P, alpha, bw):
    return 0.0 if P == 1 else 2 * math.ceil(math.log2(P)) * alpha + 2 * (P - 1) / P * S / bw


def test_allreduce_formula_judge_accepts_any_correct_form():
    assert lab.check("07.allreduce_formula", _tree) is True
    # the package's own function is a correct answer too
    assert (
        lab.check("07.allreduce_formula", lambda S, P, a, bw: scaleout.allreduce_s(S, P, a, bw, latency="tree")) is True
    )


@pytest.mark.parametrize(
    "wrong",
    [
        lambda S, P, a, bw: a + S / bw,  # one message
        lambda S, P, a, bw: 0.0 if P == 1 else 2 * (P - 1) * a + 2 * (P - 1) / P * S / bw,  # the ring's latency
        lambda S, P, a, bw: 0.0 if P == 1 else 2 * math.log2(P) * a + 2 * (P - 1) / P * S / bw,  # no ceil
        lambda S, P, a, bw: 2 * math.ceil(math.log2(P)) * a + (P - 1) / P * S / bw,  # half the bytes
    ],
)
def test_allreduce_formula_judge_catches_wrong_formulas(wrong):
    assert lab.check("07.allreduce_formula", wrong) is False


def test_bigger_batch_judge_accepts_a_range():
    given = dict(c0_s=7.7e-5, c1_s=5.4e-6, comm_s=1.44e-5, batch=512, ranks=8)
    want = nb07.batch_efficiency(**given)
    assert 0.75 < want < 0.85
    for answer in (want, want + 0.04, want - 0.04, round(want, 1)):
        assert lab.check("07.bigger_batch", answer, **given) is True
    assert lab.check("07.bigger_batch", want + 0.12, **given) is False
    assert lab.check("07.bigger_batch", 100 * want, **given) is False  # a percentage, not a fraction


def test_bigger_batch_judge_names_the_forgotten_fixed_cost(capsys):
    given = dict(c0_s=7.7e-5, c1_s=5.4e-6, comm_s=1.44e-5, batch=512, ranks=8)
    no_c0 = nb07.batch_efficiency(0.0, 5.4e-6, 1.44e-5, 512, 8)
    assert lab.check("07.bigger_batch", no_c0, **given) is False
    assert "without the fixed per-step cost" in capsys.readouterr().out


def test_batch_efficiency_matches_the_package_curve():
    compute_at = lambda b: 7.7e-5 + 5.4e-6 * b  # noqa: E731
    curve = scaleout.scaling_curve(compute_at, lambda p: 1.44e-5 if p > 1 else 0.0, [1, 8], 512)
    assert nb07.batch_efficiency(7.7e-5, 5.4e-6, 1.44e-5, 512, 8) == pytest.approx(curve["efficiency"][1])
