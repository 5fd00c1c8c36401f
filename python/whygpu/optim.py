"""Optimizers: how the gradients become parameter updates.

    opt = whygpu.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...
    model.zero_grad(); model.backward(loss_fn.backward()); opt.step()

Each update is one fused pass over the parameter, its gradient and its state
on the parameter's back end (the model's, set by ``model.to``): NumPy for the
``numpy`` back end; for the kernel back ends one compiled, OpenMP-parallel
call updates every parameter at once, and on ``cuda`` (where the state --
momentum, Adam's averages -- lives in GPU memory too) one kernel launch does
(a call or launch per parameter costs more than the update of a small bias).
The formulas are PyTorch's.
"""
from __future__ import annotations

from typing import Iterable, List

import numpy as np

from .nn import _profile
from .nn._module import Parameter, _check_number

__all__ = ["Optimizer", "SGD", "Adam"]

_clock = _profile._clock


class Optimizer:
    """Base class: holds the parameters and runs ``_update`` on each in ``step``."""

    _kind = None  # "sgd" / "adam": the one-call update a compiled or GPU back end has for this optimizer

    def __init__(self, params: Iterable[Parameter], lr: float):
        if isinstance(params, Parameter):
            params = [params]
        try:
            self.params: List[Parameter] = list(params)
        except TypeError:
            raise TypeError("params must be an iterable of Parameters, e.g. model.parameters()") from None
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"params must be whygpu.nn Parameters (model.parameters()), got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("a parameter appears more than once in the list")
        self.lr = _check_number(lr, "lr", 0.0, True)
        # The p._data each parameter's state was last made for: when model.to()
        # converts or moves a parameter, its state follows at the next step.
        self._placed: list = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Zero the gradients of every parameter this optimizer updates."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Update every parameter from its current gradient."""
        prof = _profile._active
        t0, x0 = (_clock(), prof.transfer_s) if prof is not None else (0.0, 0.0)
        self._begin_step()
        be = self._fused_backend()
        if be is not None:
            self._fused_step(be)
        else:
            for i, p in enumerate(self.params):
                if self._placed[i] is not p._data:
                    self._follow(i, p)
                self._update(i, p, p._grad_array())  # zeros if no backward pass since zero_grad
        if prof is not None:
            prof.optimizer.backward_s += _clock() - t0 - (prof.transfer_s - x0)  # copies have their own row
            prof.steps += 1

    def _begin_step(self) -> None:
        pass

    # -- every parameter in one call (compiled back ends) or one launch (GPU) ----------
    def _fused_backend(self):
        """The back end all parameters are on, when it can update them all in one call; else None."""
        if self._kind is None:
            return None
        be = self.params[0]._backend
        if not hasattr(be, "optimizer_update"):
            return None
        return be if all(p._backend is be for p in self.params) else None

    def _fused_step(self, be, hyper_dev=None) -> None:
        """One call (one launch on a GPU) updates all parameters.  With ``hyper_dev`` (a float32
        DeviceArray holding ``_hyper()``) the kernel reads the hyperparameters
        from GPU memory: what a CUDA graph needs, since it replays a launch
        with the arguments it was captured with (see whygpu.nn.GraphStep)."""
        for i, p in enumerate(self.params):
            if self._placed[i] is not p._data:
                self._follow(i, p)
        grads = [p._grad_array() for p in self.params]  # zeros if no backward pass since zero_grad
        s1, s2 = self._device_states()
        be.optimizer_update(self._kind, [p._data for p in self.params], grads, s1, s2, self._hyper(), hyper_dev)

    def _device_states(self):  # pragma: no cover - abstract: (state1 list or None, state2 list or None)
        raise NotImplementedError

    def _hyper(self) -> list:  # pragma: no cover - abstract: the numbers the one-launch kernel takes
        raise NotImplementedError

    def _states(self) -> list:
        """The lists of per-parameter state arrays (subclasses say which)."""
        return []

    def _follow(self, i: int, p: Parameter) -> None:
        """Convert parameter i's state to p's dtype and memory (host or GPU)."""
        for store in self._states():
            s = store[i]
            if s is not None and (s.dtype != p.dtype or type(s) is not type(p._data)):
                host = s if isinstance(s, np.ndarray) else s.to_host()  # from the GPU, if it was there
                store[i] = p._backend.asarray(host.astype(p.dtype))
        self._placed[i] = p._data

    def _state(self, store: list, i: int, p: Parameter) -> np.ndarray:
        """Per-parameter state array i of `store` (zeros of p's shape and dtype, in
        the memory of p's back end)."""
        s = store[i]
        if s is None:
            s = store[i] = p._backend.zeros(p.shape, p.dtype)
        return s

    def _update(self, i: int, p: Parameter, g: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum and L2 weight decay.

    ``g = grad + weight_decay * p``; without momentum ``p -= lr * g``; with
    it ``v = momentum * v + g`` and ``p -= lr * v`` (Nesterov:
    ``p -= lr * (g + momentum * v)``).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, lr)
        self.momentum = _check_number(momentum, "momentum", 0.0, True)
        self.weight_decay = _check_number(weight_decay, "weight_decay", 0.0, True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self._velocity: list = [None] * len(self.params)

    def _states(self):
        return [self._velocity]

    _kind = "sgd"

    def _device_states(self):
        if self.momentum == 0.0:
            return None, None
        return [self._state(self._velocity, i, p) for i, p in enumerate(self.params)], None

    def _hyper(self):
        return [self.lr, self.momentum, self.weight_decay, 1.0 if self.nesterov else 0.0]

    def _update(self, i, p, g):
        buf = self._state(self._velocity, i, p) if self.momentum != 0.0 else None
        p._backend.sgd_update(p._data, g, buf, self.lr, self.momentum, self.weight_decay, self.nesterov)

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay})"


class Adam(Optimizer):
    """Adam: per-parameter step sizes from running averages of the gradient
    (``m``) and of its square (``v``), bias-corrected for the first steps.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_check_number(b1, "beta1", 0.0, True, 1.0, False),
                      _check_number(b2, "beta2", 0.0, True, 1.0, False))
        self.eps = _check_number(eps, "eps", 0.0, True)
        self.weight_decay = _check_number(weight_decay, "weight_decay", 0.0, True)
        self.t = 0
        self._m: list = [None] * len(self.params)
        self._v: list = [None] * len(self.params)

    def _states(self):
        return [self._m, self._v]

    _kind = "adam"

    def _begin_step(self):
        self.t += 1

    def _device_states(self):
        return ([self._state(self._m, i, p) for i, p in enumerate(self.params)],
                [self._state(self._v, i, p) for i, p in enumerate(self.params)])

    def _hyper(self):
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        return [self.lr / bc1, b1, b2, self.eps, self.weight_decay, 1.0 / bc2 ** 0.5]

    def _update(self, i, p, g):
        b1, b2 = self.betas
        m = self._state(self._m, i, p)
        v = self._state(self._v, i, p)
        p._backend.adam_update(p._data, g, m, v, self.lr, b1, b2, self.eps, self.weight_decay,
                               1.0 - b1 ** self.t, 1.0 - b2 ** self.t)

    def __repr__(self):
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps})"
