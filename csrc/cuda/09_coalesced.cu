// 09_coalesced.cu -- CUDA rung 9: coalesced global memory access.
//
// What it changes from rung 8: only which thread gets which element.  Now
// threadIdx.x runs along a *row* of C (j = ... + threadIdx.x), so the 32
// threads of a warp read 32 neighbouring elements of a row of B -- one
// 128-byte transaction instead of 32 -- all read the same element of A (a
// broadcast), and write 32 neighbouring elements of C.  Same arithmetic, same
// number of loads; the memory system just does far less work per load.
//
// (With trans_b the neighbours of B's row are no longer neighbours in memory
// and the loads of B are scattered again: the tiled rungs fix that for every
// layout by staging tiles in shared memory.)
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int kTile = 32;

__global__ void coalesced_kernel(GemmArgs g) {
    const int tiles_n = detail::ceil_div(g.n, kTile);
    const int i = (blockIdx.x / tiles_n) * kTile + threadIdx.y;  // row of C
    const int j = (blockIdx.x % tiles_n) * kTile + threadIdx.x;  // column of C: varies across a warp
    if (i >= g.m || j >= g.n) return;
    float acc = 0.f;
    for (int p = 0; p < g.k; ++p) acc += detail::a_elem(g, i, p) * detail::b_elem(g, p, j);
    detail::c_store(g, i, j, acc);
}

}  // namespace

cudaError_t launch_coalesced(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, kTile) * detail::ceil_div(g.n, kTile);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    coalesced_kernel<<<(unsigned)blocks, dim3(kTile, kTile), 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
