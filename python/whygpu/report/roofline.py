"""The roofline section: the machine's roofs and what limits each CPU kernel."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ..bench.machine import isa_name
from ..bench.trust import DISTURBED
from ..explain import busy_while, roof_label, why_below
from ..predict.roofline import COMPUTE_ROOFS, KERNEL_ROOF, MODEL_ERROR, impossible_point
from ..predict.roofline_trust import pct_text, within_model_error
from ._format import Block, Docs, _g, _ms, _pct


def flagged(p: dict) -> bool:
    """A point shown flagged and left out of the conclusions: still faster than its roof when measured
    again -- or, in a document from before that check, faster than its roof at all."""
    return bool(p.get("disturbed")) or (impossible_point(p) and "remeasured" not in p)


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The CPU roofline figure, predicted against measured, and how each rung is modelled (from ``whygpu roofline``)."""
    if "roofline" not in docs:
        return []
    doc = docs["roofline"]
    roofs = doc["roofs"]
    pts = [p for p in doc["points"] if p.get("device", "cpu") == "cpu"]  # the GPU's are in the GPU section
    figs.append(plots.plot_roofline(doc, out / "roofline.png"))
    c, bw = roofs["compute"], roofs["bandwidth"]["1"]
    T = roofs.get("threads", 1)
    blocks: list[Block] = [("h2", f"{num}. The roofline: what limits each kernel")]
    blocks.append(
        (
            "p",
            "A kernel can go no faster than the slower of two limits: the arithmetic its code can use "
            "(compute roof) and the bytes it must move divided by the bandwidth of the memory they come "
            "from. The model predicts time = max(flops / compute roof, bytes / bandwidth). "
            "The arithmetic intensity (flops per byte) decides which limit applies: matrix multiplication "
            "does 2n^3 flops on 3n^2 numbers, so a kernel that reuses data well is compute-bound -- and "
            "then more parallel arithmetic makes it faster.",
        )
    )
    cap = (
        f"This machine's roofs, measured by compiled microbenchmarks: an FMA loop with 12 independent chains "
        f"reached {_g(c['simd_1t'])} GFLOP/s on one core ({roofs['arch']})"
    )
    if T > 1:
        cap += f" and {_g(c['simd_all'])} GFLOP/s on {T} cores"
    cap += (
        f"; baseline-ISA SIMD code {_g(c['simd_baseline'])}, one dependent chain of adds {_g(c['scalar'])}, the "
        f"Python interpreter {_g(c['interpreter'])}. A STREAM triad (counting the read for ownership of "
        "each written line: 32 bytes per element) moved "
        + ", ".join(f"{_g(v)} GB/s from {k}" for k, v in bw.items())
        + " on one core. "
    )
    err_pct = f"{100 * doc.get('model_error', MODEL_ERROR):.0f}%"
    key = [p for p in pts if p["kernel"] in ("packed", "openmp") and not flagged(p)]
    cap += "Hollow markers are the model's predictions, filled ones the measurements" + (
        ": "
        + ", ".join(
            f"{p['kernel']} reached {_pct(100 * p['fraction_of_roof'])} of its predicted speed at n = {p['n']}"
            for p in key
        )
        + "."
        if key
        else "."
    )
    bad = [p for p in pts if flagged(p)]
    if bad:
        cap += (
            " Crossed markers are disturbed points, left out of the conclusions: "
            + ", ".join(f"{p['kernel']} measured at {pct_text(p['fraction_of_roof'])} of its roof" for p in bad)
            + "."
        )
    blocks.append(("fig", "roofline.png", cap))
    table = []
    for p in pts:
        err = p["error"]
        ok = ""
        if flagged(p):
            ok = "disturbed (left out)"
        elif p["kernel"] in ("packed", "openmp"):
            ok = "yes" if within_model_error(p["fraction_of_roof"]) else "no"
        table.append(
            (
                p["kernel"],
                str(p["n"]),
                f"{roof_label(p)} ({_g(p['compute_gflops'])})",
                p["bound"],
                _g(p["intensity"]) + (f" ({p['intensity_level']})" if p.get("intensity_level") else ""),
                _ms(p["predicted_s"]),
                _ms(p["measured_s"]),
                f"{100 * err:+.0f}%" + (" (disturbed)" if flagged(p) else ""),
                ok,
            )
        )
    blocks.append(
        (
            "table",
            (
                "kernel",
                "n",
                "compute roof (GFLOP/s)",
                "bound",
                "flop/byte",
                "predicted",
                "measured",
                "error",
                f"within {err_pct} below the roof",
            ),
            table,
        )
    )
    blocks.append(
        (
            "p",
            "Measured is the best of the timed samples, as the roofs are best-of too (the ladder above "
            "shows medians). "
            "Error is (predicted - measured) / measured time; negative means the kernel is slower than "
            "its roof. The target is the packed and openmp rungs at n = 1024, the ones a roofline should "
            "describe well because nothing but arithmetic should limit them. The roofline is an upper bound: "
            f"within {err_pct} below it the model explains a kernel (its stated error), and a kernel measured "
            "above it is impossible -- its roofs and the kernel are measured once more, and a point still "
            "above is flagged disturbed and left out of the conclusions, never explained.",
        )
    )
    if bad or doc.get("roofs_remeasured"):
        text = f"The roofs are disturbed: {roofs['disturbed']}. " if roofs.get("disturbed") else ""
        text += (
            "A figure came out impossible (a kernel faster than its roof, or the all-core roof below one "
            "core's), so the roofs were measured again (each is the best of both measurements), and each "
            "kernel that passed its roof once more. "
            if doc.get("roofs_remeasured")
            else ""
        )
        if bad:
            text += (
                "Flagged: "
                + "; ".join(
                    f"{p['kernel']} " + (p.get("disturbed_reason") or f"above its roof -- {DISTURBED}") for p in bad
                )
                + ". Another program most likely held a core while the roofs or the kernel were measured; "
                "run again on an idle machine."
            )
        blocks.append(("p", text.strip()))
    blocks.append(("p", "Where and why kernels sit below their roof:"))
    blocks.append(
        (
            "ul",
            [
                why_below(
                    p["kernel"],
                    p["fraction_of_roof"],
                    remeasured=bool(p.get("remeasured", False)),
                    disturbed=p.get("disturbed_reason") if p.get("disturbed") else None,
                    row=p,
                    busy=busy_while(doc.get("quiet"), p["kernel"]),
                )
                for p in pts
            ],
        )
    )
    blocks.append(
        ("p", "How each rung is modelled (the compute roof it can honestly use, and the traffic its loops cause):")
    )
    model_rows = [
        (k, f"{r}: {COMPUTE_ROOFS[r]}", _TRAFFIC_TEXT.get(k, ""))
        for k, r in KERNEL_ROOF.items()
        if any(p["kernel"] == k for p in pts)
    ]
    model_rows += [
        (p["kernel"], _blas_roof_text(p), "as packed (BLAS packs its blocks the same way)")
        for p in pts
        if p["kernel"].startswith("numpy")
    ]
    blocks.append(("table", ("kernel", "compute roof", "bytes counted"), model_rows))
    if doc.get("notes"):
        blocks.append(("ul", list(doc["notes"])))
    if doc.get("unavailable"):
        blocks.append(
            (
                "p",
                "Not on the roofline, because they cannot run here: "
                + "; ".join(f"{u['kernel']} ({u['reason']})" for u in doc["unavailable"])
                + ".",
            )
        )
    return blocks


_TRAFFIC_TEXT = {
    "python": "each matrix once (the interpreter, not memory, is the limit)",
    "cython": "B walked down a column: a 64-byte line per multiply-add once a column panel overflows L1",
    "naive": "B walked down a column: a 64-byte line per multiply-add once a column panel overflows L1",
    "reordered": "all of B once per row of C, from the level B fits in",
    "blocked": "a 128 x 256 tile of B once per row of C from L2; B from memory once per 64 rows",
    "packed": "the packed A block once per NR columns from L2, the B panel once per A block from L3; "
    "A, B, C from memory with packing",
    "openmp": "as packed, against all cores' bandwidth",
}


def _blas_roof_text(p: dict) -> str:
    """NumPy's compute roof: the FMA roof of the ISA its BLAS kernel runs, from the facts detected."""
    isa, f = p.get("roof_isa"), p.get("blas") or {}
    cores = "1 core" if p["compute_roof"] == "simd_1t" else "all its threads"
    if not isa:
        return f"{p['compute_roof']}: SIMD fused multiply-add, {cores} (its BLAS's kernel was not recorded)"
    kernel = f"its {f['kernel']} kernel" if f.get("kernel") else "its BLAS"
    if p.get("roof_is_kernel_isa"):
        return f"{p['compute_roof']}: {isa_name(isa)} fused multiply-add, {cores}, the instruction set {kernel} runs"
    return (
        f"{p['compute_roof']}: {isa_name(isa)} fused multiply-add, {cores}, this CPU's best: an upper bound, "
        f"as the instruction set {kernel} runs " + ("is unknown" if not f.get("kernel_isa") else "has no measured roof")
    )
