"""The MPI run this process belongs to: init, rank, size, local_rank, comm, barrier.

Started with ``mpiexec -n 4 python train.py`` the script runs four times, as
ranks 0..3 of one MPI "world"; started with plain ``python train.py`` it is
the only rank of a world of size 1, and everything here still works.
"""

from __future__ import annotations

try:
    from mpi4py import MPI
except (ImportError, RuntimeError, OSError):  # mpi4py missing, or it found no MPI library
    raise ImportError("whygpu.distributed needs mpi4py and an MPI library: pip install mpi4py mpich") from None

__all__ = ["init", "rank", "size", "local_rank", "comm", "barrier", "gpu", "MPI"]

_world: MPI.Intracomm | None = None
_local_rank = 0
_gpu: int | None = None


def init() -> MPI.Intracomm:
    """Join the MPI run (idempotent: later calls return the same communicator).

    Importing mpi4py has already called MPI_Init; this picks the communicator,
    finds this rank's number among the ranks on its node (``local_rank``),
    installs the failure handling (an uncaught exception on one rank aborts
    all of them instead of leaving the others waiting forever) and, where
    whygpu has CUDA, makes GPU ``local_rank % device_count`` this process's
    GPU.  Call it before putting a model on ``cuda``.
    """
    global _world, _local_rank, _gpu
    if _world is not None:
        return _world
    world = MPI.COMM_WORLD
    # The ranks that share this node's memory: Split_type groups them, numbered from 0.
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    _local_rank = node.Get_rank()
    node.Free()
    from ._failure import install

    install(world)
    _gpu = _select_gpu(_local_rank)
    _world = world
    return world


def _select_gpu(local: int) -> int | None:
    """GPU ``local % device_count`` for this rank (several ranks may share one); None without a GPU."""
    from .. import cuda

    if not cuda.is_available():
        return None
    n = cuda.device_count()
    if n == 0:
        return None
    dev = local % n
    cuda.set_device(dev)
    return dev


def comm() -> MPI.Intracomm:
    """The communicator whygpu.distributed uses (MPI.COMM_WORLD)."""
    return init()


def rank() -> int:
    """This process's number, 0 .. size() - 1 (0 without mpiexec)."""
    return init().Get_rank()


def size() -> int:
    """How many processes (ranks) the run has (1 without mpiexec)."""
    return init().Get_size()


def local_rank() -> int:
    """This process's number among the ranks on its node (it picks the GPU)."""
    init()
    return _local_rank


def gpu() -> int | None:
    """The GPU this rank uses (``local_rank() % device_count``), or None where there is none."""
    init()
    return _gpu


def barrier() -> None:
    """Wait until every rank has reached this call."""
    init().Barrier()
