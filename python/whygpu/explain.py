"""``whygpu.explain(m, n, k)``: why each kernel takes the time it takes.

For one matrix product it lists, per kernel, the work (FLOPs), the bytes the
kernel's loops move and from where, the arithmetic intensity, the roof that
limits it, the time the roofline model predicts -- and the time measured,
side by side, with a sentence on why a kernel sits below its roof.  Next to
the speed, each measured kernel states the precision it multiplies in and
its error against a float64 reference (the max relative error,
:data:`whygpu.bench.ladder.ERROR_METRIC`): the tensor-core rungs trade
precision (bf16 about 1e-2, TF32 about 1e-3) for speed::

    >>> import whygpu
    >>> print(whygpu.explain(512, 512, 512))      # doctest: +SKIP

The roofs are measured once per process (about half a second) and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ._memory import check_product_fits
from ._threads import check_threads, get_num_threads
from .bench.machine import isa_name
from .bench.trust import DISTURBED, QuietGuard, quiet_caution
from .roofline import _BLOCKED_TILE, COMPUTE_ROOFS, kernel_model, measure_machine
from .roofline_trust import (
    MODEL_ERROR,
    ROOF_BELOW_PEAK,
    measured_fields,
    pct_text,
    plain,
    settle_impossible,
    within_model_error,
)

__all__ = [
    "explain",
    "Explanation",
    "why_below",
    "blas_why",
    "roof_label",
    "busy_while",
    "format_bytes",
    "format_error",
    "NOT_SAID",
]

# Measured roofs, reused within this process: threads -> the CPU's; "gpu" -> the GPU's (None: no usable GPU).
_MACHINES: dict[int | str, Any] = {}

# Why a rung sits below its roof, from its own code: the costs its loops have by design (the lesson
# of each rung) that the model, which counts arithmetic and bandwidth, does not count.
_WHY = {
    "python": "every multiply-add is a dozen bytecodes and a new float object; the kernel also "
    "indexes B[p][j] through a list of lists, one more lookup than the dot-product loop "
    "that sets the interpreter roof",
    "cython": "it walks B down a column: each multiply-add touches a new cache line (and, for large n, "
    "a new 4 KiB page), so it waits on memory latency and TLB misses, which no bandwidth roof counts",
    "naive": "it walks B down a column: each multiply-add touches a new cache line (and, for large n, "
    "a new 4 KiB page), so it waits on memory latency and TLB misses, which no bandwidth roof counts",
    "reordered": "C[i, :] is loaded and stored again for every multiply-add (no register blocking): "
    "two loads and a store per multiply-add keep the load/store units busy, not the "
    "arithmetic units",
    "blocked": "B comes from L2 now, but C is still loaded and stored at every step of k (no register "
    f"blocking), and each tile row is only {_BLOCKED_TILE[2]} numbers long, so loop overhead and the "
    "load/store units, not arithmetic, set the pace",
    "cuda_naive": "a warp's 32 loads of A fall on 32 different rows, so each load instruction becomes 32 "
    "memory transactions, and every multiply-add waits on a global load: memory latency and "
    "the load units set the pace",
    "cuda_coalesced": "every multiply-add still needs a global load instruction through L1; the load units and "
    "the memory latency (hidden only by other warps) set the pace, not the L2 bandwidth the model counts",
    "cuda_smem": "each multiply-add needs two shared-memory loads, so shared-memory bandwidth, not "
    "arithmetic, is the limit, and the block waits at two barriers per tile",
    "cuda_1d_tiling": "9 shared-memory loads per 8 multiply-adds: still more loads than arithmetic, and the "
    "barriers around every 8-deep tile",
    "cuda_2d_tiling": "16 shared loads per 64 multiply-adds; what is left is bank conflicts in those loads, "
    "the barriers, and global loads that are not yet overlapped with the arithmetic",
    "cuda_vectorized": "wider loads remove instructions, but the barriers and the wait for each tile's global "
    "loads remain",
    "cuda_warptile": "the kernel is written to fit in 128 registers a thread, so two blocks share an SM (25% "
    "occupancy): too few warps to hide all the latency, and small sizes leave SMs idle",
    "cuda_mma": "the tensor cores finish a 16 x 8 x 8 TF32 product in one instruction, so feeding them is the "
    "work now: operands are first rewritten K-major (B transposed through a scratch copy), every "
    "fragment goes through shared memory and ldmatrix, and with 4 warps per block the cp.async "
    "pipeline and the barriers cannot hide all the waiting",
    "cuda_mma_bf16": "as cuda_mma, and each call first rounds A and B to bf16 copies (extra passes over "
    "memory); the tensor cores are twice as fast in bf16, so the loads, barriers and the "
    "operand preparation weigh twice as much",
    "cuda_wgmma": "a warpgroup's wgmma reads its operands straight from shared memory and TMA fills it, so "
    "what is left is the operand rounding before the launch, the pipeline's fill and drain, "
    "and tiles that do not fill every SM at smaller sizes",
}

# The rungs whose model counts every cost their design has (packed, openmp, cuBLAS): what the model
# leaves out is named, but nothing here measures it, so it is no reason -- below the model's error the
# sentence says the measurement does not say why.
_NOT_COUNTED = {
    "packed": "packing A and B, the edge tiles and the loop around the micro-kernel",
    "openmp": "packed's packing and edge tiles, the barrier after each packed panel, and the threads "
    "sharing the memory bandwidth",
    "cublas": "the inside of NVIDIA's own kernels",
}

# Said where no measured or detected fact explains a gap.
NOT_SAID = "the measurement does not say why"

_BLAS_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "accelerate": "Accelerate"}


# A product whose 1x1x1 call already takes this share of its time is dominated by the fixed cost of a call.
OVERHEAD_DOMINATES = 1 / 3


def why_below(
    kernel: str,
    fraction: float,
    overhead_s: float | None = None,
    measured_s: float | None = None,
    *,
    remeasured: bool = True,
    disturbed: str | None = None,
    row: dict | None = None,
    busy: bool = False,
) -> str:
    """A sentence on a kernel at `fraction` (predicted / measured time) of its roof; ``overhead_s``, the time of
    a 1x1x1 call, says when a tiny product is mostly that fixed cost.

    The roof is an upper bound, so only a fraction within the model's stated
    error below it (:data:`whygpu.roofline.MODEL_ERROR`) is "explained"; above
    100% is impossible -- a disturbed figure, never explained (``remeasured``:
    it was measured once more and stayed impossible, as run_roofline and
    explain do; False for a record from before that check).  ``disturbed``,
    a flagged row's reason (e.g. it stands on a disturbed roof), leaves it
    unexplained whatever its fraction.

    Every reason is chosen from facts: the rung's own code (what its loops cost that the model does
    not count), the measured 1x1x1 call, and for NumPy the detected BLAS kernel and the roof of its
    instruction set (``row``, the model row or roofline point: :func:`blas_why`), and whether other
    programs held the cores while it was measured (``busy``: :func:`busy_while`).  Where none applies,
    the sentence says the measurement does not say why."""
    pct = pct_text(fraction) if fraction >= 0.01 else f"{plain(100 * fraction, 1)}%"
    if fraction > 1 and kernel in ROOF_BELOW_PEAK:
        return f"{kernel} runs at {pct} of its roof, which is possible here: {ROOF_BELOW_PEAK[kernel]}."
    if fraction > 1:
        return (
            f"{kernel} measured at {pct} of its roof, which is impossible (the roof is an upper bound on speed) -- "
            + (DISTURBED if remeasured else "a disturbed figure, left out of the conclusions")
            + "."
        )
    if disturbed:
        return f"{kernel} at {pct} of its roof: {disturbed}."
    if within_model_error(fraction):
        tail = f"within the model's stated error ({100 * MODEL_ERROR:.0f}%), so the model explains it"
    elif overhead_s is not None and measured_s and overhead_s >= OVERHEAD_DOMINATES * measured_s:
        tail = _overhead_text(kernel, overhead_s, measured_s, row)
    else:
        tail = None
    if kernel.startswith("numpy"):
        return blas_why(kernel, pct, row or {}, tail or (f"{_BUSY}; past that, {NOT_SAID}" if busy else None))
    if tail is not None:
        return f"{kernel} runs at {pct} of its roof: {tail}."
    if kernel in _WHY:
        return f"{kernel} runs at {pct} of its roof: {_WHY[kernel]}" + (f"; and {_BUSY}." if busy else ".")
    if busy:
        return f"{kernel} runs at {pct} of its roof: {_BUSY}; past that, {NOT_SAID}."
    left_out = f" (the model leaves out {_NOT_COUNTED[kernel]}, and nothing here measures them)"
    return f"{kernel} runs at {pct} of its roof: {NOT_SAID}" + (left_out if kernel in _NOT_COUNTED else "") + "."


# Said of a row whose measurement the quiet record shows disturbed (whygpu.bench.trust.QuietGuard).
def why_row(r: dict, quiet: dict | None, *, remeasured: bool = True) -> str:
    """why_below for one measured row of a result (its fraction of the roof, its 1x1x1 call, its flags and
    BLAS facts) and the run's quiet record: what `whygpu explain` and the report both say."""
    return why_below(
        r["kernel"],
        r["predicted_s"] / r["measured_s"],
        r.get("call_overhead_s"),
        r["measured_s"],
        remeasured=remeasured,
        disturbed=r.get("disturbed_reason") if r.get("disturbed") else None,
        row=r,
        busy=busy_while(quiet, r["kernel"]),
    )


_BUSY = "other programs held the cores while it was measured (the caution says how much), which only slows it"


def busy_while(quiet: dict | None, kernel: str) -> bool:
    """Whether the quiet record (:meth:`whygpu.bench.trust.QuietGuard.as_dict`) shows other programs
    on the cores while ``kernel`` was measured: its blocks are labelled with the kernel's name first."""
    from .bench.trust import QUIET_THRESHOLD, summarize

    blocks = [b for b in (quiet or {}).get("blocks") or [] if str(b.get("label", "")).split(" ")[0] == kernel]
    return bool(blocks) and summarize(blocks, (quiet or {}).get("threshold") or QUIET_THRESHOLD)["busy"]


def _overhead_text(kernel: str, overhead_s: float, measured_s: float, row: dict | None) -> str:
    """A tiny product dominated by the fixed cost of a call: the measured 1x1x1 call against the product."""
    threads = (row or {}).get("threads")
    woken = (kernel == "openmp" and threads != 1) or (kernel.startswith("numpy") and not kernel.endswith("-1t"))
    return (
        f"a product this small is dominated by the fixed cost of "
        f"a call, not by its arithmetic -- a 1x1x1 product already takes {_fmt_s(overhead_s)} of the "
        f"{_fmt_s(measured_s)} (checking the arguments, dispatching"
        + (", a launch" if kernel.startswith("cuda") or kernel == "cublas" else "")
        + (", waking the threads" if woken else "")
        + "); the roofline describes products large enough to hide it"
    )


def blas_why(kernel: str, pct: str, row: dict, tail: str | None = None) -> str:
    """The sentence on a NumPy row, from the detected facts of its BLAS (``row["blas"]``:
    :func:`whygpu.bench.machine.blas_facts`) and the roof it was held against (``row["roof_isa"]``,
    ``row["roof_is_kernel_isa"]``: :func:`whygpu.roofline.blas_roof`): which kernel runs, its
    instruction set against this CPU's best and why it is narrower (a variable that forces it, or an
    OpenBLAS that does not know the CPU), the share of that ISA's roof it reached, ``tail`` (the model
    explains it, or the fixed cost of a call) or that the measurement does not say why, and how to
    run the full kernel."""
    f = row.get("blas") or {}
    if not f:  # a record from before the facts were kept
        return f"{kernel} runs at {pct} of its roof: {tail or NOT_SAID + ' (no record of which BLAS kernel ran)'}."
    lib, name, isa, cpu = f.get("library"), f.get("kernel"), f.get("kernel_isa"), f.get("cpu_isa")
    env = f.get("env") or {}
    label = _BLAS_NAMES.get(str(lib))
    if label is None:
        text = f"{kernel} runs a BLAS whygpu cannot identify"
    elif lib == "mkl":
        cap = env.get("MKL_ENABLE_INSTRUCTIONS")
        text = f"{kernel} runs MKL" + (
            f", held to {isa_name(isa)} by MKL_ENABLE_INSTRUCTIONS={cap}"
            if cap and isa
            else ", which does not report the instruction set it picks (no MKL_ENABLE_INSTRUCTIONS is set)"
        )
        if env.get("MKL_DEBUG_CPU_TYPE"):
            text += f" (MKL_DEBUG_CPU_TYPE={env['MKL_DEBUG_CPU_TYPE']} is set)"
    elif name:
        text = f"{kernel} runs {label}'s {name} kernel" + (
            f" ({isa_name(isa)})" if isa else ", whose instruction set whygpu does not know"
        )
    else:
        text = f"{kernel} runs {label}, which does not report its kernel"
    advice = None
    if f.get("below"):
        cause = str(f.get("cause"))
        text += f" on this {isa_name(cpu)} CPU"
        if lib == "openblas" and env.get("OPENBLAS_CORETYPE"):
            text += f" because {cause}"
            advice = "unset OPENBLAS_CORETYPE to let OpenBLAS pick its kernel for this CPU"
        elif lib == "openblas":
            text += f", and no OPENBLAS_CORETYPE forces it: {cause}"
            advice = f"a newer OpenBLAS (with a newer NumPy) may know it and run its {isa_name(cpu)} kernel"
        elif lib == "mkl":
            advice = f"unset MKL_ENABLE_INSTRUCTIONS to let MKL use {isa_name(cpu)}"
    elif f.get("below") is False and isa == cpu and lib != "mkl":
        text += ", this CPU's best instruction set" + (
            f" (OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} is set)" if env.get("OPENBLAS_CORETYPE") else ""
        )
    roof_isa, exact = row.get("roof_isa"), row.get("roof_is_kernel_isa")
    if roof_isa and exact:
        text += f": it reached {pct} of the {isa_name(roof_isa)} roof"
    elif roof_isa:
        why = f"whygpu measured no {isa_name(isa)} roof" if isa else "its kernel's instruction set is unknown"
        text += f": it reached {pct} of this CPU's best roof ({isa_name(roof_isa)}), an upper bound, as {why}"
    else:
        text += f": it reached {pct} of its roof"
    if tail and tail.startswith("within"):
        text += f", {tail}"
    else:
        text += f"; {tail or NOT_SAID + ' it is not closer'}"
    return text + (f"; {advice}" if advice else "") + "."


def roof_label(row: dict) -> str:
    """The compute roof a row is held against: 'simd_1t', and for NumPy the ISA of its BLAS kernel's roof
    ('simd_1t (AVX2)')."""
    isa = row.get("roof_isa")
    return f"{row['compute_roof']} ({isa_name(isa)})" if isa else str(row["compute_roof"])


def format_error(e: float | None) -> str:
    """A relative error in two significant digits ('-' when not measured)."""
    if e is None:
        return "-"
    return "0" if e == 0 else f"{e:.2g}"


def format_flops(f: float) -> str:
    """``480 FLOP``, ``2.1 kFLOP``, ``524.3 MFLOP``, ``2,000.0 GFLOP``: a unit that fits the product."""
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if f >= scale:
            return f"{f / scale:,.1f} {unit}"
    return f"{f:.0f} FLOP"


def format_bytes(b: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= f:
            return f"{plain(b / f)} {unit}"
    return f"{b:.0f} B"


def _fmt_s(s: float | None) -> str:
    from .bench.measure import format_seconds

    return "-" if s is None else format_seconds(s)


@dataclass
class Explanation:
    """The result of :func:`explain`: ``rows`` (one dict per kernel: the
    roofline model plus ``measured_s``/``measured_gflops`` or ``skipped``),
    ``roofs`` (the measured machine) and the shape.  ``str()`` is a table."""

    m: int
    n: int
    k: int
    dtype: str
    rows: list[dict] = field(default_factory=list)
    roofs: dict = field(default_factory=dict)
    # Kernels asked for (or known) that cannot run here: {"kernel", "device", "reason"}.
    unavailable: list[dict] = field(default_factory=list)
    quiet: dict | None = None
    # True when a figure came out impossible and the roofs were measured again (each: best of both).
    roofs_remeasured: bool = False

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def as_dict(self) -> dict:
        from .bench.ladder import ERROR_METRIC

        return {
            "schema": "whygpu.explain/1",
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "dtype": self.dtype,
            "flops": self.flops,
            "rows": self.rows,
            "roofs": self.roofs,
            "unavailable": self.unavailable,
            "error_metric": ERROR_METRIC,
            "model_error": MODEL_ERROR,
            "roofs_remeasured": self.roofs_remeasured,
            "quiet": self.quiet,
        }

    @property
    def caution(self) -> str | None:
        """What to say when other programs (or a hypervisor) took the cores while this was measured."""
        return quiet_caution(self.quiet)

    def __str__(self) -> str:
        return self.text()

    def text(self, caution: bool = True) -> str:
        """The table and the notes; ``caution=False`` leaves out the busy-machine caution (the CLI
        prints it on stderr)."""
        s = 4 if self.dtype == "float32" else 8
        compulsory = s * (self.m * self.k + self.k * self.n + self.m * self.n)
        lines = [
            f"C = A @ B with A {self.m}x{self.k}, B {self.k}x{self.n} ({self.dtype}): "
            f"{format_flops(self.flops)} on {format_bytes(compulsory)} of data "
            f"(at best {self.flops / compulsory:.1f} flop/byte if each matrix moved once)",
            "",
        ]
        head = (
            "kernel",
            "roof",
            "roof GFLOP/s",
            "bytes moved",
            "flop/B",
            "bound",
            "predicted",
            "measured",
            "of roof",
            "precision",
            "max rel err",
        )
        table = [head]
        for r in self.rows:
            worst = max(r["traffic"], key=lambda t: t["seconds"]) if r["traffic"] else None
            moved = f"{format_bytes(worst['bytes'])} {worst['level']}" if worst else "(in L1)"
            meas = _fmt_s(r.get("measured_s")) if "measured_s" in r else "skipped"
            ratio = "-"
            if "measured_s" in r:
                ratio = pct_text(r["predicted_s"] / r["measured_s"]) + (" (disturbed)" if r.get("disturbed") else "")
            table.append(
                (
                    r["kernel"],
                    roof_label(r),
                    plain(r["compute_gflops"]),
                    moved,
                    plain(r["intensity"]) if r["intensity"] else "-",
                    r["bound"],
                    _fmt_s(r["predicted_s"]),
                    meas,
                    ratio,
                    r.get("precision", self.dtype),
                    format_error(r.get("max_rel_error")),
                )
            )
        for u in self.unavailable:
            table.append((u["kernel"], "unavailable", "", "", "", "", "", "", "", u.get("precision") or "", ""))
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
        for i, row in enumerate(table):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(
            f"Roofs{' (float32; the SIMD roofs halve for float64)' if self.dtype == 'float64' else ''}: "
            + "; ".join(
                f"{name} = {plain(self.roofs['compute'][name])} GFLOP/s"
                for name in COMPUTE_ROOFS
                if name in self.roofs.get("compute", {})
            )
        )
        bw = self.roofs.get("bandwidth", {}).get("1", {})
        if bw:
            lines.append("Bandwidth (1 core): " + "; ".join(f"{lvl} {plain(v)} GB/s" for lvl, v in bw.items()))
        gpu = self.roofs.get("gpu")
        if gpu:
            tensor = gpu.get("tensor_gflops") or {}
            tc = (
                "; tensor-core (mma.sync) peak "
                + ", ".join(f"{p} {plain(v, 4)}" for p, v in tensor.items())
                + " GFLOP/s"
                if tensor
                else (f"; no tensor-core peak ({gpu['tensor_reason']})" if gpu.get("tensor_reason") else "")
            )
            lines.append(
                f"GPU ({gpu['device']}): float32 FMA peak {plain(gpu['fma_gflops'], 4)} GFLOP/s{tc}; bandwidth "
                + "; ".join(f"{lvl} {plain(v, 4)} GB/s" for lvl, v in gpu["bandwidth"].items())
                + " (read + write). The CUDA rows are timed on data already on the GPU."
            )
        if any("max_rel_error" in r for r in self.rows):
            from .bench.ladder import ERROR_METRIC
            from .cuda import UNIT_ROUNDOFF

            lines.append(
                f"Error: {ERROR_METRIC}, on this shape. Unit roundoff of the products' operands: "
                + ", ".join(f"{p} {u:.2g}" for p, u in UNIT_ROUNDOFF.items())
                + " (the sums are float32 in every case)."
            )
        if self.roofs_remeasured:
            lines.append(
                "A figure came out impossible (a kernel faster than its roof, or the all-core roof below one "
                "core's), so the roofs were measured again: each is the best of both."
            )
        if self.roofs.get("disturbed"):
            lines.append(f"The roofs are disturbed: {self.roofs['disturbed']}.")
        if any(r["kernel"] in ("packed", "openmp") for r in self.rows):
            from ._blocking import blocking_lines

            derivation = blocking_lines(self.dtype)
            if derivation:
                lines.append(
                    "Block sizes of packed and openmp (WHYGPU_BLOCKING=kc,mc,nc overrides them): " + derivation[0]
                )
                lines.extend(derivation[1:])
        notes = [why_row(r, self.quiet) for r in self.rows if "measured_s" in r]
        notes += [f"{r['kernel']} not measured: {r['skipped']}" for r in self.rows if "skipped" in r]
        notes += [f"{u['kernel']} is unavailable here: {u['reason']}" for u in self.unavailable]
        if caution and self.caution:
            notes.append(f"Caution: {self.caution}.")
        if notes:
            lines.append("")
            lines.extend(notes)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython / Jupyter
        p.text(str(self))


def _positive(x, name: str) -> int:
    import numbers

    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {x!r}")
    if x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x}")
    return int(x)


_SMALL_S = 1e-3  # a measured call shorter than this gets its 1x1x1 call timed too (row["call_overhead_s"])


def explain(
    m: int,
    n: int,
    k: int,
    *,
    kernels: Sequence[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    measure: bool = True,
    budget: float = 1.0,
    repeats: int = 3,
    force: bool = False,
    machine: dict | None = None,
) -> Explanation:
    """Explain an (m, k) @ (k, n) product on each kernel: FLOPs, bytes moved,
    arithmetic intensity, the roofline's predicted time and (``measure=True``)
    the measured time, with the precision each kernel multiplies in and its max
    relative error against a float64 product of the same data (``max_rel_error``;
    ``error_bound`` is what that precision guarantees for the data).  Kernels that
    cannot run here are listed in ``unavailable`` with the reason.  A kernel predicted to take longer than ``budget``
    seconds per call is not measured (unless ``force``).  ``machine`` is a
    :func:`whygpu.roofline.measure_machine` result; by default the roofs are
    measured once per process.

    Each measurement waits (a bounded time) for a quiet machine and records
    how busy it was (``quiet``).  A kernel measured faster than its roof is
    impossible: the roofs and that kernel are measured once more, and a row
    still impossible is flagged ``disturbed``, never explained
    (:func:`whygpu.roofline_trust.settle_impossible`)."""
    from .bench.ladder import (
        measure_error,
        measure_matmul,
        resolve_kernels,
        scout,
        series_device,
        series_precision,
        split_unavailable,
        threads_used,
    )

    m, n, k = _positive(m, "m"), _positive(n, "n"), _positive(k, "k")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    threads = get_num_threads() if threads is None else check_threads(threads)
    if measure and force:  # measured at this size, however long: refused now if it cannot fit
        check_product_fits(m, n, k, dtype)
    # Each measurement block waits (a bounded time) for a quiet machine and records the load; nothing is
    # timed against the model without --measure, so then there is no record (and no caution).
    guard = QuietGuard() if measure else None

    def block(label: str):
        return guard.block(label) if guard is not None else nullcontext()

    cached = machine is None  # the roofs measured once per process: a re-measure improves the cache too
    if machine is None:
        if threads not in _MACHINES:
            with block("roofs"):
                _MACHINES[threads] = measure_machine(threads, quick=True)
        machine = _MACHINES[threads]
    kernels, unavailable = split_unavailable(kernels)  # listed with their reasons, never silently dropped
    for u in unavailable:
        u["precision"] = series_precision(u["kernel"], dtype)
    names = resolve_kernels(kernels, threads)
    blas = None
    if any(x.startswith("numpy") for x in names):  # NumPy's BLAS, detected once: the roof its kernel's ISA sets
        from .bench.machine import blas_facts

        blas = blas_facts()
    if dtype != "float32":  # the GPU rungs compute on float32 data only
        unavailable += [
            {
                "kernel": x,
                "device": "cuda",
                "precision": series_precision(x),
                "reason": f"it runs on the GPU on float32 data ({series_precision(x)} products); "
                f"{dtype} is for the CPU kernels",
            }
            for x in names
            if series_device(x) == "cuda"
        ]
        names = [x for x in names if series_device(x) == "cpu"]
    if any(series_device(x) == "cuda" for x in names) and not machine.get("gpu"):
        if "gpu" not in _MACHINES:
            from .bench.gpu import measure_gpu

            _MACHINES["gpu"] = measure_gpu(quick=True)
        if _MACHINES["gpu"] is None:
            unavailable += [
                {
                    "kernel": x,
                    "device": "cuda",
                    "precision": series_precision(x),
                    "reason": "the GPU's roofs could not be measured (no usable GPU)",
                }
                for x in names
                if series_device(x) == "cuda"
            ]
            names = [x for x in names if series_device(x) == "cpu"]
        else:
            machine = {**machine, "gpu": _MACHINES["gpu"]}
    out = Explanation(m, n, k, dtype, roofs=machine, unavailable=unavailable)
    recs: dict[str, dict] = {}  # kernel -> its measurement, to place it again if the roofs are measured again
    expect: dict[str, float] = {}
    for name in names:
        row = kernel_model(name, m, n, k, machine, dtype=dtype, threads=threads_used(name, threads), blas=blas)
        row["precision"] = series_precision(name, dtype)
        row["device"] = series_device(name)
        if measure:
            with block(f"{name} {m}x{k} @ {k}x{n}"):
                expected = scout(name, m, n, k, dtype=dtype, threads=threads, budget=budget)["expected_s"]
                if expected > budget and not force:
                    rec = None
                else:
                    check_product_fits(m, n, k, dtype)
                    rec = measure_matmul(
                        name, m, n, k, dtype=dtype, threads=threads, repeats=repeats, budget=budget, expected=expected
                    )
                    if rec["seconds_min"] < _SMALL_S:  # so short that the fixed cost of a call may be most of it
                        one = measure_matmul(
                            name, 1, 1, 1, dtype=dtype, threads=threads, repeats=repeats, budget=budget
                        )
                        row["call_overhead_s"] = one["seconds_min"]
            if rec is None:
                row["skipped"] = f"one call would take ~{_fmt_s(expected)}, over the budget of {_fmt_s(budget)}"
            else:
                recs[name], expect[name] = rec, expected
                # The best sample, like the roofs (see whygpu.roofline_trust.measured_fields).
                row.update(measured_fields(row, rec))
                # Speed and accuracy side by side: the same shape against a float64 reference.
                err = measure_error(name, m, n, k, dtype=dtype, threads=threads)
                row.update(
                    max_rel_error=err["max_rel_error"],
                    error_bound=err["error_bound"],
                    unit_roundoff=err["unit_roundoff"],
                )
        out.rows.append(row)
    if guard is None:
        return out

    def remeasure(row: dict) -> dict:
        with block(f"{row['kernel']} {m}x{k} @ {k}x{n}, again"):
            return measure_matmul(
                row["kernel"],
                m,
                n,
                k,
                dtype=dtype,
                threads=threads,
                repeats=repeats,
                budget=budget,
                expected=expect[row["kernel"]],
            )

    def roofs_again() -> dict:
        with block("roofs, again"):
            return measure_machine(threads, quick=False)  # the full probes: more chances at a quiet moment

    def gpu_again() -> dict | None:
        from .bench.gpu import measure_gpu

        with block("GPU roofs, again"):
            return measure_gpu(quick=True)

    # A row faster than its roof is impossible: its roofs and its kernel are measured once more.
    machine, out.roofs_remeasured = settle_impossible(
        out.rows,
        recs,
        machine,
        remodel=lambda row, mach: kernel_model(
            row["kernel"], m, n, k, mach, dtype=dtype, threads=threads_used(row["kernel"], threads), blas=blas
        ),
        remeasure=remeasure,
        roofs_again=roofs_again,
        gpu_again=gpu_again,
    )
    if out.roofs_remeasured:
        out.roofs = machine
        if cached:
            _MACHINES[threads] = {k_: v for k_, v in machine.items() if k_ != "gpu"}
            if machine.get("gpu"):
                _MACHINES["gpu"] = machine["gpu"]
    out.quiet = guard.as_dict()
    return out
