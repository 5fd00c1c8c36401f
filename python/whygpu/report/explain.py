"""The explain section: one product, kernel by kernel, predicted against measured."""

from __future__ import annotations

from pathlib import Path

from ..bench.trust import DISTURBED
from ..explain import format_bytes, format_error, roof_label, why_row
from ..predict.roofline_trust import pct_text
from ._format import Block, Docs, _g, _ms
from .roofline import flagged


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Each kernel's roof, bytes moved, bound, times, precision and error (from ``whygpu explain``)."""
    if "explain" not in docs:
        return []
    doc = docs["explain"]
    rows = []
    for r in doc["rows"]:
        worst = max(r["traffic"], key=lambda t: t["seconds"]) if r["traffic"] else None
        rows.append(
            (
                r["kernel"],
                f"{roof_label(r)} ({_g(r['compute_gflops'])})",
                f"{format_bytes(worst['bytes'])} {worst['level']}" if worst else "in L1",
                _g(r["intensity"]),
                r["bound"],
                _ms(r["predicted_s"]),
                _ms(r["measured_s"]) if "measured_s" in r else "not measured",
                _of_roof(r),
                r.get("precision", doc["dtype"]),
                format_error(r.get("max_rel_error")),
            )
        )
    for u in doc.get("unavailable") or []:
        rows.append((u["kernel"], "unavailable: " + u["reason"], "", "", "", "", "", "", u.get("precision") or "", ""))
    return [
        ("h2", f"{num}. One product explained: {doc['m']} x {doc['k']} @ {doc['k']} x {doc['n']}"),
        (
            "p",
            f"{doc['flops'] / 1e6:,.1f} MFLOP ({doc['dtype']}). For each kernel, the roof it can use, the bytes "
            "its loops move from the level that limits most, the intensity, predicted vs measured time -- and, "
            "side by side with the speed, the precision its products are computed in and its error ("
            + doc.get("error_metric", "max relative error against a float64 product")
            + ").",
        ),
        (
            "table",
            (
                "kernel",
                "compute roof",
                "bytes moved",
                "flop/byte",
                "bound",
                "predicted",
                "measured",
                "of roof",
                "precision",
                "max rel. error",
            ),
            rows,
        ),
    ] + _why(doc)


def _why(doc: dict) -> list[Block]:
    """Why each measured kernel sits where it does, from the facts the document holds (a NumPy row's BLAS
    kernel and the roof of its instruction set included), then the flagged rows."""
    items = [why_row(r, doc.get("quiet"), remeasured="remeasured" in r) for r in doc["rows"] if "measured_s" in r]
    return ([("ul", items)] if items else []) + _disturbed(doc)


def _of_roof(r: dict) -> str:
    if "measured_s" not in r:
        return ""
    return pct_text(r["predicted_s"] / r["measured_s"]) + (" (disturbed)" if flagged(_point(r)) else "")


def _point(r: dict) -> dict:
    """A row as a roofline point (older documents have no fraction_of_roof)."""
    return {**r, "fraction_of_roof": r.get("fraction_of_roof", r["predicted_s"] / r["measured_s"])}


def _disturbed(doc: dict) -> list[Block]:
    bad = [r for r in doc["rows"] if "measured_s" in r and flagged(_point(r))]
    if not bad:
        return []
    return [
        (
            "p",
            "Flagged: "
            + "; ".join(
                f"{r['kernel']} " + (r.get("disturbed_reason") or f"measured above its roof -- {DISTURBED}")
                for r in bad
            )
            + ". A kernel cannot run faster than its roof: another program most likely held a core while the "
            "roofs or the kernel were measured. These rows are left out of the conclusions; run again on an "
            "idle machine.",
        )
    ]
