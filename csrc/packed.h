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
// Computes one MR x NR tile of C from packed micro-panels:
//   a is a packed A micro-panel, (kc x MR): column p is a[p*MR .. p*MR+MR)
//   b is a packed B micro-panel, (kc x NR): row p    is b[p*NR .. p*NR+NR)
//   c is the tile, row-major:   c[i*ldc + j] for i < MR, j < NR
//   c = alpha * (a^T b) + beta * c, and beta == 0 overwrites without reading.
template <typename T>
using MicroKernel = void (*)(std::int64_t kc, T alpha, const T* a, const T* b, T beta,
                             T* c, std::int64_t ldc);

// One row of the table: a micro-kernel and the block sizes tuned for it.
template <typename T>
struct Blocking {
    int mr, nr;          // register tile (rows x columns of C)
    std::int64_t kc;     // depth of a packed panel: an A micro-panel (kc x mr) stays in L1
    std::int64_t nc;     // width of the packed B panel (kc x nc) that stays in L2
    MicroKernel<T> ukr;
    const char* name;    // e.g. "sgemm_avx512_8x32"
};
template <typename T>
const Blocking<T>& blocking_for(Arch a);

constexpr int kMaxMR = 16, kMaxNR = 32;

// ---- Micro-kernels, one file per instruction set -------------------------
void sgemm_ukr_portable(std::int64_t, float, const float*, const float*, float, float*, std::int64_t);
void dgemm_ukr_portable(std::int64_t, double, const double*, const double*, double, double*, std::int64_t);
#if defined(WHYGPU_X86_KERNELS)
void sgemm_ukr_avx2(std::int64_t, float, const float*, const float*, float, float*, std::int64_t);
void dgemm_ukr_avx2(std::int64_t, double, const double*, const double*, double, double*, std::int64_t);
void sgemm_ukr_avx512(std::int64_t, float, const float*, const float*, float, float*, std::int64_t);
void dgemm_ukr_avx512(std::int64_t, double, const double*, const double*, double, double*, std::int64_t);
#endif

// ---- Scratch memory ------------------------------------------------------
// Per-thread, grow-only, 64-byte aligned buffers (slot 0: the packed B
// panel, slot 1: an A micro-panel).  Thread-local, so two Python threads
// calling a kernel at once never share one; reused across calls, so small
// GEMMs do not pay for malloc and page faults every time.
enum ScratchSlot : int { kScratchB = 0, kScratchA = 1 };
void* thread_scratch(ScratchSlot slot, std::size_t bytes);          // throws std::bad_alloc
void* thread_scratch_nothrow(ScratchSlot slot, std::size_t bytes);  // nullptr on failure

// ---- Packing -------------------------------------------------------------
// Pack rows [i0, i0+mr) x depth [p0, p0+kc) of op(A) into an MR-tall
// micro-panel (kc x MR, see above); rows mr..MR-1 are zero.
template <typename T>
void pack_a_strip(const GemmArgs<T>& g, std::int64_t i0, int mr, std::int64_t p0,
                  std::int64_t kc, int MR, T* out) {
    const T* a = g.a + i0 * g.rs_a + p0 * g.cs_a;
    for (std::int64_t p = 0; p < kc; ++p) {
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

// ---- The macro-kernel ----------------------------------------------------
// The packed B panel (kc x nc, columns jc.. of C) is cut into NR-wide strips
// and C's rows into MR-tall strips: a grid of micro-tiles, numbered row by
// row.  This runs tiles [t0, t1) of that grid.  For each row strip it packs
// the A micro-panel once (into `ap`, which stays in L1), then sweeps it
// across the B strips, which stream from L2.
template <typename T>
void macro_kernel(const Blocking<T>& bk, const GemmArgs<T>& g, std::int64_t jc, std::int64_t nc,
                  std::int64_t pc, std::int64_t kc, T beta, const T* bp, T* ap,
                  std::int64_t t0, std::int64_t t1) {
    const int MR = bk.mr, NR = bk.nr;
    const std::int64_t n_strips = (nc + NR - 1) / NR;
    alignas(64) T tile[kMaxMR * kMaxNR];  // for edge tiles and strided C
    std::int64_t t = t0;
    while (t < t1) {
        const std::int64_t is = t / n_strips;           // row strip of C
        const std::int64_t js_end = std::min<std::int64_t>((is + 1) * n_strips, t1) - is * n_strips;
        const std::int64_t i0 = is * MR;
        const int mr = static_cast<int>(std::min<std::int64_t>(MR, g.m - i0));
        pack_a_strip(g, i0, mr, pc, kc, MR, ap);
        for (std::int64_t js = t - is * n_strips; js < js_end; ++js) {
            const std::int64_t j0 = js * NR;
            const int nr = static_cast<int>(std::min<std::int64_t>(NR, nc - j0));
            const T* b = bp + js * kc * NR;
            T* c = g.c + i0 * g.rs_c + (jc + j0) * g.cs_c;  // C tile, (mr x nr)
            if (mr == MR && nr == NR && g.cs_c == 1) {
                bk.ukr(kc, g.alpha, ap, b, beta, c, g.rs_c);
            } else {  // partial tile: compute all of it aside, copy the valid part
                bk.ukr(kc, g.alpha, ap, b, T(0), tile, NR);
                for (int i = 0; i < mr; ++i)
                    for (int j = 0; j < nr; ++j) {
                        T& cij = c[i * g.rs_c + j * g.cs_c];
                        cij = (beta == T(0)) ? tile[i * NR + j] : tile[i * NR + j] + beta * cij;
                    }
            }
        }
        t = (is + 1) * n_strips;
    }
}

}  // namespace whygpu
