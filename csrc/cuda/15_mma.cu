// 15_mma.cu -- CUDA rung 15: tensor cores, one warp at a time (mma.sync).
//
// What it changes from rung 14: the multiply-adds leave the ordinary FMA
// units.  A tensor core multiplies small matrices in one instruction: the
// 32 threads of a warp hand it a 16 x 16 piece of A and a 16 x 8 piece of B
// in bfloat16 (or 16 x 8 and 8 x 8 in TF32), spread over their registers,
// and get back the 16 x 8 product added into float32 accumulators.  That is
// 2 * 16 * 8 * 16 = 4096 flops per instruction where an FMA does 2 per
// thread (64 per warp); an H100/H200 has about 16 times more bf16
// tensor-core throughput than float32 FMA throughput.  The price is the
// precision of the operands: bfloat16 keeps 8 significant bits (relative
// error about 4e-3 per operand), TF32 keeps 11 (about 5e-4); the sums stay
// float32.  What a kernel must now do is keep the tensor cores fed:
//
//  1. ldmatrix.  The fragment layouts (ptx.cuh) scatter a 16 x 16 tile over
//     the warp: lane 4g + t holds row g and g + 8, columns 2t, 2t + 1,
//     2t + 8, 2t + 9.  One ldmatrix.x4 loads all of it from shared memory in
//     one instruction -- each lane names one 16-byte row, the hardware hands
//     the pieces to the lanes that need them -- instead of 8 separate loads.
//  2. A swizzled shared layout.  A tile row is 64 bytes (32 bf16 or 16
//     float32: the tile's k), 4 chunks of 16 bytes.  ldmatrix reads the same
//     chunk of 8 consecutive rows; stored plainly, rows r and r + 2 would be
//     128 bytes apart, in the same banks: a 4-way conflict.  Storing chunk c
//     of row r at position c ^ ((r / 2) % 4) puts the 8 reads in 8 different
//     16-byte bank groups (no padding, so 3 stages fit in 48 KB).
//  3. cp.async.  Tiles go from global to shared memory without passing
//     through registers, in a 3-stage pipeline: while the warps multiply
//     tile t, the copies of tiles t + 1 and t + 2 are in flight.  A copy
//     that sticks out of the matrix asks for fewer than 16 bytes and the
//     rest is filled with zeros: the edges cost nothing in the inner loop.
//  4. Bigger warp tiles.  4 warps, each 64 x 64 of the 128 x 128 block tile:
//     per 16-wide step of k a warp issues 8 ldmatrix for 32 mma
//     instructions (each fragment of A is used 8 times, each of B 4 times).
//
// The operands arrive K-major (A as (m, k), B as (n, k), both row-major,
// 16-byte aligned rows): tensor_core.cu rounds float32 data to bfloat16, and
// copies what is stored the other way, before the launch.  (ldmatrix.trans
// could read a bf16 tile the other way round, but not a TF32 one; one
// layout keeps this file about the tensor cores.)
#include <cstdint>

#include "common.cuh"
#include "ptx.cuh"

namespace whygpu {
namespace gpu {
namespace {

constexpr int BM = 128, BN = 128;                 // block tile of C
constexpr int kRowBytes = 64;                     // one tile row: the k-extent of a stage, in bytes
constexpr int kChunks = kRowBytes / 16;           // 16-byte chunks per tile row
constexpr int kStages = 3;                        // cp.async pipeline depth
constexpr int kThreads = 128;                     // 4 warps, 2 x 2
constexpr int WM = 64, WN = 64;                   // each warp's piece of the block tile
constexpr int kGroupM = 8;                        // block-rows per group (L2 reuse, as in rung 14)
constexpr int kTileBytes = BM * kRowBytes;        // 8 KB: one stage of A, and of B (BM == BN)
static_assert(BM == BN && (BM / WM) * (BN / WN) * 32 == kThreads, "4 warps tile the block");
static_assert(kStages * 2 * kTileBytes <= 48 * 1024, "static shared memory");

// Byte offset of chunk c (0..3) of row r in a swizzled tile.
__device__ __forceinline__ int swz(int r, int c) { return r * kRowBytes + ((c ^ ((r >> 1) & 3)) << 4); }

// The element type of a precision: bfloat16 bits, or float32 (rounded to TF32 in registers).
template <int P> struct Elem;
template <> struct Elem<kBF16> { using T = uint16_t; };
template <> struct Elem<kTF32> { using T = float; };

// cp.async of one stage: the rows x (kRowBytes of k) tile of a K-major operand x
// (rows x k, row stride ld elements) whose first element is (r0, p0).  128 rows x 4 chunks,
// 4 per thread; consecutive threads take consecutive chunks of a row (coalesced).
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ x, long long ld, int rows, int k, int r0, int p0,
                                          unsigned char* tile, int tid) {
    constexpr int E = 16 / sizeof(T);  // elements per chunk
#pragma unroll
    for (int q = 0; q < BM * kChunks / kThreads; ++q) {
        const int e = tid + q * kThreads, r = e / kChunks, c = e % kChunks;
        const int gr = r0 + r, gp = p0 + c * E;
        int bytes = 0;
        const T* src = x;  // a valid, aligned address even when nothing is read
        if (gr < rows && gp < k) {
            bytes = min(E, k - gp) * (int)sizeof(T);  // the rest of the chunk: zeros
            src = x + (long long)gr * ld + gp;
        }
        ptx::cp_async_16(tile + swz(r, c), src, bytes);
    }
}

template <int P>
__global__ void __launch_bounds__(kThreads) mma_kernel(TcArgs t) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // no bf16/TF32 mma.sync or cp.async before sm_80 (rung_unavailable refuses such GPUs first)
#else
    using T = typename Elem<P>::T;
    constexpr int BK = kRowBytes / sizeof(T);     // k per stage: 32 bf16 or 16 TF32
    // smem[s][0] = the A tile of stage s: rows i0 .. i0+127 of op(A), k p0 .. p0+BK-1;
    // smem[s][1] = the B tile: rows j0 .. j0+127 of op(B)^T (columns of C), same k.
    __shared__ __align__(128) unsigned char smem[kStages][2][kTileBytes];

    const GemmArgs& g = t.g;
    const T* __restrict__ a = static_cast<const T*>(t.a);  // (m, k), row stride t.lda
    const T* __restrict__ b = static_cast<const T*>(t.b);  // (n, k), row stride t.ldb

    // Grouped block order (rung 14): consecutive blocks share panels of A and B in L2.
    const int tiles_m = detail::ceil_div(g.m, BM), tiles_n = detail::ceil_div(g.n, BN);
    const int per_group = kGroupM * tiles_n;
    const int first_m = (blockIdx.x / per_group) * kGroupM;
    const int rows_here = min(tiles_m - first_m, kGroupM);
    const int i0 = (first_m + (blockIdx.x % per_group) % rows_here) * BM;
    const int j0 = ((blockIdx.x % per_group) / rows_here) * BN;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wr = (warp / 2) * WM, wc = (warp % 2) * WN;  // the warp's 64 x 64 piece

    // acc[mi][nj] = the 16 x 8 accumulator fragment at rows wr + 16 mi, columns wc + 8 nj.
    float acc[WM / 16][WN / 8][4] = {};

    const int ktiles = detail::ceil_div(g.k, BK);
    auto load_stage = [&](int kt) {
        unsigned char* s = &smem[kt % kStages][0][0];
        load_tile(a, t.lda, g.m, g.k, i0, kt * BK, s, tid);
        load_tile(b, t.ldb, g.n, g.k, j0, kt * BK, s + kTileBytes, tid);
    };
    // Prologue: stages 0 .. kStages-2 in flight (a group per stage, empty past the end
    // of k, so that "all but the newest kStages-2 groups" always means "up to tile kt").
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < ktiles) load_stage(s);
        ptx::cp_async_commit();
    }

    // Which row and chunk this lane names to ldmatrix (see the fragment maps in ptx.cuh):
    // for A, lanes 0-7 / 8-15 / 16-23 / 24-31 give rows 0-7 / 8-15 / 0-7 / 8-15 of a
    // 16-row slab, first chunk / first / second / second -> a[0..3]; for B (rows are
    // columns of C), rows 0-7 / 0-7 / 8-15 / 8-15, chunks first / second / first /
    // second -> b[0], b[1] of one 8-column tile, then b[0], b[1] of the next.
    const int a_row = (lane % 8) + 8 * ((lane / 8) % 2), a_chunk = lane / 16;
    const int b_row = (lane % 8) + 8 * (lane / 16), b_chunk = (lane / 8) % 2;

    for (int kt = 0; kt < ktiles; ++kt) {
        ptx::cp_async_wait<kStages - 2>();  // this thread's copies of tile kt have landed ...
        __syncthreads();                    // ... and everyone's; stage (kt-1) % 3 is free again
        if (kt + kStages - 1 < ktiles) load_stage(kt + kStages - 1);
        ptx::cp_async_commit();

        const unsigned char* as = &smem[kt % kStages][0][0];
        const unsigned char* bs = &smem[kt % kStages][1][0];
#pragma unroll
        for (int step = 0; step < kChunks / 2; ++step) {  // one mma k-step = 2 chunks (32 bytes of k)
            uint32_t af[WM / 16][4], bf[WN / 8][2];
#pragma unroll
            for (int mi = 0; mi < WM / 16; ++mi)
                ptx::ldmatrix_x4(af[mi], as + swz(wr + 16 * mi + a_row, 2 * step + a_chunk));
#pragma unroll
            for (int nj = 0; nj < WN / 8; nj += 2) {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, bs + swz(wc + 8 * nj + b_row, 2 * step + b_chunk));
                bf[nj][0] = r[0]; bf[nj][1] = r[1]; bf[nj + 1][0] = r[2]; bf[nj + 1][1] = r[3];
            }
            if (P == kTF32) {  // round the float32 operands to TF32 (nearest) rather than truncate
#pragma unroll
                for (int mi = 0; mi < WM / 16; ++mi)
#pragma unroll
                    for (int q = 0; q < 4; ++q) af[mi][q] = ptx::to_tf32(af[mi][q]);
#pragma unroll
                for (int nj = 0; nj < WN / 8; ++nj)
#pragma unroll
                    for (int q = 0; q < 2; ++q) bf[nj][q] = ptx::to_tf32(bf[nj][q]);
            }
#pragma unroll
            for (int mi = 0; mi < WM / 16; ++mi)
#pragma unroll
                for (int nj = 0; nj < WN / 8; ++nj) {
                    if (P == kBF16) ptx::mma_bf16_16816(acc[mi][nj], af[mi], bf[nj]);
                    else ptx::mma_tf32_1688(acc[mi][nj], af[mi], bf[nj]);
                }
        }
    }
    ptx::cp_async_wait<0>();  // (only empty groups remain; nothing may be in flight at exit)

    // Epilogue: lane 4g + tq holds rows g, g + 8 and columns 2tq, 2tq + 1 of each fragment.
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int mi = 0; mi < WM / 16; ++mi)
#pragma unroll
        for (int nj = 0; nj < WN / 8; ++nj)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int i = i0 + wr + 16 * mi + gq + 8 * (q / 2);
                const int j = j0 + wc + 8 * nj + 2 * tq + q % 2;
                if (i < g.m && j < g.n) detail::c_store(g, i, j, acc[mi][nj][q]);
            }
#endif
}

}  // namespace

cudaError_t launch_mma(const TcArgs& t, cudaStream_t stream) {
    const long long blocks = (long long)detail::ceil_div(t.g.m, BM) * detail::ceil_div(t.g.n, BN);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    if (t.g.precision == kBF16) mma_kernel<kBF16><<<(unsigned)blocks, kThreads, 0, stream>>>(t);
    else if (t.g.precision == kTF32) mma_kernel<kTF32><<<(unsigned)blocks, kThreads, 0, stream>>>(t);
    else return cudaErrorInvalidValue;
    return cudaGetLastError();
}

}  // namespace gpu
}  // namespace whygpu
