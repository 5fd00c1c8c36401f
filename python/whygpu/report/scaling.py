"""The scaling section: speed-up on more cores (median and min-max of interleaved rounds), Amdahl's law
where at least three thread counts allow a fit, and disturbed figures flagged rather than explained.  On a
machine whose cores allow no fit (2 cores: two points) the section is titled and written for what it does
show, the speed-ups measured."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..bench.scaling import MIN_FIT_THREADS, fit_text, percent, plain_text, probe_text, with_checks
from ..bench.trust import DISTURBED
from ..plots.scaling import any_fit, extrapolated_cores, measured_title
from ._format import Block, Docs, _g, _ms


def _plain(s: dict) -> str:
    return plain_text(s) or "no undisturbed thread count above 1"


def _cell(s: dict, i: int) -> str:
    p, lo, hi = s["threads"][i], s["speedup_low"][i], s["speedup_high"][i]
    txt = f"{p}: x{_g(s['speedup'][i])}" + (f" ({_g(lo)}-{_g(hi)})" if lo != hi and p > 1 else "")
    return txt + (" [disturbed, left out]" if s["disturbed"][i] else "")


def _train_caption(t: dict, X: int) -> str:
    cap = f"A whole training step: {_plain(t)}" + (f"; {fit_text(t, X)}" if t.get("fitted") else "")
    steps = t.get("steps") or []
    if not any(t["disturbed"]) and len(steps) >= 2 and all("matmul_s" in x for x in (steps[0], steps[-1])):
        a, b = steps[0], steps[-1]
        cap += (
            f". Inside it (one round), matrix multiplication went from {_ms(a['matmul_s'])} to {_ms(b['matmul_s'])} "
            f"per step and everything else from {_ms(a['other_s'])} to {_ms(b['other_s'])}"
        )
        cap += " -- the part that scales worse sets the limit" if t.get("fitted") else ""
    return cap + ". "


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Speed-up by threads and the serial fractions fitted to it (from ``whygpu scaling``)."""
    if "scaling" not in docs:
        return []
    doc = with_checks(docs["scaling"])  # a document written before the checks is checked now
    figs.append(plots.plot_scaling(doc, out / "scaling.png"))
    ser = {s["name"]: s for s in doc["series"]}
    X = extrapolated_cores(doc)  # the core count Amdahl's law is extrapolated to (the figure's legend's too)
    fitted = any_fit(doc)
    title = "More cores: speed-up and Amdahl's law" if fitted else measured_title(doc)
    blocks: list[Block] = [("h2", f"{num}. {title}")]
    k = ser.get(doc["params"]["kernel"])
    cap = (
        "Each thread count was timed in interleaved rounds (1 thread, 2, ..., then again); a speed-up is the median "
        "over the rounds of each round's ratio to its own 1-thread time, with the min-max range. "
    )
    if k:
        cap += f"The {k['name']} kernel at n = {doc['params']['n']}: {_plain(k)}. "
        if any(
            hi < 1
            for p, hi, d in zip(k["threads"], k["speedup_high"], k["disturbed"])
            if 1 < p <= doc["cores"] and not d
        ):
            cap += (
                "Slower on more threads than on one: another program was using the cores, so this shows "
                "contention, not the kernel's scaling. "
            )
        if k.get("fitted") or (fitted and not doc.get("note")):
            cap += fit_text(k, X) + ". "
    probe = probe_text(doc)  # never a 'limit' below what a kernel measured
    if probe:
        cap += probe + ". "
    if "numpy" in ser:
        cap += f"NumPy's BLAS: {_plain(ser['numpy'])}. "
    if "train" in ser:
        cap += _train_caption(ser["train"], X)
    flagged = [s for s in doc["series"] if any(s["disturbed"]) or s.get("serial_disturbed")]
    if flagged:
        cap += (
            "Red crosses: figures the hardware cannot produce (" + "; ".join(_flags(s) for s in flagged) + ") -- "
            f"{DISTURBED}. "
        )
    if not fitted:
        cap += _no_fit_text(doc)
    blocks.append(("fig", "scaling.png", cap.strip()))
    if not fitted:  # the speed-ups measured: no serial fraction or limit columns to leave empty
        measured = [(s["label"], ", ".join(_cell(s, i) for i in range(len(s["threads"])))) for s in doc["series"]]
        blocks.append(("table", ("series", "speed-up by threads (min-max)"), measured))
        return blocks
    rows = []
    for s in doc["series"]:
        if s.get("serial_disturbed"):
            serial, limit = f"{percent(s.get('serial_fraction_fit'))}: impossible, left out", "-"
        elif not s.get("fitted"):
            serial, limit = "not fitted", "-"
        else:
            serial = percent(s["serial_fraction"])
            limit = "none seen" if s["max_speedup"] is None else f"x{_g(s['max_speedup'])}"
        rows.append((s["label"], ", ".join(_cell(s, i) for i in range(len(s["threads"]))), serial, limit))
    blocks.append(
        ("table", ("series", "speed-up by threads (min-max)", "serial fraction (Amdahl)", "limit on any cores"), rows)
    )
    return blocks


def _no_fit_text(doc: dict) -> str:
    """Why this machine shows speed-ups and no serial fraction, from its cores and the thread counts measured."""
    cores = doc.get("cores") or max(doc["params"]["threads"])
    within = sorted({p for s in doc["series"] for p in s["threads"] if p <= cores})
    counts = " and ".join(map(str, within)) if len(within) <= 2 else ", ".join(map(str, within))
    shown = []
    for s in doc["series"]:  # each series at the most threads within the cores, undisturbed, against the ideal
        idx = [i for i, p in enumerate(s["threads"]) if 1 < p <= cores and not s["disturbed"][i]]
        if idx and s["speedup_low"][idx[-1]] > 1:
            i = idx[-1]
            p, x = s["threads"][i], s["speedup"][i]
            shown.append(f"x{_g(x)} on {p} threads ({s['label']}), {percent(x / p)} of the ideal x{p}")
    return (
        f"What {cores} core{'' if cores == 1 else 's'} can show is the speed-up itself"
        + (": " + "; ".join(shown) if shown else "")
        + ". Amdahl's law says a serial "
        "fraction f of the work caps the speed-up at 1/f however many cores there are; telling f from the noise "
        f"takes at least {MIN_FIT_THREADS} thread counts within the cores, and here there "
        f"{'is' if len(within) == 1 else 'are'} {len(within)} ({counts} thread{'' if within == [1] else 's'}), "
        "so no serial fraction is claimed: on a machine with more cores 'whygpu scaling' fits one."
    )


def _flags(s: dict) -> str:
    parts = [
        f"{s['label']} on {p} threads: {why}"
        for p, d, why in zip(s["threads"], s["disturbed"], s["disturbed_reason"])
        if d
    ]
    if s.get("serial_disturbed"):
        parts.append(f"{s['label']}: {s['fit_note']}")
    return "; ".join(parts)
