"""``whygpu scaleout --strategy`` and ``--schedule-grid`` (issue 35): the checks judged from planted runs, the table
printed, the command line's refusals, the message delay of the schedules' timing, and one real quick run of the
worker under mpiexec -n 2 (its counts against their formulas; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._support import needs_mpiexec

mpi = pytest.importorskip("mpi4py")


def _pp(schedule, m, step, predicted, bubble, peaks=(1, 1)):
    return {
        "strategy": "pp", "schedule": schedule, "micro_batches": m, "step_s": step, "predicted_step_s": predicted,
        "bubble": bubble, "bubble_formula": 1 / (m + 1), "bytes_per_step": 1 << 20, "predicted_bubble": 1 / (m + 1),
        "terms": {"forward_s": [1.0, 1.0], "backward_s": [2.0, 2.6 if bubble > 0.25 else 2.0], "message_s": 0.0},
        "stash_peak_formula": [m, m] if schedule == "gpipe" else [2, 1],
        "ranks": [{"stash_peak": k, "stash_peak_bytes": 1 << 20, "params_bytes": 8, "grads_bytes": 8,
                   "optimizer_bytes": 16} for k in peaks],
    }  # fmt: skip


def test_checks_judge_the_bubble_and_the_simulated_step_from_the_runs():
    from whygpu.scaleout_split import checks

    doc = {"runs": [
        _pp("gpipe", 1, 1.0, 1.10, 0.52),            # bubble 0.02 off, step 10% off: both fine
        _pp("gpipe", 4, 1.0, 1.20, 0.26, (4, 4)),    # bubble 0.06 off, step 20% off: both missed
        _pp("1f1b", 4, 1.0, 0.90, 0.2, (2, 2)),      # rank 1's stash is 2, the schedule says 1
    ]}  # fmt: skip
    rows = checks(doc)["pipeline"]
    assert [r["bubble_ok"] for r in rows] == [True, False, True]
    assert [r["step_ok"] for r in rows] == [True, False, True]
    assert [r["stash_ok"] for r in rows] == [True, True, False]
    assert rows[1]["step_error"] == pytest.approx(0.2)
    # the miss names its measured cause: rank 1's stage took (1 + 2.6) / 3 - 1 = 20% longer
    assert rows[1]["stage_imbalance"] == pytest.approx(0.2) and "rank 1's forward + backward took 20%" in rows[1]["why"]
    assert rows[0]["why"] is None and rows[0]["bubble_simulated_ok"]


def test_the_table_prints_every_run_and_says_which_missed():
    from whygpu.scaleout_split import checks, print_split

    dp = {"strategy": "dp", "step_s": 0.1, "bytes_per_step": 2 << 20,
          "ranks": [{"params_bytes": 1 << 20, "grads_bytes": 1 << 20, "optimizer_bytes": 2 << 20}] * 2}  # fmt: skip
    doc = {"ranks": 2, "layers": [4, 8, 2], "batch": 16, "threads": 1, "runs": [dp, _pp("gpipe", 4, 1.0, 1.2, 0.26)]}
    doc["checks"] = checks(doc)
    lines: list[str] = []
    print_split(doc, lines.append)
    text = "\n".join(lines)
    assert "pp gpipe m=4" in text and "MISS" in text
    assert "bubble within 0.05 of the formula: 0 of 1 (of the simulated: 0)" in text
    assert "gpipe m = 4 misses the formula: unequal stages" in text


def test_timed_adds_the_message_time_between_ranks_only():
    from whygpu.schedules import gpipe, timed

    lanes = timed(gpipe(2, 1).ranks, 1.0, 2.0, message=0.5)
    (f0, b0), (f1, b1) = lanes
    assert (f1.start, b1.start, b0.start) == (1.5, 2.5, 5.0)  # F0 on 1 waits for the message; B0 on 1 does not
    with pytest.raises(ValueError, match="message"):
        timed(gpipe(2, 1).ranks, message=-1.0)


def test_the_command_line_refuses_what_cannot_run(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "whygpu", "scaleout", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    bad = run("--strategy", "dp,fsdp", "--ranks", "2")
    assert bad.returncode != 0 and "dp, zero1, tp, pp" in bad.stderr
    one = run("--strategy", "pp", "--ranks", "1")
    assert one.returncode != 0 and "2 or more" in one.stderr
    grid = run("--schedule-grid", "2,3")
    assert grid.returncode == 0
    assert "rank 1 | .  F0 B0 F1 B1 F2 B2" in grid.stdout  # 1F1B's last rank alternates at once


@needs_mpiexec
def test_a_quick_run_counts_bytes_and_stashes_by_their_formulas(tmp_path):
    out = tmp_path / "split.json"
    cmd = [sys.executable, "-m", "whygpu", "scaleout", "--strategy", "dp,tp,pp", "--ranks", "2",
           "--layers", "12,16,16,16,8", "--batch", "24", "--steps", "1", "--plot", "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "scaleout_split.json").read_text())
    assert not out.exists() and doc["schema"] == "whygpu.split/1"
    runs = {(r["strategy"], r.get("schedule"), r.get("micro_batches")): r for r in doc["runs"]}
    n_params = 12 * 16 + 16 + 2 * (16 * 16 + 16) + 16 * 8 + 8
    assert runs[("dp", None, None)]["bytes_per_step"] == 4 * n_params  # one allreduce of every gradient
    # tensor parallel: pair 1 sums its output (24 x 16) forward, pair 2 its output (24 x 8) and its dX (24 x 16)
    assert runs[("tp", None, None)]["bytes_per_step"] == 4 * 24 * (16 + 8 + 16)
    for m in (1, 2, 4, 8):
        for name in ("gpipe", "1f1b"):
            r = runs[("pp", name, m)]
            assert r["bytes_per_step"] == 2 * 4 * 24 * 16  # the boundary's activation and its gradient
            assert [e["stash_peak"] for e in r["ranks"]] == ([m, m] if name == "gpipe" else [min(m, 2), 1])
    assert "p=2, m=4" in doc["grids"] and "F3" in doc["grids"]["p=2, m=4"]["gpipe"]
    assert "bubble within 0.05" in res.stdout
    for name in ("scaleout_split_bubble.png", "scaleout_split_strategies.png"):  # --plot
        assert (tmp_path / name).stat().st_size > 10_000


def test_the_simulated_pipeline_step_comes_from_the_terms_alone():
    from whygpu.predict import simulate_pipeline
    from whygpu.scaleout_split import predict_runs
    from whygpu.schedules import schedule

    for name in ("gpipe", "1f1b"):
        sim = simulate_pipeline(schedule(name, 2, 4), 1.0, 2.0)
        assert sim.step_s == pytest.approx((4 + 2 - 1) * 3.0)  # equal stages: (m + p - 1)(t_f + t_b)
        assert sim.bubble == pytest.approx(1 / 5)
        assert simulate_pipeline(schedule(name, 2, 4), 1.0, 2.0, 0.5).step_s > sim.step_s  # messages cost
    run = {"strategy": "pp", "schedule": "1f1b", "micro_batches": 4, "step_s": 99.0, "bubble": 0.9,
           "terms": {"forward_s": [1.0, 1.0], "backward_s": [2.0, 2.0], "message_s": 0.0}}  # fmt: skip
    doc = {"ranks": 2, "runs": [run]}
    predict_runs(doc)
    assert run["predicted_step_s"] == pytest.approx(15.0) and run["predicted_bubble"] == pytest.approx(0.2)
