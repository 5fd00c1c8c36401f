"""The CPU ladder: speed, speed-up, precision and error of each matmul rung."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from .._registry import KERNELS
from ..bench.ladder_results import blocking_text, left_out_text, pct_text, step_text
from ..bench.measure import format_seconds
from ..explain import format_error
from ._format import Block, Docs, _g


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The ladder figures, the step table, errors and what was skipped (from ``whygpu ladder``)."""
    if "ladder" not in docs:
        return []
    doc = docs["ladder"]
    s = doc["summary"]
    rows = s["rows"]
    # the conclusions use trustworthy figures only: a disturbed one is shown, flagged, and left out
    cpu_rows = [r for r in rows if not r["reference"] and r.get("device", "cpu") == "cpu" and not r.get("disturbed")]
    blocks: list[Block] = [("h2", f"{num}. The ladder: one idea per rung")]
    figs.append(plots.plot_ladder(doc, out / "ladder.png"))
    peak = doc.get("peak", {})
    dtype = doc["params"]["dtype"]
    cap = (
        f"Speed of C = A @ B for square n x n {dtype} matrices, n = {', '.join(map(str, doc['params']['sizes']))}"
        f", for each kernel on this {doc['machine']['cpu'].get('model', 'CPU')} (log scale; median of repeats"
        + (", the kernels of one size timed interleaved; bars: min-max" if doc["params"].get("interleaved") else "")
        + "). "
    )
    if cpu_rows:
        best = max(cpu_rows, key=lambda r: r["gflops"])
        peak_here = peak.get("gflops_all" if best["threads"] > 1 else "gflops_1t", float("nan"))
        tied = (s.get("span") or {}).get("tied")
        tie = f" ({', '.join(tied)} within the noise of it: their spreads overlap, so not slower)" if tied else ""
        cap += (
            f"The fastest rung, {best['kernel']}, reached {_g(best['gflops'])} GFLOP/s at n = {best['n']}{tie}: "
            f"{pct_text(best['pct_peak'])} of the "
            f"{_g(peak_here / (2 if dtype == 'float64' else 1))}"
            f" GFLOP/s {dtype} FMA peak we measured on the {best['threads']} "
            f"core{'s' if best['threads'] > 1 else ''} it used"
        )
        if s.get("span") and s["span"]["slowest"] != best["kernel"]:
            sp = s["span"]
            rng = f" (x{_g(sp['low'])}-{_g(sp['high'])})" if "low" in sp else ""
            if sp.get("clear", True):
                cap += (
                    f", and {_g(sp['ratio'])} times the speed of the {sp['slowest']} loop{rng} "
                    f"({_g(cpu_rows[0]['gflops'])} GFLOP/s at n = {sp['slowest_n']})"
                )
            else:
                cap += f"; it cannot be told apart from the {sp['slowest']} loop{rng}: their spreads overlap"
        cap += ". "
    gpu_rows = [r for r in rows if r.get("device") == "cuda"]
    if gpu_rows and peak.get("gpu_gflops"):
        cap += (
            f"The CUDA rungs and cuBLAS ran on the GPU ({peak.get('gpu_device', 'GPU')}) at n = "
            f"{', '.join(map(str, doc['params'].get('gpu_sizes') or []))}, with the data already in GPU memory; "
            f"their % of peak is against the GPU's measured float32 FMA peak of {_g(peak['gpu_gflops'])} "
            "GFLOP/s"
        )
        tensor = peak.get("gpu_tensor_gflops") or {}
        if tensor and any(r.get("precision") in tensor for r in gpu_rows):
            cap += (
                ", the tensor-core rungs' against the measured tensor-core peak in their precision ("
                + ", ".join(f"{prec} {_g(v)} GFLOP/s" for prec, v in tensor.items())
                + ")"
            )
        cap += ". "
    refs = [r for r in rows if r["reference"]]
    if refs:
        cap += (
            "Dashed lines are references: "
            + "; ".join(
                f"{r['kernel']} {_g(r['gflops'])} GFLOP/s at n = {r['n']}"
                + (" (disturbed)" if r.get("disturbed") else "")
                for r in refs
            )
            + "."
        )
    blocks.append(("fig", "ladder.png", cap))
    # the step table
    table = []
    for r in rows:
        summary = (
            KERNELS[r["kernel"]].summary
            if r["kernel"] in KERNELS
            else ("NumPy's BLAS (OpenBLAS/MKL), reference" if r["kernel"].startswith("numpy") else "reference")
        )
        gf = _g(r["gflops"]) + (f" ({_g(r['gflops_low'])}-{_g(r['gflops_high'])})" if "gflops_low" in r else "")
        table.append(
            (
                r["kernel"],
                summary,
                str(r["n"]),
                gf,
                step_text(r),
                pct_text(r["pct_peak"], r.get("disturbed", False)),
                r.get("precision", ""),
                format_error(r.get("max_rel_error")),
            )
        )
    blocks.append(
        (
            "table",
            (
                "kernel",
                "what it adds",
                "largest n",
                "GFLOP/s (min-max)",
                "speed-up (min-max)",
                "% of peak",
                "precision",
                "max rel. error",
            ),
            table,
        )
    )
    left = left_out_text(s)
    if left:
        blocks.append(("p", left))
    errs = doc.get("errors") or {}
    if errs:
        ns = sorted({e["n"] for e in errs.values()})
        text = (
            f"Speed is only half of it: each rung states the precision its products are computed in and its "
            f"error against the exact answer ({doc.get('error_metric', 'against a float64 product')}; measured "
            f"once per rung at n = {', '.join(map(str, ns))}). "
        )
        by_prec: dict[str, list[float]] = {}
        for e in errs.values():
            by_prec.setdefault(e["precision"], []).append(e["max_rel_error"])
        text += (
            "Here: "
            + "; ".join(
                f"{prec} from {format_error(min(v))} to {format_error(max(v))}"
                if len(v) > 1
                else f"{prec} {format_error(v[0])}"
                for prec, v in by_prec.items()
            )
            + ". "
        )
        if any(p in by_prec for p in ("tf32", "bf16")):
            text += (
                "The tensor-core rungs are fast because their operands are short: TF32 keeps 11 significant "
                "bits (unit roundoff 2^-11, errors around 1e-4 to 1e-3), bf16 8 bits (2^-8, errors around "
                "1e-3 to 1e-2), against float32's 24 (errors around 1e-7). Training tolerates that; a "
                "physics simulation may not."
            )
        blocks.append(("p", text))
    if doc.get("unavailable"):
        blocks.append(
            (
                "p",
                "Not measured, because they cannot run here: "
                + "; ".join(f"{u['kernel']} ({u['reason']})" for u in doc["unavailable"])
                + ".",
            )
        )
    steps = [r for r in rows if not r["reference"] and "speedup_prev" in r]
    if steps:
        clear = [r for r in steps if r.get("speedup_clear", True)]
        noise = [r for r in steps if not r.get("speedup_clear", True)]
        up = [r for r in clear if r["speedup_prev"] > 1]
        slow = [r for r in clear if r["speedup_prev"] < 1]
        cap2 = (
            "What each idea buys: a bar is one rung's speed-up over the rung before it, the two at one size (the "
            "largest both ran, under the bar), the ratio of their median times from interleaved samples; the "
            "whisker is the range their min-max spreads allow. It is the same figure as the table's speed-up "
            "column (each rung's GFLOP/s is in the table and the figure "
            "above). "
        )
        if up:
            big = max(up, key=lambda r: r["speedup_prev"])
            cap2 += f"The biggest single step on this machine is {big['kernel']}: {step_text(big)}. "
        if slow:
            cap2 += (
                "Not every idea pays everywhere: "
                + "; ".join(f"{r['kernel']} is x{_g(r['speedup_prev'])} of {r['prev']} here" for r in slow)
                + (
                    # a busy machine slows a rung for reasons that are not the idea: no physics for it then
                    " (the machine was not quiet while they ran, so this may be the other programs, not the idea:"
                    " run again on an idle machine). "
                    if (doc.get("quiet") or {}).get("busy")
                    else " (the roofline section says why). "
                )
            )
        if noise:
            cap2 += (
                "Within the noise, so not faster: "
                + "; ".join(
                    f"{r['kernel']} against {r['prev']} (x{_g(r['speedup_prev'])}, x{_g(r['speedup_low'])}-"
                    f"{_g(r['speedup_high'])} at n = {r['speedup_n']})"
                    for r in noise
                )
                + " -- their spreads overlap. "
            )
        cap2 += (
            "'% of peak' in the table is against the FMA peak of the cores the kernel used (1 core for serial rungs)."
        )
        figs.append(plots.plot_ladder_steps(doc, out / "ladder_steps.png"))
        blocks.append(("fig", "ladder_steps.png", cap2))
    # why the blocked rung does (not) beat reordered, from this machine's caches and the measured step
    roofs = (docs.get("roofline") or {}).get("roofs") or {}
    why_blocking = blocking_text(
        s, doc["machine"]["cpu"].get("caches") or {}, dtype, (roofs.get("bandwidth") or {}).get("1")
    )
    if why_blocking:
        blocks.append(("p", why_blocking))
    if doc.get("skipped"):
        blocks.append(
            (
                "p",
                "Skipped because one call would exceed the time budget of "
                f"{doc['params']['budget_s']} s per measurement (run with --all to include them): "
                + "; ".join(
                    f"{x['kernel']} at n = {x['n']} (~{format_seconds(x['predicted_s'])})" for x in doc["skipped"]
                )
                + ".",
            )
        )
    return blocks
