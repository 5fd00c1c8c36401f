"""DataParallel's contract (issue 33): what PyTorch's DistributedDataParallel and
ZeroRedundancyOptimizer promise, under the real ``mpiexec -n 2`` and ``-n 3``
(tests/mpi/contract_cases.py, all cases in one launch per P), each against one
process computing the same thing.  What the old code did instead, case by case:

* accumulation: two synced backward passes gave size * G1 + G2 (the first sum
  summed again), and a sharded one raised RuntimeError;
* a sharded model's ``p.grad`` after a synced backward read a mix (stage 1: the
  buffer after an in-place reduce-scatter) or zeros (stage 2), silently;
* ``dp.clip_grad_norm_`` did not exist;
* ``zero_grad(); opt.step()`` stepped on the shards' stale summed gradient;
* ``opt.momentum = ...`` on a sharded optimizer never reached the optimizer that steps;
* ranks given other fit arguments, or wrapping with other settings, hung or drifted apart;
* prefetch=True without MPI_THREAD_MULTIPLE said nothing and reported True; ``model.to``
  converted parameters while their allgather was still arriving;
* on a GPU, weights assigned after wrapping were undone by the next step (emulated GPU test).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from ._support import mpi_results, needs_mpi4py, needs_mpiexec

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "contract_cases.py"
RTOL = 1e-5  # tests/test_distributed.py's: float32 sums in another order


def run_cases(ranks: int, backend: str, cases: str, pythonpath: str | None = None, timeout: float = 240) -> list:
    """Every rank's results under ``mpiexec -n ranks`` (a hang ends at the timeout and fails)."""
    ranks_ = mpi_results(WORKER, ranks, backend, cases, pythonpath=pythonpath, timeout=timeout)
    for r, rank in enumerate(ranks_):
        for case, res_ in rank.items():
            assert "error" not in res_, f"rank {r}, {case}: {res_['error']}"
    return ranks_


def check_accumulate(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        cases = res["accumulate"]
        assert len(cases) >= 6, cases
        for name, case in cases.items():
            assert case["rel_diff"] <= RTOL, f"rank {r}, {name}: {case['rel_diff']:.3g} from G1 + G2 + ..."
            assert case["identical"], f"{name}: the ranks' gradients or weights differ"


def check_grad_read(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        for shard, case in res["grad_read"].items():
            n = case["n"]
            assert case["raised"] == n and case["assign_raised"] == n, (r, shard, case)
            msg = case["message"]
            assert "cannot be read after a synced backward" in msg, msg
            assert f"DataParallel(shard={shard!r})" in msg and "bucket" in msg and "dp.zero_grad()" in msg, msg
            assert case["covered"], f"{shard}: the places the errors name do not hold the summed gradient"
            assert case["zero_after_zero_grad"] and case["raises_again"], (r, shard, case)
            assert case["no_sync_local"] <= RTOL, (r, shard, case)


def check_clip(ranks: list[dict]) -> None:
    clipped = 0
    for r, res in enumerate(ranks):
        for name, case in res["clip"].items():
            assert case["total"] == pytest.approx(case["ref_total"], rel=RTOL), (r, name, case)
            assert case["rel_diff"] <= RTOL, f"rank {r}, {name}: {case['rel_diff']:.3g} from one process's clipping"
            assert case["same_total"], name
            clipped += case["clipped"]
    assert clipped >= 9 * len(ranks), "most settings must really clip"


def check_zero_step(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        for name, case in res["zero_step"].items():
            assert case["rel_diff"] <= RTOL, f"rank {r}, {name}: {case['rel_diff']:.3g} from the unsharded optimizer"
            assert case["identical"], name
            if "/sgd/" in name:  # a zero gradient, no momentum: nothing moves, bit for bit
                assert case["unchanged"], name


def check_assign(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        assert res["assign"], "no assign case ran"
        for name, case in res["assign"].items():
            assert case["assigned"] == 0.0, (name, case)
            assert case["rel_diff"] <= RTOL, f"rank {r}, {name}: {case['rel_diff']:.3g}: the assignment was undone"
            assert case["identical"], name


def check_hyper(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        for name, case in res["hyper"].items():  # assignments reach the optimizer that steps
            assert case["read_back"] and case["identical"], (name, case)
            assert case["rel_diff"] <= RTOL, f"rank {r}, {name}: {case['rel_diff']:.3g} from the unsharded optimizer"


def check_prefetch(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        t = res["prefetch"]["test_mode"]  # without the progress thread: one warning, reported off
        assert t["warnings"] == 1 and not t["prefetch"] and "prefetch" not in t["repr"], t
        assert t["progress"] == "test" and "needs MPI_THREAD_MULTIPLE" in t["message"], t
        for shard in ("optimizer", "gradients"):  # model.to() waited for the allgather in flight
            p = res["prefetch"][shard]
            assert p["in_flight"] and p["identical"] and p["rel_diff"] <= RTOL, (r, shard, p)


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_data_parallel_keeps_ddp_and_zero_contract(n):
    ranks = run_cases(
        n, "numpy", "accumulate,grad_read,clip,zero_step,hyper,assign,agree_fit,agree_wrap,setup_fail,prefetch"
    )
    check_accumulate(ranks)
    check_grad_read(ranks)
    check_clip(ranks)
    check_zero_step(ranks)
    check_assign(ranks)
    check_hyper(ranks)
    check_prefetch(ranks)
    odd = n - 1
    for res in ranks:  # agreement: the same ValueError on every rank, naming the field and both values
        assert res["agree_fit"] == ranks[0]["agree_fit"] and res["agree_wrap"] == ranks[0]["agree_wrap"]
    fit, wrap = ranks[0]["agree_fit"], ranks[0]["agree_wrap"]
    assert fit["same"] == "ok" and wrap["same"] == "ok"
    wants = {
        "samples": f"the number of samples (len(X)): 97 on rank 0 but 96 on rank {odd}",
        "batch_size": f"batch_size: 32 on rank 0 but 16 on rank {odd}",
        "epochs": f"epochs: 1 on rank 0 but 2 on rank {odd}",
        "shuffle": f"shuffle: True on rank 0 but False on rank {odd}",
        "validation": f"validation_data: None on rank 0 but 'X_val (40, 12) float32, y_val (40,) int64' on rank {odd}",
        "validation_shape": "'X_val (40, 12) float32, y_val (40,) int64' on rank 0 but 'X_val (39, 12) float32",
        "X_dtype": f"X's dtype: 'float32' on rank 0 but 'float64' on rank {odd}",
        "y_shape": f"y's shape: (97,) on rank 0 but (97, 1) on rank {odd}",
    }
    for key, want in wants.items():
        assert fit[key].startswith("DataParallel.fit: the ranks disagree on ") and want in fit[key], (key, fit[key])
    wants = {
        "shard": f"shard: 'optimizer' on rank 0 but 'none' on rank {odd}",
        "bucket_mb": f"bucket_mb: 25.0 on rank 0 but 1.0 on rank {odd}",
        "first_bucket_mb": f"first_bucket_mb: 1.0 on rank 0 but 0.5 on rank {odd}",
        "prefetch": f"prefetch: False on rank 0 but True on rank {odd}",
        "backend": f"the back end: 'numpy' on rank 0 but 'openmp' on rank {odd}",
    }
    for key, want in wants.items():
        assert wrap[key].startswith("DataParallel: the ranks disagree on ") and want in wrap[key], (key, wrap[key])
    # one rank's own check refused its data: it raises its error, every other rank says which rank refused
    assert ranks[odd]["setup_fail"]["raised"].startswith("ValueError: the input contains NaN")
    for res in ranks[:odd]:
        want = f"RuntimeError: DataParallel.fit: rank {odd} refused its arguments (ValueError: the input contains NaN"
        assert res["setup_fail"]["raised"].startswith(want), res["setup_fail"]


@needs_mpiexec
@pytest.mark.slow
def test_contract_on_the_emulated_gpu(emulated_site):
    """The GPU path: the model's gradients in GPU memory, the shard a separate GPU copy of the
    parameters (assigning p.data must reach it), pinned host staging."""
    cases = "accumulate,grad_read,clip,zero_step,hyper,assign,prefetch"
    ranks = run_cases(2, "cuda", cases, pythonpath=str(emulated_site), timeout=600)
    check_accumulate(ranks)
    check_grad_read(ranks)
    check_clip(ranks)
    check_zero_step(ranks)
    check_assign(ranks)
    check_hyper(ranks)
    check_prefetch(ranks)


# -- one rank, in this process: the arguments and the optimizer's attributes ---------------------------


def _model():
    import whygpu
    from whygpu import nn

    whygpu.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@needs_mpi4py
def test_clip_grad_norm_checks_its_arguments_and_matches_one_process():
    import whygpu.distributed as dist
    from whygpu import nn

    x, y = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    dp = dist.DataParallel(_model())
    with pytest.raises(ValueError, match="max_norm must be >= 0.0, got -1"):
        dp.clip_grad_norm_(-1)
    with pytest.raises(ValueError, match="norm_type must be > 0.0, got 0"):
        dp.clip_grad_norm_(1.0, 0)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        dp.clip_grad_norm_("1")
    lf = nn.CrossEntropyLoss()
    lf(dp(x), y)
    dp.zero_grad()
    dp.backward(lf.backward())
    g = [np.array(p.grad, dtype=np.float64) for p in dp.parameters()]
    total = math.sqrt(sum(float(np.sum(a**2)) for a in g))
    assert dp.clip_grad_norm_(total * 10) == pytest.approx(total)  # above: nothing changes
    for p, a in zip(dp.parameters(), g):
        np.testing.assert_array_equal(p.grad, a.astype(np.float32))
    assert dp.clip_grad_norm_(total / 4) == pytest.approx(total)
    for p, a in zip(dp.parameters(), g):
        np.testing.assert_allclose(p.grad, a * (total / 4) / (total + 1e-6), rtol=1e-6)
    assert dp.clip_grad_norm_(1.0, "inf") == pytest.approx(max(float(np.abs(a).max()) for a in g) / 4, rel=1e-5)


@needs_mpi4py
def test_sharded_optimizer_forwards_assignments_and_keeps_its_own():
    import whygpu.distributed as dist
    from whygpu import optim

    dp = dist.DataParallel(_model(), shard="optimizer")
    opt = dp.optimizer(optim.SGD, lr=0.1, momentum=0.9)
    inner = opt.optimizer
    for name, value in (("lr", 0.5), ("momentum", 0.1), ("weight_decay", 0.01), ("nesterov", True)):
        setattr(opt, name, value)
        assert getattr(inner, name) == value == getattr(opt, name)
        assert name not in vars(opt), f"{name} stayed on the wrapper"
    assert opt._dp is dp and opt.optimizer is inner and len(opt.params) == 4 and opt._placed == [None] * 4
    calls = []
    opt.step = lambda: calls.append(1)  # a method replaced on the instance stays there
    opt.step()
    assert calls == [1] and "step" in vars(opt) and "step" not in vars(inner)
    adam = dp.optimizer(optim.Adam, lr=0.01)
    adam.betas, adam.eps = (0.5, 0.9), 1e-3
    assert adam.optimizer.betas == (0.5, 0.9) and adam.optimizer.eps == 1e-3
