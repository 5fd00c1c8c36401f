"""The kernel table: which rungs of the ladder exist, what each one is, and
which are usable on this machine.  One row per rung, in teaching order.

Each kernel computes ``c = alpha * a @ b + beta * c`` in place on arrays that
_api.py has already checked, and says which layouts it accepts:
``"any"`` (any strides: packing or memoryviews cope) or ``"row-major"``
(rows must be contiguous; _api.py copies when they are not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

try:  # the compiled ladder; missing only in a broken or source-tree install
    import whygpu._core as _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    _core_error: str | None = str(exc)
else:
    _core_error = None

try:
    import whygpu._cython_matmul as _cython_matmul
except ImportError as exc:  # pragma: no cover
    _cython_matmul = None
    _cython_error: str | None = str(exc)
else:
    _cython_error = None

from . import _python_kernel

__all__ = ["Kernel", "KERNELS", "KernelUnavailableError", "available_kernels", "kernel_info", "get_kernel"]


class KernelUnavailableError(RuntimeError):
    """A kernel that exists in whygpu but cannot run on this machine or build."""


GemmFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float, float, int], None]


@dataclass(frozen=True)
class Kernel:
    name: str
    rung: int
    summary: str  # one line: what this rung changes
    layout: str  # "any" or "row-major"
    parallel: bool  # uses more than one thread
    run: GemmFn  # run(a, b, c, alpha, beta, threads)
    unavailable: Callable[[], str | None]  # None when usable, else why not
    device: str = "cpu"
    # What the products are computed in: None = the inputs' own dtype (CPU rungs),
    # else "float32", "tf32" or "bf16" (the CUDA rungs; whygpu.cuda.UNIT_ROUNDOFF).
    precision: str | None = None
    # Optional shortcut for a plain ``a @ b`` into a new array: fast(a, b,
    # threads) returns the result, or None when the arguments need the full
    # checks of _api.py (which then produce the precise error message).
    fast: Callable[[object, object, int], np.ndarray | None] | None = None

    @property
    def available(self) -> bool:
        return self.unavailable() is None


def _python(a, b, c, alpha, beta, threads):
    _python_kernel.gemm(a, b, c, alpha, beta)


def _cython(a, b, c, alpha, beta, threads):
    _cython_matmul.gemm(a, b, c, alpha, beta)


def _cpp(rung: int) -> GemmFn:
    def run(a, b, c, alpha, beta, threads):
        _core.gemm(rung, a, b, c, alpha, beta, threads)

    return run


def _cpp_fast(rung: int):
    def fast(a, b, threads):
        return _core.matmul_fast(rung, a, b, threads)

    return fast


def _need_core() -> str | None:
    return None if _core is not None else f"the compiled module whygpu._core failed to import: {_core_error}"


def _need_cython() -> str | None:
    return None if _cython_matmul is not None else f"whygpu._cython_matmul failed to import: {_cython_error}"


def _need_openmp() -> str | None:
    why = _need_core()
    if why is None and not _core.openmp_available():
        why = "whygpu was built without OpenMP (CMake's find_package(OpenMP) found nothing)"
    return why


_TABLE = [
    Kernel(
        "python",
        1,
        "pure Python triple loop over lists: the interpreter is the bottleneck",
        "any",
        False,
        _python,
        lambda: None,
    ),
    Kernel(
        "cython",
        2,
        "the same i-j-p loops compiled by Cython with typed memoryviews",
        "any",
        False,
        _cython,
        _need_cython,
    ),
    Kernel(
        "naive",
        3,
        "C++ i-j-k: the textbook loop and the oracle; strided walk down B's columns",
        "any",
        False,
        _cpp(3),
        _need_core,
        fast=_cpp_fast(3),
    ),
    Kernel(
        "reordered",
        4,
        "C++ i-k-j: unit-stride inner loop the compiler vectorizes",
        "row-major",
        False,
        _cpp(4),
        _need_core,
    ),
    Kernel(
        "blocked",
        5,
        "C++ i-k-j in cache-sized tiles, so B is reused from L2 instead of DRAM",
        "row-major",
        False,
        _cpp(5),
        _need_core,
    ),
    Kernel(
        "packed",
        6,
        "Goto/BLIS loops: packed panels and a SIMD register-tiled FMA micro-kernel",
        "any",
        False,
        _cpp(6),
        _need_core,
        fast=_cpp_fast(6),
    ),
    Kernel(
        "openmp",
        7,
        "the packed kernel on all cores: OpenMP over the tiles of C",
        "any",
        True,
        _cpp(7),
        _need_openmp,
        fast=_cpp_fast(7),
    ),
]
KERNELS = {k.name: k for k in _TABLE}


def register_kernel(kernel: Kernel) -> None:
    """Add a kernel to the table (used by optional back ends such as CUDA)."""
    if kernel.name in KERNELS:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    _TABLE.append(kernel)
    _TABLE.sort(key=lambda k: k.rung)
    KERNELS[kernel.name] = kernel


def _check_device(device) -> None:
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")


def all_kernels(device: str | None = None) -> list:
    """Every kernel whygpu knows, usable here or not, in ladder order
    (only those running on `device`, 'cpu' or 'cuda', when given)."""
    _check_device(device)
    return [k.name for k in _TABLE if device is None or k.device == device]


def available_kernels(device: str | None = None) -> list:
    """The kernel names usable on this machine, in ladder order (slowest first);
    only those running on `device` ('cpu' or 'cuda') when given."""
    _check_device(device)
    return [k.name for k in _TABLE if (device is None or k.device == device) and k.available]


def unknown_kernel_message(name) -> str:
    """What to say about a kernel name whygpu does not know: the kernels usable here, then
    the ones known but unusable here (the CUDA rungs without a GPU) with the reason."""
    usable = [k.name for k in _TABLE if k.available]
    elsewhere: dict[str, list[str]] = {}  # reason -> kernels
    for k in _TABLE:
        why = k.unavailable()
        if why is not None:
            elsewhere.setdefault(why, []).append(k.name)
    text = f"unknown kernel {name!r}; kernels usable here: {', '.join(usable)}"
    for why, names in elsewhere.items():
        need = "need a GPU" if all(KERNELS[x].device == "cuda" for x in names) else "unusable here"
        text += f"; these {need} ({why}): {', '.join(names)}"
    return text


def get_kernel(name) -> Kernel:
    """The Kernel called `name`; ValueError for unknown names, KernelUnavailableError
    for known kernels that cannot run here (with the reason)."""
    if not isinstance(name, str):
        raise TypeError(f"kernel must be a string naming a kernel, got {type(name).__name__}")
    kernel = KERNELS.get(name)
    if kernel is None:
        raise ValueError(unknown_kernel_message(name))
    why = kernel.unavailable()
    if why is not None:
        raise KernelUnavailableError(f"kernel {name!r} is unavailable: {why}")
    return kernel


def default_kernel() -> str:
    """The kernel ``whygpu.matmul`` and ``whygpu.gemm`` use when none is named:
    ``openmp`` (every core), or ``packed`` (one core) in a build without OpenMP."""
    return "openmp" if KERNELS["openmp"].available else "packed"


def kernel_info(name: str) -> str:
    """A one-line description of kernel `name` (known kernels, available or not)."""
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(unknown_kernel_message(name))
    k = KERNELS[name]
    why = k.unavailable()
    tail = "" if why is None else f" [unavailable: {why}]"
    return f"rung {k.rung} ({k.device}): {k.summary}{tail}"
