"""Data parallelism x tensor parallelism on a grid of 4 ranks (issue 35), under the real ``mpiexec -n 4``
(oversubscribed on a small machine; tests/mpi/grid_tp_cases.py): ``dist.grid(2)`` cuts the world into
2 replicas of 2 ranks; each replica splits a 13-24-16-10 MLP (``tensor_parallel(model, comm=g.split)``)
and the ranks holding the same slice sum their gradients (``DataParallel(tp, comm=g.data)``).

* 3 steps of SGD with momentum then 3 of Adam, each global batch of 11 rows split 6/5 by DataParallel:
  the gathered state_dict within 1e-5 (relative to each tensor's largest value) of one process
  running the unsplit Sequential on the whole batches, and the same bits on every replica;
* every step's Dropout masks to the bit: the one inside the pair takes this replica's rows (DataParallel)
  and this rank's columns (tensor_parallel) of the mask one process draws; the replicated one its rows;
* 2 epochs of ``DataParallel.fit`` with Adam on the grid against ``Sequential.fit``;
* grid(4) (tensor parallel only, DataParallel over one rank) and grid(1) (data parallel only) alike.
"""

from __future__ import annotations

import functools
import pathlib

import pytest

from ._support import mpi_results, needs_mpiexec

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "grid_tp_cases.py"
RTOL = 1e-5
GLOBAL, HIDDEN = 11, 24  # the worker's global batch and the pair's hidden width

pytestmark = needs_mpiexec


@functools.cache
def results(inner: int) -> tuple:
    return tuple(mpi_results(WORKER, 4, "steps", inner, timeout=240))


@pytest.mark.parametrize("inner", [2, 4, 1])
def test_the_grid_places_each_rank(inner):
    dp = 4 // inner
    for q, res in enumerate(results(inner)):
        assert (res["replica"], res["position"], res["dp"], res["tp"]) == (q // inner, q % inner, dp, inner)
        r, p = res["replica"], res["position"]
        assert res["rows"] == [
            r * (GLOBAL // dp) + min(r, GLOBAL % dp),
            (r + 1) * (GLOBAL // dp) + min(r + 1, GLOBAL % dp),
        ]
        assert res["cols"] == [p * HIDDEN // inner, (p + 1) * HIDDEN // inner]


@pytest.mark.parametrize("inner", [2, 4, 1])
def test_sgd_then_adam_on_the_grid_match_one_process(inner):
    for q, res in enumerate(results(inner)):
        assert res["names"], res
        for name, err in res["errors"].items():
            assert err <= RTOL, f"grid({inner}), rank {q}: {name} off by {err:.3g} (relative)"
        assert res["replicas_equal"], f"grid({inner}), rank {q}: the replicas' weights differ"


@pytest.mark.parametrize("inner", [2, 4, 1])
def test_dropout_rows_and_columns_compose_to_one_process_mask(inner):
    for q, res in enumerate(results(inner)):
        for step, (split, whole) in enumerate(res["masks"]):
            assert split, f"grid({inner}), rank {q}, step {step}: the pair's Dropout mask is not one process's"
            assert whole, f"grid({inner}), rank {q}, step {step}: the replicated Dropout mask is not one process's"


@pytest.mark.parametrize("inner", [2, 4, 1])
def test_data_parallel_fit_on_the_grid_matches_sequential_fit(inner):
    for q, res in enumerate(results(inner)):
        for name, err in res["fit"]["errors"].items():
            assert err <= RTOL, f"grid({inner}), rank {q}, fit: {name} off by {err:.3g}"
