"""What the ladder's measurements say: % of the FMA peak, which figures are
impossible (and so left out), the summary (each rung's speed-up over the one
before, with its spread; the span; the GPU), and the plain words the CLI and
the report use for them (with why cache blocking does or does not pay on this
machine's caches).

A figure above 100% of the measured peak is not physics: the machine was
disturbed while the peak or the rung was measured.  :func:`whygpu.bench.ladder.run_ladder`
measures such a figure once more; here a figure that stayed impossible (flagged
``disturbed``) is shown but left out of every conclusion, and a speed-up whose
spreads overlap is called noise, not faster."""

from __future__ import annotations

import math

from .._registry import KERNELS
from .ladder_series import series_device, series_precision
from .measure import format_binary_bytes as _bin
from .measure import format_figure
from .trust import DISTURBED, compare, impossible_fraction, spread

__all__ = [
    "pct_of_peak",
    "pct_text",
    "impossible_record",
    "trusted",
    "gflops_spread",
    "ladder_summary",
    "step_text",
    "left_out_text",
    "blocking_text",
]


def pct_of_peak(rec: dict, peak: dict | None) -> float:
    """% of the FMA peak of what the measurement used: 1 core for the serial
    rungs, all of them for the parallel ones, the whole GPU for the CUDA ones."""
    if not peak:
        return float("nan")
    if rec.get("device", "cpu") != "cpu":
        prec = rec.get("precision") or "float32"
        # a tensor-core rung against the tensor-core peak in its precision, the others against the FMA peak
        g = peak.get("gpu_gflops") if prec == "float32" else (peak.get("gpu_tensor_gflops") or {}).get(prec)
        return 100.0 * rec["gflops"] / g if g else float("nan")
    # NumPy's BLAS chooses its own ISA: it is held against the best this CPU has, not whygpu's choice
    blas = str(rec.get("kernel", "")).startswith("numpy-")
    roof: dict = (peak.get("best_isa") or peak) if blas else peak
    p = (
        roof["gflops_1t"]
        if rec["threads"] <= 1
        else roof["gflops_all"] * min(rec["threads"], peak["threads"]) / peak["threads"]
    )
    if rec.get("dtype") == "float64":
        p /= 2  # the peak is measured in float32; a register holds half as many float64
    return 100.0 * rec["gflops"] / p


def pct_text(p: float | None, disturbed: bool = False) -> str:
    """'43%', '0.52%', '143% (disturbed)' -- plain digits, never '1e+02%'."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if abs(p) >= 10 or p == 0:
        txt = f"{p:.0f}%"
    elif abs(p) >= 1:
        txt = f"{p:.1f}%"
    else:  # two significant digits, written out
        txt = f"{p:.{max(2, 1 - math.floor(math.log10(abs(p))))}f}%"
    return txt + (" (disturbed)" if disturbed else "")


def impossible_record(rec: dict, peak: dict | None) -> bool:
    """More than 100% of the measured peak of what the measurement used."""
    return impossible_fraction(pct_of_peak(rec, peak) / 100.0)


def trusted(rec: dict, peak: dict | None) -> bool:
    """Neither flagged disturbed nor impossible against the peak (a document
    written before the check existed may hold an impossible, unflagged figure)."""
    return not rec.get("disturbed") and not impossible_record(rec, peak)


def _times(rec: dict) -> list[float]:
    return list(rec.get("times") or [rec["seconds"]])


def gflops_spread(rec: dict) -> dict:
    """{"median", "low", "high"} GFLOP/s of a measurement, from its samples."""
    s = spread(_times(rec))
    f = rec["flops"] / 1e9
    return {"median": rec["gflops"], "low": f / s["high"], "high": f / s["low"]}


def _why_left_out(rec: dict, peak: dict | None) -> str:
    if rec.get("disturbed"):
        return rec.get("disturbed_reason") or DISTURBED
    return "over 100% of the measured peak, which is impossible (not measured again)"


def ladder_summary(doc: dict) -> dict:
    """Per series: the largest size with a trustworthy measurement, its GFLOP/s
    (median, low, high) and % of peak; per rung: the speed-up over the previous
    rung from the two rungs' interleaved samples at the largest size both were
    measured at (``speedup_low``/``speedup_high``; ``speedup_clear`` False when
    their spreads overlap: no faster, within the noise), and the ratio of the two
    rows' own figures, as their bars are drawn (``bar_ratio``, ``bar_clear``...).  Measurements flagged
    ``disturbed`` (or impossible) are listed in ``left_out`` and used nowhere
    else; a series with nothing else keeps a row flagged ``disturbed``."""
    peak = doc.get("peak")
    by: dict[str, dict[int, dict]] = {}  # kernel -> n -> measurement
    ok: dict[str, dict[int, dict]] = {}  # the same, trustworthy measurements only
    left_out = []
    for rec in doc["measurements"]:
        by.setdefault(rec["kernel"], {})[rec["n"]] = rec
        if trusted(rec, peak):
            ok.setdefault(rec["kernel"], {})[rec["n"]] = rec
        else:
            left_out.append(
                {
                    "kernel": rec["kernel"],
                    "n": rec["n"],
                    "gflops": rec["gflops"],
                    "pct_peak": pct_of_peak(rec, peak),
                    "reason": _why_left_out(rec, peak),
                }
            )
    order = [k for k in doc["params"]["kernels"] if k in by]
    rows = []
    prev = None
    drawn: dict[str, dict] = {}  # kernel -> the measurement its row (and its bar) shows
    for name in order:
        pts = ok.get(name) or {}
        disturbed = not pts
        use = pts or by[name]
        n_max = max(use)
        rec = drawn[name] = use[n_max]
        gs = gflops_spread(rec)
        row = {
            "kernel": name,
            "n": n_max,
            "gflops": rec["gflops"],
            "gflops_low": gs["low"],
            "gflops_high": gs["high"],
            "seconds": rec["seconds"],
            "threads": rec["threads"],
            "pct_peak": pct_of_peak(rec, peak),
            "device": series_device(name),
            "reference": name not in KERNELS,
            "precision": rec.get("precision") or series_precision(name, rec.get("dtype", "float32")),
            "disturbed": disturbed,
        }
        if disturbed:
            row["disturbed_reason"] = _why_left_out(rec, peak)
        err = (doc.get("errors") or {}).get(name)
        if err:
            row.update(max_rel_error=err["max_rel_error"], error_n=err["n"])
        if not row["reference"] and not disturbed and prev is not None:
            common = set(ok[prev]) & set(pts)
            if common:
                n_c = max(common)
                cmp = compare(_times(pts[n_c]), _times(ok[prev][n_c]))
                row.update(
                    prev=prev,
                    speedup_prev=cmp["ratio"],
                    speedup_low=cmp["low"],
                    speedup_high=cmp["high"],
                    speedup_clear=cmp["clear"],
                    speedup_n=n_c,
                )
            row.update(_bar_ratio(rec, drawn[prev], prev))
        if not row["reference"] and not disturbed:
            prev = name
        rows.append(row)
    # The whole span: the best CPU rung over the first, each at its largest trustworthy size.
    cpu_rungs = [r for r in rows if not r["reference"] and r["device"] == "cpu" and not r["disturbed"]]
    span = None
    if len(cpu_rungs) >= 2:
        first, best = cpu_rungs[0], max(cpu_rungs, key=lambda r: r["gflops"])
        span = {
            "slowest": first["kernel"],
            "fastest": best["kernel"],
            "ratio": best["gflops"] / first["gflops"],
            "low": best["gflops_low"] / first["gflops_high"],
            "high": best["gflops_high"] / first["gflops_low"],
            # rates at two sizes: apart only when the whole spreads are
            "clear": best["gflops_low"] > first["gflops_high"] or best["gflops_high"] < first["gflops_low"],
            "slowest_n": first["n"],
            "fastest_n": best["n"],
            # rungs whose spread reaches the fastest one's: not slower, within the noise
            "tied": [r["kernel"] for r in cpu_rungs if r is not best and r["gflops_high"] >= best["gflops_low"]],
        }
    return {"rows": rows, "span": span, "gpu": _gpu_summary(ok, rows, cpu_rungs), "left_out": left_out}


def _bar_ratio(rec: dict, before: dict, prev: str) -> dict:
    """This row's figure over the row before's, each at the size its bar is drawn at (rates from their
    samples, so two sizes compare): what the steps figure writes on the bar, so that the label and the
    bars it sits between always agree.  ``bar_clear`` False when the spreads overlap."""
    cmp = compare([t / rec["flops"] for t in _times(rec)], [t / before["flops"] for t in _times(before)])
    return {
        "bar_prev": prev,
        "bar_prev_n": before["n"],
        "bar_ratio": cmp["ratio"],
        "bar_low": cmp["low"],
        "bar_high": cmp["high"],
        "bar_clear": cmp["clear"],
    }


def _gpu_summary(ok: dict, rows: list, cpu_rungs: list) -> dict | None:
    """The best CUDA rung at its largest size, against cuBLAS and the best CPU
    rung at the largest size each shares with it (trustworthy measurements
    only); None without GPU series."""
    gpu_rungs = [r for r in rows if not r["reference"] and r["device"] == "cuda" and not r["disturbed"]]
    if not gpu_rungs:
        return None
    n_top = max(r["n"] for r in gpu_rungs)
    best = max((r for r in gpu_rungs if r["n"] == n_top), key=lambda r: r["gflops"])
    out = {"best": best["kernel"], "n": best["n"], "gflops": best["gflops"], "pct_peak": best["pct_peak"]}
    mine = ok[best["kernel"]]
    if "cublas" in ok:
        common = set(ok["cublas"]) & set(mine)
        if common:
            n_c = max(common)
            cmp = compare(_times(mine[n_c]), _times(ok["cublas"][n_c]))
            out.update(
                cublas_n=n_c,
                cublas_gflops=ok["cublas"][n_c]["gflops"],
                vs_cublas=cmp["ratio"],
                vs_cublas_clear=cmp["clear"],
            )
    if cpu_rungs:
        cpu = max(cpu_rungs, key=lambda r: r["gflops"])
        common = set(ok[cpu["kernel"]]) & set(mine)
        out.update(best_cpu=cpu["kernel"], best_cpu_gflops=cpu["gflops"], best_cpu_n=cpu["n"])
        if common:
            n_c = max(common)
            cmp = compare(_times(mine[n_c]), _times(ok[cpu["kernel"]][n_c]))
            out.update(vs_cpu_n=n_c, vs_cpu=cmp["ratio"], vs_cpu_clear=cmp["clear"])
    return out


def step_text(row: dict) -> str:
    """A rung's speed-up over the rung before, with its range: 'x2.31 vs naive at
    n=256 (x2.20-2.45)', or, when the spreads overlap, '... : within the noise'
    (not faster).  '' when there is none."""
    if "speedup_prev" not in row:
        return ""
    g = format_figure
    txt = (
        f"x{g(row['speedup_prev'])} vs {row['prev']} at n={row['speedup_n']}"
        f" (x{g(row.get('speedup_low'))}-{g(row.get('speedup_high'))})"
    )
    return txt if row.get("speedup_clear", True) else txt + ": within the noise"


def left_out_text(summary: dict) -> str | None:
    """One sentence on the measurements left out of the conclusions (None when there are none)."""
    out = summary.get("left_out") or []
    if not out:
        return None
    items = "; ".join(
        f"{x['kernel']} at n={x['n']} ({format_figure(x['gflops'])} GFLOP/s, {pct_text(x['pct_peak'], True)} "
        f"of the FMA peak it may reach: {x['reason']})"
        for x in out
    )
    one = len(out) == 1
    return (
        f"{len(out)} measurement{'' if one else 's'} came out faster than the hardware allows and "
        f"{'is' if one else 'are'} left out of the conclusions: {items}. More than 100% of a measured peak "
        "is not physics: another program disturbed the peak or the kernel while they were timed."
    )


def blocking_text(summary: dict, caches: dict, dtype: str = "float32", bandwidth: dict | None = None) -> str | None:
    """Why cache blocking did (or did not) beat the reordered loop on this machine, from the
    measured step and this machine's cache sizes (``cpu_info()['caches']``); None when the
    blocked rung was not compared with reordered.

    Blocking saves re-reads of B: reordered reads all of B once per row of C, blocked once per
    tile of rows.  That only pays where B's re-reads are expensive -- B outside the caches --
    so on a CPU whose L3 holds B, and whose prefetchers keep up with reordered's in-order
    stream, the two rungs run at about the same speed, and the figure must say so rather than
    suggest the idea is wrong.  ``bandwidth`` (GB/s by level, 1 core), when the roofline was
    measured too, puts a figure on "keeps up"."""
    rows = {r["kernel"]: r for r in summary.get("rows", [])}
    b, r = rows.get("blocked"), rows.get("reordered")
    if not b or not r or b.get("prev") != "reordered" or "speedup_prev" not in b:
        return None
    item = 8 if dtype == "float64" else 4
    n = b["speedup_n"]
    mat = n * n * item
    l2, l3 = caches.get("L2"), caches.get("L3")
    won = b.get("speedup_clear", True) and b["speedup_prev"] > 1
    step = step_text(b)
    where = f"At n = {n}, B is {_bin(mat)} ({dtype})"
    if won:
        beyond = (
            f", beyond this machine's {_bin(l3)} L3"
            if l3 and mat > l3
            else (f", beyond this machine's {_bin(l2)} L2" if l2 and mat > l2 else "")
        )
        return f"Cache blocking pays here: blocked is {step}. {where}{beyond}: reordered re-reads it for each row of C."
    slower = b.get("speedup_clear", True) and b["speedup_prev"] < 1
    # clearly slower: the tiles' extra loops and shorter inner loops cost more than the re-reads they save
    head = f"Cache blocking did not beat reordered here (blocked is {step}" + (
        "; slower, as its tile loops cost more than they save). " if slower else "). "
    )
    # one element of B (item bytes) per multiply-add (2 flops): reordered's B stream in GB/s
    stream = item / 2 * r["gflops"]
    rate = f"about {format_figure(stream)} GB/s at its {format_figure(r['gflops'])} GFLOP/s (n = {r['n']})"
    if not l2 or not l3:
        return head + f"{where}; this machine's cache sizes are unknown, so where B sits cannot be said."
    if mat <= l2:
        return head + (
            f"{where}: it fits in this machine's {_bin(l2)} L2, so reordered already reads it from a cache "
            "and blocking has nothing to save. Its lesson shows only on matrices larger than the caches."
        )
    n_l3 = int(math.sqrt(l3 / item))
    if mat <= l3:
        keep = f" (the L3 delivers about {format_figure(bandwidth['L3'])} GB/s to one core)" if bandwidth else ""
        return head + (
            f"{where}: larger than the {_bin(l2)} L2, but inside the {_bin(l3)} L3. Reordered reads B in order, "
            f"{rate}, and the hardware "
            f"prefetchers stream that from L3 in time{keep}: re-reading B is nearly free, so there is little for "
            f"blocking to save. B leaves the L3 only above n = {n_l3} ({dtype}); there, reordered's re-reads come "
            "from DRAM and blocking should win."
        )
    keep = f" (about {format_figure(bandwidth['DRAM'])} GB/s measured)" if bandwidth and bandwidth.get("DRAM") else ""
    return head + (
        f"{where}, more than the {_bin(l3)} L3, so reordered re-reads it from DRAM -- but only "
        f"{rate}, which this machine's memory "
        f"delivers{keep}: the re-reads are not yet what limits it, so blocking's saving does not show."
    )
