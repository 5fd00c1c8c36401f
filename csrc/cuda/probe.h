// probe.h -- the GPU's roofs, measured: the microbenchmarks behind
// `whygpu roofline` on a GPU (whygpu.bench.gpu.measure_gpu), as the CPU's are
// in csrc/machine_probe.h.  A roofline needs two numbers per machine, the
// most arithmetic it can do and the most bytes it can move, and each probe
// does only one of the two so that its time is that limit alone:
//
//   fma_peak   -- independent float32 FMA chains in registers, no memory
//                 traffic: the compute roof of CUDA rungs 8-14;
//   mma_peak   -- independent chains of warp-level tensor-core mma.sync
//                 (bf16 m16n8k16 or TF32 m16n8k8) on registers, no memory
//                 traffic: the compute roof of the tensor-core rungs 15-16;
//   copy       -- a float4 copy, nothing but loads and stores: the bandwidth
//                 of whichever level the working set fits in (L2 or DRAM).
//
// Plain C++ (the binding is compiled by the host compiler); the kernels are in
// probe.cu.  Both launch asynchronously on `stream`, like the GEMM rungs, and
// return the launch's error code.
#pragma once

#include <cuda_runtime_api.h>

namespace whygpu {
namespace gpu {
namespace probe {

constexpr int kFmaChains = 8;   // independent chains per thread: enough FMAs in flight to hide their latency
constexpr int kFmaUnroll = 16;  // chain steps per loop trip: the loop's own instructions stay negligible
// Floating-point operations per thread per iteration of fma_peak (an FMA is 2).
constexpr long long kFmaFlopsPerIter = 2LL * kFmaChains * kFmaUnroll;

// `blocks` x `threads` threads each run `iters` iterations and write their
// result to sink[thread] (so the compiler cannot drop the work): sink holds
// blocks * threads floats.
cudaError_t fma_peak(int blocks, int threads, long long iters, float* sink, cudaStream_t stream);

constexpr int kMmaChains = 8;   // independent accumulator tiles per warp: the tensor pipes never wait on a result
constexpr int kMmaUnroll = 4;   // chain steps per loop trip
// Flops of one mma.sync: 2 * 16 * 8 * 16 (bf16 m16n8k16) or 2 * 16 * 8 * 8 (TF32 m16n8k8).
constexpr long long kMmaFlopsBf16 = 2LL * 16 * 8 * 16;
constexpr long long kMmaFlopsTf32 = 2LL * 16 * 8 * 8;
// Floating-point operations per *thread* per iteration of mma_peak: a warp's
// mma flops shared over its 32 threads, so that blocks * threads * iters *
// this is the launch's total, as for fma_peak.
constexpr long long mma_flops_per_iter(bool bf16) {
    return (bf16 ? kMmaFlopsBf16 : kMmaFlopsTf32) * kMmaChains * kMmaUnroll / 32;
}
// Operands of every mma: all of A is 0.5, all of B 2**-6, so each mma adds
// k / 128 (bf16: 0.125, TF32: 0.0625) to every accumulator -- exact in
// float32, never overflowing; accumulator tile c starts at c.  Each thread
// writes the sum of its 4 * kMmaChains accumulators to sink[thread].
// `threads` must be a multiple of 32 (whole warps), and the GPU needs
// compute capability 8.0 (bf16/TF32 tensor cores); bf16 = false runs TF32.
cudaError_t mma_peak(int blocks, int threads, long long iters, bool bf16, float* sink, cudaStream_t stream);

// dst[0 .. n) = src[0 .. n), `passes` times over, with `blocks` blocks of 256
// threads in a grid-stride loop; 16-byte loads and stores when both pointers
// are 16-byte aligned, a scalar tail (and a scalar copy otherwise).  Any
// n >= 0.  Several passes in one launch: a copy that fits in the L2 cache
// takes a few microseconds, no longer than launching a kernel.
cudaError_t copy(const float* src, float* dst, long long n, int passes, int blocks, cudaStream_t stream);

}  // namespace probe
}  // namespace gpu
}  // namespace whygpu
