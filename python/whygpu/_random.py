"""One random-number generator for everything random in whygpu.nn: weight
initialisation, dropout masks, shuffling in ``fit`` and the generated data
sets' default seeds.  :func:`manual_seed` resets it, so a script that calls
``whygpu.manual_seed(0)`` first gives the same numbers every run, on every
back end (weights are drawn in float64 and then rounded to the model's dtype).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["manual_seed", "get_rng", "get_rng_state", "set_rng_state"]

_rng = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed whygpu's random-number generator (like ``torch.manual_seed``).

    Returns the new generator (a :class:`numpy.random.Generator`).
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _rng = np.random.default_rng(int(seed))
    return _rng


def get_rng() -> np.random.Generator:
    """The generator whygpu.nn draws from now."""
    return _rng


def get_rng_state() -> dict:
    """The generator's state (like ``torch.get_rng_state``): a dict of plain numbers that
    :func:`set_rng_state` restores, so the draws after it (Dropout masks, ``fit``'s
    shuffling) repeat.  Checkpoints hold it."""
    return dict(_rng.bit_generator.state)


def set_rng_state(state: dict) -> None:
    """Restore a state from :func:`get_rng_state` (in place: the generator ``get_rng()``
    returned keeps drawing, from the restored state)."""
    global _rng
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise TypeError(f"set_rng_state takes a dict from whygpu.get_rng_state(), got {type(state).__name__}")
    name = state["bit_generator"]
    gen = _rng
    if type(gen.bit_generator).__name__ != name:
        bits = getattr(np.random, str(name), None)
        if not (isinstance(bits, type) and issubclass(bits, np.random.BitGenerator)):
            raise ValueError(f"the saved random state is of an unknown generator {name!r}")
        gen = np.random.Generator(bits())
    try:
        gen.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"not a valid {name} random state: {e}") from None
    _rng = gen
