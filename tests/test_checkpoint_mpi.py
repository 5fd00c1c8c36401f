"""DataParallel.fit's checkpoints under the real mpiexec (issue 33), tests/mpi/ckpt_cases.py:

* exact resume: 2 ranks train an MLP with Dropout with Adam for 3 epochs; the same run is
  SIGKILLed (one rank dies, mpiexec ends the other) after epoch 1 or inside epoch 2, and 2 new
  ranks resume from the file rank 0 wrote: the final weights are the uninterrupted run's, bitwise;
* reshard: ZeRO stage 1 and 2 trained on 2 ranks for an epoch, saved (the optimizer's state
  consolidated per parameter), resumed on 3 ranks and on 1 (other stages and bucket sizes among
  them) and in one process without MPI: each ends within 1e-5 (of each tensor's largest value)
  of one process trained throughout; the consolidated state itself matches one process's Adam.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import whygpu
from whygpu import nn, optim

from ._support import mpi_results, mpi_run, needs_mpiexec
from .mpi.ckpt_cases import data, make

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "ckpt_cases.py"
RTOL = 1e-5  # float32 gradients summed in another order than one process's (tests/test_zero.py)

pytestmark = needs_mpiexec


def launch(ranks: int, *args, killed: bool = False, timeout: float = 120, pythonpath: str | None = None) -> list:
    """Every rank's result of ``ckpt_cases.py args`` under ``mpiexec -n ranks``; ``killed``: the run
    must end in failure (one rank SIGKILLs itself), and gives nothing."""
    if not killed:
        return mpi_results(WORKER, ranks, *args, pythonpath=pythonpath, timeout=timeout)
    res = mpi_run(WORKER, ranks, *args, pythonpath=pythonpath, timeout=timeout)
    assert res.returncode != 0, res.stdout[-2000:]
    return []


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.parametrize("backend, kill_at, where", [("numpy", 7, (1, 0)), ("openmp", 10, (1, 2))])
def test_a_killed_data_parallel_run_resumes_to_the_same_bits(tmp_path, backend, kill_at, where):
    if backend not in nn.backends():
        pytest.skip(f"{backend} is not built here")
    launch(2, "fit", tmp_path, backend, "none", 3, "whole")
    launch(2, "fit", tmp_path, backend, "none", 3, "cut", kill_at, killed=True)
    assert not (tmp_path / "cut.final.npz").exists()  # it did die
    progress = whygpu.load(tmp_path / "cut.npz")["progress"]
    assert (progress["epoch"], progress["batch"]) == where
    launch(2, "resume", tmp_path, backend, "none", 3, "resumed", "cut")
    whole, resumed = whygpu.load(tmp_path / "whole.final.npz"), whygpu.load(tmp_path / "resumed.final.npz")
    for name, w in whole["model"].items():
        np.testing.assert_array_equal(resumed["model"][name], w, err_msg=name)
    assert resumed["loss"][-1] == pytest.approx(whole["loss"][-1], rel=1e-12)


def one_process(epochs: int):
    """The reference: Sequential.fit in this process, its model and optimizer."""
    model = make("numpy")
    opt = optim.Adam(model.parameters(), lr=1e-2)
    X, y = data()
    model.fit(X, y, epochs=epochs, batch_size=16, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0)
    return model, opt


def test_sharded_state_reshards_to_other_rank_counts_and_stages(tmp_path):
    for stage in ("optimizer", "gradients"):
        ranks = launch(2, "fit", tmp_path, "numpy", stage, 1, stage)
        assert all(r["buckets"] == 2 for r in ranks)  # shards of two buckets cut the parameters apart
        assert "holds no consolidated state" in ranks[1]["unconsolidated"]
        assert "rank 0 holds no" in ranks[0]["elsewhere"]
        assert "out of date" in ranks[1]["stale"] and "holds no consolidated" in ranks[0]["stale"]
        assert all("to must be a rank in 0..1" in r["bad_rank"] for r in ranks)
    # the consolidated state, keyed per parameter, is one process's Adam state after one epoch
    _, opt1 = one_process(1)
    want = opt1.state_dict()
    for stage in ("optimizer", "gradients"):
        got = whygpu.load(tmp_path / f"{stage}.final.npz")["optimizer"]
        assert sorted(got["state"]) == [0, 1, 2, 3] and got["param_groups"][0]["lr"] == 1e-2
        for i, entry in want["state"].items():
            assert got["state"][i]["step"] == entry["step"] == 7
            for key in ("exp_avg", "exp_avg_sq"):
                assert rel_diff(got["state"][i][key], entry[key]) <= RTOL, (stage, i, key)
    # resumed elsewhere: 3 ranks (the same stage; the other stage with tiny buckets), 1 rank, no MPI
    launch(3, "resume", tmp_path, "numpy", "optimizer", 3, "p3_opt", "optimizer")
    launch(3, "resume", tmp_path, "numpy", "gradients", 3, "p3_grad_from_opt", "optimizer", 0.0002)
    launch(3, "resume", tmp_path, "numpy", "gradients", 3, "p3_grad", "gradients")
    launch(1, "resume", tmp_path, "numpy", "gradients", 3, "p1_grad", "gradients")
    launch(1, "resume", tmp_path, "numpy", "none", 3, "p1_none_from_opt", "optimizer")
    ref, _ = one_process(3)
    results = {tag: whygpu.load(tmp_path / f"{tag}.final.npz")["model"]
               for tag in ("p3_opt", "p3_grad_from_opt", "p3_grad", "p1_grad", "p1_none_from_opt")}  # fmt: skip
    plain = make("numpy", seed=9)
    X, y = data()
    plain.fit(X, y, epochs=3, batch_size=16, optimizer=optim.Adam(plain.parameters()), loss=nn.CrossEntropyLoss(),
              verbose=0, resume=tmp_path / "gradients.npz")  # fmt: skip
    results["no_mpi_from_grad"] = plain.state_dict()
    for tag, sd in results.items():
        for name, w in ref.state_dict().items():
            assert rel_diff(sd[name], w) <= RTOL, (tag, name, rel_diff(sd[name], w))


def test_sharded_checkpoints_on_the_emulated_gpu(tmp_path, emulated_site):
    """The GPU path (the shard's state in GPU memory, consolidated through the host), on the CPU over
    the CUDA emulation: a sharded run killed inside epoch 2 resumes to the same bits on 2 ranks, and
    to within float32 rounding on 3 ranks at the other stage."""
    site = {"pythonpath": str(emulated_site), "timeout": 400}
    launch(2, "fit", tmp_path, "cuda", "optimizer", 3, "whole", **site)
    launch(2, "fit", tmp_path, "cuda", "optimizer", 3, "cut", 10, killed=True, **site)
    assert whygpu.load(tmp_path / "cut.npz")["progress"]["batch"] == 2
    launch(2, "resume", tmp_path, "cuda", "optimizer", 3, "resumed", "cut", **site)
    launch(3, "resume", tmp_path, "cuda", "gradients", 3, "p3", "cut", **site)
    whole = whygpu.load(tmp_path / "whole.final.npz")
    resumed, p3 = (whygpu.load(tmp_path / f"{t}.final.npz") for t in ("resumed", "p3"))
    for name, w in whole["model"].items():
        np.testing.assert_array_equal(resumed["model"][name], w, err_msg=name)
        assert rel_diff(p3["model"][name], w) <= RTOL, name
    for i, entry in whole["optimizer"]["state"].items():  # consolidated from the GPU after training
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(resumed["optimizer"]["state"][i][key], entry[key])
