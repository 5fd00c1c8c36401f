"""One random-number generator for everything random in whygpu.nn: weight
initialisation, dropout masks, shuffling in ``fit`` and the generated data
sets' default seeds.  :func:`manual_seed` resets it, so a script that calls
``whygpu.manual_seed(0)`` first gives the same numbers every run, on every
back end (weights are drawn in float64 and then rounded to the model's dtype).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["manual_seed", "get_rng"]

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
