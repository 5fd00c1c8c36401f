// 10_smem.cu -- CUDA rung 10: shared-memory tiling.
//
// What it changes from rung 9: in rung 9 every thread reads its whole row of
// op(A) and column of op(B) from global memory, so each element of A is
// fetched n times and each element of B m times.  Here a block of 32 x 32
// threads first copies a 32 x 32 tile of op(A) and one of op(B) into shared
// memory (on-chip, ~100x the bandwidth), waits for all of them, and then
// every thread does 32 multiply-adds out of shared memory.  Each element
// loaded from global memory is now used 32 times: the GPU version of the CPU
// ladder's cache blocking (rung 5).
//
// The copy is arranged so that consecutive threads read consecutive
// addresses whichever way A and B are stored (detail::load_tile), and the
// tiles are padded to 33 columns so that a transposed copy does not make all
// 32 threads of a warp hit the same shared-memory bank.
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int kTile = 32;            // tile of C, and depth of the k-step
constexpr int kThreads = kTile * kTile;
constexpr int kPad = kTile + 1;      // row stride of the shared tiles (bank-conflict padding)

__global__ void __launch_bounds__(kThreads) smem_kernel(GemmArgs g) {
    __shared__ float As[kTile * kPad];  // As[r][p] = op(A)[i0 + r, p0 + p]
    __shared__ float Bs[kTile * kPad];  // Bs[p][c] = op(B)[p0 + p, j0 + c]

    const int tiles_n = detail::ceil_div(g.n, kTile);
    const int i0 = (blockIdx.x / tiles_n) * kTile, j0 = (blockIdx.x % tiles_n) * kTile;
    const int tid = threadIdx.x;
    const int tx = tid % kTile, ty = tid / kTile;  // this thread's element of the tile: C[i0+ty, j0+tx]

    float acc = 0.f;
    for (int p0 = 0; p0 < g.k; p0 += kTile) {
        // Zeros outside the matrices, so the loop below needs no guards.
        detail::load_tile<kTile, kTile, kThreads, kPad, 1>(g.a, g.lda, g.trans_a, g.m, g.k, i0, p0, As, tid);
        detail::load_tile<kTile, kTile, kThreads, kPad, 1>(g.b, g.ldb, g.trans_b, g.k, g.n, p0, j0, Bs, tid);
        __syncthreads();  // the tiles are complete
#pragma unroll
        for (int p = 0; p < kTile; ++p) acc += As[ty * kPad + p] * Bs[p * kPad + tx];
        __syncthreads();  // nobody still reads the tiles before the next copy overwrites them
    }
    if (i0 + ty < g.m && j0 + tx < g.n) detail::c_store(g, i0 + ty, j0 + tx, acc);
}

}  // namespace

cudaError_t launch_smem(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, kTile) * detail::ceil_div(g.n, kTile);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    smem_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
