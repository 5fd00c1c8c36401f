"""The worker tests/test_distributed.py launches (``mpiexec -n P python dp_worker.py BACKENDS``,
or plain python for one rank): DataParallel training against one process on the same batches.

Every rank trains; rank 0 also trains the single-process reference (plain
Sequential, the same initial weights, the same global batches) and prints
one line ``RESULT {json}``: per case, the largest difference from the
reference (relative to the parameter's largest value), whether the ranks'
parameters were bitwise identical after every step, and the histories.
Failures are reported in the JSON, never raised mid-way, so that no rank is
left waiting in a collective for one that stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim

FEATURES, HIDDEN, CLASSES = 12, 24, 5


def make_model(backend: str, seed: int) -> nn.Sequential:
    whygpu.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 16), nn.Tanh(), nn.Linear(16, CLASSES)
    ).to(backend)


def make_optimizer(kind: str, params):
    if kind == "sgd":
        return optim.SGD(params, lr=0.1, momentum=0.9)
    return optim.Adam(params, lr=0.01)


def data(n: int):
    rng = np.random.default_rng(42)
    X = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    return X, y


def checksum(model) -> str:
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


def identical_on_all_ranks(model) -> bool:
    sums = dist.comm().allgather(checksum(model))
    return all(s == sums[0] for s in sums)


def rel_diff(model, ref) -> float:
    """The largest |a - b| over the parameters, each relative to the reference's largest |value|."""
    worst = 0.0
    for p, q in zip(model.parameters(), ref.parameters()):
        a, b = p.data.astype(np.float64), q.data.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
    return worst


def explicit_case(backend: str, opt_kind: str) -> dict:
    """Explicit steps over global batches of uneven sizes (weights n_r/N), ranks seeded apart."""
    rank, size = dist.rank(), dist.size()
    model = make_model(backend, seed=100 + rank)  # different weights on every rank ...
    dp = dist.DataParallel(model, bucket_mb=0.001)  # ... until rank 0's are broadcast; tiny buckets: 2
    opt = make_optimizer(opt_kind, model.parameters())
    ref = make_model(backend, seed=100) if rank == 0 else None  # rank 0's initial weights
    ref_opt = make_optimizer(opt_kind, ref.parameters()) if ref is not None else None
    loss_fn, ref_loss = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    X, y = data(200)
    identical, start = True, 0
    for n in (32, 32, 7, 2, 32, 1, 32):  # global batches; 2 and 1 leave some ranks without samples
        xb, yb = X[start : start + n], y[start : start + n]
        start += n
        s0, s1 = dist.share(n, size, rank)
        dp.zero_grad()
        if s1 > s0:
            loss_fn(dp(xb[s0:s1]), yb[s0:s1])
            dp.backward(loss_fn.backward(), weight=(s1 - s0) / n)
        else:
            dp.backward(None)  # no samples here: it adds zeros, but joins the allreduces
        opt.step()
        identical &= identical_on_all_ranks(model)
        if ref is not None and ref_opt is not None:
            ref_loss(ref(xb), yb)
            ref.zero_grad()
            ref.backward(ref_loss.backward())
            ref_opt.step()
    out: dict = {"identical": identical, "buckets": dp.last_step["buckets"]}
    if ref is not None:
        out["rel_diff"] = rel_diff(model, ref)
    return out


def fit_case(backend: str, opt_kind: str, n: int) -> dict:
    """fit over n samples, global batch 32, two epochs, shuffled, with validation data."""
    rank = dist.rank()
    model = make_model(backend, seed=7 + rank)
    dp = dist.DataParallel(model, bucket_mb=0.0)  # one bucket per layer with parameters
    opt = make_optimizer(opt_kind, model.parameters())
    X, y = data(n)
    Xv, yv = X[:40], y[:40]
    sums = []

    class Watch(type(opt)):  # type: ignore[misc]  # checks the ranks agree after every step of fit
        def step(self):
            super().step()
            sums.append(identical_on_all_ranks(model))

    opt.__class__ = Watch
    whygpu.manual_seed(3 + rank)  # shuffling: rank 0's order is used everywhere
    hist = dp.fit(
        X, y, epochs=2, batch_size=32, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0, validation_data=(Xv, yv)
    )
    ev = dp.evaluate(X, y)
    pred = dp.predict(X, batch_size=16)
    out: dict = {"identical": all(sums) and len(sums) == 2 * -(-n // 32), "history": hist, "evaluate": ev}
    out["same_everywhere"] = (
        dist.comm().allgather((json.dumps(hist), json.dumps(ev), pred.tobytes()))
        == [(json.dumps(hist), json.dumps(ev), pred.tobytes())] * dist.size()
    )
    if rank == 0:
        ref = make_model(backend, seed=7)
        ref_opt = make_optimizer(opt_kind, ref.parameters())
        whygpu.manual_seed(3)
        ref_hist = ref.fit(
            X,
            y,
            epochs=2,
            batch_size=32,
            optimizer=ref_opt,
            loss=nn.CrossEntropyLoss(),
            verbose=0,
            validation_data=(Xv, yv),
        )
        out["ref_history"] = ref_hist
        out["ref_evaluate"] = ref.evaluate(X, y)
        out["rel_diff"] = rel_diff(model, ref)
        out["pred_diff"] = float(np.max(np.abs(pred - ref.predict(X, batch_size=16))))
    return out


def main(backends: list[str]) -> None:
    dist.init()
    results: dict = {"size": dist.size(), "cases": {}}
    for be in backends:
        for opt_kind in ("sgd", "adam"):
            results["cases"][f"{be}/{opt_kind}/explicit"] = explicit_case(be, opt_kind)
        results["cases"][f"{be}/sgd/fit103"] = fit_case(be, "sgd", 103)  # last batch of 7
        results["cases"][f"{be}/adam/fit97"] = fit_case(be, "adam", 97)  # last batch of 1
    if dist.rank() == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["numpy"])
