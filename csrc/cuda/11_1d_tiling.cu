// 11_1d_tiling.cu -- CUDA rung 11: 1-D register tiling (several outputs per thread).
//
// What it changes from rung 10: in rung 10 each multiply-add needs two
// shared-memory loads, and shared memory, fast as it is, becomes the limit.
// Here each thread computes a column of TM = 8 elements of C.  For every step
// p it loads one value of op(B) into a register and reuses it for 8
// multiply-adds with 8 values of op(A): 9 shared loads per 8 FMAs instead of
// 16.  The block tile grows to 64 x 64 of C (512 threads) with a k-step of 8.
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int BM = 64, BN = 64, BK = 8, TM = 8;
constexpr int kThreads = BM * BN / TM;  // 512: one thread per column of 8 outputs
constexpr int kPadA = BK + 1;           // As row stride: transposed copies avoid bank conflicts
constexpr int kPadB = BN + 1;

__global__ void __launch_bounds__(kThreads) tiling_1d_kernel(GemmArgs g) {
    __shared__ float As[BM * kPadA];  // As[r][p] = op(A)[i0 + r, p0 + p]
    __shared__ float Bs[BK * kPadB];  // Bs[p][c] = op(B)[p0 + p, j0 + c]

    const int tiles_n = detail::ceil_div(g.n, BN);
    const int i0 = (blockIdx.x / tiles_n) * BM, j0 = (blockIdx.x % tiles_n) * BN;
    const int tid = threadIdx.x;
    const int tx = tid % BN;  // this thread's column of the tile: varies across a warp
    const int ty = tid / BN;  // its group of TM rows: rows ty*TM .. ty*TM + TM-1 (same for a warp)

    float acc[TM] = {};
    for (int p0 = 0; p0 < g.k; p0 += BK) {
        detail::load_tile<BM, BK, kThreads, kPadA, 1>(g.a, g.lda, g.trans_a, g.m, g.k, i0, p0, As, tid);
        detail::load_tile<BK, BN, kThreads, kPadB, 1>(g.b, g.ldb, g.trans_b, g.k, g.n, p0, j0, Bs, tid);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < BK; ++p) {
            const float b = Bs[p * kPadB + tx];  // one load of B ...
#pragma unroll
            for (int r = 0; r < TM; ++r) acc[r] += As[(ty * TM + r) * kPadA + p] * b;  // ... reused TM times
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < TM; ++r) {
        const int i = i0 + ty * TM + r, j = j0 + tx;
        if (i < g.m && j < g.n) detail::c_store(g, i, j, acc[r]);
    }
}

}  // namespace

cudaError_t launch_1d_tiling(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, BM) * detail::ceil_div(g.n, BN);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    tiling_1d_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
