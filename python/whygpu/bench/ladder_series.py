"""The ladder's series: which kernels and references are measured (and which
cannot run here), where each runs, what precision it multiplies in, how many
threads it uses, and its error against a float64 product.

Split from :mod:`whygpu.bench.ladder` (which re-exports every name here), so
that measuring and describing a series stay apart."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._api import matmul
from .._registry import KERNELS, KernelUnavailableError, available_kernels, get_kernel
from .measure import blas_threads

__all__ = [
    "ERROR_METRIC",
    "series_device",
    "series_precision",
    "split_unavailable",
    "resolve_kernels",
    "threads_used",
    "measure_error",
]

# How the error against the float64 reference is measured (everywhere: ladder, explain, roofline, report).
ERROR_METRIC = (
    "max relative error: max|C - C64| / max|C64|, where C64 is the product of the same float32 "
    "inputs computed in float64"
)


def _numpy_refs(threads: int) -> list[str]:
    return ["numpy-1t"] + ([f"numpy-{threads}t"] if threads > 1 else [])


def series_device(name: str) -> str:
    """'cuda' for the CUDA rungs and the cuBLAS reference, 'cpu' for everything else."""
    if name == "cublas":
        return "cuda"
    kern = KERNELS.get(name)
    return kern.device if kern is not None else "cpu"


def series_precision(name: str, dtype: str = "float32") -> str:
    """What a series multiplies in: the inputs' dtype for the CPU kernels and NumPy,
    'float32', 'tf32' or 'bf16' for the CUDA ones (the registry's ``precision``)."""
    if name == "cublas":
        return "float32"  # strict float32: TF32 off (whygpu.bench.gpu.vendor_runner)
    kern = KERNELS.get(name)
    return (kern.precision if kern is not None else None) or dtype


def split_unavailable(names: Sequence[str] | None) -> tuple:
    """(names without the known-but-unusable kernels, [{"kernel", "device", "reason"}] for those).

    Named kernels that exist but cannot run here are listed with the reason
    instead of raising; with ``names`` None (or ["all"]) the list holds every
    unusable CPU kernel, and the unusable CUDA kernels only where a GPU is
    usable (without one, every CUDA kernel is out for the one reason the GPU
    sections already give).  Unknown names are left in (resolve_kernels raises)."""
    from .gpu import gpu_usable

    out = []
    if names is None or list(names) == ["all"]:
        gpu = gpu_usable()
        for k in KERNELS.values():
            if (k.device == "cpu" or gpu) and not k.available:
                out.append({"kernel": k.name, "device": k.device, "reason": k.unavailable()})
        return names, out
    kept = []
    for name in names:
        kern = KERNELS.get(name) if isinstance(name, str) else None
        why = kern.unavailable() if kern is not None else None
        if kern is None or why is None:
            kept.append(name)
        elif not any(u["kernel"] == name for u in out):
            out.append({"kernel": name, "device": kern.device, "reason": why})
    return kept, out


def resolve_kernels(
    names: Sequence[str] | None, threads: int, *, references: bool = True, gpu: bool = True
) -> list[str]:
    """The measured series, in ladder order: the requested (or all available)
    kernels, then NumPy on 1 and all threads, then the CUDA kernels where a
    GPU is usable (``gpu``) and cuBLAS (through CuPy or PyTorch) when one of
    them reaches the GPU.  Unknown names raise ValueError, unusable ones
    KernelUnavailableError."""
    from .gpu import vendor_name

    if names is None or list(names) == ["all"]:
        cpu = [k for k in available_kernels() if KERNELS[k].device == "cpu"]
        gpu_k = [k for k in available_kernels() if KERNELS[k].device != "cpu"] if gpu else []
        out = cpu + (_numpy_refs(threads) if references else []) + gpu_k
        if gpu_k and references and vendor_name():
            out.append("cublas")
        return out
    out = []
    for name in names:
        if name == "numpy":
            out += [r for r in _numpy_refs(threads) if r not in out]
        elif name.startswith("numpy-") and name.endswith("t") and name[6:-1].isdigit():
            out.append(name)
        elif name == "cublas":
            if vendor_name() is None:
                raise KernelUnavailableError("'cublas' needs CuPy or PyTorch with a usable GPU (neither is here)")
            if name not in out:
                out.append(name)
        else:
            get_kernel(name)  # raises for unknown / unavailable
            if name not in out:
                out.append(name)
    return out


def threads_used(name: str, threads: int) -> int:
    if name.startswith("numpy-"):
        return int(name[6:-1])
    kern = KERNELS.get(name)
    return threads if kern is not None and kern.parallel else 1


def measure_error(
    name: str, m: int, n: int, k: int, *, dtype: str = "float32", threads: int = 1, seed: int = 0
) -> dict:
    """One (m, k) @ (k, n) product of series `name` on standard-normal data against the
    same product computed in float64 (:data:`ERROR_METRIC`).

    Returns {"n", "m", "k", "precision", "unit_roundoff", "max_rel_error", "error_bound"}:
    ``error_bound`` is what the precision guarantees for this data -- every entry is off
    by at most gamma * (|A| |B|)_ij with gamma = 2u + u^2 (each product of two operands
    rounded to unit roundoff u) + 2 (k + 2) u_sum (1 + 2u) (the sums, float32 or float64),
    so the max error is at most gamma * max(|A| |B|) / max|C64|."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if name.startswith("numpy-"):
        with blas_threads(int(name[6:-1])):
            c = np.matmul(a, b)
    elif name == "cublas":
        import whygpu.cuda as wc

        c = wc.vendor_matmul(a, b)
        if c is None:
            raise KernelUnavailableError("'cublas' needs CuPy or PyTorch with a usable GPU")
    else:
        kern = KERNELS[name]
        c = matmul(a, b, kernel=name, threads=threads if kern.parallel else 1)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    top = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(c.astype(np.float64) - ref))) if ref.size else 0.0
    precision = series_precision(name, dtype)
    u_sum = 2.0**-53 if dtype == "float64" else 2.0**-24
    if precision == "float64":
        u = 2.0**-53
    else:
        from ..cuda import UNIT_ROUNDOFF

        u = UNIT_ROUNDOFF[precision]
    gamma = 2 * u + u * u + 2 * (k + 2) * u_sum * (1 + 2 * u)
    mag = float(np.max(np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))) if ref.size else 0.0
    return {
        "m": m,
        "n": n,
        "k": k,
        "precision": precision,
        "unit_roundoff": u,
        "max_rel_error": err / top if top > 0 else err,
        "error_bound": gamma * mag / top if top > 0 else 0.0,
    }
