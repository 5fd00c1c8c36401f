"""Sequential: layers applied one after another, with the Keras-style
conveniences on top of the explicit step: fit, evaluate, predict, summary.

The explicit step, which ``fit`` runs for each batch::

    logits = model(x)                   # forward: every Linear is a matmul
    loss = loss_fn(logits, y)           # a float
    model.zero_grad()
    model.backward(loss_fn.backward())  # backward: two matmuls per Linear
    opt.step()                          # update every parameter
"""

from __future__ import annotations

import sys
from typing import Callable, overload

import numpy as np

from . import _backend, _checkpoint, _fit, _profile
from ._fit import _progress  # noqa: F401  (whygpu.distributed's fit draws the same bar)
from ._module import Module, _check_finite
from ._optimizer import Optimizer
from .layers import LeakyReLU, Linear, ReLU
from .losses import CrossEntropyLoss, MSELoss, _Loss

__all__ = ["Sequential"]

_clock = _profile._clock


class Sequential(Module):
    """A stack of layers: ``Sequential(Linear(784, 512), ReLU(), Linear(512, 10))``."""

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module) or isinstance(layer, Sequential):
                raise TypeError(f"Sequential takes layers (Linear, ReLU, ...); argument {i} is {type(layer).__name__}")
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers: list[Module] = list(layers)
        self._dtype = self.layers[0]._dtype
        self._backend = self.layers[0]._backend
        self.to(self._backend, self._dtype)  # one back end and dtype for all layers
        self._forwarded = False
        self._fit_loss: _Loss | None = None
        # Called with a layer's index as soon as its parameters' gradients are final (a Linear's
        # before its input gradient, any layer's after its backward pass; it may be called twice
        # for a layer): whygpu.distributed.DataParallel starts sending them from there.
        self._grads_ready: Callable[[int], None] | None = None
        # Called with a layer's index before its forward pass: DataParallel(prefetch=True) waits
        # there for that layer's parameters, still arriving from the last step's allgather.
        self._params_needed: Callable[[int], None] | None = None

    # -- container -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i) -> Module:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def _modules(self) -> list[Module]:
        return [self] + self.layers

    def _forget(self) -> None:
        self._forwarded = False

    def named_parameters(self):
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"

    # -- forward and backward ------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run every layer (x must already be a checked array: use model(x))."""
        layers, i = self.layers, 0
        prof = _profile._active if layers[0]._prof is not None else None
        # Linear + ReLU as one GEMM launch on the GPU (one compiled pass after the GEMM on the CPU).
        # A profiled GPU step keeps them apart, so that each operation has its own row.
        be = self._backend
        fuse = be.fused_epilogue and (prof is None or be.device is None)
        need = self._params_needed
        while i < len(layers):
            layer, rec = layers[i], layers[i]._prof
            if need is not None:
                need(i)  # (a fused pair's ReLU has no parameters)
            pair = _fusable_pair(layers, i) if fuse else None  # (the Linear, the ReLU) or None
            if prof is None or rec is None:  # not profiling: no timers at all
                x = layer.forward(x) if pair is None else pair[0].forward(x, relu=True)
            else:
                t0, x0 = _clock(), prof.transfer_s
                x = layer.forward(x) if pair is None else pair[0].forward(x, relu=True)
                rec.forward_s += _clock() - t0 - (prof.transfer_s - x0)  # copies have their own row
            if pair is None:
                i += 1
            else:
                # The ReLU keeps its output as its input: its backward masks by x > 0, the same set.
                pair[1]._x = x
                i += 2
        self._forwarded = True
        return x

    def backward(self, grad: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Backpropagate dLoss/dOutput through every layer, last to first,
        accumulating each parameter's gradient.  Returns dLoss/dInput when
        ``input_grad`` is true; by default it is not computed (as in PyTorch,
        the data needs no gradient, and that skips a matmul in the first layer)."""
        grad = self._check_grad(grad)
        return self._backward(grad, bool(input_grad))

    def _backward(self, grad, need_input_grad):
        last = len(self.layers) - 1
        ready = self._grads_ready
        for i in range(last, -1, -1):
            layer = self.layers[i]
            need = need_input_grad or i > 0
            rec = layer._prof  # None unless a profile is active
            if ready is not None and isinstance(layer, Linear):
                # A Linear's parameter gradients are final before its input gradient (dX = dY W) is
                # computed: announced from there, they can travel during that matmul too.
                layer._grads_done = lambda i=i: ready(i)
            try:
                if rec is not None:
                    t0 = _clock()
                    grad = layer._backward(grad, need)
                    rec.backward_s += _clock() - t0
                else:
                    grad = layer._backward(grad, need)
            finally:
                if ready is not None and isinstance(layer, Linear):
                    layer._grads_done = None
            if ready is not None:
                ready(i)
        return grad

    def _saved_output_shape(self):
        return self.layers[-1]._saved_output_shape() if self._forwarded else None

    def _check_input(self, x) -> np.ndarray:
        x = super()._check_input(x)
        self._check_features(x)
        return x

    def _check_features(self, x) -> None:
        n_in = self.input_features()
        if n_in is not None and x.shape[1] != n_in:
            raise ValueError(
                f"the model expects {n_in} input features, got an array with {x.shape[1]} (shape {x.shape})"
            )

    # -- shapes and parameters -----------------------------------------------
    def input_features(self) -> int | None:
        """Features the model takes (from its first Linear layer), or None."""
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return layer.in_features
        return None

    @overload
    def output_features(self, in_features: int) -> int: ...

    @overload
    def output_features(self, in_features: None = None) -> int | None: ...

    def output_features(self, in_features: int | None = None) -> int | None:
        """Features of the output for `in_features` input features (default: those the
        model takes; None when that is not known)."""
        n = self.input_features() if in_features is None else in_features
        for layer in self.layers:
            n = layer.output_features(n) if n is not None else getattr(layer, "out_features", None)
        return n

    def summary(self, print_fn=print) -> None:
        """Print a table of the layers, their output shapes and parameter
        counts, with the total number of parameters and their memory (as
        stored now: 4 bytes each in float32, 8 in float64).  ``print_fn``
        receives the text (default ``print``)."""
        n = self.input_features()
        rows = [("Layer (type)", "Output shape", "Param #")]
        for i, layer in enumerate(self.layers):
            n = layer.output_features(n) if n is not None else None
            shape = f"(batch, {n})" if n is not None else "?"
            rows.append((f"{i}: {layer!r}", shape, f"{layer.count_params():,}"))
        w = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (w[0] + w[1] + w[2] + 6)
        out = [line, f"{rows[0][0]:<{w[0]}}   {rows[0][1]:<{w[1]}}   {rows[0][2]:>{w[2]}}", "=" * len(line)]
        for r in rows[1:]:
            out.append(f"{r[0]:<{w[0]}}   {r[1]:<{w[1]}}   {r[2]:>{w[2]}}")
        total = self.count_params()
        nbytes = total * self._dtype.itemsize
        out += [
            "=" * len(line),
            f"Total params: {total:,}",
            f"Memory: {_fmt_bytes(nbytes)} as {self._dtype} (weights only; training adds gradients, "
            f"optimizer state and activations)",
            f"Back end: {self.backend}",
            line,
        ]
        print_fn("\n".join(out))

    # -- Keras-style training ------------------------------------------------
    def fit(
        self,
        X,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer=None,
        loss=None,
        validation_data=None,
        shuffle: bool = True,
        verbose="auto",
        cuda_graph: bool = True,
        checkpoint=None,
        checkpoint_every: int | None = None,
        resume=None,
    ) -> dict[str, list]:
        """Train with mini-batches; returns the history, a dict of per-epoch
        lists: ``loss`` and, for classifiers, ``accuracy`` (plus ``val_loss``
        and ``val_accuracy`` with ``validation_data=(X_val, y_val)``).

        ``optimizer`` (e.g. ``whygpu.optim.SGD(model.parameters(), lr=0.1)``)
        and ``loss`` (e.g. ``nn.CrossEntropyLoss()``) are required.  Each
        epoch visits every sample once, in a new random order when
        ``shuffle`` (drawn from :func:`whygpu.manual_seed`'s generator); the
        last batch may be smaller.  ``verbose``: ``"auto"`` shows a progress
        bar when writing to a terminal, 0 is silent, 1 always shows the bar,
        2 prints one line per epoch.

        On a GPU back end each full-size batch's step is replayed from a CUDA
        graph (see :class:`whygpu.nn.GraphStep`; ``cuda_graph=False`` runs
        ordinary steps), the batches are copied in without waiting for the
        GPU, and the loss and accuracy are summed on the GPU and read once
        per epoch (so a diverging loss is reported at the end of its epoch).

        ``checkpoint="run.npz"`` saves the model, the optimizer's state, the
        random generator and the progress at the end of every epoch (and every
        ``checkpoint_every`` batches, when given), atomically: a run killed
        at any moment leaves the last whole checkpoint.  ``resume="run.npz"``
        goes on from one, with the same data and arguments (``epochs`` may
        be more): the run then ends with the weights the uninterrupted run
        would have, to the bit.  Pass both (the same path) to keep saving.
        """
        if not isinstance(cuda_graph, (bool, np.bool_)):
            raise TypeError(f"cuda_graph must be True or False, got {cuda_graph!r}")
        path, every, resume = _checkpoint.checked_args(checkpoint, checkpoint_every, resume)
        self._note_cast(X, verbose)
        X, y, val, epochs, batch_size, history = self._fit_setup(
            X, y, epochs, batch_size, optimizer, loss, validation_data, verbose
        )
        pr = _checkpoint.Progress(history=history)
        if resume is not None:
            pr = _checkpoint.restore(resume, self, optimizer, X.shape[0], batch_size, shuffle)
            history.update(pr.history)
            pr.history = history
        ck = _checkpoint.Checkpointer(path, every, X.shape[0], batch_size, shuffle, epochs) if path else None
        classifier = loss.classifier
        # A diverging run overflows; the loss check below reports it (as
        # FloatingPointError) on every back end alike, so NumPy's own
        # overflow warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            args = (X, y, epochs, batch_size, optimizer, loss, val, shuffle, verbose, history, classifier)
            if self._backend.device is not None:
                _fit.device_loop(self, *args, bool(cuda_graph), pr, ck)
            else:
                _fit.host_loop(self, *args, pr, ck)
        return history

    def _note_cast(self, X, verbose) -> None:
        """Say once per model (unless verbose=0) that fit casts float64 data to a float32 model: a copy
        of the data in the model's dtype, and float32 arithmetic -- or model.double() to train in float64."""
        dt = getattr(X, "dtype", None)
        if verbose == 0 or getattr(self, "_cast_noted", False) or dt is None or dt.kind != "f":
            return
        if np.dtype(dt).itemsize <= self._dtype.itemsize:
            return
        self._cast_noted = True
        src, to = np.dtype(dt), self._dtype
        other = "" if self._backend.device is not None else f", or train in {src} with model.to(dtype=np.{src})"
        print(
            f"note: fit casts X from {src} to the model's {to} (a copy; the model computes in {to}): pass "
            f"X.astype(np.{to}) to skip the copy{other}",
            file=sys.stderr,
        )

    def _fit_setup(self, X, y, epochs, batch_size, optimizer, loss, validation_data, verbose):
        """fit's checks and set-up, shared with whygpu.distributed.DataParallel.fit: the
        checked data, validation pair, epochs and batch size, and the empty history;
        the model is put in training mode."""
        if not isinstance(optimizer, Optimizer):
            raise TypeError("fit() needs optimizer=, e.g. whygpu.optim.SGD(model.parameters(), lr=0.1)")
        if not isinstance(loss, _Loss):
            raise TypeError("fit() needs loss=, e.g. whygpu.nn.CrossEntropyLoss()")
        epochs = _positive_int(epochs, "epochs")
        batch_size = _positive_int(batch_size, "batch_size")
        if verbose not in ("auto", 0, 1, 2):
            raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
        X, y = self._check_dataset(X, y, loss, "X", "y")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            val = self._check_dataset(validation_data[0], validation_data[1], loss, "X_val", "y_val")
        self._fit_loss = loss
        history: dict[str, list] = {"loss": []}
        if loss.classifier:
            history["accuracy"] = []
        if val is not None:
            history["val_loss"] = []
            if loss.classifier:
                history["val_accuracy"] = []
        self.train()
        return X, y, val, epochs, batch_size, history

    def _end_epoch(self, history, mean_loss, accuracy, val, loss, batch_size, bar, verbose, label):
        """Record an epoch's figures (and the validation's), and show them."""
        history["loss"].append(mean_loss)
        if accuracy is not None:
            history["accuracy"].append(accuracy)
        if val is not None:
            res = self._evaluate(val[0], val[1], loss, max(batch_size, 256))
            history["val_loss"].append(res["loss"])
            if accuracy is not None:
                history["val_accuracy"].append(res["accuracy"])
        summary = "  ".join(f"{k} {v[-1]:.4f}" for k, v in history.items())
        if bar is not None:
            bar.set_postfix_str(summary, refresh=True)
            bar.close()
        elif verbose == 2:
            print(f"{label}  {summary}", file=sys.stdout)

    def evaluate(self, X, y, loss=None, batch_size: int = 256) -> dict[str, float]:
        """Mean loss and, for classifiers, accuracy on (X, y), in eval mode
        (dropout off).  ``loss`` defaults to the one last used by ``fit``,
        else CrossEntropyLoss for integer labels and MSELoss otherwise."""
        if loss is None:
            loss = self._fit_loss
        if loss is None:
            loss = CrossEntropyLoss() if np.asarray(y).dtype.kind in "iu" else MSELoss()
        if not isinstance(loss, _Loss):
            raise TypeError(f"loss must be a whygpu.nn loss, got {type(loss).__name__}")
        X, y = self._check_dataset(X, y, loss, "X", "y")
        return self._evaluate(X, y, loss, _positive_int(batch_size, "batch_size"))

    def _evaluate(self, X, y, loss, batch_size):
        was_training = self.training
        self.eval()
        try:
            total, correct, classifier = 0.0, 0, True
            be = self._backend
            for s in range(0, X.shape[0], batch_size):
                xb, yb = X[s : s + batch_size], y[s : s + batch_size]
                out = self.forward(be.asarray(xb))
                _backend.note_output(out, be)
                total += loss.forward(out, yb) * xb.shape[0]
                c = loss._n_correct(be.to_host(out), yb)
                if c is None:
                    classifier = False
                else:
                    correct += c
        finally:
            self.train(was_training)
        result = {"loss": total / X.shape[0]}
        if classifier:
            result["accuracy"] = correct / X.shape[0]
        return result

    def predict(self, X, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for X (logits for a classifier ending in
        Linear: take ``argmax(axis=1)`` for classes), in eval mode.  A NumPy
        array on every back end (a GPU back end copies the outputs back)."""
        X = self._check_input(X)
        batch_size = _positive_int(batch_size, "batch_size")
        n_out = self.output_features(X.shape[1])
        out = np.empty((X.shape[0], n_out), dtype=self._dtype)
        was_training = self.training
        self.eval()
        be = self._backend
        try:
            for s in range(0, X.shape[0], batch_size):
                res = self.forward(be.asarray(X[s : s + batch_size]))
                if be.device is None:
                    out[s : s + batch_size] = res
                else:
                    be.to_host(res, out=out[s : s + batch_size])  # straight into the result
        finally:
            self.train(was_training)
        return out

    def _check_dataset(self, X, y, loss, xname, yname):
        X = self._check_input(X)
        if X.shape[0] == 0:
            raise ValueError(f"{xname} is empty (0 samples)")
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"{xname} has {X.shape[0]} samples but {yname} has {'no axis' if y.ndim == 0 else y.shape[0]}"
            )
        n_out = self.output_features(X.shape[1])
        # let the loss check the targets once, on the whole data set, with a dummy output of the right shape
        probe = np.zeros((X.shape[0], n_out if n_out is not None else 1), dtype=self._dtype)
        y = loss._check_target(y, probe)
        if y.dtype.kind == "f":
            _check_finite(y, yname)
        return X, y


def _fusable_pair(layers: list[Module], i: int) -> tuple[Linear, LeakyReLU] | None:
    """(layers[i], layers[i + 1]) when they are a Linear and a ReLU (a LeakyReLU of slope 0)
    of whygpu's own, which the Linear's GEMM epilogue can apply; else None."""
    if i + 1 >= len(layers):
        return None
    lin, act = layers[i], layers[i + 1]
    if type(lin) is Linear and (type(act) is ReLU or type(act) is LeakyReLU) and act.negative_slope == 0.0:
        return lin, act
    return None


def _positive_int(v, name) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def _fmt_bytes(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.2f} kB"
    return f"{n} B"
