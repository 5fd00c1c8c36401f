"""The roofline model of this machine, measured, and of every kernel on it.

A kernel can go no faster than the slower of two limits:

* compute -- the FLOP/s the code *can use*: a pure-Python loop is limited by
  the interpreter, a loop that adds into one sum by the latency of one add,
  compiled SIMD code by the vector units of one core (or of all cores);
* memory  -- the bytes it must move divided by the bandwidth of the level
  they come from (L2, L3 or DRAM).

so the model predicts ``time = max(flops / compute_roof, bytes / bandwidth)``.
The ratio flops / bytes is the *arithmetic intensity*: low intensity means
memory-bound, high means compute-bound.  Matrix multiplication does 2n^3
flops on 3n^2 numbers, so its intensity grows with n -- a good kernel is
compute-bound, which is exactly why parallel arithmetic (more cores, wider
SIMD, a GPU) speeds it up.

The roofs are measured by compiled microbenchmarks (``whygpu._probe``):
an FMA loop with 12 independent chains per thread for the peak, one
dependent chain for scalar code, and a STREAM triad at working sets sized for
L2, L3 and DRAM.  :func:`measure_machine` runs them (about a second; it
lives in :mod:`whygpu.bench.probes`, with the other measurements);
:func:`kernel_model` applies the model to one kernel and shape.
"""

from __future__ import annotations

import math
import time

from .._cpu import cpu_info
from .._memory import check_product_fits
from .._registry import KERNELS
from .._threads import check_threads, get_num_threads
from ..bench.probes import fma_peaks, measure_machine
from ..bench.trust import QuietGuard
from .roofline_gpu import GPU_OPERAND_BYTES, GPU_ROOF, GPU_TRAFFIC, gpu_kernel_model, gpu_precision, gpu_roof_gflops
from .roofline_trust import (
    MODEL_ERROR,
    ROOF_BELOW_PEAK,
    impossible_point,
    measured_fields,
    prediction_error,
    settle_impossible,
)

__all__ = [
    "measure_machine",
    "fma_peaks",
    "run_roofline",
    "prediction_error",
    "kernel_model",
    "gpu_kernel_model",
    "blas_roof",
    "COMPUTE_ROOFS",
    "KERNEL_ROOF",
    "GPU_TRAFFIC",
    "GPU_OPERAND_BYTES",
    "GPU_ROOF",
    "gpu_precision",
    "gpu_roof_gflops",
    "level_for",
    "MODEL_ERROR",
    "ROOF_BELOW_PEAK",
    "impossible_point",
    "measured_fields",
    "settle_impossible",
]

# The compute roofs, with what each one stands for (shown in the report).
COMPUTE_ROOFS = {
    "interpreter": "pure Python: one multiply-add per trip through the interpreter loop",
    "scalar": "one dependent chain of scalar adds (compiled, 1 core): a loop that adds into one sum",
    "simd_baseline": "SIMD with the compiler's baseline ISA (SSE2 multiply + add, no FMA), 1 core",
    "simd_1t": "SIMD fused multiply-add at the chosen ISA, 12 chains, 1 core: this core's peak",
    "simd_all": "SIMD fused multiply-add at the chosen ISA on every core: this machine's peak",
    "gpu_fma": "float32 fused multiply-add on every lane of every SM of the GPU (csrc/cuda/probe.cu)",
    "gpu_tensor_bf16": "bf16 tensor cores: independent warp-level mma.sync m16n8k16 chains on every SM "
    "(csrc/cuda/probe.cu)",
    "gpu_tensor_tf32": "TF32 tensor cores: independent warp-level mma.sync m16n8k8 chains on every SM "
    "(csrc/cuda/probe.cu)",
}

# Which compute roof each rung can honestly use, and why.
KERNEL_ROOF = {
    "python": "interpreter",
    "cython": "scalar",  # acc = acc + a*b: each add waits for the previous one
    "naive": "scalar",  # the same single-sum loop in C++ (no -ffast-math: no reassociation)
    "reordered": "simd_baseline",  # auto-vectorized with the baseline ISA, one core
    "blocked": "simd_baseline",
    "packed": "simd_1t",  # hand-written FMA micro-kernel at the chosen ISA, one core
    "openmp": "simd_all",  # the same on every core
}


# Tile sizes of rung 5, copied from csrc/05_blocked.cpp (BI, BK, BJ).
_BLOCKED_TILE = (64, 128, 256)
_LINE = 64  # bytes in a cache line


# --------------------------------------------------------------------------
# The model of each kernel
# --------------------------------------------------------------------------
def level_for(nbytes: float, caches: dict) -> str:
    """The memory level a working set of `nbytes` lives in: 'L1', 'L2', 'L3' or 'DRAM'."""
    if nbytes <= caches.get("L1d", 32 << 10):
        return "L1"
    if nbytes <= caches.get("L2", 1 << 20):
        return "L2"
    if nbytes <= caches.get("L3", 8 << 20):
        return "L3"
    return "DRAM"


def _traffic(kernel: str, m: int, n: int, k: int, s: int, caches: dict, blocking: dict) -> list:
    """[(level, bytes, what)] that the kernel moves, by its loop structure.

    Data that stays in L1 is not charged: L1 is not a limit in this model
    (so it stays an upper bound on speed)."""
    out = []

    def add(level, nbytes, what):
        if level != "L1" and nbytes > 0:
            out.append((level, float(nbytes), what))

    compulsory = s * (m * k + k * n + m * n)
    if kernel == "python":
        add(level_for(compulsory, caches), compulsory, "each matrix once")
    elif kernel in ("naive", "cython"):
        # B is walked down a column: each multiply-add touches another cache
        # line.  If the k lines of one column panel fit L1 they serve 16
        # neighbouring columns; if not, every multiply-add fetches a full line.
        panel = _LINE * k
        if panel <= caches.get("L1d", 32 << 10):
            add(level_for(s * k * n, caches), s * m * n * k, "B once per row of C")
        else:
            add(level_for(panel, caches), _LINE * m * n * k, "a 64-byte line of B per multiply-add")
    elif kernel == "reordered":
        add(level_for(s * k * n, caches), s * (m * k * n + m * k + 2 * m * n), "B once per row of C")
    elif kernel == "blocked":
        bi, bk, bj = _BLOCKED_TILE
        add(level_for(s * min(bk, k) * min(bj, n), caches), s * m * k * n, "a tile of B per row of C")
        add(level_for(s * k * n, caches), s * math.ceil(m / bi) * k * n, "B once per 64 rows of C")
    elif kernel in ("packed", "openmp", "numpy"):
        # The five loops (csrc/06_packed.cpp): a kc x NR micro-panel of B stays in L1 while the
        # A block (mc x kc, in L2) streams past it once per NR columns; each B micro-panel
        # comes from the B panel (kc x nc, in L3) once per A block.
        mr, nr, kc, nc = blocking["mr"], blocking.get("nr", 32), blocking["kc"], blocking["nc"]
        mc = blocking.get("mc", 64 * mr)
        a_block = s * min(mc, m) * min(kc, k)
        add(level_for(a_block, caches), s * m * k * math.ceil(n / nr), "the packed A block once per NR columns")
        panel = s * min(kc, k) * min(nc, n)
        add(level_for(panel, caches), s * k * n * math.ceil(m / mc), "the packed B panel once per A block")
        mem = s * (m * k * math.ceil(n / nc) + 2 * k * n + 2 * m * n * math.ceil(k / kc))
        add(level_for(compulsory, caches), mem, "A, B and C from memory, with packing")
    else:
        add(level_for(compulsory, caches), compulsory, "each matrix once")
    return out


def blas_roof(machine: dict, blas: dict) -> tuple[str | None, float | None, bool]:
    """The 1-core FMA roof NumPy's BLAS is held against: (instruction set, GFLOP/s, whether it is the
    ISA its kernel runs).  That is the measured roof of the ISA its kernel uses
    (:func:`whygpu.bench.machine.blas_facts`: OpenBLAS's Haswell kernel on an AVX-512 CPU runs AVX2,
    and is held against the AVX2 roof); where that ISA is unknown, or whygpu measured no roof for it,
    this CPU's best measured roof -- an upper bound, whatever the kernel ((None, None, False) when the
    roofs hold no roof per ISA)."""
    by = {a: float(g) for a, g in (machine.get("fma_by_arch") or {}).items() if g}
    isa = blas.get("kernel_isa")
    if isa in by:
        return isa, by[isa], True
    if not by:
        return None, None, False
    best = max(by, key=lambda a: by[a])
    return best, by[best], False


def kernel_model(
    kernel: str,
    m: int,
    n: int,
    k: int,
    machine: dict,
    *,
    dtype: str = "float32",
    threads: int | None = None,
    blas: dict | None = None,
) -> dict:
    """What the roofline predicts for ``kernel`` on an (m, k) @ (k, n) product.

    ``machine`` comes from :func:`measure_machine`.  Returns flops, the
    compute roof used (name, GFLOP/s), the traffic per memory level (bytes,
    GB/s, seconds), the arithmetic intensity against the level that limits
    most, the predicted seconds and what bounds it ("compute" or a level).
    float64 halves the SIMD roofs (half as many lanes) and doubles the bytes.
    A NumPy row is held against the roof of the ISA its BLAS kernel runs (:func:`blas_roof`), with
    ``roof_isa``, ``roof_is_kernel_isa`` and the ``blas`` facts it was chosen from (``blas``:
    :func:`whygpu.bench.machine.blas_facts`, detected in this process when not given).
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if kernel in GPU_TRAFFIC or kernel == "cublas":
        if not machine.get("gpu"):
            raise ValueError(f"{kernel!r} runs on the GPU: its model needs the GPU's roofs (measure_machine(gpu=True))")
        return gpu_kernel_model(kernel, m, n, k, machine["gpu"])
    s = 4 if dtype == "float32" else 8
    info = cpu_info()
    blocking = info.get("blocking", {}).get(dtype, {"mr": 8, "nr": 32, "kc": 256, "mc": 512, "nc": 4096})
    if kernel.startswith("numpy"):  # a reference: BLAS on 1 or all threads
        roof = "simd_1t" if threads == 1 else "simd_all"
    elif kernel in KERNEL_ROOF:
        roof = KERNEL_ROOF[kernel]
    else:
        raise ValueError(f"no roofline model for kernel {kernel!r} (CPU kernels only)")
    compute = float(machine["compute"][roof])
    one_core = float(machine["compute"]["simd_1t"])
    extra: dict = {}
    if kernel.startswith("numpy"):
        # BLAS picks its own ISA, whatever whygpu's (WHYGPU_ARCH=portable, say): the roof is that of the
        # ISA its kernel runs, scaled from whygpu's own 1-core roof to all cores alike.
        if blas is None:
            from ..bench.machine import blas_facts

            blas = blas_facts()
        isa, isa_gflops, exact = blas_roof(machine, blas)
        if isa_gflops:
            compute *= isa_gflops / one_core
            one_core = isa_gflops
        extra = {"roof_isa": isa, "roof_is_kernel_isa": exact, "blas": blas}
    if dtype == "float64" and roof.startswith("simd"):
        compute /= 2
    parallel = roof == "simd_all"
    mthreads = machine.get("threads", 1)
    if parallel and threads is not None and threads < mthreads:
        compute = min(compute, one_core * threads / (2 if dtype == "float64" else 1))
    bw = machine["bandwidth"]["all" if parallel else "1"]
    flops = 2.0 * m * n * k
    t_compute = flops / (compute * 1e9) if flops else 0.0
    traffic = []
    base = "numpy" if kernel.startswith("numpy") else kernel
    for level, nbytes, what in _traffic(base, m, n, k, s, info.get("caches", machine.get("caches", {})), blocking):
        gbps = bw.get(level) or bw.get("DRAM")
        traffic.append({"level": level, "bytes": nbytes, "gbps": gbps, "seconds": nbytes / (gbps * 1e9), "what": what})
    worst = max(traffic, key=lambda t: t["seconds"]) if traffic else None
    t_mem = worst["seconds"] if worst else 0.0
    predicted = max(t_compute, t_mem)
    bound = "compute" if t_compute >= t_mem or worst is None else worst["level"]
    intensity = flops / worst["bytes"] if worst and worst["bytes"] else None  # None: all in L1
    return {
        "kernel": kernel,
        "m": m,
        "n": n,
        "k": k,
        "dtype": dtype,
        "flops": flops,
        "compute_roof": roof,
        "compute_gflops": compute,
        "traffic": traffic,
        "intensity": intensity,
        "intensity_level": worst["level"] if worst else None,
        "predicted_s": predicted,
        "predicted_gflops": flops / predicted / 1e9 if predicted else None,
        "bound": bound,
        **extra,
    }


# --------------------------------------------------------------------------
# `whygpu roofline`: the machine's roofs and every kernel measured against them
# --------------------------------------------------------------------------
SCHEMA = "whygpu.roofline/1"


def run_roofline(
    *,
    n: int = 1024,
    kernels=None,
    dtype: str = "float32",
    threads: int | None = None,
    repeats: int = 5,
    budget: float = 2.0,
    force: bool = False,
    quick: bool = False,
    machine: dict | None = None,
    ladder: dict | None = None,
    progress: bool = False,
    gpu: dict | None = None,
    gpu_n: int = 4096,
    log=lambda s: None,
) -> dict:
    """Measure the roofs (unless ``machine`` is given) and each kernel at n x n x n.

    A kernel predicted to take longer than ``budget`` at n is measured at the
    largest n / 2^j that fits (with a note), so every rung gets a point.
    Measurements found in a ``ladder`` document are reused, not repeated.

    Where a GPU is usable, its roofs are measured too (unless ``gpu`` is
    given: :func:`whygpu.bench.gpu.measure_gpu`) and the CUDA rungs (and
    cuBLAS, when CuPy or PyTorch can reach the GPU) are placed on them at
    ``gpu_n`` (or the largest size that fits the budget).

    Each measurement block (the roofs, each kernel) waits a bounded time for
    a quiet machine and records how busy it was (``quiet``:
    :class:`whygpu.bench.trust.QuietGuard`).  A point faster than its roof is
    impossible: its roofs and its kernel are measured once more
    (:func:`whygpu.predict.roofline_trust.settle_impossible`); one still impossible is
    flagged ``disturbed`` and left out of the conclusions.
    """
    # Deferred, not circular (whygpu.bench imports nothing above it): the measuring modules
    # pull in tqdm and threadpoolctl, which ``import whygpu`` (explain -> roofline) need not load.
    from ..bench.gpu import measure_gpu
    from ..bench.ladder import measure_matmul, resolve_kernels, scout, split_unavailable, threads_used
    from ..bench.machine import machine_info
    from ..bench.measure import format_seconds
    from ..bench.progress import Progress

    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    threads = get_num_threads() if threads is None else check_threads(threads)
    if force:  # measured at n itself, however long: refused now if it cannot fit, not after the roofs
        check_product_fits(n, n, n, dtype)
    minfo = machine_info()  # before measuring: how busy the machine was when we started
    t_start = time.perf_counter()
    guard = QuietGuard()  # waits (a bounded time) for quiet before each block, and records the load
    if machine is None:
        with guard.block("roofs"):
            machine = measure_machine(threads, quick=quick)
    kernels, unavailable = split_unavailable(kernels)  # listed with their reasons, not measured
    all_names = resolve_kernels(kernels, threads, gpu=True)
    names = [k for k in all_names if k.startswith("numpy-") or KERNELS[k].device == "cpu"]
    gpu_names = [k for k in all_names if k not in names] if dtype == "float32" else []  # the GPU rungs: float32
    if gpu_names and gpu is None:
        with guard.block("GPU roofs"):
            gpu = measure_gpu(quick=quick)
    if gpu is None:
        gpu_names = []
    if isinstance(gpu_n, bool) or int(gpu_n) < 1:
        raise ValueError(f"gpu_n must be a positive integer, got {gpu_n}")
    gpu_n = int(gpu_n)
    gmachine = {**machine, "gpu": gpu} if gpu else machine
    reuse: dict[str, dict] = {}  # kernel -> its largest square measurement in `ladder`
    if ladder is not None and ladder.get("params", {}).get("dtype") == dtype:
        for rec in ladder.get("measurements", []):
            if rec["n"] <= (gpu_n if rec["kernel"] in gpu_names else n) and rec["m"] == rec["n"] == rec["k"]:
                if rec["kernel"] not in reuse or rec["n"] > reuse[rec["kernel"]]["n"]:
                    reuse[rec["kernel"]] = rec
    points, notes = [], []
    recs: dict[str, dict] = {}  # kernel -> its measurement (kept to place it again on re-measured roofs)
    expect: dict[str, float | None] = {}  # kernel -> expected seconds per call at its n (for a re-measure)

    def remodel(p: dict, mach: dict) -> dict:
        return kernel_model(
            p["kernel"],
            p["n"],
            p["n"],
            p["n"],
            mach,
            dtype=dtype,
            threads=threads_used(p["kernel"], threads),
            blas=minfo.get("blas_facts"),
        )

    with Progress(len(names) + len(gpu_names), "roofline", progress) as bar:
        for name in names + gpu_names:
            bar.show(name, 0.0)
            on_gpu = name in gpu_names
            size = gpu_n if on_gpu else n
            rec = reuse.get(name)
            exp_rec = None if rec is None else rec["seconds"]  # seconds per call at the measured n
            if rec is None or rec["n"] != size:
                with guard.block(f"{name} n={size}"):
                    sc = scout(name, size, size, size, dtype=dtype, threads=threads, budget=budget)
                    expected = sc["expected_s"]
                    nk, exp_k = size, expected
                    while exp_k > budget and not force and nk > 16:
                        nk //= 2
                        exp_k /= 8
                    if rec is None or rec["n"] < nk:
                        check_product_fits(nk, nk, nk, dtype)
                        rec = measure_matmul(
                            name,
                            nk,
                            nk,
                            nk,
                            dtype=dtype,
                            threads=threads,
                            repeats=repeats,
                            budget=budget,
                            expected=exp_k,
                        )
                        exp_rec = exp_k
                if rec["n"] != size:
                    notes.append(
                        f"{name} measured at n={rec['n']}: n={size} would take ~{format_seconds(expected)} "
                        f"per call (budget {format_seconds(budget)}; --all measures it)"
                    )
                    log(notes[-1])
            recs[name] = rec
            expect[name] = exp_rec
            model = kernel_model(
                name,
                rec["n"],
                rec["n"],
                rec["n"],
                gmachine,
                dtype=dtype,
                threads=threads_used(name, threads),
                blas=minfo.get("blas_facts"),  # NumPy's BLAS as detected when the run started
            )
            # The best sample, like the roofs (best-of too): see measured_fields.
            points.append(
                {
                    **model,
                    **measured_fields(model, rec),
                    "threads": rec["threads"],
                    "device": "cuda" if on_gpu else "cpu",
                }
            )
            bar.advance()

    def remeasure(p: dict) -> dict:
        m = p["n"]
        with guard.block(f"{p['kernel']} n={m}, again"):
            return measure_matmul(
                p["kernel"],
                m,
                m,
                m,
                dtype=dtype,
                threads=threads,
                repeats=repeats,
                budget=budget,
                expected=expect[p["kernel"]],
            )

    def roofs_again() -> dict:
        with guard.block("roofs, again"):  # the full probes: more samples, more chances at a quiet moment
            return measure_machine(threads, quick=False)

    def gpu_again() -> dict | None:
        with guard.block("GPU roofs, again"):
            return measure_gpu(quick=quick)

    # A point faster than its roof is impossible: its roofs and its kernel are measured once more.
    gmachine, roofs_remeasured = settle_impossible(
        points, recs, gmachine, remodel=remodel, remeasure=remeasure, roofs_again=roofs_again, gpu_again=gpu_again
    )
    machine = {k: v for k, v in gmachine.items() if k != "gpu"}
    gpu = gmachine.get("gpu")
    for p in points:
        if p.get("disturbed"):
            notes.append(f"{p['kernel']} at n={p['n']}: {p['disturbed_reason']}")
            log(notes[-1])
    return {
        "schema": SCHEMA,
        "machine": minfo,
        "params": {
            "n": n,
            "kernels": names + gpu_names,
            "dtype": dtype,
            "threads": threads,
            "repeats": repeats,
            "budget_s": budget,
            "force": force,
            "quick": quick,
            "gpu_n": gpu_n if gpu_names else None,
        },
        "roofs": machine,
        "gpu_roofs": gpu,
        "roofs_remeasured": roofs_remeasured,
        "model_error": MODEL_ERROR,
        "points": points,
        "notes": notes,
        "unavailable": unavailable,
        "quiet": guard.as_dict(),
        "seconds": time.perf_counter() - t_start,
    }
