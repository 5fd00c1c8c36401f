"""The building blocks of trustworthy figures (whygpu.bench.trust, time_interleaved): the quiet guard on
planted CPU-time readings, spreads and "faster" only when they do not overlap, the impossible-figure tests,
and re-measuring once."""

from __future__ import annotations

import itertools

import pytest

from whygpu.bench import trust
from whygpu.bench.measure import time_interleaved

_STAT = """cpu  {u} 0 {s} {i} 0 0 0 {st} 0 0
cpu0 {u0} 0 {s0} {i0} 0 0 0 {st0} 0 0
cpu1 {u1} 0 {s1} {i1} 0 0 0 {st1} 0 0
intr 1 2 3
"""


def _write_stat(path, cpus):
    """A /proc/stat with two cores given as (user, system, idle, steal) in clock ticks."""
    (u0, s0, i0, st0), (u1, s1, i1, st1) = cpus
    path.write_text(
        _STAT.format(
            u=u0 + u1, s=s0 + s1, i=i0 + i1, st=st0 + st1, u0=u0, s0=s0, i0=i0, st0=st0, u1=u1, s1=s1, i1=i1, st1=st1
        )
    )


def test_cpu_times_reads_only_our_cores(tmp_path, monkeypatch):
    p = tmp_path / "stat"
    _write_stat(p, [(100, 0, 0, 0), (0, 0, 100, 0)])
    monkeypatch.setattr(trust, "_allowed_cpus", lambda: {1})  # only cpu1 is ours: it was idle
    t = trust.cpu_times(str(p))
    hz = trust.os.sysconf("SC_CLK_TCK")
    assert t["cpus"] == 1
    assert t["total"] == pytest.approx(100 / hz) and t["idle"] == pytest.approx(100 / hz)
    monkeypatch.setattr(trust, "_allowed_cpus", lambda: {0, 1})
    assert trust.cpu_times(str(p))["total"] == pytest.approx(200 / hz)
    assert trust.cpu_times(str(tmp_path / "missing")) is None


def test_load_between_subtracts_our_own_time_and_separates_steal():
    t0 = {"total": 0.0, "idle": 0.0, "steal": 0.0, "own": 0.0}
    # 10 s of core time: 4 idle, 1 stolen, 5 busy of which 3 were ours -> others 20%, steal 10%
    t1 = {"total": 10.0, "idle": 4.0, "steal": 1.0, "own": 3.0}
    load = trust.load_between(t0, t1)
    assert load["core"] is None  # no per-core readings
    assert {k: load[k] for k in ("others", "steal")} == pytest.approx({"others": 0.2, "steal": 0.1})
    assert trust.load_between(None, t1) is None
    assert trust.load_between(t1, t1) is None  # no time passed
    assert trust.load_between(t0, t1, min_total=20.0) is None  # shorter than asked: too short to tell
    # one clock tick of difference between the cores' counters and ours is resolution, not another program
    t0 = {"total": 0.0, "idle": 0.0, "steal": 0.0, "own": 0.0, "tick": 0.01}
    short = {"total": 0.2, "idle": 0.0, "steal": 0.0, "own": 0.19, "tick": 0.01}
    assert {k: trust.load_between(t0, short)[k] for k in ("others", "steal")} == pytest.approx(
        {"others": 0.0, "steal": 0.0}
    )
    busy = {**short, "own": 0.1}  # 10 ticks of 20 not ours (9 after the slack): another program
    assert trust.load_between(t0, busy)["others"] == pytest.approx(0.45)


def _sampler(values):
    it = iter(values)
    return lambda: next(it)


def test_guard_waits_for_quiet_and_records_it():
    busy, quiet = {"others": 0.5, "steal": 0.0}, {"others": 0.01, "steal": 0.0}
    reads = itertools.count()
    g = trust.QuietGuard(
        max_wait=10,
        sampler=_sampler([busy, busy, quiet]),
        reader=lambda: {"total": 10.0 * next(reads), "idle": 0.0, "steal": 0.0, "own": 0.0},
    )
    with g.block("openmp n=64") as rec:
        pass
    assert rec["others"] == 0.01 and rec["quiet"] is True
    assert rec["during"] == {"others": 1.0, "steal": 0.0}  # the planted reader: all busy, none ours
    doc = g.as_dict()
    assert doc["blocks"][0]["label"] == "openmp n=64"
    assert doc["busy"] is True and doc["others_max"] == 1.0  # busy during the block
    assert "other programs used up to 100%" in trust.quiet_caution(doc)


def test_guard_wait_is_bounded_and_steal_counts():
    stolen = {"others": 0.0, "steal": 0.3}
    g = trust.QuietGuard(max_wait=0.05, sampler=lambda: stolen, reader=lambda: None)
    rec = g.wait("peak")
    assert rec["quiet"] is False and rec["waited_s"] < 2
    caution = trust.quiet_caution(g.as_dict())
    assert "steal time" in caution and "30%" in caution
    # the total bound: once spent, no block waits
    g2 = trust.QuietGuard(max_wait=10, total_wait=0.0, sampler=lambda: stolen, reader=lambda: None)
    assert g2.wait("x")["waited_s"] < 0.5


def test_quiet_machine_has_no_caution_and_none_without_proc_stat():
    g = trust.QuietGuard(max_wait=0, sampler=lambda: {"others": 0.04, "steal": 0.0}, reader=lambda: None)
    g.wait("a")
    assert trust.quiet_caution(g.as_dict()) is None
    g = trust.QuietGuard(max_wait=5, sampler=lambda: None, reader=lambda: None)
    rec = g.wait("a")
    assert rec["quiet"] is None and rec["waited_s"] < 1  # nothing to read: never waits
    assert trust.quiet_caution(g.as_dict()) is None and g.as_dict()["measured"] is False


def test_merge_quiet_keeps_the_worst():
    a = trust.summarize([{"label": "a", "others": 0.01, "steal": 0.0}])
    b = trust.summarize([{"label": "b", "others": 0.2, "steal": 0.0}])
    m = trust.merge_quiet([a, None, b])
    assert m["others_max"] == 0.2 and m["busy"] and len(m["blocks"]) == 2
    assert trust.merge_quiet([None]) is None


def test_wait_setting_from_environment(monkeypatch):
    monkeypatch.setenv("WHYGPU_QUIET_WAIT", "0")
    assert trust.QuietGuard().max_wait == 0
    monkeypatch.setenv("WHYGPU_QUIET_WAIT", "soon")
    with pytest.warns(RuntimeWarning, match="WHYGPU_QUIET_WAIT"):
        assert trust.QuietGuard().max_wait == trust._WAIT_PER_BLOCK_S


def test_spread_and_compare():
    assert trust.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "low": 1.0, "high": 3.0}
    assert trust.spread([1.0, 2.0]) == {"median": 1.5, "low": 1.0, "high": 2.0}
    with pytest.raises(ValueError):
        trust.spread([])
    fast, slow = [1.0, 1.1, 0.9], [2.0, 2.2, 1.9]
    c = trust.compare(fast, slow)
    assert c["clear"] and c["ratio"] == pytest.approx(2.0) and c["low"] == pytest.approx(1.9 / 1.1)
    assert "x2 faster" in trust.faster_text("packed", "blocked", c)
    assert "slower" in trust.faster_text("blocked", "packed", trust.compare(slow, fast))
    assert not trust.compare([1.0], [1.2])["clear"]  # one sample each: no spread, 20% is not enough
    assert trust.compare([1.0], [2.0])["clear"]  # ... but a factor of 2 is
    overlap = trust.compare([1.0, 1.2], [1.1, 1.3])
    assert not overlap["clear"]
    text = trust.faster_text("a", "b", overlap)
    assert "faster" not in text and "cannot be told apart" in text


def test_impossible_figures():
    assert trust.impossible_fraction(1.43) and not trust.impossible_fraction(1.0)
    assert not trust.impossible_fraction(None) and not trust.impossible_fraction(float("nan"))
    assert trust.impossible_speedup(3.4, 4, cores=2)  # 4 threads on 2 cores: at most x2
    assert not trust.impossible_speedup(1.9, 4, cores=2)
    assert trust.impossible_speedup(2.1, 2) and not trust.impossible_speedup(2.0, 2)
    assert trust.impossible_serial(-0.1) and trust.impossible_serial(1.5)
    assert not trust.impossible_serial(0.0) and not trust.impossible_serial(None)
    # the 1-thread row against its own baseline: apart by more than 10% with separate spreads
    assert trust.baseline_differs([1.2, 1.25, 1.22], [1.0, 1.01, 0.99])
    assert not trust.baseline_differs([1.05, 1.06], [1.0, 1.01])  # 5%: within the tolerance
    assert not trust.baseline_differs([1.2, 0.9], [1.0, 1.01])  # spreads overlap: noise


def test_remeasure_once():
    calls = []

    def measure():
        calls.append(1)
        return [1.5, 0.9][len(calls) - 1]

    value, flag = trust.remeasure_once(measure, trust.impossible_fraction)
    assert value == 0.9 and flag == {"remeasured": True, "disturbed": False} and len(calls) == 2
    calls.clear()
    value, flag = trust.remeasure_once(lambda: calls.append(1) or 1.4, trust.impossible_fraction)
    assert flag == {"remeasured": True, "disturbed": True} and len(calls) == 2  # once, not more
    calls.clear()
    value, flag = trust.remeasure_once(lambda: calls.append(1) or 0.5, trust.impossible_fraction, first=0.8)
    assert value == 0.8 and flag["remeasured"] is False and not calls


def test_time_interleaved_alternates_and_pairs_samples():
    order = []
    t = time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        repeats=3,
        budget=10,
        expected={"a": 5.0, "b": 5.0},  # "slow" (>= budget / 4): no warm-up, one call per sample
    )
    assert order == ["a", "b"] * 3
    assert len(t["a"].times) == len(t["b"].times) == 3
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    t = time_interleaved({"x": lambda: None}, repeats=2, budget=10, contexts={"x": Ctx}, expected={"x": 5.0})
    assert len(entered) == 2  # a fresh context around every sample
    with pytest.raises(ValueError):
        time_interleaved({"x": lambda: None}, repeats=0)


# ---- The CLI warns about a thread count before measuring; the training figure keeps openmp --------------


def test_cli_warns_about_threads_before_any_measuring(monkeypatch, capsys):
    import whygpu.cli.explain as cli_explain
    from whygpu._threads import _CPUS
    from whygpu.cli import main

    seen = []
    monkeypatch.setattr(cli_explain, "run", lambda args: seen.append(capsys.readouterr().err) or 0)
    assert main(["explain", "8", "8", "8", "--threads", str(_CPUS + 1)]) == 0
    assert seen and f"warning: {_CPUS + 1} threads on {_CPUS} cores" in seen[0]


def test_train_keeps_the_parallel_bar_when_the_estimate_is_close(monkeypatch):
    import whygpu.bench.train as bt
    from whygpu import nn

    names = [b for b in ("openmp", "packed") if b in nn.backends()]
    if "openmp" not in names:
        pytest.skip("this build has no OpenMP back end")
    monkeypatch.setattr(bt, "_estimate_step", lambda *a, **k: 0.2)  # 3 steps + 2 warm-up: ~1 s
    doc = bt.run_train(steps=3, batch=16, layers=(8, 4, 3), backends=names, budget=0.5, sweep_batches=[])
    runs = {r["backend"]: r for r in doc["runs"]}
    assert "skipped" not in runs["openmp"] and "over_budget" in runs["openmp"]  # 2x the budget: kept
    if "packed" in runs:
        assert "skipped" in runs["packed"]  # the same estimate skips a serial rung
    assert doc["quiet"]["blocks"] and doc["quiet"]["blocks"][0]["label"] == "train openmp"
    monkeypatch.setattr(bt, "_estimate_step", lambda *a, **k: 10.0)  # far beyond: skipped after all
    doc = bt.run_train(steps=3, batch=16, layers=(8, 4, 3), backends=["openmp"], budget=0.5, sweep_batches=[])
    assert "skipped" in doc["runs"][0]


def test_report_cautions_from_the_quiet_records(tmp_path):
    from whygpu.report import intro

    machine = {"cpu": {"cores": 2}, "cpu_busy_before": 0.0}
    busy = trust.summarize([{"label": "openmp n=512", "others": 0.01, "steal": 0.0, "during": {"others": 0.3}}])
    quiet = trust.summarize([{"label": "openmp n=512", "others": 0.01, "steal": 0.02}])

    def text(docs):
        return " ".join(b[1] for b in intro.section(docs, tmp_path, [], 0) if b[0] == "p")

    assert "Caution: the machine was not quiet: other programs used up to 30%" in text(
        {"ladder": {"machine": machine, "quiet": busy}, "scaling": {"machine": machine, "quiet": quiet}}
    )
    assert "Caution" not in text({"ladder": {"machine": machine, "quiet": quiet}})
    # an older document, without the guard's record: the load when its run started, at the same threshold
    assert "Caution" in text({"ladder": {"machine": {**machine, "cpu_busy_before": 0.08}}})


def test_training_caption_says_slower_only_when_step_spreads_do_not_overlap(tmp_path):
    from whygpu.report import training

    def run(name, s, lo, hi):
        return {
            "backend": name,
            "step_s": s,
            "step_s_low": lo,
            "step_s_high": hi,
            "samples_per_s": 256 / s,
            "matmul_share": 0.8,
            "accuracy": 0.9,
            "final_loss": 0.3,
            "threads": 1,
            "device": "cpu",
            "rows": [],
            "matmul_s": 0.8 * s,
            "other_s": 0.2 * s,
        }

    def caption(runs):
        doc = {"params": {"layers": "8-4-3", "batch": 256, "steps": 3}, "runs": runs, "machine": {}}
        return next(b[2] for b in training.section({"train": doc}, tmp_path, [], 1) if b[0] == "fig")

    apart = caption([run("openmp", 0.010, 0.009, 0.011), run("packed", 0.020, 0.019, 0.022)])
    assert "x2.00 slower" in apart
    close = caption([run("openmp", 0.010, 0.008, 0.013), run("packed", 0.012, 0.011, 0.014)])
    assert "slower" not in close and "no back end is measurably faster" in close


# ---------------------------------------------------------------- the process's cores, one busy core
def _status(path, cpus: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"Name:\tpython\nCpus_allowed:\tff\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t0\n")


def test_allowed_cpus_are_the_whole_process_not_the_calling_thread(tmp_path):
    # the main thread pinned to core 0 (what os.sched_getaffinity(0) reads on Linux), its workers on 2-5 and 7
    proc = tmp_path / "self"
    _status(proc / "status", "0")
    _status(proc / "task" / "100" / "status", "0")
    _status(proc / "task" / "101" / "status", "2-5")
    _status(proc / "task" / "102" / "status", "7")
    assert trust._allowed_cpus(str(proc)) == {0, 2, 3, 4, 5, 7}
    assert trust._parse_cpu_list("0-1,4,8-9\n") == {0, 1, 4, 8, 9}


def _cores(busy: list[float], own: float = 0.0, span: float = 1.0) -> tuple[dict, dict]:
    """Two readings `span` s apart of len(busy) cores, core i busy for busy[i] of it; `own` s ours."""
    t0 = {"total": 0.0, "idle": 0.0, "steal": 0.0, "own": 0.0, "tick": 0.0, "per_cpu": [[0.0, 0.0, 0.0]] * len(busy)}
    per = [[span, span * (1 - b), 0.0] for b in busy]
    t1 = {
        "total": span * len(busy),
        "idle": sum(p[1] for p in per),
        "steal": 0.0,
        "own": own,
        "tick": 0.0,
        "per_cpu": per,
    }
    return t0, t1


def test_one_fully_busy_core_among_many_is_flagged_though_the_average_is_low():
    t0, t1 = _cores([1.0] + [0.0] * 63)  # another program holds one core of 64: 1.6% on average
    load = trust.load_between(t0, t1)
    assert load["others"] == pytest.approx(1 / 64) and load["others"] < trust.QUIET_THRESHOLD
    assert load["core"] == pytest.approx(1.0)
    g = trust.QuietGuard(max_wait=0, sampler=lambda: load, reader=lambda: None)
    rec = g.wait("openmp n=1024")
    assert rec["quiet"] is False and rec["core"] == 1.0
    doc = g.as_dict()
    assert doc["busy"] and doc["core_max"] == 1.0
    assert "held one core up to 100%" in trust.quiet_caution(doc)
    # our own threads on the cores are not another program: all our time is taken off the busiest core
    t0, t1 = _cores([1.0] + [0.0] * 63, own=1.0)
    assert trust.load_between(t0, t1)["core"] == pytest.approx(0.0)
    # a core a third busy is below the per-core threshold (one clock tick is 10% of a 0.1 s look)
    t0, t1 = _cores([0.3] + [0.0] * 63)
    assert not trust.QuietGuard(max_wait=0)._busy(trust.load_between(t0, t1))


def test_cpu_times_keeps_each_cores_counters(tmp_path, monkeypatch):
    p = tmp_path / "stat"
    _write_stat(p, [(100, 0, 0, 5), (0, 0, 100, 0)])
    monkeypatch.setattr(trust, "_allowed_cpus", lambda: {0, 1})
    hz = trust.os.sysconf("SC_CLK_TCK")
    per = trust.cpu_times(str(p))["per_cpu"]
    assert per == [pytest.approx([105 / hz, 0.0, 5 / hz]), pytest.approx([100 / hz, 100 / hz, 0.0])]


def test_remeasure_once_can_keep_the_better_of_both_draws():
    # a figure impossible at first (1.3), then 0.8: the plain rule keeps the fresh draw, `best` the better one
    assert trust.remeasure_once(lambda: 0.8, trust.impossible_fraction, first=1.3)[0] == 0.8
    value, flag = trust.remeasure_once(lambda: 0.8, trust.impossible_fraction, first=1.3, best=max)
    assert value == 1.3 and flag == {"remeasured": True, "disturbed": True}
    value, flag = trust.remeasure_once(lambda: 0.9, lambda v: v > 1.0 and v != 0.95, first=1.2, best=min)
    assert value == 0.9 and flag == {"remeasured": True, "disturbed": False}
