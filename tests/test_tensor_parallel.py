"""Tensor parallelism (issue 35), under the real mpiexec with 1, 2 and 3 ranks (tests/mpi/tp_cases.py):

* P = 2 and 3: the output, dX and every gradient gathered to full shape within 1e-5 (relative to
  each tensor's largest value) of one process running the unsplit Sequential, for MLPs 13-24-10,
  7-11-5 (widths P does not divide) and a deeper one with two pairs and a replicated ReLU between,
  float32 and float64, on the numpy and openmp back ends; every rank's output the same bits;
* P = 1: Sequential's bits exactly;
* the allreduces counted equal the formula: forward one of batch x out per pair, backward one of
  batch x in per pair, but the model's first layer's when no input gradient is asked for;
* a ColumnParallelLinear without its backward allreduce (f's) fails that comparison;
* 3 epochs of Adam with fit: the gathered weights within 1e-5 of one process's;
* the slices of uneven widths, state_dict/load_state_dict with the unsplit names and shapes;
* Dropout inside a pair (the "dropout" model: one in each pair, one replicated between them) in
  training mode: the step as above, P = 1 bitwise, and each rank's Dropout keeps its columns of
  the whole width's mask (without that window the step is caught); 3 epochs of Adam with fit on it;
* (slow) the cuda back end on the emulated GPU under mpiexec -n 1 and 2 against numpy.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import pytest

from whygpu import nn

from ._support import mpi_results, needs_mpiexec

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "tp_cases.py"
RTOL = 1e-5
BATCH = 9
# the worker's models (tests/mpi/tp_cases.py MODELS): widths, and where each (column, row) pair starts
PAIRS = {
    "13-24-10": [(0, 13, 24, 10)],
    "7-11-5": [(0, 7, 11, 5)],
    "deep": [(0, 13, 24, 16), (4, 16, 12, 10)],
    "dropout": [(0, 13, 24, 16), (5, 16, 11, 10)],  # Dropouts at 2 (split), 4 (replicated), 6 (split)
}

pytestmark = needs_mpiexec


def backends() -> list[str]:
    return [b for b in ("numpy", "openmp") if b in nn.backends()]


@functools.cache
def step_results(ranks: int) -> tuple:
    """Every rank's dict of cases (one mpiexec per rank count, shared by the tests)."""
    return tuple(mpi_results(WORKER, ranks, "step", ",".join(backends()), timeout=180))


def cases(ranks: int):
    for r, res in enumerate(step_results(ranks)):
        assert len(res) == len(PAIRS) * 2 * len(backends())
        for key, case in res.items():
            yield r, key, case


@pytest.mark.parametrize("ranks", [2, 3])
def test_split_mlps_match_one_process(ranks):
    for r, key, case in cases(ranks):
        for what, err in case["errors"].items():
            assert err <= RTOL, f"{ranks} ranks, rank {r}, {key}: {what} off by {err:.3g} (relative)"
        assert case["replicated"], f"{key}: the ranks' outputs differ"
        assert case["names"] and case["loaded"], key
        assert case["same_random_state"], f"{key}: tensor_parallel left the ranks' random states apart"


def test_one_rank_gives_sequentials_bits():
    for _, key, case in cases(1):
        assert all(case["bitwise"].values()), f"{key}: {case['bitwise']}"
        assert case["weights_equal"], key


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_allreduce_bytes_equal_the_formula(ranks):
    for _, key, case in cases(ranks):
        name, _, dtype = key.split()
        item = np.dtype(dtype).itemsize
        pairs = PAIRS[name]
        assert [list(p) for p in case["pairs"]] == [[i, n_in, n_out] for i, n_in, _, n_out in pairs]
        forward = {"forward_calls": len(pairs), "forward_bytes": sum(BATCH * n_out * item for *_, n_out in pairs)}
        # backward: dX of every column layer, but the first layer's (nobody needs dL/d(data))
        skip = [p for p in pairs if p[0] > 0]
        assert case["traffic"] == {
            **forward,
            "backward_calls": len(skip),
            "backward_bytes": sum(BATCH * n_in * item for _, n_in, _, _ in skip),
        }, key
        assert case["traffic_input_grad"] == {
            **forward,
            "backward_calls": len(pairs),
            "backward_bytes": sum(BATCH * n_in * item for _, n_in, _, _ in pairs),
        }, key


@pytest.mark.parametrize("ranks", [2, 3])
def test_uneven_widths_are_cut_as_share_cuts(ranks):
    for r, key, case in cases(ranks):
        hidden = [h for _, _, h, _ in PAIRS[key.split()[0]]]
        want = [[r * (h // ranks) + min(r, h % ranks), (r + 1) * (h // ranks) + min(r + 1, h % ranks)] for h in hidden]
        assert case["slices"] == want, key


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_column_layer_without_its_backward_allreduce_is_caught(ranks):
    for r, key, case in cases(ranks):
        assert case["broken"] > RTOL, f"{ranks} ranks, rank {r}, {key}: the broken f went unnoticed"


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_dropout_in_a_pair_keeps_its_columns_of_one_process_mask(ranks):
    """The "dropout" model's split Dropouts (layers 2 and 6) hold this rank's columns of the hidden
    layer; without that window (each rank drawing a mask of its own width) the step is caught."""
    for r, key, case in cases(ranks):
        if not key.startswith("dropout "):
            continue
        want = [[*share, h] for (_, _, h, _), share in zip(PAIRS["dropout"], case["slices"])]
        assert case["dropout_cols"] == want, key
        assert case["broken_dropout"] > RTOL, f"{ranks} ranks, rank {r}, {key}: a mask of its own went unnoticed"


def test_one_rank_draws_sequentials_dropout_masks():
    for _, key, case in cases(1):
        if key.startswith("dropout "):
            assert case["dropout_cols"] == [[0, 24, 24], [0, 11, 11]], key
            assert case["broken_dropout"] == 0.0, key  # one rank: the window is the whole width


@pytest.mark.parametrize(
    "ranks, backend, model", [(2, "numpy", "7-11-5"), (3, "openmp", "7-11-5"), (2, "numpy", "dropout"),
                              (3, "openmp", "dropout"), (1, "numpy", "dropout")]
)  # fmt: skip
def test_three_epochs_of_adam_match_one_process(ranks, backend, model):
    if backend not in nn.backends():
        pytest.skip(f"{backend} is not built here")
    for res in mpi_results(WORKER, ranks, "fit", backend, model, timeout=180):
        for name, err in res["errors"].items():
            assert err <= RTOL, f"{name}: off by {err:.3g}"
        np.testing.assert_allclose(res["loss"], res["ref_loss"], rtol=1e-5)
        if ranks == 1:
            assert res["bitwise"], "one rank: fit should give Sequential's bits"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_cuda_back_end_matches_the_cpu_on_the_emulated_gpu(ranks, emulated_site):
    """The split layers' GPU branch (the allreduce staged through the host, matmul_into with the bias
    fused) on the emulated GPU (tests/cuda_emu), under mpiexec: one step of 13-24-10 and of the
    dropout model, and 2 epochs of Adam with fit, against one process on numpy."""
    every = mpi_results(WORKER, ranks, "gpu", pythonpath=str(emulated_site), timeout=300)
    for r, res in enumerate(every):
        fit = res.pop("fit")
        for name, err in fit["errors"].items():
            assert err <= RTOL, f"{ranks} ranks, rank {r}, fit: {name} off by {err:.3g}"
        assert len(res) == 2
        for key, case in res.items():
            for what, err in case["errors"].items():
                assert err <= RTOL, f"{ranks} ranks, rank {r}, {key}: {what} off by {err:.3g}"
            assert case["replicated"] and case["names"] and case["loaded"], key
            if ranks > 1:
                assert case["broken"] > RTOL, key
            if key.startswith("dropout"):
                assert (case["broken_dropout"] > RTOL) == (ranks > 1), key


class _Comm:
    """A communicator's size and rank, for building the split layers without running them."""

    def __init__(self, size, rank):
        self.size, self.rank = size, rank

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return self.rank

    def bcast(self, obj, root=0):
        return obj


def test_tensor_parallel_checks_what_it_splits():
    import whygpu
    import whygpu.distributed as dist

    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 2))
    tp = dist.tensor_parallel(model, comm=_Comm(3, 2))
    kinds = [type(m).__name__ for m in tp.layers]
    assert kinds == ["ColumnParallelLinear", "Tanh", "RowParallelLinear", "ReLU", "Linear"]
    col, row = tp.layers[0], tp.layers[2]
    assert (col.lo, col.hi, row.lo, row.hi) == (5, 7, 5, 7)
    np.testing.assert_array_equal(col.weight.data, model.layers[0].weight.data[5:7])
    np.testing.assert_array_equal(row.weight.data, model.layers[2].weight.data[:, 5:7])
    np.testing.assert_array_equal(row.bias.data, model.layers[2].bias.data)  # the whole b, on every rank
    assert tp.output_features() == 2
    with pytest.raises(TypeError, match="Sequential"):
        dist.tensor_parallel(nn.Linear(3, 4), comm=_Comm(2, 0))
    with pytest.raises(ValueError, match="too few to split"):
        dist.tensor_parallel(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4)), comm=_Comm(3, 0))
    # Softmax is row-wise, not element-wise: the pair stays replicated
    soft = dist.tensor_parallel(nn.Sequential(nn.Linear(3, 4), nn.Softmax(), nn.Linear(4, 2)), comm=_Comm(2, 0))
    assert [type(m).__name__ for m in soft.layers] == ["Linear", "Softmax", "Linear"]
    # activations and Dropouts in any order between the two: split, each Dropout given the columns
    drop = nn.Dropout(0.2)
    mixed = nn.Sequential(nn.Linear(3, 5), drop, nn.Sigmoid(), nn.Dropout(0.1), nn.Linear(5, 2), nn.Dropout(0.4))
    tp = dist.tensor_parallel(mixed, comm=_Comm(2, 1))
    kinds = [type(m).__name__ for m in tp.layers]
    assert kinds == ["ColumnParallelLinear", "Dropout", "Sigmoid", "Dropout", "RowParallelLinear", "Dropout"]
    assert tp.layers[1] is drop and drop._cols == tp.layers[3]._cols == (3, 5, 5)
    assert tp.layers[5]._cols is None  # after the pair: replicated, the whole mask
    only = dist.tensor_parallel(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)), comm=_Comm(2, 0))
    assert [type(m).__name__ for m in only.layers] == ["ColumnParallelLinear", "Dropout", "RowParallelLinear"]
    # a Softmax anywhere between them leaves the pair unsplit, Dropouts whole
    soft = dist.tensor_parallel(
        nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Softmax(), nn.Linear(4, 2)), comm=_Comm(2, 0)
    )
    assert [type(m).__name__ for m in soft.layers] == ["Linear", "Dropout", "Softmax", "Linear"]
    assert soft.layers[1]._cols is None
