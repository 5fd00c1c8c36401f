"""How long idle worker threads spin after a parallel call: whygpu's (OpenMP) and NumPy's (OpenBLAS).

Why this exists.  After a parallel call, both runtimes keep their worker threads spinning on their
cores so that the next call finds them awake:

* libgomp (whygpu's OpenMP) for ``GOMP_SPINCOUNT`` busy-wait steps, 300,000 by default: about 8 ms
  of a core on a Zen 1, more or less elsewhere (a step is one ``pause``, 3 to 150 cycles by CPU);
* OpenBLAS (NumPy's BLAS) for ``2**OPENBLAS_THREAD_TIMEOUT`` time-stamp-counter cycles, ``2**28``
  by default: about 0.1 s, without ever yielding the core.

Alone, each library gains from it.  Alternated in one process -- a notebook comparing a rung with
``a @ b`` -- each call finds the other library's idle threads spinning on the cores it needs, and a
call that took 0.1 ms can take 10 ms.  The spin that helps between a library's own back-to-back
calls (the GEMMs of one training step come microseconds apart) only hurts once the program has
moved on.

What whygpu does, once, at import: it measures how long a busy-wait step and a TSC cycle last on
this CPU (whygpu._spin, a module without OpenMP) and asks OpenBLAS for a spin of ``OPENBLAS_SPIN_S``
(20 us) and libgomp for one of ``OPENMP_SPIN_S`` (2 ms; ``WHYGPU_OPENMP_SPIN_US`` chooses another).
Both runtimes read their setting once, when they are loaded, so whygpu
sets the variable, loads the library, and removes the variable again (subprocesses and libraries
loaded later, PyTorch's own OpenMP included, see the environment as the user left it).

It changes nothing that the user chose: ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` set, or
``OPENBLAS_THREAD_TIMEOUT`` set, is kept.  NumPy imported before whygpu has loaded OpenBLAS
already, and its spin can no longer be changed: `whygpu info` says so, and what to do.
``WHYGPU_KEEP_SPIN=1`` leaves both runtimes at their defaults (to measure what this changes).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

__all__ = ["OPENMP_SPIN_S", "OPENBLAS_SPIN_S", "STATE", "applied", "describe"]

# How long each runtime's idle threads spin (see above), in seconds whatever the CPU.
# OpenBLAS's: as short as its own back-to-back calls allow, so that a whygpu call right after a NumPy
# call finds both cores free.  OpenMP's: 2 ms, a quarter of libgomp's default on a Zen 1 (and ~5 to
# 40 ms elsewhere: its default counts steps, not time).  It still bridges every gap inside a training
# step and a ladder's round; shorter ones cost: at 50 us a worker that fell asleep was woken for each
# call after a pause, and on a 2-vCPU VM the kernel placed it on the waking thread's core (openmp at
# half speed at n = 256 in `whygpu ladder`; a 128^3 call 20% slower at 20 us).  Alternated with
# NumPy (benchmarks/alternation.py, Zen 1): every ratio 0.86-1.36 at 1 and 2 ms, 0.78-0.82 for NumPy
# at n = 1024 with libgomp's default.
OPENMP_SPIN_S = 2e-3
OPENBLAS_SPIN_S = 20e-6
_GOMP_DEFAULT_STEPS = 300_000  # libgomp's GOMP_SPINCOUNT when neither it nor OMP_WAIT_POLICY is set
_OPENBLAS_DEFAULT_LOG2 = 28  # OpenBLAS's THREAD_TIMEOUT when OPENBLAS_THREAD_TIMEOUT is not set
# 0.1-0.2 ms a run at 26 ns a step (a Zen 1): import stays quick, and the settings are rounded anyway.
_CALIBRATION_STEPS = 5_000

# What was decided at import, for `whygpu info` and the report: {"openmp": {...}, "openblas": {...}}.
STATE: dict[str, dict] = {}


def _calibrate() -> tuple[float | None, float | None]:
    """(seconds per busy-wait step, TSC ticks per second), each None when it cannot be measured."""
    try:
        _spin = importlib.import_module("whygpu._spin")  # compiled; by name, as whygpu itself imports this module
    except ImportError:  # a source tree without the compiled modules
        return None, None
    step_s, tsc_hz = math.inf, None
    for _ in range(3):  # the fastest of three: an interrupt only ever makes a run slower
        t0 = time.perf_counter_ns()
        ticks = _spin.spin(_CALIBRATION_STEPS)
        dt = (time.perf_counter_ns() - t0) * 1e-9
        if dt > 0 and dt / _CALIBRATION_STEPS < step_s:
            step_s = dt / _CALIBRATION_STEPS
            tsc_hz = ticks / dt if ticks else None
    return (step_s if math.isfinite(step_s) else None), tsc_hz


def _libgomp_loaded() -> bool:
    """Is a libgomp already mapped into this process (then it has read its settings already)?"""
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:  # not Linux: assume nothing was loaded before
        return False


def _plan(
    environ: MutableMapping[str, str],
    step_s: float | None,
    tsc_hz: float | None,
    numpy_loaded: bool,
    gomp_loaded: bool,
    openmp_spin_s: float = OPENMP_SPIN_S,
) -> tuple[dict[str, str], dict[str, dict]]:
    """The variables to set (name -> value) and what to report about each runtime."""
    to_set: dict[str, str] = {}
    state: dict[str, dict] = {}

    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        chosen = {k: environ[k] for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in environ}
        state["openmp"] = {"by": "user", "env": chosen}
    elif gomp_loaded:
        state["openmp"] = {"by": "none", "why": "libgomp was loaded by another module before whygpu"}
    elif step_s is None:
        state["openmp"] = {"by": "none", "why": "the busy-wait step could not be timed here"}
    else:
        steps = max(1, round(openmp_spin_s / step_s))
        to_set["GOMP_SPINCOUNT"] = str(steps)
        state["openmp"] = {
            "by": "whygpu",
            "env": {"GOMP_SPINCOUNT": str(steps)},
            "spin_s": steps * step_s,
            "default_spin_s": _GOMP_DEFAULT_STEPS * step_s,
            "step_s": step_s,
        }

    # OpenBLAS counts time-stamp-counter cycles in powers of two (it clamps the exponent to 4..30).
    log2 = min(30, max(4, round(math.log2(OPENBLAS_SPIN_S * tsc_hz)))) if tsc_hz else None
    if "OPENBLAS_THREAD_TIMEOUT" in environ:
        state["openblas"] = {"by": "user", "env": {"OPENBLAS_THREAD_TIMEOUT": environ["OPENBLAS_THREAD_TIMEOUT"]}}
    elif log2 is None or tsc_hz is None:
        state["openblas"] = {"by": "none", "why": "this CPU has no time-stamp counter that whygpu can read"}
    elif numpy_loaded:
        state["openblas"] = {"by": "none", "why": "NumPy (and its BLAS) was imported before whygpu", "suggest": log2}
    else:
        to_set["OPENBLAS_THREAD_TIMEOUT"] = str(log2)
        state["openblas"] = {
            "by": "whygpu",
            "env": {"OPENBLAS_THREAD_TIMEOUT": str(log2)},
            "spin_s": 2**log2 / tsc_hz,
            "default_spin_s": 2**_OPENBLAS_DEFAULT_LOG2 / tsc_hz,
        }
    return to_set, state


def _openmp_target() -> float:
    """WHYGPU_OPENMP_SPIN_US (microseconds), else OPENMP_SPIN_S; a bad value warns and is ignored."""
    raw = os.environ.get("WHYGPU_OPENMP_SPIN_US", "").strip()
    if not raw:
        return OPENMP_SPIN_S
    try:
        us = float(raw)
        if not (0 <= us <= 1e6):
            raise ValueError
    except ValueError:
        import warnings

        warnings.warn(
            f"WHYGPU_OPENMP_SPIN_US={raw!r} ignored: give microseconds, 0 to 1e6", RuntimeWarning, stacklevel=3
        )
        return OPENMP_SPIN_S
    return us * 1e-6


@contextmanager
def applied(environ: MutableMapping[str, str] = os.environ) -> Iterator[None]:
    """Set the short spins while the block loads NumPy's BLAS and whygpu's OpenMP, then unset them."""
    if os.environ.get("WHYGPU_KEEP_SPIN", "").strip() not in ("", "0"):
        STATE.update(
            openmp={"by": "none", "why": "WHYGPU_KEEP_SPIN is set"},
            openblas={"by": "none", "why": "WHYGPU_KEEP_SPIN is set"},
        )
        yield
        return
    step_s, tsc_hz = _calibrate()
    to_set, state = _plan(environ, step_s, tsc_hz, "numpy" in sys.modules, _libgomp_loaded(), _openmp_target())
    STATE.update(state)
    environ.update(to_set)
    try:
        yield
    finally:
        for name in to_set:
            environ.pop(name, None)


def _fmt(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.0f} ms"


def describe(state: dict[str, dict] | None = None) -> list[str]:
    """One line per runtime for `whygpu info`: how long its idle threads spin after a call, and why."""
    st = STATE if state is None else state
    lines = []
    for key, name, var in (
        ("openmp", "whygpu's OpenMP", "GOMP_SPINCOUNT"),
        ("openblas", "NumPy's OpenBLAS", "OPENBLAS_THREAD_TIMEOUT"),
    ):
        s = st.get(key)
        if not s:
            continue
        if s["by"] == "whygpu":
            lines.append(
                f"{name}: idle threads spin {_fmt(s['spin_s'])} after a call, then sleep "
                f"({var}={s['env'][var]}, set by whygpu at import; the default spins "
                f"{_fmt(s['default_spin_s'])})"
            )
        elif s["by"] == "user":
            chosen = ", ".join(f"{k}={v}" for k, v in s["env"].items())
            lines.append(f"{name}: idle threads spin as you set ({chosen})")
        else:
            if key == "openblas" and "suggest" in s:
                fix = (
                    f"import whygpu before numpy, or set OPENBLAS_THREAD_TIMEOUT={s['suggest']} before starting Python"
                )
            elif key == "openblas":
                fix = "import whygpu before numpy, or set OPENBLAS_THREAD_TIMEOUT before starting Python"
            else:
                fix = "set GOMP_SPINCOUNT before starting Python"
            held = f", {_fmt(s['default_spin_s'])} here" if "default_spin_s" in s else ""
            lines.append(
                f"{name}: idle threads keep their default spin{held} ({s['why']}); a call of the "
                f"other library in that time shares a core with them: {fix}"
            )
    return lines
