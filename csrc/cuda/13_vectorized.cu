// 13_vectorized.cu -- CUDA rung 13: vectorized (float4) loads and stores.
//
// What it changes from rung 12: the same tiles and the same 8 x 8 outer
// products, but memory is moved 16 bytes at a time.  Each thread copies its
// share of a tile with one 128-bit global load (float4) per operand instead
// of four 32-bit ones, reads its 8 + 8 register values from shared memory as
// four float4s instead of sixteen floats, and writes C as float4s.  Fewer,
// wider instructions: less issue overhead, the same bytes.
//
// A float4 access needs a 16-byte aligned address, so it is used only when
// the matrix pointer is 16-byte aligned and its leading dimension a multiple
// of 4 (GemmArgs::vec_*), and all four elements are inside the matrix;
// everything else (the edges, odd leading dimensions) goes element by
// element.  Each operand has two copy paths, chosen by its layout, so that
// the global reads always run along contiguous memory: a row of A stored
// (m, k) is spread down a column of the transposed tile As, a row of A
// stored (k, m) is already a row of As.
#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int kThreads = (BM / TM) * (BN / TN);  // 256
constexpr int kPad = 132;                         // 132 floats = 33 x 16 bytes: rows stay float4-aligned
static_assert(BM * BK / 4 == kThreads && BN * BK / 4 == kThreads, "one float4 of A and of B per thread");

// Copy the BM x BK tile of op(A) at (i0, p0) into As[p][r] (transposed).
__device__ __forceinline__ void load_a_tile(const GemmArgs& g, int i0, int p0, float* As, int tid) {
    if (!g.trans_a) {  // A stored (m, k): a thread reads 4 neighbours along k of one row ...
        const int r = tid / (BK / 4), c = (tid % (BK / 4)) * 4;
        const float4 v = detail::load4(g.a, g.lda, g.m, g.k, i0 + r, p0 + c, g.vec_a);
        As[(c + 0) * kPad + r] = v.x;  // ... and writes them down a column of As
        As[(c + 1) * kPad + r] = v.y;
        As[(c + 2) * kPad + r] = v.z;
        As[(c + 3) * kPad + r] = v.w;
    } else {           // A stored (k, m): 4 neighbours along m, already a row of As
        const int p = tid / (BM / 4), r = (tid % (BM / 4)) * 4;
        *reinterpret_cast<float4*>(&As[p * kPad + r]) =
            detail::load4(g.a, g.lda, g.k, g.m, p0 + p, i0 + r, g.vec_a);
    }
}

// Copy the BK x BN tile of op(B) at (p0, j0) into Bs[p][c].
__device__ __forceinline__ void load_b_tile(const GemmArgs& g, int p0, int j0, float* Bs, int tid) {
    if (!g.trans_b) {  // B stored (k, n): 4 neighbours along n, a row of Bs
        const int p = tid / (BN / 4), c = (tid % (BN / 4)) * 4;
        *reinterpret_cast<float4*>(&Bs[p * kPad + c]) =
            detail::load4(g.b, g.ldb, g.k, g.n, p0 + p, j0 + c, g.vec_b);
    } else {           // B stored (n, k): 4 neighbours along k, down a column of Bs
        const int c = tid / (BK / 4), p = (tid % (BK / 4)) * 4;
        const float4 v = detail::load4(g.b, g.ldb, g.n, g.k, j0 + c, p0 + p, g.vec_b);
        Bs[(p + 0) * kPad + c] = v.x;
        Bs[(p + 1) * kPad + c] = v.y;
        Bs[(p + 2) * kPad + c] = v.z;
        Bs[(p + 3) * kPad + c] = v.w;
    }
}

__global__ void __launch_bounds__(kThreads) vectorized_kernel(GemmArgs g) {
    __shared__ __align__(16) float As[BK * kPad];  // As[p][r] = op(A)[i0 + r, p0 + p]
    __shared__ __align__(16) float Bs[BK * kPad];  // Bs[p][c] = op(B)[p0 + p, j0 + c]

    const int tiles_n = detail::ceil_div(g.n, BN);
    const int i0 = (blockIdx.x / tiles_n) * BM, j0 = (blockIdx.x % tiles_n) * BN;
    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);

    float acc[TM][TN] = {};
    for (int p0 = 0; p0 < g.k; p0 += BK) {
        load_a_tile(g, i0, p0, As, tid);
        load_b_tile(g, p0, j0, Bs, tid);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < BK; ++p) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[p * kPad + ty * TM]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[p * kPad + ty * TM + 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[p * kPad + tx * TN]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[p * kPad + tx * TN + 4]);
            const float a_reg[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b_reg[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
                for (int c = 0; c < TN; ++c) acc[r][c] += a_reg[r] * b_reg[c];
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < TM; ++r) {
        const int i = i0 + ty * TM + r, j = j0 + tx * TN;
        detail::c_store4(g, i, j, make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
        detail::c_store4(g, i, j + 4, make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]));
    }
}

}  // namespace

cudaError_t launch_vectorized(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, BM) * detail::ceil_div(g.n, BN);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    vectorized_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(g);
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
