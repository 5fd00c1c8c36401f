"""What machine the measurements were taken on: CPU, caches, instruction
set, OpenMP, BLAS, CUDA and software versions.  Every JSON document the
command line writes embeds this, so a saved result says where it came from.
Nothing here is measured; it is all asked of the OS and the libraries."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import sys

import numpy as np

from .._cpu import cpu_info
from .._threads import get_num_threads
from .._version import __version__
from .trust import sample_load

__all__ = ["machine_info", "cuda_status", "now_iso"]


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def cuda_status() -> dict:
    """{'available': bool, 'reason' or 'device', 'kernels'} from the optional
    ``whygpu.cuda`` module (missing in CPU-only builds)."""
    try:
        cuda = importlib.import_module("whygpu.cuda")  # optional back end
    except ModuleNotFoundError as exc:
        if exc.name != "whygpu.cuda":
            return {"available": False, "reason": f"whygpu.cuda failed to import: {exc}"}
        return {"available": False, "reason": "this build has no CUDA back end (whygpu.cuda is missing)"}
    except ImportError as exc:
        return {"available": False, "reason": f"whygpu.cuda failed to import: {exc}"}
    try:
        if not cuda.is_available():
            return {"available": False, "reason": str(cuda.unavailable_reason())}
        out = {"available": True, "kernels": list(cuda.kernels())}
        info = cuda.device_info() if callable(getattr(cuda, "device_info", None)) else None
        if isinstance(info, dict):
            out["device"] = str(info.get("name", "GPU"))
            out["device_info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}
        return out
    except Exception as exc:  # a broken driver must not break `whygpu info`
        return {"available": False, "reason": f"whygpu.cuda failed: {exc}"}


def _blas() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
    except Exception:  # pragma: no cover - threadpoolctl is a dependency
        return []


def _compiler() -> str:
    try:
        import whygpu._probe as _probe

        return str(_probe.compiler)
    except ImportError:  # pragma: no cover - broken build
        return "unknown"


def _load():
    """The 1-minute load average when the run started (None where the OS has
    none): a busy machine spoils multi-thread figures, and the report says so."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _cpu_load() -> dict:
    """Other programs' share and the steal share of our cores over 0.1 s, when the run starts
    (None each where there is no /proc/stat): whygpu.bench.trust.sample_load."""
    load = sample_load(0.1)
    return {
        "cpu_busy_before": None if load is None else load["others"],
        "steal_before": None if load is None else load["steal"],
    }


def machine_info() -> dict:
    """A JSON-ready description of this machine and software."""
    cpu = cpu_info()
    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        mpl = None
    return {
        "cpu": cpu,
        "threads_default": get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "compiler": _compiler(),
        "versions": {"whygpu": __version__, "numpy": np.__version__, "matplotlib": mpl},
        "blas": _blas(),
        "cuda": cuda_status(),
        "load_average": _load(),
        **_cpu_load(),
        "time": now_iso(),
    }
