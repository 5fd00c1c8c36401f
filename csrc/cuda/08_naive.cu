// 08_naive.cu -- CUDA rung 8 (the first GPU rung): one thread per element of C.
//
// What it changes from the CPU ladder: everything runs on the GPU, and the
// loop over (i, j) is gone -- each of m*n threads computes one dot product
// of a row of op(A) with a column of op(B), straight from global memory.
//
// What is still wrong, on purpose: threadIdx.x runs down a *column* of C
// (i = ... + threadIdx.x).  The 32 threads of a warp execute each load
// together; here they read A[i..i+31, p], 32 rows apart in memory, so every
// warp-wide load becomes 32 separate memory transactions, and the stores to
// C are scattered the same way.  Rung 9 swaps two indices and fixes that.
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int kTile = 32;  // a 32 x 32 block of threads per 32 x 32 tile of C

__global__ void naive_kernel(GemmArgs g) {
    // A 1-D grid of tiles (gridDim.y is limited to 65535, x to 2**31 - 1).
    const int tiles_n = detail::ceil_div(g.n, kTile);
    const int i = (blockIdx.x / tiles_n) * kTile + threadIdx.x;  // row of C: varies across a warp
    const int j = (blockIdx.x % tiles_n) * kTile + threadIdx.y;  // column of C
    if (i >= g.m || j >= g.n) return;
    float acc = 0.f;
    for (int p = 0; p < g.k; ++p) acc += detail::a_elem(g, i, p) * detail::b_elem(g, p, j);
    detail::c_store(g, i, j, acc);
}

}  // namespace

cudaError_t launch_naive(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, kTile) * detail::ceil_div(g.n, kTile);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    naive_kernel<<<(unsigned)blocks, dim3(kTile, kTile), 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
