"""What the scaling measurements say: Amdahl's law fitted to them, every impossible figure
(a speed-up above the threads or cores, a round above them, a serial fraction outside [0, 1], a
1-thread row off its baseline), the FMA probe's limit kept coherent with what the kernels
measured, and the plain words the CLI, the figure and the report use.

Split from :mod:`whygpu.bench.scaling` (which re-exports every name here), so that measuring and
judging a series stay apart, as :mod:`whygpu.bench.ladder_results` does for the ladder."""

from __future__ import annotations

from collections.abc import Sequence

from .._threads import _cpus_available
from .measure import format_figure
from .trust import DISTURBED, baseline_differs, impossible_serial, impossible_speedup, spread

__all__ = [
    "MIN_FIT_THREADS",
    "TWO_POINTS",
    "fit_amdahl",
    "fit_series",
    "check_series",
    "amdahl",
    "percent",
    "speedup_text",
    "plain_text",
    "with_checks",
    "fit_text",
    "probe_limit",
    "probe_text",
    "doc_note",
]

# Amdahl's law has one unknown: 1 and p threads give one equation, which any noise satisfies exactly.
MIN_FIT_THREADS = 3
TWO_POINTS = "two points cannot separate the serial part from the noise"


def amdahl(p: float, serial: float) -> float:
    return 1.0 / (serial + (1.0 - serial) / p)


def fit_amdahl(threads: Sequence[int], speedup: Sequence[float]) -> float | None:
    """The least-squares serial fraction f of S(p), *not* clamped to [0, 1],
    so a disturbed fit shows as impossible (None with only p = 1)."""
    xs, ys = [], []
    for p, s in zip(threads, speedup):
        if p > 1 and s > 0:
            xs.append(1 - 1 / p)
            ys.append(1 / s - 1 / p)
    if not xs:
        return None
    return sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)


# --------------------------------------------------------------------------
# Plain numbers for tables, captions and legends
# --------------------------------------------------------------------------
def percent(fraction: float | None) -> str:
    """'12%', '0.5%', '100%' -- never '1e+02%'."""
    if fraction is None or fraction != fraction:
        return "n/a"
    v = 100 * fraction
    if v == 0 or abs(v) >= 1:
        return f"{v:.0f}%"
    return f"{v:.1f}%" if abs(v) >= 0.1 else ("<0.1%" if v > 0 else ">-0.1%")


def _x(v: float) -> str:
    """A ratio with plain digits: 'x1.62', 'x0.034', 'x16', 'x1,024'."""
    return "x" + format_figure(v)


def _range(lo: float, hi: float) -> str:
    return f"(x{format_figure(lo)}-{format_figure(hi)})" if lo != hi else "(one round: no spread)"


def speedup_text(s: dict, i: int) -> str:
    """One thread count of a series in words: 'x1.62 on 2 threads (x1.55-1.70)', or
    'no measurable speed-up on 2 threads (x0.97-1.04: ...)' when the range includes x1,
    or the flag of a disturbed point."""
    p, med = s["threads"][i], s["speedup"][i]
    lo, hi = s["speedup_low"][i], s["speedup_high"][i]
    cores = s.get("cores")
    thr = f"{p} thread{'s' if p > 1 else ''}" + (f" sharing {cores} cores" if cores and p > cores else "")
    if s["disturbed"][i]:
        return f"{_x(med)} on {thr} -- {s['disturbed_reason'][i]}; {DISTURBED}"
    left = (s.get("rounds_left_out") or [0] * (i + 1))[i]
    # rounds above the cores are not results: said, never shown as a speed-up
    note = (
        f"; {left} round{'s' if left > 1 else ''} above the {min(p, cores or p)} cores, impossible, left out"
        if left
        else ""
    )
    if lo <= 1.0 <= hi:
        return f"no measurable speed-up on {thr} {_range(lo, hi)[:-1]}: the range includes x1{note})"
    if hi < 1.0:
        return f"slower on {thr} than on one: {_x(med)} {_range(lo, hi)[:-1]}{note})"
    return f"{_x(med)} on {thr} {_range(lo, hi)[:-1]}{note})"


def plain_text(s: dict) -> str:
    """The plain speed-ups of a series: at its largest undisturbed thread count within the
    cores, and at each beyond them ('' when no count above 1 is left)."""
    cores = s.get("cores") or max(s["threads"])
    ok = [i for i, p in enumerate(s["threads"]) if p > 1 and not s["disturbed"][i]]
    inside = [i for i in ok if s["threads"][i] <= cores]
    pick = inside[-1:] + [i for i in ok if s["threads"][i] > cores]
    return "; ".join(speedup_text(s, i) for i in pick)


def _best_clear(s: dict) -> int | None:
    """The largest thread count with a clear (range above x1), undisturbed speed-up."""
    idx = [i for i in range(len(s["threads"])) if not s["disturbed"][i] and s["speedup_low"][i] > 1.0]
    return idx[-1] if idx else None


def fit_text(s: dict, cores_extrapolated: int | None = None) -> str:
    """What Amdahl's law says of a series, or why it was not fitted."""
    if not s.get("fitted"):
        return f"no Amdahl fit: {s['fit_note']}"
    f = s["serial_fraction"]
    out = f"Amdahl's law fits a serial fraction of {percent(f)} (from {', '.join(map(str, s['fit_threads']))} threads)"
    if _best_clear(s) is None:
        return out + ", but no thread count gave a measurable speed-up, so there is no limit to extrapolate"
    if f <= 0:
        return out + ": no serial part is visible at these thread counts"
    if 1 / f < 1.05:  # 'at most x1.00 on any number of cores' would read as physics; it is no speed-up
        return out + ": the serial part is nearly all of it, so more cores do not help"
    out += f", which allows at most {_x(1 / f)} on any number of cores"
    if cores_extrapolated:
        out += f" ({_x(amdahl(cores_extrapolated, f))} on {cores_extrapolated} cores; ideal: x{cores_extrapolated})"
    return out


# --------------------------------------------------------------------------
# Checking a measured series
# --------------------------------------------------------------------------
def fit_series(threads: Sequence[int], speedup: Sequence[float], disturbed: Sequence[bool], cores: int) -> dict:
    """Amdahl's law from the undisturbed points within the cores, only from at
    least :data:`MIN_FIT_THREADS` thread counts.  ``serial_fraction`` is None
    when not fitted or when the fit is impossible (``serial_fraction_fit``
    keeps the raw value, ``impossible`` says so)."""
    pts = [(p, v) for p, v, d in zip(threads, speedup, disturbed) if p <= cores and not d]
    rec: dict = {
        "fitted": False,
        "fit_threads": [p for p, _ in pts],
        "serial_fraction": None,
        "serial_fraction_fit": None,
        "max_speedup": None,
        "fit_note": None,
        "impossible": False,
    }
    beyond = [p for p in threads if p > cores]
    why_beyond = (
        f" ({', '.join(map(str, beyond))} threads share the {cores} cores and are not fitted)" if beyond else ""
    )
    left_out = (
        " after leaving out the disturbed points" if any(d for p, d in zip(threads, disturbed) if p <= cores) else ""
    )
    if len(pts) < MIN_FIT_THREADS:
        if len(pts) == 2:
            rec["fit_note"] = f"{TWO_POINTS} -- Amdahl's law needs at least {MIN_FIT_THREADS} thread counts"
        else:
            rec["fit_note"] = f"{len(pts)} thread count{'s' if len(pts) != 1 else ''}: no speed-up to fit"
        rec["fit_note"] += left_out + why_beyond
        return rec
    f = fit_amdahl([p for p, _ in pts], [v for _, v in pts])
    rec["serial_fraction_fit"] = f
    if f is None:  # pragma: no cover - pts has a p > 1 here
        return rec
    if impossible_serial(f):
        rec["impossible"] = True
        rec["fit_note"] = f"the fitted serial fraction is {percent(f)}, outside 0-100%"
        return rec
    rec.update(fitted=True, serial_fraction=f, max_speedup=(1 / f) if f > 0 else None)
    if left_out or why_beyond:
        rec["fit_note"] = f"fitted from {', '.join(str(p) for p, _ in pts)} threads{left_out}{why_beyond}"
    return rec


def check_series(
    threads: Sequence[int], times: dict[int, list[float]], baseline: list[float] | None, cores: int
) -> dict:
    """Speed-ups of paired rounds and every impossible figure of one measurement:
    ``{"speedup", "speedup_low", "speedup_high", "rounds_left_out", "reasons" (per
    thread count, None when possible), "fit" (fit_series), "impossible"}``.

    A round whose ratio is above min(threads, cores) is impossible (its 1-thread
    sample was slowed by another program): it is left out of the median and the
    range, which are results and so never pass the cores, and counted in
    ``rounds_left_out``.  When most rounds are impossible, the point itself is:
    its median over all rounds is flagged (and measured once more)."""
    ratios = [[b / t for b, t in zip(times[1], times[p]) if t > 0] for p in threads]
    kept, dropped = [], []
    for p, rs in zip(threads, ratios):
        ok = [r for r in rs if not impossible_speedup(r, p, cores)]
        # at least half the rounds possible: they are the figure; else all of them, and the median is impossible
        use = ok if ok and 2 * len(ok) >= len(rs) else rs
        kept.append(use)
        dropped.append(len(rs) - len(use))
    spreads = [spread(r) for r in kept]
    med = [sp["median"] for sp in spreads]
    reasons: list[str | None] = [None] * len(threads)
    base_off = baseline is not None and baseline_differs(times[1], baseline)
    for i, p in enumerate(threads):
        why = []
        if base_off:
            b1, b0 = spread(times[1])["median"], spread(baseline or [1.0])["median"]
            why.append(f"the 1-thread row differs from its own baseline by {percent(abs(b1 / b0 - 1))}")
        lim = min(p, cores)
        if impossible_speedup(med[i], p, cores):
            why.append(f"{_x(med[i])} is more than the {lim} {'cores' if lim < p else 'threads'} used allow")
        reasons[i] = "; ".join(why) or None
    fit = fit_series(threads, med, [r is not None for r in reasons], cores)
    return {
        "speedup": med,
        "speedup_low": [sp["low"] for sp in spreads],
        "speedup_high": [sp["high"] for sp in spreads],
        "rounds_left_out": dropped,
        "reasons": reasons,
        "fit": fit,
        "impossible": any(r is not None for r in reasons) or fit["impossible"],
    }


def with_checks(doc: dict) -> dict:
    """A scaling document with every field the checks add, for one written before them (no
    spreads, a clamped 2-point fit): its medians are checked and fitted again, so an old
    impossible figure is flagged too; one written before impossible rounds were left out of the
    ranges has them left out now (from its stored samples).  Documents that have every field are
    returned as they are."""
    if all("disturbed" in s and "rounds_left_out" in s for s in doc.get("series", [])):
        return doc
    cores = doc.get("cores") or (doc.get("machine", {}).get("cpu", {}) or {}).get("cores") or _cpus_available()
    out = dict(doc, cores=cores, series=[])
    for s in doc.get("series", []):
        if "disturbed" in s and "rounds_left_out" not in s:
            s = _without_impossible_rounds(s, cores)
        if "disturbed" not in s:
            ths, med = s["threads"], s["speedup"]
            why = [
                f"{_x(v)} is more than {min(p, cores)} cores allow" if impossible_speedup(v, p, cores) else None
                for p, v in zip(ths, med)
            ]
            fit = fit_series(ths, med, [w is not None for w in why], cores)
            s = dict(
                s,
                cores=cores,
                speedup_low=list(med),
                speedup_high=list(med),
                disturbed=[w is not None for w in why],
                disturbed_reason=why,
            )
            s.update(
                {
                    k: fit[k]
                    for k in (
                        "fitted",
                        "fit_threads",
                        "fit_note",
                        "serial_fraction",
                        "serial_fraction_fit",
                        "max_speedup",
                    )
                },
                serial_disturbed=fit["impossible"],
            )
        out["series"].append(s)
    if "cores" not in doc:
        within = [p for p in doc.get("params", {}).get("threads", []) if p <= cores]
        out["note"] = doc_note(within, cores)
    return out


def _without_impossible_rounds(s: dict, cores: int) -> dict:
    """A checked series of an older document, its ranges taken again without the rounds above the
    cores (from its samples: ``times`` and ``times_1t``); as it was when it has no samples."""
    if not s.get("times") or not s.get("times_1t") or len(s["times"]) != len(s["threads"]):
        return dict(s, rounds_left_out=[0] * len(s["threads"]))
    out = dict(s, speedup=list(s["speedup"]), speedup_low=list(s["speedup_low"]), speedup_high=list(s["speedup_high"]))
    out["rounds_left_out"] = []
    for i, p in enumerate(s["threads"]):
        chk = check_series([1, p] if p > 1 else [1], {1: s["times_1t"][i], p: s["times"][i]}, None, cores)
        j = len(chk["speedup"]) - 1
        out["rounds_left_out"].append(0 if s["disturbed"][i] else chk["rounds_left_out"][j])
        if not s["disturbed"][i]:  # a flagged point keeps its flag and its figures
            for k in ("speedup", "speedup_low", "speedup_high"):
                out[k][i] = chk[k][j]
    fit = fit_series(s["threads"], out["speedup"], s["disturbed"], cores)
    out.update({k: fit[k] for k in ("fitted", "fit_threads", "fit_note", "serial_fraction", "max_speedup")})
    out.update(serial_fraction_fit=fit["serial_fraction_fit"], serial_disturbed=fit["impossible"])
    return out


def probe_limit(doc: dict) -> dict | None:
    """The hardware's own limit at the largest thread count within the cores where the FMA probe
    was not disturbed: ``{"threads", "probe", "limit", "by", "label"}``.  A limit cannot lie below
    what was measured: when a kernel's (or BLAS's, or a training step's) undisturbed median beats
    the probe's, the probe was disturbed, and the limit is that figure (``by`` names the series;
    "peak" when the probe holds).  None without an undisturbed probe above 1 thread."""
    cores = doc.get("cores") or max(doc["params"]["threads"])
    series = doc.get("series", [])
    peak = next((s for s in series if s.get("kind") == "peak"), None)
    if peak is None:
        return None
    idx = [i for i, p in enumerate(peak["threads"]) if 1 < p <= cores and not peak["disturbed"][i]]
    if not idx:
        return None
    i = idx[-1]
    p = peak["threads"][i]
    out = {"threads": p, "probe": peak["speedup"][i], "limit": peak["speedup"][i], "by": "peak", "label": None}
    for s in series:
        if s is peak or p not in s["threads"]:
            continue
        j = s["threads"].index(p)
        if not s["disturbed"][j] and s["speedup"][j] > out["limit"]:
            out.update(limit=s["speedup"][j], by=s["name"], label=s["label"])
    return out


def probe_text(doc: dict) -> str | None:
    """The FMA probe in words, coherent with what the kernels measured: 'the hardware's own
    limit' only when no kernel beat it (None without a probe series)."""
    peak = next((s for s in doc.get("series", []) if s.get("kind") == "peak"), None)
    if peak is None:
        return None
    head = "The FMA microbenchmark (no memory traffic, no synchronisation)"
    lim = probe_limit(doc)
    if lim is None or lim["by"] == "peak":
        return f"{head}, the hardware's own limit: {plain_text(peak) or 'no undisturbed thread count above 1'}"
    p = lim["threads"]
    return (
        f"{head}: {plain_text(peak)} -- below the {lim['label']}'s measured {_x(lim['limit'])}, and no code "
        f"beats the hardware's own limit, so the probe was disturbed (another program slowed it): on {p} "
        f"threads the limit is at least {_x(lim['limit'])}, at most x{min(p, doc.get('cores') or p)} (the cores)"
    )


def doc_note(within: list[int], cores: int) -> str | None:
    """Why no series can be fitted, when the thread counts themselves rule it out."""
    if len(within) >= MIN_FIT_THREADS:
        return None
    first = TWO_POINTS if len(within) == 2 else "one thread count within the cores gives no speed-up to fit"
    return (
        f"{first}: Amdahl's law is fitted only from at least {MIN_FIT_THREADS} thread counts within the {cores} "
        f"cores (measured within them: {', '.join(map(str, within))}), so the plain speed-ups are shown"
    )
