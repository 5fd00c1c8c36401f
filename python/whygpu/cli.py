"""``whygpu``: the command line -- measure this machine and explain, with
tables, figures and a report, why each kind of parallelism speeds up deep
learning.

    whygpu info                      what this machine offers
    whygpu ladder  [--sizes ...]     GFLOP/s of every kernel over a range of sizes
    whygpu scaling [--n N]           speed-up against threads, Amdahl's law fitted
    whygpu roofline [--n N]          the machine's measured roofs, every kernel on them
    whygpu train   [--steps S]       the same MLP trained on each back end
    whygpu explain M N K             one product: predicted vs measured, per kernel
    whygpu demo    [--quick]         all of the above, then a report (HTML + Markdown)
    whygpu report  RESULTS...        rebuild the report from saved JSON

Each measuring subcommand prints a table, writes ``<name>.json`` into the
output folder (``--out``, default ``./whygpu-report-YYYYmmdd-HHMMSS``) and,
with ``--plot``, PNG figures.  User errors (bad arguments, unknown kernels,
an unwritable folder) print one line and exit with status 2; set
WHYGPU_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

os.environ.setdefault("MPLBACKEND", "Agg")  # never open a window, even if pyplot gets imported

__all__ = ["main"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _int_list(text: str) -> List[int]:
    """'64,128,256' or '64:1024' (powers of two from 64 to 1024)."""
    text = text.strip()
    if ":" in text:
        lo_s, hi_s = text.split(":", 1)
        lo, hi = _positive_int(lo_s), _positive_int(hi_s)
        if lo > hi:
            raise argparse.ArgumentTypeError(f"range {text!r} is empty (start > end)")
        out = []
        v = lo
        while v <= hi:
            out.append(v)
            v *= 2
        return out
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return [_positive_int(p.strip()) for p in parts]


def _name_list(text: str) -> List[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------
def _default_out() -> Path:
    return Path.cwd() / f"whygpu-report-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _prepare_out(path: Optional[str]) -> Path:
    """The output folder, created and checked writable *before* any measuring."""
    p = Path(path) if path else _default_out()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".whygpu-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to output folder {str(p)!r}: {exc.strerror or exc}") from None
    return p


def _clean(x):
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # NumPy scalars
        return _clean(x.item())
    return x


def _write_json(out: Path, name: str, doc: dict) -> Path:
    path = out / f"{name}.json"
    try:
        path.write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _roundtrip(doc: dict) -> dict:
    """The document as it will read back from JSON (what the report sees)."""
    return json.loads(json.dumps(_clean(doc), allow_nan=False))


def _save(out: Path, name: str, doc: dict, plot: bool, figures=()) -> None:
    """Write <name>.json and, with --plot, each figure: (plots function name, file name)."""
    print(f"\nwrote {_write_json(out, name, doc)}")
    if plot and figures:
        from . import plots
        d = _roundtrip(doc)
        for fn, filename in figures:
            print(f"wrote {getattr(plots, fn)(d, out / filename)}")


def _table(head: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = ()) -> str:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def _g(x) -> str:
    from .bench.measure import format_figure
    return format_figure(x)


def _say(args, text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _note(args) -> Callable[[str], None]:
    """Notes (skips, warnings) go to stderr, so stdout stays the tables."""
    def log(msg: str) -> None:
        print(f"note: {msg}", file=sys.stderr, flush=True)
    return log


def _progress(args) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------
def _info_doc() -> dict:
    from ._registry import KERNELS, default_kernel
    from .bench.machine import machine_info
    return {"schema": "whygpu.info/1", "machine": machine_info(),
            "kernels": [k for k, v in KERNELS.items() if v.available],
            "default_kernel": default_kernel(),
            "unavailable": {k: v.unavailable() for k, v in KERNELS.items() if not v.available}}


def _gpu_details(d: dict) -> str:
    parts = []
    if d.get("multiprocessors"):
        parts.append(f"{d['multiprocessors']} SMs")
    if d.get("memory_bytes"):
        parts.append(f"{d['memory_bytes'] / 2 ** 30:.0f} GiB")
    if d.get("driver_version"):
        parts.append(f"driver CUDA {d['driver_version']}")
    return f" ({', '.join(parts)})" if parts else ""


def _print_info(doc: dict) -> None:
    from .explain import format_bytes
    m, cpu = doc["machine"], doc["machine"]["cpu"]

    def kib(b):
        return f"{b // 1024 ** 2} MiB" if b >= 1024 ** 2 and b % 1024 ** 2 == 0 else (
            f"{b // 1024} KiB" if b % 1024 == 0 else format_bytes(b))
    blk = cpu.get("blocking", {}).get("float32", {})
    cuda = m["cuda"]
    rows = [
        ("CPU", f"{cpu.get('model', '?')} ({cpu.get('machine', '?')})"),
        ("cores", f"{cpu.get('cores', '?')} usable" + (
            f" on {cpu['physical_cores']} physical cores (SMT: {cpu['cores'] // cpu['physical_cores']} threads "
            f"per core share one core's FMA units)" if cpu.get("physical_cores") and cpu.get("cores") and
            cpu["physical_cores"] < cpu["cores"] else "") + f"; default threads {m.get('threads_default')}"),
        ("instruction set", f"{cpu.get('arch', '?')} (best {cpu.get('best_arch', '?')}; supported: "
                            f"{', '.join(cpu.get('supported_archs', []))})"),
        ("micro-kernel", f"{blk.get('micro_kernel', '?')} (MR={blk.get('mr')}, NR={blk.get('nr')}, "
                         f"KC={blk.get('kc')}, NC={blk.get('nc')})" if blk else "n/a"),
        ("caches", ", ".join(f"{k} {kib(v)}" for k, v in cpu.get("caches", {}).items()) or "unknown"),
        ("OpenMP", "yes" if cpu.get("openmp") else "no (the openmp kernel is unavailable)"),
        ("BLAS (NumPy)", "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}, "
                                   f"{b.get('num_threads')} threads)" for b in m.get("blas", [])) or "unknown"),
        ("CUDA", f"available: {cuda.get('device', 'GPU')}{_gpu_details(cuda.get('device_info') or {})}"
         if cuda.get("available") else f"not available ({cuda.get('reason')})"),
        ("kernels", ", ".join(doc["kernels"])),
        ("default kernel", doc["default_kernel"] if doc["default_kernel"] == "openmp" else
         f"{doc['default_kernel']} (this build has no OpenMP: whygpu.matmul without kernel= runs on one core)"),
    ]
    by_reason = {}
    for k, why in doc["unavailable"].items():  # one line per reason, not per kernel
        by_reason.setdefault(why, []).append(k)
    rows += [("unavailable", f"{', '.join(ks)}: {why}") for why, ks in by_reason.items()]
    rows.append(("versions", f"whygpu {m['versions']['whygpu']}, Python {m['python']}, NumPy "
                             f"{m['versions']['numpy']}, matplotlib {m['versions']['matplotlib']}, {m.get('compiler')}"))
    rows.append(("OS", m.get("os", "?")))
    w = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))


def cmd_info(args) -> int:
    out = _prepare_out(args.out)
    doc = _info_doc()
    _print_info(doc)
    _save(out, "info", doc, plot=False)
    return 0


def _print_ladder(doc: dict) -> None:
    sizes = doc["params"]["sizes"]
    by = {}
    for r in doc["measurements"]:
        by.setdefault(r["kernel"], {})[r["n"]] = r["gflops"]
    skipped = {(s["kernel"], s["n"]) for s in doc["skipped"]}
    rows = []
    for k in doc["params"]["kernels"]:
        rows.append([k] + [_g(by.get(k, {}).get(n)) if n in by.get(k, {}) else
                           ("skip" if (k, n) in skipped else "-") for n in sizes])
    print(f"GFLOP/s, C = A @ B with n x n {doc['params']['dtype']} matrices "
          f"(median of up to {doc['params']['repeats']} runs)")
    print(_table(["kernel"] + [f"n={n}" for n in sizes], rows, right=range(1, len(sizes) + 1)))
    print()
    from .explain import format_error
    rows = []
    for r in doc["summary"]["rows"]:
        step = f"x{_g(r['speedup_prev'])} vs {r['prev']} @{r['speedup_n']}" if "speedup_prev" in r else ""
        pct = r.get("pct_peak")
        rows.append([r["kernel"], r["n"], _g(r["gflops"]), step,
                     "n/a" if pct is None or not math.isfinite(pct) else f"{pct:.3g}%",
                     r.get("precision", ""), format_error(r.get("max_rel_error"))])
    pk = doc.get("peak") or {}
    half = 2 if doc["params"]["dtype"] == "float64" else 1
    gpu_pk = (f"; the GPU ({pk.get('gpu_device', 'GPU')}): {_g(pk['gpu_gflops'])} GFLOP/s float32"
              if pk.get("gpu_gflops") else "")
    if pk.get("gpu_tensor_gflops"):
        gpu_pk += ", tensor cores " + ", ".join(f"{_g(v)} {p}" for p, v in pk["gpu_tensor_gflops"].items())
    print(f"The ladder (measured FMA peak, {doc['params']['dtype']}: {_g(pk.get('gflops_1t', 0) / half)} GFLOP/s on "
          f"1 core, {_g(pk.get('gflops_all', 0) / half)} on {pk.get('threads')}{gpu_pk})")
    print(_table(["kernel", "largest n", "GFLOP/s", "speed-up over previous rung", "% of peak", "precision",
                  "max rel err"], rows, right=(1, 2, 4, 6)))
    if doc.get("errors"):
        ns = sorted({e["n"] for e in doc["errors"].values()})
        print(f"(% of peak: the tensor-core rungs against the tensor-core peak in their precision; max rel err: "
              f"{doc.get('error_metric', 'against float64')}, at n = {', '.join(map(str, ns))})")
    for u in doc.get("unavailable") or []:
        print(f"{u['kernel']}: not measured, unavailable here: {u['reason']}")
    g = doc["summary"].get("gpu")
    if g:
        line = (f"Best GPU rung: {g['best']} at n={g['n']}, {_g(g['gflops'])} GFLOP/s "
                f"({_pct_txt(g.get('pct_peak'))} of the GPU's measured peak)")
        if "vs_cublas" in g:
            line += f"; {100 * g['vs_cublas']:.0f}% of cuBLAS at n={g['cublas_n']}"
        if "vs_cpu" in g:
            line += f"; x{_g(g['vs_cpu'])} the best CPU rung ({g['best_cpu']}) at n={g['vs_cpu_n']}"
        print(line)


def _pct_txt(p) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}%"


# GPU sizes: a GPU needs n in the thousands before launch overheads and idle
# SMs stop mattering (n = 512 ran at 8% of what n = 4096 did on an H200).
GPU_SIZES = [128, 256, 512, 1024, 2048, 4096]


def cmd_ladder(args) -> int:
    from .bench.ladder import run_ladder
    out = _prepare_out(args.out)
    doc = run_ladder(sizes=args.sizes, kernels=args.kernels, dtype=args.dtype, threads=args.threads,
                     repeats=args.repeats, budget=args.budget, force=args.all, references=not args.no_numpy,
                     gpu_sizes=args.gpu_sizes, progress=_progress(args), log=_note(args))
    _print_ladder(doc)
    _save(out, "ladder", doc, args.plot, [("plot_ladder", "ladder.png"), ("plot_ladder_steps", "ladder_steps.png")])
    return 0


def _print_scaling(doc: dict) -> None:
    ths = doc["params"]["threads"]
    rows = []
    for s in doc["series"]:
        f = s["serial_fraction"]
        lim = s.get("max_speedup")
        rows.append([s["label"]] + [f"x{_g(v)}" for v in s["speedup"]] +
                    [f"{100 * f:.0f}%", "none" if lim is None or not math.isfinite(lim) else f"x{_g(lim)}"])
    print("Speed-up over 1 thread, and the serial fraction Amdahl's law fits")
    print(_table(["series"] + [f"{p} thr" for p in ths] + ["serial", "limit"], rows,
                 right=range(1, len(ths) + 3)))
    for s in doc["series"]:
        steps = s.get("steps") or []
        if s["kind"] == "train" and len(steps) >= 2:
            a, b = steps[0], steps[-1]
            print(f"training step, per step: matmul {1e3 * a['matmul_s']:.3g} -> {1e3 * b['matmul_s']:.3g} ms, "
                  f"everything else {1e3 * a['other_s']:.3g} -> {1e3 * b['other_s']:.3g} ms "
                  f"({a['threads']} -> {b['threads']} threads)")
    if doc.get("note"):
        print(f"({doc['note']})")


def _train_step_fn(args, quick: bool = False):
    """A callable threads -> {"seconds", "matmul_share"} timing one training
    step on the parallel back end, or None when the training stack is absent."""
    try:
        from .bench.train import step_timer
    except ImportError:
        return None
    return step_timer(batch=args.batch, backend=getattr(args, "kernel", "openmp"), quick=quick)


def cmd_scaling(args) -> int:
    from .bench.scaling import run_scaling
    out = _prepare_out(args.out)
    step = None if args.no_train else _train_step_fn(args)
    if step is None and not args.no_train:
        _note(args)("the training stack (whygpu.nn) is not available: scaling of the training step skipped")
    doc = run_scaling(n=args.n, threads_list=args.threads, kernel=args.kernel, repeats=args.repeats,
                      budget=args.budget, train_step=step, train_label=f"training step, batch {args.batch}",
                      progress=_progress(args), log=_note(args))
    _print_scaling(doc)
    _save(out, "scaling", doc, args.plot, [("plot_scaling", "scaling.png")])
    return 0


def _print_roofline(doc: dict) -> None:
    from .roofline import COMPUTE_ROOFS
    r = doc["roofs"]
    print(f"Roofs of this machine (measured; {r['arch']}, {r['threads']} threads, float32)")
    rows = [[k, _g(v), COMPUTE_ROOFS.get(k, "")] for k, v in r["compute"].items()]
    print(_table(["compute roof", "GFLOP/s", "what it is"], rows, right=(1,)))
    print()
    levels = list(r["bandwidth"]["1"])
    rows = [[lvl, _g(r["bandwidth"]["1"][lvl]), _g(r["bandwidth"]["all"].get(lvl))] for lvl in levels]
    print(_table(["bandwidth (STREAM triad)", "GB/s, 1 core", f"GB/s, {r['threads']} cores"], rows, right=(1, 2)))
    print()
    rows = []
    for p in doc["points"]:
        rows.append([p["kernel"], p["n"], p.get("precision") or r.get("dtype", "float32"), p["compute_roof"],
                     p["bound"], _g(p["intensity"]) + (f" {p['intensity_level']}" if p.get("intensity_level") else ""),
                     _g(p["predicted_gflops"]), _g(p["measured_gflops"]), f"{100 * p['error']:+.0f}%"])
    print("Each kernel against its roof (error = (predicted - measured) / measured time)")
    print(_table(["kernel", "n", "precision", "roof", "bound", "flop/byte", "predicted GFLOP/s", "measured GFLOP/s",
                  "error"], rows, right=(1, 6, 7, 8)))
    for n in doc.get("notes", []):
        print(f"note: {n}")
    for u in doc.get("unavailable") or []:
        print(f"note: {u['kernel']} not measured, unavailable here: {u['reason']}")
    gpu = doc.get("gpu_roofs")
    if gpu:
        print()
        _print_gpu_roofs(gpu)


def _print_gpu_roofs(gpu: dict) -> None:
    print(f"Roofs of the GPU (measured; {gpu['device']}, {gpu['multiprocessors']} SMs)")
    rows = [["float32 FMA peak", f"{_g(gpu['fma_gflops'])} GFLOP/s"]]
    for prec, v in (gpu.get("tensor_gflops") or {}).items():
        rows.append([f"{prec} tensor-core peak (mma.sync)", f"{_g(v)} GFLOP/s"])
    if gpu.get("tensor_reason"):
        rows.append(["tensor-core peak", f"not measured: {gpu['tensor_reason']}"])
    rows += [[f"device memory, {lvl} working set", f"{_g(v)} GB/s (read + write)"]
             for lvl, v in gpu["bandwidth"].items()]
    for d, label in (("h2d", "host -> device"), ("d2h", "device -> host")):
        h = gpu["host"][d]
        rows.append([f"{label}, {gpu['bytes']['host_copy'] >> 20} MiB",
                     f"pageable {_g(h['pageable'])}, pinned {_g(h['pinned'])}, staged {_g(h['staged'])} GB/s"])
    print(_table(["GPU roof", "measured"], rows))


def cmd_roofline(args) -> int:
    from .roofline import run_roofline
    out = _prepare_out(args.out)
    doc = run_roofline(n=args.n, kernels=args.kernels, dtype=args.dtype, threads=args.threads, repeats=args.repeats,
                       budget=args.budget, force=args.all, quick=args.quick, progress=_progress(args),
                       gpu_n=args.gpu_n, log=lambda s: None)
    _print_roofline(doc)
    figures = [("plot_roofline", "roofline.png")]
    if doc.get("gpu_roofs"):
        figures.append(("plot_roofline_gpu", "roofline_gpu.png"))
    _save(out, "roofline", doc, args.plot, figures)
    return 0


def _print_train(doc: dict) -> None:
    rows = []
    for r in doc["runs"]:
        if r.get("skipped"):
            rows.append([r["backend"], "skipped", "", "", "", r["skipped"]])
            continue
        rows.append([r["backend"], f"{1e3 * r['step_s']:.3g} ms", _g(r["samples_per_s"]),
                     f"{100 * r['matmul_share']:.0f}%",
                     f"{100 * r['accuracy']:.1f}%" if r.get("accuracy") is not None else "n/a", ""])
    p = doc["params"]
    print(f"MLP {p['layers']}, batch {p['batch']}, {p['steps']} steps of SGD on {p['dataset']}")
    print(_table(["backend", "time/step", "samples/s", "in matmul", "accuracy", "note"], rows, right=(1, 2, 3, 4)))
    if doc.get("sweep"):
        print()
        _print_sweep(doc["sweep"])


def _print_sweep(sw: dict) -> None:
    labels = [s["label"] for s in sw["series"]]
    by = {s["label"]: {pt["batch"]: pt["step_s"] for pt in s["points"]} for s in sw["series"]}
    summ = {r["batch"]: r for r in sw["summary"]["rows"]}
    gpu = any(s["device"] == "cuda" for s in sw["series"])
    rows = []
    for b in sw["batches"]:
        r = summ.get(b, {})
        rows.append([b] + [f"{1e3 * by[lbl][b]:.3g}" if b in by[lbl] else "skip" for lbl in labels] +
                    ([f"x{_g(r['speedup_copied'])}" if "speedup_copied" in r else "-",
                      f"x{_g(r['speedup_resident'])}" if "speedup_resident" in r else "-",
                      f"{100 * r['copy_share']:.0f}%" if "copy_share" in r else "-",
                      f"x{_g(r['graph_gain'])}" if "graph_gain" in r else "-",
                      f"x{_g(r['bf16_gain'])}" if "bf16_gain" in r else "-"] if gpu else []))
    print(f"ms per training step of the MLP {sw['layers']} by batch size (median of {sw['steps']} steps; "
          f"CPU back ends on {sw['threads']} threads)")
    extra = ["GPU copied vs best CPU", "GPU resident vs best CPU", "copy share", "graph gain",
             "bf16 gain"] if gpu else []
    print(_table(["batch"] + labels + extra, rows, right=range(0, len(labels) + 6)))
    if not gpu:
        print("(no GPU is usable here: the sweep has the CPU back ends only)")
    s = sw["summary"]
    for key, what in (("resident", "with the data kept on the GPU"), ("copied", "with the batch copied every step")):
        if any(f"speedup_{key}" in r for r in sw["summary"]["rows"]):
            b = s.get(f"overtakes_{key}")
            print(f"The GPU {what} " + (f"overtakes the best CPU back end at batch {b}." if b else
                                        "never overtook the best CPU back end in this sweep."))


def cmd_train(args) -> int:
    try:
        from .bench.train import run_train
    except ImportError as exc:
        raise CliError(f"the training stack (whygpu.nn) is not available in this build: {exc}") from None
    out = _prepare_out(args.out)
    doc = run_train(steps=args.steps, batch=args.batch, layers=args.layers, backends=args.backends,
                    threads=args.threads, budget=args.budget, force=args.all, progress=_progress(args),
                    sweep_batches=[] if args.no_sweep else args.batches, log=_note(args))
    _print_train(doc)
    figures = [("plot_train", "train.png")]
    if doc.get("sweep"):
        figures.append(("plot_train_sweep", "train_sweep.png"))
    _save(out, "train", doc, args.plot, figures)
    return 0


def cmd_explain(args) -> int:
    from .explain import explain
    out = _prepare_out(args.out)
    ex = explain(args.m, args.n, args.k, kernels=args.kernels, dtype=args.dtype, threads=args.threads,
                 measure=not args.no_measure, budget=args.budget, force=args.all)
    print(ex)
    _save(out, "explain", ex.as_dict(), plot=False)
    return 0


def cmd_report(args) -> int:
    from .report import build_report, load_results
    docs = load_results(args.results)
    out = _prepare_out(args.out)
    res = build_report(docs, out)
    print(f"report from {', '.join(sorted(docs))}: {len(res['figures'])} figure(s)")
    print(f"wrote {res['markdown']}")
    print(f"wrote {res['html']}")
    return 0


# The demo's two plans: sizes and budgets that finish in < 3 min (full) and
# < 60 s (quick) on a 2-core laptop, measured in docs/cli.md.
# Where a GPU is usable, its rungs are measured up to n = 4096 and the
# training step over a sweep of batches (32 to 8192) on the CPU and the GPU.
DEMO_PLANS = {
    "full": {"sizes": [32, 64, 128, 256, 512, 1024, 2048], "repeats": 5, "budget": 2.0, "roofline_n": 1024,
             "scaling_n": 1024, "train_steps": 40, "train_batch": 256, "quick_probes": False,
             "gpu_sizes": GPU_SIZES, "gpu_roofline_n": 4096, "sweep": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]},
    "quick": {"sizes": [64, 128, 256, 512], "repeats": 3, "budget": 0.4, "roofline_n": 1024,
              "scaling_n": 512, "train_steps": 8, "train_batch": 128, "quick_probes": True,
              "gpu_sizes": [128, 1024, 4096], "gpu_roofline_n": 4096, "sweep": [32, 256, 1024, 8192]},
}


def cmd_demo(args) -> int:
    from .bench.ladder import run_ladder
    from .bench.scaling import run_scaling
    from .report import build_report, load_results
    from .roofline import measure_machine, run_roofline

    plan = DEMO_PLANS["quick" if args.quick else "full"]
    out = _prepare_out(args.out)
    prog, log = _progress(args), _note(args)
    t0 = time.perf_counter()
    timings = {}

    def stage(name):
        print(f"\n== {name} " + "=" * max(0, 60 - len(name)), flush=True)

    print(f"whygpu demo{' --quick' if args.quick else ''}: measuring this machine, then writing a report into {out}"
          f" (about {'10 s' if args.quick else '30 s'} on a quiet 2-core laptop, more with a GPU)", flush=True)
    stage("info")
    info = _info_doc()
    _print_info(info)
    _write_json(out, "info", info)
    busy = info["machine"].get("cpu_busy_before")
    if busy is not None and busy > 0.2:
        log(f"other programs are using {100 * busy:.0f}% of the CPUs: the multi-thread figures will be low "
            "and noisy (the report says so); for clean numbers run when the machine is idle")

    stage("roofs of this machine")
    t = time.perf_counter()
    machine = measure_machine(quick=plan["quick_probes"])
    gpu = None
    if info["machine"]["cuda"].get("available"):
        from .bench.gpu import measure_gpu
        gpu = measure_gpu(quick=plan["quick_probes"])
        if gpu:
            _print_gpu_roofs(gpu)
    else:
        log(f"no GPU measurements: {info['machine']['cuda'].get('reason')}")
    timings["roofs"] = time.perf_counter() - t

    stage("ladder")
    t = time.perf_counter()
    peak = {"arch": machine["arch"], "threads": machine["threads"],
            "gflops_1t": machine["compute"]["simd_1t"], "gflops_all": machine["compute"]["simd_all"]}
    if gpu:
        peak.update(gpu_gflops=gpu["fma_gflops"], gpu_device=gpu["device"],
                    gpu_tensor_gflops=gpu.get("tensor_gflops") or {})
    ladder = run_ladder(sizes=plan["sizes"], repeats=plan["repeats"], budget=plan["budget"], force=args.all,
                        progress=prog, log=log, peak=peak, gpu_sizes=plan["gpu_sizes"])
    timings["ladder"] = time.perf_counter() - t
    _print_ladder(ladder)
    _write_json(out, "ladder", ladder)

    stage("roofline")
    t = time.perf_counter()
    roof = run_roofline(n=plan["roofline_n"], repeats=plan["repeats"], budget=plan["budget"], force=args.all,
                        machine=machine, ladder=ladder, progress=prog, gpu=gpu, gpu_n=plan["gpu_roofline_n"])
    timings["roofline"] = time.perf_counter() - t
    _print_roofline(roof)
    _write_json(out, "roofline", roof)

    from ._registry import KERNELS
    if KERNELS["openmp"].available:
        stage("scaling")
        t = time.perf_counter()
        ns = argparse.Namespace(batch=plan["train_batch"], kernel="openmp")
        step = _train_step_fn(ns, quick=args.quick)
        scaling = run_scaling(n=plan["scaling_n"], repeats=plan["repeats"], budget=plan["budget"], train_step=step,
                              train_label=f"training step, batch {plan['train_batch']}", progress=prog, log=log)
        timings["scaling"] = time.perf_counter() - t
        _print_scaling(scaling)
        _write_json(out, "scaling", scaling)
    else:
        log(f"no scaling section: {KERNELS['openmp'].unavailable()}")

    try:
        from .bench.train import run_train
    except ImportError:
        run_train = None
        log("the training stack (whygpu.nn) is not available: the training section is left out")
    if run_train is not None:
        stage("train")
        t = time.perf_counter()
        train = run_train(steps=plan["train_steps"], batch=plan["train_batch"], budget=plan["budget"] * 4,
                          force=args.all, progress=prog, log=log, sweep_batches=plan["sweep"] if gpu else [])
        timings["train"] = time.perf_counter() - t
        _print_train(train)
        _write_json(out, "train", train)

    stage("report")
    t = time.perf_counter()
    docs = load_results([out])
    res = build_report(docs, out)
    timings["report"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    _write_json(out, "demo", {"schema": "whygpu.demo/1", "quick": bool(args.quick), "seconds": total,
                              "stages_s": timings, "files": sorted(p.name for p in out.iterdir())})
    print(f"\ndemo finished in {total:.0f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    print(f"report: {res['html']}")
    print(f"        {res['markdown']}")
    return 0


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from . import __version__

    common = _Parser(add_help=False)
    common.add_argument("--out", metavar="DIR",
                        help="output folder (default: ./whygpu-report-YYYYmmdd-HHMMSS)")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: when stderr is a terminal)")
    threads = _Parser(add_help=False)
    threads.add_argument("--threads", type=_positive_int, default=None,
                         help="threads for the parallel kernels (default: all usable cores)")

    def measure(budget: float, per: str = "measurement") -> _Parser:
        # A fresh parent per subcommand: parents share their argument objects,
        # so one subcommand's default must not leak into another's.
        m = _Parser(add_help=False)
        m.add_argument("--repeats", type=_positive_int, default=5, help="timed samples per measurement (default 5)")
        m.add_argument("--budget", type=_positive_float, default=budget,
                       help=f"seconds allowed per {per}; slower ones are skipped (default {budget:g})")
        m.add_argument("--all", "--force", dest="all", action="store_true",
                       help="run measurements even when predicted to exceed the budget")
        return m
    plot = _Parser(add_help=False)
    plot.add_argument("--plot", action="store_true", help="also write PNG figures")
    dtype = _Parser(add_help=False)
    dtype.add_argument("--dtype", choices=("float32", "float64"), default="float32")

    p = _Parser(prog="whygpu", description="Measure why parallel hardware speeds up deep learning, on this machine.",
                epilog="Run 'whygpu demo' for everything at once and a report.")
    p.add_argument("--version", action="version", version=f"whygpu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("info", parents=[common], help="CPU, cores, instruction set, caches, OpenMP, CUDA, versions")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("ladder", parents=[common, threads, measure(2.0), plot, dtype],
                       help="GFLOP/s of every kernel over a range of sizes")
    s.add_argument("--sizes", type=_int_list, default=[64, 128, 256, 512, 1024],
                   help="matrix sizes n: '64,128,256' or '64:1024' (powers of two; default 64:1024)")
    s.add_argument("--kernels", type=_name_list, default=None,
                   help="comma-separated kernels (default: all available); 'numpy' adds the BLAS references")
    s.add_argument("--no-numpy", action="store_true", help="leave out the NumPy/BLAS references")
    s.add_argument("--gpu-sizes", type=_int_list, default=GPU_SIZES,
                   help="sizes for the GPU kernels, where a GPU is usable (default 128:4096)")
    s.set_defaults(func=cmd_ladder)

    s = sub.add_parser("scaling", parents=[common, measure(2.0), plot],
                       help="speed-up against threads, with Amdahl's law fitted")
    s.add_argument("--n", type=_positive_int, default=1024, help="matrix size (default 1024)")
    s.add_argument("--threads", dest="threads", type=_int_list, default=None,
                   help="thread counts, e.g. '1,2,4' (default: 1 to the number of cores)")
    s.add_argument("--kernel", default="openmp", help="parallel kernel to scale (default openmp)")
    s.add_argument("--batch", type=_positive_int, default=256, help="batch of the training step (default 256)")
    s.add_argument("--no-train", action="store_true", help="leave out the training step")
    s.set_defaults(func=cmd_scaling)

    s = sub.add_parser("roofline", parents=[common, threads, measure(2.0), plot, dtype],
                       help="measure peak FLOP/s and bandwidth, place every kernel on the roofline")
    s.add_argument("--n", type=_positive_int, default=1024, help="matrix size (default 1024)")
    s.add_argument("--kernels", type=_name_list, default=None, help="comma-separated kernels (default: all)")
    s.add_argument("--quick", action="store_true", help="shorter microbenchmarks")
    s.add_argument("--gpu-n", type=_positive_int, default=4096,
                   help="matrix size for the GPU kernels, where a GPU is usable (default 4096)")
    s.set_defaults(func=cmd_roofline)

    s = sub.add_parser("train", parents=[common, threads, measure(10.0, "back end (all its steps)"), plot],
                       help="train the same MLP on each back end: time per step, share in matmul")
    s.add_argument("--steps", type=_positive_int, default=30, help="training steps per back end (default 30)")
    s.add_argument("--batch", type=_positive_int, default=256, help="batch size (default 256)")
    s.add_argument("--layers", type=_int_list, default=[784, 512, 256, 10],
                   help="layer widths (default 784,512,256,10)")
    s.add_argument("--backends", type=_name_list, default=None,
                   help="comma-separated back ends (default: numpy and every kernel fast enough)")
    s.add_argument("--batches", type=_int_list, default=None,
                   help="batch sizes of the CPU-vs-GPU sweep (default 32:8192 where a GPU is usable, "
                        "none elsewhere; given, the CPU back ends are swept even without a GPU)")
    s.add_argument("--no-sweep", action="store_true", help="leave out the batch sweep")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("explain", parents=[common, threads, measure(1.0), dtype],
                       help="one product M x K @ K x N: FLOPs, bytes, intensity, predicted vs measured")
    s.add_argument("m", type=_positive_int, metavar="M")
    s.add_argument("n", type=_positive_int, metavar="N")
    s.add_argument("k", type=_positive_int, metavar="K")
    s.add_argument("--kernels", type=_name_list, default=None, help="comma-separated kernels (default: all)")
    s.add_argument("--no-measure", action="store_true", help="only the model's predictions")
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("demo", parents=[common],
                       help="everything at laptop-friendly sizes, then a report (HTML + Markdown)")
    s.add_argument("--quick", action="store_true", help="smaller sizes: under a minute")
    s.add_argument("--all", "--force", dest="all", action="store_true",
                   help="also run measurements predicted to exceed the budget (slow)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("report", parents=[common], help="rebuild the report from saved JSON results")
    s.add_argument("results", nargs="+", metavar="RESULTS",
                   help="JSON files written by whygpu (or folders of them) and pytest-benchmark JSON")
    s.set_defaults(func=cmd_report)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, or a usage error (already printed)
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from ._registry import KernelUnavailableError
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("whygpu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `whygpu ladder | head`: stop quietly, like other command-line tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (CliError, ValueError, TypeError, KernelUnavailableError, OSError) as exc:
        if os.environ.get("WHYGPU_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"whygpu: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
