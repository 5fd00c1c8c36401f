"""Back ends: where a network's arithmetic runs.

A back end does two kinds of work for the layers:

* ``matmul_into(a, b, out, trans_a, trans_b, alpha, beta)``: every matrix
  product of the forward and backward passes,
  ``out = alpha * op(a) @ op(b) + beta * out``;
* the element-wise rest: bias add and bias gradient, activations and their
  gradients, softmax-cross-entropy and the other losses, optimizer updates.

``numpy`` is the reference: ``np.matmul`` (OpenBLAS) and NumPy element-wise
code, which runs on one core whatever BLAS does.  Every kernel of the ladder
(``whygpu.available_kernels()``) is a back end too: its matmuls go through
that kernel and the element-wise work through ``whygpu._nn_core`` (C++,
OpenMP-parallel for the parallel kernels), so the non-matmul work does not
become the serial fraction that Amdahl's law punishes.

``cuda`` (and each CUDA rung by name, ``cuda_naive`` ... ``cuda_warptile``)
keeps parameters, activations and gradients in GPU memory: see
``_cuda_backend.py``.  Its arrays are ``whygpu.cuda.DeviceArray``s, which is
why a back end also says how to make and move arrays (``device``,
``empty``, ``zeros``, ``asarray``, ``to_host``); for the CPU back ends these
are plain NumPy.

All arrays handed to a back end are made by whygpu.nn itself: C-contiguous
outputs, one dtype, correct shapes.  So no argument is re-checked here on
the hot path (see ``whygpu._api._gemm_unchecked``).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .._api import _gemm_unchecked
from .._registry import KernelUnavailableError, all_kernels, available_kernels, get_kernel
from .._threads import get_num_threads

if TYPE_CHECKING:
    from .losses import DeviceLoss

try:
    import whygpu._nn_core as _nn_core
except ImportError as exc:  # pragma: no cover - only on a broken build
    _nn_core = None
    _nn_core_error: str | None = str(exc)
else:
    _nn_core_error = None

__all__ = ["Backend", "DeviceBackend", "NumpyBackend", "KernelBackend", "get_backend", "backends", "register_backend"]


class Backend:
    """What the layers, losses and optimizers call.  See the module docstring."""

    name = "?"
    parallel = False
    device: str | None = None  # None: arrays are host NumPy arrays; "cuda": whygpu.cuda.DeviceArrays
    # the class of this back end's arrays (whygpu.cuda.DeviceArray is compiled, without type information)
    array_type: type[Any] = np.ndarray
    # bias_relu() exists, and a GEMM followed by it is what a Linear (+ ReLU) forward pass costs
    fused_epilogue = False

    def threads(self) -> int:
        """Threads this back end uses for a call made now."""
        return 1

    # -- arrays: where they live (overridden by the GPU back end) --------------
    def empty(self, shape, dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def asarray(self, x):
        """A host array, as this back end's array (a GPU back end uploads it)."""
        return x

    def to_host(self, x, out=None):
        """This back end's array as a NumPy array (a GPU back end downloads it)."""
        return x

    def adopt(self, param) -> None:
        """Move a Parameter held on the host onto this back end's device (GPU back ends)."""

    def release(self, param) -> None:
        """Move a Parameter on this back end's device back to the host (GPU back ends)."""

    # -- the arithmetic: every back end implements these (see the module docstring) ----
    def matmul_into(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> None:
        """out = alpha * op(a) @ op(b) + beta * out."""
        raise NotImplementedError

    def bias_relu(self, y, b, relu) -> None:
        """y += b (b may be None), then y = max(y, 0) when relu (back ends with fused_epilogue)."""
        raise NotImplementedError

    def bias_add(self, y, b) -> None:
        raise NotImplementedError

    def bias_grad(self, dy, db, beta) -> None:
        raise NotImplementedError

    def leaky_relu_fwd(self, x, y, slope) -> None:
        raise NotImplementedError

    def leaky_relu_bwd(self, dy, x, dx, slope) -> None:
        raise NotImplementedError

    def sigmoid_fwd(self, x, y) -> None:
        raise NotImplementedError

    def sigmoid_bwd(self, dy, y, dx) -> None:
        raise NotImplementedError

    def tanh_fwd(self, x, y) -> None:
        raise NotImplementedError

    def tanh_bwd(self, dy, y, dx) -> None:
        raise NotImplementedError

    def softmax_fwd(self, x, y) -> None:
        raise NotImplementedError

    def softmax_bwd(self, dy, y, dx) -> None:
        raise NotImplementedError

    # The losses' sums: a float, or on a GPU back end a DeviceLoss still in GPU memory.
    def softmax_xent_fwd(self, logits, labels, probs) -> float | DeviceLoss:
        raise NotImplementedError

    def softmax_xent_bwd(self, probs, labels, dx, scale) -> None:
        raise NotImplementedError

    def mse_fwd(self, y, t) -> float | DeviceLoss:
        raise NotImplementedError

    def mse_bwd(self, y, t, dx, scale) -> None:
        raise NotImplementedError

    def bce_logits_fwd(self, x, t) -> float | DeviceLoss:
        raise NotImplementedError

    def bce_logits_bwd(self, x, t, dx, scale) -> None:
        raise NotImplementedError

    def mask_scale(self, x, mask, y, scale) -> None:
        raise NotImplementedError

    def sgd_update(self, p, g, buf, lr, momentum, weight_decay, nesterov) -> None:
        raise NotImplementedError

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2) -> None:
        raise NotImplementedError

    # (``optimizer_update``, every parameter's update in one call, is optional: a back end
    # that has it says so by having it -- see whygpu.nn._optimizer.Optimizer._fused_backend.)

    def __repr__(self):
        return f"<whygpu.nn backend {self.name!r}>"


class DeviceBackend(Backend):
    """A back end whose arrays live in a device's memory (``device`` is not None): the
    GPU back end of ``_cuda_backend.py``.  What whygpu.nn calls on one besides the
    Backend interface."""

    device: str
    _mod: Any  # the compiled module behind it (whygpu._cuda): uploaders, copies, CUDA graphs

    def synchronize(self) -> None:
        """Wait until all work issued so far is done."""
        raise NotImplementedError

    def check_matrix(self, x, what: str, shape=None) -> None:
        """TypeError/ValueError unless x is a live 2-D array of this back end (of `shape`)."""
        raise NotImplementedError

    def matmul_into(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None, relu=False) -> None:
        """Backend.matmul_into with the epilogue in the same launch: then out += bias (each
        row, unless None) and out = max(out, 0) when relu."""
        raise NotImplementedError

    def fit_metrics(self, loss, out, labels, targets, acc) -> None:
        """acc += [the batch's summed loss, bad labels, rows right], in device memory."""
        raise NotImplementedError


class NumpyBackend(Backend):
    """The reference: NumPy (its BLAS for matmuls, single-threaded element-wise ops)."""

    name = "numpy"

    def threads(self) -> int:  # pragma: no cover - informational
        return 1

    def matmul_into(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        op_a = a.T if trans_a else a
        op_b = b.T if trans_b else b
        if beta == 0.0:
            np.matmul(op_a, op_b, out=out)
            if alpha != 1.0:
                out *= alpha
        else:
            prod = np.matmul(op_a, op_b)
            if alpha != 1.0:
                prod *= alpha
            if beta != 1.0:
                out *= beta
            out += prod

    def bias_add(self, y, b):
        y += b

    def bias_grad(self, dy, db, beta):
        if beta == 0.0:
            np.sum(dy, axis=0, out=db)
        else:
            db *= beta
            db += dy.sum(axis=0)

    def leaky_relu_fwd(self, x, y, slope):
        if slope == 0.0:
            np.maximum(x, 0, out=y)
        else:
            np.copyto(y, np.where(x > 0, x, x * x.dtype.type(slope)))

    def leaky_relu_bwd(self, dy, x, dx, slope):
        if slope == 0.0:
            np.multiply(dy, x > 0, out=dx)
        else:
            np.copyto(dx, np.where(x > 0, dy, dy * dy.dtype.type(slope)))

    def sigmoid_fwd(self, x, y):
        e = np.exp(-np.abs(x))  # never overflows
        np.copyto(y, np.where(x >= 0, 1 / (1 + e), e / (1 + e)))

    def sigmoid_bwd(self, dy, y, dx):
        np.multiply(dy, y * (1 - y), out=dx)

    def tanh_fwd(self, x, y):
        np.tanh(x, out=y)

    def tanh_bwd(self, dy, y, dx):
        np.multiply(dy, 1 - y * y, out=dx)

    def softmax_fwd(self, x, y):
        np.subtract(x, x.max(axis=1, keepdims=True), out=y)
        np.exp(y, out=y)
        y /= y.sum(axis=1, keepdims=True)

    def softmax_bwd(self, dy, y, dx):
        dot = (dy * y).sum(axis=1, keepdims=True)
        np.multiply(y, dy - dot, out=dx)

    def softmax_xent_fwd(self, logits, labels, probs) -> float:
        z = logits - logits.max(axis=1, keepdims=True)
        np.exp(z, out=probs)
        s = probs.sum(axis=1)
        probs /= s[:, None]
        # -log softmax(z)[label] = log(sum exp z) - z[label]
        return float((np.log(s) - z[np.arange(len(labels)), labels]).sum(dtype=np.float64))

    def softmax_xent_bwd(self, probs, labels, dx, scale):
        np.multiply(probs, dx.dtype.type(scale), out=dx)
        dx[np.arange(len(labels)), labels] -= dx.dtype.type(scale)

    def mse_fwd(self, y, t) -> float:
        d = y - t
        return float(np.sum(d * d, dtype=np.float64))

    def mse_bwd(self, y, t, dx, scale):
        np.subtract(y, t, out=dx)
        dx *= dx.dtype.type(2 * scale)

    def bce_logits_fwd(self, x, t) -> float:
        return float(np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))), dtype=np.float64))

    def bce_logits_bwd(self, x, t, dx, scale):
        self.sigmoid_fwd(x, dx)
        dx -= t
        dx *= dx.dtype.type(scale)

    def mask_scale(self, x, mask, y, scale):
        np.multiply(x, mask, out=y)
        y *= y.dtype.type(scale)

    def sgd_update(self, p, g, buf, lr, momentum, weight_decay, nesterov):
        if weight_decay != 0.0:
            g = g + weight_decay * p
        if momentum != 0.0:
            buf *= momentum
            buf += g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
        if weight_decay != 0.0:
            g = g + weight_decay * p
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        # Python floats for the scalars: NumPy 2 would promote float32 arrays
        # to float64 with a NumPy float64 scalar.
        p -= (lr / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


class KernelBackend(Backend):
    """A rung of the kernel ladder for every matmul, compiled code for the rest.

    Parallel kernels (``openmp``) use :func:`whygpu.get_num_threads` threads,
    read at each call, for the matmuls and the element-wise ops alike; the
    others use one thread.
    """

    def __init__(self, kernel_name: str):
        self._kernel = get_kernel(kernel_name)
        if _nn_core is None:  # pragma: no cover - broken build only
            raise KernelUnavailableError(
                f"back end {kernel_name!r} needs the compiled module whygpu._nn_core, which failed to "
                f"import: {_nn_core_error}"
            )
        self.name = kernel_name
        self.parallel = self._kernel.parallel

    # bias_relu(y, b, relu): a Linear (+ ReLU) forward pass is the GEMM and one compiled pass
    # over its output (on the GPU the GEMM's own epilogue does it).
    fused_epilogue = True

    def threads(self) -> int:
        return get_num_threads() if self.parallel else 1

    def matmul_into(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        _gemm_unchecked(self._kernel, a, b, out, alpha, beta, trans_a, trans_b, self.threads())

    def bias_relu(self, y, b, relu):
        """y += b (b may be None), then y = max(y, 0) when relu: one pass."""
        _nn_core.bias_relu(y, b, relu, self.threads())

    def optimizer_update(self, kind, params, grads, state1, state2, hyper, hyper_dev=None):
        """Every parameter's update in one compiled call (one team of threads); see optim.Optimizer.step."""
        _nn_core.optimizer_update(kind, params, grads, state1, state2, hyper, self.threads())

    def bias_add(self, y, b):
        _nn_core.bias_add(y, b, self.threads())

    def bias_grad(self, dy, db, beta):
        _nn_core.bias_grad(dy, db, beta, self.threads())

    def leaky_relu_fwd(self, x, y, slope):
        _nn_core.leaky_relu_fwd(x, y, slope, self.threads())

    def leaky_relu_bwd(self, dy, x, dx, slope):
        _nn_core.leaky_relu_bwd(dy, x, dx, slope, self.threads())

    def sigmoid_fwd(self, x, y):
        _nn_core.sigmoid_fwd(x, y, self.threads())

    def sigmoid_bwd(self, dy, y, dx):
        _nn_core.sigmoid_bwd(dy, y, dx, self.threads())

    def tanh_fwd(self, x, y):
        _nn_core.tanh_fwd(x, y, self.threads())

    def tanh_bwd(self, dy, y, dx):
        _nn_core.tanh_bwd(dy, y, dx, self.threads())

    def softmax_fwd(self, x, y):
        _nn_core.softmax_fwd(x, y, self.threads())

    def softmax_bwd(self, dy, y, dx):
        _nn_core.softmax_bwd(dy, y, dx, self.threads())

    def softmax_xent_fwd(self, logits, labels, probs) -> float:
        return _nn_core.softmax_xent_fwd(logits, labels, probs, self.threads())

    def softmax_xent_bwd(self, probs, labels, dx, scale):
        _nn_core.softmax_xent_bwd(probs, labels, dx, scale, self.threads())

    def mse_fwd(self, y, t) -> float:
        return _nn_core.mse_fwd(y, t, self.threads())

    def mse_bwd(self, y, t, dx, scale):
        _nn_core.mse_bwd(y, t, dx, scale, self.threads())

    def bce_logits_fwd(self, x, t) -> float:
        return _nn_core.bce_logits_fwd(x, t, self.threads())

    def bce_logits_bwd(self, x, t, dx, scale):
        _nn_core.bce_logits_bwd(x, t, dx, scale, self.threads())

    def mask_scale(self, x, mask, y, scale):
        _nn_core.mask_scale(x, mask, y, scale, self.threads())

    def sgd_update(self, p, g, buf, lr, momentum, weight_decay, nesterov):
        _nn_core.sgd_update(p, g, buf, lr, momentum, weight_decay, nesterov, self.threads())

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
        _nn_core.adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2, self.threads())


NUMPY = NumpyBackend()
_cache: dict[str, Backend] = {"numpy": NUMPY}

# The back ends defined above this module, by device: factory(name) makes the back end for
# the device's own name ("cuda") and for each of its kernels.  ``_cuda_backend`` registers
# the GPU one when imported (``whygpu.nn`` imports it, touching no GPU), so this module
# never imports it.
_FACTORIES: dict[str, Callable[[str], Backend]] = {}


def register_backend(device: str, factory: Callable[[str], Backend]) -> None:
    """Make ``factory(name)`` the back end for `device` (``"cuda"``) and for each of its kernels."""
    _FACTORIES[device] = factory


def backends() -> list:
    """Back-end names usable here: ``'numpy'``, every available CPU kernel and,
    where a GPU is usable, ``'cuda'`` (the best CUDA kernel) and every CUDA rung."""
    gpu = available_kernels(device="cuda")
    return ["numpy"] + available_kernels(device="cpu") + (["cuda"] + gpu if gpu else [])


def backend_for_precision(name, precision) -> str:
    """The GPU back end that runs back end `name`'s matmuls in `precision`
    ('float32', 'tf32' or 'bf16'): ``('cuda', 'bf16')`` -> ``'cuda_mma_bf16'``,
    ``('cuda_mma', 'bf16')`` -> ``'cuda_mma_bf16'``, ``('cuda', 'float32')`` -> ``'cuda'``...
    ValueError where there is none (a CPU back end, a float32-only rung)."""
    from .. import cuda as wc

    if isinstance(name, Backend):
        name = name.name
    if precision not in wc.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(wc.PRECISIONS)}, got {precision!r}")
    if name != "cuda" and name not in all_kernels(device="cuda"):
        raise ValueError(
            f"precision= chooses how a GPU back end multiplies; {name!r} runs on the CPU in the "
            f"model's dtype (use model.to('cuda', precision={precision!r}))"
        )
    if name == "cuda" or wc._RUNGS[name] == 15:  # rung 15 computes in either tensor-core precision
        return {"float32": "cuda", "tf32": "cuda_mma", "bf16": "cuda_mma_bf16"}[precision]
    if wc.precision_of(name) != precision:
        raise ValueError(
            f"back end {name!r} computes in {wc.precision_of(name)}, not {precision} "
            f"(model.to('cuda', precision={precision!r}) picks one that does)"
        )
    return name


def get_backend(name) -> Backend:
    """The back end called `name` (ValueError listing the valid names if unknown;
    KernelUnavailableError saying why for a known one that cannot run here)."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a back end is named by a string, got {type(name).__name__}")
    be = _cache.get(name)
    if be is None:
        device = next((d for d in _FACTORIES if name == d or name in all_kernels(device=d)), None)
        if device is not None:
            be = _FACTORIES[device](name)  # e.g. GPU-resident training (needs a usable GPU)
        elif name in all_kernels():
            be = KernelBackend(name)  # KernelUnavailableError says why, if it cannot run
        else:
            raise ValueError(f"unknown back end {name!r}; valid back ends here are: {', '.join(backends())}")
        _cache[name] = be
    return be


# ---- Which back end produced an array? -------------------------------------
# A loss with no back end of its own follows the model whose output it is
# given: the model notes its latest output here (per thread), and the loss
# asks.  Anything else (a copy, an array the user made) uses NumPy.
_tls = threading.local()


def note_output(arr: np.ndarray, backend: Backend) -> None:
    _tls.out = arr
    _tls.backend = backend


def producer_of(arr) -> Backend | None:
    if getattr(_tls, "out", None) is arr:
        return _tls.backend
    return None
