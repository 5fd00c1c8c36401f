// 12_2d_tiling.cu -- CUDA rung 12: 2-D register tiling (an 8 x 8 block of C per thread).
//
// What it changes from rung 11: each thread now computes an 8 x 8 block of C.
// For every step p it loads 8 values of op(A) and 8 of op(B) into registers
// and does all 64 multiply-adds of their outer product: 16 shared loads per
// 64 FMAs (rung 11: 9 per 8).  This is the GPU form of the CPU ladder's
// register-tiled micro-kernel (rung 6), and the point where the kernel stops
// waiting on memory and starts waiting on arithmetic.  The block tile is
// 128 x 128 of C (256 threads), k-step 8.
//
// The A tile is stored transposed in shared memory (As[p][i]), so the 8
// values of op(A) a thread needs at step p are neighbours, like those of B.
// Rows are padded from 128 to 132 floats: copying A's rows into columns then
// spreads a warp's stores over all 32 banks.
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int kThreads = (BM / TM) * (BN / TN);  // 256
constexpr int kPad = 132;                         // row stride of As and Bs

__global__ void __launch_bounds__(kThreads) tiling_2d_kernel(GemmArgs g) {
    __shared__ float As[BK * kPad];  // As[p][r] = op(A)[i0 + r, p0 + p]  (transposed)
    __shared__ float Bs[BK * kPad];  // Bs[p][c] = op(B)[p0 + p, j0 + c]

    const int tiles_n = detail::ceil_div(g.n, BN);
    const int i0 = (blockIdx.x / tiles_n) * BM, j0 = (blockIdx.x % tiles_n) * BN;
    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN);  // columns tx*TN .. +TN-1 of the tile
    const int ty = tid / (BN / TN);  // rows ty*TM .. +TM-1

    float acc[TM][TN] = {};
    float a_reg[TM], b_reg[TN];
    for (int p0 = 0; p0 < g.k; p0 += BK) {
        detail::load_tile<BM, BK, kThreads, 1, kPad>(g.a, g.lda, g.trans_a, g.m, g.k, i0, p0, As, tid);
        detail::load_tile<BK, BN, kThreads, kPad, 1>(g.b, g.ldb, g.trans_b, g.k, g.n, p0, j0, Bs, tid);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < BK; ++p) {
#pragma unroll
            for (int r = 0; r < TM; ++r) a_reg[r] = As[p * kPad + ty * TM + r];
#pragma unroll
            for (int c = 0; c < TN; ++c) b_reg[c] = Bs[p * kPad + tx * TN + c];
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
                for (int c = 0; c < TN; ++c) acc[r][c] += a_reg[r] * b_reg[c];
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < TM; ++r) {
        const int i = i0 + ty * TM + r;
#pragma unroll
        for (int c = 0; c < TN; ++c) {
            const int j = j0 + tx * TN + c;
            if (i < g.m && j < g.n) detail::c_store(g, i, j, acc[r][c]);
        }
    }
}

}  // namespace

cudaError_t launch_2d_tiling(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, BM) * detail::ceil_div(g.n, BN);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    tiling_2d_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
