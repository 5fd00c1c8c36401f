// ukernel_template.h -- the register-tiled micro-kernel, written once.
//
// Each 06_ukernel_<isa>.cpp includes this after defining a small "vector
// traits" type V for its instruction set (V::width numbers per register,
// load/broadcast/fma/store), and instantiates it with its tile MR x (NV *
// V::width).  Only those files are compiled with ISA flags (-mavx2 -mfma,
// -mavx512f ...), so nothing here leaks AVX into code that runs before the
// CPU has been checked.
//
// The tile of C lives in MR * NV vector registers for the whole k loop:
//
//   for p in 0..kc:                    one rank-1 update of the tile
//     b_v   = NV vectors of B[p, 0:NR]   (contiguous in the packed panel)
//     for i in 0..MR:
//       a_i = broadcast A[i, p]          (contiguous in the packed panel)
//       acc[i][v] += a_i * b_v           (MR * NV independent FMAs)
//
// MR * NV independent accumulators hide the FMA latency (4 cycles, 2 pipes:
// at least 8 in flight are needed), and each loaded B vector is used MR
// times, each broadcast NV times, so the loads never limit the FMAs.
//
// What else keeps the FMA pipes fed (as OpenBLAS's and BLIS's hand-written
// Haswell/Zen kernels do):
//   * C's MR rows are prefetched before the k loop: they lie ldc apart,
//     where no hardware prefetcher looks, and are needed only at the end, so
//     their misses overlap kc steps of arithmetic instead of stalling after;
//   * the A micro-panel streaming in from L2 is prefetched a few steps ahead;
//   * the k loop is unrolled by 4 with packed strides known at compile time,
//     so the address arithmetic folds into the loads' displacements;
//   * kc and the pointers are locals: nothing is re-read from memory per step.
#pragma once

#include <cstdint>

#include "packed.h"

#if defined(__GNUC__) || defined(__clang__)
#define WHYGPU_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define WHYGPU_PREFETCH(p) ((void)(p))
#endif

namespace whygpu {
namespace {

// How many k steps ahead the packed A micro-panel is prefetched.
constexpr int kPrefetchStepsA = 8;

template <class V, int MR, int NV, bool PackedA, bool PackedB>
inline void ukernel_loop(const MicroArgs<typename V::T>& u) {
    using T = typename V::T;
    using R = typename V::Reg;
    constexpr int NR = NV * V::width;
    const T* __restrict a = u.a;
    const T* __restrict b = u.b;
    const std::int64_t kc = u.kc;
    // Packed A: step p's MR numbers are adjacent, stride MR between steps.
    const std::int64_t a_rs = PackedA ? 1 : u.a_rs;
    const std::int64_t a_cs = PackedA ? MR : u.a_cs;
    // Packed B: row p at b + p*NR.
    const std::int64_t b_rs = PackedB ? NR : u.b_rs;
    T* __restrict c = u.c;
    const std::int64_t ldc = u.ldc;

    // C's rows, first and last byte of each: read at the end when beta != 0, and even when it is
    // only written (beta == 0) a store that misses waits for its line to be fetched.
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        WHYGPU_PREFETCH(c + i * ldc);
        WHYGPU_PREFETCH(c + i * ldc + NR - 1);
    }

    R acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

#pragma GCC unroll 4
    for (std::int64_t p = 0; p < kc; ++p) {
        if (PackedA) WHYGPU_PREFETCH(a + kPrefetchStepsA * MR);
        R bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::width);  // B[p, 0:NR]
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const R ai = V::broadcast(a + i * a_rs);  // A[i, p] in every lane
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
        }
        a += a_cs;
        b += b_rs;
    }

    const R va = V::broadcast(&u.alpha);
    if (u.beta == T(0)) {  // overwrite: C is never read
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) V::store(c + i * ldc + v * V::width, V::mul(va, acc[i][v]));
    } else {
        const R vb = V::broadcast(&u.beta);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                T* cp = c + i * ldc + v * V::width;
                V::store(cp, V::fma(va, acc[i][v], V::mul(vb, V::load(cp))));
            }
    }
}

// The MR x (NV * V::width) micro-kernel; packed operands get the loop with
// compile-time strides (cheaper addressing), in-place ones the general one.
template <class V, int MR, int NV>
inline void ukernel_body(const MicroArgs<typename V::T>& u) {
    constexpr int NR = NV * V::width;
    const bool packed_a = u.a_rs == 1 && u.a_cs == MR;
    const bool packed_b = u.b_rs == NR;
    if (packed_a && packed_b)
        ukernel_loop<V, MR, NV, true, true>(u);
    else if (packed_a)
        ukernel_loop<V, MR, NV, true, false>(u);
    else if (packed_b)
        ukernel_loop<V, MR, NV, false, true>(u);
    else
        ukernel_loop<V, MR, NV, false, false>(u);
}

}  // namespace
}  // namespace whygpu
