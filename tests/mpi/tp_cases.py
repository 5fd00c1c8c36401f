"""The worker tests/test_tensor_parallel.py launches under ``mpiexec -n P``: tensor-parallel MLPs
against one process running the unsplit Sequential, in this process (every rank builds it alike).

    tp_cases.py step BACKENDS      one step of every model (MODELS) x dtype x back end: the output,
                                   dX and every gradient (gathered to full shape) against one process,
                                   bitwise flags, the allreduce counts, replication across ranks, and
                                   a ColumnParallelLinear without its backward allreduce
    tp_cases.py fit BACKEND [MODEL]  3 epochs of Adam with fit, and the gathered weights against one process
    tp_cases.py gpu                the step (13-24-10, dropout) and 2 epochs of fit on the cuda back end
                                   (the emulated GPU in the tests) against one process on numpy
Rank 0 prints ``RESULT {json}`` with what every rank measured.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim
from whygpu.distributed.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel

BATCH = 9
# name: the layer widths and what stands after each Linear but the last ("+" joins several layers)
MODELS = {
    "13-24-10": ((13, 24, 10), ("relu",)),
    "7-11-5": ((7, 11, 5), ("tanh",)),
    "deep": ((13, 24, 16, 12, 10), ("relu", "relu", "sigmoid")),  # pairs: layers 0-2 and 4-6, ReLU 3 replicated
    # pairs: layers 0-3 (ReLU, Dropout) and 5-8 (Dropout, Tanh; 11 wide: uneven); Dropout 4 replicated
    "dropout": ((13, 24, 16, 11, 10), ("relu+drop", "drop", "drop+tanh")),
}
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "drop": lambda: nn.Dropout(0.3)}


def make(name: str, backend: str, dtype, seed: int = 0) -> nn.Sequential:
    widths, acts = MODELS[name]
    whygpu.manual_seed(seed)
    layers: list = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1], dtype=dtype))
        if k < len(acts):
            layers.extend(ACTS[a]() for a in acts[k].split("+"))
    return nn.Sequential(*layers).to(backend, dtype)


def pairs(tp) -> list[tuple[int, int, int]]:
    """(index of each column layer, its in_features, the out_features of the row layer closing it)."""
    out, start = [], None
    for i, m in enumerate(tp.layers):
        if isinstance(m, ColumnParallelLinear):
            start = i
        elif isinstance(m, RowParallelLinear):
            out.append((start, tp.layers[start].in_features, m.out_features))
    return out


class NoDxAllreduce(ColumnParallelLinear):
    """Deliberately broken: f without its backward allreduce (each rank keeps its own dY_r W_r)."""

    def _backward(self, dy, need_input_grad):
        x, W = self._x, self.weight
        self._matmul(dy, x, W._grad, trans_a=True, beta=W._grad_beta())
        if self.bias is not None:
            self._backend.bias_grad(dy, self.bias._grad, self.bias._grad_beta())
        if not need_input_grad:
            return None
        dx = self._buf("dx", x.shape)
        self._matmul(dy, W._data, dx)
        return dx  # the allreduce over the ranks is missing


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def one_step(model, x, g, state=None):
    """(output, dX) of a forward and backward(g, input_grad=True) pass; its Dropout masks drawn from
    ``state`` (whygpu.get_rng_state()) when given."""
    if state is not None:
        whygpu.set_rng_state(state)
    out = host(model(x))
    model.zero_grad()
    dx = host(model.backward(g, input_grad=True))
    return out, dx


def host(a) -> np.ndarray:
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.to_host()


def step_case(name: str, backend: str, dtype, ref_backend: str | None = None) -> dict:
    """One step of ``name`` split over the ranks against one process's; the reference runs on
    ``ref_backend`` (default: the same back end)."""
    rng = np.random.default_rng(7)
    widths = MODELS[name][0]
    x = rng.standard_normal((BATCH, widths[0])).astype(dtype)
    g = rng.standard_normal((BATCH, widths[-1])).astype(dtype)
    ref = make(name, ref_backend or backend, dtype)
    start = whygpu.get_rng_state()  # the Dropout masks of every step below are drawn from here
    ref_out, ref_dx = one_step(ref, x, g, start)
    ref_grads = {k: p.grad.copy() for k, p in ref.named_parameters()}

    tp = tensor_parallel(make(name, backend, dtype))
    res: dict = {"pairs": pairs(tp)}
    res["slices"] = [[m.lo, m.hi] for m in tp.layers if isinstance(m, ColumnParallelLinear)]
    res["dropout_cols"] = [list(m._cols) for m in tp.layers if isinstance(m, nn.Dropout) and m._cols is not None]
    # a step without dL/dX (as fit takes it), then one with it
    tp.reset_traffic()
    whygpu.set_rng_state(start)
    out = tp(x)
    tp.zero_grad()
    tp.backward(g)
    res["traffic"] = vars(tp.traffic()).copy()
    tp.reset_traffic()
    out, dx = one_step(tp, x, g, start)
    res["traffic_input_grad"] = vars(tp.traffic()).copy()
    grads = tp.full_grads()
    weights = tp.state_dict()
    errs = {"output": rel(out, ref_out), "dX": rel(dx, ref_dx)}
    bitwise = {"output": bool(np.array_equal(out, ref_out)), "dX": bool(np.array_equal(dx, ref_dx))}
    for k, v in ref_grads.items():
        errs[f"grad {k}"] = rel(grads[k], v)
        bitwise[f"grad {k}"] = bool(np.array_equal(grads[k], v) and grads[k].dtype == v.dtype)
    sd = ref.state_dict()
    res["weights_equal"] = all(np.array_equal(weights[k], v) and weights[k].shape == v.shape for k, v in sd.items())
    res["names"] = list(weights) == list(sd)
    res["errors"], res["bitwise"] = errs, bitwise
    # the same bits on every rank: the output, and every replicated gradient
    outs = tp.comm.allgather(out)
    res["replicated"] = all(np.array_equal(o, out) for o in outs)
    # load_state_dict of the full state keeps this rank's slices
    apart = make(name, backend, dtype, seed=3)
    whygpu._random.get_rng().random(tp.comm.Get_rank())  # the ranks' generators apart: tensor_parallel gives rank 0's
    other = tensor_parallel(apart)
    states = tp.comm.allgather(whygpu.get_rng_state())
    res["same_random_state"] = all(st == states[0] for st in states)
    other.load_state_dict(sd)
    res["loaded"] = all(np.array_equal(host(a), b) for a, b in zip(other.state_dict().values(), sd.values()))
    split_drops = [m for m in tp.layers if isinstance(m, nn.Dropout) and m._cols is not None]
    if split_drops:  # broken: a Dropout in a pair without its column window (its own narrower mask)
        for m in split_drops:
            m._cols = None
        out, dx = one_step(tp, x, g, start)
        grads = tp.full_grads()
        res["broken_dropout"] = max([rel(out, ref_out)] + [rel(grads[k], v) for k, v in ref_grads.items()])
        for m, c in zip(split_drops, res["dropout_cols"]):
            m._cols = tuple(c)
    # broken: every column layer without the backward allreduce
    for m in tp.layers:
        if isinstance(m, ColumnParallelLinear):
            m.__class__ = NoDxAllreduce
    out, dx = one_step(tp, x, g, start)
    grads = tp.full_grads()
    res["broken"] = max([rel(dx, ref_dx)] + [rel(grads[k], v) for k, v in ref_grads.items()])
    return res


def fit_case(backend: str, name: str = "7-11-5", ref_backend: str | None = None, epochs: int = 3) -> dict:
    """``epochs`` of Adam with Sequential's fit on the split model against one process's (on
    ``ref_backend``, default the same back end)."""
    rng = np.random.default_rng(3)
    widths = MODELS[name][0]
    X = rng.standard_normal((70, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], 70)
    kw = {"epochs": epochs, "batch_size": 16, "loss": nn.CrossEntropyLoss(), "verbose": 0}
    ref = make(name, ref_backend or backend, np.float32)
    whygpu.manual_seed(11)
    h_ref = ref.fit(X, y, optimizer=optim.Adam(ref.parameters(), lr=1e-2), **kw)
    tp = tensor_parallel(make(name, backend, np.float32))
    whygpu.manual_seed(11)
    h_tp = tp.fit(X, y, optimizer=optim.Adam(tp.parameters(), lr=1e-2), **kw)
    got = tp.state_dict()
    errs = {k: rel(got[k], v) for k, v in ref.state_dict().items()}
    res = {"errors": errs, "loss": h_tp["loss"], "ref_loss": h_ref["loss"]}
    res["bitwise"] = all(np.array_equal(got[k], v) for k, v in ref.state_dict().items())
    return res


def main(argv: list[str]) -> None:
    rank, size = dist.rank(), dist.size()
    out: dict = {}
    if argv[0] == "step":
        for backend in argv[1].split(","):
            for dtype in (np.float32, np.float64):
                for name in MODELS:
                    out[f"{name} {backend} {np.dtype(dtype).name}"] = step_case(name, backend, dtype)
    elif argv[0] == "gpu":  # the cuda back end (float32 only) against one process on numpy
        for name in ("13-24-10", "dropout"):
            out[f"{name} cuda float32"] = step_case(name, "cuda", np.float32, ref_backend="numpy")
        out["fit"] = fit_case("cuda", "dropout", ref_backend="numpy", epochs=2)
    else:
        out = fit_case(argv[1], argv[2] if len(argv) > 2 else "7-11-5")
    every = dist.comm().gather(out, root=0)
    dist.barrier()
    if rank == 0:
        print("RESULT " + json.dumps({"size": size, "ranks": every}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
