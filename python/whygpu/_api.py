"""The public entry points, ``matmul`` and ``gemm``: argument checking with
clear errors, then one call into the chosen rung of the ladder.

Everything a user can pass is checked here, before any compiled code runs:
dtypes (float32 or float64, the same for all operands -- no silent
upcasting), dimensions, shapes, the output array, thread counts, kernel
names.  Odd layouts (transposed, sliced, Fortran-ordered, negative strides)
are handled, not rejected: the packed kernels read any strides; the simple
row-major rungs get contiguous copies.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _threads
from ._memory import check_fits
from ._registry import KERNELS, default_kernel, get_kernel
from ._threads import _warn, check_threads, get_num_threads

_DEFAULT_KERNEL = default_kernel()  # fixed by the build: openmp, or packed without OpenMP

__all__ = ["matmul", "gemm"]

_TooHardError = getattr(np, "exceptions", np).TooHardError
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CHECKED_OUT_BYTES = 1 << 26  # outputs from 64 MiB up are checked against the memory available before allocating


def _threads_for(kern, threads) -> int:
    """The thread count a call runs with; a ThreadsWarning when it is more than the CPUs, or when the kernel
    runs on one thread whatever it is given."""
    if threads is None:
        return get_num_threads()
    if kern.parallel:
        return check_threads(threads)
    threads = check_threads(threads, warn=False)
    if threads != 1:
        parallel = ", ".join(k.name for k in KERNELS.values() if k.parallel and k.device == "cpu" and k.available)
        _warn(
            f"threads={threads} has no effect: kernel {kern.name!r} runs on one thread"
            + (f" (parallel on the CPU: {parallel})" if parallel else "")
        )
    return threads


def _check_output_fits(m: int, n: int, k: int, dtype: np.dtype) -> None:
    nbytes = m * n * dtype.itemsize
    if nbytes >= _CHECKED_OUT_BYTES:
        check_fits(nbytes, f"the {m} x {n} {dtype} result of a ({m}, {k}) @ ({k}, {n}) product")


def _as_matrix(x, name: str) -> np.ndarray:
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if type(arr) is not np.ndarray:  # np.matrix, masked arrays: plain view
        arr = np.asarray(arr)
    if arr.dtype not in _FLOATS:
        kind = {
            "i": "an integer",
            "u": "an unsigned integer",
            "b": "a boolean",
            "c": "a complex",
            "f": "an unsupported floating-point",
            "O": "an object",
        }.get(arr.dtype.kind, "an unsupported")
        raise TypeError(
            f"{name} has {kind} dtype ({arr.dtype.str if arr.dtype.kind == 'f' else arr.dtype}); whygpu "
            f"kernels take float32 or float64 in native byte order -- convert with {name}.astype(np.float32)"
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (a matrix), got {arr.ndim}-D with shape {arr.shape}")
    return arr


def _scalar(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    return float(x)


def _overlaps(x: np.ndarray, y: np.ndarray) -> bool:
    if not np.may_share_memory(x, y):
        return False
    try:
        # numpy's stub allows only max_work -1 and 0; the function takes any bound >= 0 (see its docstring)
        return bool(np.shares_memory(x, y, max_work=100_000))  # type: ignore[arg-type]
    except _TooHardError:  # pragma: no cover - pathological strides
        return True  # cannot prove they are disjoint: treat as overlapping


def _check_out(out, m: int, n: int, dtype: np.dtype, name: str, inputs) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype} (the dtype of the inputs)")
    if out.shape != (m, n):
        raise ValueError(f"{name} has shape {out.shape}, expected {(m, n)}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for other, oname in inputs:
        if _overlaps(out, other):
            raise ValueError(
                f"{name} overlaps input {oname}: the kernels read {oname} while writing "
                f"{name}, so they must not share memory (pass a separate array)"
            )
    return out


def _kernel_ready(x: np.ndarray, layout: str) -> np.ndarray:
    """x, or a contiguous copy when the kernel cannot read it as it is.
    (NumPy's ALIGNED flag also covers strides that are not whole items.)"""
    flags = x.flags
    if not flags.aligned:
        return np.array(x, order="C")  # a fresh, aligned copy (ascontiguousarray keeps a contiguous x as is)
    if layout == "row-major" and not flags.c_contiguous:
        return np.ascontiguousarray(x)
    return x


def _gemm(a, b, c, alpha, beta, trans_a, trans_b, kernel, threads, c_name, c_is_out):
    kern = get_kernel(_DEFAULT_KERNEL if kernel is None else kernel)
    threads = _threads_for(kern, threads)
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(
            f"a is {a.dtype} but b is {b.dtype}; whygpu does not upcast silently -- convert one of them with .astype()"
        )
    op_a = a.T if trans_a else a  # a transpose is only a swap of strides
    op_b = b.T if trans_b else b
    (m, k), (k2, n) = op_a.shape, op_b.shape
    if k != k2:
        raise ValueError(
            f"inner dimensions do not match: op(a) is {op_a.shape} and op(b) is {op_b.shape} (need (m, k) @ (k, n))"
        )
    if c is None:
        _check_output_fits(m, n, k, a.dtype)
        c = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    else:
        _check_out(c, m, n, a.dtype, c_name, [(a, "a"), (b, "b")])

    if m == 0 or n == 0:
        return c
    if k == 0 or alpha == 0.0:  # BLAS convention: A and B are not read
        if beta == 0.0:
            c.fill(0)
        else:
            c *= c.dtype.type(beta)
        return c

    op_a = _kernel_ready(op_a, kern.layout)
    op_b = _kernel_ready(op_b, kern.layout)
    target = _kernel_ready(c, kern.layout)
    if target is not c and beta == 0.0 and c_is_out:
        target = np.empty((m, n), dtype=c.dtype)  # nothing to carry over
    kern.run(op_a, op_b, target, alpha, beta, threads)
    if target is not c:
        np.copyto(c, target)
    return c


def _gemm_unchecked(
    kern,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    alpha: float,
    beta: float,
    trans_a: bool,
    trans_b: bool,
    threads: int,
) -> None:
    """``c = alpha * op(a) @ op(b) + beta * c`` with no argument checking.

    The fast path of whygpu.nn, which calls this a dozen times per training
    step with arrays it made itself: ``kern`` is a registry Kernel that is
    available, a/b/c share one float dtype, are aligned, do not overlap, have
    matching shapes, and c is C-contiguous and writeable.  Skipping the checks
    of :func:`gemm` matters at batch 32, where a whole step is about a
    millisecond.  Anything else must go through :func:`gemm`.
    """
    op_a = a.T if trans_a else a  # a transpose is only a swap of strides: no copy
    op_b = b.T if trans_b else b
    m, k = op_a.shape
    n = op_b.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0 or alpha == 0.0:
        if beta == 0.0:
            c.fill(0)
        else:
            c *= c.dtype.type(beta)
        return
    if kern.layout == "row-major":  # the simple rungs read rows only
        op_a = np.ascontiguousarray(op_a)
        op_b = np.ascontiguousarray(op_b)
    kern.run(op_a, op_b, c, alpha, beta, threads)


def _small(a, b) -> bool:
    """True unless a @ b would be a large output (then the checked path compares it with the memory available)."""
    sa, sb = getattr(a, "shape", None), getattr(b, "shape", None)
    if type(sa) is not tuple or type(sb) is not tuple or len(sa) != 2 or len(sb) != 2:
        return True  # the fast path turns these away itself
    return sa[0] * sb[1] * 8 < _CHECKED_OUT_BYTES


def matmul(a, b, *, kernel: str | None = None, threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Matrix product ``a @ b`` of two 2-D float32 or float64 arrays on a
    chosen rung of the kernel ladder.

    Parameters
    ----------
    a, b : array_like, shapes (m, k) and (k, n), both float32 or both float64.
        Any memory layout (transposed, sliced, Fortran-ordered) is accepted.
    kernel : str
        A name from :func:`whygpu.available_kernels`.  Default (None):
        :func:`whygpu.default_kernel`, ``"openmp"``, or ``"packed"`` in a
        build without OpenMP (``whygpu info`` says which).
    threads : int, optional
        Threads for parallel kernels (default :func:`whygpu.get_num_threads`).
    out : numpy.ndarray, optional
        Where to write the (m, n) result; must have the inputs' dtype, be
        writeable and share no memory with ``a`` or ``b``.

    Returns
    -------
    numpy.ndarray of shape (m, n) (``out`` when given).
    """
    if kernel is None:
        kernel = _DEFAULT_KERNEL
    kern = KERNELS.get(kernel) if type(kernel) is str else None
    if out is None and kern is not None and kern.fast is not None:  # fast path, see _registry
        if threads is None:
            th = _threads._num_threads
            ok = 1 <= th <= _threads.MAX_THREADS
        else:  # more threads than CPUs, or threads for a one-thread kernel: the checked path, which warns
            th = threads
            ok = type(th) is int and 1 <= th <= _threads._CPUS and (th == 1 or kern.parallel)
        if ok and kern.available and _small(a, b):
            result = kern.fast(a, b, th)
            if result is not None:
                return result
    return _gemm(a, b, out, 1.0, 0.0, False, False, kernel, threads, "out", True)


def gemm(
    a,
    b,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
    trans_a: bool = False,
    trans_b: bool = False,
    kernel: str | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """General matrix multiply, BLAS style: ``C = alpha * op(A) @ op(B) + beta * C``.

    ``op(X)`` is ``X.T`` when ``trans_x`` is true, else ``X``.  When ``c`` is
    given it is updated in place and returned (it must be writeable, of the
    inputs' dtype, shape (m, n), and not overlap ``a`` or ``b``); ``beta == 0``
    overwrites it without reading it, so it may hold garbage.  When ``c`` is
    None a new array ``alpha * op(A) @ op(B)`` is returned and ``beta`` is
    ignored.  ``kernel`` as for :func:`matmul`.
    """
    alpha = _scalar(alpha, "alpha")
    beta = _scalar(beta, "beta")
    for flag, fname in ((trans_a, "trans_a"), (trans_b, "trans_b")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{fname} must be True or False, got {flag!r}")
    return _gemm(a, b, c, alpha, beta, bool(trans_a), bool(trans_b), kernel, threads, "c", False)
