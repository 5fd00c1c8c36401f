// 14_warptile.cu -- CUDA rung 14: warp tiling and double buffering.
//
// What it changes from rung 13 (same 128 x 128 block tile, 8 x 8 outputs per
// thread, float4 everywhere):
//
//  1. Warp tiling.  The 8 warps of the block each own a 64 x 32 piece of the
//     tile, and inside it a thread owns 2 x 2 blocks of 4 x 4 outputs spread
//     32 rows and 16 columns apart, rather than one contiguous 8 x 8 block.
//     At each step p the 32 threads of a warp then read, for A, eight
//     neighbouring float4s (128 contiguous bytes: one shared-memory
//     wavefront, no bank conflicts) and for B four (64 bytes), instead of
//     the 16 float4s 32 bytes apart of rung 13; and neighbouring threads
//     write neighbouring float4s of C.  This is the layout CUTLASS-style
//     SIMT kernels use: the warp, not the thread, is the unit of tiling.
//  2. Double buffering.  Two copies of each shared tile: while the block
//     multiplies tile t out of one, the global loads of tile t+1 are already
//     in flight (into registers); halfway through the arithmetic, when they
//     have arrived, they are stored into the other copy.  Memory latency hides
//     behind the FMAs, and one __syncthreads per k-step suffices instead of
//     two.  (Storing halfway, not at the end, frees those registers early:
//     the kernel fits in 128 registers, so two blocks share each SM.)
//  3. A grouped block order: blocks are numbered down groups of 8
//     block-rows, so the blocks running at the same time share their A and
//     B panels in the L2 cache.
//  4. Split-k for shapes with few tiles of C and a long k -- a training
//     step's weight gradients, dW = dY^T X, whose k is the batch: a 10 x 256
//     gradient over a batch of 8192 has 2 tiles of C, so 2 of 132 SMs would
//     work through all 8192 steps of k while the rest idled.  k is cut into
//     slices (blockIdx.y), each block sums its slice into a workspace, and a
//     second kernel adds the slices in a fixed order (deterministic results)
//     and applies alpha and beta.  Chosen per call from the shape and the
//     number of SMs (choose_splits); GemmArgs::split_k forces it.
#include <algorithm>
#include <cstddef>

#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int BM = 128, BN = 128, BK = 8;
constexpr int kThreads = 256;                    // 8 warps
constexpr int WARPS_N = 4;                       // 2 x 4 warps
constexpr int WM = 64, WN = 32;                  // each warp's piece of the block tile
constexpr int kPad = 132;                        // shared row stride: 33 x 16 bytes
constexpr int kGroupM = 8;                       // block-rows per group (L2 reuse)
constexpr int kLoads = BM * BK / 4 / kThreads;  // float4s of A (and of B) per thread per tile: 1
static_assert(BM * BK == BN * BK && kLoads * kThreads * 4 == BM * BK, "tile copy shares");
static_assert((BM / WM) * (BN / WN) * 32 == kThreads, "8 warps of 32 threads");

struct Stage {  // one tile of A and one of B, in registers between the global load and the shared store
    float4 a[kLoads], b[kLoads];
};

// Global -> registers: tile (p0) of op(A) (BM x BK at i0) and op(B) (BK x BN at j0).
// The thread -> element map follows each operand's contiguous direction (as in rung 13).
__device__ __forceinline__ void load_stage(const GemmArgs& g, int i0, int j0, int p0, int tid, Stage& s) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
        const int idx = tid + l * kThreads;
        if (!g.trans_a) {  // A stored (m, k): along k
            const int r = idx / (BK / 4), c = (idx % (BK / 4)) * 4;
            s.a[l] = detail::load4(g.a, g.lda, g.m, g.k, i0 + r, p0 + c, g.vec_a);
        } else {           // A stored (k, m): along m
            const int p = idx / (BM / 4), r = (idx % (BM / 4)) * 4;
            s.a[l] = detail::load4(g.a, g.lda, g.k, g.m, p0 + p, i0 + r, g.vec_a);
        }
        if (!g.trans_b) {  // B stored (k, n): along n
            const int p = idx / (BN / 4), c = (idx % (BN / 4)) * 4;
            s.b[l] = detail::load4(g.b, g.ldb, g.k, g.n, p0 + p, j0 + c, g.vec_b);
        } else {           // B stored (n, k): along k
            const int c = idx / (BK / 4), p = (idx % (BK / 4)) * 4;
            s.b[l] = detail::load4(g.b, g.ldb, g.n, g.k, j0 + c, p0 + p, g.vec_b);
        }
    }
}

// Registers -> shared: As[p][r] (A transposed) and Bs[p][c], the same maps as load_stage.
__device__ __forceinline__ void store_stage(const GemmArgs& g, const Stage& s, int tid, float* As, float* Bs) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
        const int idx = tid + l * kThreads;
        if (!g.trans_a) {
            const int r = idx / (BK / 4), c = (idx % (BK / 4)) * 4;
            As[(c + 0) * kPad + r] = s.a[l].x;
            As[(c + 1) * kPad + r] = s.a[l].y;
            As[(c + 2) * kPad + r] = s.a[l].z;
            As[(c + 3) * kPad + r] = s.a[l].w;
        } else {
            const int p = idx / (BM / 4), r = (idx % (BM / 4)) * 4;
            *reinterpret_cast<float4*>(&As[p * kPad + r]) = s.a[l];
        }
        if (!g.trans_b) {
            const int p = idx / (BN / 4), c = (idx % (BN / 4)) * 4;
            *reinterpret_cast<float4*>(&Bs[p * kPad + c]) = s.b[l];
        } else {
            const int c = idx / (BK / 4), p = (idx % (BK / 4)) * 4;
            Bs[(p + 0) * kPad + c] = s.b[l].x;
            Bs[(p + 1) * kPad + c] = s.b[l].y;
            Bs[(p + 2) * kPad + c] = s.b[l].z;
            Bs[(p + 3) * kPad + c] = s.b[l].w;
        }
    }
}

// Split-k: blockIdx.y picks a slice of `slice_tiles` k-tiles.  With one slice
// the block writes C; with several, each writes its partial product to its
// own (m, n) matrix of the workspace `ws` and splitk_reduce_kernel sums them.
__global__ void __launch_bounds__(kThreads, 2) warptile_kernel(GemmArgs g, int slice_tiles, float* ws) {
    __shared__ __align__(16) float As[2][BK * kPad];  // As[buf][p][r] = op(A)[i0 + r, p0 + p]
    __shared__ __align__(16) float Bs[2][BK * kPad];  // Bs[buf][p][c] = op(B)[p0 + p, j0 + c]

    // Grouped block order: consecutive blocks walk down kGroupM block-rows, then
    // move one block-column right.
    const int tiles_m = detail::ceil_div(g.m, BM), tiles_n = detail::ceil_div(g.n, BN);
    const int pid = blockIdx.x;
    const int per_group = kGroupM * tiles_n;
    const int first_m = (pid / per_group) * kGroupM;
    const int rows_here = min(tiles_m - first_m, kGroupM);
    const int bm = first_m + (pid % per_group) % rows_here;
    const int bn = (pid % per_group) / rows_here;
    const int i0 = bm * BM, j0 = bn * BN;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wr = (warp / WARPS_N) * WM, wc = (warp % WARPS_N) * WN;  // the warp's piece
    const int lr = (lane / 4) * 4, lc = (lane % 4) * 4;                // the thread's 4 x 4 origin in it
    // This thread's outputs: rows wr + {0, 32} + lr + 0..3, columns wc + {0, 16} + lc + 0..3.

    const int ktiles = detail::ceil_div(g.k, BK);
    const int t_begin = blockIdx.y * slice_tiles;             // this block's k-tiles: [t_begin, t_end)
    const int t_end = min(ktiles, t_begin + slice_tiles);     // (the launcher leaves no slice empty)

    float acc[8][8] = {};
    Stage stage;
    load_stage(g, i0, j0, t_begin * BK, tid, stage);
    store_stage(g, stage, tid, As[0], Bs[0]);
    __syncthreads();

    for (int t = t_begin; t < t_end; ++t) {
        const int cur = (t - t_begin) & 1;
        const bool more = t + 1 < t_end;
        if (more) load_stage(g, i0, j0, (t + 1) * BK, tid, stage);  // in flight during the FMAs below
        const float* as = As[cur];
        const float* bs = Bs[cur];
#pragma unroll
        for (int p = 0; p < BK; ++p) {
            // The other buffer was last read in step t-1, and every thread has
            // passed that step's barrier: it is free to overwrite.
            if (p == BK / 2 && more) store_stage(g, stage, tid, As[cur ^ 1], Bs[cur ^ 1]);
            const float4 a0 = *reinterpret_cast<const float4*>(&as[p * kPad + wr + lr]);
            const float4 a1 = *reinterpret_cast<const float4*>(&as[p * kPad + wr + 32 + lr]);
            const float4 b0 = *reinterpret_cast<const float4*>(&bs[p * kPad + wc + lc]);
            const float4 b1 = *reinterpret_cast<const float4*>(&bs[p * kPad + wc + 16 + lc]);
            const float a_reg[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b_reg[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int r = 0; r < 8; ++r)
#pragma unroll
                for (int c = 0; c < 8; ++c) acc[r][c] += a_reg[r] * b_reg[c];
        }
        __syncthreads();
    }

    GemmArgs out = g;  // where this block's sums go: C, or its slice's matrix of the workspace
    if (ws != nullptr) {
        out.c = ws + blockIdx.y * (long long)g.m * g.n;  // (m, n), row stride n
        out.ldc = g.n;
        out.alpha = 1.f;
        out.beta = 0.f;
        out.bias = nullptr;  // the epilogue belongs to the sum of the slices (splitk_reduce_kernel)
        out.relu = false;
        out.vec_c = g.n % 4 == 0;  // ws is 256-byte aligned: rows are 16-byte aligned when n % 4 == 0
    }
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        const int i = i0 + wr + (r / 4) * 32 + lr + (r % 4);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int j = j0 + wc + h * 16 + lc;
            detail::c_store4(out, i, j, make_float4(acc[r][4 * h], acc[r][4 * h + 1], acc[r][4 * h + 2],
                                                    acc[r][4 * h + 3]));
        }
    }
}

// C = alpha * (sum over the slices of ws) + beta * C, the slices added in order
// (deterministic: the same result every run, unlike atomic adds into C).
__global__ void splitk_reduce_kernel(GemmArgs g, const float* ws, int splits) {
    const long long total = (long long)g.m * g.n;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        float sum = 0.f;
        for (int z = 0; z < splits; ++z) sum += ws[z * total + e];
        detail::c_store(g, (int)(e / g.n), (int)(e % g.n), sum);
    }
}

constexpr int kMinSliceTiles = 32;  // at least 256 of k per slice: the partial sums' traffic stays small
constexpr int kMaxSplits = 16;

// How many slices of k: enough blocks to give every SM two (the kernel fits
// two per SM), when C has too few tiles to do so and k is long enough to cut.
int choose_splits(const GemmArgs& g, long long tiles, int ktiles) {
    if (g.split_k >= 1) return min(g.split_k, ktiles);
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1) {
        cudaGetLastError();
        return 1;
    }
    const long long slots = 2LL * sms;
    if (tiles >= slots) return 1;
    const long long want = (slots + tiles - 1) / tiles;
    return (int)std::max(1LL, std::min({want, (long long)(ktiles / kMinSliceTiles), (long long)kMaxSplits}));
}

}  // namespace

cudaError_t launch_warptile(const GemmArgs& g, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(g.m, BM) * detail::ceil_div(g.n, BN);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    const int ktiles = detail::ceil_div(g.k, BK);
    int splits = choose_splits(g, blocks, ktiles);
    const int slice_tiles = detail::ceil_div(ktiles, splits);
    splits = detail::ceil_div(ktiles, slice_tiles);  // no empty slice
    float* ws = nullptr;
    if (splits > 1) {
        // Stream-ordered: allocated, used and freed in issue order, no synchronisation.
        const std::size_t bytes = (std::size_t)splits * g.m * g.n * sizeof(float);
        if (cudaMallocAsync(reinterpret_cast<void**>(&ws), bytes, stream) != cudaSuccess) {
            cudaGetLastError();  // no memory pool, or no memory: compute without splitting
            ws = nullptr;
            splits = 1;
        }
    }
    warptile_kernel<<<dim3((unsigned)blocks, (unsigned)splits), kThreads, 0, stream>>>(
        g, splits > 1 ? slice_tiles : ktiles, ws);
    cudaError_t e = cudaGetLastError();
    if (ws != nullptr) {
        if (e == cudaSuccess) {
            const long long total = (long long)g.m * g.n;
            const long long rblocks = min((total + 255) / 256, 65535LL);
            splitk_reduce_kernel<<<(unsigned)rblocks, 256, 0, stream>>>(g, ws, splits);
            e = cudaGetLastError();
        }
        const cudaError_t f = cudaFreeAsync(ws, stream);
        if (e == cudaSuccess) e = f;
    }
    return e;
}

}  // namespace gpu
}  // namespace whygpu
