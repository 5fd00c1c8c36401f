"""A grid of ranks: data parallelism outside, the model split (tensor or pipeline parallel) inside.

With P = dp x inner ranks, rank ``q`` sits at row ``q // inner`` (its data-parallel replica) and column
``q % inner`` (its tensor slice or pipeline stage), as Megatron-LM lays out its groups: the ranks that
split one model are neighbours (on a real machine, the GPUs of one NVLink node), and the ranks that hold
the same slice of different replicas form the data-parallel group that sums their gradients::

    P = 4, inner = 2 (tensor or pipeline):   replica 0: ranks 0 1      data-parallel groups: {0, 2}
                                             replica 1: ranks 2 3                            {1, 3}

``grid(inner=2)`` returns this rank's two sub-communicators (``MPI_Comm_split``): ``split`` (the ranks of
its replica: pass it to :func:`tensor_parallel` or :class:`Pipeline`) and ``data`` (the ranks holding the
same slice or stage: pass it to :class:`DataParallel` or ``Pipeline(data_comm=...)``).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from . import _runtime

__all__ = ["Grid", "grid"]


class Grid(NamedTuple):
    """This rank's place in a dp x inner grid: its two communicators and its coordinates."""

    data: Any  # the data-parallel group: the same slice/stage in every replica (size dp)
    split: Any  # this replica's ranks, that split the model (size inner)
    dp: int  # how many replicas
    inner: int  # how many ranks split each replica
    replica: int  # this rank's row: its rank in ``split``'s group number, 0 .. dp - 1
    position: int  # this rank's column: its rank in ``split``, 0 .. inner - 1


def grid(inner: int, comm: Any = None) -> Grid:
    """Cut ``comm`` (default: every rank) into dp = size / inner replicas of ``inner`` neighbouring ranks
    each (a collective: every rank must call it with the same ``inner``)."""
    comm = _runtime.init() if comm is None else comm
    if isinstance(inner, bool) or not isinstance(inner, numbers.Integral) or int(inner) < 1:
        raise ValueError(f"inner (the ranks that split one model) must be a whole number >= 1, got {inner!r}")
    inner = int(inner)
    size, rank = comm.Get_size(), comm.Get_rank()
    every = comm.allgather(inner)  # a rank that disagrees would make Split hang or mismatch
    if any(v != inner for v in every):
        raise ValueError(f"grid: the ranks asked for different inner sizes {every}; every rank must pass the same")
    if size % inner:
        raise ValueError(f"grid: {size} ranks do not divide into replicas of {inner} (size must be a multiple)")
    replica, position = divmod(rank, inner)
    split = comm.Split(color=replica, key=position)  # ranks replica*inner .. replica*inner + inner - 1
    data = comm.Split(color=position, key=replica)  # ranks position, position + inner, ...
    return Grid(data, split, size // inner, inner, replica, position)
