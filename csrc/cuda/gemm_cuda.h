// gemm_cuda.h -- the contract every CUDA rung of the ladder implements, in
// float32 on the GPU:
//
//     C = alpha * op(A) * op(B) + beta * C    (then, optionally, + bias and relu)
//
// All three matrices live in device memory, row-major, each with a leading
// dimension (the distance in elements between the starts of two rows), and A
// and B may be stored transposed, BLAS style:
//
//     trans_a == false: A is stored (m, k), op(A)[i, p] = a[i * lda + p]
//     trans_a == true:  A is stored (k, m), op(A)[i, p] = a[p * lda + i]
//     trans_b == false: B is stored (k, n), op(B)[p, j] = b[p * ldb + j]
//     trans_b == true:  B is stored (n, k), op(B)[p, j] = b[j * ldb + p]
//     C is stored (m, n),                   C[i, j]     = c[i * ldc + j]
//
// These are the layouts a dense layer's training needs without any copies:
// Y = X W (NN), dW = X^T dY (TN), dX = dY W^T (NT).
//
// Rules every rung follows (tests/test_cuda.py checks them on a GPU):
//   * any m, n, k >= 0, not only multiples of a tile: every global read and
//     write is guarded at the edges (out-of-range tile elements read as 0);
//   * beta == 0 means "overwrite": C is never read, so NaN garbage in an
//     uninitialised output cannot leak into the result (BLAS convention);
//   * k == 0 or alpha == 0 gives C = beta * C without reading A or B, and
//     m == 0 or n == 0 launches nothing (gemm() below handles these);
//   * 16-byte (float4) accesses only where the pointer is 16-byte aligned
//     and the leading dimension a multiple of 4; element by element otherwise;
//   * everything is asynchronous on the given stream: a launch error is
//     returned at once, an error while the kernel runs at the next
//     synchronisation (a copy to the host, synchronize()).
//
// This header is plain C++ (the binding, compiled by the host compiler,
// includes it); the kernels are in the .cu files named below.
#pragma once

#include <cuda_runtime_api.h>

namespace whygpu {
namespace gpu {

struct GemmArgs {
    int m = 0, n = 0, k = 0;  // each < 2**30 (the binding checks): int indices cannot overflow
    float alpha = 1.f, beta = 0.f;
    const float* a = nullptr;  // (m, k), or (k, m) when trans_a; row stride lda
    long long lda = 0;
    const float* b = nullptr;  // (k, n), or (n, k) when trans_b; row stride ldb
    long long ldb = 0;
    float* c = nullptr;        // (m, n); row stride ldc
    long long ldc = 0;
    bool trans_a = false, trans_b = false;
    // Split-k (cuda_warptile only): 0 = chosen from the shape and the GPU
    // (long k, too few tiles of C to fill the SMs), s >= 1 = s slices of k
    // (1 = no split; more than k / 8 is clamped).  Other rungs ignore it.
    int split_k = 0;
    // Fused epilogue, for a dense layer's forward pass y = relu(x W^T + b) in
    // one launch instead of three: after alpha and beta, C[i, j] += bias[j]
    // (when bias is set), then C = max(C, 0) (when relu).  Every rung applies
    // it where it stores C (common.cuh); split-k where it sums the slices.
    const float* bias = nullptr;  // (n,) or null
    bool relu = false;
    // What the products are computed in (the sums are float32 in every case):
    // kFloat32 on rungs 8-14; kTF32 or kBF16 on the tensor-core rungs 15-16,
    // whose operands are rounded to that precision first (see Precision).
    int precision = 0;
    // Set by gemm(): may this matrix be read/written in 16-byte float4 pieces?
    bool vec_a = false, vec_b = false, vec_c = false;
};

// The rungs, numbered after the CPU ladder's 1-7 (python/whygpu/_registry.py).
enum Rung : int {
    kNaive = 8,        // 08_naive.cu
    kCoalesced = 9,    // 09_coalesced.cu
    kSmem = 10,        // 10_smem.cu
    k1DTiling = 11,    // 11_1d_tiling.cu
    k2DTiling = 12,    // 12_2d_tiling.cu
    kVectorized = 13,  // 13_vectorized.cu
    kWarptile = 14,    // 14_warptile.cu
    kMma = 15,         // 15_mma.cu: tensor cores, warp-level mma.sync (sm_80+)
    kWgmma = 16,       // 16_wgmma.cu: tensor cores, Hopper warpgroup wgmma + TMA (sm_90a only)
};
constexpr int kFirstRung = kNaive, kLastRung = kWgmma;

// The precision of the products.  Tensor cores multiply short floats and add
// the products into float32 accumulators; the rounding of the operands is the
// error a user sees (unit roundoff u; a product of two rounded operands is off
// by at most about 2u relative):
enum Precision : int {
    kFloat32 = 0,  // 24-bit significand, u = 2**-24: rungs 8-14 (ordinary FMA units)
    kTF32 = 1,     // float32 with the significand cut to 11 bits, u = 2**-11: rung 15 on float32 data
    kBF16 = 2,     // bfloat16, 8-bit significand, u = 2**-8: rungs 15 and 16
};

// The precision a rung computes in when the caller does not say
// (kFloat32 for 8-14, kTF32 for 15, kBF16 for 16).
int default_precision(int rung);

// Why `rung` cannot compute in `precision` on the current device (a sentence),
// or nullptr when it can.  Rungs 8-14 are float32 only; rung 15 needs
// compute capability 8.0 or newer; rung 16 needs a Hopper GPU (9.0) and a
// build with an sm_90a target.
const char* rung_unavailable(int rung, int precision);

// "cuda_naive" ... for a rung, nullptr for anything else.
const char* rung_name(int rung);

// C = alpha op(A) op(B) + beta C on `rung`, asynchronously on `stream`.
// Handles the empty and k == 0 cases, decides vec_a/vec_b/vec_c, and returns
// the launch's error code (cudaSuccess when nothing was wrong at launch).
// The caller has checked the shapes, the pointers and the rung.
cudaError_t gemm(int rung, GemmArgs g, cudaStream_t stream);

// One launcher per rung, for m, n, k >= 1 and alpha != 0 (gemm() calls them).
cudaError_t launch_naive(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_coalesced(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_smem(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_1d_tiling(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_2d_tiling(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_vectorized(const GemmArgs& g, cudaStream_t stream);
cudaError_t launch_warptile(const GemmArgs& g, cudaStream_t stream);

// The tensor-core rungs take their operands prepared by tensor_core.cu:
// both K-major (the k index contiguous), in the rung's element type
// (bfloat16 as uint16_t bits, or float32 for TF32), each 16-byte aligned
// with a row stride of a multiple of 16 bytes -- what cp.async, ldmatrix and
// TMA need -- whatever layout and alignment the caller's matrices have.
struct TcArgs {
    GemmArgs g;            // m, n, k, alpha, beta, C, the epilogue, precision (g.a and g.b are not used)
    const void* a = nullptr;  // op(A): (m, k) row-major, row stride lda elements
    long long lda = 0;
    const void* b = nullptr;  // op(B) transposed: (n, k) row-major, row stride ldb elements
    long long ldb = 0;
};
cudaError_t tensor_core_gemm(int rung, const GemmArgs& g, cudaStream_t stream);  // prepares, then launches
cudaError_t launch_mma(const TcArgs& t, cudaStream_t stream);    // kTF32 (float) or kBF16 (uint16_t) operands
cudaError_t launch_wgmma(const TcArgs& t, cudaStream_t stream);  // kBF16 operands only
// Why rung 16 cannot run here (no sm_90a code in this build, not a Hopper
// GPU, no driver entry point for TMA descriptors), or nullptr.
const char* wgmma_unavailable();

}  // namespace gpu
}  // namespace whygpu
