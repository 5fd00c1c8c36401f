// machine_probe_body.h -- the probe loops, written once and compiled in each
// machine_probe_<isa>.cpp with that file's ISA flags (like
// ukernel_template.h for the micro-kernels).  The vector type V provides
// zero/set1/fma/sum, exactly what one FMA chain needs.
#pragma once

#include <cstdint>

#include "machine_probe.h"

namespace whygpu {
namespace probe {
namespace {

// kChains independent chains acc = acc * m + c.  m is just below 1 and c
// small, so the values settle near c / (1 - m) and never overflow or go
// subnormal (subnormals are slow and would spoil the measurement).
template <class V>
inline double fma_chains_body(std::int64_t iters, float seed) {
    typename V::Reg acc[kChains];
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = V::set1(seed + 0.01f * static_cast<float>(i));
    const typename V::Reg m = V::set1(0.999999f), c = V::set1(1e-6f);
    for (std::int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) acc[i] = V::fma(acc[i], m, c);
    }
    double total = 0.0;
    for (int i = 0; i < kChains; ++i) total += V::sum(acc[i]);
    return total;
}

// STREAM triad; the compiler vectorizes it with this file's ISA.
inline void triad_body(double* __restrict a, const double* __restrict b, const double* __restrict c,
                       double s, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

}  // namespace
}  // namespace probe
}  // namespace whygpu
