"""whygpu.cuda: the kernel ladder on an NVIDIA GPU -- optional at build time
and at run time.

The CUDA rungs (``cuda_naive`` ... ``cuda_warptile``, rungs 8-14, float32 on
the ordinary cores; ``cuda_mma`` / ``cuda_mma_bf16`` (15) and ``cuda_wgmma``
(16) on the tensor cores, in TF32 or bfloat16; sources in ``csrc/cuda/``)
join :func:`whygpu.available_kernels` only where a GPU is usable, and run
through the same :func:`whygpu.matmul` / :func:`whygpu.gemm` as the CPU rungs:
NumPy arrays are copied to the GPU, multiplied and copied back.  To keep data
on the GPU, use :class:`DeviceArray` and this module's
:func:`gemm` / :func:`matmul`::

    >>> import numpy as np, whygpu.cuda as wc            # doctest: +SKIP
    >>> wc.is_available(), wc.unavailable_reason()       # doctest: +SKIP
    (True, None)
    >>> a = wc.to_device(np.ones((512, 784), np.float32))   # explicit transfer in
    >>> b = wc.to_device(np.ones((784, 256), np.float32))
    >>> c = wc.matmul(a, b, kernel="cuda_warptile")          # stays on the GPU
    >>> c.to_host()[0, 0]                                    # explicit transfer out
    784.0

Kernel launches are asynchronous, like CUDA itself: :func:`gemm` returns as
soon as the work is queued, and :meth:`DeviceArray.to_host` or
:func:`synchronize` wait for it -- time those, not the launch.

Errors: a CUDA error raises :class:`CudaError` (a RuntimeError) with CUDA's
own message; running out of GPU memory raises MemoryError; anything that
needs a GPU where there is none raises :class:`CudaUnavailableError` saying
why (no CUDA in this build, no driver, no device, a GPU too old for the
compiled code).  Nothing here touches the GPU at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # at run time DeviceArray comes from the compiled module on first use (__getattr__)
    from ._cuda import DeviceArray

from ._registry import Kernel, register_kernel
from ._vendor import vendor_library, vendor_matmul

__all__ = [
    "is_available",
    "unavailable_reason",
    "kernels",
    "device_info",
    "synchronize",
    "memory_info",
    "device_count",
    "set_device",
    "DeviceArray",
    "to_device",
    "from_dlpack",
    "empty",
    "zeros",
    "pinned_empty",
    "pinned_array",
    "is_pinned",
    "gemm",
    "matmul",
    "vendor_library",
    "vendor_matmul",
    "CudaError",
    "CudaUnavailableError",
    "LADDER",
    "DEFAULT_KERNEL",
    "PRECISIONS",
    "UNIT_ROUNDOFF",
    "TENSOR_CORE_KERNELS",
    "precision_of",
    "kernel_unavailable_reason",
]


class CudaError(RuntimeError):
    """An error reported by the CUDA runtime (the message is CUDA's)."""


class CudaUnavailableError(RuntimeError):
    """Something needed a GPU and there is none usable here (the message says why)."""


# The CUDA rungs, in teaching order: (name, rung, what it changes).  Known to
# whygpu whether or not they were compiled, so kernel_info() can describe them.
LADDER = [
    ("cuda_naive", 8, "one GPU thread per element of C; a warp's loads of A are 32 rows apart (uncoalesced)"),
    ("cuda_coalesced", 9, "a warp's threads take neighbouring columns: coalesced loads of B and stores of C"),
    ("cuda_smem", 10, "32x32 tiles of A and B staged in shared memory: each global load is used 32 times"),
    ("cuda_1d_tiling", 11, "8 outputs per thread down a column: one shared-memory load of B feeds 8 FMAs"),
    ("cuda_2d_tiling", 12, "8x8 outputs per thread from 8+8 registers: the outer-product micro-kernel"),
    ("cuda_vectorized", 13, "16-byte float4 loads and stores, from global and shared memory"),
    ("cuda_warptile", 14, "warp-level tiling (conflict-free shared reads), double-buffered tiles, L2-friendly order"),
    (
        "cuda_mma",
        15,
        "tensor cores: warp-level mma.sync in TF32 (float32 data cut to an 11-bit significand), "
        "ldmatrix fragments, 3-stage cp.async pipeline",
    ),
    ("cuda_mma_bf16", 15, "the same mma.sync kernel in bfloat16 (8-bit significand): twice TF32's tensor-core rate"),
    (
        "cuda_wgmma",
        16,
        "Hopper tensor cores: warpgroup wgmma fed by TMA through an mbarrier ring, producer and "
        "consumer warps (bfloat16; sm_90a only)",
    ),
]
_RUNGS = {name: rung for name, rung, _ in LADDER}
DEFAULT_KERNEL = "cuda_warptile"

# What the products are computed in (the sums are float32 everywhere), and its
# unit roundoff u: a product of two operands rounded to it is off by at most
# (2u + u**2) relative.  Rungs 8-14 compute in float32 on the ordinary cores.
PRECISIONS = ("float32", "tf32", "bf16")
UNIT_ROUNDOFF = {"float32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8}
_PRECISION_CODE = {"float32": 0, "tf32": 1, "bf16": 2}
_KERNEL_PRECISION = {"cuda_mma": "tf32", "cuda_mma_bf16": "bf16", "cuda_wgmma": "bf16"}
_RUNG_PRECISIONS = {15: ("tf32", "bf16"), 16: ("bf16",)}  # the rest: ("float32",)
TENSOR_CORE_KERNELS = ("cuda_mma", "cuda_mma_bf16", "cuda_wgmma")


def precision_of(kernel: str) -> str:
    """The precision a CUDA kernel computes its products in unless told otherwise:
    'float32' (rungs 8-14), 'tf32' (``cuda_mma``) or 'bf16' (``cuda_mma_bf16``, ``cuda_wgmma``)."""
    if kernel not in _RUNGS:
        raise ValueError(f"{kernel!r} is not a CUDA kernel; the CUDA kernels are: {', '.join(_RUNGS)}")
    return _KERNEL_PRECISION.get(kernel, "float32")


def _resolve_precision(kernel: str, precision) -> str:
    if precision is None:
        return precision_of(kernel)
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)} (or None: the kernel's own), got {precision!r}"
        )
    accepted = _RUNG_PRECISIONS.get(_RUNGS[kernel], ("float32",))
    if precision not in accepted:
        if _RUNGS[kernel] < 15:
            raise ValueError(
                f"{kernel} computes in float32 only; {precision} products need a tensor-core "
                f"kernel: {', '.join(TENSOR_CORE_KERNELS)}"
            )
        raise ValueError(f"{kernel} computes in {' or '.join(accepted)}, not {precision}")
    return precision


# ---- The compiled module, imported on first use ----------------------------------------


@functools.cache
def _load():
    """(module, None) or (None, why it is missing)."""
    try:
        return importlib.import_module("whygpu._cuda"), None
    except ModuleNotFoundError as exc:
        if exc.name not in ("whygpu._cuda", "_cuda"):
            return None, f"whygpu._cuda failed to import: {exc}"
        return None, (
            "whygpu was built without CUDA (no CUDA compiler was found at build time, or the build set WHYGPU_CUDA=OFF)"
        )
    except ImportError as exc:  # pragma: no cover - a broken build
        return None, f"whygpu._cuda failed to import: {exc}"


def _module():
    """The compiled module, or CudaUnavailableError saying why there is none."""
    mod, why = _load()
    if mod is None:
        raise CudaUnavailableError(f"CUDA is unavailable: {why}")
    return mod


def _parse_arch(entry: str):
    """'90-real' -> (90, '', real, virtual); None for entries like 'native' or 'all'."""
    m = re.fullmatch(r"(\d+)([af]?)(?:-(real|virtual))?", entry.strip())
    if m is None:
        return None
    kind = m.group(3)
    return int(m.group(1)), m.group(2), kind in (None, "real"), kind in (None, "virtual")


def _arch_reason(cc, archs: str, name: str = "the GPU") -> str | None:
    """None if code compiled for `archs` (CMAKE_CUDA_ARCHITECTURES) runs on compute
    capability `cc` = (major, minor); else a sentence saying it does not."""
    dev = cc[0] * 10 + cc[1]
    entries = [e for e in re.split(r"[;,]", archs) if e.strip()]
    parsed = [_parse_arch(e) for e in entries]
    if not entries or any(p is None for p in parsed):
        return None  # 'native', 'all', ...: cannot tell here; a launch would say
    for num, suffix, real, virtual in parsed:
        if suffix:  # sm_90a / sm_100f: arch-specific machine code, that chip (family) only
            if real and num // 10 == dev // 10 and (num == dev or suffix == "f" and num <= dev):
                return None
            continue
        if real and num // 10 == dev // 10 and num <= dev:  # cubins run on later minors of one major
            return None
        if virtual and num <= dev:  # PTX is compiled by the driver for any later GPU
            return None
    return (
        f"{name} has compute capability {cc[0]}.{cc[1]}, and none of the architectures whygpu's "
        f"CUDA kernels were compiled for ({archs}) runs on it; rebuild with "
        f"-Ccmake.define.CMAKE_CUDA_ARCHITECTURES={dev}-real"
    )


@functools.cache
def unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run here, as a sentence; None when they can.

    Checks, in order: that whygpu was built with CUDA, that an NVIDIA driver
    is installed and new enough, that it sees a GPU, and that the compiled
    code can run on that GPU.  Asks the driver once (no CUDA context is
    created) and remembers the answer.
    """
    mod, why = _load()
    if mod is None:
        return why
    why = mod.unavailable_reason()
    if why:
        return why
    info = mod.device_info()
    return _arch_reason(info["compute_capability"], mod.compiled_architectures(), f"the GPU ({info['name']})")


def is_available() -> bool:
    """True when the CUDA kernels can run here (see :func:`unavailable_reason`)."""
    return unavailable_reason() is None


def _require():
    why = unavailable_reason()
    if why is not None:
        raise CudaUnavailableError(f"CUDA is unavailable: {why}")
    return _module()


def kernels() -> list:
    """Names of the CUDA GEMM kernels compiled into this build (empty without CUDA),
    whether or not a GPU is present."""
    mod, _ = _load()
    if mod is None:
        return []
    names = []
    for name in mod.kernels():  # one entry per compiled rung; rung 15 also runs in bf16
        names.append(name)
        if name == "cuda_mma":
            names.append("cuda_mma_bf16")
    return names


def device_count() -> int:
    """How many GPUs this process sees (0 without a usable GPU)."""
    return int(_module().device_count()) if is_available() else 0


def set_device(device: int) -> None:
    """Make GPU ``device`` (0 .. device_count() - 1) the one this process uses from now on.
    Call it before anything is put on a GPU; ``whygpu.distributed.init()`` calls it
    with the rank's number on its node, so that ranks sharing a node spread over its GPUs."""
    _require().set_device(int(device))


def device_info() -> dict | None:
    """Name, compute capability, multiprocessors, memory, versions of the GPU; None without one."""
    if not is_available():
        return None
    info = dict(_module().device_info())
    info["compiled_architectures"] = _module().compiled_architectures()
    return info


def synchronize() -> None:
    """Wait for all queued GPU work; raises CudaError for an error a kernel hit."""
    _require().synchronize()


def memory_info() -> tuple:
    """(free, total) bytes of GPU memory."""
    return tuple(_require().memory_info())


# ---- Device arrays ------------------------------------------------------------------------


class _MissingDeviceArray:
    """Stands in for DeviceArray in a build without CUDA: creating one says why not."""

    def __init__(self, *args, **kwargs):
        _module()

    @staticmethod
    def from_host(array):
        _module()


def __getattr__(name):  # PEP 562: DeviceArray and nn_ops import the compiled module on first use
    if name == "DeviceArray":
        mod, _ = _load()
        return mod.DeviceArray if mod is not None else _MissingDeviceArray
    if name == "nn_ops":
        return _module().nn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _device_array_type():
    mod, _ = _load()
    return mod.DeviceArray if mod is not None else _MissingDeviceArray


def from_dlpack(x) -> DeviceArray:
    """A DeviceArray sharing the GPU memory of another library's CUDA array --
    a PyTorch tensor, a CuPy array, a JAX array -- through DLPack: no copy.

    The other way round, ``torch.from_dlpack(d)`` or ``cupy.from_dlpack(d)``
    take a DeviceArray ``d`` (it has ``__dlpack__`` and
    ``__dlpack_device__``, next to ``__cuda_array_interface__``).  The memory
    stays alive while either side uses it; writes through one are seen by the
    other.  Only C-contiguous arrays (a DeviceArray is dense, row-major) and
    the dtypes a DeviceArray holds; a host array raises TypeError (use
    :func:`to_device`).  ``x`` may also be a DLPack capsule (used once).
    """
    mod = _require()
    if hasattr(x, "__dlpack__"):
        if hasattr(x, "__dlpack_device__"):
            kind = x.__dlpack_device__()[0]
            if int(kind) != 2:  # kDLCUDA
                raise TypeError(
                    f"from_dlpack needs an array in CUDA memory; {type(x).__name__} is on DLPack "
                    f"device type {int(kind)} (a host array? use whygpu.cuda.to_device)"
                )
        try:
            cap = x.__dlpack__(stream=1)  # 1: the legacy default stream, where whygpu works
        except TypeError:  # a producer without the stream argument
            cap = x.__dlpack__()
    elif type(x).__name__ == "PyCapsule":
        cap = x
    else:
        raise TypeError(
            f"from_dlpack needs an object with __dlpack__ (a PyTorch, CuPy or JAX array on the GPU), "
            f"got {type(x).__name__}"
        )
    return mod.from_dlpack_capsule(cap)


def to_device(x) -> DeviceArray:
    """Copy a host array (any array-like of booleans, integers or floats) to a new
    DeviceArray of the same shape and dtype.  Waits until the copy is done."""
    mod = _require()
    arr = np.asarray(x)
    return mod.DeviceArray.from_host(arr)


def empty(shape, dtype=np.float32) -> DeviceArray:
    """An uninitialised DeviceArray."""
    return _require().DeviceArray(shape, np.dtype(dtype))


def zeros(shape, dtype=np.float32) -> DeviceArray:
    """A DeviceArray of zeros."""
    return _require().DeviceArray.zeros(shape, np.dtype(dtype))


def pinned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised NumPy array in page-locked ("pinned") host memory.

    Copies between it and a DeviceArray go straight to the GPU's copy engine
    (DMA) at the bus's full speed; ordinary (pageable) arrays are copied
    through whygpu's own pinned staging buffers, a little slower.  Keep data
    that crosses the bus every step (a training set) in pinned memory, but
    not too much of it: page-locked memory cannot be swapped out."""
    return _require().pinned_empty(shape, np.dtype(dtype))


def pinned_array(x) -> np.ndarray:
    """A copy of the array-like ``x`` in pinned host memory (see :func:`pinned_empty`)."""
    arr = np.asarray(x)
    out = pinned_empty(arr.shape, arr.dtype)
    np.copyto(out, arr)
    return out


def is_pinned(x) -> bool:
    """Whether the NumPy array ``x``'s memory is page-locked (pinned)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"is_pinned takes a numpy.ndarray, got {type(x).__name__}")
    return bool(_require().is_pinned(x))


# ---- GEMM on device arrays --------------------------------------------------------------


def _cuda_kernel(kernel) -> int:
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string naming a CUDA kernel, got {type(kernel).__name__}")
    rung = _RUNGS.get(kernel)
    if rung is None:
        raise ValueError(
            f"{kernel!r} is not a CUDA kernel; the CUDA kernels are: {', '.join(_RUNGS)} "
            f"(CPU kernels take NumPy arrays: whygpu.gemm(..., kernel={kernel!r}))"
        )
    if kernel not in kernels():
        raise CudaUnavailableError(f"kernel {kernel!r} is not compiled into this build")
    return rung


def _check_device_matrix(x, name: str):
    if not isinstance(x, _device_array_type()):
        raise TypeError(
            f"{name} must be a whygpu.cuda.DeviceArray, got {type(x).__name__} "
            f"(NumPy arrays: whygpu.gemm(..., kernel='cuda_...') copies them for you, "
            f"or move them with whygpu.cuda.to_device)"
        )
    if x.freed:
        raise ValueError(f"{name} has been freed")
    if x.dtype != np.float32:
        raise TypeError(f"{name} is {x.dtype}; the CUDA kernels compute in float32 only")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (a matrix), got shape {x.shape}")


def gemm(
    a,
    b,
    c=None,
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
    trans_a: bool = False,
    trans_b: bool = False,
    kernel: str = DEFAULT_KERNEL,
    split_k: int = 0,
    bias=None,
    relu: bool = False,
    precision: str | None = None,
):
    """``C = alpha * op(A) @ op(B) + beta * C`` on the GPU, all three float32
    :class:`DeviceArray` matrices; ``op(X)`` is ``X.T`` when ``trans_x``.

    ``c`` is updated in place and returned (``beta == 0`` overwrites it
    without reading it); when ``c`` is None a new array is returned and
    ``beta`` is ignored.  Asynchronous: returns once the kernel is queued.

    ``split_k`` (``cuda_warptile`` only, ignored by the other rungs): 0 lets
    the kernel cut k into slices when C has too few tiles to fill the GPU
    and k is long (a weight gradient over a large batch); s >= 1 forces s
    slices (1: no split) -- to see what splitting buys.

    Fused epilogue (every rung): ``bias`` (a float32 DeviceArray of n
    values) is then added to every row, and ``relu`` replaces C by
    ``max(C, 0)`` -- a dense layer's forward pass ``relu(x @ W.T + b)`` in
    one launch instead of three, and one pass over C instead of three.

    ``precision`` (tensor-core kernels): what the products are computed in --
    ``"tf32"`` or ``"bf16"`` on ``cuda_mma``, ``"bf16"`` on ``cuda_wgmma``;
    None takes the kernel's own (:func:`precision_of`).  The operands are
    rounded to it (float32 data stays float32 in memory; a bf16 copy is made
    for the kernel), the sums stay float32.  Rungs 8-14 accept only
    ``"float32"``.
    """
    _require()
    rung = _cuda_kernel(kernel)
    prec = _resolve_precision(kernel, precision)
    if isinstance(split_k, (bool, np.bool_)) or not isinstance(split_k, (int, np.integer)) or split_k < 0:
        raise ValueError(f"split_k must be 0 (chosen by shape) or an integer >= 1, got {split_k!r}")
    _check_device_matrix(a, "a")
    _check_device_matrix(b, "b")
    for flag, fname in ((trans_a, "trans_a"), (trans_b, "trans_b")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{fname} must be True or False, got {flag!r}")
    for val, vname in ((alpha, "alpha"), (beta, "beta")):
        if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, float, np.integer, np.floating)):
            raise TypeError(f"{vname} must be a real number, got {val!r}")
    (m, k) = a.shape[::-1] if trans_a else a.shape
    (k2, n) = b.shape[::-1] if trans_b else b.shape
    if k != k2:
        raise ValueError(
            f"inner dimensions do not match: op(a) is {(m, k)} and op(b) is {(k2, n)} (need (m, k) @ (k, n))"
        )
    if c is None:
        c = empty((m, n), np.float32)
        beta = 0.0
    else:
        _check_device_matrix(c, "c")
        if c.shape != (m, n):
            raise ValueError(f"c has shape {c.shape}, expected {(m, n)}")
        if c.shares_memory(a) or c.shares_memory(b):
            raise ValueError("c shares memory with a or b: the kernels read a and b while writing c")
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be True or False, got {relu!r}")
    if bias is not None:
        if not isinstance(bias, _device_array_type()):
            raise TypeError(f"bias must be a DeviceArray (or None), got {type(bias).__name__}")
        if bias.dtype != np.float32 or bias.shape != (n,):
            raise ValueError(f"bias must be a float32 DeviceArray of shape ({n},), got {bias!r}")
    _module().gemm(
        rung,
        a,
        b,
        c,
        float(alpha),
        float(beta),
        bool(trans_a),
        bool(trans_b),
        int(min(split_k, 1 << 30)),
        bias,
        bool(relu),
        _PRECISION_CODE[prec],
    )
    return c


def matmul(a, b, *, kernel: str = DEFAULT_KERNEL, out=None, precision: str | None = None):
    """``a @ b`` of two float32 DeviceArray matrices, on the GPU (see :func:`gemm`)."""
    return gemm(a, b, out, kernel=kernel, precision=precision)


# ---- NumPy arrays through whygpu.matmul / whygpu.gemm ----------------------------------------


def _upload_operand(x: np.ndarray):
    """op(X) as (DeviceArray of the stored matrix, transposed?): a transposed view
    goes up as it is stored, with the trans flag, instead of being copied."""
    if x.flags.c_contiguous:
        return to_device(x), False
    if x.T.flags.c_contiguous:
        return to_device(x.T), True
    return to_device(np.ascontiguousarray(x)), False


def _host_run(name: str):
    def run(a, b, c, alpha, beta, threads):  # the registry's signature; threads is a CPU notion
        if a.dtype != np.float32:
            raise TypeError(
                f"the CUDA kernels compute in float32 only, got {a.dtype} -- convert with .astype(np.float32)"
            )
        da, ta = _upload_operand(a)
        db, tb = _upload_operand(b)
        with da, db:
            dc = to_device(c) if beta != 0.0 else empty(c.shape, np.float32)
            with dc:
                gemm(da, db, dc, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb, kernel=name)
                if c.flags.c_contiguous and c.flags.writeable:
                    dc.to_host(out=c)
                else:
                    np.copyto(c, dc.to_host())

    return run


def _kernel_unavailable(name: str) -> str | None:
    why = unavailable_reason()
    if why is None and name not in kernels():
        why = f"this build's CUDA module has no kernel {name!r}"
    if why is None and name in TENSOR_CORE_KERNELS:  # the GPU must have these tensor cores (rung 16: Hopper)
        why = _tensor_core_reason(name) or None
    return why


def kernel_unavailable_reason(kernel: str) -> str | None:
    """Why CUDA kernel `kernel` cannot run here (no GPU, not compiled in, or --
    for the tensor-core rungs -- a GPU without those tensor cores: ``cuda_wgmma``
    needs a Hopper), as a sentence; None when it can."""
    if kernel not in _RUNGS:
        raise ValueError(f"{kernel!r} is not a CUDA kernel; the CUDA kernels are: {', '.join(_RUNGS)}")
    return _kernel_unavailable(kernel)


@functools.cache
def _tensor_core_reason(name: str) -> str:
    return _module().rung_unavailable(_RUNGS[name], _PRECISION_CODE[precision_of(name)])


def _register() -> None:
    for name, rung, summary in LADDER:
        register_kernel(
            Kernel(
                name,
                rung,
                summary,
                "any",
                True,
                _host_run(name),
                functools.partial(_kernel_unavailable, name),
                device="cuda",
                precision=precision_of(name),
            )
        )


_register()
