"""The report: the measurements of ``whygpu`` turned into a short lesson.

:func:`build_report` takes the JSON documents the subcommands write (and
pytest-benchmark's JSON), draws the figures, and writes ``report.md`` (next
to the PNG files) and a self-contained ``report.html`` (figures embedded as
base64).  Every caption is written from the numbers of the run -- nothing
here is canned except the explanations of *why*.

A report is a list of blocks (heading, paragraph, figure, table, list),
rendered twice, to Markdown and to HTML.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import plots
from ._registry import KERNELS
from .bench.measure import format_figure, format_seconds
from .explain import format_bytes, format_error, why_below
from .roofline import COMPUTE_ROOFS, KERNEL_ROOF

__all__ = ["build_report", "load_results", "classify", "ResultsError"]

# Public figures for the GPU comparison (not measured here; see the text).
GPU_PUBLIC = {"name": "NVIDIA H100 SXM", "fp32_peak_gflops": 67_000, "sgemm_gflops": 50_000,
              "bandwidth_gbps": 3_350}


class ResultsError(ValueError):
    """A results file that is not one whygpu understands."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def classify(doc) -> str:
    """'info', 'ladder', 'scaling', 'roofline', 'train', 'explain', 'demo' or
    'benchmark' (pytest-benchmark), by the document's keys."""
    if not isinstance(doc, dict):
        raise ResultsError("not a JSON object")
    schema = doc.get("schema")
    if isinstance(schema, str) and schema.startswith("whygpu."):
        kind = schema[len("whygpu."):].split("/")[0]
        if kind in ("info", "ladder", "scaling", "roofline", "train", "explain", "demo"):
            return kind
        raise ResultsError(f"unknown whygpu schema {schema!r}")
    if isinstance(doc.get("benchmarks"), list) and "machine_info" in doc:
        return "benchmark"
    raise ResultsError("neither a whygpu result (no 'schema' field) nor pytest-benchmark JSON "
                       "(no 'benchmarks' and 'machine_info')")


def load_results(paths: Iterable) -> Dict[str, dict]:
    """Read result files (or folders of them) into {kind: document}.  A later
    document of the same kind replaces an earlier one, except benchmarks,
    which are merged."""
    docs: Dict[str, dict] = {}
    files: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise ResultsError(f"{p}: folder has no .json files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ResultsError(f"{p}: no such file or folder")
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{f}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{f}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        try:
            kind = classify(doc)
        except ResultsError as exc:
            if f.parent in [Path(x) for x in paths if Path(x).is_dir()]:
                continue  # a folder may hold other JSON; skip it
            raise ResultsError(f"{f}: {exc}") from None
        if kind == "demo":
            continue  # the index the demo writes; its parts are separate files
        if kind == "benchmark" and "benchmark" in docs:
            docs["benchmark"]["benchmarks"] += doc["benchmarks"]
        else:
            docs[kind] = doc
    if not docs:
        raise ResultsError("no whygpu or pytest-benchmark results found")
    return docs


# --------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------
def _g(x: float) -> str:
    """A GFLOP/s or ratio figure with sensible digits."""
    return format_figure(x)


def _pct(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}%" if abs(x) >= 1 or x == 0 else f"{x:.2g}%"


def _ms(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _cache(b: int) -> str:
    """Cache sizes in binary units, as the vendors write them (32 KiB, 1 MiB)."""
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= f and b % f == 0:
            return f"{b // f} {unit}"
    return format_bytes(b)


def _machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    cpu = m.get("cpu", {})
    caches = cpu.get("caches", {})
    cache_txt = ", ".join(f"{k} {_cache(v)}" for k, v in caches.items())
    return (f"{cpu.get('model', 'unknown CPU')}, {cpu.get('cores', '?')} cores usable, "
            f"instruction set {cpu.get('arch', '?')}" + (f", caches {cache_txt}" if cache_txt else ""))


# --------------------------------------------------------------------------
# Sections: each returns a list of blocks
# --------------------------------------------------------------------------
Block = Tuple  # ("h1"|"h2"|"p"|"fig"|"table"|"ul"|"pre", ...)


def _intro(docs: Dict[str, dict]) -> List[Block]:
    any_doc = next(iter(docs.values()))
    m = any_doc.get("machine", {})
    blocks: List[Block] = [("h1", "Why parallel hardware speeds up deep learning, measured on this machine")]
    if not m and "benchmark" in docs:  # pytest-benchmark describes the machine its own way
        mi = docs["benchmark"].get("machine_info", {})
        cpu = mi.get("cpu", {}) if isinstance(mi.get("cpu"), dict) else {}
        blocks.append(("p", "Machine (from pytest-benchmark): " + ", ".join(str(x) for x in (
            cpu.get("brand_raw") or mi.get("processor"), f"{cpu.get('count')} CPUs" if cpu.get("count") else None,
            f"Python {mi.get('python_version')}" if mi.get("python_version") else None) if x) + "."))
    if m:
        blocks.append(("p", f"Machine: {_machine_line(any_doc)}. Measured {m.get('time', '')} with whygpu "
                            f"{m.get('versions', {}).get('whygpu', '?')}, NumPy {m.get('versions', {}).get('numpy', '?')}"
                            f", compiler {m.get('compiler', '?')}."))
    busy = [d.get("machine", {}).get("cpu_busy_before") for d in docs.values()]
    busy = [x for x in busy if isinstance(x, (int, float))]
    cores = m.get("cpu", {}).get("cores") or 1
    if busy and max(busy) > 0.2:
        blocks.append(("p", f"Caution: this machine was busy while it was measured: other programs used up to "
                            f"{100 * max(busy):.0f}% of its {cores} cores just before a measurement started. They "
                            "take cores and caches away, so the multi-thread figures (openmp, NumPy on all threads, "
                            "scaling) are lower and noisier than the machine can do; run again when it is idle."))
    runs = [r for r in docs.get("train", {}).get("runs", []) if not r.get("skipped")]
    text = ("Training a neural network is, mostly, multiplying matrices: every layer's forward pass is one "
            "matrix product and its backward pass two more. ")
    if runs:
        fast = min(runs, key=lambda r: r["step_s"])
        lo, hi = min(r["matmul_share"] for r in runs), max(r["matmul_share"] for r in runs)
        text += (f"On this machine {_pct(100 * fast['matmul_share'])} of a training step on the fastest back end "
                 f"({fast['backend']}) was spent inside matrix multiplication, and {_pct(100 * lo)} to "
                 f"{_pct(100 * hi)} across all back ends (see the training section). ")
    text += ("A matrix product is also massively parallel: every element of the result can be computed "
             "independently. This report measures how much each kind of parallel hardware -- vector (SIMD) "
             "units, several cores, and memory that keeps them fed -- speeds matrix multiplication up, on "
             "this computer, rung by rung; a GPU is the same idea taken to thousands of lanes.")
    blocks.append(("p", text))
    return blocks


def _info_section(doc: dict) -> List[Block]:
    cpu = doc["machine"]["cpu"]
    m = doc["machine"]
    rows = [("CPU", cpu.get("model", "?")), ("cores usable", str(cpu.get("cores", "?"))),
            ("instruction set (used / best)", f"{cpu.get('arch', '?')} / {cpu.get('best_arch', '?')}"),
            ("caches", ", ".join(f"{k} {_cache(v)}" for k, v in cpu.get("caches", {}).items()) or "unknown"),
            ("OpenMP", "yes" if cpu.get("openmp") else "no"),
            ("BLAS", ", ".join(f"{b.get('internal_api')} {b.get('version')}" for b in m.get("blas", [])) or "unknown"),
            ("CUDA", (f"available: {m['cuda'].get('device', '')}" if m.get("cuda", {}).get("available")
                      else f"not available ({m.get('cuda', {}).get('reason', '?')})")),
            ("kernels", ", ".join(doc.get("kernels", [])))]
    return [("h2", "The machine"), ("table", ("", ""), rows)]


def _ladder_section(doc: dict, out: Path, figs: list, num: int) -> List[Block]:
    s = doc["summary"]
    rows = s["rows"]
    cpu_rows = [r for r in rows if not r["reference"] and r.get("device", "cpu") == "cpu"]
    blocks: List[Block] = [("h2", f"{num}. The ladder: one idea per rung")]
    f1 = plots.plot_ladder(doc, out / "ladder.png")
    f2 = plots.plot_ladder_steps(doc, out / "ladder_steps.png")
    figs += [f1, f2]
    peak = doc.get("peak", {})
    dtype = doc["params"]["dtype"]
    cap = (f"Speed of C = A @ B for square n x n {dtype} matrices, n = {', '.join(map(str, doc['params']['sizes']))}"
           f", for each kernel on this {doc['machine']['cpu'].get('model', 'CPU')} (log scale; median of repeats). ")
    if cpu_rows:
        best = max(cpu_rows, key=lambda r: r["gflops"])
        cap += (f"The fastest rung, {best['kernel']}, reached {_g(best['gflops'])} GFLOP/s at n = {best['n']}: "
                f"{_pct(best['pct_peak'])} of the "
                f"{_g(peak.get('gflops_all' if best['threads'] > 1 else 'gflops_1t', float('nan')) / (2 if dtype == 'float64' else 1))}"
                f" GFLOP/s {dtype} FMA peak we measured on the {best['threads']} core{'s' if best['threads'] > 1 else ''} it used")
        if s.get("span") and s["span"]["slowest"] != best["kernel"]:
            sp = s["span"]
            cap += (f", and {_g(sp['ratio'])} times the speed of the {sp['slowest']} loop "
                    f"({_g(cpu_rows[0]['gflops'])} GFLOP/s at n = {sp['slowest_n']})")
        cap += ". "
    gpu_rows = [r for r in rows if r.get("device") == "cuda"]
    if gpu_rows and peak.get("gpu_gflops"):
        cap += (f"The CUDA rungs and cuBLAS ran on the GPU ({peak.get('gpu_device', 'GPU')}) at n = "
                f"{', '.join(map(str, doc['params'].get('gpu_sizes') or []))}, with the data already in GPU memory; "
                f"their % of peak is against the GPU's measured float32 FMA peak of {_g(peak['gpu_gflops'])} "
                "GFLOP/s")
        tensor = peak.get("gpu_tensor_gflops") or {}
        if tensor and any(r.get("precision") in tensor for r in gpu_rows):
            cap += (", the tensor-core rungs' against the measured tensor-core peak in their precision ("
                    + ", ".join(f"{prec} {_g(v)} GFLOP/s" for prec, v in tensor.items()) + ")")
        cap += ". "
    refs = [r for r in rows if r["reference"]]
    if refs:
        cap += "Dashed lines are references: " + "; ".join(
            f"{r['kernel']} {_g(r['gflops'])} GFLOP/s at n = {r['n']}" for r in refs) + "."
    blocks.append(("fig", "ladder.png", cap))
    # the step table
    table = []
    for r in rows:
        summary = KERNELS[r["kernel"]].summary if r["kernel"] in KERNELS else (
            "NumPy's BLAS (OpenBLAS/MKL), reference" if r["kernel"].startswith("numpy") else "reference")
        step = (f"x{_g(r['speedup_prev'])} over {r['prev']} (n={r['speedup_n']})" if "speedup_prev" in r else "")
        table.append((r["kernel"], summary, str(r["n"]), _g(r["gflops"]), step, _pct(r["pct_peak"]),
                      r.get("precision", ""), format_error(r.get("max_rel_error"))))
    blocks.append(("table", ("kernel", "what it adds", "largest n", "GFLOP/s", "speed-up", "% of peak", "precision",
                             "max rel. error"), table))
    errs = doc.get("errors") or {}
    if errs:
        ns = sorted({e["n"] for e in errs.values()})
        text = (f"Speed is only half of it: each rung states the precision its products are computed in and its "
                f"error against the exact answer ({doc.get('error_metric', 'against a float64 product')}; measured "
                f"once per rung at n = {', '.join(map(str, ns))}). ")
        by_prec: Dict[str, List[float]] = {}
        for e in errs.values():
            by_prec.setdefault(e["precision"], []).append(e["max_rel_error"])
        text += "Here: " + "; ".join(f"{prec} from {format_error(min(v))} to {format_error(max(v))}" if len(v) > 1
                                     else f"{prec} {format_error(v[0])}" for prec, v in by_prec.items()) + ". "
        if any(p in by_prec for p in ("tf32", "bf16")):
            text += ("The tensor-core rungs are fast because their operands are short: TF32 keeps 11 significant "
                     "bits (unit roundoff 2^-11, errors around 1e-4 to 1e-3), bf16 8 bits (2^-8, errors around "
                     "1e-3 to 1e-2), against float32's 24 (errors around 1e-7). Training tolerates that; a "
                     "physics simulation may not.")
        blocks.append(("p", text))
    if doc.get("unavailable"):
        blocks.append(("p", "Not measured, because they cannot run here: " + "; ".join(
            f"{u['kernel']} ({u['reason']})" for u in doc["unavailable"]) + "."))
    steps = [r for r in rows if not r["reference"] and "speedup_prev" in r]
    if steps:
        big = max(steps, key=lambda r: r["speedup_prev"])
        slow = [r for r in steps if r["speedup_prev"] < 1]
        cap2 = (f"Each rung at its largest measured size, with its speed-up over the rung before (measured at the "
                f"largest size both ran). The biggest single step on this machine is {big['kernel']}: "
                f"x{_g(big['speedup_prev'])} over {big['prev']} at n = {big['speedup_n']}. ")
        if slow:
            cap2 += ("Not every idea pays everywhere: " + "; ".join(
                f"{r['kernel']} is x{_g(r['speedup_prev'])} of {r['prev']} here" for r in slow) +
                     " (the roofline section says why). ")
        cap2 += "'% of peak' is against the FMA peak of the cores the kernel used (1 core for serial rungs)."
        blocks.append(("fig", "ladder_steps.png", cap2))
    if doc.get("skipped"):
        blocks.append(("p", "Skipped because one call would exceed the time budget of "
                            f"{doc['params']['budget_s']} s per measurement (run with --all to include them): " +
                       "; ".join(f"{x['kernel']} at n = {x['n']} (~{format_seconds(x['predicted_s'])})"
                                 for x in doc["skipped"]) + "."))
    return blocks


def _roofline_section(doc: dict, out: Path, figs: list, num: int) -> List[Block]:
    roofs = doc["roofs"]
    pts = [p for p in doc["points"] if p.get("device", "cpu") == "cpu"]  # the GPU's are in the GPU section
    figs.append(plots.plot_roofline(doc, out / "roofline.png"))
    c, bw = roofs["compute"], roofs["bandwidth"]["1"]
    T = roofs.get("threads", 1)
    blocks: List[Block] = [("h2", f"{num}. The roofline: what limits each kernel")]
    blocks.append(("p", "A kernel can go no faster than the slower of two limits: the arithmetic its code can use "
                        "(compute roof) and the bytes it must move divided by the bandwidth of the memory they come "
                        "from. The model predicts time = max(flops / compute roof, bytes / bandwidth). "
                        "The arithmetic intensity (flops per byte) decides which limit applies: matrix multiplication "
                        "does 2n^3 flops on 3n^2 numbers, so a kernel that reuses data well is compute-bound -- and "
                        "then more parallel arithmetic makes it faster."))
    cap = (f"This machine's roofs, measured by compiled microbenchmarks: an FMA loop with 12 independent chains "
           f"reached {_g(c['simd_1t'])} GFLOP/s on one core ({roofs['arch']})")
    if T > 1:
        cap += f" and {_g(c['simd_all'])} GFLOP/s on {T} cores"
    cap += (f"; baseline-ISA SIMD code {_g(c['simd_baseline'])}, one dependent chain of adds {_g(c['scalar'])}, the "
            f"Python interpreter {_g(c['interpreter'])}. A STREAM triad moved "
            + ", ".join(f"{_g(v)} GB/s from {k}" for k, v in bw.items()) + " on one core. ")
    key = [p for p in pts if p["kernel"] in ("packed", "openmp")]
    if key:
        cap += "Hollow markers are the model's predictions, filled ones the measurements: " + ", ".join(
            f"{p['kernel']} reached {_pct(100 * p['fraction_of_roof'])} of its predicted speed at n = {p['n']}"
            for p in key) + "."
    blocks.append(("fig", "roofline.png", cap))
    table = []
    for p in pts:
        err = p["error"]
        ok = ""
        if p["kernel"] in ("packed", "openmp"):
            ok = "yes" if abs(err) <= 0.25 else "no"
        table.append((p["kernel"], str(p["n"]), f"{p['compute_roof']} ({_g(p['compute_gflops'])})", p["bound"],
                      _g(p["intensity"]) + (f" ({p['intensity_level']})" if p.get("intensity_level") else ""),
                      _ms(p["predicted_s"]), _ms(p["measured_s"]), f"{100 * err:+.0f}%", ok))
    blocks.append(("table", ("kernel", "n", "compute roof (GFLOP/s)", "bound", "flop/byte", "predicted",
                             "measured", "error", "within 25%"), table))
    blocks.append(("p", "Measured is the best of the timed samples, as the roofs are best-of too (the ladder above "
                        "shows medians). "
                        "Error is (predicted - measured) / measured time; negative means the kernel is slower than "
                        "its roof. The target is the packed and openmp rungs at n = 1024, the ones a roofline should "
                        "describe well because nothing but arithmetic should limit them."))
    blocks.append(("p", "Where and why kernels sit below their roof:"))
    blocks.append(("ul", [why_below(p["kernel"], p["fraction_of_roof"]) for p in pts]))
    blocks.append(("p", "How each rung is modelled (the compute roof it can honestly use, and the traffic its loops "
                        "cause):"))
    model_rows = [(k, f"{r}: {COMPUTE_ROOFS[r]}", _TRAFFIC_TEXT.get(k, "")) for k, r in KERNEL_ROOF.items()
                  if any(p["kernel"] == k for p in pts)]
    blocks.append(("table", ("kernel", "compute roof", "bytes counted"), model_rows))
    if doc.get("notes"):
        blocks.append(("ul", list(doc["notes"])))
    if doc.get("unavailable"):
        blocks.append(("p", "Not on the roofline, because they cannot run here: " + "; ".join(
            f"{u['kernel']} ({u['reason']})" for u in doc["unavailable"]) + "."))
    return blocks


_TRAFFIC_TEXT = {
    "python": "each matrix once (the interpreter, not memory, is the limit)",
    "cython": "B walked down a column: a 64-byte line per multiply-add once a column panel overflows L1",
    "naive": "B walked down a column: a 64-byte line per multiply-add once a column panel overflows L1",
    "reordered": "all of B once per row of C, from the level B fits in",
    "blocked": "a 128 x 256 tile of B once per row of C from L2; B from memory once per 64 rows",
    "packed": "the packed B panel once per MR rows from L2; A, B, C from memory with packing",
    "openmp": "as packed, against all cores' bandwidth",
}


def _scaling_section(doc: dict, out: Path, figs: list, num: int) -> List[Block]:
    figs.append(plots.plot_scaling(doc, out / "scaling.png"))
    ser = {s["name"]: s for s in doc["series"]}
    P = max(doc["params"]["threads"])
    blocks: List[Block] = [("h2", f"{num}. More cores: speed-up and Amdahl's law")]
    k = ser.get(doc["params"]["kernel"])
    cap = ""
    if k:
        S, Pk = k["speedup"][-1], k["threads"][-1]
        cap += (f"Speed-up of the {k['name']} kernel at n = {doc['params']['n']} on 1 to {P} threads: "
                f"x{_g(S)} on {Pk} threads ({_pct(100 * k['efficiency'][-1])} parallel efficiency). ")
        if S < 1:
            cap += (f"It ran slower on {Pk} threads than on one: another program was using the cores, so this "
                    "shows contention, not the kernel's scaling. ")
        elif k["max_speedup"] is not None:
            cap += (f"Amdahl's law fitted to it gives a serial fraction of {_pct(100 * k['serial_fraction'])}, so no "
                    f"number of cores could make it more than x{_g(k['max_speedup'])} faster. ")
        else:
            cap += "Amdahl's law finds no serial fraction here: it scales like the ideal line. "
    if "peak" in ser:
        cap += (f"The FMA microbenchmark (no memory traffic, no synchronisation) scales "
                f"x{_g(ser['peak']['speedup'][-1])}: the hardware's own limit. ")
    if "numpy" in ser:
        cap += f"NumPy's BLAS scales x{_g(ser['numpy']['speedup'][-1])}. "
    if "train" in ser:
        t = ser["train"]
        cap += (f"A whole training step scales x{_g(t['speedup'][-1])} (Amdahl serial fraction "
                f"{_pct(100 * t['serial_fraction'])})")
        steps = t.get("steps") or []
        if len(steps) >= 2 and all("matmul_s" in x for x in (steps[0], steps[-1])):
            a, b = steps[0], steps[-1]
            cap += (f": inside it, matrix multiplication went from {_ms(a['matmul_s'])} to {_ms(b['matmul_s'])} per "
                    f"step (x{_g(a['matmul_s'] / b['matmul_s'])}) and everything else from {_ms(a['other_s'])} to "
                    f"{_ms(b['other_s'])} (x{_g(a['other_s'] / b['other_s'])}) -- the part that scales worse "
                    "sets the limit")
        X = max(16, 4 * P)
        cap += (f". Extrapolated with Amdahl's law (dashed curves, shaded region), {X} cores would make the step "
                f"x{_g(1 / (t['serial_fraction'] + (1 - t['serial_fraction']) / X))} faster, not x{X}")
        cap += "."
    blocks.append(("fig", "scaling.png", cap.strip()))
    rows = []
    for s in doc["series"]:
        rows.append((s["label"], ", ".join(f"{p}: x{_g(v)}" for p, v in zip(s["threads"], s["speedup"])),
                     _pct(100 * s["serial_fraction"]),
                     "none" if s["max_speedup"] is None else f"x{_g(s['max_speedup'])}"))
    blocks.append(("table", ("series", "speed-up by threads", "serial fraction (Amdahl)", "limit on any cores"), rows))
    if doc.get("note"):
        blocks.append(("p", "Note: " + doc["note"] + "."))
    return blocks


def _train_section(doc: dict, out: Path, figs: list, num: int) -> List[Block]:
    runs = [r for r in doc["runs"] if not r.get("skipped")]
    blocks: List[Block] = [("h2", f"{num}. Training: where the time goes")]
    if not runs:
        blocks.append(("p", "No backend was fast enough to train within the budget."))
        return blocks
    figs.append(plots.plot_train(doc, out / "train.png"))
    p = doc["params"]
    fast = min(runs, key=lambda r: r["step_s"])
    slow = max(runs, key=lambda r: r["step_s"])
    cap = (f"The same MLP ({p.get('layers')}, batch {p.get('batch')}, {p.get('steps')} steps of SGD) trained on each "
           f"backend; bars split each step into matrix multiplication (coloured) and everything else (grey). "
           f"On {fast['backend']} a step takes {_ms(fast['step_s'])} ({_g(fast['samples_per_s'])} samples/s), "
           f"{_pct(100 * fast['matmul_share'])} of it in matmul")
    if slow is not fast:
        cap += (f"; on {slow['backend']} {_ms(slow['step_s'])}, {_pct(100 * slow['matmul_share'])} in matmul "
                f"-- x{_g(slow['step_s'] / fast['step_s'])} slower for the same arithmetic")
    cap += (". Matrix multiplication dominates a training step, so faster matmul hardware means faster training -- "
            "until the remaining work dominates (Amdahl's law again).")
    blocks.append(("fig", "train.png", cap))
    rows = [(r["backend"], _ms(r["step_s"]), _g(r["samples_per_s"]), _pct(100 * r["matmul_share"]),
             f"{100 * r['accuracy']:.1f}%" if r.get("accuracy") is not None else "n/a",
             f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "n/a") for r in runs]
    blocks.append(("table", ("backend", "time/step", "samples/s", "in matmul", "accuracy", "final loss"), rows))
    skipped = [r for r in doc["runs"] if r.get("skipped")]
    if skipped:
        blocks.append(("p", "Not trained (over budget; --all includes them): " +
                       "; ".join(f"{r['backend']} ({r['skipped']})" for r in skipped) + "."))
    return blocks


def _gpu_section(docs: Dict[str, dict], out: Path, figs: list, num: int) -> List[Block]:
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


def _gpu_measured(docs, gpu, gsum, sweep, out: Path, figs: list, num: int) -> List[Block]:
    blocks: List[Block] = [("h2", f"{num}. The GPU, measured on this machine")]
    roof = docs.get("roofline", {}).get("roofs")
    cpu_peak = roof["compute"]["simd_all"] if roof else (docs.get("ladder", {}).get("peak") or {}).get("gflops_all")
    name = (gpu or {}).get("device") or (docs.get("ladder", {}).get("peak") or {}).get("gpu_device") or "the GPU"
    if (gpu or {}).get("emulated") or "emulated" in str(name).lower():
        blocks.append(("p", "Caution: this 'GPU' is whygpu's CPU emulation of CUDA (tests/cuda_emu), which runs "
                            "the CUDA kernels as CPU threads to check them without a GPU. Its figures test the "
                            "measuring and reporting, and say nothing about a real GPU."))
    text = ("A GPU is the same two ideas as the CPU ladder, taken much further: thousands of SIMD lanes in "
            "more than a hundred multiprocessors (SMs) instead of a few cores, and memory bandwidth to feed them. ")
    rows = []
    if gpu:
        text += (f"Measured here, {name} ({gpu['multiprocessors']} SMs) runs float32 fused multiply-adds at "
                 f"{_g(gpu['fma_gflops'])} GFLOP/s")
        if cpu_peak:
            text += f", x{_g(gpu['fma_gflops'] / cpu_peak)} this CPU's {_g(cpu_peak)} GFLOP/s on all its cores"
        text += (f", and moves {_g(gpu['bandwidth']['DRAM'])} GB/s to and from its own memory. Data reach it over a "
                 f"bus: {_g(gpu['host']['h2d']['pinned'])} GB/s host to device from pinned memory, "
                 f"{_g(gpu['host']['h2d']['pageable'])} GB/s from ordinary (pageable) memory. ")
        tensor = gpu.get("tensor_gflops") or {}
        if tensor:
            text += ("Its tensor cores, measured the same way (chains of mma.sync on registers), multiply at "
                     + ", ".join(f"{_g(v)} GFLOP/s in {prec}" for prec, v in tensor.items())
                     + f" -- x{_g(max(tensor.values()) / gpu['fma_gflops'])} the float32 FMA peak. ")
        rows += [(f"{prec} tensor-core peak (mma.sync probe)", f"{_g(v)} GFLOP/s") for prec, v in tensor.items()]
        if gpu.get("tensor_reason"):
            rows.append(("tensor-core peak", f"not measured: {gpu['tensor_reason']}"))
        rows += [("float32 FMA peak (probe)", f"{_g(gpu['fma_gflops'])} GFLOP/s"),
                 ("device memory bandwidth (copy, read + write)", f"{_g(gpu['bandwidth']['DRAM'])} GB/s"),
                 ("L2 cache bandwidth (copy, read + write)", f"{_g(gpu['bandwidth']['L2'])} GB/s")]
        mib = gpu["bytes"]["host_copy"] >> 20
        for d, label in (("h2d", "host -> device"), ("d2h", "device -> host")):
            h = gpu["host"][d]
            rows.append((f"{label}, {mib} MiB: pageable / pinned / staged through pinned",
                         f"{_g(h['pageable'])} / {_g(h['pinned'])} / {_g(h['staged'])} GB/s"))
    if gsum:
        rows.append((f"best CUDA rung ({gsum['best']}, n = {gsum['n']})",
                     f"{_g(gsum['gflops'])} GFLOP/s ({_pct(gsum.get('pct_peak'))} of the measured peak)"))
        if "vs_cublas" in gsum:
            rows.append((f"cuBLAS (n = {gsum['cublas_n']}), through CuPy/PyTorch, strict float32",
                         f"{_g(gsum['cublas_gflops'])} GFLOP/s; {gsum['best']} is {_pct(100 * gsum['vs_cublas'])} "
                         "of it"))
        else:
            rows.append(("cuBLAS", "not measured (neither CuPy nor PyTorch reached the GPU)"))
        if "vs_cpu" in gsum:
            rows.append((f"{gsum['best']} over the best CPU rung ({gsum['best_cpu']}), n = {gsum['vs_cpu_n']}",
                         f"x{_g(gsum['vs_cpu'])}"))
        text += (f"The best hand-written CUDA rung, {gsum['best']}, reached {_g(gsum['gflops'])} GFLOP/s at n = "
                 f"{gsum['n']}" + (f", {_pct(100 * gsum['vs_cublas'])} of NVIDIA's cuBLAS" if "vs_cublas" in gsum
                                   else "") + ". ")
    if sweep:
        sm = sweep["summary"]
        if "at_batch" in sm:
            b = sm["at_batch"]
            if "speedup_resident" in sm:
                rows.append((f"training step, batch {b}: GPU (data resident) over the best CPU back end",
                             f"x{_g(sm['speedup_resident'])}"))
            if "speedup_copied" in sm:
                rows.append((f"training step, batch {b}: GPU (batch copied every step) over the best CPU",
                             f"x{_g(sm['speedup_copied'])}"))
            if "copy_share" in sm:
                rows.append((f"share of the copied step spent copying the batch, batch {b}",
                             _pct(100 * sm["copy_share"])))
            if "speedup_resident_graph" in sm:
                rows.append((f"training step, batch {b}: GPU (data resident, step as one CUDA graph) over the best CPU",
                             f"x{_g(sm['speedup_resident_graph'])}"))
            if "graph_gain" in sm:
                rows.append((f"what capturing the step as a CUDA graph bought, batch {b} (resident)",
                             f"x{_g(sm['graph_gain'])}"))
            if "bf16_gain" in sm:
                rows.append((f"mixed precision: the step with bf16 tensor-core matmuls over float32, batch {b}",
                             f"x{_g(sm['bf16_gain'])}"))
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


_TENSOR_KERNELS = ("cuda_mma", "cuda_mma_bf16", "cuda_wgmma")


def _mentions_tensor_cores(docs: Dict[str, dict], gpu: Optional[dict]) -> bool:
    """Whether any result involves the tensor cores: a peak, a rung measured or listed as unavailable."""
    if (gpu or {}).get("tensor_gflops"):
        return True
    for d in docs.values():
        names = [r.get("kernel") for key in ("measurements", "points", "rows", "unavailable") for r in d.get(key) or []
                 if isinstance(r, dict)]
        if any(n in _TENSOR_KERNELS for n in names):
            return True
    return False


def _tensor_core_lesson(docs: Dict[str, dict]) -> List[Block]:
    """What a tensor core is, in plain words, with this run's numbers where there are any."""
    text = ("What a tensor core is: an ordinary GPU core does one fused multiply-add per lane per instruction. A "
            "tensor core is a small matrix-multiply unit: one instruction (mma.sync), issued by a whole warp of 32 "
            "threads, multiplies a 16 x 16 piece of A by a 16 x 8 piece of B and adds the result into a 16 x 8 "
            "float32 accumulator -- 4096 flops where a warp of FMAs does 64. The warp's operands are spread over "
            "its registers in fixed 'fragments'; rung 15 (cuda_mma) loads them with ldmatrix from shared memory "
            "that cp.async fills in the background, and rung 16 (cuda_wgmma, Hopper only) lets four warps issue "
            "one larger wgmma that reads shared memory directly, fed by the TMA copy engine. The price is "
            "precision: the tensor cores read short numbers -- TF32 (11 significant bits) or bfloat16 (8) -- "
            "so the results are off by about 1e-3 or 1e-2 relative instead of float32's 1e-7; the sums stay "
            "float32. Deep learning tolerates that, which is why training runs on tensor cores "
            "(whygpu: model.to(\"cuda\", precision=\"bf16\")).")
    errs = (docs.get("ladder") or {}).get("errors") or {}
    measured = [(k, errs[k]) for k in _TENSOR_KERNELS if k in errs]
    if measured:
        text += " Measured here: " + "; ".join(
            f"{k} ({e['precision']}) max relative error {format_error(e['max_rel_error'])} at n = {e['n']}"
            for k, e in measured) + "."
    return [("p", text)]


def _gpu_roofline(doc: dict, out: Path, figs: list) -> List[Block]:
    gpu = doc["gpu_roofs"]
    pts = [p for p in doc["points"] if p.get("device") == "cuda"]
    figs.append(plots.plot_roofline_gpu(doc, out / "roofline_gpu.png"))
    best = max(pts, key=lambda p: p["measured_gflops"])
    first = min(pts, key=lambda p: p["measured_gflops"])
    cap = (f"The GPU's roofs, measured by compiled probes (csrc/cuda/probe.cu): {_g(gpu['fma_gflops'])} GFLOP/s of "
           f"float32 FMA, {_g(gpu['bandwidth']['DRAM'])} GB/s from device memory and {_g(gpu['bandwidth']['L2'])} "
           f"GB/s from the L2 cache" + ("; the tensor cores' roofs (mma.sync probe): " + ", ".join(
               f"{_g(v)} GFLOP/s in {prec}" for prec, v in (gpu.get("tensor_gflops") or {}).items())
               if gpu.get("tensor_gflops") else "") +
           f". Each CUDA rung sits at the intensity its tiles give it (flop per byte asked of "
           f"L2). Hollow markers are the model's predictions, filled ones the measurements: {best['kernel']} reached "
           f"{_g(best['measured_gflops'])} GFLOP/s at n = {best['n']}, {_pct(100 * best['fraction_of_roof'])} of its "
           f"predicted speed; {first['kernel']} {_g(first['measured_gflops'])} GFLOP/s, "
           f"{_pct(100 * first['fraction_of_roof'])}. Each rung reuses every load over a bigger tile, which moves it "
           "right, off the bandwidth slopes and under the compute roof.")
    if any(p.get("precision") in ("tf32", "bf16") for p in pts):
        cap += (" The tensor-core rungs are measured against the tensor-core roof of their precision, not the "
                "FMA roof: they do their arithmetic on other units.")
    table = [(p["kernel"], str(p["n"]), p.get("precision", "float32"), f"{p['compute_roof']} ({_g(p['compute_gflops'])})",
              p["bound"], _g(p["intensity"]) + (f" ({p['intensity_level']})" if p.get("intensity_level") else ""),
              _ms(p["predicted_s"]), _ms(p["measured_s"]), _pct(100 * p["fraction_of_roof"])) for p in pts]
    blocks = [("fig", "roofline_gpu.png", cap),
              ("table", ("kernel", "n", "precision", "compute roof (GFLOP/s)", "bound", "flop/byte", "predicted",
                         "measured", "of predicted speed"), table),
              ("p", "Why each rung sits where it does:"),
              ("ul", [why_below(p["kernel"], p["fraction_of_roof"]) for p in pts])]
    over = [p for p in pts if p["fraction_of_roof"] > 1.05]
    if any(p["kernel"] == "cuda_wgmma" for p in over):
        blocks.append(("p", "cuda_wgmma runs faster than the roof the mma.sync probe measured: on Hopper the "
                            "warpgroup wgmma instruction reaches tensor-core throughput that no single-warp "
                            "mma.sync can, so for rung 16 the probe's roof is a lower bound on the real one."))
    return blocks


def _gpu_sweep(doc: dict, out: Path, figs: list) -> List[Block]:
    sw = doc["sweep"]
    sm = sw["summary"]
    figs.append(plots.plot_train_sweep(doc, out / "train_sweep.png"))
    rows = {r["batch"]: r for r in sm["rows"]}
    cap = (f"One training step of the MLP {sw['layers']} (forward, backward, SGD update) against the batch size, "
           f"median of {sw['steps']} steps: the CPU back ends on all {sw['threads']} threads, the GPU with the batch "
           "copied from host memory every step, and the GPU with the data already in its memory. ")
    for key, what in (("resident", "with the data resident"), ("copied", "with the batch copied every step")):
        if any(f"speedup_{key}" in r for r in sm["rows"]):
            b = sm.get(f"overtakes_{key}")
            if b:
                r = rows[b]
                cap += (f"The GPU {what} overtakes the best CPU back end at batch {b} "
                        f"({_ms(r[f'{key}_s'])} against {_ms(r['best_cpu_s'])} on {r['best_cpu']}). ")
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
            cap += (f"; copying the batch takes {_pct(100 * sm['copy_share'])} of the copied step. "
                    if "copy_share" in sm else ". ")
    if "largest_batch" in sm and sm["largest_batch"] != sm.get("at_batch"):
        parts = [f"x{_g(sm[k + '_largest'])} {w}" for k, w in (("speedup_resident", "resident"),
                                                              ("speedup_copied", "copied"))
                 if k + "_largest" in sm]
        if parts:
            cap += f"At batch {sm['largest_batch']}: " + ", ".join(parts)
            cap += (f", copies {_pct(100 * sm['copy_share_largest'])} of the copied step. "
                    if "copy_share_largest" in sm else ". ")
    if "graph_gain" in sm:
        cap += (f"Replaying the whole step as one CUDA graph (no Python, one launch instead of one per kernel) "
                f"made the resident step x{_g(sm['graph_gain'])} faster at batch {sm['at_batch']}. ")
    if "bf16_gain" in sm:
        cap += (f"With every matmul on the bf16 tensor cores (mixed precision: float32 weights, sums and "
                f"everything else) the same graph step was x{_g(sm['bf16_gain'])} as fast at batch "
                f"{sm['at_batch']}" + (f" and x{_g(sm['bf16_gain_largest'])} at batch {sm['largest_batch']}"
                                       if "bf16_gain_largest" in sm else "") + ". ")
    cap += ("Small batches leave most of the GPU idle and pay a fixed cost per kernel launch, so the CPU wins "
            "there: batch your operations. Copies over the bus cost the same per sample at every batch size, "
            "so keeping data on the GPU matters most where the GPU is fastest: minimise CPU-GPU transfers.")
    table = []
    for b in sw["batches"]:
        r = rows.get(b, {})
        table.append((str(b), _ms(r["best_cpu_s"]) + f" ({r['best_cpu']})" if "best_cpu_s" in r else "skipped",
                      _ms(r["copied_s"]) if "copied_s" in r else "skipped",
                      _ms(r["resident_s"]) if "resident_s" in r else "skipped",
                      f"x{_g(r['speedup_copied'])}" if "speedup_copied" in r else "",
                      f"x{_g(r['speedup_resident'])}" if "speedup_resident" in r else "",
                      _pct(100 * r["copy_share"]) if "copy_share" in r else "",
                      _ms(r["resident_graph_s"]) if "resident_graph_s" in r else "skipped",
                      f"x{_g(r['graph_gain'])}" if "graph_gain" in r else "",
                      _ms(r["resident_graph_bf16_s"]) if "resident_graph_bf16_s" in r else "-",
                      f"x{_g(r['bf16_gain'])}" if "bf16_gain" in r else ""))
    blocks = [("fig", "train_sweep.png", cap.strip()),
              ("table", ("batch", "best CPU", "GPU, copied", "GPU, resident", "speed-up copied", "speed-up resident",
                         "copy share", "GPU, resident, graph", "graph gain", "GPU, graph, bf16", "bf16 gain"),
               table)]
    if sw.get("skipped"):
        blocks.append(("p", "Not measured (over the time budget; --all runs them): " +
                       "; ".join(f"{x['series']} at batch {x['batch']}" for x in sw["skipped"]) + "."))
    return blocks


def _gpu_public(docs: Dict[str, dict], num: int) -> List[Block]:
    """No GPU was usable: what the measurements imply for one, from public figures (marked so)."""
    roof = docs.get("roofline", {}).get("roofs")
    peak = roof["compute"]["simd_all"] if roof else docs.get("ladder", {}).get("peak", {}).get("gflops_all")
    if not peak:
        return []
    g = GPU_PUBLIC
    ratio = g["sgemm_gflops"] / peak
    why = next((d.get("machine", {}).get("cuda", {}).get("reason") for d in docs.values()
                if d.get("machine", {}).get("cuda", {}).get("reason")), None)
    blocks: List[Block] = [("h2", f"{num}. What this means for a GPU (public figures, not measured here)")]
    text = ("No GPU was usable on this machine" + (f" ({why})" if why else "") + ", so this section uses public "
            f"figures, not measurements. This machine's measured peak is {_g(peak)} GFLOP/s. Public figures for an "
            f"{g['name']}: about {g['fp32_peak_gflops'] / 1000:.0f} TFLOP/s fp32 peak, about "
            f"{g['sgemm_gflops'] / 1000:.0f} TFLOP/s in cuBLAS SGEMM, {g['bandwidth_gbps'] / 1000:.2f} TB/s of memory "
            f"bandwidth -- roughly x{_g(ratio)} this CPU on matrix multiplication. It gets there with the same ideas as "
            "the ladder above, scaled up: thousands of SIMD lanes instead of 16, more than a hundred cores instead "
            "of a few, and memory bandwidth to feed them.")
    runs = [r for r in docs.get("train", {}).get("runs", []) if not r.get("skipped")]
    if runs:
        r = min(runs, key=lambda x: x["step_s"])
        s = r["matmul_share"]
        gain = 1 / ((1 - s) + s / ratio)
        text += (f" Amdahl's law puts that in perspective: with {_pct(100 * s)} of the {r['backend']} training step in "
                 f"matmul, making only the matmul x{_g(ratio)} faster speeds the step up x{_g(gain)}; frameworks "
                 "move the rest of the step to the GPU too, which is how training becomes the 10-100x faster that "
                 "made deep learning practical.")
    blocks.append(("p", text))
    return blocks


def _explain_section(doc: dict, num: int) -> List[Block]:
    rows = []
    for r in doc["rows"]:
        worst = max(r["traffic"], key=lambda t: t["seconds"]) if r["traffic"] else None
        rows.append((r["kernel"], f"{r['compute_roof']} ({_g(r['compute_gflops'])})",
                     f"{format_bytes(worst['bytes'])} {worst['level']}" if worst else "in L1",
                     _g(r["intensity"]), r["bound"], _ms(r["predicted_s"]),
                     _ms(r["measured_s"]) if "measured_s" in r else "not measured",
                     r.get("precision", doc["dtype"]), format_error(r.get("max_rel_error"))))
    for u in doc.get("unavailable") or []:
        rows.append((u["kernel"], "unavailable: " + u["reason"], "", "", "", "", "", u.get("precision") or "", ""))
    return [("h2", f"{num}. One product explained: {doc['m']} x {doc['k']} @ {doc['k']} x {doc['n']}"),
            ("p", f"{doc['flops'] / 1e6:,.1f} MFLOP ({doc['dtype']}). For each kernel, the roof it can use, the bytes "
                  "its loops move from the level that limits most, the intensity, predicted vs measured time -- and, "
                  "side by side with the speed, the precision its products are computed in and its error ("
                  + doc.get("error_metric", "max relative error against a float64 product") + ")."),
            ("table", ("kernel", "compute roof", "bytes moved", "flop/byte", "bound", "predicted", "measured",
                       "precision", "max rel. error"), rows)]


def _bench_section(doc: dict, out: Path, figs: list, num: int) -> List[Block]:
    rows = []
    for b in doc["benchmarks"]:
        st = b.get("stats", {})
        extra = b.get("extra_info", {}) or {}
        params = b.get("params") or {}
        flops = extra.get("flops")
        med = st.get("median")
        if med is None:
            continue
        kernel = params.get("kernel") or extra.get("kernel")
        rows.append({"name": b.get("name", "?"), "group": b.get("group") or "", "median_s": med,
                     "rounds": st.get("rounds"), "kernel": kernel if isinstance(kernel, str) else None,
                     "gflops": (flops / med / 1e9) if flops else extra.get("gflops")})
    if not rows:
        return []
    figs.append(plots.plot_benchmarks({"benchmarks": rows}, out / "benchmarks.png"))
    fastest = min(rows, key=lambda r: r["median_s"])
    slowest = max(rows, key=lambda r: r["median_s"])
    cap = (f"{len(rows)} pytest-benchmark results; median time per call from {fastest['name']} "
           f"({_ms(fastest['median_s'])}) to {slowest['name']} ({_ms(slowest['median_s'])}).")
    with_g = [r for r in rows if r["gflops"]]
    if with_g:
        top = max(with_g, key=lambda r: r["gflops"])
        low = min(with_g, key=lambda r: r["gflops"])
        cap += (f" The bars show GFLOP/s where a benchmark records its work: from {_g(low['gflops'])} "
                f"({low['name']}) to {_g(top['gflops'])} ({top['name']}).")
    table = [(r["name"], r["group"], _ms(r["median_s"]), str(r["rounds"] or ""),
              _g(r["gflops"]) if r["gflops"] else "") for r in rows]
    return [("h2", f"{num}. Benchmarks (pytest-benchmark)"), ("fig", "benchmarks.png", cap),
            ("table", ("benchmark", "group", "median", "rounds", "GFLOP/s"), table)]


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: Sequence[Block]) -> str:
    out, fig_no = [], 0
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "fig":
            fig_no += 1
            out.append(f"![Figure {fig_no}]({b[1]})\n\n*Figure {fig_no}.* {b[2]}\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "ul":
            out += [f"- {x}" for x in b[1]]
            out.append("")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```\n")
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;line-height:1.5;color:#222}h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:1px solid #ddd}figure{margin:1.2rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92rem;color:#333;margin-top:.4rem}table{border-collapse:collapse;font-size:.85rem;margin:.8rem 0}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}"""


def _to_html(blocks: Sequence[Block], out: Path, title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    fig_no = 0
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "fig":
            fig_no += 1
            data = base64.b64encode((out / b[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='Figure {fig_no}' src='data:image/png;base64,{data}'>"
                         f"<figcaption><b>Figure {fig_no}.</b> {e(b[2])}</figcaption></figure>")
        elif kind == "table":
            head, rows = b[1], b[2]
            h = "".join(f"<th>{e(str(x))}</th>" for x in head) if any(head) else ""
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            parts.append(f"<table>{'<tr>' + h + '</tr>' if h else ''}{body}</table>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(docs: Dict[str, dict], out_dir, *, extra_blocks: Optional[List[Block]] = None) -> dict:
    """Write the figures, report.md and report.html into out_dir (created if
    needed) from {kind: document} (see :func:`load_results`).  Returns
    {"html": path, "markdown": path, "figures": [paths]}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not docs:
        raise ResultsError("nothing to report")
    figs: List[str] = []
    blocks: List[Block] = _intro(docs)
    num = 1
    if "ladder" in docs:
        blocks += _ladder_section(docs["ladder"], out, figs, num)
        num += 1
    if "roofline" in docs:
        blocks += _roofline_section(docs["roofline"], out, figs, num)
        num += 1
    if "scaling" in docs:
        blocks += _scaling_section(docs["scaling"], out, figs, num)
        num += 1
    if "train" in docs:
        blocks += _train_section(docs["train"], out, figs, num)
        num += 1
    gpu = _gpu_section(docs, out, figs, num)
    if gpu:
        blocks += gpu
        num += 1
    if "explain" in docs:
        blocks += _explain_section(docs["explain"], num)
        num += 1
    if "benchmark" in docs:
        blocks += _bench_section(docs["benchmark"], out, figs, num)
        num += 1
    if "info" in docs:
        blocks += _info_section(docs["info"])
    if extra_blocks:
        blocks += extra_blocks
    md = out / "report.md"
    md.write_text(_to_markdown(blocks))
    page = out / "report.html"
    page.write_text(_to_html(blocks, out, "whygpu report"))
    return {"html": str(page), "markdown": str(md), "figures": figs}

