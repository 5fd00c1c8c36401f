"""whygpu.distributed: data-parallel (and tensor-parallel) training over MPI ranks (``mpiexec -n 4 python train.py``).

Needs mpi4py and an MPI library (``pip install mpi4py mpich``); importing it
without them raises ImportError saying so.  Nothing else in whygpu imports it.
"""

from __future__ import annotations

from ._grid import Grid, grid
from ._runtime import barrier, comm, gpu, init, local_rank, rank, size
from ._sharded import SHARDS, ShardedOptimizer
from .data_parallel import DataParallel, share
from .pipeline import Pipeline
from .tensor_parallel import ColumnParallelLinear, RowParallelLinear, TensorParallel, tensor_parallel

__all__ = [
    "init", "rank", "size", "local_rank", "comm", "barrier", "gpu", "DataParallel", "share", "ShardedOptimizer",
    "SHARDS", "tensor_parallel", "TensorParallel", "ColumnParallelLinear", "RowParallelLinear", "grid", "Grid",
    "Pipeline",
]  # fmt: skip
