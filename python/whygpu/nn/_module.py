"""Parameter and Module: the base of every layer and loss.

A Module has a back end (where its arithmetic runs, see ``_backend.py``), a
dtype (float32 by default, float64 for gradient checks), a training/eval
mode, and buffers for its outputs and gradients that are reused from one
step to the next, so a steady-state training step allocates almost nothing.

On a GPU back end (``cuda``) the parameters, buffers and gradients are
``whygpu.cuda.DeviceArray``s: calling the module uploads a NumPy input (or
takes a DeviceArray as it is) and returns a DeviceArray; see
``_cuda_backend.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator

import numpy as np

from . import _backend, _profile
from ._backend import Backend, DeviceBackend, get_backend

__all__ = ["Parameter", "Module"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_clock = _profile._clock


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class Parameter:
    """A learnable array and its gradient.

    ``.data`` and ``.grad`` are NumPy arrays you can read, modify in place or
    assign (``p.data = new_values`` copies the values in; the shape must
    match).  Gradients *accumulate* over backward passes until
    :meth:`zero_grad`, as in PyTorch.  Zeroing is lazy: it only sets a flag,
    and the next backward pass overwrites instead of adding (``beta = 0`` in
    its GEMM), which saves a pass over every parameter each step; reading
    ``.grad`` in between gives zeros as expected.

    On a GPU back end the values live in GPU memory (the parameter is then a
    ``DeviceParameter``, see ``_cuda_backend.py``): ``.data`` and ``.grad``
    are copies, so read and assign them (``p.data -= ...`` assigns), but an
    in-place change of a copy (``p.data[0] = 1``) does not reach the GPU.
    """

    __slots__ = ("_data", "_grad", "_grad_is_zero", "_backend", "name", "_pending", "_hook")

    def __init__(self, data: np.ndarray, name: str = ""):
        self._data = np.ascontiguousarray(data)
        if self._data.dtype not in _FLOATS:
            raise TypeError(f"a Parameter holds float32 or float64 values, got {self._data.dtype}")
        self._grad = np.zeros_like(self._data)
        self._grad_is_zero = True
        self._backend: Backend = _backend.NUMPY
        self.name = name
        # None, or what completes new values still arriving in _data (whygpu.distributed's
        # prefetched allgather): reading or assigning .data calls it first
        self._pending: Callable[[], None] | None = None
        # None, or what the layout this parameter lives in (whygpu.distributed's sharded
        # DataParallel) does first: hook(p, "grad") before .grad is read, "grad=" before it is
        # assigned, "zero" on zero_grad(), "data=" after .data is assigned
        self._hook: Callable[[Parameter, str], None] | None = None

    @property
    def data(self) -> np.ndarray:
        if self._pending is not None:
            self._pending()
        return self._data

    @data.setter
    def data(self, value) -> None:
        if self._pending is not None:
            self._pending()
        self._data[...] = self._checked(value, "data")
        if self._hook is not None:
            self._hook(self, "data=")

    @property
    def grad(self) -> np.ndarray:
        if self._hook is not None:
            self._hook(self, "grad")
        return self._grad_array()

    @grad.setter
    def grad(self, value) -> None:
        if value is None:
            self.zero_grad()
            return
        if self._hook is not None:
            self._hook(self, "grad=")
        self._grad[...] = self._checked(value, "grad")
        self._grad_is_zero = False

    def _grad_array(self):
        """The gradient array itself (on the back end's device), zeroed first if
        zero_grad() was called since the last backward pass."""
        if self._grad_is_zero:
            self._grad.fill(0)
            self._grad_is_zero = False
        return self._grad

    def _checked(self, value, what: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != self._data.shape:
            raise ValueError(
                f"cannot assign an array of shape {arr.shape} to {self.name or 'a parameter'}.{what} "
                f"of shape {self._data.shape}"
            )
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
        return arr

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (lazily: see the class docstring)."""
        self._grad_is_zero = True
        if self._hook is not None:
            self._hook(self, "zero")

    def _grad_beta(self) -> float:
        """For a backward pass about to write the gradient: 0.0 (overwrite)
        after zero_grad, else 1.0 (accumulate)."""
        if self._grad_is_zero:
            self._grad_is_zero = False
            return 0.0
        return 1.0

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def _astype(self, dtype: np.dtype) -> None:
        if self._pending is not None:  # values still arriving (a prefetched allgather): converted once there
            self._pending()
        if self._data.dtype != dtype:
            grad = self._grad_array().astype(dtype)
            self._data = self._data.astype(dtype)
            self._grad = grad

    def _place(self, backend: Backend, dtype: np.dtype | None) -> None:
        """Put this parameter on `backend` (and convert it to `dtype`), moving the
        values between host and device memory when the two back ends differ there."""
        if self._pending is not None:  # values still arriving (a prefetched allgather): moved once there
            self._pending()
        old = self._backend
        moving = backend.device != old.device
        if moving:
            old.release(self)  # device -> host (nothing for a CPU back end)
        if dtype is not None:
            self._astype(dtype)  # on the host, or a no-op (float32 stays float32) on a device
        if moving:
            backend.adopt(self)  # host -> device (nothing for a CPU back end)
        self._backend = backend

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of layers, containers and losses.

    Subclasses implement ``forward(x)`` and ``backward(grad)``; calling the
    module (``layer(x)``) checks and converts the input first and returns an
    array you own.  ``forward``/``backward`` called directly may return the
    module's internal buffers, overwritten by the next call.
    """

    def __init__(self):
        self.training = True
        self._backend: Backend = _backend.NUMPY
        self._dtype = np.dtype(np.float32)
        self._bufs: dict[str, np.ndarray] = {}
        self._prof: _profile._Record | None = None  # set while a profile is active

    # -- parameters --------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """The learnable parameters, in a fixed order."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def count_params(self) -> int:
        """Total number of learnable values."""
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        """Zero every parameter's gradient."""
        for p in self.parameters():
            p.zero_grad()

    # -- saving and loading (see _state.py) ------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter's values, a copy as NumPy arrays, named as PyTorch names them
        (``"0.weight"``, ``"0.bias"``, ...): ``whygpu.save(model.state_dict(), path)``, or
        ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``."""
        from ._state import module_state_dict

        return module_state_dict(self)

    def load_state_dict(self, state, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy the values of ``state`` (from :meth:`state_dict`, ``whygpu.load`` or a PyTorch
        model's state dict) into the parameters, keeping this model's back end and dtype.

        Every name, shape and dtype is checked first (``strict``: no name missing or extra);
        when anything differs a ``whygpu.CheckpointError`` says exactly what, and no parameter
        has changed.  Returns the (missing, unexpected) names, as PyTorch does."""
        from ._state import load_module_state

        return load_module_state(self, state, strict)

    # -- back end, dtype, mode -----------------------------------------------
    def to(self, backend=None, dtype=None, precision=None) -> Module:
        """Move to back end ``backend`` (a name from :func:`whygpu.nn.backends`:
        ``'numpy'``, a CPU kernel, or ``'cuda'`` where a GPU is usable) and/or
        convert to ``dtype`` (float32 or float64; float32 only on a GPU).
        Parameters keep their values.  Returns self.

        ``precision`` (GPU back ends): what every matmul's products are computed
        in -- ``'float32'`` (the ordinary cores), ``'tf32'`` or ``'bf16'`` (the
        tensor cores: ``model.to("cuda", precision="bf16")`` is mixed-precision
        training).  Parameters, gradients, optimizer state and activations stay
        float32 (the "master weights"); only the operands of each product are
        rounded, and the sums are float32.  It picks the back end of that
        precision: ``cuda_mma_bf16``, ``cuda_mma`` (TF32) or ``cuda``."""
        alias = _device_alias_error(backend)
        if alias is not None:
            raise alias
        if precision is not None:
            backend = _backend.backend_for_precision(backend if backend is not None else self._backend.name, precision)
        be = get_backend(backend) if backend is not None else None
        dt = _check_dtype(dtype) if dtype is not None else None
        modules = self._modules()
        if (be or self._backend).device is not None:  # refuse before anything moves
            for m in modules:
                if (dt or m._dtype) != np.float32:
                    raise TypeError(
                        f"the GPU back ends compute in float32 only; this model is {dt or m._dtype}: "
                        f"use model.to({(be or self._backend).name!r}, dtype=np.float32)"
                    )
        for m in modules:
            moving = be is not None and be.device != m._backend.device
            if be is not None:
                m._backend = be
            if dt is not None:
                m._dtype = dt
            if dt is not None or moving:
                m._bufs = {}
                m._forget()
            for p in m.parameters():
                if be is not None:
                    p._place(be, dt)
                elif dt is not None:
                    p._astype(dt)
        return self

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    @property
    def backend(self) -> str:
        """Name of the back end this module runs on."""
        return self._backend.name

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def train(self, mode: bool = True) -> Module:
        for m in self._modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def _modules(self) -> list[Module]:
        return [self]

    def _forget(self) -> None:
        """Drop what the latest forward pass kept (after a move to other memory)."""
        for name in ("_x", "_y", "_mask"):
            if name in vars(self):
                setattr(self, name, None)

    # -- calling -------------------------------------------------------------
    def __call__(self, x):
        x = self._check_input(x) if self._backend.device is None else self._device_input(x)
        rec, prof = self._prof, _profile._active
        if rec is None or prof is None:  # (a layer has a record only while a profile is active)
            out = self.forward(x).copy()  # the caller owns the result; buffers are reused
        else:
            t0, x0 = _clock(), prof.transfer_s
            out = self.forward(x).copy()
            rec.forward_s += _clock() - t0 - (prof.transfer_s - x0)  # copies have their own row
        _backend.note_output(out, self._backend)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        """Given dLoss/dOutput of the latest forward pass, accumulate the
        parameters' gradients and return dLoss/dInput (a layer always does;
        ``Sequential`` only when asked)."""
        grad = self._check_grad(grad)
        rec = self._prof
        if rec is None:
            return self._backward(grad, True)
        t0 = _clock()
        dx = self._backward(grad, True)
        rec.backward_s += _clock() - t0
        return dx

    def _backward(self, grad: np.ndarray, need_input_grad: bool) -> np.ndarray | None:  # pragma: no cover - abstract
        """backward() without the checks; dLoss/dInput only when need_input_grad (else None)."""
        raise NotImplementedError

    def _check_input(self, x) -> np.ndarray:
        """x as a C-contiguous 2-D array of this module's dtype, or a clear error."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{type(self).__name__} input must be numeric, got dtype {x.dtype}")
        if x.ndim != 2:
            hint = " (a single sample? use x.reshape(1, -1))" if x.ndim == 1 else ""
            raise ValueError(f"{type(self).__name__} expects a 2-D array (batch, features), got shape {x.shape}{hint}")
        x = np.ascontiguousarray(x, dtype=self._dtype)
        _check_finite(x, "input")
        return x

    def _device_input(self, x):
        """x for a module on a GPU back end: a DeviceArray is checked and used as
        it is (no copy); anything else is checked as on the CPU and uploaded."""
        be = self._backend
        assert isinstance(be, DeviceBackend)  # called for a back end whose device is not None
        if isinstance(x, be.array_type):
            be.check_matrix(x, f"{type(self).__name__} input")
            self._check_features(x)
            return x
        return be.asarray(self._check_input(x))

    def _check_features(self, x) -> None:
        """ValueError if x has the wrong number of features (Sequential checks)."""

    def _check_grad(self, grad) -> np.ndarray:
        out = self._saved_output_shape()
        if out is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(): run a forward pass first")
        if self._backend.device is not None:
            return self._device_grad(grad, out)
        return self._host_grad(grad, out)

    def _host_grad(self, grad, out: tuple) -> np.ndarray:
        if not isinstance(grad, np.ndarray):
            grad = np.asarray(grad)
        if grad.shape != out:
            raise ValueError(
                f"{type(self).__name__}.backward() got a gradient of shape {grad.shape}, "
                f"expected {out} (the shape of the latest output)"
            )
        if grad.dtype.kind not in "fiub":
            raise TypeError(f"the gradient must be numeric, got dtype {grad.dtype}")
        return np.ascontiguousarray(grad, dtype=self._dtype)

    def _device_grad(self, grad, out: tuple):
        """_check_grad on a GPU back end: a DeviceArray is checked and used as it
        is; anything else is checked as on the CPU and uploaded."""
        be = self._backend
        assert isinstance(be, DeviceBackend)  # called for a back end whose device is not None
        if isinstance(grad, be.array_type):
            be.check_matrix(grad, "the gradient", out)
            return grad
        return be.asarray(self._host_grad(grad, out))

    def _saved_output_shape(self) -> tuple | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_features(self, in_features: int) -> int:  # pragma: no cover - abstract
        """How many features the output has for `in_features` input features (what
        Sequential's shapes, ``predict`` and ``summary`` ask each layer)."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------
    def _buf(self, key: str, shape: tuple) -> np.ndarray:
        """A reusable output buffer: allocated on first use or when the batch shape changes."""
        b = self._bufs.get(key)
        if b is None or b.shape != shape:
            b = self._bufs[key] = self._backend.empty(shape, self._dtype)
        return b

    def _matmul(self, a, b, out, trans_a=False, trans_b=False, beta=0.0) -> None:
        """out = op(a) @ op(b) + beta * out on this module's back end (timed under a profile)."""
        rec = self._prof
        if rec is None:
            self._backend.matmul_into(a, b, out, trans_a, trans_b, 1.0, beta)
            return
        t0 = _clock()
        self._backend.matmul_into(a, b, out, trans_a, trans_b, 1.0, beta)
        rec.matmul_s += _clock() - t0
        rec.matmul_calls += 1
        rec.flops += 2 * out.shape[0] * out.shape[1] * (a.shape[0] if trans_a else a.shape[1])

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _check_finite(x: np.ndarray, what: str) -> None:
    """ValueError if x holds NaN or infinity.  One fast reduction on the
    common path; the element-wise search only when something is wrong."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(x, axis=None)
    if np.isfinite(total):
        return
    if np.isnan(x).any():
        bad = np.argwhere(np.isnan(x))[0]
        raise ValueError(
            f"the {what} contains NaN (first at index {tuple(int(i) for i in bad)}); clean the data before training"
        )
    if np.isinf(x).any():
        raise ValueError(f"the {what} contains infinity; clean or rescale the data before training")
    # finite values whose sum overflowed: fine


def _check_number(
    value,
    name: str,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    high_inclusive: bool = True,
) -> float:
    """value as a float within bounds, or TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {value}")
    return v


def _device_alias_error(name) -> ValueError | None:
    """The error for a device name another framework uses ('gpu', 'cpu', 'cuda:0'): it names whygpu's back
    ends for it -- 'cuda' for the GPU, a kernel or 'numpy' for the CPU.  None for any other name."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in ("gpu", "device", "nvidia", "mps") or key.startswith(("cuda:", "gpu:")):
        return ValueError(
            f"unknown device {name!r}: use 'cuda' (the GPU back end; model.to('cuda')) or a CPU back end "
            f"({', '.join(_backend.backends())})"
        )
    if key == "cpu" or key.startswith("cpu:"):
        return ValueError(
            f"unknown device {name!r}: on the CPU a back end is named by its kernel -- 'openmp' (every core), "
            f"'packed' (one core), 'numpy' (NumPy's BLAS), ... ({', '.join(_backend.backends())}); 'cuda' is "
            "the GPU back end"
        )
    return None
