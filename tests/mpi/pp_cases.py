"""The worker tests/test_pipeline.py launches under ``mpiexec -n P``: pipelines of P stages against one process
running the unsplit Sequential on the same micro-batches, in this process (every rank builds it alike).

    pp_cases.py exact B,.. every back end B (numpy by default) x schedule x m in {1, 2, 4, 8} x dtype: the
                           gathered gradients against one process accumulating the same m micro-batches
                           (bitwise) and one full-batch step (relative error), GPipe against 1F1B (bitwise),
                           the loss, the peak stash and the messages
    pp_cases.py fit        3 epochs of Adam with Pipeline.fit against the same loop in one process
    pp_cases.py broken     a 1F1B with a warm-up one too long: refused before it runs (on every rank)
    pp_cases.py dp         4 ranks as 2 replicas x 2 stages (dist.grid): the gradients against one process, and a
                           data-parallel sum started before the last micro-batch's backward
    pp_cases.py gpu        the cuda back end (the emulated GPU in CI) against numpy in one process
    pp_cases.py balance    the default cut, by measured time: every rank cuts alike, each stage non-empty
Rank 0 prints ``RESULT {json}`` with what every rank measured.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu.schedules import Action, one_f_one_b

BATCH = 19  # odd: micro-batches of unequal rows
WIDTHS = (13, 24, 16, 12, 9, 10)  # 5 Linear layers: up to 5 stages
ACTS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ReLU)


def make(dtype, seed: int = 0, backend: str = "numpy") -> nn.Sequential:
    whygpu.manual_seed(seed)
    layers: list = []
    for k in range(len(WIDTHS) - 1):
        layers.append(nn.Linear(WIDTHS[k], WIDTHS[k + 1], dtype=dtype))
        if k < len(ACTS):
            layers.append(ACTS[k]())
    return nn.Sequential(*layers).to(backend, dtype)


def balance(p: int) -> list[int]:
    """Layers per stage: the 5 (Linear, activation) units spread as evenly as they go."""
    units = [2, 2, 2, 2, 1]
    out, u = [], 0
    for r in range(p):
        k = len(units) // p + (r < len(units) % p)
        out.append(sum(units[u : u + k]))
        u += k
    return out


def data(dtype, n: int = BATCH, seed: int = 3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, WIDTHS[0])).astype(dtype), rng.integers(0, WIDTHS[-1], n)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def accumulate(model, x, y, m: int, total: int | None = None) -> float:
    """One process: m micro-batches (rows share(n, m, i)), each loss gradient weighted by rows_i / total and
    backpropagated in order into the same p.grad -- what the pipeline computes, in the same order."""
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    total = n if total is None else total
    loss = 0.0
    for i in range(m):
        s0, s1 = dist.share(n, m, i)
        out = model(x[s0:s1])
        loss += float(loss_fn(out, y[s0:s1])) * (s1 - s0)
        model.backward(np.multiply(loss_fn.backward(), (s1 - s0) / total, dtype=model.dtype))
    return loss / n


def grads(model) -> dict:
    return {k: p.grad.copy() for k, p in model.named_parameters()}


def exact_cases(backends: list[str]) -> list[dict]:
    P = dist.size()
    out = []
    for backend, dtype in [(b, d) for b in backends for d in (np.float32, np.float64)]:
        x, y = data(dtype)
        full = make(dtype, backend=backend)  # one full-batch step
        full.zero_grad()
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(full(x), y)
        full.backward(loss_fn.backward())
        full_grads = grads(full)
        for m in (1, 2, 4, 8):
            ref = make(dtype, backend=backend)
            ref.zero_grad()
            ref_loss = accumulate(ref, x, y, m)
            ref_grads = grads(ref)
            by_schedule = {}
            for name in ("gpipe", "1f1b"):
                model = make(dtype, backend=backend)
                pp = dist.Pipeline(model, micro_batches=m, schedule=name, balance=balance(P))
                pp.zero_grad()
                loss = pp.step(x, y, nn.CrossEntropyLoss())
                g = pp.full_grads()
                by_schedule[name] = g
                st = pp.last_step
                out.append(
                    {
                        "dtype": np.dtype(dtype).name,
                        "backend": backend,
                        "m": m,
                        "schedule": name,
                        "bitwise_vs_accumulated": all(np.array_equal(g[k], ref_grads[k]) for k in ref_grads),
                        "same_keys": sorted(g) == sorted(ref_grads),
                        "rel_vs_full_batch": max(rel(g[k], full_grads[k]) for k in full_grads),
                        "loss": loss,
                        "ref_loss": ref_loss,
                        "stash_peak": st["stash_peak"],
                        "stash_peak_bytes": st["stash_peak_bytes"],
                        "messages": st["messages"],
                        "in_features": pp.in_features,
                        "out_features": pp.out_features,
                        "param_bytes": st["param_bytes"],
                        "n_actions": len(st["timeline"]),
                    }
                )
            out.append(
                {
                    "dtype": np.dtype(dtype).name,
                    "backend": backend,
                    "m": m,
                    "schedule": "both",
                    "gpipe_is_1f1b": all(
                        np.array_equal(by_schedule["gpipe"][k], by_schedule["1f1b"][k]) for k in ref_grads
                    ),
                }
            )
    return out


def fit_case() -> dict:
    P = dist.size()
    x, y = data(np.float32, n=64, seed=5)
    m, batch = 4, 16
    pp = dist.Pipeline(make(np.float32, seed=2), micro_batches=m, schedule="1f1b", balance=balance(P))
    opt = optim.Adam(pp.parameters(), lr=1e-2)
    xv, yv = data(np.float32, n=30, seed=6)
    hist = pp.fit(
        x, y, epochs=3, batch_size=batch, optimizer=opt, loss=nn.CrossEntropyLoss(), validation_data=(xv, yv), verbose=0
    )
    got = pp.state_dict()
    pred = pp.predict(xv, batch_size=7)
    ev = pp.evaluate(xv, yv, nn.CrossEntropyLoss())
    # one process: the same shuffles (the same seed, the same draws), the same micro-batches
    ref = make(np.float32, seed=2)
    ref_opt = optim.Adam(ref.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        order = whygpu._random.get_rng().permutation(len(x))
        total = 0.0
        for b0 in range(0, len(x), batch):
            idx = order[b0 : b0 + batch]
            ref.zero_grad()
            total += accumulate(ref, np.ascontiguousarray(x[idx]), y[idx], m) * len(idx)
            ref_opt.step()
        losses.append(total / len(x))
    want = ref.state_dict()
    # and Sequential.fit on whole batches
    ref_pred = ref.predict(xv)
    ref_ev = ref.evaluate(xv, yv, nn.CrossEntropyLoss())
    seq = make(np.float32, seed=2)
    seq_hist = seq.fit(
        x,
        y,
        epochs=3,
        batch_size=batch,
        optimizer=optim.Adam(seq.parameters(), lr=1e-2),
        loss=nn.CrossEntropyLoss(),
        verbose=0,
    )
    return {
        "bitwise": all(np.array_equal(got[k], want[k]) for k in want),
        "rel_vs_sequential_fit": max(rel(got[k], seq.state_dict()[k]) for k in want),
        "history": hist["loss"],
        "ref_history": losses,
        "history_keys": sorted(hist),
        "seq_history_keys": sorted(seq_hist),
        "accuracy": hist["accuracy"],
        "val_loss_last": hist["val_loss"][-1],
        "evaluate": ev,
        "ref_evaluate": ref_ev,
        "predict_rel": rel(pred, ref_pred),
    }


class LongWarmup(dist.Pipeline):
    """Deliberately broken: 1F1B whose warm-up runs one forward too many (p - r instead of p - r - 1)."""

    def _schedule(self, m):
        s = one_f_one_b(self.size, m)
        ranks = []
        for r in range(self.size):
            w = min(m, self.size - r)
            lane = [Action(r, "F", i) for i in range(w)]
            for j in range(m - w):
                lane += [Action(r, "F", w + j), Action(r, "B", j)]
            lane += [Action(r, "B", i) for i in range(m - w, m)]
            ranks.append(tuple(lane))
        return type(s)(s.name, s.p, m, tuple(ranks), s.timing)


def broken_case() -> dict:
    x, y = data(np.float32)
    pp = LongWarmup(make(np.float32), micro_batches=4, schedule="1f1b", balance=balance(dist.size()))
    try:
        pp.step(x, y, nn.CrossEntropyLoss())
        return {"refused": False}
    except ValueError as e:
        return {"refused": True, "message": str(e)}


class EarlySync(dist.Pipeline):
    """Deliberately broken: the data-parallel sum starts after the next-to-last micro-batch's backward."""

    def _sync_due(self, micro, m):
        return micro == max(m - 2, 0)


def dp_case() -> dict:
    g = dist.grid(2)  # 2 replicas x 2 stages
    N, m = 22, 4
    x, y = data(np.float64, n=N, seed=8)
    s0, s1 = dist.share(N, g.dp, g.replica)
    ref = make(np.float64)
    ref.zero_grad()
    for d in range(g.dp):  # one process: every replica's micro-batches, weighted by rows / N
        a, b = dist.share(N, g.dp, d)
        accumulate(ref, x[a:b], y[a:b], m, total=N)
    want = grads(ref)
    out = {}
    for name, cls in (("correct", dist.Pipeline), ("early_sync", EarlySync)):
        pp = cls(make(np.float64), micro_batches=m, balance=[4, 5], comm=g.split, data_comm=g.data)
        pp.zero_grad()
        pp.step(x[s0:s1], y[s0:s1], nn.CrossEntropyLoss(), global_batch=N)
        got = pp.full_grads()
        out[name] = max(rel(got[k], want[k]) for k in want)
    g.data.Free()
    g.split.Free()
    return out


def gpu_case() -> dict:
    """The cuda back end (on the emulated GPU in CI): a step of each schedule, m = 3, and 2 epochs of fit, against
    one process on numpy running the same micro-batches."""
    P = dist.size()
    x, y = data(np.float32)
    ref = make(np.float32)
    ref.zero_grad()
    ref_loss = accumulate(ref, x, y, 3)
    want = grads(ref)
    out: dict = {}
    for name in ("gpipe", "1f1b"):
        pp = dist.Pipeline(make(np.float32, backend="cuda"), micro_batches=3, schedule=name, balance=balance(P))
        pp.zero_grad()
        loss = pp.step(x, y, nn.CrossEntropyLoss().to("cuda"))
        got = pp.full_grads()
        out[name] = {
            "grads": max(rel(got[k], want[k]) for k in want),
            "loss": abs(loss - ref_loss) / abs(ref_loss),
            "stash": pp.last_step["stash_peak"],
            "on_gpu": pp.stage.backend == "cuda",
        }
    xf, yf = data(np.float32, n=32, seed=5)
    pp = dist.Pipeline(make(np.float32, seed=2, backend="cuda"), micro_batches=2, balance=balance(P))
    pp.fit(xf, yf, epochs=2, batch_size=8, optimizer=optim.Adam(pp.parameters(), lr=1e-2), verbose=0)
    got = pp.state_dict()
    seq = make(np.float32, seed=2)
    opt = optim.Adam(seq.parameters(), lr=1e-2)
    for _ in range(2):
        order = whygpu._random.get_rng().permutation(len(xf))
        for b0 in range(0, len(xf), 8):
            idx = order[b0 : b0 + 8]
            seq.zero_grad()
            accumulate(seq, np.ascontiguousarray(xf[idx]), yf[idx], 2)
            opt.step()
    out["fit"] = max(rel(got[k], v) for k, v in seq.state_dict().items())
    return out


def balance_case() -> dict:
    pp = dist.Pipeline(make(np.float32), micro_batches=2)
    every = dist.comm().allgather(pp.balance)
    x, y = data(np.float32)
    timed = pp.time_actions(x, y, nn.CrossEntropyLoss())  # compute alone: it must leave nothing behind
    zero = all(not np.any(p.grad) for p in pp.parameters())
    ref = make(np.float32)
    ref.zero_grad()
    accumulate(ref, x, y, 2)
    pp.zero_grad()
    pp.step(x, y, nn.CrossEntropyLoss())
    got = pp.full_grads()
    return {
        "bounds": pp.balance,
        "agree": all(b == every[0] for b in every),
        "timed": [len(timed["F"]), len(timed["B"]), min(timed["F"] + timed["B"]) > 0],
        "zero_after_timing": zero,
        "bitwise": all(np.array_equal(got[k], v) for k, v in grads(ref).items()),
    }


def main() -> None:
    mode = sys.argv[1]
    dist.init()
    whygpu.set_num_threads(1)
    result = {
        "exact": lambda: {"cases": exact_cases(sys.argv[2].split(",") if len(sys.argv) > 2 else ["numpy"])},
        "fit": fit_case,
        "broken": broken_case,
        "dp": dp_case,
        "balance": balance_case,
        "gpu": gpu_case,
    }[mode]()
    result["rank"] = dist.rank()
    every = dist.comm().gather(result, root=0)
    if dist.rank() == 0:
        print("RESULT " + json.dumps({"size": dist.size(), "ranks": every}), flush=True)


if __name__ == "__main__":
    main()
