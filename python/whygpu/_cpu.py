"""What the CPU is, and which instruction set the packed kernels use on it."""

from __future__ import annotations

import os
import platform
import warnings

from ._registry import _core
from ._threads import _cpus_available

__all__ = ["cpu_info", "set_arch"]


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _size_bytes(text: str) -> int | None:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    try:
        if text and text[-1] in mult:
            return int(text[:-1]) * mult[text[-1]]
        return int(text)
    except ValueError:
        return None


def _caches() -> dict:
    """Per-core cache sizes in bytes from Linux sysfs: {'L1d': .., 'L2': .., 'L3': ..}."""
    out: dict[str, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:

            def read(name, entry=entry):
                with open(os.path.join(base, entry, name)) as f:
                    return f.read().strip()

            level, ctype, size = read("level"), read("type"), _size_bytes(read("size"))
        except OSError:
            continue
        if ctype == "Instruction" or size is None:
            continue
        out[f"L{level}{'d' if ctype == 'Data' else ''}"] = size
    return out


def _physical_cores():
    """Distinct (package, core) pairs among the CPUs this process may use
    (Linux sysfs topology), or None where the OS does not say."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return None
    seen = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return None
        seen.add((package, core))
    return len(seen) or None


def cpu_info() -> dict:
    """The CPU as whygpu sees it.

    Keys: ``model``, ``machine``, ``cores`` (CPUs this process may use),
    ``physical_cores`` (distinct physical cores among them, from the OS's
    topology; fewer than ``cores`` with SMT/hyper-threading; None if unknown),
    ``arch`` (instruction set the packed kernels use now), ``best_arch``,
    ``supported_archs``, ``caches`` (bytes, when the OS says), ``openmp``,
    ``blocking`` (micro-kernel and block sizes per dtype: ``kc``, ``mc``,
    ``nc`` derived from the caches, or from WHYGPU_BLOCKING), ``cache_model``
    (the caches they were derived from: bytes, ways, sets, line per level).
    """
    info = {
        "model": _model_name(),
        "machine": platform.machine(),
        "cores": _cpus_available(),
        "physical_cores": _physical_cores(),
        "caches": _caches(),
    }
    if _core is not None:
        info.update(
            arch=_core.arch(),
            best_arch=_core.best_arch(),
            supported_archs=list(_core.supported_archs()),
            openmp=bool(_core.openmp_available()),
            blocking={dt: dict(_core.blocking(dt)) for dt in ("float32", "float64")},
            cache_model={k: (dict(v) if isinstance(v, dict) else v) for k, v in _core.cache_model().items()},
        )
    return info


def set_arch(name: str) -> str:
    """Force the instruction set of the packed and openmp kernels ("portable",
    "avx2", "avx512"), e.g. to measure what SIMD buys; returns the previous one.
    The environment variable WHYGPU_ARCH does the same at start-up."""
    if _core is None:  # pragma: no cover
        raise RuntimeError("whygpu._core is not available")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    supported = list(_core.supported_archs())
    if name == "auto":
        name = _core.best_arch()
    if name not in supported:
        raise ValueError(
            f"instruction set {name!r} is not usable here; this CPU and build support: {', '.join(supported)}"
        )
    previous = _core.arch()
    _core.set_arch(name)
    return previous


def _warn_env() -> None:
    if _core is not None:
        for msg in (_core.arch_env_warning(), _core.blocking_env_warning()):
            if msg:
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
