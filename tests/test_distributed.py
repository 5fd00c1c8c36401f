"""whygpu.distributed: DataParallel over MPI ranks trains the model one process trains.

tests/mpi/dp_worker.py runs the cases (explicit steps and fit, SGD with
momentum and Adam, uneven and nearly empty last batches, ranks seeded
apart) under ``mpiexec -n 2`` and ``-n 3`` (oversubscribed on a small
machine) and as plain python (one rank); rank 0 trains the single-process
reference alongside and reports.

Tolerance.  P ranks sum each gradient over the batch in P partial sums,
then over the ranks: the same float32 numbers added in another order.
Reassociating a sum of n terms changes it by at most about n * u * sum|terms|
(u = 2^-24 = 6e-8), ~2e-6 relative for the 32-sample batches here, and the
optimizer carries such differences from step to step without growing them
much over the ~8 steps a case takes.  So the parameters must agree within
1e-5 of each parameter's largest value (what is seen: <= 1e-6); the ranks'
own copies must agree bitwise after every step (all apply the same update
to the same reduced gradient), and one rank must give exactly what plain
Sequential gives (the weight 1.0 and a one-rank allreduce change no bit).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "mpi" / "dp_worker.py"
CPU_BACKENDS = "numpy,packed,openmp"
RTOL = 1e-5  # see the module docstring

MPIEXEC = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install '.[mpi]' from the source folder)")
needs_mpiexec = pytest.mark.skipif(
    not (HAVE_MPI4PY and os.access(MPIEXEC, os.X_OK)),
    reason="needs mpi4py and mpiexec (pip install '.[mpi]' from the source folder)",
)


def run_worker(ranks: int | None, backends: str, pythonpath: str | None = None, timeout: float = 120) -> dict:
    """The worker's report: under ``mpiexec -n ranks``, or as plain python when ranks is None."""
    import whygpu

    env = dict(os.environ, WHYGPU_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = pythonpath or str(pathlib.Path(whygpu.__file__).resolve().parent.parent)
    cmd = [sys.executable, str(WORKER), backends]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    # a rank that dies can leave the others waiting in a collective: the timeout ends the run
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


def check(report: dict, ranks: int, backends: str) -> None:
    assert report["size"] == ranks
    names = {
        f"{be}/{case}"
        for be in backends.split(",")
        for case in ("sgd/explicit", "adam/explicit", "sgd/fit103", "adam/fit97")
    }
    assert set(report["cases"]) == names
    for name, case in report["cases"].items():
        assert case["identical"], f"{name}: the ranks' parameters differ after some step"
        tol = 0.0 if ranks == 1 else RTOL
        assert case["rel_diff"] <= tol, f"{name}: {case['rel_diff']:.3g} from one process's training (tolerance {tol})"
        if "history" not in case:
            assert case["buckets"] > 1, f"{name}: the small bucket size should make several buckets"
            continue
        assert case["same_everywhere"], f"{name}: history, evaluate or predict differ between ranks"
        hist, ref = case["history"], case["ref_history"]
        assert hist.keys() == ref.keys() == {"loss", "accuracy", "val_loss", "val_accuracy"}
        if ranks == 1:
            assert hist == ref, name  # exactly Sequential.fit
        for key in hist:
            np.testing.assert_allclose(hist[key], ref[key], rtol=RTOL, atol=RTOL, err_msg=f"{name} {key}")
        for key in case["evaluate"]:
            np.testing.assert_allclose(case["evaluate"][key], case["ref_evaluate"][key], rtol=RTOL, err_msg=name)
        assert case["pred_diff"] <= (0.0 if ranks == 1 else RTOL * 10), name


# -- in this process: the API without mpiexec ---------------------------------------------------------


@needs_mpi4py
def test_one_rank_without_mpiexec_in_process():
    import whygpu.distributed as dist
    from whygpu import nn, optim

    assert dist.size() == 1 and dist.rank() == 0 and dist.local_rank() == 0
    assert dist.init() is dist.comm()
    dist.barrier()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to("packed")
    dp = dist.DataParallel(model, bucket_mb=0.0)  # one bucket per layer with parameters
    x, y = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1])
    lf = nn.CrossEntropyLoss()
    lf(model(x), y)
    model.zero_grad()
    model.backward(lf.backward())
    expected = [p.grad.copy() for p in model.parameters()]
    lf(dp(x), y)
    dp.zero_grad()
    dp.backward(lf.backward())
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad, g)
    step = dp.last_step
    assert set(step) == {"backward_s", "allreduce_s", "exposed_s", "bytes", "buckets"} | {
        "allreduce_sum_s",
        "first_start_s",
        "last_done_s",
        "progress",
    }
    assert 0 <= step["first_start_s"] <= step["last_done_s"] and step["allreduce_s"] <= step["allreduce_sum_s"]
    assert step["buckets"] == 2 and step["bytes"] == model.count_params() * 4
    assert model._grads_ready is None  # the hook is set only during dp.backward
    optim.SGD(model.parameters(), lr=0.1).step()
    assert dp.predict(x).shape == (5, 3)


@needs_mpi4py
def test_share_cuts_like_array_split():
    from whygpu.distributed import share

    for n in (0, 1, 2, 7, 32, 103):
        for p in (1, 2, 3, 5):
            sizes = [len(a) for a in np.array_split(np.arange(n), p)]
            starts = np.cumsum([0] + sizes)
            assert [share(n, p, r) for r in range(p)] == [(starts[r], starts[r] + sizes[r]) for r in range(p)]


def test_import_without_mpi4py_names_the_extra(tmp_path):
    """`import whygpu` never needs mpi4py; `import whygpu.distributed` says how to get it."""
    import whygpu

    (tmp_path / "mpi4py").mkdir()
    (tmp_path / "mpi4py" / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    code = (
        "import whygpu, whygpu.nn, sys\n"
        "assert 'mpi4py' not in sys.modules\n"
        "try:\n    import whygpu.distributed\nexcept ImportError as e:\n    print('MSG', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{pathlib.Path(whygpu.__file__).parent.parent}")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    msg = res.stdout.split("MSG ", 1)[1].strip()
    assert "\n" not in msg and "pip install mpi4py mpich" in msg


# -- the worker: one process, two and three ranks, the emulated GPU -----------------------------------


@needs_mpi4py
def test_worker_as_one_rank_matches_sequential_exactly():
    check(run_worker(None, CPU_BACKENDS), 1, CPU_BACKENDS)


@needs_mpiexec
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_train_what_one_process_trains(ranks):
    check(run_worker(ranks, CPU_BACKENDS), ranks, CPU_BACKENDS)


@needs_mpiexec
@pytest.mark.slow
def test_ranks_on_the_emulated_gpu(emulated_site):
    check(run_worker(2, "cuda", pythonpath=str(emulated_site), timeout=300), 2, "cuda")
