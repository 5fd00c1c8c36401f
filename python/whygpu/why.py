"""Why a kernel sits below its roof: the sentences of `whygpu explain` and the report, each chosen from a
measured or detected fact (the rung's own code, its 1x1x1 call, the quiet record, NumPy's BLAS kernel
and that kernel's instruction set), or saying that the measurement does not say why."""

from __future__ import annotations

from .bench.machine import isa_name
from .bench.trust import DISTURBED
from .predict.roofline import _BLOCKED_TILE
from .predict.roofline_trust import MODEL_ERROR, ROOF_BELOW_PEAK, pct_text, plain, within_model_error

__all__ = ["why_below", "why_row", "blas_why", "busy_while", "NOT_SAID", "OVERHEAD_DOMINATES"]


def _fmt_s(s: float | None) -> str:
    from .bench.measure import format_seconds

    return "-" if s is None else format_seconds(s)


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
    error below it (:data:`whygpu.predict.roofline.MODEL_ERROR`) is "explained"; above
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
    ``row["roof_is_kernel_isa"]``: :func:`whygpu.predict.roofline.blas_roof`): which kernel runs, its
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
