"""The worker tests/test_dp_contract.py launches: ``mpiexec -n P python contract_cases.py BACKEND [CASES]``.

DataParallel and its sharded optimizer against the promises of PyTorch's DistributedDataParallel
and ZeroRedundancyOptimizer (issue 33), each case under shard none / optimizer / gradients where it
applies, against one process computing the same thing:

* ``accumulate``: synced backward passes without zero_grad (and no_sync ones between) give
  G1 + G2 (+ ...), each Gi the global batch's mean-loss gradient.
* ``grad_read``: after a synced backward a sharded model's ``p.grad`` raises, saying where the
  summed shard lives (checked against the gradient); zeros after zero_grad; the local gradient
  under no_sync.
* ``clip``: ``dp.clip_grad_norm_`` returns one process's total norm and clips as it does.
* ``zero_step``: ``zero_grad(); step()`` with no backward between does what the unsharded optimizer
  does (SGD: nothing; Adam: its moments' step).
* ``hyper``: assigning ``opt.momentum``, ``betas``, ``eps``, ``weight_decay``, ``nesterov``, ``lr``
  changes the next step as on the unsharded optimizer.
* ``assign``: weights assigned after wrapping (``p.data = ...``, ``load_state_dict``) are what the
  next step starts from.
* ``agree_fit``, ``agree_wrap``: ranks given other fit arguments, or wrapping with other settings,
  all raise the same ValueError (instead of a hang).
* ``setup_fail``: one rank's data is refused by its own checks (a NaN): every rank raises.
* ``prefetch``: without MPI_THREAD_MULTIPLE, prefetch=True warns once and reports False; with it,
  ``model.to`` (a conversion on the CPU, a move to the host from a GPU) waits for the allgather
  still in flight.

Rank 0 prints one line ``RESULT {json}``; failures are reported there, never raised mid-way.
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu.distributed import _buckets

FEATURES, CLASSES = 12, 5
SIZES = (FEATURES, 23, 16, CLASSES)  # buckets of 85, 384 and 299 elements: no P divides every one
SHARDS = ("none", "optimizer", "gradients")


def make_model(backend: str, seed: int) -> nn.Sequential:
    whygpu.manual_seed(seed)
    layers: list = []
    for k in range(len(SIZES) - 1):
        layers += [nn.Linear(SIZES[k], SIZES[k + 1]), nn.Tanh() if k % 2 else nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(backend)


def data(n: int, seed: int = 42):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n)


X, Y = data(120)
BATCHES = {"a": (X[:10], Y[:10]), "b": (X[10:12], Y[10:12]), "c": (X[12:30], Y[12:30]), "d": (X[30:37], Y[30:37])}


def wrap(backend: str, shard: str, seed: int = 1, opt=(optim.SGD, {"lr": 0.1}), **kw):
    model = make_model(backend, seed + dist.rank())  # rank 0's weights after wrapping
    dp = dist.DataParallel(model, shard=shard, bucket_mb=0.0, **kw)  # a bucket per Linear
    return model, dp, dp.optimizer(opt[0], **opt[1])


def backward(dp, key: str, sync: bool = True) -> None:
    """dp's backward pass over global batch ``key``: this rank's share, weighted by its size."""
    x, t = BATCHES[key]
    s0, s1 = dist.share(len(x), dist.size(), dist.rank())
    g = None
    if s1 > s0:
        lf = nn.CrossEntropyLoss()
        lf(dp(x[s0:s1], global_batch=len(x)), t[s0:s1])
        g = lf.backward()
    if sync:
        dp.backward(g)
    else:
        with dp.no_sync():
            dp.backward(g)


def ref_step(ref, key: str, zero: bool = True) -> None:
    x, t = BATCHES[key]
    lf = nn.CrossEntropyLoss()
    lf(ref(x), t)
    if zero:
        ref.zero_grad()
    ref.backward(lf.backward())


def host(a) -> np.ndarray:
    return np.array(a.to_host() if hasattr(a, "to_host") else a, dtype=np.float64)


def ref_grads(backend: str, keys, seed: int = 1) -> list[np.ndarray]:
    """One process: the sum over the batches of each one's mean-loss gradient."""
    ref = make_model(backend, seed)
    ref.zero_grad()
    for key in keys:
        ref_step(ref, key, zero=False)
    return [host(p.grad) for p in ref.parameters()]


def full_grads(dp, opt) -> list[np.ndarray]:
    """The summed gradient of every parameter: p.grad unsharded; sharded, every rank's shards gathered."""
    model = dp.module
    if dp.shard == "none":
        return [host(p.grad) for p in model.parameters()]
    got: dict[int, np.ndarray] = {}
    for b, sp in zip(dp._buckets.grad_buckets, opt.optimizer.params):
        flat = np.concatenate(dist.comm().allgather(host(sp.grad)))
        off = 0
        for p in b.params:
            got[id(p)] = flat[off : off + p.size].reshape(p.shape)
            off += p.size
    return [got[id(p)] for p in model.parameters()]


def rel_diff(got, want) -> float:
    return max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)) for a, b in zip(got, want))


def params(model) -> list[np.ndarray]:
    return [host(p.data) for p in model.parameters()]


def identical(arrays) -> bool:
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return all(x == mine for x in dist.comm().allgather(mine))


# -- the cases ----------------------------------------------------------------------------------------


def accumulate_case(backend: str) -> dict:
    seqs = {  # (batch, synced?): b has 2 rows (a rank without samples at P = 3)
        "two_synced": [("a", True), ("b", True)],
        "sync_nosync_sync": [("a", True), ("c", False), ("b", True)],
        "sync_2nosync_sync_sync": [("c", True), ("a", False), ("b", False), ("d", True), ("a", True)],
    }
    out: dict = {}
    for shard in SHARDS:
        for name, seq in seqs.items():
            model, dp, opt = wrap(backend, shard)
            dp.zero_grad()
            for key, sync in seq:
                backward(dp, key, sync)
            got = full_grads(dp, opt)
            opt.step()  # and the step from it: the same weights everywhere
            out[f"{shard}/{name}"] = {
                "rel_diff": rel_diff(got, ref_grads(backend, [k for k, _ in seq])),
                "identical": identical(got) and identical(params(model)),
            }
    return out


_WHERE = re.compile(r"its flat elements \[(\d+):(\d+)\] as opt\.optimizer\.params\[(\d+)\]\.grad\[(\d+):(\d+)\]")


def grad_read_case(backend: str) -> dict:
    out: dict = {}
    for shard in ("optimizer", "gradients"):
        model, dp, opt = wrap(backend, shard)
        dp.zero_grad()
        backward(dp, "c")
        want = ref_grads(backend, ["c"])
        res: dict = {"raised": 0, "holds_none": 0, "assign_raised": 0, "n": len(want)}
        covered = []  # how many of each parameter's elements this rank holds where the message says
        for p, w in zip(model.parameters(), want):
            try:
                p.grad  # noqa: B018
                continue
            except RuntimeError as e:
                msg = str(e)
            res["raised"] += 1
            res["message"] = msg
            m = _WHERE.search(msg)
            covered.append(0)
            if m:
                i, j, k, a, b = (int(v) for v in m.groups())
                g = host(opt.optimizer.params[k].grad)[a:b]
                if j - i == b - a > 0 and np.allclose(g, w.ravel()[i:j], rtol=1e-5, atol=1e-5 * np.abs(w).max()):
                    covered[-1] = j - i
            elif "holds none of them" in msg:
                res["holds_none"] += 1
            try:
                p.grad = np.zeros(p.shape)
            except RuntimeError:
                res["assign_raised"] += 1
        # over the ranks, the places the messages name cover every element of every parameter once
        every = dist.comm().allgather(covered)
        res["covered"] = len(covered) == res["n"] and all(
            sum(c[i] for c in every) == p.size for i, p in enumerate(model.parameters())
        )
        dp.zero_grad()
        res["zero_after_zero_grad"] = all(not np.any(host(p.grad)) for p in model.parameters())
        # under no_sync after zero_grad: this rank's own gradient
        x, t = BATCHES["c"]
        s0, s1 = dist.share(len(x), dist.size(), dist.rank())
        backward(dp, "c", sync=False)
        ref = make_model(backend, 1)
        lf = nn.CrossEntropyLoss()
        lf(ref(x[s0:s1]), t[s0:s1])
        ref.zero_grad()
        ref.backward(lf.backward())
        local = [host(p.grad) for p in model.parameters()]
        res["no_sync_local"] = rel_diff(local, [host(p.grad) * ((s1 - s0) / len(x)) for p in ref.parameters()])
        backward(dp, "a")
        try:
            model.parameters()[0].grad  # noqa: B018
            res["raises_again"] = False
        except RuntimeError:
            res["raises_again"] = True
        out[shard] = res
    return out


def clip_case(backend: str) -> dict:
    out: dict = {}
    for shard in SHARDS:
        for max_norm, norm_type in ((0.05, 2.0), (1e3, 2.0), (0.01, float("inf")), (0.2, 1.0)):
            model, dp, opt = wrap(backend, shard)
            dp.zero_grad()
            backward(dp, "c")
            total = dp.clip_grad_norm_(max_norm, norm_type)
            got = full_grads(dp, opt)
            want = ref_grads(backend, ["c"])
            flat = np.concatenate([w.ravel() for w in want])
            if norm_type == float("inf"):
                ref_total = float(np.max(np.abs(flat)))
            else:
                ref_total = float(np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type))
            coef = min(1.0, max_norm / (ref_total + 1e-6))
            out[f"{shard}/{max_norm}/{norm_type}"] = {
                "total": total,
                "ref_total": ref_total,
                "clipped": coef < 1.0,
                "rel_diff": rel_diff(got, [w * coef for w in want]),
                "same_total": len(set(dist.comm().allgather(total))) == 1,
            }
    return out


def zero_step_case(backend: str) -> dict:
    out: dict = {}
    kinds = {"sgd": (optim.SGD, {"lr": 0.1}), "adam": (optim.Adam, {"lr": 0.01})}
    for shard in ("optimizer", "gradients"):
        for kind, spec in kinds.items():
            for how in ("dp", "opt", "model"):
                model, dp, opt = wrap(backend, shard, opt=spec)
                ref = make_model(backend, 1)
                ref_opt = spec[0](ref.parameters(), **spec[1])
                dp.zero_grad()
                backward(dp, "c")
                opt.step()
                ref_step(ref, "c")
                ref_opt.step()
                before = params(model)
                {"dp": dp, "opt": opt, "model": model}[how].zero_grad()
                opt.step()  # no backward since zero_grad: as the unsharded optimizer's step
                ref.zero_grad()
                ref_opt.step()
                out[f"{shard}/{kind}/{how}"] = {
                    "unchanged": all(np.array_equal(a, b) for a, b in zip(before, params(model))),
                    "rel_diff": rel_diff(params(model), params(ref)),
                    "identical": identical(params(model)),
                }
    return out


def hyper_case(backend: str) -> dict:
    out: dict = {}
    plans = {
        "sgd": (
            (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
            [{"momentum": 0.5, "weight_decay": 0.05, "nesterov": True}, {"lr": 0.03}],
        ),
        "adam": ((optim.Adam, {"lr": 0.01}), [{"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.05}, {"lr": 0.003}]),
    }
    for shard in ("optimizer", "gradients"):
        for kind, (spec, changes) in plans.items():
            model, dp, opt = wrap(backend, shard, opt=spec)
            ref = make_model(backend, 1)
            ref_opt = spec[0](ref.parameters(), **spec[1])
            read_back = True
            for key, change in zip(("a", "c", "d"), [{}, *changes]):
                for k, v in change.items():
                    setattr(opt, k, v)
                    setattr(ref_opt, k, v)
                    read_back &= getattr(opt, k) == v == getattr(opt.optimizer, k)
                dp.zero_grad()
                backward(dp, key)
                opt.step()
                ref_step(ref, key)
                ref_opt.step()
            out[f"{shard}/{kind}"] = {
                "rel_diff": rel_diff(params(model), params(ref)),
                "identical": identical(params(model)),
                "read_back": bool(read_back),
            }
    return out


def assign_case(backend: str) -> dict:
    out: dict = {}
    for shard in ("optimizer", "gradients"):
        for how in ("data", "load_state_dict", "data-prefetch"):
            prefetch = how.endswith("prefetch")
            if how == "load_state_dict" and not hasattr(nn.Sequential, "load_state_dict"):
                continue
            model, dp, opt = wrap(backend, shard, opt=(optim.Adam, {"lr": 0.01}), prefetch=prefetch)
            ref = make_model(backend, 1)
            ref_opt = optim.Adam(ref.parameters(), lr=0.01)
            dp.zero_grad()
            backward(dp, "a")
            opt.step()  # (prefetch: its allgather still in flight while the weights are assigned)
            ref_step(ref, "a")
            ref_opt.step()
            loaded = make_model(backend, 99)  # other weights, the same on every rank: "a checkpoint"
            if how == "load_state_dict":
                model.load_state_dict(loaded.state_dict())
            else:
                for p, q in zip(model.parameters(), loaded.parameters()):
                    p.data = q.data
            for p, q in zip(ref.parameters(), loaded.parameters()):
                p.data = q.data
            assigned = rel_diff(params(model), params(loaded))
            for key in ("c", "d"):
                dp.zero_grad()
                backward(dp, key)
                opt.step()
                ref_step(ref, key)
                ref_opt.step()
            out[f"{shard}/{how}"] = {
                "assigned": assigned,
                "rel_diff": rel_diff(params(model), params(ref)),
                "identical": identical(params(model)),
            }
    return out


def agree_fit_case(backend: str) -> dict:
    odd = dist.rank() == dist.size() - 1
    Xf, yf = data(97)
    Xv, yv = Xf[:40], yf[:40]
    base = {"X": Xf, "y": yf, "epochs": 1, "batch_size": 32, "shuffle": True, "validation_data": None}
    variants = {
        "same": {},
        "samples": {"X": Xf[:96], "y": yf[:96]},
        "batch_size": {"batch_size": 16},
        "epochs": {"epochs": 2},
        "shuffle": {"shuffle": False},
        "validation": {"validation_data": (Xv, yv)},
    }
    out: dict = {}
    for name, change in variants.items():
        args = dict(base, **(change if odd else {}))
        model = make_model(backend, 3)
        dp = dist.DataParallel(model)
        try:
            dp.fit(
                args["X"], args["y"], epochs=args["epochs"], batch_size=args["batch_size"],
                optimizer=optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss(), verbose=0,
                shuffle=args["shuffle"], validation_data=args["validation_data"],
            )  # fmt: skip
            out[name] = "ok"
        except ValueError as e:
            out[name] = str(e)
    # the validation pair's shape, and the dtypes (fit converts X to the model's dtype first: asked directly)
    from whygpu.distributed._agree import agree_fit

    dp = dist.DataParallel(make_model(backend, 3))
    for name, args in {
        "validation_shape": (Xf, yf, (Xv[: 39 if odd else 40], yv[: 39 if odd else 40])),
        "X_dtype": (Xf.astype(np.float64) if odd else Xf, yf, None),
        "y_shape": (Xf, yf.reshape(-1, 1) if odd else yf, None),
    }.items():
        try:
            agree_fit(dp, args[0], args[1], args[2], 1, 32, True)
            out[name] = "ok"
        except ValueError as e:
            out[name] = str(e)
    return out


def setup_fail_case(backend: str) -> dict:
    """One rank's own checks refuse its data (a NaN in X): every rank raises, none hangs in a collective."""
    odd = dist.rank() == dist.size() - 1
    X, y = data(40)
    if odd:
        X = X.copy()
        X[3, 2] = np.nan
    model = make_model(backend, 3)
    dp = dist.DataParallel(model)
    try:
        dp.fit(X, y, epochs=1, batch_size=8, optimizer=optim.SGD(model.parameters(), lr=0.1),
               loss=nn.CrossEntropyLoss(), verbose=0)  # fmt: skip
        return {"raised": "nothing"}
    except (ValueError, RuntimeError) as e:
        return {"raised": f"{type(e).__name__}: {e}"}


def agree_wrap_case(backend: str) -> dict:
    odd = dist.rank() == dist.size() - 1
    base = {"shard": "optimizer", "bucket_mb": 25.0, "first_bucket_mb": 1.0, "prefetch": False}
    variants = {
        "same": {},
        "shard": {"shard": "none"},
        "bucket_mb": {"bucket_mb": 1.0},
        "first_bucket_mb": {"first_bucket_mb": 0.5},
        "prefetch": {"prefetch": True},
        "backend": {},
    }
    out: dict = {}
    for name, change in variants.items():
        be = ("openmp" if backend == "numpy" else "numpy") if name == "backend" and odd else backend
        try:
            dist.DataParallel(make_model(be, 4), **dict(base, **(change if odd else {})))
            out[name] = "ok"
        except ValueError as e:
            out[name] = str(e)
    return out


def prefetch_case(backend: str) -> dict:
    out: dict = {}
    # without MPI_THREAD_MULTIPLE (forced): a warning, once, and prefetch off
    real = _buckets.progress_mode
    _buckets.progress_mode = lambda: "test"
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model, dp, opt = wrap(backend, "optimizer", prefetch=True)
            for key in ("a", "c"):
                dp.zero_grad()
                backward(dp, key)
                opt.step()
        mine = [w for w in seen if issubclass(w.category, UserWarning) and "MPI_THREAD_MULTIPLE" in str(w.message)]
        out["test_mode"] = {
            "warnings": len(mine),
            "message": str(mine[0].message) if mine else "",
            "prefetch": dp.prefetch,
            "repr": repr(dp),
            "progress": dp._buckets.progress,
        }
    finally:
        _buckets.progress_mode = real
    # with the progress thread: model.to() while the allgather is in flight waits for it.  The last
    # rank joins the allgather late, so nobody's can complete before then.
    for shard in ("optimizer", "gradients"):
        model, dp, opt = wrap(backend, shard, prefetch=True)
        ref = make_model(backend, 1)
        ref_opt = optim.SGD(ref.parameters(), lr=0.1)
        dp.zero_grad()
        backward(dp, "c")
        if dist.rank() == dist.size() - 1:
            time.sleep(0.5)
        opt.step()
        in_flight = bool(dp._buckets._gathering)
        # converts (CPU) or downloads (GPU) what the allgather delivered, once it has
        move = {"dtype": np.float64} if model._backend.device is None else {"backend": "numpy"}
        model.to(**move)
        ref_step(ref, "c")
        ref_opt.step()
        ref.to(**move)
        out[shard] = {
            "in_flight": in_flight or dist.rank() == dist.size() - 1,  # (the last rank's may be complete)
            "rel_diff": rel_diff(params(model), params(ref)),
            "identical": identical(params(model)),
        }
    return out


CASES = {
    "accumulate": accumulate_case,
    "grad_read": grad_read_case,
    "clip": clip_case,
    "zero_step": zero_step_case,
    "hyper": hyper_case,
    "assign": assign_case,
    "agree_fit": agree_fit_case,
    "agree_wrap": agree_wrap_case,
    "setup_fail": setup_fail_case,
    "prefetch": prefetch_case,
}


def main(backend: str, cases: list[str]) -> None:
    dist.init()
    res: dict = {}
    for case in cases:
        try:
            res[case] = CASES[case](backend)
        except Exception as e:  # reported, never raised: no rank may leave the others in a collective
            import traceback

            res[case] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    every = dist.comm().gather(res, root=0)
    if dist.rank() == 0:
        print("RESULT " + json.dumps({"size": dist.size(), "ranks": every}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "numpy", sys.argv[2].split(",") if len(sys.argv) > 2 else list(CASES))
