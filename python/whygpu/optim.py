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

import numpy as np

from .nn._module import _check_number
from .nn._optimizer import Optimizer

__all__ = ["Optimizer", "SGD", "Adam"]


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum and L2 weight decay.

    ``g = grad + weight_decay * p``; without momentum ``p -= lr * g``; with
    it ``v = momentum * v + g`` and ``p -= lr * v`` (Nesterov:
    ``p -= lr * (g + momentum * v)``).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
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

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (
            _check_number(b1, "beta1", 0.0, True, 1.0, False),
            _check_number(b2, "beta2", 0.0, True, 1.0, False),
        )
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
        return (
            [self._state(self._m, i, p) for i, p in enumerate(self.params)],
            [self._state(self._v, i, p) for i, p in enumerate(self.params)],
        )

    def _hyper(self):
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        return [self.lr / bc1, b1, b2, self.eps, self.weight_decay, 1.0 / bc2**0.5]

    def _update(self, i, p, g):
        b1, b2 = self.betas
        m = self._state(self._m, i, p)
        v = self._state(self._v, i, p)
        p._backend.adam_update(
            p._data, g, m, v, self.lr, b1, b2, self.eps, self.weight_decay, 1.0 - b1**self.t, 1.0 - b2**self.t
        )

    def __repr__(self):
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps})"
