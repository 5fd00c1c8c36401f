"""Figures a student can trust: was the machine quiet, how far apart are two
figures, and is a figure possible at all.

A laptop with a browser open is not a benchmark machine.  Another program
that takes a core for a second makes a 2-thread kernel look like a 1-thread
one, or -- measured just before it went away -- makes a later figure look
*faster than the hardware allows*.  A good demonstration must notice this
and say so; it must never explain a disturbed figure as physics.  Three
tools, used by every measuring command:

* **the quiet guard** (:class:`QuietGuard`) -- before each measurement block
  it reads, from ``/proc/stat``, the CPU time that *other* programs used on
  the cores we may run on (this process's own time is subtracted) and the
  *steal* time (a virtual machine's host running someone else on our
  cores), waits a bounded time for both to fall below ~5%, and records
  both, before and during the block, for the JSON document;
* **spreads** (:func:`spread`, :func:`compare`) -- figures that are compared
  are timed interleaved (A B A B ..., :func:`whygpu.bench.measure.time_interleaved`)
  so a disturbance hits both; each is reported as its median with its
  min-max range, and where the ranges overlap the text must not call one
  faster than the other;
* **impossible figures** (:func:`remeasure_once` and the ``impossible_*``
  tests) -- more than 100% of a measured peak or roof, a speed-up larger than
  the threads (or cores) used, a serial fraction outside [0, 1], a 1-thread
  row that differs from its own baseline.  Such a figure is measured once
  more; if it is still impossible it is kept, flagged ``disturbed``, and left
  out of the conclusions.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Callable, TypeVar

__all__ = [
    "QUIET_THRESHOLD",
    "CORE_THRESHOLD",
    "DISTURBED",
    "cpu_times",
    "load_between",
    "sample_load",
    "QuietGuard",
    "quiet_caution",
    "spread",
    "compare",
    "faster_text",
    "impossible_fraction",
    "impossible_speedup",
    "impossible_serial",
    "baseline_differs",
    "remeasure_once",
    "merge_quiet",
]

# Other programs' share of our cores (or steal time) above which a figure may be disturbed.
QUIET_THRESHOLD = 0.05
# Other programs' share of the busiest one of our cores above which it counts as taken: one busy core
# stalls a kernel's whole thread team (the others wait for it) even when it is 1/64 of the average.
# Half a core, not 5%: over a 0.1 s look, one core's clock tick is already 10% of its time.
CORE_THRESHOLD = 0.5
# The words every command and the report use for a figure that stayed impossible.
DISTURBED = "disturbed: still impossible when measured again, so left out of the conclusions"
# How long the guard waits for quiet before one block, and before all blocks of a run together.
# WHYGPU_QUIET_WAIT (seconds; 0: never wait, only record) overrides the first.
_WAIT_PER_BLOCK_S = 3.0
_WAIT_TOTAL_S = 20.0
_POLL_S = 0.1  # the first look before a block: 20 clock ticks on 2 cores
_RESAMPLE_S = 0.3  # a busy first look is checked over a longer span: one tick is then under 2%
_DURING_MIN_CORE_S = 0.5  # a block shorter than this (core-seconds) has no "during" record: too short to tell
# Two figures of which one has a single sample (no spread) are "clearly" apart only beyond this ratio.
SINGLE_SAMPLE_MARGIN = 1.5
# The 1-thread row may differ from its baseline by this much before it counts as "differing".
BASELINE_TOLERANCE = 0.10

T = TypeVar("T")


# --------------------------------------------------------------------------
# The quiet guard
# --------------------------------------------------------------------------
def _parse_cpu_list(text: str) -> set[int]:
    """'0-3,8,10-11' (the kernel's list format) -> {0, 1, 2, 3, 8, 10, 11}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part.strip():
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _allowed_cpus(proc: str = "/proc/self") -> set[int] | None:
    """The cores this *process* may run on: the union over its threads' ``Cpus_allowed_list``.

    ``os.sched_getaffinity(0)`` is the calling thread's mask on Linux, and a thread
    pinned to one core (an OpenMP or BLAS worker, a pinned main thread) would make
    the guard watch only that core, missing another program on the process's others."""
    cpus: set[int] = set()
    for status in [f"{proc}/status", *sorted(glob.glob(f"{proc}/task/*/status"))]:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        cpus |= _parse_cpu_list(line.split(":", 1)[1])
                        break
        except (OSError, ValueError):  # a thread that ended meanwhile, or no /proc
            continue
    if cpus:
        return cpus
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return None


def cpu_times(path: str = "/proc/stat") -> dict | None:
    """Cumulative CPU time of the cores this process may run on, in seconds:
    ``{"total", "idle", "steal", "own", "cpus", "per_cpu"}`` -- ``own`` is this
    process's user + system time (all its threads), ``steal`` the time a
    hypervisor gave our virtual cores to another guest, ``per_cpu`` each core's
    ``[total, idle, steal]`` (so one busy core is seen among many idle ones).  None where there is no ``/proc/stat``
    (macOS, Windows: the guard then records nothing and never waits)."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, ValueError, AttributeError):
        return None
    allowed = _allowed_cpus()
    rows: list[list[int]] = []
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        idx = name[3:]
        if idx.isdigit() and (allowed is None or int(idx) in allowed):
            rows.append([int(x) for x in rest.split()])
    if not rows:  # no per-core lines: the machine-wide one
        agg = [line for line in lines if line.startswith("cpu ")]
        if not agg:
            return None
        rows = [[int(x) for x in agg[0].split()[1:]]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    total = sum(sum(r[:8]) for r in rows)
    idle = sum(r[3] + (r[4] if len(r) > 4 else 0) for r in rows)
    steal = sum(r[7] if len(r) > 7 else 0 for r in rows)
    per_cpu = [
        [sum(r[:8]) / hz, (r[3] + (r[4] if len(r) > 4 else 0)) / hz, (r[7] if len(r) > 7 else 0) / hz] for r in rows
    ]
    own = os.times()
    return {
        "total": total / hz,
        "idle": idle / hz,
        "steal": steal / hz,
        "own": own.user + own.system,
        "cpus": len(rows),
        "tick": 1.0 / hz,
        "per_cpu": per_cpu,
    }


def load_between(t0: dict | None, t1: dict | None, min_total: float = 0.0) -> dict | None:
    """``{"others", "steal", "core"}``: the share of our cores' time between two
    :func:`cpu_times` readings that other programs used, and that was stolen
    (None when less than ``min_total`` core-seconds passed: too short to tell);
    ``core`` is other programs' share of the busiest core (None without per-core
    readings) -- a lower bound, as all of this process's time is counted against it."""
    if t0 is None or t1 is None:
        return None
    total = t1["total"] - t0["total"]
    if total <= 0 or total < min_total:
        return None
    # One clock tick of slack: the cores' counters and this process's own tick separately, so over a
    # short span their difference is off by a tick either way (5% of 0.1 s on 2 cores), not by more.
    tick = t1.get("tick", 0.0)
    steal = t1["steal"] - t0["steal"]
    busy = total - (t1["idle"] - t0["idle"]) - steal
    others = busy - (t1["own"] - t0["own"]) - tick
    steal -= tick
    return {
        "others": min(1.0, max(0.0, others / total)),
        "steal": min(1.0, max(0.0, steal / total)),
        "core": _busiest_core(t0, t1, t1["own"] - t0["own"] + tick),
    }


def _busiest_core(t0: dict, t1: dict, own: float) -> float | None:
    """Other programs' share of the busiest core between two readings.  Which core this
    process ran on is unknown, so all of its time (`own`, with a tick of slack) is taken
    off each core: never a false alarm while we compute, exact while we wait."""
    a, b = t0.get("per_cpu"), t1.get("per_cpu")
    if not a or not b or len(a) != len(b):
        return None
    worst = 0.0
    for (tot0, idle0, st0), (tot1, idle1, st1) in zip(a, b):
        tot = tot1 - tot0
        if tot > 0:
            busy = tot - (idle1 - idle0) - (st1 - st0)
            worst = max(worst, min(1.0, (busy - own) / tot))
    return worst


def sample_load(interval: float = _POLL_S) -> dict | None:
    """Other programs' share and the steal share of our cores over the next `interval` seconds."""
    t0 = cpu_times()
    time.sleep(interval)
    return load_between(t0, cpu_times())


def _wait_setting() -> float:
    raw = os.environ.get("WHYGPU_QUIET_WAIT")
    if raw is None or not raw.strip():
        return _WAIT_PER_BLOCK_S
    try:
        v = float(raw)
        if v >= 0 and v == v:
            return v
    except ValueError:
        pass
    warnings.warn(
        f"WHYGPU_QUIET_WAIT={raw!r} is not a number of seconds >= 0; waiting up to {_WAIT_PER_BLOCK_S:g} s",
        RuntimeWarning,
        stacklevel=3,
    )
    return _WAIT_PER_BLOCK_S


class QuietGuard:
    """Waits (a bounded time) for the machine to be quiet before each measurement
    block, and records how busy it was before and during each.

    >>> guard = QuietGuard()
    >>> with guard.block("openmp n=1024"):
    ...     ...  # measure
    >>> doc["quiet"] = guard.as_dict()

    ``max_wait`` bounds the wait before one block (default 3 s, or
    ``WHYGPU_QUIET_WAIT``), ``total_wait`` all waits together (30 s): a
    machine that never gets quiet is measured anyway, and the caution says so.
    ``sampler`` (tests) replaces :func:`sample_load`.
    """

    def __init__(
        self,
        *,
        threshold: float = QUIET_THRESHOLD,
        max_wait: float | None = None,
        total_wait: float = _WAIT_TOTAL_S,
        sampler: Callable[[], dict | None] | None = None,
        reader: Callable[[], dict | None] | None = None,
    ):
        self.threshold = float(threshold)
        self.max_wait = _wait_setting() if max_wait is None else float(max_wait)
        self.total_wait = float(total_wait)
        self._sample = sampler or sample_load
        self._resample = sampler or (lambda: sample_load(_RESAMPLE_S))
        self._read = reader or cpu_times
        self.blocks: list[dict] = []
        self._waited = 0.0

    def _busy(self, load: dict | None) -> bool:
        return load is not None and (
            load["others"] > self.threshold
            or load["steal"] > self.threshold
            or (load.get("core") or 0.0) > CORE_THRESHOLD
        )

    def wait(self, label: str) -> dict:
        """Sample the load; while it is above the threshold, keep sampling (at
        most ``max_wait`` s, and ``total_wait`` s over the whole run).  Records
        and returns ``{"label", "others", "steal", "waited_s", "quiet"}``."""
        t0 = time.perf_counter()
        load = self._sample()
        limit = min(self.max_wait, max(0.0, self.total_wait - self._waited))
        while self._busy(load) and time.perf_counter() - t0 < limit:
            load = self._resample()
        waited = time.perf_counter() - t0
        self._waited += waited
        rec = {
            "label": label,
            "others": None if load is None else round(load["others"], 4),
            "steal": None if load is None else round(load["steal"], 4),
            "core": None if load is None or load.get("core") is None else round(load["core"], 4),
            "waited_s": round(waited, 3),
            "quiet": None if load is None else not self._busy(load),
        }
        self.blocks.append(rec)
        return rec

    @contextmanager
    def block(self, label: str):
        """Wait for quiet, then time the block's own disturbance: ``rec["during"]``."""
        rec = self.wait(label)
        t0 = self._read()
        try:
            yield rec
        finally:
            during = load_between(t0, self._read(), _DURING_MIN_CORE_S)
            rec["during"] = (
                None
                if during is None
                else {k: round(during[k], 4) for k in ("others", "steal", "core") if during.get(k) is not None}
            )

    def as_dict(self) -> dict:
        """The JSON record: every block, the worst shares seen, and whether any passed the threshold."""
        return summarize(self.blocks, self.threshold, self.max_wait)


def summarize(blocks: list[dict], threshold: float = QUIET_THRESHOLD, max_wait: float | None = None) -> dict:
    others, steal, core = [], [], []
    for b in blocks:
        for rec in (b, b.get("during") or {}):
            if rec.get("others") is not None:
                others.append(rec["others"])
            if rec.get("steal") is not None:
                steal.append(rec["steal"])
            if rec.get("core") is not None:
                core.append(rec["core"])
    om = max(others) if others else None
    sm = max(steal) if steal else None
    cm = max(core) if core else None
    return {
        "threshold": threshold,
        "max_wait_s": max_wait,
        "blocks": blocks,
        "others_max": om,
        "steal_max": sm,
        "core_max": cm,
        "measured": bool(others),
        "busy": bool((om or 0) > threshold or (sm or 0) > threshold or (cm or 0) > CORE_THRESHOLD),
        "waited_s": round(sum(b.get("waited_s") or 0 for b in blocks), 3),
    }


def merge_quiet(records: Sequence[dict | None]) -> dict | None:
    """One record from several (a report built from several documents)."""
    recs = [r for r in records if r]
    if not recs:
        return None
    blocks = [b for r in recs for b in r.get("blocks", [])]
    return summarize(blocks, min(r.get("threshold", QUIET_THRESHOLD) for r in recs), recs[0].get("max_wait_s"))


def quiet_caution(quiet: dict | None) -> str | None:
    """The caution to print when other programs or steal time passed the
    threshold before or during a block (None when the machine was quiet, or
    when nothing could be read)."""
    if not quiet or not quiet.get("busy"):
        return None
    parts = []
    thr = 100 * quiet.get("threshold", QUIET_THRESHOLD)
    if (quiet.get("others_max") or 0) * 100 > thr:
        parts.append(f"other programs used up to {100 * quiet['others_max']:.0f}% of the cores")
    if (quiet.get("steal_max") or 0) * 100 > thr:
        parts.append(f"the virtual machine's host took (steal time) up to {100 * quiet['steal_max']:.0f}% of them")
    if (quiet.get("core_max") or 0) > CORE_THRESHOLD:
        parts.append(f"other programs held one core up to {100 * quiet['core_max']:.0f}% of its time")
    n = sum(1 for b in quiet.get("blocks", []) if _block_busy(b, quiet.get("threshold", QUIET_THRESHOLD)))
    return (
        f"the machine was not quiet: {' and '.join(parts)} in {n} of {len(quiet.get('blocks', []))} "
        f"measurement blocks (threshold {thr:.0f}%); those figures may be low or noisy, and a figure "
        "that came out impossible is flagged, not explained -- run again on an idle machine"
    )


def _block_busy(b: dict, threshold: float) -> bool:
    recs = (b, b.get("during") or {})
    return any((rec.get(k) or 0) > threshold for rec in recs for k in ("others", "steal")) or any(
        (rec.get("core") or 0) > CORE_THRESHOLD for rec in recs
    )


# --------------------------------------------------------------------------
# Spreads
# --------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict:
    """``{"median", "low", "high"}`` of a list of samples (times, rates or ratios)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("spread of no samples")
    mid = len(vals) // 2
    med = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"median": med, "low": vals[0], "high": vals[-1]}


def compare(times_a: Sequence[float], times_b: Sequence[float]) -> dict:
    """How many times faster A is than B from interleaved samples (seconds):
    ``{"ratio": median_b / median_a, "low", "high", "clear"}``, where ``low``..``high``
    is the range the two min-max spreads allow and ``clear`` is False when the
    spreads overlap (then no one is faster: the difference is within the noise).

    A single sample has no spread (a slow call measured once, within its
    budget): then only a difference larger than :data:`SINGLE_SAMPLE_MARGIN`
    (50%) counts as clear."""
    a, b = spread(times_a), spread(times_b)
    ratio = b["median"] / a["median"] if a["median"] > 0 else float("nan")
    clear = a["high"] < b["low"] or b["high"] < a["low"]
    if min(len(times_a), len(times_b)) < 2:
        clear = clear and not (1 / SINGLE_SAMPLE_MARGIN <= ratio <= SINGLE_SAMPLE_MARGIN)
    return {
        "ratio": ratio,
        "low": b["low"] / a["high"] if a["high"] > 0 else float("nan"),
        "high": b["high"] / a["low"] if a["low"] > 0 else float("nan"),
        "clear": clear,
    }


def faster_text(name_a: str, name_b: str, cmp: dict) -> str:
    """'A is x2.3 faster than B (x2.1-2.5)' -- or, when the spreads overlap,
    'A and B cannot be told apart here (x0.97-1.04: within the noise)'."""
    lo, hi = cmp["low"], cmp["high"]
    if not cmp["clear"]:
        return f"{name_a} and {name_b} cannot be told apart here (x{lo:.2f}-{hi:.2f}: their spreads overlap)"
    if cmp["ratio"] >= 1:
        return f"{name_a} is x{cmp['ratio']:.3g} faster than {name_b} (x{lo:.3g}-{hi:.3g})"
    return f"{name_a} is x{1 / cmp['ratio']:.3g} slower than {name_b} (x{1 / hi:.3g}-{1 / lo:.3g})"


# --------------------------------------------------------------------------
# Impossible figures
# --------------------------------------------------------------------------
def impossible_fraction(fraction: float | None) -> bool:
    """More than 100% of a measured peak or roof (a fraction, 1.0 = 100%)."""
    return fraction is not None and fraction == fraction and fraction > 1.0


def impossible_speedup(speedup: float, threads: int, cores: int | None = None) -> bool:
    """A speed-up over 1 thread larger than the threads used -- or than the
    cores, when there are more threads than cores (they share them)."""
    limit = threads if cores is None else min(threads, cores)
    return speedup == speedup and speedup > limit


def impossible_serial(fraction: float | None) -> bool:
    """A serial fraction outside [0, 1] (None: not fitted, not impossible)."""
    return fraction is not None and not (0.0 <= fraction <= 1.0)


def baseline_differs(row_s: Sequence[float], baseline_s: Sequence[float], tol: float = BASELINE_TOLERANCE) -> bool:
    """A 1-thread row that differs from its own baseline: their spreads do not
    overlap *and* the medians are more than `tol` apart.  Both are the same
    computation on one core, so such a difference is the machine, not the code."""
    a, b = spread(row_s), spread(baseline_s)
    apart = abs(a["median"] / b["median"] - 1) > tol if b["median"] > 0 else False
    return apart and compare(row_s, baseline_s)["clear"]


def remeasure_once(
    measure: Callable[[], T],
    impossible: Callable[[T], bool],
    first: T | None = None,
    best: Callable[[T, T], T] | None = None,
) -> tuple[T, dict]:
    """Measure (or take `first`); if the result is impossible, measure once more.
    Returns (result, {"remeasured": bool, "disturbed": bool}): ``disturbed``
    when the kept result is impossible too -- the figure is then shown flagged
    and left out of the conclusions.

    ``best(first, second)`` keeps the better of the two draws.  Where the roof is
    the best of two measurements, the figure held against it must be too: keeping
    only the fresh draw would pull exactly the fastest figures down (a fresh draw
    is as likely to be disturbed as the first), a bias no roof-side fix can undo."""
    result = measure() if first is None else first
    if not impossible(result):
        return result, {"remeasured": False, "disturbed": False}
    again = measure()
    kept = again if best is None else best(result, again)
    return kept, {"remeasured": True, "disturbed": bool(impossible(kept))}
