// packed.h -- what rungs 6 (packed) and 7 (openmp) share: the micro-kernel
// contract, the per-CPU table of micro-kernels and block sizes, packing, and
// the "macro-kernel" that sweeps micro-tiles.  Read 06_packed.cpp first.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "gemm.h"

namespace whygpu {

// ---- CPU dispatch --------------------------------------------------------
// Which micro-kernels run is decided once at run time from cpuid (and the
// WHYGPU_ARCH environment variable), never by compiler flags on this file.
enum class Arch : int { portable = 0, avx2 = 1, avx512 = 2 };
const char* arch_name(Arch a);
bool arch_supported(Arch a);     // this CPU *and* this build can run it
Arch best_arch();                // the fastest supported one
Arch current_arch();             // what the packed kernels use now
void set_arch(Arch a);           // throws std::invalid_argument if unsupported
const char* arch_env_warning();  // non-empty if WHYGPU_ARCH asked for the impossible

// ---- The micro-kernel contract -------------------------------------------
// One call computes one MR x W tile of C (W = NR, or nr_narrow):
//   C_tile = alpha * A_panel * B_panel + beta * C_tile   (beta == 0 overwrites)
// reading
//   A panel (MR x kc): element (i, p) at a[i*a_rs + p*a_cs].  Packed, that is
//       (a_rs, a_cs) = (1, MR): the MR numbers of step p are adjacent.  When
//       A's rows are contiguous and few B strips reuse it, the driver points
//       straight into A instead: (a_rs, a_cs) = (rs_a, 1), no copy at all.
//   B panel (kc x W): row p at b[p*b_rs .. p*b_rs + W).  Packed: b_rs = W;
//       straight from a row-major B: b_rs = rs_b.
//   C tile: c[i*ldc + j], rows contiguous.
template <typename T>
struct MicroArgs {
    std::int64_t kc;
    T alpha, beta;
    const T* a;
    std::int64_t a_rs, a_cs;
    const T* b;
    std::int64_t b_rs;
    T* c;
    std::int64_t ldc;
};
template <typename T>
using MicroKernel = void (*)(const MicroArgs<T>&);

// How big each block of the five loops is, and why (06_blocking.cpp derives
// it from this CPU's caches with the analytical model of Low, Igual, Smith
// and Quintana-Orti, "Analytical modeling is enough for high-performance
// BLIS", ACM TOMS 2016).
struct CacheLevel {
    std::int64_t bytes = 0;  // total size of one instance
    int ways = 0;            // associativity
    std::int64_t sets = 0;   // bytes / (ways * line)
    int line = 64;           // bytes per cache line
};
struct CacheModel {
    CacheLevel l1, l2, l3;  // data caches as one core sees them
    const char* source;     // "sysfs" (what the OS says) or "assumed" (it said nothing)
};
const CacheModel& cache_model();  // read once from the OS

// One row of the table: a micro-kernel and the block sizes chosen for it.
template <typename T>
struct Blocking {
    int mr, nr;          // register tile (rows x columns of C)
    MicroKernel<T> ukr;
    const char* name;    // e.g. "sgemm_avx512_8x32"
    // Optional narrow variant for the last column strip when it is at most
    // nr_narrow wide (an output layer with 10 classes): mr x nr_narrow tiles,
    // half the wasted lanes.  nr_narrow == 0: none.
    int nr_narrow = 0;
    MicroKernel<T> ukr_narrow = nullptr;
    // Filled in at run time (06_blocking.cpp), from the caches or WHYGPU_BLOCKING:
    std::int64_t kc = 0;  // depth of a panel: a kc x nr B micro-panel stays in L1
    std::int64_t mc = 0;  // rows of the packed A block (mc x kc) that stays in L2
    std::int64_t nc = 0;  // width of the packed B panel (kc x nc) that stays in L3
    const char* source = "model";  // "model" or "WHYGPU_BLOCKING"

    // Width a B strip with nr valid columns is computed (and padded) at.
    int strip_width(std::int64_t nr) const { return nr <= nr_narrow ? nr_narrow : this->nr; }
};
template <typename T>
const Blocking<T>& blocking_for(Arch a);
const char* blocking_env_warning();  // non-empty if WHYGPU_BLOCKING could not be used
// Fills bk.kc, bk.mc, bk.nc for elements of elem_bytes (06_blocking.cpp).
template <typename T>
void choose_blocks(Blocking<T>& bk, std::size_t elem_bytes);

constexpr int kMaxMR = 16, kMaxNR = 32;

// ---- Micro-kernels, one file per instruction set -------------------------
#define WHYGPU_DECLARE_UKR(name)                  \
    void sgemm_ukr_##name(const MicroArgs<float>&); \
    void dgemm_ukr_##name(const MicroArgs<double>&);
WHYGPU_DECLARE_UKR(portable)        // 06_ukernel_portable.cpp
#if defined(WHYGPU_X86_KERNELS)
WHYGPU_DECLARE_UKR(avx2)            // 06_ukernel_avx2.cpp
WHYGPU_DECLARE_UKR(avx2_narrow)
WHYGPU_DECLARE_UKR(avx512)          // 06_ukernel_avx512.cpp
WHYGPU_DECLARE_UKR(avx512_narrow)
#endif
#undef WHYGPU_DECLARE_UKR

// ---- Scratch memory ------------------------------------------------------
// Per-thread, grow-only, 64-byte aligned buffers (slot 0: the packed B
// panel, slot 1: the packed A block).  Thread-local, so two Python threads
// calling a kernel at once never share one; reused across calls, so small
// GEMMs do not pay for malloc and page faults every time.
enum ScratchSlot : int { kScratchB = 0, kScratchA = 1 };
void* thread_scratch(ScratchSlot slot, std::size_t bytes);          // throws std::bad_alloc
void* thread_scratch_nothrow(ScratchSlot slot, std::size_t bytes);  // nullptr on failure

// ---- Packing -------------------------------------------------------------
#if defined(__GNUC__) || defined(__clang__)
#define WHYGPU_PACK_PREFETCH(p) __builtin_prefetch((p), 0, 2)  // into L2: it is read soon, not now
#else
#define WHYGPU_PACK_PREFETCH(p) ((void)(p))
#endif

// Pack rows [i0, i0+mr) x depth [p0, p0+kc) of op(A) into an MR-tall
// micro-panel (kc x MR, see above); rows mr..MR-1 are zero.
// out[p*W + i] = src[i*stride + p] for i < W, p < kc: W contiguous runs of kc
// numbers in, kc groups of W out -- a transpose.  It packs A when its rows
// are contiguous (W = MR) and B when its columns are (W = NR: a weight
// matrix used as W^T).  Done 8 steps of k at a time with W known at compile
// time, so each run is read as whole vectors and the output is written in
// order; with `prefetch_next`, the next W runs (the next strip) are
// prefetched meanwhile -- they lie stride apart, where the hardware
// prefetcher does not look ahead.
template <int W, typename T>
void pack_transpose(const T* src, std::int64_t stride, std::int64_t kc, bool prefetch_next, T* out) {
    std::int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        if (prefetch_next)  // the same 8 steps of the next strip
            for (int i = 0; i < W; ++i) WHYGPU_PACK_PREFETCH(src + (W + i) * stride + p);
        T* o = out + p * W;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q)
#pragma GCC unroll 32
            for (int i = 0; i < W; ++i) o[q * W + i] = src[i * stride + p + q];
    }
    for (; p < kc; ++p)
        for (int i = 0; i < W; ++i) out[p * W + i] = src[i * stride + p];
}

// Copy W numbers (W known at compile time: whole vectors, no loop overhead).
template <int W, typename T>
inline void copy_row(const T* src, T* dst) {
#pragma GCC unroll 32
    for (int j = 0; j < W; ++j) dst[j] = src[j];
}

// Pack rows [i0, i0+mr) x depth [p0, p0+kc) of op(A) into an MR-tall
// micro-panel (kc x MR, see above); rows mr..MR-1 are zero.
template <typename T>
void pack_a_strip(const GemmArgs<T>& g, std::int64_t i0, int mr, std::int64_t p0,
                  std::int64_t kc, int MR, T* out) {
    const T* a = g.a + i0 * g.rs_a + p0 * g.cs_a;
    if (mr == MR && g.cs_a == 1) {  // rows contiguous: transpose MR rows
        const bool next = i0 + 2 * MR <= g.m;  // the next strip is a full one too
        switch (MR) {  // the register tiles in use (06_dispatch.cpp)
            case 4: pack_transpose<4>(a, g.rs_a, kc, next, out); return;
            case 6: pack_transpose<6>(a, g.rs_a, kc, next, out); return;
            case 8: pack_transpose<8>(a, g.rs_a, kc, next, out); return;
            default: break;
        }
    }
    if (mr == MR && g.rs_a == 1 && (MR == 4 || MR == 6 || MR == 8)) {  // columns contiguous (A^T): copies
        for (std::int64_t p = 0; p < kc; ++p) {
            const T* col = a + p * g.cs_a;
            if (MR == 4) copy_row<4>(col, out + p * MR);
            else if (MR == 6) copy_row<6>(col, out + p * MR);
            else copy_row<8>(col, out + p * MR);
        }
        return;
    }
    if (g.cs_a == 1) {  // rows of A are contiguous: read each row as one stream
        for (int i = 0; i < mr; ++i) {
            const T* row = a + i * g.rs_a;
            for (std::int64_t p = 0; p < kc; ++p) out[p * MR + i] = row[p];
        }
        for (int i = mr; i < MR; ++i)
            for (std::int64_t p = 0; p < kc; ++p) out[p * MR + i] = T(0);
        return;
    }
    for (std::int64_t p = 0; p < kc; ++p) {  // e.g. a transposed A: columns contiguous
        T* col = out + p * MR;
        int i = 0;
        for (; i < mr; ++i) col[i] = a[i * g.rs_a + p * g.cs_a];
        for (; i < MR; ++i) col[i] = T(0);
    }
}

// Pack depth [p0, p0+kc) x columns [j0, j0+nr) of op(B) into an NR-wide
// micro-panel (kc x NR); columns nr..NR-1 are zero.
template <typename T>
void pack_b_strip(const GemmArgs<T>& g, std::int64_t p0, std::int64_t kc, std::int64_t j0,
                  int nr, int NR, T* out) {
    const T* b = g.b + p0 * g.rs_b + j0 * g.cs_b;
    if (g.rs_b == 1 && g.cs_b != 1 && nr == NR) {  // B stored by columns, a full strip: transpose NR columns
        switch (NR) {
            case 4: pack_transpose<4>(b, g.cs_b, kc, false, out); return;
            case 8: pack_transpose<8>(b, g.cs_b, kc, false, out); return;
            case 16: pack_transpose<16>(b, g.cs_b, kc, false, out); return;
            case 32: pack_transpose<32>(b, g.cs_b, kc, false, out); return;
            default: break;
        }
    }
    if (g.rs_b == 1 && g.cs_b != 1) {  // B stored by columns (a transposed weight matrix):
        for (int j = 0; j < nr; ++j) {  // read each column as one stream
            const T* col = b + j * g.cs_b;
            for (std::int64_t p = 0; p < kc; ++p) out[p * NR + j] = col[p];
        }
        for (std::int64_t p = 0; p < kc; ++p)
            for (int j = nr; j < NR; ++j) out[p * NR + j] = T(0);
        return;
    }
    for (std::int64_t p = 0; p < kc; ++p) {
        const T* row = b + p * g.rs_b;
        T* dst = out + p * NR;
        int j = 0;
        if (g.cs_b == 1) {
            for (; j < nr; ++j) dst[j] = row[j];  // contiguous: a plain copy
        } else {
            for (; j < nr; ++j) dst[j] = row[j * g.cs_b];
        }
        for (; j < NR; ++j) dst[j] = T(0);
    }
}

// ---- Planning a call -------------------------------------------------------
// Block sizes from the model are upper bounds; a call splits k and n into
// equal blocks no larger than them (784 = 392 + 392, not 384 + 384 + 16), so
// no panel is a sliver and the threads get even shares.
struct Plan {
    std::int64_t kc, nc;
    std::int64_t mc_strips;  // MR-tall strips per A block (mc / MR)
};
template <typename T>
Plan plan_blocks(const Blocking<T>& bk, std::int64_t n, std::int64_t k) {
    const std::int64_t kb = (k + bk.kc - 1) / bk.kc;
    const std::int64_t nb = (n + bk.nc - 1) / bk.nc;
    Plan p;
    p.kc = (k + kb - 1) / kb;
    p.nc = ((n + nb - 1) / nb + bk.nr - 1) / bk.nr * bk.nr;  // whole NR strips
    p.mc_strips = std::max<std::int64_t>(1, bk.mc / bk.mr);
    return p;
}

// ---- Reading operands in place ------------------------------------------------
// `direct` says which operands are read in place instead of packed: worth it
// when an operand is used by only a few tiles, so the copy would cost more
// than it saves (the skinny shapes of deep learning: a batch of 32 rows, an
// output layer of 10 columns).  Edge strips are always packed (zero-padded),
// so a micro-kernel never reads outside the matrices.
struct Direct {
    bool a = false, b = false;
};

template <typename T>
Direct choose_direct(const Blocking<T>& bk, const GemmArgs<T>& g, std::int64_t nc) {
    const std::int64_t m_strips = (g.m + bk.mr - 1) / bk.mr;
    const std::int64_t n_strips = (nc + bk.nr - 1) / bk.nr;
    Direct d;
    d.a = g.cs_a == 1 && n_strips <= 4;  // each A micro-panel feeds <= 4 tiles
    d.b = g.cs_b == 1 && m_strips <= 4;  // each B strip feeds <= 4 tiles
    return d;
}

// Does strip js of a panel nc wide need packing (or is it read in place)?
template <typename T>
bool b_strip_packed(const Blocking<T>& bk, Direct d, std::int64_t nc, std::int64_t js) {
    return !(d.b && (js + 1) * bk.nr <= nc);
}

// Pack the B panel op(B)[pc:pc+kc, jc:jc+nc] strips [s0, s1) into bp:
// strip js at bp + js*kc*NR, kc x width (NR or nr_narrow), zero-padded.
template <typename T>
void pack_b_panel(const Blocking<T>& bk, const GemmArgs<T>& g, Direct d, std::int64_t jc,
                  std::int64_t nc, std::int64_t pc, std::int64_t kc, T* bp, std::int64_t s0,
                  std::int64_t s1) {
    const int NR = bk.nr;
    const std::int64_t full = std::min(s1, nc / NR);  // strips [s0, full) are NR wide
    if (g.cs_b == 1 && !d.b && full > s0 && (NR == 8 || NR == 16 || NR == 32)) {
        // B's rows contiguous: walk each row once across all the full strips,
        // so memory is read in order (the hardware prefetcher follows it),
        // instead of kc rows rs_b apart for every strip.
        for (std::int64_t p = 0; p < kc; ++p) {
            const T* row = g.b + (pc + p) * g.rs_b + jc;
            T* dst = bp + p * NR;
            for (std::int64_t js = s0; js < full; ++js) {
                const T* src = row + js * NR;
                T* out = dst + js * kc * NR;
                if (NR == 8) copy_row<8>(src, out);
                else if (NR == 16) copy_row<16>(src, out);
                else copy_row<32>(src, out);
            }
        }
        s0 = full;  // what is left: the last, partial strip
    }
    for (std::int64_t js = s0; js < s1; ++js) {
        const int nr = static_cast<int>(std::min<std::int64_t>(bk.nr, nc - js * bk.nr));
        if (b_strip_packed(bk, d, nc, js))
            pack_b_strip(g, pc, kc, jc + js * bk.nr, nr, bk.strip_width(nr), bp + js * kc * bk.nr);
    }
}

// ---- The macro-kernel ----------------------------------------------------
// One kc-deep panel: rows strips [r0, r1) of C (MR tall) times column strips
// [s0, s1) of the panel (NR wide), C += op(A)[rows, pc:pc+kc] *
// op(B)[pc:pc+kc, cols] (beta applied on the first panel).  The B panel is
// already packed (bp, or read in place); here, for each block of up to
// mc_strips row strips:
//   ic: pack that A block (mc x kc, one kc x MR micro-panel per strip) into
//       `ap`; it stays in L2 while every B strip of the panel meets it;
//    jr: for each B micro-panel (kc x NR, stays in L1)...
//     ir: ...sweep the block's A micro-panels past it, one micro-kernel call each.
template <typename T>
void macro_kernel(const Blocking<T>& bk, const Plan& plan, const GemmArgs<T>& g, Direct d,
                  std::int64_t jc, std::int64_t nc, std::int64_t pc, std::int64_t kc, T beta,
                  const T* bp, T* ap, std::int64_t r0, std::int64_t r1, std::int64_t s0,
                  std::int64_t s1) {
    const int MR = bk.mr;
    alignas(64) T tile[kMaxMR * kMaxNR];  // for edge tiles and strided C
    MicroArgs<T> u;
    u.kc = kc;
    u.alpha = g.alpha;
    // Equal A blocks of at most mc_strips strips (43 strips, 32 per block -> 22 + 21).
    const std::int64_t strips = r1 - r0;
    const std::int64_t blocks = (strips + plan.mc_strips - 1) / plan.mc_strips;
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
        if (stopping(g)) return;  // Ctrl-C (gemm.h): checked once per A block, mc x nc x kc of work
        const std::int64_t ib = r0 + strips * blk / blocks, ie = r0 + strips * (blk + 1) / blocks;
        // ic: the A block, strip is at ap + (is - ib)*kc*MR (kc x MR, step p's MR numbers adjacent)
        for (std::int64_t is = ib; is < ie; ++is) {
            const std::int64_t i0 = is * MR;
            const int mr = static_cast<int>(std::min<std::int64_t>(MR, g.m - i0));
            if (!(d.a && mr == MR)) pack_a_strip(g, i0, mr, pc, kc, MR, ap + (is - ib) * kc * MR);
        }
        for (std::int64_t js = s0; js < s1; ++js) {  // jr: one B micro-panel, in L1
            const std::int64_t j0 = js * bk.nr;
            const int nr = static_cast<int>(std::min<std::int64_t>(bk.nr, nc - j0));
            const int width = bk.strip_width(nr);  // NR, or nr_narrow
            const MicroKernel<T> ukr = (width == bk.nr) ? bk.ukr : bk.ukr_narrow;
            if (b_strip_packed(bk, d, nc, js)) {  // kc x width, rows adjacent
                u.b = bp + js * kc * bk.nr;
                u.b_rs = width;
            } else {  // straight from a row-major B
                u.b = g.b + pc * g.rs_b + (jc + j0);
                u.b_rs = g.rs_b;
            }
            for (std::int64_t is = ib; is < ie; ++is) {  // ir: A micro-panels stream from L2
                const std::int64_t i0 = is * MR;
                const int mr = static_cast<int>(std::min<std::int64_t>(MR, g.m - i0));
                if (d.a && mr == MR) {  // read A's rows where they are
                    u.a = g.a + i0 * g.rs_a + pc;
                    u.a_rs = g.rs_a;
                    u.a_cs = 1;
                } else {
                    u.a = ap + (is - ib) * kc * MR;
                    u.a_rs = 1;
                    u.a_cs = MR;
                }
                T* c = g.c + i0 * g.rs_c + (jc + j0) * g.cs_c;  // C tile, (mr x nr)
                if (mr == MR && nr == width && g.cs_c == 1) {
                    u.beta = beta;
                    u.c = c;
                    u.ldc = g.rs_c;
                    ukr(u);
                } else {  // partial tile: compute all of it aside, copy the valid part
                    u.beta = T(0);
                    u.c = tile;
                    u.ldc = width;
                    ukr(u);
                    for (int i = 0; i < mr; ++i)
                        for (int j = 0; j < nr; ++j) {
                            T& cij = c[i * g.rs_c + j * g.cs_c];
                            cij = (beta == T(0)) ? tile[i * width + j] : tile[i * width + j] + beta * cij;
                        }
                }
            }
        }
    }
}

// C = A B and C^T = B^T A^T are the same computation, on different strides.
// Which one is cheaper depends on the shape and the layouts: the tile is
// MR x NR, so few columns waste most of each tile, and packing an operand
// stored "the wrong way round" (a weight matrix used as W^T) is a slow
// gather.  A rough cost in cycles of each orientation decides; ties keep
// C = A B, whose C is written directly.
template <typename T>
double plan_cost(const Blocking<T>& bk, const GemmArgs<T>& g) {
    auto up = [](std::int64_t x, std::int64_t r) { return (x + r - 1) / r * r; };
    const std::int64_t full = g.n / bk.nr * bk.nr, rest = g.n - full;
    const double rows = double(up(g.m, bk.mr));
    const double cols = double(full + (rest ? bk.strip_width(rest) : 0));
    const double lanes_per_cycle = bk.nr / 2.0;  // ~2 vector FMAs per cycle
    const double compute = rows * cols * double(g.k) / lanes_per_cycle;

    const Plan plan = plan_blocks(bk, g.n, g.k);
    const Direct d = choose_direct(bk, g, std::min(plan.nc, g.n));
    const double gather = 4.0;  // a strided element costs ~4x a streamed one
    const double pack_b = d.b ? 0.0 : double(g.k) * double(g.n) * ((g.cs_b == 1 || g.rs_b == 1) ? 1.0 : gather);
    const double panels = double((g.n + plan.nc - 1) / plan.nc);  // A is packed once per B panel
    const double pack_a = d.a ? 0.0
        : double(g.m) * double(g.k) * panels * ((g.cs_a == 1 || g.rs_a == 1) ? 1.0 : gather);
    const double scatter_c = (g.cs_c == 1) ? 0.0 : 2.0 * double(g.m) * double(g.n);
    return compute + pack_a + pack_b + scatter_c;
}

template <typename T>
GemmArgs<T> transposed(const GemmArgs<T>& g) {
    GemmArgs<T> t = g;
    t.m = g.n;
    t.n = g.m;
    t.a = g.b; t.rs_a = g.cs_b; t.cs_a = g.rs_b;  // op(A)' = op(B)^T
    t.b = g.a; t.rs_b = g.cs_a; t.cs_b = g.rs_a;  // op(B)' = op(A)^T
    t.rs_c = g.cs_c; t.cs_c = g.rs_c;             // C' = C^T
    return t;
}

template <typename T>
GemmArgs<T> orient(const GemmArgs<T>& g, const Blocking<T>& bk) {
    const GemmArgs<T> t = transposed(g);
    return plan_cost(bk, t) < 0.8 * plan_cost(bk, g) ? t : g;
}

}  // namespace whygpu
