// probe.cu -- the kernels of probe.h: the GPU's compute and bandwidth roofs.
//
// fma_peak: every thread keeps kFmaChains accumulators in registers and
// updates each with one fused multiply-add per step, x = x * a + b.  The
// chains do not depend on each other, so a warp always has an FMA ready to
// issue while the previous ones are in the pipeline; with a full SM (8 blocks
// of 256 threads) the FMA units never wait.  a and b are kernel arguments
// (the compiler cannot fold the loop) chosen so that x stays near 1: no
// overflow, no denormals, no slow path.  No --use_fast_math is needed: an FMA
// is one instruction either way.
//
// mma_peak: the same idea on the tensor cores.  Every warp keeps kMmaChains
// 16 x 8 float32 accumulator tiles (4 registers per lane each) and feeds each
// with one warp-level mma.sync per step; consecutive instructions use
// different accumulators, so one never waits for the previous result.  The
// operand fragments are fixed registers (kernel arguments, so nothing can be
// folded; the asm is volatile, so nothing can be dropped): the probe measures
// the tensor cores' arithmetic alone, with no shared-memory or ldmatrix
// traffic.  ptx.cuh is included directly (the emulated build shadows it).
//
// copy: a grid-stride loop of float4 loads and stores.  Consecutive threads
// touch consecutive 16-byte pieces, so each warp moves 512 contiguous bytes
// per instruction -- fully coalesced -- and only the memory system limits it.
#include <cstdint>

#include "probe.h"
#include "ptx.cuh"

namespace whygpu {
namespace gpu {
namespace probe {
namespace {

constexpr int kCopyThreads = 256;

__global__ void fma_peak_kernel(long long iters, float a, float b, float* sink) {
    const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    float x[kFmaChains];
#pragma unroll
    for (int c = 0; c < kFmaChains; ++c) x[c] = 1.0f + 1e-3f * (float)((t + c) % 7);
    for (long long it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < kFmaUnroll; ++u) {
#pragma unroll
            for (int c = 0; c < kFmaChains; ++c) x[c] = fmaf(x[c], a, b);
        }
    }
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < kFmaChains; ++c) sum += x[c];
    sink[t] = sum;  // one store per thread: the work above is needed
}

template <bool kBf16>
__global__ void mma_peak_kernel(long long iters, uint32_t a_bits, uint32_t b_bits, float* sink) {
    const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800  // no bf16/TF32 mma.sync before Ampere: the launcher refuses
    sink[t] = 0.f;
#else
    const uint32_t a[4] = {a_bits, a_bits, a_bits, a_bits};
    const uint32_t b[2] = {b_bits, b_bits};
    float d[kMmaChains][4];
#pragma unroll
    for (int c = 0; c < kMmaChains; ++c)
#pragma unroll
        for (int q = 0; q < 4; ++q) d[c][q] = (float)c;
    for (long long it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < kMmaUnroll; ++u) {
#pragma unroll
            for (int c = 0; c < kMmaChains; ++c) {
                if (kBf16) ptx::mma_bf16_16816(d[c], a, b);
                else ptx::mma_tf32_1688(d[c], a, b);
            }
        }
    }
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < kMmaChains; ++c)
#pragma unroll
        for (int q = 0; q < 4; ++q) sum += d[c][q];
    sink[t] = sum;  // one store per thread: the work above is needed
#endif
}

// No __restrict__: dst might alias src as far as the compiler knows, so every
// pass must really load and store again.
__global__ void copy_f4_kernel(const float4* src, float4* dst, long long n4, int passes) {
    for (int p = 0; p < passes; ++p)
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4;
             i += (long long)gridDim.x * blockDim.x)
            dst[i] = src[i];
}

__global__ void copy_f1_kernel(const float* src, float* dst, long long n, int passes) {
    for (int p = 0; p < passes; ++p)
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
             i += (long long)gridDim.x * blockDim.x)
            dst[i] = src[i];
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Enough blocks for the work, at most `cap` (the grid-stride loop does the rest).
int grid_for(long long items, int cap) {
    const long long need = (items + kCopyThreads - 1) / kCopyThreads;
    return (int)(need < cap ? need : cap);
}

}  // namespace

cudaError_t fma_peak(int blocks, int threads, long long iters, float* sink, cudaStream_t stream) {
    if (blocks < 1 || threads < 1 || threads > 1024 || iters < 0 || sink == nullptr) return cudaErrorInvalidValue;
    // x -> x * a + b has its fixed point at b / (1 - a) = 1: the chains stay near 1.
    const float a = 0.999f, b = 0.001f;
    fma_peak_kernel<<<blocks, threads, 0, stream>>>(iters, a, b, sink);
    return cudaGetLastError();
}

cudaError_t mma_peak(int blocks, int threads, long long iters, bool bf16, float* sink, cudaStream_t stream) {
    if (blocks < 1 || threads < 32 || threads > 1024 || threads % 32 != 0 || iters < 0 || sink == nullptr)
        return cudaErrorInvalidValue;
    int dev = 0, major = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e != cudaSuccess) return e;
    if (major < 8) return cudaErrorInvalidValue;  // no bf16/TF32 tensor cores; the binding says so in words
    // A = 0.5 and B = 2**-6 everywhere: bf16 holds two per register (0x3f00, 0x3c80), TF32 one (float32 bits).
    if (bf16)
        mma_peak_kernel<true><<<blocks, threads, 0, stream>>>(iters, 0x3f003f00u, 0x3c803c80u, sink);
    else
        mma_peak_kernel<false><<<blocks, threads, 0, stream>>>(iters, 0x3f000000u, 0x3c800000u, sink);
    return cudaGetLastError();
}

cudaError_t copy(const float* src, float* dst, long long n, int passes, int blocks, cudaStream_t stream) {
    if (n < 0 || passes < 1 || blocks < 1) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    long long done = 0;
    if (aligned16(src) && aligned16(dst)) {
        const long long n4 = n / 4;
        if (n4 > 0) {
            copy_f4_kernel<<<grid_for(n4, blocks), kCopyThreads, 0, stream>>>(
                reinterpret_cast<const float4*>(src), reinterpret_cast<float4*>(dst), n4, passes);
            const cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) return e;
        }
        done = 4 * n4;
    }
    if (done < n) {  // the last 1-3 floats, or everything when a pointer is not 16-byte aligned
        copy_f1_kernel<<<grid_for(n - done, blocks), kCopyThreads, 0, stream>>>(src + done, dst + done, n - done, passes);
        return cudaGetLastError();
    }
    return cudaSuccess;
}

}  // namespace probe
}  // namespace gpu
}  // namespace whygpu
