"""The worker tests/test_grid_tp.py launches under ``mpiexec -n 4``: data parallelism x tensor
parallelism on a grid of ranks (``dist.grid(2)``: 2 replicas of 2 ranks each) against one process
running the unsplit Sequential on the whole global batch, in this process (every rank builds it alike).

    grid_tp_cases.py steps [INNER]   explicit steps (3 of SGD with momentum, then 3 of Adam) of a
                                     13-24-16-10 MLP with a Dropout in its pair and one replicated;
                                     each rank's Dropout masks against one process's (its rows of the
                                     global batch, its columns of the hidden layer), the gathered
                                     state_dict after the steps, then 2 epochs of DataParallel.fit
Rank 0 prints ``RESULT {json}`` with what every rank measured.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim

GLOBAL = 11  # rows of each global batch: uneven shares over 2 replicas (6 and 5)
STEPS = (("sgd", 3), ("adam", 3))
SPLIT, REPLICATED = 2, 4  # the Dropouts' indices: inside the pair (0-3) and after it


def make(seed: int = 0) -> nn.Sequential:
    whygpu.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(13, 24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, 16),  # the pair: split by columns
        nn.Dropout(0.25), nn.Linear(16, 10),  # replicated
    )  # fmt: skip


def optimizer(kind: str, params):
    return optim.SGD(params, lr=0.05, momentum=0.9) if kind == "sgd" else optim.Adam(params, lr=1e-2)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def batches():
    rng = np.random.default_rng(5)
    for _ in range(sum(n for _, n in STEPS)):
        yield rng.standard_normal((GLOBAL, 13)).astype(np.float32), rng.integers(0, 10, GLOBAL)


def reference() -> tuple[dict, list]:
    """One process on the whole global batches: the state after the steps, and each step's masks."""
    ref, loss_fn, masks = make(), nn.CrossEntropyLoss(), []
    data = batches()
    for kind, n in STEPS:
        opt = optimizer(kind, ref.parameters())
        for _ in range(n):
            x, y = next(data)
            out = ref(x)
            masks.append((ref.layers[SPLIT]._mask.copy(), ref.layers[REPLICATED]._mask.copy()))
            loss_fn(out, y)
            ref.zero_grad()
            ref.backward(loss_fn.backward())
            opt.step()
    return ref.state_dict(), masks


def steps_case(inner: int) -> dict:
    want, want_masks = reference()
    g = dist.grid(inner)
    tp = dist.tensor_parallel(make(), comm=g.split)
    dp = dist.DataParallel(tp, comm=g.data)
    col = tp.layers[0]
    loss_fn = nn.CrossEntropyLoss()
    res: dict = {"replica": g.replica, "position": g.position, "dp": dp.size, "tp": tp.comm.Get_size()}
    s0, s1 = dist.share(GLOBAL, dp.size, dp.rank)  # this replica's rows of every global batch
    res["rows"], res["cols"] = [s0, s1], [col.lo, col.hi]
    masks_ok, data, k = [], batches(), 0
    for kind, n in STEPS:
        opt = optimizer(kind, tp.parameters())
        for _ in range(n):
            x, y = next(data)
            out = dp(x[s0:s1], global_batch=GLOBAL)
            split, whole = want_masks[k]
            # DataParallel's rows and the pair's columns of one process's masks, to the bit
            masks_ok.append(
                [
                    bool(np.array_equal(tp.layers[SPLIT]._mask, split[s0:s1, col.lo : col.hi])),
                    bool(np.array_equal(tp.layers[REPLICATED]._mask, whole[s0:s1])),
                ]
            )
            loss_fn(out, y[s0:s1])
            dp.zero_grad()
            dp.backward(loss_fn.backward())
            opt.step()
            k += 1
    got = tp.state_dict()  # gathered over this replica's ranks
    res["masks"] = masks_ok
    res["errors"] = {name: rel(got[name], v) for name, v in want.items()}
    res["names"] = list(got) == list(want)
    every = dist.comm().allgather(got)  # every replica ends with the same bits
    res["replicas_equal"] = all(np.array_equal(o[name], got[name]) for o in every for name in got)
    res["fit"] = fit_case(g)
    return res


def fit_case(g) -> dict:
    """2 epochs of DataParallel.fit with Adam on the grid against Sequential.fit in one process."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((50, 13)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    kw = {"epochs": 2, "batch_size": GLOBAL, "loss": nn.CrossEntropyLoss(), "verbose": 0}
    ref = make(1)
    ref.fit(X, y, optimizer=optim.Adam(ref.parameters(), lr=1e-2), **kw)
    tp = dist.tensor_parallel(make(1), comm=g.split)
    dp = dist.DataParallel(tp, comm=g.data)
    h = dp.fit(X, y, optimizer=optim.Adam(tp.parameters(), lr=1e-2), **kw)
    got = tp.state_dict()
    return {"errors": {name: rel(got[name], v) for name, v in ref.state_dict().items()}, "loss": h["loss"]}


def main(argv: list[str]) -> None:
    out = steps_case(int(argv[1]) if len(argv) > 1 else 2)
    every = dist.comm().gather(out, root=0)
    dist.barrier()
    if dist.rank() == 0:
        print("RESULT " + json.dumps({"size": dist.size(), "ranks": every}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
