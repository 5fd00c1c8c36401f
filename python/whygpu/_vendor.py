"""The vendor reference the GPU rungs are measured against: NVIDIA's cuBLAS, reached
through CuPy or PyTorch where one is installed (``whygpu.cuda.vendor_matmul``)."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np

__all__ = ["vendor_library", "vendor_matmul"]


def _cupy_tf32() -> bool:
    return os.environ.get("CUPY_TF32", "0").strip() not in ("", "0")


def vendor_library() -> str | None:
    """'cupy' or 'torch': the installed library :func:`vendor_matmul` would use
    (CuPy first), or None.  Imports nothing."""
    if importlib.util.find_spec("cupy") is not None and not _cupy_tf32():
        return "cupy"
    if importlib.util.find_spec("torch") is not None:
        return "torch"
    return None


def vendor_matmul(a, b) -> np.ndarray | None:
    """``a @ b`` of two float32 matrices computed by NVIDIA's cuBLAS, through CuPy
    or PyTorch, in strict float32 (TF32 tensor cores off) -- the reference the
    ladder is measured against.  whygpu itself never links cuBLAS.

    Returns a NumPy array, or None when neither library is installed or
    neither can reach a GPU.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.float32 or b.dtype != np.float32:
        raise TypeError(f"vendor_matmul takes float32 matrices, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need (m, k) @ (k, n) matrices, got {a.shape} and {b.shape}")
    if importlib.util.find_spec("cupy") is not None and not _cupy_tf32():
        try:
            import cupy as cp

            return cp.asnumpy(cp.matmul(cp.asarray(a), cp.asarray(b)))
        except Exception:  # CuPy installed but without a usable GPU or CUDA libraries
            pass
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                before = torch.get_float32_matmul_precision()
                torch.set_float32_matmul_precision("highest")  # no TF32
                try:
                    out = torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()
                    return out.cpu().numpy()
                finally:
                    torch.set_float32_matmul_precision(before)
        except Exception:
            return None
    return None
