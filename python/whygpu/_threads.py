"""The default thread count of the parallel kernels, how to change it, and the warnings a thread count can earn."""

from __future__ import annotations

import numbers
import os
import sys
import warnings

__all__ = ["set_num_threads", "get_num_threads", "check_threads", "MAX_THREADS", "ThreadsWarning"]

# More threads than cores is allowed (it only oversubscribes, with a warning), but not absurd counts.
MAX_THREADS = 1024


class ThreadsWarning(RuntimeWarning):
    """A thread count that will not do what it seems to: more threads than CPUs, or threads for a kernel
    that runs on one."""


def _cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroups cpusets
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_CPUS = _cpus_available()  # what the fast path of matmul compares against: above it, the checked path warns
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _warn(msg: str, category: type[Warning] = ThreadsWarning) -> None:
    """warnings.warn, pointing at the first caller outside whygpu (the line the student wrote)."""
    frame = sys._getframe(0)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(msg, category, stacklevel=level)


def oversubscribed(n: int) -> str:
    """The warning for n threads on fewer CPUs."""
    return (
        f"{n} threads on {_CPUS} cores: more threads than cores only take turns on them "
        f"(no faster, usually slower); use at most {_CPUS}"
    )


def check_threads(n, what: str = "threads", *, warn: bool = True) -> int:
    """n as an int >= 1, or TypeError / ValueError saying what was wrong; a ThreadsWarning (unless ``warn``
    is false) when n exceeds the CPUs this process may use."""
    if type(n) is int and 1 <= n <= _CPUS:  # the common case, without the slow ABC check
        return n
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{what} must be an integer >= 1, got {n!r}")
    v = int(n)  # exact for an Integral (numbers.Integral itself promises no `>`)
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")
    if v > MAX_THREADS:  # the C++ side takes an int, and OpenMP aborts the process if it cannot start them
        raise ValueError(f"{what} must be <= {MAX_THREADS}, got {n}")
    if warn and v > _CPUS:
        _warn(oversubscribed(v))
    return v


def _initial() -> int:
    env = os.environ.get("WHYGPU_NUM_THREADS", "").strip()
    if env:
        try:
            return check_threads(int(env), "WHYGPU_NUM_THREADS", warn=False)  # a deliberate choice: no warning
        except ValueError as exc:  # a bad environment variable must not break import: warn, and fall back
            why = str(exc) if str(exc).startswith("WHYGPU") else "it is not an integer"
            warnings.warn(
                f"WHYGPU_NUM_THREADS={env!r} ignored ({why}); using the {_CPUS} CPUs this process may run on",
                RuntimeWarning,
                stacklevel=4,
            )
    return _CPUS


_num_threads = _initial()


def set_num_threads(n: int) -> None:
    """Set the thread count parallel kernels use when a call passes threads=None (a ThreadsWarning when it
    exceeds the CPUs this process may use)."""
    global _num_threads
    _num_threads = check_threads(n, "n")


def get_num_threads() -> int:
    """The thread count parallel kernels use by default (WHYGPU_NUM_THREADS, else
    the number of CPUs this process may run on)."""
    return _num_threads
