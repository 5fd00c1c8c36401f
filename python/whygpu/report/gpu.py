"""The GPU section: the GPU measured on this machine, or what the CPU's figures imply for one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import plots
from ..bench.trust import DISTURBED
from ..explain import why_below
from ._format import Block, Docs, _g, _ms, _pct
from .roofline import flagged
from .tensor_cores import _mentions_tensor_cores, _tensor_core_lesson

# Public figures for the GPU comparison (not measured here; see the text).
GPU_PUBLIC: dict[str, Any] = {
    "name": "NVIDIA H100 SXM",
    "fp32_peak_gflops": 67_000,
    "sgemm_gflops": 50_000,
    "bandwidth_gbps": 3_350,
}


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The GPU, measured on this machine when one was usable; otherwise what
    the CPU measurements imply for one, from public figures (marked so)."""
    roofline = docs.get("roofline", {})
    gpu = roofline.get("gpu_roofs")
    gsum = (docs.get("ladder", {}).get("summary") or {}).get("gpu")
    sweep = docs.get("train", {}).get("sweep")
    has_sweep = bool(sweep and any(s["device"] == "cuda" and s["points"] for s in sweep["series"]))
    if gpu or gsum or has_sweep:
        return _gpu_measured(docs, gpu, gsum, sweep if has_sweep else None, out, figs, num)
    return _gpu_public(docs, num)


def _gpu_measured(docs, gpu, gsum, sweep, out: Path, figs: list, num: int) -> list[Block]:
    blocks: list[Block] = [("h2", f"{num}. The GPU, measured on this machine")]
    roof = docs.get("roofline", {}).get("roofs")
    cpu_peak = roof["compute"]["simd_all"] if roof else (docs.get("ladder", {}).get("peak") or {}).get("gflops_all")
    name = (gpu or {}).get("device") or (docs.get("ladder", {}).get("peak") or {}).get("gpu_device") or "the GPU"
    if (gpu or {}).get("emulated") or "emulated" in str(name).lower():
        blocks.append(
            (
                "p",
                "Caution: this 'GPU' is whygpu's CPU emulation of CUDA (tests/cuda_emu), which runs "
                "the CUDA kernels as CPU threads to check them without a GPU. Its figures test the "
                "measuring and reporting, and say nothing about a real GPU.",
            )
        )
    text = (
        "A GPU is the same two ideas as the CPU ladder, taken much further: thousands of SIMD lanes in "
        "more than a hundred multiprocessors (SMs) instead of a few cores, and memory bandwidth to feed them. "
    )
    rows = []
    if gpu:
        text += (
            f"Measured here, {name} ({gpu['multiprocessors']} SMs) runs float32 fused multiply-adds at "
            f"{_g(gpu['fma_gflops'])} GFLOP/s"
        )
        if cpu_peak:
            text += f", x{_g(gpu['fma_gflops'] / cpu_peak)} this CPU's {_g(cpu_peak)} GFLOP/s on all its cores"
        text += (
            f", and moves {_g(gpu['bandwidth']['DRAM'])} GB/s to and from its own memory. Data reach it over a "
            f"bus: {_g(gpu['host']['h2d']['pinned'])} GB/s host to device from pinned memory, "
            f"{_g(gpu['host']['h2d']['pageable'])} GB/s from ordinary (pageable) memory. "
        )
        tensor = gpu.get("tensor_gflops") or {}
        if tensor:
            text += (
                "Its tensor cores, measured the same way (chains of mma.sync on registers), multiply at "
                + ", ".join(f"{_g(v)} GFLOP/s in {prec}" for prec, v in tensor.items())
                + f" -- x{_g(max(tensor.values()) / gpu['fma_gflops'])} the float32 FMA peak. "
            )
        rows += [(f"{prec} tensor-core peak (mma.sync probe)", f"{_g(v)} GFLOP/s") for prec, v in tensor.items()]
        if gpu.get("tensor_reason"):
            rows.append(("tensor-core peak", f"not measured: {gpu['tensor_reason']}"))
        rows += [
            ("float32 FMA peak (probe)", f"{_g(gpu['fma_gflops'])} GFLOP/s"),
            ("device memory bandwidth (copy, read + write)", f"{_g(gpu['bandwidth']['DRAM'])} GB/s"),
            ("L2 cache bandwidth (copy, read + write)", f"{_g(gpu['bandwidth']['L2'])} GB/s"),
        ]
        mib = gpu["bytes"]["host_copy"] >> 20
        for d, label in (("h2d", "host -> device"), ("d2h", "device -> host")):
            h = gpu["host"][d]
            rows.append(
                (
                    f"{label}, {mib} MiB: pageable / pinned / staged through pinned",
                    f"{_g(h['pageable'])} / {_g(h['pinned'])} / {_g(h['staged'])} GB/s",
                )
            )
    if gsum:
        rows.append(
            (
                f"best CUDA rung ({gsum['best']}, n = {gsum['n']})",
                f"{_g(gsum['gflops'])} GFLOP/s ({_pct(gsum.get('pct_peak'))} of the measured peak)",
            )
        )
        if "vs_cublas" in gsum:
            rows.append(
                (
                    f"cuBLAS (n = {gsum['cublas_n']}), through CuPy/PyTorch, strict float32",
                    f"{_g(gsum['cublas_gflops'])} GFLOP/s; {gsum['best']} is {_pct(100 * gsum['vs_cublas'])} of it",
                )
            )
        else:
            rows.append(("cuBLAS", "not measured (neither CuPy nor PyTorch reached the GPU)"))
        if "vs_cpu" in gsum:
            rows.append(
                (
                    f"{gsum['best']} over the best CPU rung ({gsum['best_cpu']}), n = {gsum['vs_cpu_n']}",
                    f"x{_g(gsum['vs_cpu'])}",
                )
            )
        text += (
            f"The best hand-written CUDA rung, {gsum['best']}, reached {_g(gsum['gflops'])} GFLOP/s at n = "
            f"{gsum['n']}"
            + (f", {_pct(100 * gsum['vs_cublas'])} of NVIDIA's cuBLAS" if "vs_cublas" in gsum else "")
            + ". "
        )
    if sweep:
        sm = sweep["summary"]
        if "at_batch" in sm:
            b = sm["at_batch"]
            if "speedup_resident" in sm:
                rows.append(
                    (
                        f"training step, batch {b}: GPU (data resident) over the best CPU back end",
                        f"x{_g(sm['speedup_resident'])}",
                    )
                )
            if "speedup_copied" in sm:
                rows.append(
                    (
                        f"training step, batch {b}: GPU (batch copied every step) over the best CPU",
                        f"x{_g(sm['speedup_copied'])}",
                    )
                )
            if "copy_share" in sm:
                rows.append(
                    (f"share of the copied step spent copying the batch, batch {b}", _pct(100 * sm["copy_share"]))
                )
            if "speedup_resident_graph" in sm:
                rows.append(
                    (
                        f"training step, batch {b}: GPU (data resident, step as one CUDA graph) over the best CPU",
                        f"x{_g(sm['speedup_resident_graph'])}",
                    )
                )
            if "graph_gain" in sm:
                rows.append(
                    (
                        f"what capturing the step as a CUDA graph bought, batch {b} (resident)",
                        f"x{_g(sm['graph_gain'])}",
                    )
                )
            if "bf16_gain" in sm:
                rows.append(
                    (
                        f"mixed precision: the step with bf16 tensor-core matmuls over float32, batch {b}",
                        f"x{_g(sm['bf16_gain'])}",
                    )
                )
    blocks.append(("p", text.strip()))
    if _mentions_tensor_cores(docs, gpu):
        blocks += _tensor_core_lesson(docs)
    if rows:
        blocks.append(("table", ("measured on this machine", "value"), rows))
    if gpu and any(p.get("device") == "cuda" for p in docs["roofline"].get("points", [])):
        blocks += _gpu_roofline(docs["roofline"], out, figs)
    if sweep:
        blocks += _gpu_sweep(docs["train"], out, figs)
    return blocks


def _gpu_roofline(doc: dict, out: Path, figs: list) -> list[Block]:
    gpu = doc["gpu_roofs"]
    pts = [p for p in doc["points"] if p.get("device") == "cuda"]
    figs.append(plots.plot_roofline_gpu(doc, out / "roofline_gpu.png"))
    # The caption's conclusions leave out a point still faster than its roof when measured again.
    trusted = [p for p in pts if not flagged(p)] or pts
    best = max(trusted, key=lambda p: p["measured_gflops"])
    first = min(trusted, key=lambda p: p["measured_gflops"])
    cap = (
        f"The GPU's roofs, measured by compiled probes (csrc/cuda/probe.cu): {_g(gpu['fma_gflops'])} GFLOP/s of "
        f"float32 FMA, {_g(gpu['bandwidth']['DRAM'])} GB/s from device memory and {_g(gpu['bandwidth']['L2'])} "
        f"GB/s from the L2 cache"
        + (
            "; the tensor cores' roofs (mma.sync probe): "
            + ", ".join(f"{_g(v)} GFLOP/s in {prec}" for prec, v in (gpu.get("tensor_gflops") or {}).items())
            if gpu.get("tensor_gflops")
            else ""
        )
        + f". Each CUDA rung sits at the intensity its tiles give it (flop per byte asked of "
        f"L2). Hollow markers are the model's predictions, filled ones the measurements: {best['kernel']} reached "
        f"{_g(best['measured_gflops'])} GFLOP/s at n = {best['n']}, {_pct(100 * best['fraction_of_roof'])} of its "
        f"predicted speed; {first['kernel']} {_g(first['measured_gflops'])} GFLOP/s, "
        f"{_pct(100 * first['fraction_of_roof'])}. Each rung reuses every load over a bigger tile, which moves it "
        "right, off the bandwidth slopes and under the compute roof."
    )
    if any(p.get("precision") in ("tf32", "bf16") for p in pts):
        cap += (
            " The tensor-core rungs are measured against the tensor-core roof of their precision, not the "
            "FMA roof: they do their arithmetic on other units."
        )
    table = [
        (
            p["kernel"],
            str(p["n"]),
            p.get("precision", "float32"),
            f"{p['compute_roof']} ({_g(p['compute_gflops'])})",
            p["bound"],
            _g(p["intensity"]) + (f" ({p['intensity_level']})" if p.get("intensity_level") else ""),
            _ms(p["predicted_s"]),
            _ms(p["measured_s"]),
            _pct(100 * p["fraction_of_roof"]) + (" (disturbed)" if flagged(p) else ""),
        )
        for p in pts
    ]
    blocks = [
        ("fig", "roofline_gpu.png", cap),
        (
            "table",
            (
                "kernel",
                "n",
                "precision",
                "compute roof (GFLOP/s)",
                "bound",
                "flop/byte",
                "predicted",
                "measured",
                "of predicted speed",
            ),
            table,
        ),
        ("p", "Why each rung sits where it does:"),
        (
            "ul",
            [
                why_below(
                    p["kernel"],
                    p["fraction_of_roof"],
                    remeasured="remeasured" in p,  # a point from before the check was never measured again
                    disturbed=p.get("disturbed_reason") or DISTURBED if flagged(p) else None,
                )
                for p in pts
            ],
        ),
    ]
    over = [p for p in pts if p["fraction_of_roof"] > 1.05]
    if any(p["kernel"] == "cuda_wgmma" for p in over):
        blocks.append(
            (
                "p",
                "cuda_wgmma runs faster than the roof the mma.sync probe measured: on Hopper the "
                "warpgroup wgmma instruction reaches tensor-core throughput that no single-warp "
                "mma.sync can, so for rung 16 the probe's roof is a lower bound on the real one.",
            )
        )
    return blocks


def _gpu_sweep(doc: dict, out: Path, figs: list) -> list[Block]:
    sw = doc["sweep"]
    sm = sw["summary"]
    figs.append(plots.plot_train_sweep(doc, out / "train_sweep.png"))
    rows = {r["batch"]: r for r in sm["rows"]}
    cap = (
        f"One training step of the MLP {sw['layers']} (forward, backward, SGD update) against the batch size, "
        f"median of {sw['steps']} steps: the CPU back ends on all {sw['threads']} threads, the GPU with the batch "
        "copied from host memory every step, and the GPU with the data already in its memory. "
    )
    for key, what in (("resident", "with the data resident"), ("copied", "with the batch copied every step")):
        if any(f"speedup_{key}" in r for r in sm["rows"]):
            b = sm.get(f"overtakes_{key}")
            if b:
                r = rows[b]
                cap += (
                    f"The GPU {what} overtakes the best CPU back end at batch {b} "
                    f"({_ms(r[f'{key}_s'])} against {_ms(r['best_cpu_s'])} on {r['best_cpu']}). "
                )
            else:
                cap += f"The GPU {what} never overtook the best CPU back end in this sweep. "
    if "at_batch" in sm:
        b = sm["at_batch"]
        parts = []
        if "speedup_resident" in sm:
            parts.append(f"x{_g(sm['speedup_resident'])} with the data resident")
        if "speedup_copied" in sm:
            parts.append(f"x{_g(sm['speedup_copied'])} with the batch copied")
        if parts:
            cap += f"At batch {b} the GPU is " + " and ".join(parts) + f" the speed of {sm.get('best_cpu', 'the CPU')}"
            cap += (
                f"; copying the batch takes {_pct(100 * sm['copy_share'])} of the copied step. "
                if "copy_share" in sm
                else ". "
            )
    if "largest_batch" in sm and sm["largest_batch"] != sm.get("at_batch"):
        parts = [
            f"x{_g(sm[k + '_largest'])} {w}"
            for k, w in (("speedup_resident", "resident"), ("speedup_copied", "copied"))
            if k + "_largest" in sm
        ]
        if parts:
            cap += f"At batch {sm['largest_batch']}: " + ", ".join(parts)
            cap += (
                f", copies {_pct(100 * sm['copy_share_largest'])} of the copied step. "
                if "copy_share_largest" in sm
                else ". "
            )
    if "graph_gain" in sm:
        cap += (
            f"Replaying the whole step as one CUDA graph (no Python, one launch instead of one per kernel) "
            f"made the resident step x{_g(sm['graph_gain'])} faster at batch {sm['at_batch']}. "
        )
    if "bf16_gain" in sm:
        cap += (
            f"With every matmul on the bf16 tensor cores (mixed precision: float32 weights, sums and "
            f"everything else) the same graph step was x{_g(sm['bf16_gain'])} as fast at batch "
            f"{sm['at_batch']}"
            + (
                f" and x{_g(sm['bf16_gain_largest'])} at batch {sm['largest_batch']}"
                if "bf16_gain_largest" in sm
                else ""
            )
            + ". "
        )
    cap += (
        "Small batches leave most of the GPU idle and pay a fixed cost per kernel launch, so the CPU wins "
        "there: batch your operations. Copies over the bus cost the same per sample at every batch size, "
        "so keeping data on the GPU matters most where the GPU is fastest: minimise CPU-GPU transfers."
    )
    table = []
    for b in sw["batches"]:
        r = rows.get(b, {})
        table.append(
            (
                str(b),
                _ms(r["best_cpu_s"]) + f" ({r['best_cpu']})" if "best_cpu_s" in r else "skipped",
                _ms(r["copied_s"]) if "copied_s" in r else "skipped",
                _ms(r["resident_s"]) if "resident_s" in r else "skipped",
                f"x{_g(r['speedup_copied'])}" if "speedup_copied" in r else "",
                f"x{_g(r['speedup_resident'])}" if "speedup_resident" in r else "",
                _pct(100 * r["copy_share"]) if "copy_share" in r else "",
                _ms(r["resident_graph_s"]) if "resident_graph_s" in r else "skipped",
                f"x{_g(r['graph_gain'])}" if "graph_gain" in r else "",
                _ms(r["resident_graph_bf16_s"]) if "resident_graph_bf16_s" in r else "-",
                f"x{_g(r['bf16_gain'])}" if "bf16_gain" in r else "",
            )
        )
    blocks: list[Block] = [
        ("fig", "train_sweep.png", cap.strip()),
        (
            "table",
            (
                "batch",
                "best CPU",
                "GPU, copied",
                "GPU, resident",
                "speed-up copied",
                "speed-up resident",
                "copy share",
                "GPU, resident, graph",
                "graph gain",
                "GPU, graph, bf16",
                "bf16 gain",
            ),
            table,
        ),
    ]
    if sw.get("skipped"):
        blocks.append(
            (
                "p",
                "Not measured (over the time budget; --all runs them): "
                + "; ".join(f"{x['series']} at batch {x['batch']}" for x in sw["skipped"])
                + ".",
            )
        )
    return blocks


def _gpu_public(docs: Docs, num: int) -> list[Block]:
    """No GPU was usable: what the measurements imply for one, from public figures (marked so)."""
    roof = docs.get("roofline", {}).get("roofs")
    peak = roof["compute"]["simd_all"] if roof else docs.get("ladder", {}).get("peak", {}).get("gflops_all")
    if not peak:
        return []
    g = GPU_PUBLIC
    ratio = g["sgemm_gflops"] / peak
    why = next(
        (
            d.get("machine", {}).get("cuda", {}).get("reason")
            for d in docs.values()
            if d.get("machine", {}).get("cuda", {}).get("reason")
        ),
        None,
    )
    blocks: list[Block] = [("h2", f"{num}. What this means for a GPU (public figures, not measured here)")]
    text = (
        "No GPU was usable on this machine" + (f" ({why})" if why else "") + ", so this section uses public "
        f"figures, not measurements. This machine's measured peak is {_g(peak)} GFLOP/s. Public figures for an "
        f"{g['name']}: about {g['fp32_peak_gflops'] / 1000:.0f} TFLOP/s fp32 peak, about "
        f"{g['sgemm_gflops'] / 1000:.0f} TFLOP/s in cuBLAS SGEMM, {g['bandwidth_gbps'] / 1000:.2f} TB/s of memory "
        f"bandwidth -- roughly x{_g(ratio)} this CPU on matrix multiplication. It gets there with the same ideas as "
        "the ladder above, scaled up: thousands of SIMD lanes instead of 16, more than a hundred cores instead "
        "of a few, and memory bandwidth to feed them."
    )
    runs = [r for r in docs.get("train", {}).get("runs", []) if not r.get("skipped")]
    if runs:
        r = min(runs, key=lambda x: x["step_s"])
        s = r["matmul_share"]
        gain = 1 / ((1 - s) + s / ratio)
        text += (
            f" Amdahl's law puts that in perspective: with {_pct(100 * s)} of the {r['backend']} training step in "
            f"matmul, making only the matmul x{_g(ratio)} faster speeds the step up x{_g(gain)}; frameworks "
            "move the rest of the step to the GPU too, which is how training becomes the 10-100x faster that "
            "made deep learning practical."
        )
    blocks.append(("p", text))
    return blocks
