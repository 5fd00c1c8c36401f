// Machine probe for AVX-512F: 16 float lanes per 512-bit register.
// Compiled with -mavx512f -mfma, this file only; called only when cpuid and
// xgetbv say the CPU and OS support it.  (On AMD Zen 4 a 512-bit FMA is
// executed as two 256-bit halves, so the peak equals AVX2's there.)
#include <immintrin.h>

#include "machine_probe_body.h"

namespace whygpu {
namespace probe {
namespace {
struct Avx512 {
    using Reg = __m512;
    static Reg set1(float x) { return _mm512_set1_ps(x); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
    static double sum(Reg a) {
        alignas(64) float t[16];
        _mm512_store_ps(t, a);
        double s = 0.0;
        for (float x : t) s += x;
        return s;
    }
};
}  // namespace

double fma_chains_avx512(std::int64_t iters, float seed) { return fma_chains_body<Avx512>(iters, seed); }
int fma_lanes_avx512() { return 16; }
void triad_avx512(double* a, const double* b, const double* c, double s, std::int64_t n) {
    triad_body(a, b, c, s, n);
}

}  // namespace probe
}  // namespace whygpu
