"""Pipeline parallelism (issue 35) under the real mpiexec with 1 to 4 ranks (tests/mpi/pp_cases.py): every
schedule and m in {1, 2, 4, 8} bitwise against one process accumulating the same micro-batches, GPipe bitwise
against 1F1B, within 1e-5 of one full-batch step; the peak stash and the messages against their formulas;
fit; a broken 1F1B warm-up and an early data-parallel sum caught; a failing rank or Ctrl-C ends every rank.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np
import pytest

from ._support import mpi_results, needs_mpiexec
from .test_distributed_failure import END_BOUND_S, _alive, _finish, _stamp, _start

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "pp_cases.py"
BATCH, WIDTHS = 19, (13, 24, 16, 12, 9, 10)  # the worker's batch and layer widths
# the worker's balance(P): where each stage's input starts, as a Linear index (its width is WIDTHS[that])
FIRST_LINEAR = {1: [0], 2: [0, 3], 3: [0, 2, 4], 4: [0, 2, 3, 4]}

pytestmark = needs_mpiexec


@pytest.fixture(scope="module")
def exact():
    """Every rank's cases for P = 1 .. 4 (one mpiexec per rank count)."""
    return {
        P: mpi_results(WORKER, P, "exact", "numpy,openmp" if P == 2 else "numpy", timeout=300) for P in (1, 2, 3, 4)
    }


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_gradients_are_one_process_accumulating_the_micro_batches(exact, P):
    for rank in exact[P]:
        for c in rank["cases"]:
            if c["schedule"] == "both":
                assert c["gpipe_is_1f1b"], (P, rank["rank"], c)  # the same bits from both schedules
                continue
            where = (P, rank["rank"], c["dtype"], c["m"], c["schedule"])
            assert c["same_keys"], where
            assert c["bitwise_vs_accumulated"], where
            assert c["rel_vs_full_batch"] <= (1e-5 if c["dtype"] == "float32" else 1e-12), where
            assert c["loss"] == pytest.approx(c["ref_loss"], rel=1e-6), where
            if c["m"] == 1:
                assert c["rel_vs_full_batch"] == 0.0, where  # one micro-batch is the full batch


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_stash_peaks_and_messages_equal_their_formulas(exact, P):
    for rank in exact[P]:
        r = rank["rank"]
        for c in rank["cases"]:
            if c["schedule"] == "both":
                continue
            m, item = c["m"], np.dtype(c["dtype"]).itemsize
            want = m if c["schedule"] == "gpipe" else min(m, P - r)
            assert c["stash_peak"] == want, (P, r, c)
            assert c["n_actions"] == 2 * m
            sent = c["messages"]
            # each boundary: m activations forward, m gradients back, of n x width values in all
            assert sent["activations"] == (m if r < P - 1 else 0), (P, r, c)
            assert sent["gradients"] == (m if r > 0 else 0), (P, r, c)
            assert c["in_features"] == WIDTHS[FIRST_LINEAR[P][r]]
            assert c["out_features"] == (WIDTHS[FIRST_LINEAR[P][r + 1]] if r < P - 1 else WIDTHS[-1])
            assert sent["activation_bytes"] == (BATCH * c["out_features"] * item if r < P - 1 else 0)
            assert sent["gradient_bytes"] == (BATCH * c["in_features"] * item if r > 0 else 0)
    total = sum(
        c["messages"]["activations"] + c["messages"]["gradients"]
        for rank in exact[P]
        for c in rank["cases"]
        if c["schedule"] == "1f1b" and c["m"] == 8 and c["dtype"] == "float32" and c["backend"] == "numpy"
    )
    assert total == 2 * 8 * (P - 1)


def test_1f1b_holds_fewer_stash_bytes_than_gpipe(exact):
    for rank in exact[4]:
        cases = {
            (c["schedule"], c["m"]): c for c in rank["cases"] if c["dtype"] == "float32" and c["backend"] == "numpy"
        }
        assert cases[("1f1b", 8)]["stash_peak_bytes"] < cases[("gpipe", 8)]["stash_peak_bytes"]
        assert cases[("gpipe", 1)]["stash_peak_bytes"] == cases[("1f1b", 1)]["stash_peak_bytes"] > 0


@pytest.mark.parametrize("P", [2, 3])
def test_fit_is_the_same_loop_in_one_process(P):
    for rank in mpi_results(WORKER, P, "fit", timeout=200):
        assert rank["bitwise"], rank
        assert rank["history"] == rank["ref_history"]
        assert rank["rel_vs_sequential_fit"] <= 1e-5  # whole batches: the sums in another order
        assert rank["history_keys"] == ["accuracy", "loss", "val_accuracy", "val_loss"]
        assert rank["evaluate"] == pytest.approx(rank["ref_evaluate"], rel=1e-6)
        assert rank["val_loss_last"] == rank["evaluate"]["loss"]  # validated after the last update
        assert rank["predict_rel"] <= 1e-5 and 0 < rank["accuracy"][-1] <= 1


def test_a_1f1b_with_the_wrong_warm_up_is_refused_on_every_rank():
    ranks = mpi_results(WORKER, 2, "broken", timeout=120)
    for rank in ranks:
        assert rank["refused"], rank
        assert "warm-up" in rank["message"] and "min(m, p - r - 1) = 1" in rank["message"]


def test_data_parallel_times_pipeline_on_four_ranks():
    """2 replicas x 2 stages against one process; a sum started before the last micro-batch's backward is
    caught (it misses that micro-batch's gradient on the other replica)."""
    for rank in mpi_results(WORKER, 4, "dp", timeout=200):
        assert rank["correct"] <= 1e-12, rank
        assert rank["early_sync"] > 1e-3, rank


def test_the_default_cut_by_measured_time_is_the_same_on_every_rank():
    for rank in mpi_results(WORKER, 2, "balance", timeout=120):
        assert rank["agree"] and rank["bitwise"], rank  # (after time_actions: it changed nothing)
        assert rank["timed"] == [2, 2, True] and rank["zero_after_timing"], rank
        assert len(rank["bounds"]) == 2 and all(hi > lo for lo, hi in rank["bounds"])


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_cuda_back_end_matches_numpy_on_the_emulated_gpu(ranks, emulated_site):
    """The pipeline's GPU branch (activations and gradients staged through the host, the loss on the GPU, the
    stash of device arrays) on the emulated GPU (tests/cuda_emu), under mpiexec, against numpy in one process."""
    for rank in mpi_results(WORKER, ranks, "gpu", pythonpath=str(emulated_site), timeout=300):
        for name in ("gpipe", "1f1b"):
            case = rank[name]
            assert case["on_gpu"], case
            assert case["grads"] <= 1e-5 and case["loss"] <= 1e-6, (ranks, rank["rank"], name, case)
            assert case["stash"] == (3 if name == "gpipe" else min(3, ranks - rank["rank"]))
        assert rank["fit"] <= 1e-5, rank


def test_a_failing_stage_ends_every_rank():
    status, output, ended = _finish(_start("pp_fail.py", "raise", ranks=3))
    assert status != 0, output
    assert ended - _stamp(output, "raising") < END_BOUND_S, output
    assert "[rank 2] RuntimeError: rank 2 fails on purpose" in output, output
    assert "the step returned" not in output, output


def test_ctrl_c_during_a_pipeline_step_stops_every_rank(tmp_path):
    proc = _start("pp_fail.py", "sigint", tmp_path, ranks=3)
    pids: list[int] = []
    try:
        deadline = time.time() + 30
        while len(pids) < 3:
            files = [tmp_path / f"{r}.pid" for r in range(3)]
            if all(f.exists() for f in files):
                pids = [int(f.read_text()) for f in files]
            elif proc.poll() is not None or time.time() > deadline:
                out, err = proc.communicate()
                pytest.fail(f"the ranks did not start (status {proc.returncode}):\n{out}\n{err}")
            else:
                time.sleep(0.05)
        time.sleep(0.5)  # into the step: the last rank hangs, the others wait in MPI
        sent = time.time()
        os.kill(proc.pid, signal.SIGINT)
        status, output, ended = _finish(proc, timeout=15)
        assert status != 0, output
        assert ended - sent < END_BOUND_S, output
        give_up = time.time() + END_BOUND_S
        while any(_alive(p) for p in pids) and time.time() < give_up:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], f"ranks left running after Ctrl-C:\n{output}"
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_bad_arguments_raise_clear_errors():
    """In this process (one rank): what a user can get wrong is a ValueError or TypeError naming it."""
    import whygpu
    import whygpu.distributed as dist
    from whygpu import nn

    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(TypeError, match="Sequential"):
        dist.Pipeline(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="micro_batches"):
        dist.Pipeline(model, micro_batches=0)
    with pytest.raises(ValueError, match="schedule"):
        dist.Pipeline(model, schedule="interleaved")
    with pytest.raises(ValueError, match="balance gives 2 stages for 1 ranks"):
        dist.Pipeline(model, balance=[2, 1])
    with pytest.raises(ValueError, match="covers 2 layers"):
        dist.Pipeline(model, balance=[2])
    pp = dist.Pipeline(model, micro_batches=2)
    x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    with pytest.raises(TypeError, match="loss_fn"):
        pp.step(x, y, "mse")
    with pytest.raises(ValueError, match="rows"):
        pp.step(x, y[:3], nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="features"):
        pp.step(np.ones((5, 7), np.float32), y, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="empty"):
        pp.step(np.ones((0, 4), np.float32), y[:0], nn.CrossEntropyLoss())
    assert pp.step(x[:1], y[:1], nn.CrossEntropyLoss()) > 0  # fewer rows than micro-batches: one row each
