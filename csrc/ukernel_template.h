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

namespace whygpu {
namespace {

template <class V, int MR, int NV>
inline void ukernel_body(std::int64_t kc, typename V::T alpha, const typename V::T* __restrict a,
                         const typename V::T* __restrict b, typename V::T beta,
                         typename V::T* __restrict c, std::int64_t ldc) {
    using T = typename V::T;
    using R = typename V::Reg;
    constexpr int NR = NV * V::width;
    R acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();

#pragma GCC unroll 2
    for (std::int64_t p = 0; p < kc; ++p) {
        R bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::width);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const R ai = V::broadcast(a + i);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
        }
        a += MR;
        b += NR;
    }

    const R va = V::broadcast(&alpha);
    if (beta == T(0)) {  // overwrite: C is never read
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) V::store(c + i * ldc + v * V::width, V::mul(va, acc[i][v]));
    } else {
        const R vb = V::broadcast(&beta);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                T* cp = c + i * ldc + v * V::width;
                V::store(cp, V::fma(va, acc[i][v], V::mul(vb, V::load(cp))));
            }
    }
}

}  // namespace
}  // namespace whygpu
