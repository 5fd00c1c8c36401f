"""The default thread count of the parallel kernels, and how to change it."""

from __future__ import annotations

import numbers
import os

__all__ = ["set_num_threads", "get_num_threads", "check_threads", "MAX_THREADS"]

# More threads than cores is allowed (it only oversubscribes), but not absurd counts.
MAX_THREADS = 1024


def _cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroups cpusets
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def check_threads(n, what: str = "threads") -> int:
    """n as an int >= 1, or TypeError / ValueError saying what was wrong."""
    if type(n) is int and 1 <= n <= MAX_THREADS:  # the common case, without the slow ABC check
        return n
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{what} must be an integer >= 1, got {n!r}")
    v = int(n)  # exact for an Integral (numbers.Integral itself promises no `>`)
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")
    if v > MAX_THREADS:  # the C++ side takes an int, and OpenMP aborts the process if it cannot start them
        raise ValueError(f"{what} must be <= {MAX_THREADS}, got {n}")
    return v


def _initial() -> int:
    env = os.environ.get("WHYGPU_NUM_THREADS", "").strip()
    if env:
        try:
            return check_threads(int(env), "WHYGPU_NUM_THREADS")
        except ValueError:
            pass  # a bad environment variable must not break import; fall back
    return _cpus_available()


_num_threads = _initial()


def set_num_threads(n: int) -> None:
    """Set the thread count parallel kernels use when a call passes threads=None."""
    global _num_threads
    _num_threads = check_threads(n, "n")


def get_num_threads() -> int:
    """The thread count parallel kernels use by default (WHYGPU_NUM_THREADS, else
    the number of CPUs this process may run on)."""
    return _num_threads
