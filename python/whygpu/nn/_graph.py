"""GraphStep: a whole training step as one CUDA graph launch.

On the GPU a training step of a small network is ~20 kernels of a few
microseconds each.  Launched one by one from Python, the step costs the
Python that issues them plus a few microseconds of launch overhead each, and
the GPU idles in between.  A CUDA graph records the step's launches once
(capture) and replays them with one call: no Python, one launch.

    step = nn.GraphStep(model, loss_fn, opt)
    for xb, yb in batches:
        loss = step(xb, yb)        # forward, loss, backward, update: queued
    print(float(loss))             # reading a loss waits for the GPU

What a replay cannot do is anything the host decides per step: the graph
replays the launches with the arguments they were captured with.  So:

* the batch is copied into fixed input buffers before each replay (one
  graph per batch shape; a new shape is captured on its second use);
* the optimizer reads its learning rate and Adam's bias corrections from
  GPU memory, rewritten before each replay (whygpu.optim);
* the loss stays on the GPU (a DeviceLoss, copied per step so earlier losses
  keep their values);
* a step with host work inside -- Dropout draws its mask on the host, the
  profiler times each operation on its own -- runs as an ordinary step, and
  ``step.reason`` says why.

On a CPU back end a GraphStep is just the step, with a float loss.
``fit`` uses one on a GPU back end (``fit(..., cuda_graph=False)`` turns it
off).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from . import _backend, _profile
from ._backend import Backend
from ._optimizer import Optimizer
from .layers import Dropout, LeakyReLU, Linear, Sigmoid, Softmax, Tanh
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, DeviceLoss, MSELoss, _Loss

__all__ = ["GraphStep"]

_CAPTURABLE_LAYERS = (Linear, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout)  # ReLU is a LeakyReLU
_CAPTURABLE_LOSSES = (CrossEntropyLoss, MSELoss, BCEWithLogitsLoss)
_MAX_SHAPES = 4  # graphs kept per GraphStep (one per batch shape)


class _Entry:
    """One batch shape: fixed input buffers, and the graph once captured."""

    def __init__(self, be, x_shape, y_shape, y_dtype):
        mod = be._mod
        self.x_up = mod.Uploader(be.empty(x_shape, np.float32))
        self.y_up = mod.Uploader(be.array_type(y_shape, y_dtype))
        self.x, self.y = self.x_up.target, self.y_up.target
        self.warm = False  # one ordinary step has run on these buffers (it makes every buffer the step uses)
        self.graph = None
        self.loss = None  # the DeviceLoss the captured step writes
        self.refs = None  # what the graph's launches use, and must stay what the model uses


class GraphStep:
    """A training step -- forward, loss, backward, optimizer update -- that
    runs as one CUDA graph on a GPU back end.  See the module docstring.

    ``model``: a whygpu.nn model; ``loss``: a whygpu.nn loss; ``optimizer``:
    whygpu.optim.SGD or Adam over the model's parameters.  ``graph=False``
    runs ordinary steps (for comparison).  Calling it with a batch
    ``(x, y)`` (NumPy arrays, or DeviceArrays already on the GPU) returns the
    batch's mean loss: a float on a CPU back end, a
    :class:`whygpu.nn.DeviceLoss` on a GPU (``float(loss)`` waits for it).
    """

    def __init__(self, model, loss, optimizer, graph: bool = True, _acc=None):
        if not hasattr(model, "forward") or not hasattr(model, "_backend"):
            raise TypeError(f"model must be a whygpu.nn model, got {type(model).__name__}")
        if not isinstance(loss, _Loss):
            raise TypeError(f"loss must be a whygpu.nn loss, got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a whygpu.optim optimizer, got {type(optimizer).__name__}")
        if not isinstance(graph, (bool, np.bool_)):
            raise TypeError(f"graph must be True or False, got {graph!r}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.use_graph = bool(graph)
        self._acc = _acc  # fit's per-epoch sums on the GPU: [loss, bad labels, right]
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._backend = None
        self.graphed = False  # whether the latest call replayed a graph
        self.reason: str | None = None  # why it did not (None when it did)
        self.captures = 0  # graphs captured so far
        # the optimizer's hyperparameters, rewritten in GPU memory before each replay: (back end, uploader, array)
        self._hyper_up: tuple[Backend, Any, Any] | None = None

    def __repr__(self):
        return (
            f"GraphStep({type(self.model).__name__}, {self.loss!r}, {self.optimizer!r}, "
            f"graphed={self.graphed}, captures={self.captures})"
        )

    # -- what can be captured ------------------------------------------------------------
    def _why_not(self, be) -> str | None:
        """Why this step cannot be a graph now, or None when it can."""
        if be.device is None:
            return f"the {be.name!r} back end runs on the CPU: there is no GPU work to capture"
        if not self.use_graph:
            return "graphs are switched off (graph=False)"
        if _profile._active is not None:
            return "profiling times each operation on its own, which a graph replay cannot show"
        layers = getattr(self.model, "layers", [self.model])
        for layer in layers:
            if not isinstance(layer, _CAPTURABLE_LAYERS):
                return f"{type(layer).__name__} is not one of whygpu's layers, which are known to be capturable"
            if isinstance(layer, Dropout) and layer.training and layer.p > 0.0:
                return "Dropout draws a new mask on the host at every step"
        if not isinstance(self.loss, _CAPTURABLE_LOSSES):
            return f"{type(self.loss).__name__} is not one of whygpu's losses"
        if self.loss._backend is not None and self.loss._backend is not be:
            return "the loss runs on another back end than the model"
        if self.optimizer._fused_backend() is not be:
            return (
                f"{type(self.optimizer).__name__} has no one-launch GPU update for these parameters "
                f"(whygpu.optim.SGD and Adam have, when all parameters are on the model's GPU back end)"
            )
        return None

    # -- one step ------------------------------------------------------------------------
    def __call__(self, x, y):
        lz = self._step(x, y)
        # A replayed graph writes its loss into the same memory every time: hand out a copy.
        return _copy_loss(lz) if self.graphed else lz

    def _step(self, x, y):
        """One step; the loss as the step left it (fit reads its sums instead, and needs no copy)."""
        be = self.model._backend
        if be is not self._backend:  # moved (model.to): buffers and graphs belong to the old back end
            self._entries.clear()
            self._backend = be
        why = self._why_not(be)
        self.graphed = False
        self.reason = why
        if be.device is None:
            x = self.model._check_input(x)
            return float(self._body(be, x, y))
        if why is not None:
            return self._body(
                be,
                be.asarray(self._host_x(x)) if not isinstance(x, be.array_type) else x,
                y if isinstance(y, be.array_type) else be.asarray(self._host_y(x, y)),
            )
        e = self._entry(be, x, y)
        if not e.warm:  # the first step on a shape runs as it is: it allocates what the step needs
            lz = self._body(be, e.x, e.y)
            e.warm = True
            return lz
        if e.graph is not None and not self._still_valid(e):
            e.graph = None  # a parameter or a state array was replaced (model.to, a new optimizer state)
        opt = self.optimizer
        opt._begin_step()
        hyper = self._hyper_on_device(be)
        graph = e.graph if e.graph is not None else self._capture(be, e, hyper)
        graph.replay()
        self.graphed = True
        return e.loss

    def _host_x(self, x):
        x = self.model._check_input(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        return x

    def _host_y(self, x, y):
        shape = (np.shape(x)[0], self.model.output_features(np.shape(x)[1]) or 1)
        return self.loss._check_target(y, np.broadcast_to(np.float32(0), shape))

    def _entry(self, be, x, y) -> _Entry:
        """The entry of this batch's shape, with the batch queued into its buffers."""
        if isinstance(x, be.array_type):
            be.check_matrix(x, "x")
            if hasattr(self.model, "_check_features"):
                self.model._check_features(x)
            xs = x
        else:
            xs = self._host_x(x)
        if isinstance(y, be.array_type):
            ys = y
        else:
            ys = self._host_y(xs, y)
        key = (tuple(xs.shape), tuple(ys.shape), str(ys.dtype))
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry(be, xs.shape, ys.shape, ys.dtype)
            if len(self._entries) > _MAX_SHAPES:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        for up, arr in ((e.x_up, xs), (e.y_up, ys)):
            if isinstance(arr, be.array_type):
                be._mod.copy_into(up.target, arr)
            else:
                up.load(arr)  # queued behind the previous step: no wait for the GPU
        return e

    def _body(self, be, x, y, hyper=None):
        """forward, loss, backward, update (what the graph records)."""
        model, loss, opt = self.model, self.loss, self.optimizer
        out = model.forward(x)
        _backend.note_output(out, be)
        lz = loss._forward_any(out, y)
        if self._acc is not None:
            labels = y if isinstance(loss, CrossEntropyLoss) else None
            targets = loss._t if isinstance(loss, BCEWithLogitsLoss) else None
            be.fit_metrics(lz, out, labels, targets, self._acc)
        model.zero_grad()
        model.backward(loss.backward())
        if hyper is None:
            opt.step()
        else:  # captured: the step count was advanced, and the hyperparameters written, by __call__
            opt._fused_step(be, hyper)
        return lz

    def _hyper_on_device(self, be):
        """The optimizer's hyperparameters for this step, queued into GPU memory."""
        vals = np.asarray(self.optimizer._hyper(), dtype=np.float32)
        if self._hyper_up is None or self._hyper_up[0] is not be:
            up = be._mod.Uploader(be.empty(vals.shape, np.float32))
            self._hyper_up = (be, up, up.target)
        _, up, target = self._hyper_up
        up.load(vals)
        return target

    def _capture(self, be, e, hyper):
        """Record the step into a CUDA graph: e.graph, which is returned."""
        mod = be._mod
        mod.capture_begin()
        try:
            lz = self._body(be, e.x, e.y, hyper)
        finally:
            graph = mod.capture_end()  # raises if the captured work broke the capture
        e.graph, e.loss = graph, lz
        e.refs = self._refs()
        self.captures += 1
        return graph

    def _refs(self):
        """The arrays the captured launches use that the model or optimizer
        could swap for others (by model.to, a new shape, a new state): held
        here, they stay allocated while the graph lives, and a swap is seen."""
        opt = self.optimizer
        params = [(p, p._data, p._grad) for p in opt.params]
        states = [list(store) for store in opt._states()]
        bufs = [list(getattr(m, "_bufs", {}).values()) for m in getattr(self.model, "layers", [self.model])]
        bufs.append(list(self.loss._bufs.values()))
        return params, states, bufs

    def _still_valid(self, e) -> bool:
        params, states, _ = e.refs
        if any(p._data is not d or p._grad is not g for p, d, g in params):
            return False
        return all(all(a is b for a, b in zip(now, then)) for now, then in zip(self.optimizer._states(), states))


def _copy_loss(lz):
    """The captured loss, copied: the next replay overwrites the original."""
    return DeviceLoss(lz._be, lz._out.copy(), lz._scale, lz._classes)
