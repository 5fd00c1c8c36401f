"""Loss functions: a number that says how wrong the model is, and its
gradient with respect to the model's output, where backpropagation starts.

``loss = loss_fn(output, target)`` returns a Python float (the mean over the
batch); ``loss_fn.backward()`` then returns dLoss/dOutput for
``model.backward``.  A loss runs on the back end of the model that produced
``output`` (or on the one given with ``.to(name)``).

On a GPU back end the output is a ``whygpu.cuda.DeviceArray``; the target
may be a NumPy array (checked on the host, then uploaded) or a DeviceArray
already on the GPU (int64 labels or float32 targets; labels outside the
classes are still reported).  Only the loss itself, one float, comes back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend, _profile
from ._backend import Backend, get_backend
from ._module import _FLOATS, _check_finite

__all__ = ["CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss", "DeviceLoss"]

_clock = _profile._clock


class _Loss:
    classifier = False  # does "accuracy" mean something for this loss?

    def __init__(self):
        self._backend: Backend | None = None  # None: follow the model that made the output
        self._be: Backend | None = None  # the back end of the latest call
        self._grad_shape: tuple | None = None  # the shape of the latest output (None: no call yet)
        self._bufs: dict[str, Any] = {}  # NumPy arrays, or DeviceArrays on a GPU back end

    def to(self, backend) -> _Loss:
        """Run on back end ``backend`` always (``None``: follow the model)."""
        self._backend = None if backend is None else get_backend(backend)
        return self

    @property
    def backend(self) -> str:
        return "auto" if self._backend is None else self._backend.name

    def __call__(self, output, target) -> float:
        prof = _profile._active
        if prof is None:
            return self.forward(output, target)
        t0, x0 = _clock(), prof.transfer_s
        loss = self.forward(output, target)
        prof.loss.forward_s += _clock() - t0 - (prof.transfer_s - x0)  # copies have their own row
        return loss

    def forward(self, output, target) -> float:
        return float(self._forward_any(output, target))

    def _forward_any(self, output, target):
        """forward(), but a GPU back end's loss stays on the GPU (a DeviceLoss) until read."""
        be = self._backend or _backend.producer_of(output) or _backend.NUMPY
        if be is not self._be:
            self._bufs = {}  # buffers in the latest back end's memory
        if be.device is not None:
            return self._device_forward(be, output, target)
        output = self._check_output(output)
        target = self._check_target(target, output)
        return self._forward(be, output, target)

    def _device_forward(self, be, output, target):
        """forward() on a GPU back end: DeviceArrays are checked and used in
        place, host arrays are checked as on the CPU and uploaded."""
        name = type(self).__name__
        if isinstance(output, be.array_type):
            be.check_matrix(output, f"{name}: the model output")
            if output.shape[0] == 0:
                raise ValueError(f"{name}: empty batch (0 rows): the mean of nothing is undefined")
        else:
            output = be.asarray(np.ascontiguousarray(self._check_output(output), dtype=np.float32))
        if isinstance(target, be.array_type):
            target = self._check_device_target(target, output)
        else:
            target = be.asarray(self._check_target(target, output))
        return self._forward(be, output, target)

    # -- what each loss implements ---------------------------------------------------------
    def _check_target(self, target, output) -> np.ndarray:  # pragma: no cover - abstract
        """The target as the loss needs it (checked against `output`), or TypeError/ValueError."""
        raise NotImplementedError

    def _forward(self, be: Backend, output, target) -> float | DeviceLoss:  # pragma: no cover - abstract
        """The mean loss, computed on back end `be` (a DeviceLoss on a GPU back end); sets
        ``_be``, ``_grad_shape`` and whatever ``_backward`` needs."""
        raise NotImplementedError

    def _backward(self, be: Backend, shape: tuple) -> np.ndarray:  # pragma: no cover - abstract
        """dLoss/dOutput of the latest call, made on `be`, whose output had `shape`."""
        raise NotImplementedError

    def _check_device_target(self, t, output):
        """A float32 DeviceArray target shaped like output (1-D matches a (B, 1) output)."""
        name = type(self).__name__
        if t.dtype != np.float32:
            raise TypeError(f"{name}: a target on the GPU must be float32, got {t.dtype}")
        if t.ndim == 1 and output.shape[1] == 1 and t.shape[0] == output.shape[0]:
            t = t.reshape(-1, 1)
        if t.shape != output.shape:
            raise ValueError(f"{name}: target shape {t.shape} does not match output shape {output.shape}")
        return t

    def backward(self) -> np.ndarray:
        """dLoss/dOutput of the latest forward call (an internal buffer,
        overwritten by the next call)."""
        be, shape = self._be, self._grad_shape
        if be is None or shape is None:  # (_forward sets both)
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before the loss was computed: "
                f"call loss_fn(output, target) first"
            )
        prof = _profile._active
        if prof is None:
            return self._backward(be, shape)
        t0 = _clock()
        g = self._backward(be, shape)
        prof.loss.backward_s += _clock() - t0
        return g

    def _buf(self, be: Backend, key, shape, dtype):
        """A reusable buffer in `be`'s memory (the back end of the call under way)."""
        b = self._bufs.get(key)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self._bufs[key] = be.empty(shape, dtype)
        return b

    def _check_output(self, output) -> np.ndarray:
        if not isinstance(output, np.ndarray):
            output = np.asarray(output)
        if output.dtype not in _FLOATS:
            if output.dtype.kind not in "iub":
                raise TypeError(f"{type(self).__name__}: the model output must be a float array, got {output.dtype}")
            output = output.astype(np.float32)
        if output.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} expects the model output as a 2-D array (batch, outputs), "
                f"got shape {output.shape}"
            )
        if output.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: empty batch (0 rows): the mean of nothing is undefined")
        return np.ascontiguousarray(output)

    def _float_target(self, target, output) -> np.ndarray:
        """A float target shaped like output (a 1-D target matches a (B, 1) output)."""
        t = target if isinstance(target, np.ndarray) else np.asarray(target)
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{type(self).__name__}: targets must be numeric, got dtype {t.dtype}")
        if t.ndim == 1 and output.shape[1] == 1 and t.shape[0] == output.shape[0]:
            t = t.reshape(-1, 1)
        if t.shape != output.shape:
            raise ValueError(
                f"{type(self).__name__}: target shape {t.shape} does not match output shape {output.shape}"
            )
        t = np.ascontiguousarray(t, dtype=output.dtype)
        _check_finite(t, "target")
        return t

    def _n_correct(self, output: np.ndarray, target) -> int | None:
        """How many samples of a batch are classified right (None: not a classifier)."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(_Loss):
    """Softmax + negative log-likelihood, fused: for a classifier whose last
    layer outputs raw scores (logits), with integer class labels.

    ``loss = mean_i( -log softmax(logits_i)[label_i] )``; its gradient is
    ``(softmax(logits) - onehot(labels)) / batch`` -- no division by a tiny
    probability, which is why the two are fused.
    """

    classifier = True

    def _check_target(self, target, output) -> np.ndarray:
        t = target if isinstance(target, np.ndarray) else np.asarray(target)
        if t.dtype.kind not in "iu":
            hint = " -- convert with y.astype(np.int64)" if t.dtype.kind == "f" else ""
            raise TypeError(f"CrossEntropyLoss expects integer class labels, got dtype {t.dtype}{hint}")
        if t.ndim != 1 or t.shape[0] != output.shape[0]:
            raise ValueError(
                f"CrossEntropyLoss expects one label per row: a 1-D array of {output.shape[0]} labels, "
                f"got shape {t.shape}"
            )
        n_classes = output.shape[1]
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"labels must be class indices in [0, {n_classes}) for a model with {n_classes} "
                f"outputs; got labels from {lo} to {hi}"
            )
        return np.ascontiguousarray(t, dtype=np.int64)

    def _check_device_target(self, t, output):
        # The range of the labels is checked by the GPU loss itself (it counts bad labels).
        if t.dtype != np.int64:
            raise TypeError(f"CrossEntropyLoss: labels on the GPU must be int64, got {t.dtype}")
        if t.ndim != 1 or t.shape[0] != output.shape[0]:
            raise ValueError(
                f"CrossEntropyLoss expects one label per row: a 1-D array of {output.shape[0]} labels, "
                f"got shape {t.shape}"
            )
        return t

    def _forward(self, be, logits, labels) -> float | DeviceLoss:
        self._be = be
        self._probs = self._buf(be, "probs", logits.shape, logits.dtype)
        total = be.softmax_xent_fwd(logits, labels, self._probs)  # also keeps softmax(logits)
        self._labels = labels
        self._grad_shape = logits.shape
        return total / logits.shape[0]

    def _backward(self, be, shape) -> np.ndarray:
        dx = self._buf(be, "dx", shape, self._probs.dtype)
        be.softmax_xent_bwd(self._probs, self._labels, dx, 1.0 / shape[0])  # (p - onehot) / B
        return dx

    def _n_correct(self, output, target):
        return int(np.count_nonzero(np.argmax(output, axis=1) == target))


class MSELoss(_Loss):
    """Mean squared error, ``mean((output - target)**2)`` over all elements;
    gradient ``2 (output - target) / N``.  For regression."""

    def _check_target(self, target, output):
        return self._float_target(target, output)

    def _forward(self, be, y, t) -> float | DeviceLoss:
        self._be, self._y, self._t = be, y, t
        self._grad_shape = y.shape
        return be.mse_fwd(y, t) / y.size

    def _backward(self, be, shape):
        dx = self._buf(be, "dx", shape, self._y.dtype)
        be.mse_bwd(self._y, self._t, dx, 1.0 / self._y.size)
        return dx


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy, fused and numerically stable: for
    yes/no outputs given as logits, with targets in [0, 1].

    ``loss = mean( max(x, 0) - x t + log(1 + exp(-|x|)) )``; gradient
    ``(sigmoid(x) - t) / N``.
    """

    classifier = True

    def _check_target(self, target, output):
        t = self._float_target(target, output)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError("BCEWithLogitsLoss targets must lie in [0, 1]")
        return t

    def _forward(self, be, x, t) -> float | DeviceLoss:
        self._be, self._x, self._t = be, x, t
        self._grad_shape = x.shape
        return be.bce_logits_fwd(x, t) / x.size

    def _backward(self, be, shape):
        dx = self._buf(be, "dx", shape, self._x.dtype)
        be.bce_logits_bwd(self._x, self._t, dx, 1.0 / self._x.size)
        return dx

    def _n_correct(self, output, target):
        t = np.asarray(target).reshape(output.shape)
        return int(np.count_nonzero(np.all((output > 0) == (t >= 0.5), axis=1)))


class DeviceLoss:
    """A loss value still in GPU memory.

    The GPU back ends return one from the loss functions' internal path
    (``fit`` and :class:`whygpu.nn.GraphStep` use it), so that computing a
    loss does not stop the host until the GPU has caught up.  ``float(loss)``
    or ``loss.item()`` copies it back (waiting for the GPU) and checks the
    labels: the GPU counts labels outside the classes instead of failing.
    The value read is cached.
    """

    __slots__ = ("_be", "_out", "_scale", "_classes", "_value")

    def __init__(self, backend, out, scale: float = 1.0, classes=None):
        self._be = backend
        self._out = out  # float64 DeviceArray: [summed loss] or [summed loss, bad labels]
        self._scale = scale  # the mean: 1 / rows (or elements)
        self._classes = classes  # for a cross-entropy: the number of classes
        self._value: float | None = None

    def __truediv__(self, d) -> DeviceLoss:
        return DeviceLoss(self._be, self._out, self._scale / d, self._classes)

    def item(self) -> float:
        if self._value is None:
            h = self._be.to_host(self._out)
            if self._classes is not None and h[1]:
                raise ValueError(
                    f"labels must be class indices in [0, {self._classes}) for a model with "
                    f"{self._classes} outputs; {int(h[1])} label(s) on the GPU are outside"
                )
            self._value = float(h[0]) * self._scale
        return self._value

    __float__ = item

    def __repr__(self) -> str:
        if self._value is None:
            return "DeviceLoss(<on the GPU: float() reads it>)"
        return f"DeviceLoss({self._value!r})"
