"""The roofline of the CUDA rungs: the bytes each asks of L2 and DRAM per multiply-add (from its tile
sizes in csrc/cuda/*.cu) and its prediction from the GPU's measured roofs (whygpu.predict.roofline holds the
CPU's, and `whygpu roofline` measures both)."""

from __future__ import annotations

from ..cuda import precision_of

# The CUDA rungs on the GPU's roofline: the compute roof of rungs 8-14 is the
# measured float32 FMA peak, that of the tensor-core rungs (15-16) the
# measured tensor-core peak in their precision; what differs is how many
# bytes a rung asks of the L2 cache per multiply-add (what leaves the SM
# after the L1 cache), set by the tile of C over which one load of A or B is
# reused and by the operands' size (4 bytes; 2 for bf16):
#     bytes per FMA = s * (1 / BM + 1 / BN)   (a BM x BN tile of C per block)
# plus the compulsory traffic from DRAM (each matrix once; the tensor-core
# rungs also rewrite operands first: GPU_OPERAND_BYTES).  Values from the
# tile sizes in csrc/cuda/*.cu; the text says where each comes from.
GPU_TRAFFIC = {
    "cuda_naive": (
        4.0 + 4.0 / 32,
        "a warp reads A 32 rows apart: one 32-byte sector per row, reused over 8 "
        "steps of k from L1 (4 B per FMA), B broadcast",
    ),
    "cuda_coalesced": (
        4.0 * (1 / 32 + 1 / 32),
        "rows of B shared through L1 by the 32 warps of a 32 x 32 block, A broadcast: as a 32 x 32 tile",
    ),
    "cuda_smem": (4.0 * (1 / 32 + 1 / 32), "32 x 32 tiles in shared memory: each load used 32 times"),
    "cuda_1d_tiling": (4.0 * (1 / 64 + 1 / 64), "64 x 64 block tiles: each load used 64 times"),
    "cuda_2d_tiling": (4.0 * (1 / 128 + 1 / 128), "128 x 128 block tiles: each load used 128 times"),
    "cuda_vectorized": (4.0 * (1 / 128 + 1 / 128), "128 x 128 block tiles: each load used 128 times"),
    "cuda_warptile": (4.0 * (1 / 128 + 1 / 128), "128 x 128 block tiles: each load used 128 times"),
    "cuda_mma": (
        4.0 * (1 / 128 + 1 / 128),
        "128 x 128 block tiles of TF32 (4-byte) operands: each load used 128 times",
    ),
    "cuda_mma_bf16": (
        2.0 * (1 / 128 + 1 / 128),
        "128 x 128 block tiles of bf16 (2-byte) operands: each load used 128 times",
    ),
    "cuda_wgmma": (
        2.0 * (1 / 128 + 1 / 256),
        "128 x 256 block tiles of bf16 (2-byte) operands: each load of A used 256 times, of B 128 times",
    ),
}

# DRAM bytes per element of A and B (C: 4, written once) for a plain a @ b of
# row-major float32 matrices, and why: the tensor-core rungs want both
# operands K-major in their own type, so csrc/cuda/tensor_core.cu rewrites
# an operand into a scratch copy before the launch (read 4 bytes, write the
# copy, read the copy again).  Rungs 8-14 read each matrix once.
GPU_OPERAND_BYTES = {
    "float32": (4.0, 4.0, "A, B and C from device memory once"),
    "tf32": (4.0, 12.0, "A once (used as stored); B copied K-major first (4 B read + 4 written + 4 read back); C once"),
    "bf16": (8.0, 8.0, "A and B rounded to bf16 copies first (4 B read + 2 written + 2 read back each); C once"),
}

# The compute roof of a GPU kernel, by the precision it multiplies in.
GPU_ROOF = {"float32": "gpu_fma", "tf32": "gpu_tensor_tf32", "bf16": "gpu_tensor_bf16"}


def gpu_precision(kernel: str) -> str:
    """What a GPU kernel multiplies in: 'float32' (rungs 8-14, cuBLAS in strict float32),
    'tf32' or 'bf16' (the tensor-core rungs; :func:`whygpu.cuda.precision_of`)."""
    if kernel == "cublas":
        return "float32"
    return precision_of(kernel)


def gpu_roof_gflops(gpu: dict, precision: str) -> float | None:
    """The measured compute roof for `precision` in a :func:`whygpu.bench.gpu.measure_gpu`
    result: the FMA peak for float32, the tensor-core probe's peak for tf32/bf16 (None when
    it was not measured: an older result, or a GPU without those tensor cores)."""
    if precision == "float32":
        return float(gpu["fma_gflops"])
    v = (gpu.get("tensor_gflops") or {}).get(precision)
    return float(v) if v else None


def gpu_kernel_model(kernel: str, m: int, n: int, k: int, gpu: dict) -> dict:
    """The roofline's prediction for a CUDA rung (or ``cublas``) on an (m, k) @
    (k, n) product of float32 matrices, from the GPU's measured roofs
    (:func:`whygpu.bench.gpu.measure_gpu`): time = max(flops / compute roof,
    L2 bytes / L2 bandwidth, DRAM bytes / DRAM bandwidth).  The compute roof is
    the FMA peak for float32 rungs, the tensor-core peak in the kernel's
    precision for rungs 15-16.  The same fields as :func:`kernel_model`, plus
    ``precision``."""
    precision = gpu_precision(kernel)
    flops = 2.0 * m * n * k
    compute = gpu_roof_gflops(gpu, precision)
    if compute is None:
        why = gpu.get("tensor_reason") or "these roofs were measured without the tensor-core probe"
        raise ValueError(
            f"{kernel!r} runs on {precision} tensor cores, and there is no measured {precision} tensor-core roof: {why}"
        )
    bw = gpu["bandwidth"]
    traffic = []
    if kernel in GPU_TRAFFIC:
        per_fma, what = GPU_TRAFFIC[kernel]
        nbytes = per_fma * m * n * k
        traffic.append(
            {"level": "L2", "bytes": nbytes, "gbps": bw["L2"], "seconds": nbytes / (bw["L2"] * 1e9), "what": what}
        )
    a_bytes, b_bytes, what = GPU_OPERAND_BYTES[precision]
    compulsory = a_bytes * m * k + b_bytes * k * n + 4.0 * m * n
    traffic.append(
        {
            "level": "DRAM",
            "bytes": compulsory,
            "gbps": bw["DRAM"],
            "seconds": compulsory / (bw["DRAM"] * 1e9),
            "what": what,
        }
    )
    t_compute = flops / (compute * 1e9) if flops else 0.0
    worst = max(traffic, key=lambda t: t["seconds"])
    predicted = max(t_compute, worst["seconds"])
    return {
        "kernel": kernel,
        "m": m,
        "n": n,
        "k": k,
        "dtype": "float32",
        "flops": flops,
        "device": "cuda",
        "precision": precision,
        "compute_roof": GPU_ROOF[precision],
        "compute_gflops": compute,
        "traffic": traffic,
        "intensity": flops / worst["bytes"] if worst["bytes"] else None,
        "intensity_level": worst["level"],
        "predicted_s": predicted,
        "predicted_gflops": flops / predicted / 1e9 if predicted else None,
        "bound": "compute" if t_compute >= worst["seconds"] else worst["level"],
    }
