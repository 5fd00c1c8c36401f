"""Roofline figures a student can trust: the model's stated error, points
that are impossible (a kernel measured faster than its roof), and measuring
those once more before they are shown flagged rather than explained.

The roofline is an upper bound on speed.  A kernel measured *above* its roof
is not physics but a disturbed figure: most often the roof was measured while
another program held a core (so it came out low) and the kernel a moment
later in quiet.  :func:`settle_impossible` measures both again once; what is
still impossible is flagged ``disturbed`` and left out of the conclusions
(:mod:`whygpu.predict.roofline` and :mod:`whygpu.explain` use it, the CLI, report and
figures show the flag).
"""

from __future__ import annotations

import math
from typing import Callable

from ..bench.probes import best_of_roofs
from ..bench.trust import DISTURBED, impossible_fraction, spread

__all__ = [
    "MODEL_ERROR",
    "ROOF_BELOW_PEAK",
    "prediction_error",
    "measured_fields",
    "impossible_point",
    "settle_impossible",
    "pct_text",
    "plain",
    "within_model_error",
    "roofs_disturbed",
]

# The model's stated error.  The roofline is an upper bound on speed: a kernel
# that reaches 75-100% of its roof counts as explained by it (the packed
# rungs sit 13-24% below theirs on a quiet machine: docs/cli.md, and the
# report's "within 25%" column).  Above 100% is not "explained" but impossible.
MODEL_ERROR = 0.25

# Rungs whose compute roof is known to lie *below* what they can reach, so
# passing it is no disturbance: the tensor-core roof is measured with
# warp-level mma.sync, and on Hopper rung 16's warpgroup wgmma goes faster.
ROOF_BELOW_PEAK = {
    "cuda_wgmma": "its roof is measured with warp-level mma.sync, and on Hopper the warpgroup wgmma "
    "instruction reaches more than any mma.sync can: for this rung the roof is a lower bound",
}


# All cores together reach at least one core's FMA peak (a little less only where the "cores" are SMT
# siblings sharing one core's FMA units): an all-core roof below this share of the 1-core one is disturbed.
ALL_CORES_FLOOR = 0.9


def roofs_disturbed(machine: dict) -> str | None:
    """Why the CPU roofs themselves are impossible (None when they are not): the FMA roof on all cores
    measured below one core's -- another program held a core while it was measured."""
    c, t = machine.get("compute") or {}, machine.get("threads", 1)
    if t > 1 and c.get("simd_all") and c.get("simd_1t") and c["simd_all"] < ALL_CORES_FLOOR * c["simd_1t"]:
        return (
            f"the FMA roof on all {t} cores came out at {plain(c['simd_all'])} GFLOP/s, below one core's "
            f"{plain(c['simd_1t'])}, which is impossible: another program held a core while it was measured"
        )
    return None


def prediction_error(predicted_s: float, measured_s: float) -> float:
    """(predicted - measured) / measured: -0.2 means the model is 20% optimistic."""
    return (predicted_s - measured_s) / measured_s


def measured_fields(model: dict, rec: dict) -> dict:
    """A measurement placed against its model: the best sample (the roofs are
    best-of too: both say what this machine *can* do, so a sample spoiled by
    another program does not count against the model), the median and the
    samples' min-max spread kept alongside."""
    best = rec.get("seconds_min", rec["seconds"])
    out = {
        "measured_s": best,
        "measured_gflops": model["flops"] / best / 1e9,
        "median_s": rec["seconds"],
        "samples": rec.get("samples"),
        "error": prediction_error(model["predicted_s"], best),
        "fraction_of_roof": model["predicted_s"] / best,
        "remeasured": False,
        "disturbed": False,
    }
    if rec.get("times"):
        out["spread_s"] = spread(rec["times"])
    return out


def impossible_point(p: dict) -> bool:
    """A kernel measured faster than its roof (more than 100% of it): the
    roofs are upper bounds, so one of the two figures was disturbed."""
    return p["kernel"] not in ROOF_BELOW_PEAK and impossible_fraction(p.get("fraction_of_roof"))


def settle_impossible(
    rows: list[dict],
    recs: dict[str, dict],
    machine: dict,
    *,
    remodel: Callable[[dict, dict], dict],
    remeasure: Callable[[dict], dict],
    roofs_again: Callable[[], dict | None] | None,
    gpu_again: Callable[[], dict | None] | None = None,
) -> tuple[dict, bool]:
    """Measure once more what made a row impossible (faster than its roof).

    A roof measured while another program held a core comes out low; a kernel
    measured a moment later, in quiet, then passes it.  So when any row is
    impossible, its roofs (``roofs_again``: the CPU's, ``gpu_again``: the
    GPU's) are measured again -- each roof becomes the best of both, as roofs
    are best-of -- every row is placed again against them, and each
    impossible row's kernel is measured once more (``remeasure(row)`` -> a
    measurement record), the better of its two draws kept (in ``recs`` too), as
    the roofs keep theirs.  A row still impossible is flagged ``disturbed``
    (with ``disturbed_reason``) and must be left out of the conclusions.
    Roofs that are themselves impossible (:func:`roofs_disturbed`) are measured
    again too; if they stay so, ``machine["disturbed"]`` says why and the rows
    placed on the all-core roof are flagged.
    ``rows`` (by kernel; ``recs`` their measurements) are updated in place;
    ``remodel(row, machine)`` is the row's model.  Returns the machine the rows
    now stand on and whether its roofs were measured again."""
    bad = [r["kernel"] for r in rows if "measured_s" in r and impossible_point(r)]
    measured = [r for r in rows if "measured_s" in r]
    if not bad and not (measured and roofs_disturbed(machine)):
        return machine, False
    on_gpu = {r["kernel"]: r.get("device") == "cuda" for r in rows}
    again = False
    # The CPU roofs again: a CPU point passed its roof, or the roofs themselves are impossible.
    if roofs_again is not None and (any(not on_gpu[k] for k in bad) or roofs_disturbed(machine)):
        machine = best_of_roofs(machine, roofs_again())
        again = True
    if gpu_again is not None and machine.get("gpu") and any(on_gpu[k] for k in bad):
        machine = {**machine, "gpu": best_of_roofs(machine["gpu"], gpu_again())}
        again = True
    for row in rows:
        if "measured_s" not in row:
            continue
        name = row["kernel"]
        if name not in bad:
            model = remodel(row, machine)
            row.update(model, **measured_fields(model, recs[name]))
            continue
        model = remodel(row, machine)
        # Both draws placed on the roofs as they stand now; the better one is kept, as the roofs keep
        # theirs -- a fresh draw alone would pull exactly the fastest kernels down.
        drawn = [recs[name], remeasure(row)]
        placed = [{**row, **model, **measured_fields(model, rec)} for rec in drawn]
        i = 0 if placed[0]["measured_s"] <= placed[1]["measured_s"] else 1
        recs[name] = drawn[i]
        first, again = placed[0]["fraction_of_roof"], placed[1]["fraction_of_roof"]
        row.update(placed[i], remeasured=True, disturbed=impossible_point(placed[i]), kept=("first", "again")[i])
        if row["disturbed"]:
            row["disturbed_reason"] = (
                f"measured at {pct_text(first)} of its roof, and at {pct_text(again)} when it and the roofs "
                f"were measured once more (the better, {pct_text(row['fraction_of_roof'])}, kept): faster than "
                f"an upper bound both times -- {DISTURBED}"
            )
    # Still impossible roofs: a point placed on the all-core roof says nothing, whatever its fraction.
    why = roofs_disturbed(machine)
    machine = {**machine, "disturbed": why} if why else {k: v for k, v in machine.items() if k != "disturbed"}
    for row in measured:
        if why and not row.get("disturbed") and not on_gpu[row["kernel"]] and row["compute_roof"] == "simd_all":
            row.update(disturbed=True, disturbed_reason=f"placed on a disturbed roof: {why} -- {DISTURBED}")
    return machine, again


def within_model_error(fraction: float) -> bool:
    """At or below the roof by no more than the model's stated error: "the model explains it".  Judged on
    the whole percent shown (pct_text), so a kernel shown at 75% is not called unexplained."""
    return not impossible_fraction(fraction) and round(100 * fraction) >= round(100 * (1 - MODEL_ERROR))


def pct_text(fraction: float) -> str:
    """'143%'; '100.4%' where whole percents would hide that a figure passed 100%."""
    pct = 100 * fraction
    return f"{pct:.1f}%" if fraction > 1 and round(pct) <= 100 else f"{pct:.0f}%"


def plain(x: float | None, digits: int = 3) -> str:
    """`x` to `digits` significant digits, never in exponent notation: '1000', not '1e+03'."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    d = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{round(x, d):.{d}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
