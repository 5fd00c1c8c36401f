"""whygpu.distributed, issue 24's correctness list, each under the real mpiexec (tests/mpi/dp_cases.py).

* ``weight``: a backward's weight scales only that call's gradient, on the CPU
  and on the (emulated) GPU path, where it used to scale the whole
  accumulated gradient; and two synced backward passes without zero_grad
  give G1 + G2, as PyTorch's DDP (it used to be size * G1 + G2).
* ``pending``: rank 1's backward pass raises after some allreduces started;
  every rank raises (rank 1 its error, the others a RuntimeError), the
  gradients are zero everywhere, and the next step sums correctly -- where the
  requests used to be left pending and the next step's collectives mismatched
  (a hang: the timeout fails the test).
* ``dropout``: P ranks with Dropout compute what one process computes (they
  used to draw the same mask for every rank's share).
* ``no_sync``: local accumulation without communication, then one allreduce.
* ``shapes``: ranks holding different models get the same clear ValueError
  on every rank (it used to be a hang or an MPI error in the broadcast).

The tolerance is tests/test_distributed.py's (float32 sums in another order).
Where a rank count matters (a rank without samples, the failing rank among
several) the cases run under -n 3 too, oversubscribed on a small machine.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from ._support import MPIEXEC, mpi_results, needs_mpiexec

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "dp_cases.py"
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
RTOL = 1e-5  # tests/test_distributed.py's: float32 sums in another order


def run_case(case: str, ranks: int, backend: str = "numpy", pythonpath: str | None = None, timeout: float = 90):
    """Every rank's result of ``case`` under ``mpiexec -n ranks``; a hang (the old pending-request bug,
    a mismatched broadcast) ends at the timeout and fails the test."""
    ranks_ = mpi_results(WORKER, ranks, case, backend, pythonpath=pythonpath, timeout=timeout)
    for r, rank in enumerate(ranks_):
        assert "error" not in rank, f"rank {r}: {rank['error']}"
    return ranks_


def check_weight(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        assert res["rel_diff"] <= RTOL, f"rank {r}: {res['rel_diff']:.3g} from G1 + G2"
        assert res["identical"], "the ranks' gradients differ after the second synced backward"


def check_no_sync(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        assert res["local_ok"], f"rank {r}: under no_sync the gradient was not this rank's own"
        assert res["rel_diff"] <= RTOL, f"rank {r}: {res['rel_diff']:.3g} from one process's gradient"
        assert res["identical"], "the ranks' gradients differ after the synced backward"


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_weight_scales_only_this_calls_gradient(n):
    check_weight(run_case("weight", n))


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_exception_in_backward_leaves_nothing_in_flight(n):
    for r, res in enumerate(run_case("pending", n)):
        for progress, step in res.items():
            if r == 1:
                assert step["raised"] == "ValueError: boom on rank 1", (progress, step)
            else:
                assert step["raised"].startswith("RuntimeError: dp.backward failed on 1 other rank"), (progress, step)
            assert step["zero_after"], f"rank {r} ({progress}): gradients not zero after the failed step"
            assert step["rel_diff"] <= RTOL, f"rank {r} ({progress}): the next step's sum is off by {step['rel_diff']}"
            assert step["identical"], progress


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_dropout_in_fit_computes_what_one_process_computes(n):
    ranks = run_case("dropout_fit", n)
    assert all(res["fit_identical"] for res in ranks)
    # one process's masks: with each rank's own, the difference is of the order of the weights' change
    assert ranks[0]["fit_rel_diff"] <= RTOL, ranks[0]
    got, want = ranks[0]["fit_loss"]
    assert got == pytest.approx(want, rel=RTOL)


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_dropout_in_explicit_steps_computes_what_one_process_computes(n):
    ranks = run_case("dropout_explicit", n)
    assert all(res["explicit_identical"] for res in ranks)
    assert ranks[0]["explicit_rel_diff"] <= RTOL, ranks[0]


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_no_sync_accumulates_then_sums_once(n):
    check_no_sync(run_case("no_sync", n))


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_different_models_raise_on_every_rank(n):
    ranks = run_case("shapes", n)
    odd = n - 1
    for res in ranks:
        assert res == ranks[0], "the ranks got different errors"
    res = ranks[0]
    assert res["same"] == "ok"
    assert "parameter 0 (0.weight) is (24, 12) float32 on rank 0" in res["shape"]
    assert f"(25, 12) float32 on rank {odd}" in res["shape"]
    assert f"(24, 12) float64 on rank {odd}" in res["dtype"]
    assert f"rank 0 has 6 parameters, rank {odd} has 4" in res["count"] and "4.weight" in res["count"]


@needs_mpiexec
def test_allreduces_progress_while_the_backward_pass_computes():
    """Overlap that does not depend on how often Python calls Test(): the buckets started before a
    1.5 s stretch of the backward pass without any MPI call must complete during it (generous:
    a few KB to sum, 0.75 s allowed)."""
    for r, step in enumerate(run_case("progress", 2)):
        assert step["progress"] == "thread", "MPICH from PyPI provides MPI_THREAD_MULTIPLE: the thread should run"
        assert step["backward_s"] >= 1.5 and step["buckets"] == 3, step
        assert step["first_start_s"] < 0.5, step
        assert step["allreduce_s"] < 0.75, f"rank {r}: {step['allreduce_s']:.2f} s in flight: no progress meanwhile"
        assert step["allreduce_s"] <= step["allreduce_sum_s"] <= step["last_done_s"] * step["buckets"], step


@needs_mpiexec
@pytest.mark.slow
def test_weight_and_no_sync_on_the_emulated_gpu(emulated_site):
    check_weight(run_case("weight", 2, "cuda", pythonpath=str(emulated_site), timeout=300))
    check_no_sync(run_case("no_sync", 2, "cuda", pythonpath=str(emulated_site), timeout=300))


# -- the README's example, as printed -----------------------------------------------------------------


def readme_example() -> str:
    """The python block of the README section on whygpu.distributed."""
    text = README.read_text()
    section = text.split("## More than one machine: `whygpu.distributed`", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section should hold one python example"
    return blocks[0]


@needs_mpiexec
def test_readme_example_runs_under_mpiexec(tmp_path):
    import whygpu

    script = tmp_path / "train.py"
    script.write_text(readme_example())
    env = dict(os.environ, WHYGPU_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(pathlib.Path(whygpu.__file__).resolve().parent.parent)
    res = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    # each rank prints its number and its evaluation (the launcher may interleave the two lines'
    # pieces): the same figures from both ranks
    figures = re.findall(r"\{'loss': [^}]*\}", res.stdout)
    assert len(figures) == 2 and figures[0] == figures[1] and "accuracy" in figures[0], res.stdout
