"""whygpu: why parallel hardware speeds up deep learning, measured.

A ladder of hand-written matrix-multiplication kernels, each one idea
faster than the last::

    >>> import numpy as np, whygpu
    >>> whygpu.available_kernels()            # doctest: +SKIP
    ['python', 'cython', 'naive', 'reordered', 'blocked', 'packed', 'openmp']
    >>> a = np.ones((3, 4), np.float32); b = np.ones((4, 2), np.float32)
    >>> whygpu.matmul(a, b, kernel="packed")
    array([[4., 4.],
           [4., 4.],
           [4., 4.]], dtype=float32)
"""

from . import _idle_threads

# Idle OpenMP and OpenBLAS threads spin for a short, measured time after a call, not for milliseconds:
# both runtimes read that setting once, when loaded, which is here (see _idle_threads.py).
with _idle_threads.applied():
    import numpy  # noqa: F401  (loads NumPy's BLAS)

    from . import _registry  # noqa: F401  (loads whygpu._core, and with it OpenMP's runtime)

from . import (  # noqa: E402  (the training stack, on top of the kernels)
    cuda,  # registers the CUDA rungs (usable only where a GPU is); touches no GPU here
    datasets,
    nn,
    optim,
)
from ._api import gemm, matmul
from ._cpu import _warn_env, cpu_info, set_arch
from ._memory import TooLargeError
from ._random import get_rng_state, manual_seed, set_rng_state
from ._registry import KernelUnavailableError, all_kernels, available_kernels, default_kernel, kernel_info
from ._serialize import CheckpointError, load, save
from ._threads import ThreadsWarning, get_num_threads, set_num_threads
from ._version import __version__
from .explain import explain

__all__ = [
    "matmul",
    "gemm",
    "available_kernels",
    "all_kernels",
    "default_kernel",
    "kernel_info",
    "KernelUnavailableError",
    "TooLargeError",
    "ThreadsWarning",
    "cpu_info",
    "set_arch",
    "set_num_threads",
    "get_num_threads",
    "manual_seed",
    "get_rng_state",
    "set_rng_state",
    "save",
    "load",
    "CheckpointError",
    "nn",
    "optim",
    "datasets",
    "cuda",
    "explain",
    "__version__",
]

_warn_env()
del _warn_env
