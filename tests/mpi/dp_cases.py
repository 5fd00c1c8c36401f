"""The worker tests/test_distributed_correctness.py launches: ``mpiexec -n P python dp_cases.py CASE BACKEND``.

Cases (issue 24): ``weight`` (a backward's weight scales only its own
gradient; two backward passes accumulate G1 + G2, issue 33), ``pending`` (an exception in the backward pass after some
allreduces started), ``dropout_fit`` and ``dropout_explicit`` (P ranks draw
one process's masks), ``no_sync`` (local accumulation, then one allreduce),
``shapes`` (ranks that hold different models), ``progress`` (allreduces move
without Test calls).  Every rank computes its case and catches what it
raises; rank 0 gathers every rank's result and prints one line
``RESULT {json}``: ``{"size": P, "ranks": [rank 0's dict, rank 1's, ...]}``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim

FEATURES, HIDDEN, CLASSES = 12, 24, 5


def make_model(backend: str, seed: int, hidden: int = HIDDEN, dropout: bool = False, dtype=np.float32):
    whygpu.manual_seed(seed)
    layers = [nn.Linear(FEATURES, hidden, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers += [nn.Linear(hidden, 16, dtype=dtype), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(16, CLASSES, dtype=dtype))
    return nn.Sequential(*layers).to(backend)


def data(n: int):
    rng = np.random.default_rng(42)
    return rng.standard_normal((n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n)


def grads(model) -> list[np.ndarray]:
    return [np.array(p.grad, dtype=np.float64) for p in model.parameters()]


def rel_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The largest |a - b|, relative to each reference array's largest |value|."""
    return max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)) for a, b in zip(got, want))


def ref_grads(backend: str, seed: int, batches, weights) -> list[np.ndarray]:
    """One process: the sum over (x, y) batches of weight * the gradient of the batch's mean loss."""
    ref = make_model(backend, seed)
    lf = nn.CrossEntropyLoss()
    total = [np.zeros(p.shape) for p in ref.parameters()]
    for (x, y), w in zip(batches, weights):
        lf(ref(x), y)
        ref.zero_grad()
        ref.backward(lf.backward())
        total = [t + w * g for t, g in zip(total, grads(ref))]
    return total


def identical_on_all_ranks(arrays) -> bool:
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return all(x == mine for x in dist.comm().allgather(mine))


def weight_case(backend: str) -> dict:
    """Two backward passes without zero_grad between them: the second's weight must scale only its
    own gradient, and the two accumulate as in PyTorch's DDP: every rank ends with G1 + G2, each Gi
    the global batch's mean-loss gradient of backward i (it used to be size * G1 + G2: the first
    sum was summed again over the ranks)."""
    rank, size = dist.rank(), dist.size()
    model = make_model(backend, seed=1)
    dp = dist.DataParallel(model, bucket_mb=0.001)
    X, y = data(20)
    lf = nn.CrossEntropyLoss()
    (xa, ya), (xb, yb) = (X[:8], y[:8]), (X[8:20], y[8:20])
    dp.zero_grad()
    for x, t in ((xa, ya), (xb, yb)):
        s0, s1 = dist.share(len(x), size, rank)
        lf(dp(x[s0:s1]), t[s0:s1])
        dp.backward(lf.backward(), weight=(s1 - s0) / len(x))
    want = ref_grads(backend, 1, [(xa, ya), (xb, yb)], [1.0, 1.0])
    got = grads(model)
    return {"rel_diff": rel_diff(got, want), "identical": identical_on_all_ranks(got)}


def pending_case(backend: str) -> dict:
    """Rank 1's first layer raises in its backward pass, after the allreduces of the layers above it
    started; every rank catches what dp.backward raises, then takes an ordinary step."""
    rank, size = dist.rank(), dist.size()
    out: dict = {}
    for progress in ("thread", "test"):
        model = make_model(backend, seed=2)
        dp = dist.DataParallel(model, bucket_mb=0.0)  # a bucket per Linear: two start before layer 0 raises
        dp._ensure_buckets().progress = progress
        X, y = data(16)
        lf = nn.CrossEntropyLoss()
        s0, s1 = dist.share(16, size, rank)
        first = model.layers[0]

        def boom(dy, need_input_grad):
            raise ValueError("boom on rank 1")

        if rank == 1:
            first._backward = boom  # type: ignore[method-assign]
        lf(dp(X[s0:s1]), y[s0:s1])
        dp.zero_grad()
        try:
            dp.backward(lf.backward(), weight=(s1 - s0) / 16)
            raised = "nothing"
        except ValueError as e:
            raised = f"ValueError: {e}"
        except RuntimeError as e:
            raised = f"RuntimeError: {e}"
        if rank == 1:
            del first._backward  # the class's method again
        zero = all(not np.any(g) for g in grads(model))
        # the next step: the right sums, the same on every rank
        lf(dp(X[s0:s1]), y[s0:s1])
        dp.zero_grad()
        dp.backward(lf.backward(), weight=(s1 - s0) / 16)
        got = grads(model)
        want = ref_grads(backend, 2, [(X, y)], [1.0])
        out[progress] = {
            "raised": raised,
            "zero_after": zero,
            "rel_diff": rel_diff(got, want),
            "identical": identical_on_all_ranks(got),
        }
    return out


def dropout_fit_case(backend: str) -> dict:
    """A model with Dropout, ranks seeded apart: fit over 97 samples (the last batch of 1 leaves ranks
    without samples), against one process."""
    rank = dist.rank()
    X, y = data(97)
    out: dict = {}
    model = make_model(backend, seed=5 + rank, dropout=True)
    dp = dist.DataParallel(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    whygpu.manual_seed(11 + rank)  # fit gives every rank rank 0's random state
    hist = dp.fit(X, y, epochs=2, batch_size=32, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0)
    if rank == 0:
        ref = make_model(backend, seed=5, dropout=True)
        whygpu.manual_seed(11)
        ref_hist = ref.fit(
            X,
            y,
            epochs=2,
            batch_size=32,
            optimizer=optim.SGD(ref.parameters(), lr=0.1, momentum=0.9),
            loss=nn.CrossEntropyLoss(),
            verbose=0,
        )
        out["fit_rel_diff"] = rel_diff([p.data for p in model.parameters()], [p.data for p in ref.parameters()])
        out["fit_loss"] = (hist["loss"], ref_hist["loss"])
    out["fit_identical"] = identical_on_all_ranks([p.data for p in model.parameters()])
    return out


def dropout_explicit_case(backend: str) -> dict:
    """A model with Dropout, ranks seeded apart: explicit steps with dp(x, global_batch=n) over global
    batches of 32, 7, 1 and 32 rows, against one process."""
    rank, size = dist.rank(), dist.size()
    X, y = data(97)
    out: dict = {}
    # rank 0's random state from wrapping on
    model = make_model(backend, seed=6 + rank, dropout=True)
    dp = dist.DataParallel(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    lf = nn.CrossEntropyLoss()
    batches, start = [], 0
    for n in (32, 7, 1, 32):  # 1: ranks without samples still draw the batch's masks
        batches.append((X[start : start + n], y[start : start + n]))
        start += n
    for xb, yb in batches:
        s0, s1 = dist.share(len(xb), size, rank)
        out_b = dp(xb[s0:s1], global_batch=len(xb))
        dp.zero_grad()
        if s1 > s0:
            lf(out_b, yb[s0:s1])
            dp.backward(lf.backward())  # weighted by (s1 - s0) / len(xb), from the forward pass
        else:
            dp.backward(None)
        opt.step()
    if rank == 0:
        ref = make_model(backend, seed=6, dropout=True)
        ref_opt = optim.SGD(ref.parameters(), lr=0.1)
        for xb, yb in batches:
            lf(ref(xb), yb)
            ref.zero_grad()
            ref.backward(lf.backward())
            ref_opt.step()
        out["explicit_rel_diff"] = rel_diff([p.data for p in model.parameters()], [p.data for p in ref.parameters()])
    out["explicit_identical"] = identical_on_all_ranks([p.data for p in model.parameters()])
    return out


def no_sync_case(backend: str) -> dict:
    """A global batch of 24 as 3 micro-batches of 8: two backward passes under no_sync, the third
    synced.  Under no_sync the gradient must stay this rank's own; after the third, every rank holds
    the gradient of the mean loss over all 24 rows."""
    rank, size = dist.rank(), dist.size()
    model = make_model(backend, seed=3)
    dp = dist.DataParallel(model, bucket_mb=0.001)  # several buckets: gradients are views into them (CPU)
    X, y = data(24)
    lf = nn.CrossEntropyLoss()
    micro = [(X[k * 8 : (k + 1) * 8], y[k * 8 : (k + 1) * 8]) for k in range(3)]
    dp.zero_grad()
    local_ok = True
    for k, (x, t) in enumerate(micro):
        s0, s1 = dist.share(8, size, rank)
        lf(dp(x[s0:s1]), t[s0:s1])
        if k < 2:
            with dp.no_sync():
                dp.backward(lf.backward(), weight=(s1 - s0) / 24)
            # nothing was summed: this rank's own micro-batches alone, with their weights
            mine = [(xm[s0:s1], tm[s0:s1]) for xm, tm in micro[: k + 1]]
            local = ref_grads(backend, 3, mine, [(s1 - s0) / 24] * len(mine))
            local_ok &= rel_diff(grads(model), local) <= 1e-5
        else:
            dp.backward(lf.backward(), weight=(s1 - s0) / 24)
    want = ref_grads(backend, 3, [(X, y)], [1.0])
    got = grads(model)
    return {"local_ok": local_ok, "rel_diff": rel_diff(got, want), "identical": identical_on_all_ranks(got)}


def shapes_case(backend: str) -> dict:
    """The last rank builds a different model; wrapping must raise ValueError on every rank."""
    rank, size = dist.rank(), dist.size()
    odd = rank == size - 1
    out: dict = {}
    variants = {
        "shape": lambda: make_model(backend, 4, hidden=25 if odd else HIDDEN),
        "dtype": lambda: make_model(backend, 4, dtype=np.float64 if odd else np.float32),
        "count": lambda: nn.Sequential(*make_model(backend, 4).layers[: 3 if odd else 5]),
        "same": lambda: make_model(backend, 4),
    }
    for name, build in variants.items():
        try:
            dist.DataParallel(build())
            out[name] = "ok"
        except ValueError as e:
            out[name] = str(e)
    return out


def progress_case(backend: str) -> dict:
    """The allreduces move while Python calls nothing: layer 0's backward pass sleeps 1.5 s (in C,
    the GIL released) after the buckets of the layers above it started; with a progress mechanism
    that needs Test() calls they would complete only after it, so at least 1.5 s in flight."""
    model = make_model(backend, seed=8)
    dp = dist.DataParallel(model, bucket_mb=0.0)  # a bucket per Linear: two start before layer 0
    X, y = data(16)
    s0, s1 = dist.share(16, dist.size(), dist.rank())
    first = model.layers[0]
    own = first._backward

    def slow(dy, need_input_grad):
        time.sleep(1.5)
        return own(dy, need_input_grad)

    first._backward = slow  # type: ignore[method-assign]
    lf = nn.CrossEntropyLoss()
    lf(dp(X[s0:s1], global_batch=16), y[s0:s1])
    dp.zero_grad()
    dp.backward(lf.backward())
    return dict(dp.last_step)


CASES = {
    "weight": weight_case,
    "pending": pending_case,
    "dropout_fit": dropout_fit_case,
    "dropout_explicit": dropout_explicit_case,
    "no_sync": no_sync_case,
    "shapes": shapes_case,
    "progress": progress_case,
}


def main(case: str, backend: str) -> None:
    dist.init()
    try:
        res = CASES[case](backend)
    except Exception as e:  # reported, never raised: no rank may leave the others in a collective
        res = {"error": f"{type(e).__name__}: {e}"}
    every = dist.comm().gather(res, root=0)
    if dist.rank() == 0:
        print("RESULT " + json.dumps({"size": dist.size(), "ranks": every}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "numpy")
