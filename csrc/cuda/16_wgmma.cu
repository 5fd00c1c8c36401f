// 16_wgmma.cu -- CUDA rung 16: Hopper tensor cores the Hopper way (sm_90a only).
//
// Rung 15 feeds the tensor cores like any other unit: every warp loads its
// fragments from shared memory into registers (ldmatrix) and issues small
// synchronous mma.sync instructions (16 x 8 x 16), and the same threads also
// copy the next tiles in (cp.async) and compute addresses.  On a Hopper GPU
// that bookkeeping, not the tensor cores, is the limit: H100/H200 tensor cores
// are about twice as fast as Ampere's per SM, and mma.sync cannot keep them
// busy.  Hopper adds three things, and this rung uses all three:
//
//  1. wgmma.mma_async: one instruction for a whole warpgroup (4 warps, 128
//     threads) that multiplies a 64 x 256 x 16 piece straight out of shared
//     memory -- the operands never pass through registers, only the float32
//     accumulators live there -- and runs asynchronously: the warps issue a
//     k-tile's four wgmmas, commit them as a group, and wait for the group
//     only when they need its shared memory back.  Each operand tile is
//     described to the tensor core by a 64-bit shared-memory descriptor
//     (wgmma_host.h).
//  2. TMA, the Tensor Memory Accelerator: one thread hands the hardware a
//     tensor map (the matrix's address, shape and stride, made on the host by
//     cuTensorMapEncodeTiled) and the coordinates of a tile, and the copy
//     engine moves the whole 128 x 64 or 256 x 64 tile into shared memory by
//     itself, already in the 128-byte swizzled layout wgmma reads without bank
//     conflicts, with zeros where the tile sticks out of the matrix -- the edge
//     handling of the earlier rungs, done by hardware.  It reports completion
//     on an mbarrier (a shared-memory barrier that counts arrivals *and* bytes).
//  3. Warp specialization: one warpgroup only moves data (the producer: a single
//     elected thread issues all the TMA copies), two warpgroups only compute
//     (the consumers).  They talk through a ring of kStages shared buffers with
//     two mbarriers each: "full" (the producer announces the bytes it expects;
//     TMA completes them) and "empty" (every consumer warp arrives once it has
//     finished reading).  The producer runs up to kStages k-tiles ahead, so
//     memory latency is hidden without the consumers ever issuing a load.
//     setmaxnreg moves registers from the producer (which needs almost none)
//     to the consumers, whose accumulators need 128 per thread.
//
// Tile shape: 128 x 256 per block, BK = 64.  Each consumer warpgroup owns a
// 64 x 256 half and issues m64n256k16, the largest wgmma (N = 256 reads each
// row of A from shared memory once per 256 columns instead of once per 128).
// Per k-tile the block loads (128 + 256) x 64 bf16 = 48 KiB for 128 x 256 x 64
// multiply-adds: 85 FLOP per byte of shared memory filled, against 64 for a
// 128 x 128 tile -- the bandwidth TMA and shared memory must supply falls by a
// quarter, which is what lets the tensor cores stay busy at cuBLAS speed.  The
// price is 128 accumulator registers per consumer thread, and one block per
// SM (four 48 KiB stages = 192 KiB of shared memory).  BK = 64 bf16 is 128
// bytes, exactly one row of the 128-byte swizzle pattern.
//
// The kernel is persistent: one block per SM walks over the output tiles in
// a grouped order (8 block-rows at a time, so the tiles in flight share their
// A and B panels in L2), and the producer keeps loading the next tile's
// k-tiles while the consumers store the previous one (the ring's phases run on
// across tiles).  The epilogue goes straight from the accumulator registers
// to global memory through detail::c_store (alpha, beta, bias, relu, the i < m,
// j < n guards), two neighbouring floats at a time where C allows it.
//
// Operands: t.a is op(A) as (m, k) and t.b is op(B)^T as (n, k), both
// bfloat16 and K-major (tensor_core.cu prepares them), so neither wgmma
// operand needs its transpose bit.  This file is compiled for sm_90a alone
// (CMakeLists.txt, WHYGPU_HAVE_SM90A): wgmma and setmaxnreg exist in no other
// target, not even sm_100.  Without that macro (an older nvcc, the CUDA
// emulation) it compiles to stubs that report the rung unavailable.
#include <cstdint>
#include <cstdio>

#include "common.cuh"
#include "wgmma_host.h"

#if defined(WHYGPU_HAVE_SM90A) && WHYGPU_HAVE_SM90A == 1 && !defined(WHYGPU_CUDA_EMULATION)
#define WHYGPU_WGMMA_REAL 1
#include <cuda.h>  // CUtensorMap and the driver's enums only: libcuda is not linked (see encode_fn)
#else
#define WHYGPU_WGMMA_REAL 0
#endif

namespace whygpu {
namespace gpu {

#if WHYGPU_WGMMA_REAL
namespace {

constexpr int BM = 128, BN = 256, BK = 64;  // block tile; BK * 2 bytes = one 128-byte swizzle row
constexpr int kConsumers = 2;               // consumer warpgroups, 64 rows of the tile each
constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0 produces, 1..2 consume
constexpr int kStages = 4;                  // k-tiles in flight in the ring
constexpr int kGroupM = 8;                  // block-rows per group of the tile order (L2 reuse)
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // setmaxnreg: 128 x 40 + 256 x 232 = the block's pool
constexpr int kBlocksPerSm = 1;                         // __launch_bounds__(kThreads, kBlocksPerSm)
constexpr int kRegisterFile = 64 * 1024;                // 32-bit registers per SM (compute capability 9.0)
constexpr int kRegAllocUnit = 8;                        // ptxas gives a thread a multiple of 8 registers
// The registers each thread is launched with: the launch bounds cap a thread at
// its share of the register file, rounded down to the allocation unit --
// 65,536 / 384 = 170.7 -> 168 (a kernel using setmaxnreg gets that maximum).
constexpr int kLaunchRegs = kRegisterFile / (kThreads * kBlocksPerSm) / kRegAllocUnit * kRegAllocUnit;
constexpr uint32_t kTileABytes = BM * BK * 2;             // 16 KiB
constexpr uint32_t kTileBBytes = BN * BK * 2;             // 32 KiB
constexpr uint32_t kStageBytes = kTileABytes + kTileBBytes;  // what TMA delivers per k-tile (boxes are always full)
constexpr uint32_t kBarrierBytes = 2 * kStages * 8;       // full[] and empty[], 8 bytes each
constexpr uint32_t kSmemBytes =  // 193 KiB: the ring, the barriers, and slack to align the base to 1024 bytes
    wgmma_host::kSw128AtomBytes + kStages * kStageBytes + kBarrierBytes;
static_assert(BK * 2 == (int)wgmma_host::kSw128RowBytes && BK == (int)wgmma_host::kBoxK,
              "a tile row is one swizzle row");
static_assert(BM == 64 * kConsumers, "each consumer warpgroup owns 64 rows (wgmma's M)");
static_assert(BM <= 256 && BN <= 256, "a TMA box has at most 256 rows");
static_assert(kTileABytes % wgmma_host::kSw128AtomBytes == 0 && kTileBBytes % wgmma_host::kSw128AtomBytes == 0,
              "every tile starts on the swizzle pattern's 1024-byte period");
// setmaxnreg only moves registers between the warpgroups of one block: .dec
// gives a warpgroup's registers back to the block's pool, .inc waits until the
// pool can supply its request.  The pool is what the block was launched with,
// kThreads x kLaunchRegs = 64,512 registers, not the SM's 65,536: checked
// against the latter, a split in between (kProducerRegs = 48, say) would
// compile, and then hang in setmaxnreg.inc.
static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= kThreads * kLaunchRegs,
              "setmaxnreg: the warpgroups' registers must fit the block's pool (kThreads x kLaunchRegs)");
static_assert(kProducerRegs % kRegAllocUnit == 0 && kConsumerRegs % kRegAllocUnit == 0 && kProducerRegs >= 24 &&
                  kConsumerRegs <= 256,
              "setmaxnreg takes a multiple of 8 in [24, 256]");
static_assert(kSmemBytes <= 227 * 1024, "Hopper's per-block shared memory");

// ---- Thin PTX wrappers (sm_90a; all shared addresses are 32-bit .shared::cta) -------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// One arrival (the consumers' "I am done with this stage").
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival plus `bytes` of expected transactions: the phase completes when
// the arrival count is reached *and* TMA has delivered that many bytes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase of parity `parity` has completed.  A fresh barrier is
// in phase 0, and the phase "before" it (parity 1) counts as complete: that is
// how the producer's first pass over the empty barriers goes straight through.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}

// TMA: the box of `map` whose first element is (k = c0, row = c1) -> shared `dst`,
// completion (in bytes) reported on `bar`.  Out-of-bounds elements arrive as zeros,
// and still count in the byte total.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n"
        :
        : "r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// wgmma bookkeeping.  fence: the accumulator registers were written by ordinary
// instructions (zeroing) and wgmma may now read them; commit: close the group of
// wgmmas issued so far; wait<N>: at most N groups may still be running.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Tells the compiler the accumulators change here, so it neither reads them
// before a wgmma_wait nor moves them around while a wgmma is writing them.
__device__ __forceinline__ void fence_acc(float (&d)[128]) {
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// D (64 x 256, float32) += A (64 x 16, from shared memory) * B (16 x 256, from
// shared memory, stored as 256 rows of k), for one warpgroup.  D fragment: in
// warp w of the warpgroup, lane l = 4 r + q holds, for column block i = 0..31,
// d[4i + 0..1] = D[16 w + r, 8 i + 2 q + 0..1] and d[4i + 2..3] = D[16 w + r + 8, ...]
// (the mma.sync m16n8 accumulator layout, repeated over 32 column blocks).
// The immediates: scale-d 1 (accumulate), scale-a/b 1 (no negation), and
// transpose-a/b 0 (both operands K-major).
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16\n"
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},\n"
        " %128, %129, 1, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
          "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
          "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
          "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
          "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
          "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),
          "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]),
          "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
          "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b));
}

// The output tile of the `tile`-th step of the grouped order: consecutive
// tiles walk down kGroupM block-rows, then move one block-column right.
__device__ __forceinline__ void tile_origin(int tile, int tiles_m, int tiles_n, int& i0, int& j0) {
    const int per_group = kGroupM * tiles_n;
    const int first_m = (tile / per_group) * kGroupM;
    const int rows_here = min(tiles_m - first_m, kGroupM);
    i0 = (first_m + (tile % per_group) % rows_here) * BM;
    j0 = ((tile % per_group) / rows_here) * BN;
}

// C[i, j .. j+1] from two accumulators: one 8-byte store when C allows it (vec2:
// C 8-byte aligned, ldc even -- j is always even here) and both are inside.
__device__ __forceinline__ void store2(const GemmArgs& g, int i, int j, float v0, float v1, bool vec2) {
    if (i >= g.m || j >= g.n) return;
    if (vec2 && j + 1 < g.n) {
        float2* p = reinterpret_cast<float2*>(g.c + (long long)i * g.ldc + j);
        float2 out = make_float2(g.alpha * v0, g.alpha * v1);
        if (g.beta != 0.f) {
            const float2 old = *p;
            out.x += g.beta * old.x;
            out.y += g.beta * old.y;
        }
        *p = make_float2(detail::epilogue(g, j, out.x), detail::epilogue(g, j + 1, out.y));
        return;
    }
    detail::c_store(g, i, j, v0);
    if (j + 1 < g.n) detail::c_store(g, i, j + 1, v1);
}

// Shared memory, from a 1024-byte aligned base (the 128-byte swizzle repeats
// every 1024 bytes, and both TMA and the descriptors assume tiles start on it):
//   A[s]: BM x 64 bf16, row r at r * 128 bytes, 16-byte chunk c at chunk c ^ (r % 8)
//   B[s]: BN x 64 bf16, the same layout (B is stored as rows of k: K-major)
//   full[s], empty[s]: the mbarriers of stage s.
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    wgmma_kernel(const __grid_constant__ CUtensorMap map_a,  // op(A): (m, k) bf16, boxes 64 x BM
                 const __grid_constant__ CUtensorMap map_b,  // op(B)^T: (n, k) bf16, boxes 64 x BN
                 GemmArgs g, bool vec2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    const uint32_t base = (smem_u32(smem_raw) + wgmma_host::kSw128AtomBytes - 1) & ~(wgmma_host::kSw128AtomBytes - 1);
    const uint32_t a_tiles = base;                                   // kStages x kTileABytes
    const uint32_t b_tiles = base + kStages * kTileABytes;           // kStages x kTileBBytes
    const uint32_t full_bar = base + kStages * kStageBytes;          // kStages x 8 bytes
    const uint32_t empty_bar = full_bar + kStages * 8;               // kStages x 8 bytes

    const int tiles_m = detail::ceil_div(g.m, BM), tiles_n = detail::ceil_div(g.n, BN);
    const int tiles = tiles_m * tiles_n;  // < 2**31: the launcher checks
    const int ktiles = detail::ceil_div(g.k, BK);
    const int wg = threadIdx.x / 128;  // 0: producer, 1..kConsumers: consumers

    if (threadIdx.x == 0) {
        tma_prefetch_map(&map_a);
        tma_prefetch_map(&map_b);
        for (int s = 0; s < kStages; ++s) {
            mbar_init(full_bar + 8 * s, 1);                    // the producer's arrive.expect_tx (+ the bytes)
            mbar_init(empty_bar + 8 * s, 4 * kConsumers);      // one arrival per consumer warp
        }
        // Make the initialised barriers visible to the async proxy (TMA) too.
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        // ---- Producer: one thread issues every copy; the rest of the warpgroup leaves.
        setmaxnreg_dec<kProducerRegs>();
        if (threadIdx.x != 0) return;
        int stage = 0;
        uint32_t phase = 0;
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            int i0, j0;
            tile_origin(tile, tiles_m, tiles_n, i0, j0);
            for (int kt = 0; kt < ktiles; ++kt) {
                mbar_wait(empty_bar + 8 * stage, phase ^ 1);  // the consumers are done with this buffer
                mbar_arrive_expect_tx(full_bar + 8 * stage, kStageBytes);
                tma_load_2d(a_tiles + stage * kTileABytes, &map_a, kt * BK, i0, full_bar + 8 * stage);
                tma_load_2d(b_tiles + stage * kTileBBytes, &map_b, kt * BK, j0, full_bar + 8 * stage);
                if (++stage == kStages) { stage = 0; phase ^= 1; }
            }
        }
        return;
    }

    // ---- Consumers: warpgroup wg computes rows 64 (wg - 1) .. + 63 of each tile.
    setmaxnreg_inc<kConsumerRegs>();
    const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;  // warp within the warpgroup
    const uint32_t a_row_off = (wg - 1) * 64 * wgmma_host::kSw128RowBytes;  // 8 KiB: a multiple of 1024
    float d[128];
    int stage = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int i0, j0;
        tile_origin(tile, tiles_m, tiles_n, i0, j0);
#pragma unroll
        for (int r = 0; r < 128; ++r) d[r] = 0.f;
        int prev = -1;  // the stage whose wgmmas may still be reading it
        for (int kt = 0; kt < ktiles; ++kt) {
            mbar_wait(full_bar + 8 * stage, phase);  // TMA has delivered both tiles
            const uint64_t da = wgmma_host::kmajor_sw128_descriptor(a_tiles + stage * kTileABytes + a_row_off);
            const uint64_t db = wgmma_host::kmajor_sw128_descriptor(b_tiles + stage * kTileBBytes);
            fence_acc(d);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk)  // k step 16 = 32 bytes = 2 in the descriptor's 16-byte units
                wgmma_m64n256k16(d, da + 2 * kk, db + 2 * kk);
            wgmma_commit();
            fence_acc(d);
            // Keep this k-tile's group running; wait for the previous one, whose
            // stage can then go back to the producer.
            wgmma_wait<1>();
            fence_acc(d);
            if (prev >= 0 && lane == 0) mbar_arrive(empty_bar + 8 * prev);
            prev = stage;
            if (++stage == kStages) { stage = 0; phase ^= 1; }
        }
        wgmma_wait<0>();
        fence_acc(d);
        if (lane == 0) mbar_arrive(empty_bar + 8 * prev);

        // Epilogue: registers -> C (the producer is already filling the ring for the next tile).
        const int row = i0 + (wg - 1) * 64 + warp * 16 + lane / 4;
        const int col = j0 + 2 * (lane % 4);
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
            store2(g, row, col + 8 * i, d[4 * i + 0], d[4 * i + 1], vec2);
            store2(g, row + 8, col + 8 * i, d[4 * i + 2], d[4 * i + 3], vec2);
        }
    }
#else
    __trap();  // compiled for a target without wgmma: never launched (the launcher checks the device)
#endif
}

// cuTensorMapEncodeTiled, found in the driver at run time: the wheel links only
// the static CUDA runtime, never libcuda, so that it loads on machines without
// a GPU driver.  Looked up once (a function-local static: thread-safe).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encode_fn() {
    static const EncodeTiled fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        const cudaError_t e =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
#else
        const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q);
#endif
        if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            p = nullptr;
        }
        return reinterpret_cast<EncodeTiled>(p);
    }();
    return fn;
}

// The tensor map of a K-major bf16 matrix (rows, k), row stride ld, boxes of 64 x box_rows.
cudaError_t make_map(EncodeTiled encode, CUtensorMap* map, const void* x, long long rows, long long k, long long ld,
                     uint32_t box_rows) {
    if (wgmma_host::tma_invalid(reinterpret_cast<std::uintptr_t>(x), rows, k, ld, box_rows) != nullptr)
        return cudaErrorInvalidValue;
    const wgmma_host::TmaParams p = wgmma_host::kmajor_bf16_tma(rows, k, ld, box_rows);
    const cuuint64_t dims[2] = {p.global_dim[0], p.global_dim[1]};
    const cuuint64_t strides[1] = {p.global_stride[0]};
    const cuuint32_t box[2] = {p.box_dim[0], p.box_dim[1]};
    const cuuint32_t estr[2] = {p.element_stride[0], p.element_stride[1]};
    // 256-byte L2 promotion: each box row is 128 bytes, and neighbouring boxes
    // (the next k-tile) want the other half soon.  OOB fill NONE = zeros.
    const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(x), dims, strides, box,
                              estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

const char* wgmma_unavailable() {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        cudaGetLastError();
        return "cuda_wgmma found no usable CUDA device";
    }
    if (major != 9 || minor != 0) {
        // Per thread, so concurrent callers never share it; valid until this thread's next call.
        thread_local char why[128];
        std::snprintf(why, sizeof why,
                      "cuda_wgmma needs a Hopper GPU (compute capability 9.0, sm_90a code); this GPU is %d.%d", major,
                      minor);
        return why;
    }
    if (encode_fn() == nullptr)
        return "cuda_wgmma needs cuTensorMapEncodeTiled from the CUDA driver, and this driver has none "
               "(older than CUDA 12.0)";
    cudaFuncAttributes attr;
    if (cudaFuncGetAttributes(&attr, wgmma_kernel) != cudaSuccess) {
        cudaGetLastError();
        return "cuda_wgmma's sm_90a code cannot be loaded on this GPU";
    }
    return nullptr;
}

cudaError_t launch_wgmma(const TcArgs& t, cudaStream_t stream) {
    const GemmArgs& g = t.g;
    // (tensor_core_gemm, the only caller, has checked rung_unavailable(), hence wgmma_unavailable().)
    if (g.precision != kBF16 || t.a == nullptr || t.b == nullptr) return cudaErrorInvalidValue;
    const long long tiles = (long long)detail::ceil_div(g.m, BM) * detail::ceil_div(g.n, BN);
    if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;

    // Made per call (a few microseconds on the host) and passed by value as
    // __grid_constant__ parameters: nothing shared between calls or threads.
    const EncodeTiled encode = encode_fn();
    CUtensorMap map_a, map_b;
    cudaError_t e = make_map(encode, &map_a, t.a, g.m, g.k, t.lda, BM);
    if (e == cudaSuccess) e = make_map(encode, &map_b, t.b, g.n, g.k, t.ldb, BN);
    if (e != cudaSuccess) return e;

    int dev = 0, sms = 0;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
        return e;
    if ((e = cudaFuncSetAttribute(wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemBytes)) !=
        cudaSuccess)
        return e;
    // Persistent: one block per SM (the shared memory allows no second), or fewer when C has fewer tiles.
    const unsigned blocks = (unsigned)(tiles < sms ? tiles : sms);
    const bool vec2 = reinterpret_cast<std::uintptr_t>(g.c) % 8 == 0 && g.ldc % 2 == 0;
    wgmma_kernel<<<blocks, kThreads, kSmemBytes, stream>>>(map_a, map_b, g, vec2);
    return cudaGetLastError();
}

#else  // !WHYGPU_WGMMA_REAL: no sm_90a code in this build

const char* wgmma_unavailable() {
#if defined(WHYGPU_CUDA_EMULATION)
    return "the CUDA emulation cannot run wgmma or TMA";
#else
    return "this build has no sm_90a code (nvcc older than 12.0, or WHYGPU_CUDA_SM90A=OFF)";
#endif
}

cudaError_t launch_wgmma(const TcArgs&, cudaStream_t) { return cudaErrorInvalidValue; }

#endif  // WHYGPU_WGMMA_REAL

}  // namespace gpu
}  // namespace whygpu
