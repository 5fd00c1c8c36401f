"""How the packed and openmp kernels chose their block sizes, in words.

The sizes are derived in C++ at run time (csrc/06_blocking.cpp) from the
caches the OS reports, with the analytical model of Low, Igual, Smith and
Quintana-Orti, "Analytical modeling is enough for high-performance BLIS"
(ACM TOMS 2016).  This module redoes the arithmetic in Python so that
``whygpu info`` and ``whygpu explain`` can show each step next to the result
(and a test can check that both agree).
"""

from __future__ import annotations

from ._cpu import cpu_info
from .bench.measure import format_binary_bytes as _bin

__all__ = ["model_blocks", "blocking_lines"]

NC_CAP = 8192  # a VM may report its host's whole L3; wider B panels buy nothing here


def model_blocks(mr: int, nr: int, elem_bytes: int, caches: dict) -> dict:
    """kc, mc, nc as csrc/06_blocking.cpp derives them, with the working.

    ``caches`` is ``cpu_info()["cache_model"]``: per level bytes, ways, sets, line."""
    l1, l2, l3 = caches["L1d"], caches["L2"], caches["L3"]
    s = elem_bytes
    l1_usable = (l1["ways"] - 1) * l1["sets"] * l1["line"]
    kc = max(8, l1_usable // ((mr + nr) * s) // 8 * 8)
    mc = max(mr, l2["bytes"] // 2 // (kc * s) // mr * mr)
    nc_fit = l3["bytes"] // 2 // (2 * kc * s) // nr * nr
    nc = min(NC_CAP, max(nr, nc_fit))
    return {"kc": kc, "mc": mc, "nc": nc, "l1_usable": l1_usable, "nc_capped": nc_fit > NC_CAP}


def blocking_lines(dtype: str = "float32", info: dict | None = None) -> list[str]:
    """The derivation of this machine's block sizes for ``dtype``, one line per size."""
    info = info or cpu_info()
    bk = info.get("blocking", {}).get(dtype)
    cm = info.get("cache_model")
    if not bk or not cm:
        return []
    mr, nr, s = bk["mr"], bk["nr"], bk["elem_bytes"]
    kc, mc, nc = bk["kc"], bk["mc"], bk["nc"]
    l1, l2, l3 = cm["L1d"], cm["L2"], cm["L3"]
    where = "as the OS reports them" if cm.get("source") == "sysfs" else "assumed: the OS did not say"
    out = [
        f"{bk['micro_kernel']} ({dtype}, {s} B a number): an MR x NR = {mr} x {nr} tile of C in registers; "
        f"kc={kc}, mc={mc}, nc={nc} "
        + (
            "set by WHYGPU_BLOCKING (the model's are below)"
            if bk["source"] != "model"
            else f"from the caches ({where}), with the model of Low et al. (TOMS 2016):"
        )
    ]
    m = model_blocks(mr, nr, s, cm)
    out.append(
        f"  kc = {m['kc']}: an A micro-panel ({mr} x kc) and a B micro-panel (kc x {nr}) fill L1 "
        f"({_bin(l1['bytes'])}, {l1['ways']} ways) but one way, left for C: "
        f"({mr} + {nr}) x {m['kc']} x {s} B = {_bin((mr + nr) * m['kc'] * s)} <= {_bin(m['l1_usable'])}"
    )
    out.append(
        f"  mc = {m['mc']}: the packed A block (mc x kc) fills about half of L2 ({_bin(l2['bytes'])}): "
        f"{m['mc']} x {m['kc']} x {s} B = {_bin(m['mc'] * m['kc'] * s)}"
    )
    out.append(
        f"  nc = {m['nc']}: two packed B panels (kc x nc, one read while the next is packed) in half of L3 "
        f"({_bin(l3['bytes'])}): 2 x {m['kc']} x {m['nc']} x {s} B = {_bin(2 * m['kc'] * m['nc'] * s)}"
        + (f" (capped at {NC_CAP} columns)" if m["nc_capped"] else "")
    )
    return out
