// Rung 6, micro-kernel for AVX2 + FMA (Intel Haswell and later, AMD Zen).
// Compiled with -mavx2 -mfma, this file only; called only after cpuid says
// the CPU and the OS support AVX2 and FMA (06_dispatch.cpp).
//
// 16 ymm registers of 256 bits.  float: a 6 x 16 tile = 12 accumulators
// (6 rows x 2 registers of 8) + 2 for B + 1 broadcast = 15 registers.
// double: 6 x 8, the same register plan with 4 doubles per register.
#include <immintrin.h>

#include "packed.h"
#include "ukernel_template.h"

namespace whygpu {
namespace {
struct Avx2F32 {
    using T = float;
    using Reg = __m256;
    static constexpr int width = 8;
    static Reg zero() { return _mm256_setzero_ps(); }
    static Reg load(const T* p) { return _mm256_loadu_ps(p); }
    static Reg broadcast(const T* p) { return _mm256_broadcast_ss(p); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
    static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
    static void store(T* p, Reg v) { _mm256_storeu_ps(p, v); }
};
struct Avx2F64 {
    using T = double;
    using Reg = __m256d;
    static constexpr int width = 4;
    static Reg zero() { return _mm256_setzero_pd(); }
    static Reg load(const T* p) { return _mm256_loadu_pd(p); }
    static Reg broadcast(const T* p) { return _mm256_broadcast_sd(p); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_pd(a, b, c); }
    static Reg mul(Reg a, Reg b) { return _mm256_mul_pd(a, b); }
    static void store(T* p, Reg v) { _mm256_storeu_pd(p, v); }
};
}  // namespace

void sgemm_ukr_avx2(const MicroArgs<float>& u) { ukernel_body<Avx2F32, 6, 2>(u); }
void dgemm_ukr_avx2(const MicroArgs<double>& u) { ukernel_body<Avx2F64, 6, 2>(u); }

// Narrow variants (one register wide) for the last strip of a skinny C.
void sgemm_ukr_avx2_narrow(const MicroArgs<float>& u) { ukernel_body<Avx2F32, 6, 1>(u); }
void dgemm_ukr_avx2_narrow(const MicroArgs<double>& u) { ukernel_body<Avx2F64, 6, 1>(u); }

}  // namespace whygpu
