"""The ``cuda`` back end: training with everything in GPU memory.

    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to("cuda")

While a model is on ``cuda`` its parameters, their gradients, the
optimizer's state, every activation and every gradient flowing backwards
are ``whygpu.cuda.DeviceArray``s.  Every matmul runs on a hand-written CUDA
kernel (``cuda``: the best rung, ``cuda_warptile``; or a rung by name,
``model.to("cuda_smem")``) and everything else (bias, activations, losses,
optimizer updates) on the CUDA kernels of ``csrc/cuda/nn_ops.cu``.  Only
the batch goes in and the loss, one float, comes out:

* ``model(x)`` uploads a NumPy ``x`` (or takes a float32 DeviceArray as it
  is: data kept on the GPU) and returns a DeviceArray;
* ``loss_fn(logits, y)`` uploads NumPy labels (or takes an int64
  DeviceArray) and returns a float -- reading it waits for the GPU
  (``fit`` and :class:`whygpu.nn.GraphStep` keep the loss in GPU memory
  instead, as a :class:`DeviceLoss`, and read it only when asked);
* ``param.data`` / ``param.grad`` are NumPy copies; assigning uploads;
* ``fit``, ``evaluate`` and ``predict`` take and return NumPy arrays, one
  upload per batch (fit also copies the logits back, for the accuracy).

Kernel launches are asynchronous: a step returns once its work is queued,
and the next read of a loss waits for it.  Under :func:`whygpu.nn.profile`
each operation waits for the GPU, so the rows are real GPU time, and the
host <-> device copies are counted on their own (seconds, bytes).

Arrays are float32.  The matmuls' products are float32 too, except on the
tensor-core back ends (``cuda_mma``: TF32, ``cuda_mma_bf16`` and
``cuda_wgmma``: bfloat16), chosen by ``model.to("cuda", precision="bf16")``:
mixed precision, the operands of each product rounded, float32 sums, float32
master weights, gradients and optimizer state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda as _wc
from .._registry import KernelUnavailableError
from . import _profile
from ._backend import DeviceBackend, register_backend
from ._module import Parameter
from .losses import DeviceLoss

__all__ = ["CudaBackend", "DeviceParameter"]

_clock = _profile._clock
_F32 = np.dtype(np.float32)


class CudaBackend(DeviceBackend):
    """Matmuls on one CUDA rung, the rest on the CUDA nn ops; arrays in GPU memory."""

    device = "cuda"
    parallel = True
    fused_epilogue = True  # matmul_into takes bias= and relu= (one launch for a Linear + ReLU forward)

    def __init__(self, name: str):
        kernel = _wc.DEFAULT_KERNEL if name == "cuda" else name
        why = _wc._kernel_unavailable(kernel)
        if why is not None:
            raise KernelUnavailableError(f"back end {name!r} is unavailable: {why}")
        self.name = name
        self.kernel = kernel
        self._rung = _wc._RUNGS[kernel]
        # What every matmul's products are computed in ("float32", or "tf32"/"bf16" on the
        # tensor cores); everything else stays float32 (mixed precision: float32 master weights).
        self.precision = _wc.precision_of(kernel)
        self._precision_code = _wc._PRECISION_CODE[self.precision]
        self._mod = _wc._module()
        self._ops = self._mod.nn
        self.array_type = self._mod.DeviceArray

    def threads(self) -> int:  # pragma: no cover - informational (a CPU notion)
        return 1

    def __repr__(self):
        return f"<whygpu.nn backend {self.name!r} (GPU, matmuls on {self.kernel} in {self.precision})>"

    # -- waiting for the GPU -------------------------------------------------
    def synchronize(self) -> None:
        """Wait until all GPU work issued so far is done (raises a kernel's error)."""
        self._mod.synchronize()

    def _done(self) -> None:
        # Launches return at once; under a profile wait, so the timers see the GPU's time.
        if _profile._active is not None:
            self._mod.synchronize()

    # -- arrays ----------------------------------------------------------------
    def empty(self, shape, dtype):
        return self.array_type(shape, _float32(dtype))

    def zeros(self, shape, dtype):
        return self.array_type.zeros(shape, _float32(dtype))

    def asarray(self, x):
        """Upload a host array (a timed transfer under a profile); a DeviceArray passes as it is."""
        if isinstance(x, self.array_type):
            return x
        prof = _profile._active
        if prof is None:
            return self.array_type.from_host(x)
        t0 = _clock()
        d = self.array_type.from_host(x)
        prof._add_transfer(_clock() - t0, d.nbytes)
        return d

    def to_host(self, x, out=None):
        """Download a DeviceArray (into `out` when given; waits for the GPU)."""
        prof = _profile._active
        if prof is None:
            return x.to_host(out)
        t0 = _clock()
        h = x.to_host(out)
        prof._add_transfer(_clock() - t0, x.nbytes)
        return h

    def check_matrix(self, x, what: str, shape=None) -> None:
        """TypeError/ValueError unless x is a live float32 2-D DeviceArray (of `shape`)."""
        if x.freed:
            raise ValueError(f"{what} is a freed DeviceArray")
        if x.dtype != _F32:
            raise TypeError(f"{what} is a {x.dtype} DeviceArray; the GPU back ends compute in float32 only")
        if shape is not None and x.shape != tuple(shape):
            raise ValueError(f"{what} has shape {x.shape}, expected {tuple(shape)} (the shape of the latest output)")
        if x.ndim != 2:
            raise ValueError(f"{what} must be a 2-D DeviceArray (batch, features), got shape {x.shape}")

    # -- parameters --------------------------------------------------------------
    def adopt(self, p: Parameter) -> None:
        """Upload p's values and gradient; p becomes a DeviceParameter."""
        if p._data.dtype != _F32:  # Module.to refuses this first; a direct call gets the same answer
            raise TypeError(f"the GPU back ends compute in float32 only, got a {p._data.dtype} parameter")
        data = self.asarray(np.ascontiguousarray(p._data))
        # A zeroed gradient need not be copied: the next backward pass overwrites it (beta = 0).
        grad = self.empty(p._grad.shape, p._grad.dtype) if p._grad_is_zero else self.asarray(p._grad)
        p._data, p._grad = data, grad
        p.__class__ = DeviceParameter

    def release(self, p: Parameter) -> None:
        """Download p's values and gradient; p becomes a plain Parameter again."""
        data = self.to_host(p._data)
        grad = np.zeros_like(data) if p._grad_is_zero else self.to_host(p._grad)
        p._data, p._grad = data, grad
        p.__class__ = Parameter

    # -- matmul --------------------------------------------------------------------
    def matmul_into(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None, relu=False):
        self._mod.gemm(self._rung, a, b, out, alpha, beta, trans_a, trans_b, 0, bias, relu, self._precision_code)
        self._done()

    # -- element-wise ops (csrc/cuda/nn_ops.cu) ---------------------------------------
    def bias_add(self, y, b):
        self._ops.bias_add(y, b)
        self._done()

    def bias_relu(self, y, b, relu):
        """The fused epilogue's work done apart (a profiled step times each operation on its own)."""
        if b is not None:
            self._ops.bias_add(y, b)
        if relu:
            self._ops.leaky_relu_fwd(y, y, 0.0)
        self._done()

    def bias_grad(self, dy, db, beta):
        self._ops.bias_grad(dy, db, beta)
        self._done()

    def leaky_relu_fwd(self, x, y, slope):
        self._ops.leaky_relu_fwd(x, y, slope)
        self._done()

    def leaky_relu_bwd(self, dy, x, dx, slope):
        self._ops.leaky_relu_bwd(dy, x, dx, slope)
        self._done()

    def sigmoid_fwd(self, x, y):
        self._ops.sigmoid_fwd(x, y)
        self._done()

    def sigmoid_bwd(self, dy, y, dx):
        self._ops.sigmoid_bwd(dy, y, dx)
        self._done()

    def tanh_fwd(self, x, y):
        self._ops.tanh_fwd(x, y)
        self._done()

    def tanh_bwd(self, dy, y, dx):
        self._ops.tanh_bwd(dy, y, dx)
        self._done()

    def softmax_fwd(self, x, y):
        self._ops.softmax_fwd(x, y)
        self._done()

    def softmax_bwd(self, dy, y, dx):
        self._ops.softmax_bwd(dy, y, dx)
        self._done()

    # The losses stay in GPU memory until read: a DeviceLoss (float() waits for the GPU).
    def softmax_xent_fwd(self, logits, labels, probs) -> DeviceLoss:
        out = self._ops.softmax_xent_fwd(logits, labels, probs)  # [sum of losses, bad labels]
        self._done()
        return DeviceLoss(self, out, 1.0, logits.shape[1])

    def softmax_xent_bwd(self, probs, labels, dx, scale):
        self._ops.softmax_xent_bwd(probs, labels, dx, scale)
        self._done()

    def mse_fwd(self, y, t) -> DeviceLoss:
        out = self._ops.mse_fwd(y, t)
        self._done()
        return DeviceLoss(self, out)

    def mse_bwd(self, y, t, dx, scale):
        self._ops.mse_bwd(y, t, dx, scale)
        self._done()

    def bce_logits_fwd(self, x, t) -> DeviceLoss:
        out = self._ops.bce_logits_fwd(x, t)
        self._done()
        return DeviceLoss(self, out)

    def bce_logits_bwd(self, x, t, dx, scale):
        self._ops.bce_logits_bwd(x, t, dx, scale)
        self._done()

    def mask_scale(self, x, mask, y, scale):
        self._ops.mask_scale(x, mask, y, scale)
        self._done()

    def sgd_update(self, p, g, buf, lr, momentum, weight_decay, nesterov):
        self._ops.sgd_update(p, g, buf, lr, momentum, weight_decay, nesterov)
        self._done()

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
        self._ops.adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2)
        self._done()

    # -- fewer launches per step ------------------------------------------------------
    def optimizer_update(self, kind, params, grads, state1, state2, hyper, hyper_dev=None):
        """Every parameter's update in one launch (per 24 tensors); see optim.Optimizer.step."""
        self._ops.optimizer_update(kind, params, grads, state1, state2, hyper, hyper_dev)
        self._done()

    def fit_metrics(self, loss, out, labels, targets, acc):
        """acc += [the batch's loss summed over its samples, bad labels, rows right] on
        the GPU (no copy back per batch)."""
        # the loss kernels sum over elements; a mean per sample times the batch is the sum over samples
        self._ops.fit_metrics(loss._out, out, labels, targets, acc, loss._scale * out.shape[0])
        self._done()


def _float32(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt != _F32:
        raise TypeError(f"the GPU back ends compute in float32 only, got {dt}")
    return dt


class DeviceParameter(Parameter):
    """A Parameter whose values live in GPU memory (what a Parameter becomes on
    a GPU back end, and stops being on the way back).  ``.data`` and
    ``.grad`` copy to the host; assigning them copies to the GPU."""

    __slots__ = ()
    # whygpu.cuda.DeviceArrays (a compiled class, without type information)
    _data: Any
    _grad: Any

    @property
    def data(self) -> np.ndarray:
        if self._pending is not None:
            self._pending()
        return self._backend.to_host(self._data)

    @data.setter
    def data(self, value) -> None:
        if self._pending is not None:
            self._pending()
        self._data.copy_from_host(np.ascontiguousarray(self._checked(value, "data"), dtype=_F32))
        if self._hook is not None:  # (a sharded DataParallel's: see Parameter)
            self._hook(self, "data=")

    @property
    def grad(self) -> np.ndarray:
        if self._hook is not None:
            self._hook(self, "grad")
        if self._grad_is_zero:  # zeroed lazily: nothing to copy
            return np.zeros(self.shape, dtype=_F32)
        return self._backend.to_host(self._grad)

    @grad.setter
    def grad(self, value) -> None:
        if value is None:
            self.zero_grad()
            return
        if self._hook is not None:
            self._hook(self, "grad=")
        self._grad.copy_from_host(np.ascontiguousarray(self._checked(value, "grad"), dtype=_F32))
        self._grad_is_zero = False

    def _grad_array(self):
        if self._grad_is_zero:
            self._grad = self._backend.zeros(self.shape, _F32)
            self._grad_is_zero = False
        return self._grad

    def _astype(self, dtype) -> None:
        _float32(dtype)  # float32 stays float32; anything else is refused


register_backend("cuda", CudaBackend)  # get_backend("cuda"), get_backend("cuda_smem")... make one
