"""Which rows of each global batch a rank takes (:func:`share`), and Dropout drawing the whole batch's
mask while a rank keeps its rows (:func:`_batch_rows`), so P ranks compute what one process does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..nn._sequential import Sequential
from ..nn.layers import Dropout

__all__ = ["share"]


def _dropouts(model: Sequential) -> list[Dropout]:
    """The model's Dropout layers that draw a mask now (training mode, p > 0)."""
    return [m for m in model.layers if isinstance(m, Dropout) and m.training and m.p > 0.0]


@contextlib.contextmanager
def _batch_rows(model: Sequential, first: int, rows: int) -> Iterator[None]:
    """While it lasts, the model's input is rows [first, ...) of a batch of ``rows``: Dropout draws
    the whole batch's mask and keeps those rows."""
    layers = [m for m in model.layers if isinstance(m, Dropout)]
    for m in layers:
        m._rows = (first, rows)
    try:
        yield
    finally:
        for m in layers:
            m._rows = None


def share(n: int, ranks: int, rank: int) -> tuple[int, int]:
    """This rank's contiguous part [start, stop) of n samples, as np.array_split cuts them:
    the first n % ranks ranks get one more (and a rank gets none when n < ranks)."""
    q, r = divmod(n, ranks)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)
