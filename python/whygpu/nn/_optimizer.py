"""The optimizer base class, :class:`whygpu.optim.Optimizer` (re-exported there with
SGD and Adam): it lives below ``whygpu.optim`` so that ``fit`` and ``GraphStep``
can recognise an optimizer without importing the optimizers."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import _profile
from ._module import Parameter, _check_number

__all__ = ["Optimizer"]

_clock = _profile._clock


class Optimizer:
    """Base class: holds the parameters and runs ``_update`` on each in ``step``."""

    _kind: str | None = None  # "sgd" / "adam": the one-call update a compiled or GPU back end has for this optimizer

    def __init__(self, params: Iterable[Parameter], lr: float):
        if isinstance(params, Parameter):
            params = [params]
        try:
            self.params: list[Parameter] = list(params)
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
        self._steps = 0  # steps taken and states loaded: a sharded optimizer's consolidated state says which it holds

    def zero_grad(self) -> None:
        """Zero the gradients of every parameter this optimizer updates."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Update every parameter from its current gradient."""
        prof = _profile._active
        t0, x0 = (_clock(), prof.transfer_s) if prof is not None else (0.0, 0.0)
        self._begin_step()
        self._steps += 1
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

    # -- saving and loading (see _state.py) -----------------------------------------------
    def state_dict(self) -> dict:
        """The state (SGD's momentum buffers; Adam's two moments and its step count) and the
        hyperparameters, keyed by each parameter's index in the list the optimizer was made on,
        as PyTorch's: ``{"state": {0: {"exp_avg": ..., ...}}, "param_groups": [{"lr": ..., ...}]}``."""
        from ._state import optimizer_state_dict

        return optimizer_state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Load a state from :meth:`state_dict` (or a sharded optimizer's consolidated one): the
        state arrays (into each parameter's memory, host or GPU) and the hyperparameters.
        Checked first: a state of another optimizer or model raises ``whygpu.CheckpointError``
        and changes nothing."""
        self._prepare_load(state)()

    def _prepare_load(self, state: dict):
        """load_state_dict's checks: a function that assigns the checked state (nothing before)."""
        from ._state import assign_optimizer_state, check_optimizer_state

        per, hyper, step = check_optimizer_state(
            self, state, [p.shape for p in self.params], [p.dtype for p in self.params]
        )
        return lambda: assign_optimizer_state(self, per, hyper, step)

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
