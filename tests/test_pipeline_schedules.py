"""The pipeline schedules of issue 35 (whygpu.schedules, also whygpu.distributed.schedules), checked as pure
functions, without MPI: every action once, the dependencies met by the timing, 1F1B's warm-up and both stashes
exact, the unit-time bubble equal to (p - 1) / (m + p - 1), 2 m (p - 1) messages, the grid of p = 4, m = 8 as
drawn by hand, the events a valid Chrome trace, a broken 1F1B caught by the checker, and
whygpu.distributed.schedules the same module's names."""

from __future__ import annotations

from fractions import Fraction

import pytest

from whygpu import schedules as S
from whygpu.predict import validate_chrome_trace, write_chrome_trace
from whygpu.predict.pipeline import to_events

SIZES = [(p, m) for p in range(1, 6) for m in range(1, 10)]


def _ends(timing):
    return {(t.rank, t.kind, t.micro): t for lane in timing for t in lane}


def _assert_dependencies(timing, p, m):
    at = _ends(timing)
    for r in range(p):
        for i in range(m):
            f, b = at[(r, "F", i)], at[(r, "B", i)]
            if r > 0:
                assert f.start >= at[(r - 1, "F", i)].end
            assert b.start >= f.end
            if r < p - 1:
                assert b.start >= at[(r + 1, "B", i)].end
    for lane in timing:  # one action at a time on each rank, in its list's order
        for a, b in zip(lane, lane[1:]):
            assert b.start >= a.end


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_every_action_once_and_dependencies_hold(name):
    for p, m in SIZES:
        sched = S.schedule(name, p, m)
        assert (sched.p, sched.m, sched.name) == (p, m, name)
        for r, lane in enumerate(sched.ranks):
            assert sorted((a.kind, a.micro) for a in lane) == sorted((k, i) for k in "FB" for i in range(m))
            assert all(a.rank == r for a in lane)
            assert [t.action for t in sched.timing[r]] == list(lane)  # the timing runs the lists' order
        _assert_dependencies(sched.timing, p, m)
        assert S.check_schedule(sched.ranks, p, m, name) == [list(lane) for lane in sched.timing]
        rows = sched.table()
        assert len(rows) == 2 * m * p and len(set((r, s) for r, s, _, _ in rows)) == len(rows)
        assert sched.steps == 2 * (m + p - 1)


def test_one_f_one_b_warmup_and_shape():
    for p, m in SIZES:
        sched = S.one_f_one_b(p, m)
        for r, lane in enumerate(sched.ranks):
            w = min(m, p - r - 1)
            assert S.warmup(p, r, m) == w
            kinds = "".join(a.kind for a in lane)
            assert kinds == "F" * w + "FB" * (m - w) + "B" * w  # w warm-up F, m - w F/B pairs, w cool-down B
            assert kinds.startswith("F" * w) and S.leading_forwards(sched.ranks)[r] == min(m, p - r)
            assert [a.micro for a in lane if a.kind == "B"] == list(range(m))


def test_gpipe_runs_all_forwards_then_backwards_in_micro_batch_order():
    for p, m in SIZES:
        for lane in S.gpipe(p, m).ranks:
            assert [str(a) for a in lane] == [f"F{i}" for i in range(m)] + [f"B{i}" for i in range(m)]


def test_stash_peaks():
    for p, m in SIZES:
        assert S.stash_peak(S.gpipe(p, m).ranks) == [m] * p
        assert S.stash_peak(S.one_f_one_b(p, m).ranks) == [min(m, p - r) for r in range(p)]


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_unit_time_bubble_equals_the_formula_exactly(name):
    for p, m in SIZES:
        timing = S.schedule(name, p, m).timing
        length = max(t.end for lane in timing for t in lane)
        idle = p * length - sum(t.end - t.start for lane in timing for t in lane)
        assert Fraction(int(idle), int(p * length)) == Fraction(p - 1, m + p - 1)
        assert S.measured_bubble(timing) == S.bubble_fraction(p, m) == (p - 1) / (m + p - 1)


def test_bubble_with_backward_twice_the_forward():
    # The figures of GPipe and PipeDream-flush draw B twice as long as F: the step is (m + p - 1)(t_F + t_B) and the
    # bubble the same (p - 1) / (m + p - 1) for both schedules.
    for p, m in SIZES:
        for name in S.SCHEDULES:
            timing = S.timed(S.schedule(name, p, m).ranks, forward=1.0, backward=2.0)
            assert max(t.end for lane in timing for t in lane) == 3 * (m + p - 1)
            assert S.measured_bubble(timing) == S.bubble_fraction(p, m)


def test_messages():
    for p, m in SIZES:
        for name in S.SCHEDULES:
            sent = S.messages(p, m, name)
            assert len(sent) == 2 * m * (p - 1) == len(set(sent))
            assert {(s.src, s.dst, s.kind, s.micro) for s in sent} == {
                *((r, r + 1, "F", i) for r in range(p - 1) for i in range(m)),
                *((r, r - 1, "B", i) for r in range(1, p) for i in range(m)),
            }
    assert S.messages(2, 1, "gpipe") == [(0, 1, "F", 0), (1, 0, "B", 0)]


GPIPE_4_8 = """\
rank 0 | F0 F1 F2 F3 F4 F5 F6 F7 .  .  .  .  .  .  B0 B1 B2 B3 B4 B5 B6 B7
rank 1 | .  F0 F1 F2 F3 F4 F5 F6 F7 .  .  .  .  B0 B1 B2 B3 B4 B5 B6 B7 .
rank 2 | .  .  F0 F1 F2 F3 F4 F5 F6 F7 .  .  B0 B1 B2 B3 B4 B5 B6 B7 .  .
rank 3 | .  .  .  F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7 .  .  ."""

# PipeDream-flush (Narayanan et al. 2021, figure 4, top) with F and B one step each: rank r's warm-up is 3 - r
# forwards; the last rank starts B0 right after F0, and each rank's B i follows the next rank's by one step.
ONE_F_ONE_B_4_8 = """\
rank 0 | F0 F1 F2 F3 .  .  .  B0 F4 B1 F5 B2 F6 B3 F7 B4 .  B5 .  B6 .  B7
rank 1 | .  F0 F1 F2 .  .  B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 .  B6 .  B7 .
rank 2 | .  .  F0 F1 .  B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 .  B7 .  .
rank 3 | .  .  .  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7 .  .  ."""


def test_grids_of_p4_m8():
    assert S.grid(S.gpipe(4, 8)) == GPIPE_4_8
    assert S.grid(S.one_f_one_b(4, 8).timing) == ONE_F_ONE_B_4_8
    assert S.grid(S.timed(S.gpipe(1, 1).ranks, backward=2)) == "rank 0 | F0 B0 B0"
    with pytest.raises(ValueError, match="whole time steps"):
        S.grid(S.timed(S.gpipe(2, 2).ranks, forward=0.5))


def _broken_warmup(p, m, rank):
    """1F1B with rank ``rank``'s warm-up p - r forwards instead of p - r - 1 (at most m)."""
    ranks = [list(lane) for lane in S.one_f_one_b(p, m).ranks]
    w = min(m, p - rank)
    lane = [S.Action(rank, "F", i) for i in range(w)]
    for j in range(m - w):
        lane += [S.Action(rank, "F", w + j), S.Action(rank, "B", j)]
    lane += [S.Action(rank, "B", i) for i in range(m - w, m)]
    ranks[rank] = lane
    return ranks


def test_checker_catches_a_wrong_warmup():
    for p, m in [(2, 4), (3, 8), (4, 8), (5, 9)]:
        for rank in range(p):
            broken = _broken_warmup(p, m, rank)
            S.timed(broken)  # it still runs: more warm-up costs stash, not correctness
            assert S.stash_peak(broken)[rank] == min(m, p - rank + 1)
            with pytest.raises(ValueError, match=rf"1F1B's rank {rank} .*warm-up of {p - rank}.*= {p - rank - 1}"):
                S.check_schedule(broken, p, m, "1f1b")
    # With m <= p - r the extra warm-up forward does not exist, and the list is still 1F1B's.
    S.check_schedule(_broken_warmup(4, 2, 1), 4, 2, "1f1b")


def test_checker_catches_missing_doubled_and_deadlocked_actions():
    ranks = [list(lane) for lane in S.one_f_one_b(3, 4).ranks]
    missing = [lane[:] for lane in ranks]
    del missing[1][2]
    with pytest.raises(ValueError, match=r"rank 1 never runs .*missing"):
        S.check_schedule(missing, 3, 4, "1f1b")
    doubled = [lane[:] for lane in ranks]
    doubled[2].append(S.Action(2, "F", 0))
    with pytest.raises(ValueError, match=r"rank 2 runs F0 2 times \(doubled"):
        S.check_schedule(doubled, 3, 4, "1f1b")
    # Rank 1 runs B0 before its own F0: B0 waits for an F0 that can only come after it.
    swapped = [lane[:] for lane in ranks]
    swapped[1] = [S.Action(1, "B", 0)] + [a for a in swapped[1] if (a.kind, a.micro) != ("B", 0)]
    with pytest.raises(ValueError, match=r"deadlocks.*rank 1's B0 waits for F0 on rank 1"):
        S.check_schedule(swapped, 3, 4, "1f1b")
    with pytest.raises(ValueError, match="deadlocks"):
        S.timed(swapped)
    with pytest.raises(ValueError, match="GPipe's rank 0"):
        S.check_schedule(ranks, 3, 4, "gpipe")
    reordered = [list(lane) for lane in S.gpipe(2, 3).ranks]
    reordered[0][3:] = reordered[0][3:][::-1]
    with pytest.raises(ValueError, match=r"rank 0 runs its Bs in the order \[2, 1, 0\]"):
        S.check_schedule(reordered, 2, 3, "gpipe")
    with pytest.raises(ValueError, match="of rank 0"):
        S.timed([ranks[0], ranks[0], ranks[2]])
    with pytest.raises(ValueError, match="only 3 micro-batches"):
        S.check_schedule(ranks, 3, 3, "1f1b")
    with pytest.raises(ValueError, match="not p = 2"):
        S.check_schedule(ranks, 2, 4, "1f1b")


def test_events_are_a_chrome_trace_and_meet_the_dependencies(tmp_path):
    p, m = 4, 8
    forward = [1e-3, 3e-3, 2e-3, 1.5e-3]  # unequal stages: rank 1 is the slow one
    backward = [2e-3, 5e-3, 4e-3, 3e-3]
    for name in S.SCHEDULES:
        sched = S.schedule(name, p, m)
        events = to_events(sched, forward, backward)
        assert sorted(events) == list(range(p))
        path = tmp_path / f"{name}.json"
        write_chrome_trace(path, events, metadata={"schedule": name})
        busy = validate_chrome_trace(path)
        for r in range(p):
            assert busy[(r, 1)] == pytest.approx(m * (forward[r] + backward[r]), rel=1e-9)
            for e in events[r]:
                assert e.lane == "compute" and e.kind in ("forward", "backward") and e.rank == r
                assert e.duration == pytest.approx(forward[r] if e.kind == "forward" else backward[r])
        timing = [[S.Timed(e.rank, e.name[0], e.args["micro"], e.start, e.end) for e in events[r]] for r in range(p)]
        _assert_dependencies(timing, p, m)
        # The slow stage sets the pace: the step is its busy time and then some (the fill and the drain).
        assert max(e.end for lane in events.values() for e in lane) > m * (forward[1] + backward[1])
    assert to_events(S.gpipe(2, 1), 1.0, 1.0)[1][0].start == 1.0


@pytest.mark.parametrize(
    "args",
    [
        ("gpipe", 0, 4), ("1f1b", 4, 0), ("1f1b", -1, 2), ("gpipe", 2.0, 4), ("gpipe", 2, "4"), ("1f1b", True, 4),
        ("1f1b", 4, False), ("pipedream", 4, 8), ("GPipe ", 4, 8), (None, 4, 8),
    ],
)  # fmt: skip
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        S.schedule(*args)


def test_bad_arguments_elsewhere():
    for bad in [(0, 1), (1, 0), (True, 2), (2, 1.5)]:
        with pytest.raises(ValueError):
            S.bubble_fraction(*bad)
        with pytest.raises(ValueError):
            S.messages(*bad)
    ranks = S.gpipe(2, 2).ranks
    for fwd in [0.0, -1.0, float("nan"), [1.0], [1.0, float("inf")], True, None, "1"]:
        with pytest.raises(ValueError):
            S.timed(ranks, forward=fwd)
    with pytest.raises(ValueError, match="unknown pipeline schedule"):
        S.check_schedule(ranks, 2, 2, "zb")
    with pytest.raises(ValueError):
        S.timed([])
    with pytest.raises(ValueError, match="kind 'X'"):
        S.timed([[S.Action(0, "X", 0)]])


def test_the_distributed_name_is_the_same_module():
    pytest.importorskip("mpi4py")
    from whygpu.distributed import schedules as D

    assert D.__all__ == S.__all__ and all(getattr(D, name) is getattr(S, name) for name in S.__all__)
