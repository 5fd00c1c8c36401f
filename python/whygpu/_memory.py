"""How much memory this process may still allocate, and the check every measuring entry point makes before it
allocates its operands: a size that cannot fit is refused in one line, not met with a NumPy traceback or the
out-of-memory killer."""

from __future__ import annotations

import os

__all__ = ["TooLargeError", "available_bytes", "check_fits", "check_product_fits", "format_bytes", "matmul_bytes"]

# Operands and outputs are counted exactly; this much more is kept free for everything else the process holds
# (the interpreter, NumPy's temporaries, the packing buffers of the kernels).
_RESERVE = 0.9


class TooLargeError(MemoryError, ValueError):
    """A size whose arrays cannot fit in the memory available: refused before anything is allocated.

    A ``MemoryError`` (what NumPy would have raised, later) and a ``ValueError`` (a bad argument: the
    command line prints it as one line and exits with status 2)."""


def format_bytes(n: float) -> str:
    """``74.5 GiB``, ``512 MiB``, ``3 KiB``: binary units, as free(1) and NumPy's own messages use."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _parse_size(text: str) -> int | None:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" when there is no limit


def _cgroup_available() -> int | None:
    """What this process's memory cgroup still allows (limit minus usage), when it has a limit."""
    v2 = "/sys/fs/cgroup/"
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    v2 = "/sys/fs/cgroup" + line.split("::", 1)[1].strip().rstrip("/") + "/"
    except OSError:
        pass
    for limit_file, usage_file in (
        (v2 + "memory.max", v2 + "memory.current"),
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # cgroup v1 says "no limit" with a huge number
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def available_bytes() -> int | None:
    """Bytes this process may still allocate without swapping or the out-of-memory killer, or None if unknown.

    The environment variable WHYGPU_AVAILABLE_MEMORY overrides it (``8G``, ``512M``, a number of bytes), to
    rehearse a smaller machine.  On Linux: MemAvailable from /proc/meminfo, or the memory cgroup's remaining
    allowance when lower; elsewhere the free physical pages the OS reports, where it does."""
    env = os.environ.get("WHYGPU_AVAILABLE_MEMORY", "").strip()
    if env:
        v = _parse_size(env)
        if v is not None and v >= 0:
            return v
    found = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def matmul_bytes(m: int, n: int, k: int, itemsize: int = 4) -> int:
    """Bytes of one product's operands and output: A (m x k), B (k x n), C (m x n)."""
    return (m * k + k * n + m * n) * itemsize


def check_fits(nbytes: int, what: str) -> None:
    """Raise TooLargeError when ``nbytes`` (the arrays of ``what``) cannot fit in the memory available."""
    avail = available_bytes()
    if avail is None or nbytes <= avail * _RESERVE:
        return
    raise TooLargeError(
        f"{what} needs {format_bytes(nbytes)} of memory but only {format_bytes(avail)} is available; "
        f"choose a smaller size"
    )


def check_product_fits(m: int, n: int, k: int, dtype: str = "float32") -> None:
    """TooLargeError when one (m, k) @ (k, n) product's operands and result cannot fit in memory."""
    itemsize = 8 if str(dtype) == "float64" else 4
    check_fits(matmul_bytes(m, n, k, itemsize), f"a ({m}, {k}) @ ({k}, {n}) {dtype} product (A, B and the result)")
