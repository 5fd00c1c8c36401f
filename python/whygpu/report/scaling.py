"""The scaling section: speed-up on more cores (median and min-max of interleaved rounds), Amdahl's law
where at least three thread counts allow a fit, and disturbed figures flagged rather than explained."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..bench.scaling import fit_text, percent, plain_text, probe_text, with_checks
from ..bench.trust import DISTURBED
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
    P = max(doc["params"]["threads"])
    X = max(16, 4 * P)  # the core count Amdahl's law is extrapolated to
    blocks: list[Block] = [("h2", f"{num}. More cores: speed-up and Amdahl's law")]
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
        if k.get("fitted") or not doc.get("note"):
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
    if doc.get("note"):
        cap += f"No Amdahl fit -- {doc['note']}."
    blocks.append(("fig", "scaling.png", cap.strip()))
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


def _flags(s: dict) -> str:
    parts = [
        f"{s['label']} on {p} threads: {why}"
        for p, d, why in zip(s["threads"], s["disturbed"], s["disturbed_reason"])
        if d
    ]
    if s.get("serial_disturbed"):
        parts.append(f"{s['label']}: {s['fit_note']}")
    return "; ".join(parts)
