"""Notebook 06, the GPU: its exercises and the conclusions it computes from its own run (issue 36).

What can be shown without a GPU: how many global-memory loads a shared-memory tile saves (the CUDA rungs'
traffic model, :data:`whygpu.predict.roofline_gpu.GPU_TRAFFIC`), and the roofline -- this CPU's measured by
:func:`whygpu.bench.probes.measure_machine`, an H100's from public figures (:data:`H100_PUBLIC`, labelled as
such wherever it is printed).  Each function below turns numbers into the sentence the notebook prints, so that
the sentence follows the numbers; tests/test_lab_nb06.py tests them on planted numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..predict.roofline_gpu import GPU_TRAFFIC
from ..predict.scaleout_model import H100
from . import Verdict, exercise

# The H100's public figures (NVIDIA H100 SXM datasheet; the cuBLAS SGEMM figure the report quotes), taken from
# whygpu.predict.scaleout_model.H100 so that the notebook and the cost model agree.  Not measured here.
H100_PUBLIC: dict[str, Any] = {
    "name": H100["name"],
    "fp32_peak_gflops": float(H100["peak_gflops"]),
    "sgemm_gflops": float(H100["gflops"]),
    "hbm_gbps": H100["hbm_Bps"] / 1e9,
    "source": H100["source"],
}

# The rungs whose traffic is a square tile of float32 in shared memory, and the tile's side (csrc/cuda/*.cu).
SQUARE_TILES = {"cuda_smem": 32, "cuda_1d_tiling": 64, "cuda_2d_tiling": 128}
_FLOAT32 = 4  # bytes


# ---- The traffic model --------------------------------------------------------------------------------------


def model_loads_per_output(kernel: str, k: int) -> float:
    """Global (L2) loads of float32 elements one output of an (m, k) @ (k, n) product costs on CUDA rung
    ``kernel``, from the package's traffic model: bytes per multiply-add x k multiply-adds / 4 bytes."""
    per_fma, _ = GPU_TRAFFIC[kernel]
    return per_fma * k / _FLOAT32


def tiled_loads_per_output(t: int, k: int) -> float:
    """The reference answer: a T x T tile of C reads a T x T tile of A and one of B per T steps of k,
    2 T^2 loads shared by T^2 outputs -- 2 k / T loads per output (2 k without a tile, T = 1)."""
    return 2.0 * k / t


# ---- The roofline -------------------------------------------------------------------------------------------


def gemm_flops(n: int) -> float:
    """Floating-point operations of an n x n x n matrix product: one multiply and one add per (i, j, p)."""
    return 2.0 * n**3


def gemm_bytes(n: int, itemsize: int = _FLOAT32) -> float:
    """The compulsory memory traffic of an n x n x n product: A and B read once, C written once."""
    return 3.0 * n * n * itemsize


def roofline_seconds(flops: float, nbytes: float, gflops: float, gbps: float) -> tuple[float, str]:
    """The roofline's lower bound on the time, and what bounds it: max(flops / peak, bytes / bandwidth)."""
    t_compute = flops / (gflops * 1e9)
    t_memory = nbytes / (gbps * 1e9)
    return (t_compute, "compute") if t_compute >= t_memory else (t_memory, "memory")


def ridge(gflops: float, gbps: float) -> float:
    """The arithmetic intensity (FLOP per byte) at which the roofline's two roofs meet: below it a kernel is
    memory-bound, above it compute-bound."""
    if gflops <= 0 or gbps <= 0:
        raise ValueError(f"a peak and a bandwidth are positive, got {gflops} GFLOP/s and {gbps} GB/s")
    return gflops / gbps


def cpu_roofs(machine: Mapping[str, Any]) -> tuple[float, float]:
    """(peak GFLOP/s, DRAM GB/s) of this CPU from :func:`whygpu.bench.probes.measure_machine`: the best of its
    one-thread and all-threads figures (a roof is what *can* be reached; a busy moment only lowers one)."""
    c, bw = machine["compute"], machine["bandwidth"]
    peak = max(c["simd_1t"], c["simd_all"])
    dram = max(v["DRAM"] for v in bw.values() if "DRAM" in v)
    return float(peak), float(dram)


def rung_intensity(kernel: str) -> float:
    """FLOP per byte of global (L2) traffic of CUDA rung ``kernel``: 2 FLOP per multiply-add / its bytes."""
    return 2.0 / GPU_TRAFFIC[kernel][0]


def min_square_tile(ridge_flop_per_byte: float, itemsize: int = _FLOAT32) -> int:
    """The smallest side T of a square tile that makes a tiled GEMM compute-bound against a memory whose ridge
    is given: a T x T tile does 2 FLOP per multiply-add for 2 itemsize / T bytes, T / itemsize FLOP per byte."""
    return max(1, math.ceil(ridge_flop_per_byte * itemsize - 1e-9))


# ---- The conclusions the notebook prints ----------------------------------------------------------------------


def tiles_conclusion(k: int, loads: Mapping[int, float]) -> str:
    """What the table of loads per output says: how many times fewer global loads the largest tile needs than
    no tile, from the numbers in ``loads`` (T -> loads per output at this k)."""
    if 1 not in loads or len(loads) < 2:
        raise ValueError("give the loads without a tile (T = 1) and with at least one tile")
    big = max(loads)
    ratio = loads[1] / loads[big]
    return (
        f"At k = {k}, one output costs {loads[1]:,.0f} global loads without a tile and {loads[big]:,.0f} with a "
        f"{big} x {big} tile: the tile divides the traffic by {ratio:,.0f} (= T), and the multiply-adds stay {k}."
    )


def ridge_conclusion(cpu_ridge: float, gpu_ridge: float, gpu_name: str = "H100 (public figures)") -> str:
    """Compare the two ridges: which machine needs the more reuse per byte before its arithmetic is the limit."""
    if gpu_ridge > cpu_ridge:
        return (
            f"A kernel needs {gpu_ridge:.1f} FLOP per byte from memory to be compute-bound on the {gpu_name}, "
            f"against {cpu_ridge:.1f} on this CPU (measured): the GPU's ridge is {gpu_ridge / cpu_ridge:.1f} times "
            "this CPU's, so a GPU kernel needs more reuse of each loaded number -- bigger tiles -- before its "
            "arithmetic, not its memory, is the limit."
        )
    if gpu_ridge < cpu_ridge:
        return (
            f"A kernel needs {gpu_ridge:.1f} FLOP per byte from memory to be compute-bound on the {gpu_name}, "
            f"against {cpu_ridge:.1f} on this CPU (measured): this CPU's ridge is {cpu_ridge / gpu_ridge:.1f} times "
            "the GPU's, so here it is the CPU kernel that needs the more reuse of each loaded number."
        )
    return f"Both ridges are {cpu_ridge:.1f} FLOP per byte: the two machines need the same reuse per byte."


def bound_rungs(ridge_flop_per_byte: float, kernels: list[str] | None = None) -> dict[str, str]:
    """Each CUDA rung: 'memory' when its intensity (from the traffic model) is below the ridge, else 'compute'."""
    kernels = kernels if kernels is not None else list(GPU_TRAFFIC)
    return {k: ("compute" if rung_intensity(k) >= ridge_flop_per_byte else "memory") for k in kernels}


def bound_conclusion(bounds: Mapping[str, str], gpu_name: str = "H100") -> str:
    """Which rungs the roofline puts under the memory roof and which reach the compute roof."""
    mem = [k for k, b in bounds.items() if b == "memory"]
    comp = [k for k, b in bounds.items() if b == "compute"]
    if not comp:
        return f"Every rung is memory-bound on the {gpu_name} if its loads came from memory: no tile here is enough."
    if not mem:
        return f"Every rung reaches the {gpu_name}'s compute roof: even the smallest tile is enough."
    return (
        f"If its loads came from memory, on the {gpu_name} {', '.join(mem)} would be memory-bound and "
        f"{', '.join(comp)} compute-bound: the first rung with enough reuse is {comp[0]}."
    )


def measured_conclusion(measured_s: float, predicted_s: float, what: str) -> str:
    """A measured time against the roofline's lower bound: the fraction of the roof the kernel reached."""
    if measured_s <= 0 or predicted_s <= 0:
        raise ValueError("times are positive")
    frac = predicted_s / measured_s
    if frac > 1.05:
        return (
            f"{what} took {1e3 * measured_s:.2f} ms, less than the roofline's bound of {1e3 * predicted_s:.2f} ms: "
            "the roof was measured low (a busy moment) -- measure again."
        )
    return (
        f"{what} took {1e3 * measured_s:.2f} ms against the roofline's bound of {1e3 * predicted_s:.2f} ms: "
        f"{100 * frac:.0f}% of the roof."
    )


# ---- The exercises --------------------------------------------------------------------------------------------


@exercise(
    "06.tile_loads",
    "write the global loads per output of a T x T shared-memory tiled GEMM as a function of T and k",
    hint="a block loads a T x T tile of A and one of B for every T steps of k, and T x T outputs share them",
)
def _tile_loads(answer: Callable[[int, int], Any]) -> Verdict:
    for t in (1, 2, 8, 16):
        for k in (64, 1024):
            got = answer(t, k)
            want = tiled_loads_per_output(t, k)
            if got is ... or got is None:
                return Verdict(False, "your function returns nothing yet -- write its body")
            if not math.isclose(float(got), want, rel_tol=1e-6):
                return Verdict(False, f"for T = {t}, k = {k} it gives {got}, and the loads per output are {want:g}")
    for kernel, t in SQUARE_TILES.items():
        k = 4096
        got, model = float(answer(t, k)), model_loads_per_output(kernel, k)
        if not math.isclose(got, model, rel_tol=1e-6):
            return Verdict(False, f"for {kernel} (T = {t}) it gives {got:g}, the package's traffic model {model:g}")
    return Verdict(
        True,
        "2 k / T: each loaded element is used T times; it agrees with the traffic model of "
        + ", ".join(f"{k} (T = {t})" for k, t in SQUARE_TILES.items()),
    )


@exercise(
    "06.h100_time",
    "predict from the roofline (public H100 figures) the time in ms of an n x n x n float32 GEMM",
    hint="time >= max(FLOPs / peak FLOP/s, bytes / bandwidth); an n x n x n product does 2 n^3 FLOPs and moves "
    "at least 3 n^2 floats of 4 bytes; mind the units (GFLOP/s = 1e9 FLOP/s, ms = 1e-3 s)",
)
def _h100_time(answer: float, n: int, gpu: Mapping[str, Any] = H100_PUBLIC) -> Verdict:
    ms = float(answer)
    flops, nbytes = gemm_flops(n), gemm_bytes(n)
    at_peak, bound = roofline_seconds(flops, nbytes, gpu["fp32_peak_gflops"], gpu["hbm_gbps"])
    at_sgemm, _ = roofline_seconds(flops, nbytes, gpu["sgemm_gflops"], gpu["hbm_gbps"])
    lo, hi = 0.9e3 * at_peak, 1.1e3 * at_sgemm
    if lo <= ms <= hi:
        return Verdict(
            True,
            f"{ms:.3g} ms is within [{lo:.3g}, {hi:.3g}] ms (the bound at the public FP32 peak, up to the public "
            f"cuBLAS SGEMM rate, 10% either side): {flops:.3g} FLOPs against {nbytes / 1e6:.0f} MB, {bound}-bound",
        )
    mem_ms = 1e3 * nbytes / (gpu["hbm_gbps"] * 1e9)
    why = (
        " -- that is the memory time alone; which roof is the higher?" if math.isclose(ms, mem_ms, rel_tol=0.2) else ""
    )
    return Verdict(False, f"{ms:.3g} ms is outside [{lo:.3g}, {hi:.3g}] ms{why}")


@exercise(
    "06.ridge",
    "the arithmetic intensity (FLOP per byte) at which a kernel stops being memory-bound, on this CPU and on "
    "an H100 (public figures)",
    hint="the ridge is where the two roofs meet: peak FLOP/s / memory bytes per second (GFLOP/s / GB/s)",
)
def _ridge(
    answer: tuple[float, float], cpu_gflops: float, cpu_gbps: float, gpu: Mapping[str, Any] = H100_PUBLIC
) -> Verdict:
    cpu, gpu_r = (float(x) for x in answer)
    want_cpu = ridge(cpu_gflops, cpu_gbps)
    want_gpu = ridge(gpu["fp32_peak_gflops"], gpu["hbm_gbps"])
    # The H100's ridge at the SGEMM rate is also a fair answer: accept from there to the peak's, 5% around.
    gpu_lo = 0.95 * ridge(gpu["sgemm_gflops"], gpu["hbm_gbps"])
    gpu_hi = 1.05 * want_gpu
    if not math.isclose(cpu, want_cpu, rel_tol=0.05):
        return Verdict(False, f"this CPU's ridge: {cpu:.3g} FLOP/byte, and its roofs give {want_cpu:.3g}")
    if not gpu_lo <= gpu_r <= gpu_hi:
        return Verdict(False, f"the H100's ridge: {gpu_r:.3g} FLOP/byte, outside [{gpu_lo:.3g}, {gpu_hi:.3g}]")
    return Verdict(True, f"this CPU {want_cpu:.1f} FLOP/byte, the H100 (public figures) {want_gpu:.1f}")


@exercise(
    "06.min_tile",
    "the smallest square tile side T that makes a float32 tiled GEMM compute-bound on an H100 (public figures), "
    "if every load came from HBM",
    hint="a T x T tile does 2 FLOPs per multiply-add for 2 x 4 / T bytes: T / 4 FLOP per byte; set that to the "
    "ridge you found",
)
def _min_tile(answer: int, gpu: Mapping[str, Any] = H100_PUBLIC) -> Verdict:
    t = int(answer)
    need = min_square_tile(ridge(gpu["fp32_peak_gflops"], gpu["hbm_gbps"]))
    pow2 = 1 << (need - 1).bit_length()
    if t in (need, pow2):
        return Verdict(
            True,
            f"T = {need} (as a power of two, {pow2}): T / 4 FLOP per byte reaches the ridge; the CUDA rungs from "
            "cuda_2d_tiling on use 128 x 128 tiles",
        )
    if t > pow2:
        return Verdict(False, f"T = {t} is enough, but not the smallest")
    return Verdict(False, f"T = {t} gives {t / 4:g} FLOP per byte, below the ridge")
