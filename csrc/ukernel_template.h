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
#pragma once

#include <cstdint>

#include "packed.h"

namespace whygpu {
namespace {

template <class V, int MR, int NV, bool PackedA>
inline void ukernel_loop(const MicroArgs<typename V::T>& u) {
    using T = typename V::T;
    using R = typename V::Reg;
    const T* __restrict a = u.a;
    const T* __restrict b = u.b;
    // Packed A: step p's MR numbers are adjacent, stride MR between steps.
    const std::int64_t a_rs = PackedA ? 1 : u.a_rs;
    const std::int64_t a_cs = PackedA ? MR : u.a_cs;
    R acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

#pragma GCC unroll 2
    for (std::int64_t p = 0; p < u.kc; ++p) {
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
        b += u.b_rs;
    }

    T* __restrict c = u.c;
    const R va = V::broadcast(&u.alpha);
    if (u.beta == T(0)) {  // overwrite: C is never read
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) V::store(c + i * u.ldc + v * V::width, V::mul(va, acc[i][v]));
    } else {
        const R vb = V::broadcast(&u.beta);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                T* cp = c + i * u.ldc + v * V::width;
                V::store(cp, V::fma(va, acc[i][v], V::mul(vb, V::load(cp))));
            }
    }
}

// The MR x (NV * V::width) micro-kernel; a packed A gets the loop with
// compile-time strides (cheaper addressing), an in-place A the general one.
template <class V, int MR, int NV>
inline void ukernel_body(const MicroArgs<typename V::T>& u) {
    if (u.a_rs == 1 && u.a_cs == MR)
        ukernel_loop<V, MR, NV, true>(u);
    else
        ukernel_loop<V, MR, NV, false>(u);
}

}  // namespace
}  // namespace whygpu
