// Machine probe for AVX2 + FMA: 8 float lanes per 256-bit register.
// Compiled with -mavx2 -mfma, this file only; called only when cpuid says
// the CPU has them (arch_supported in 06_dispatch.cpp).
#include <immintrin.h>

#include "machine_probe_body.h"

namespace whygpu {
namespace probe {
namespace {
struct Avx2 {
    using Reg = __m256;
    static Reg set1(float x) { return _mm256_set1_ps(x); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
    static double sum(Reg a) {
        alignas(32) float t[8];
        _mm256_store_ps(t, a);
        double s = 0.0;
        for (float x : t) s += x;
        return s;
    }
};
}  // namespace

double fma_chains_avx2(std::int64_t iters, float seed) { return fma_chains_body<Avx2>(iters, seed); }
int fma_lanes_avx2() { return 8; }
void triad_avx2(double* a, const double* b, const double* c, double s, std::int64_t n) {
    triad_body(a, b, c, s, n);
}

}  // namespace probe
}  // namespace whygpu
