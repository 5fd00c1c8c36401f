"""What one rank's compute costs, piece by piece, for the step simulator (:mod:`whygpu.predict.stepsim`):
each layer's forward pass, its backward pass's parameter gradient (dW, with db) and input gradient (dX),
the loss, and the optimizer's update.  No MPI here: :mod:`whygpu.bench.stepterms_worker` calls these on
P ranks, alone and side by side.

Each piece is the code the training step runs, with the shapes it runs with, on this rank's share of
the batch:

* a Linear's forward is ``Linear.forward`` itself (with the next ReLU fused in where ``Sequential``
  fuses it: a ReLU so fused then costs nothing of its own);
* a Linear's dW is the back end's ``matmul_into(dY, X, dW, trans_a=True)`` and ``bias_grad(dY, db)``,
  its dX ``matmul_into(dY, W, dX)`` -- the two halves of ``Linear._backward``, timed apart;
* any other layer's forward and backward are its ``forward`` and ``_backward`` (all dX);
* the loss is the loss's forward and its gradient (``loss_fn(logits, y)``, ``loss_fn.backward()``);
* the update is the optimizer's ``step()`` on one flat parameter of each of a few sizes (the per-call
  and per-byte cost come from those), and on the model's own parameters (a cross-check).  Each update
  call is timed *cold*: a buffer twice the last-level cache is written just before it, untimed, as the
  step's backward pass and collectives have pushed the parameters and gradients out of the caches
  before its update runs.  Timed warm, the same call on a few MiB runs from the caches several times
  faster per byte than the step's update does (measured: 0.05 against 0.16 ns per byte on a Zen 3), and a
  fit through warm points predicted the step's update 55% short.

Every piece is run twice untimed, then ``repeats`` times, each call on the clock by itself: the median
is the figure, the min and max its spread.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = ["Piece", "layer_pieces", "update_pieces", "time_piece", "cache_flusher", "stats", "UPDATE_ELEMENTS"]

_clock = time.perf_counter
WARMUP = 2
# The flat parameters the update is timed on: 4 KiB to 16 MiB of float32
UPDATE_ELEMENTS = (1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22)


class Piece(NamedTuple):
    """One timed piece: which layer (-1: the loss or an update), which part ("forward", "backward_dw",
    "backward_dx", "loss", "update", "model_update"), the call, and what it is (``note``)."""

    layer: int
    part: str
    call: Callable[[], Any] | None  # None: a piece that costs nothing of its own (a fused ReLU)
    note: str
    nbytes: int = 0  # an update's parameter bytes
    before: Callable[[], Any] | None = None  # run untimed before each call (the update: a cache flush)


def stats(times: Sequence[float]) -> dict[str, Any]:
    """``{"median_s", "min_s", "max_s", "repeats"}`` of a list of seconds."""
    a = np.asarray(times, dtype=float)
    if a.size == 0:
        return {"median_s": 0.0, "min_s": 0.0, "max_s": 0.0, "repeats": 0}
    return {"median_s": float(np.median(a)), "min_s": float(a.min()), "max_s": float(a.max()), "repeats": int(a.size)}


def time_piece(call: Callable[[], Any] | None, repeats: int, before: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls (after :data:`WARMUP` untimed ones); [] for no call.
    ``before``: run untimed before every call (warm-up ones too)."""
    if call is None:
        return []
    for _ in range(WARMUP):
        if before is not None:
            before()
        call()
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = _clock()
        call()
        out.append(_clock() - t0)
    return out


def cache_flusher(nbytes: int | None = None) -> Callable[[], None]:
    """A function that writes a buffer of ``nbytes`` (default: twice the last-level cache the OS reports,
    at least 64 MiB) so that what was in the caches before it is gone."""
    if nbytes is None:
        from .._cpu import _caches

        c = _caches()
        nbytes = max(64 << 20, 2 * max(c.values(), default=0))
    buf = np.zeros(int(nbytes) // 8, dtype=np.float64)

    def flush() -> None:
        np.add(buf, 1.0, out=buf)  # read and write every line

    return flush


def _fusable(layers: list, i: int) -> bool:
    """Whether Sequential's forward fuses layers[i + 1] (a ReLU) into layers[i] (a Linear) here."""
    from ..nn._sequential import _fusable_pair

    be = layers[i]._backend
    return bool(be.fused_epilogue and be.device is None and _fusable_pair(layers, i) is not None)


def layer_pieces(model, x: np.ndarray, labels: np.ndarray, loss_fn) -> tuple[list[Piece], list[dict]]:
    """The pieces of one training step of ``model`` (a ``whygpu.nn.Sequential`` on a CPU back end) on
    the batch ``x``, ``labels``, and a description of each layer (``{"name", "type", "param_bytes",
    "fused_into_previous"}``).  Runs one forward and backward pass to get every layer's input and
    output gradient, which the pieces then reuse."""
    from ..nn import Linear

    layers = list(model.layers)
    be = model._backend
    if be.device is not None:
        raise ValueError("the step's pieces are timed on a CPU back end (a GPU's kernels are asynchronous)")
    x = np.ascontiguousarray(x, dtype=model.dtype)
    pieces: list[Piece] = []
    info: list[dict] = []
    inputs: list[np.ndarray] = []
    fused_next = False
    h = x
    for i, layer in enumerate(layers):  # the forward pass, as Sequential.forward runs it
        inputs.append(h)
        name = f"{type(layer).__name__.lower()}{i}"
        pbytes = int(sum(p._data.nbytes for p in layer.parameters()))
        info.append({"name": name, "type": type(layer).__name__, "param_bytes": pbytes, "fused_into_previous": False})
        if fused_next:  # this ReLU ran in the Linear's epilogue: Sequential keeps its output as its input
            info[-1]["fused_into_previous"] = True
            layer._x = h
            pieces.append(Piece(i, "forward", None, "fused into the previous Linear's bias_relu pass"))
            fused_next = False
            continue
        if isinstance(layer, Linear):
            fused_next = i + 1 < len(layers) and _fusable(layers, i)
            call: Callable[[], Any] = functools.partial(layer.forward, h, relu=fused_next)
            note = "Linear.forward: GEMM x W^T, then bias (+ the next ReLU)"
        else:
            call, note = functools.partial(layer.forward, h), f"{type(layer).__name__}.forward"
        h = call()
        pieces.append(Piece(i, "forward", call, note))
    loss_fn(h, labels)
    grad = loss_fn.backward()
    pieces.append(Piece(-1, "loss", lambda: (loss_fn(h, labels), loss_fn.backward()), "the loss and its gradient"))
    for i in range(len(layers) - 1, -1, -1):  # the backward pass, last layer first
        layer, dy = layers[i], np.ascontiguousarray(grad)
        if isinstance(layer, Linear):
            W, b, xi = layer.weight, layer.bias, inputs[i]

            def dw(dy=dy, xi=xi, W=W, b=b) -> None:
                be.matmul_into(dy, xi, W._grad, True, False, 1.0, 0.0)  # dW = dY^T . X
                if b is not None:
                    be.bias_grad(dy, b._grad, 0.0)  # db = column sums of dY

            pieces.append(Piece(i, "backward_dw", dw, "GEMM dY^T X into dW, then bias_grad"))
            if i > 0:  # DataParallel's first layer computes no dX
                dx = np.empty(xi.shape, dtype=xi.dtype)

                def dxc(dy=dy, W=W, dx=dx) -> np.ndarray:
                    be.matmul_into(dy, W._data, dx, False, False, 1.0, 0.0)  # dX = dY . W
                    return dx

                pieces.append(Piece(i, "backward_dx", dxc, "GEMM dY W into dX"))
                grad = dxc()
        else:
            call = functools.partial(layer._backward, dy, True)
            pieces.append(Piece(i, "backward_dx", call, f"{type(layer).__name__}._backward"))
            grad = call()
    return pieces, info


def _make_optimizer(name: str, params: list):
    """The optimizer the scale-out worker uses for ``name`` (sgd, momentum, adam), on ``params``."""
    from .. import optim

    if name == "adam":
        return optim.Adam(params, lr=1e-3)
    if name == "momentum":
        return optim.SGD(params, lr=0.01, momentum=0.9)
    if name == "sgd":
        return optim.SGD(params, lr=0.01)
    raise ValueError(f"optimizer must be 'sgd', 'momentum' or 'adam', got {name!r}")


def update_pieces(model, optimizer: str, elements: Sequence[int] = UPDATE_ELEMENTS) -> list[Piece]:
    """The optimizer's ``step()`` on one flat float32 parameter of each size in ``elements`` (on the
    model's back end, its gradient set), and on the model's own parameters (``model_update``)."""
    from ..nn._module import Parameter

    flush = cache_flusher()
    out = []
    for n in elements:
        p = Parameter(np.zeros(int(n), dtype=model.dtype), "flat")
        p._place(model._backend, None)
        p.grad = np.full(int(n), 1e-3, dtype=model.dtype)
        opt = _make_optimizer(optimizer, [p])
        note = f"{optimizer}.step() on one flat parameter, cold"
        out.append(Piece(-1, "update", opt.step, note, int(p._data.nbytes), flush))
    params = list(model.parameters())
    for p in params:
        p.grad = np.full(p.shape, 1e-3, dtype=model.dtype)
    opt = _make_optimizer(optimizer, params)
    nbytes = int(sum(p._data.nbytes for p in params))
    out.append(
        Piece(-1, "model_update", opt.step, f"{optimizer}.step() on the model's parameters, cold", nbytes, flush)
    )
    return out
