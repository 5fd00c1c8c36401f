"""The layers: Linear, the activations, Dropout.

Each layer keeps what its backward pass needs from the forward pass (its
input or its output) and writes its results into reusable buffers.  Read
``forward`` and ``backward`` of a layer side by side: the backward pass is
the chain rule, and for Linear it is two more matrix multiplications -- which
is why training costs about three times the matmuls of inference.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import _random
from ._backend import DeviceBackend
from ._module import Module, Parameter, _check_dtype, _check_number

__all__ = ["Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout"]

_INITS = {
    "default": "default",
    "pytorch": "default",
    "he": "he",
    "kaiming": "he",
    "xavier": "xavier",
    "glorot": "xavier",
}


def _check_size(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(n)


class Linear(Module):
    """A fully connected layer: ``y = x @ W.T + b``.

    ``weight`` has shape (out_features, in_features) and ``bias``
    (out_features,), as in PyTorch.  ``init`` chooses the initial weights:

    * ``"default"`` (PyTorch's): W and b uniform in +-1/sqrt(in_features);
    * ``"he"`` (Kaiming normal, for ReLU): W ~ N(0, 2/in_features), b = 0;
    * ``"xavier"`` (Glorot uniform, for tanh/sigmoid): W uniform in
      +-sqrt(6/(in_features + out_features)), b = 0.

    Draws come from :func:`whygpu.manual_seed`'s generator.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, init: str = "default", dtype=np.float32
    ):
        super().__init__()
        self.in_features = _check_size(in_features, "in_features")
        self.out_features = _check_size(out_features, "out_features")
        if not isinstance(init, str) or init.lower() not in _INITS:
            raise ValueError(f"unknown init {init!r}; choose 'default', 'he' or 'xavier'")
        self.init = _INITS[init.lower()]
        self._dtype = _check_dtype(dtype)
        rng = _random.get_rng()
        fan_in, fan_out = self.in_features, self.out_features
        shape = (fan_out, fan_in)
        if self.init == "default":
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, shape)
            b = rng.uniform(-bound, bound, fan_out) if bias else None
        elif self.init == "he":
            w = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
            b = np.zeros(fan_out) if bias else None
        else:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, shape)
            b = np.zeros(fan_out) if bias else None
        self.weight = Parameter(w.astype(self._dtype), "weight")
        self.bias = Parameter(b.astype(self._dtype), "bias") if b is not None else None
        self._x: np.ndarray | None = None
        # Set by Sequential while whygpu.distributed sends gradients: called once dW and db are final.
        self._grads_done: Callable[[], None] | None = None

    def named_parameters(self):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def forward(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (batch, {self.in_features}), got {x.shape}")
        y = self._buf("y", (x.shape[0], self.out_features))
        be, b = self._backend, self.bias
        bias = None if b is None else b._data
        fused = be.fused_epilogue
        if fused and isinstance(be, DeviceBackend) and self._prof is None:
            # The GPU: one GEMM launch writes y = x . W^T + b, and max(y, 0) when Sequential fuses
            # the next layer's ReLU in (relu=True): one pass over y instead of three.
            be.matmul_into(x, self.weight._data, y, trans_b=True, bias=bias, relu=relu)
        else:
            self._matmul(x, self.weight._data, y, trans_b=True)  # y = x . W^T
            if fused and (bias is not None or relu):
                be.bias_relu(y, bias, relu)  # y += b, then max(y, 0): one compiled pass
            elif relu:
                raise ValueError(f"the {be.name!r} back end cannot fuse a ReLU into a Linear layer")
            elif bias is not None:
                be.bias_add(y, bias)  # y += b (each row)
        self._x = x  # dW needs it
        return y

    def _backward(self, dy: np.ndarray, need_input_grad: bool):
        x, W = self._x, self.weight
        assert x is not None  # a forward pass came first (Module._check_grad, Sequential.backward)
        self._matmul(dy, x, W._grad, trans_a=True, beta=W._grad_beta())  # dW (+)= dY^T . X
        if self.bias is not None:
            self._backend.bias_grad(dy, self.bias._grad, self.bias._grad_beta())  # db (+)= column sums of dY
        if self._grads_done is not None:
            self._grads_done()
        if not need_input_grad:
            return None  # the first layer: nobody needs dL/d(data)
        dx = self._buf("dx", x.shape)
        self._matmul(dy, W._data, dx)  # dX = dY . W
        return dx

    def _saved_output_shape(self):
        return None if self._x is None else (self._x.shape[0], self.out_features)

    def output_features(self, in_features: int) -> int:
        return self.out_features

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}" + ("" if self.bias is not None else ", bias=False")


class _Activation(Module):
    """A layer without parameters applied element by element (shape-preserving)."""

    def __init__(self):
        super().__init__()
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    def _saved_output_shape(self):
        return None if self._x is None else self._x.shape

    def output_features(self, in_features: int) -> int:
        return in_features


class LeakyReLU(_Activation):
    """``y = x`` where x > 0, else ``negative_slope * x``."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _check_number(negative_slope, "negative_slope")

    def forward(self, x):
        y = self._buf("y", x.shape)
        self._backend.leaky_relu_fwd(x, y, self.negative_slope)
        self._x = x
        return y

    def _backward(self, dy, need_input_grad):
        dx = self._buf("dx", dy.shape)
        self._backend.leaky_relu_bwd(dy, self._x, dx, self.negative_slope)  # dx = dy * (x > 0 ? 1 : slope)
        return dx

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ReLU(LeakyReLU):
    """``y = max(x, 0)``; its gradient passes dy where x > 0 and blocks it elsewhere."""

    def __init__(self):
        super().__init__(0.0)

    def extra_repr(self):
        return ""


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``; ``dx = dy * y * (1 - y)``."""

    def forward(self, x):
        y = self._buf("y", x.shape)
        self._backend.sigmoid_fwd(x, y)
        self._x, self._y = x, y
        return y

    def _backward(self, dy, need_input_grad):
        dx = self._buf("dx", dy.shape)
        self._backend.sigmoid_bwd(dy, self._y, dx)
        return dx


class Tanh(_Activation):
    """``y = tanh(x)``; ``dx = dy * (1 - y**2)``."""

    def forward(self, x):
        y = self._buf("y", x.shape)
        self._backend.tanh_fwd(x, y)
        self._x, self._y = x, y
        return y

    def _backward(self, dy, need_input_grad):
        dx = self._buf("dx", dy.shape)
        self._backend.tanh_bwd(dy, self._y, dx)
        return dx


class Softmax(_Activation):
    """Row-wise ``y = exp(x) / sum(exp(x))``: class probabilities.

    For training a classifier, end the model with Linear and use
    :class:`CrossEntropyLoss`, which applies softmax itself (fused, stabler
    and cheaper); use this layer to turn logits into probabilities.
    Backward: ``dx = y * (dy - sum(dy * y))`` per row.
    """

    def forward(self, x):
        y = self._buf("y", x.shape)
        self._backend.softmax_fwd(x, y)
        self._x, self._y = x, y
        return y

    def _backward(self, dy, need_input_grad):
        dx = self._buf("dx", dy.shape)
        self._backend.softmax_bwd(dy, self._y, dx)
        return dx


class Dropout(_Activation):
    """During training, zero each element with probability ``p`` and scale
    the survivors by ``1 / (1 - p)``, so the expected output equals the
    input; in eval mode (``model.eval()``), the identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _check_number(p, "p", 0.0, True, 1.0, True)
        self._mask: np.ndarray | None = None
        # (first row, rows) of a larger batch whose rows [first, first + len(x)) x is; None: x is
        # the whole batch.  Set by whygpu.distributed.DataParallel so that P ranks, each holding
        # its share of a global batch, draw exactly the mask one process draws for that batch.
        self._rows: tuple[int, int] | None = None
        # (lo, hi, full): x is columns [lo, hi) of a layer `full` wide; None: all of it.  Set by
        # whygpu.distributed.tensor_parallel on a Dropout between a column and a row layer.
        self._cols: tuple[int, int, int] | None = None

    def _scale(self) -> float:
        return 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)

    def forward(self, x):
        self._x = x
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        if self._rows is None and self._cols is None:
            mask = _random.get_rng().random(x.shape, dtype=np.float32) >= np.float32(self.p)
        else:
            # the whole (rows, full) mask's draws, so the generator advances alike on every rank;
            # then x's rows and columns of it
            first, rows = (0, x.shape[0]) if self._rows is None else self._rows
            if not 0 <= first <= first + x.shape[0] <= rows:
                raise ValueError(f"rows {first}..{first + x.shape[0]} do not lie in a batch of {rows}")
            if self._cols is None:
                draws = _random.get_rng().random((rows, *x.shape[1:]), dtype=np.float32)
                mask = draws[first : first + x.shape[0]] >= np.float32(self.p)
            else:
                lo, hi, full = self._cols
                if x.ndim != 2 or x.shape[1] != hi - lo or not 0 <= lo <= hi <= full:
                    raise ValueError(f"columns {lo}..{hi} of {full}: x of shape {x.shape} is not them")
                draws = _random.get_rng().random((rows, full), dtype=np.float32)
                mask = draws[first : first + x.shape[0], lo:hi] >= np.float32(self.p)
        self._mask = self._backend.asarray(mask)  # drawn on the host (same draws everywhere); a GPU uploads it
        y = self._buf("y", x.shape)
        self._backend.mask_scale(x, self._mask, y, self._scale())
        return y

    def _backward(self, dy, need_input_grad):
        if self._mask is None:
            return dy
        dx = self._buf("dx", dy.shape)
        self._backend.mask_scale(dy, self._mask, dx, self._scale())
        return dx

    def extra_repr(self):
        return f"p={self.p}"
