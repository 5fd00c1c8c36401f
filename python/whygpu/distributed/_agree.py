"""What every rank must agree on before a collective, checked with one small allgather.

(being written: agree_fit)
"""

from __future__ import annotations


def agree_fit(dp, X, y, val, epochs: int, batch_size: int, shuffle: bool) -> None:
    """DataParallel.fit's start: every rank was given the same data set length, shapes and dtypes,
    batch size, epochs, shuffle and validation setting; else the same ValueError on every rank."""
    raise NotImplementedError
