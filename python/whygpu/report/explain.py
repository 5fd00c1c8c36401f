"""The explain section: one product, kernel by kernel, predicted against measured."""

from __future__ import annotations

from pathlib import Path

from ..explain import format_bytes, format_error
from ._format import Block, Docs, _g, _ms


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
                f"{r['compute_roof']} ({_g(r['compute_gflops'])})",
                f"{format_bytes(worst['bytes'])} {worst['level']}" if worst else "in L1",
                _g(r["intensity"]),
                r["bound"],
                _ms(r["predicted_s"]),
                _ms(r["measured_s"]) if "measured_s" in r else "not measured",
                r.get("precision", doc["dtype"]),
                format_error(r.get("max_rel_error")),
            )
        )
    for u in doc.get("unavailable") or []:
        rows.append((u["kernel"], "unavailable: " + u["reason"], "", "", "", "", "", u.get("precision") or "", ""))
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
                "precision",
                "max rel. error",
            ),
            rows,
        ),
    ]
