"""The worker tests/test_zero.py launches: ``mpiexec -n P python zero_cases.py BACKENDS [CASES]``.

DataParallel(shard="optimizer" | "gradients") against one process on the same global batches.
Cases (comma-separated, default all but ``broken``):

* ``explicit``: explicit steps over global batches of 32, 7, 2, 1 (ranks without samples at
  P = 3), one of 32 as two micro-batches (the first under no_sync) and 32; SGD, SGD with
  momentum and Adam; every rank's parameters checksummed (allgather) after every step.
* ``fit``: fit over 97 samples (the last batch of 1), two epochs, with validation data.
* ``memory``: dp.memory() after a step under none / optimizer / gradients (Adam).
* ``pending``: rank 1's backward raises; every rank raises, the next step is right.
* ``broken``: ``explicit``'s Adam case with the allgather left out (each rank keeps only its
  own shard updated): what the checks must catch.

Rank 0 prints one line ``RESULT {json}``; failures are reported there, never raised mid-way,
so no rank is left waiting in a collective.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu.distributed._sharded import ShardedBuckets

FEATURES, HIDDEN, CLASSES = 12, 23, 5  # 12*23+23 = 299 weights in the first Linear: no P divides every bucket
OPTIMIZERS = {
    "sgd": (optim.SGD, {"lr": 0.1}),
    "momentum": (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adam": (optim.Adam, {"lr": 0.01}),
}


def make_model(backend: str, seed: int, sizes=(FEATURES, HIDDEN, 16, CLASSES)) -> nn.Sequential:
    whygpu.manual_seed(seed)
    layers: list = []
    for k in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[k], sizes[k + 1]), nn.Tanh() if k % 2 else nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(backend)


def data(n: int):
    rng = np.random.default_rng(42)
    return rng.standard_normal((n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n)


def identical_on_all_ranks(model) -> bool:
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    sums = dist.comm().allgather(h.hexdigest())
    return all(s == sums[0] for s in sums)


def rel_diff(model, ref) -> float:
    """The largest |a - b| over the parameters, each relative to the reference's largest |value|."""
    worst = 0.0
    for p, q in zip(model.parameters(), ref.parameters()):
        a, b = p.data.astype(np.float64), q.data.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
    return worst


def explicit_case(backend: str, shard: str, kind: str, broken: bool = False, prefetch: bool = False) -> dict:
    rank, size = dist.rank(), dist.size()
    model = make_model(backend, seed=100 + rank)  # rank 0's weights after wrapping
    dp = dist.DataParallel(model, shard=shard, bucket_mb=0.0, prefetch=prefetch)  # a bucket per Linear
    cls, kw = OPTIMIZERS[kind]
    opt = dp.optimizer(cls, **kw)
    if broken:  # the updated shards never leave their rank
        buckets = dp._buckets
        assert isinstance(buckets, ShardedBuckets)
        buckets.allgather = lambda: 0.0  # type: ignore[method-assign]
    ref = make_model(backend, seed=100) if rank == 0 else None
    ref_opt = cls(ref.parameters(), **kw) if ref is not None else None
    lf, ref_lf = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    X, y = data(200)
    identical, start, steps = True, 0, 0
    deferred, waited_in_forward = [], []  # prefetch: still in flight after step(); all arrived after dp(x)
    forward_identical: list[bool] = []
    for n in (32, 7, 2, 1, "micro", 32):
        micro = n == "micro"
        n = 32 if micro else int(n)
        xb, yb = X[start : start + n], y[start : start + n]
        start += n
        dp.zero_grad()
        parts = [(0, 16), (16, 32)] if micro else [(0, n)]
        for k, (a, b) in enumerate(parts):  # micro: two halves, the first under no_sync
            s0, s1 = dist.share(b - a, size, rank)
            w = (s1 - s0) / n
            if k < len(parts) - 1:
                with dp.no_sync():
                    if s1 > s0:
                        lf(dp(xb[a + s0 : a + s1]), yb[a + s0 : a + s1])
                        dp.backward(lf.backward(), weight=w)
            elif s1 > s0:
                out = dp(xb[a + s0 : a + s1])
                if prefetch and steps:
                    waited_in_forward.append(not dp._buckets._gathering)
                lf(out, yb[a + s0 : a + s1])
                dp.backward(lf.backward(), weight=w)
            else:
                dp.backward(None)  # no samples here: it adds zeros, but joins the reduce-scatters
        opt.step()
        deferred.append(bool(dp._buckets._gathering))
        steps += 1
        if prefetch:  # the next forward pass alone, no .data read first: it must wait for each layer
            y0 = model(X[:8])
            y0 = np.asarray(y0.to_host() if hasattr(y0, "to_host") else y0, dtype=np.float64)
            forward_identical.append(bool(np.all([np.array_equal(y0, o) for o in dist.comm().allgather(y0)])))
        identical &= identical_on_all_ranks(model)
        if ref is not None and ref_opt is not None:
            ref_lf(ref(xb), yb)
            ref.zero_grad()
            ref.backward(ref_lf.backward())
            ref_opt.step()
    step = dp.last_step
    out: dict = {"identical": identical, "steps": steps, "buckets": step["buckets"]}
    out["timing_keys"] = sorted(k for k in step if k.endswith("_s"))
    # prefetch: the step's own allgather is still in flight (NaN); the record has the previous one's
    finite = [k for k in out["timing_keys"] if not (prefetch and k == "allgather_s")]
    out["timing_finite"] = all(np.isfinite(step[k]) and step[k] >= 0 for k in finite)
    out["deferred"], out["waited_in_forward"] = deferred, waited_in_forward
    out["forward_identical"] = forward_identical
    if ref is not None:
        out["rel_diff"] = rel_diff(model, ref)
    return out


def fit_case(backend: str, shard: str, kind: str, n: int = 97, prefetch: bool = False) -> dict:
    rank = dist.rank()
    model = make_model(backend, seed=7 + rank)
    dp = dist.DataParallel(model, shard=shard, bucket_mb=0.0, prefetch=prefetch)
    cls, kw = OPTIMIZERS[kind]
    opt = dp.optimizer(cls, **kw)
    X, y = data(n)
    Xv, yv = X[:40], y[:40]
    sums: list[bool] = []
    step = type(opt).step

    def watched():  # the ranks must agree after every step of fit
        step(opt)
        sums.append(identical_on_all_ranks(model))

    opt.step = watched  # type: ignore[method-assign]
    whygpu.manual_seed(3 + rank)  # shuffling: rank 0's order everywhere
    loss = nn.CrossEntropyLoss()
    hist = dp.fit(X, y, epochs=2, batch_size=32, optimizer=opt, loss=loss, verbose=0, validation_data=(Xv, yv))
    out: dict = {"identical": all(sums) and len(sums) == 2 * -(-n // 32), "history": hist}
    if rank == 0:
        ref = make_model(backend, seed=7)
        whygpu.manual_seed(3)
        ref_hist = ref.fit(
            X, y, epochs=2, batch_size=32, optimizer=cls(ref.parameters(), **kw), loss=nn.CrossEntropyLoss(),
            verbose=0, validation_data=(Xv, yv),
        )  # fmt: skip
        out["ref_history"] = ref_hist
        out["rel_diff"] = rel_diff(model, ref)
    return out


def memory_case(backend: str) -> dict:
    """Every rank's dp.memory() after one Adam step, per shard setting (a 22 k-parameter model, a
    bucket per Linear: 455, 18,090 and 2,600 gradients).  Stage 2 frees each bucket's full gradient
    once it is reduced: here each reduce-scatter is waited for as soon as it starts (the library
    frees what has completed, without waiting, so how much is alive at once otherwise depends on
    timing), so the peak is the largest bucket's, well below the whole gradient."""
    out: dict = {}
    X, y = data(64)
    s0, s1 = dist.share(64, dist.size(), dist.rank())
    for shard in ("none", "optimizer", "gradients"):
        model = make_model(backend, seed=1, sizes=(FEATURES, 200, 90, CLASSES))
        dp = dist.DataParallel(model, shard=shard, bucket_mb=0.0)
        opt = dp.optimizer(optim.Adam, lr=1e-3)
        buckets = dp._buckets
        if isinstance(buckets, ShardedBuckets) and buckets.progress == "thread":
            free = buckets._after_ready

            def completed_then_free(b=buckets, free=free):
                for started in b.buckets[: b._next]:
                    started.done.wait()  # the progress thread completes it
                free()

            buckets._after_ready = completed_then_free  # type: ignore[method-assign]
        lf = nn.CrossEntropyLoss()
        lf(dp(X[s0:s1], global_batch=64), y[s0:s1])
        dp.zero_grad()
        dp.backward(lf.backward())
        opt.step()
        out[shard] = dp.memory()
    return out


def pending_case(backend: str, shard: str) -> dict:
    """Rank 1's first Linear raises in its backward pass after the buckets above it started."""
    rank, size = dist.rank(), dist.size()
    model = make_model(backend, seed=2)
    dp = dist.DataParallel(model, shard=shard, bucket_mb=0.0)
    opt = dp.optimizer(optim.SGD, lr=0.1)
    X, y = data(16)
    lf = nn.CrossEntropyLoss()
    s0, s1 = dist.share(16, size, rank)
    first = model.layers[0]

    def boom(dy, need_input_grad):
        raise ValueError("boom on rank 1")

    if rank == 1:
        first._backward = boom  # type: ignore[method-assign]
    lf(dp(X[s0:s1], global_batch=16), y[s0:s1])
    dp.zero_grad()
    try:
        dp.backward(lf.backward())
        raised = "nothing"
    except (ValueError, RuntimeError) as e:
        raised = f"{type(e).__name__}: {e}"
    if rank == 1:
        del first._backward
    zero = all(not np.any(sp.grad) for sp in opt.optimizer.params)  # the shards' summed gradients
    lf(dp(X[s0:s1], global_batch=16), y[s0:s1])
    dp.zero_grad()
    dp.backward(lf.backward())
    opt.step()
    out: dict = {"raised": raised, "zero_after": zero, "identical": identical_on_all_ranks(model)}
    if rank == 0:
        ref = make_model(backend, seed=2)
        lf(ref(X), y)
        ref.zero_grad()
        ref.backward(lf.backward())
        optim.SGD(ref.parameters(), lr=0.1).step()
        out["rel_diff"] = rel_diff(model, ref)
    return out


def run(backends: list[str], cases: list[str]) -> dict:
    res: dict = {}
    for be in backends:
        for shard in ("optimizer", "gradients"):
            if "explicit" in cases:
                for kind in OPTIMIZERS:
                    res[f"explicit/{be}/{shard}/{kind}"] = explicit_case(be, shard, kind)
            if "fit" in cases:
                for kind in ("momentum", "adam"):
                    res[f"fit/{be}/{shard}/{kind}"] = fit_case(be, shard, kind)
            if "prefetch" in cases:
                for kind in ("sgd", "adam"):
                    res[f"explicit-prefetch/{be}/{shard}/{kind}"] = explicit_case(be, shard, kind, prefetch=True)
                res[f"fit-prefetch/{be}/{shard}/adam"] = fit_case(be, shard, "adam", prefetch=True)
            if "pending" in cases and dist.size() > 1:
                res[f"pending/{be}/{shard}"] = pending_case(be, shard)
        if "memory" in cases:
            res[f"memory/{be}"] = memory_case(be)
        if "broken" in cases:
            res[f"broken/{be}"] = explicit_case(be, "optimizer", "adam", broken=True)
    return res


def main(backends: list[str], cases: list[str]) -> None:
    dist.init()
    try:
        res = run(backends, cases)
    except Exception as e:  # reported, never raised: no rank may leave the others in a collective
        import traceback

        res = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    every = dist.comm().gather(res, root=0)
    if dist.rank() == 0:
        print("RESULT " + json.dumps({"size": dist.size(), "ranks": every}), flush=True)


if __name__ == "__main__":
    be = sys.argv[1].split(",") if len(sys.argv) > 1 else ["numpy"]
    wanted = sys.argv[2].split(",") if len(sys.argv) > 2 else ["explicit", "fit", "memory", "pending"]
    main(be, wanted)
