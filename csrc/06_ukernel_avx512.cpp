// Rung 6, micro-kernel for AVX-512F (Intel Skylake-X and later, AMD Zen 4).
// Compiled with -mavx512f -mfma, this file only; called only after cpuid
// and xgetbv say the CPU and the OS support AVX-512 (06_dispatch.cpp).
//
// 32 zmm registers of 512 bits.  float: an 8 x 32 tile = 16 accumulators
// (8 rows x 2 registers of 16) + 2 for B + 1 broadcast.  MR = 8 divides the
// usual batch sizes (32, 64, 256), so a training batch wastes no rows.
// double: 8 x 16, the same plan with 8 doubles per register.
#include <immintrin.h>

#include "packed.h"
#include "ukernel_template.h"

namespace whygpu {
namespace {
struct Avx512F32 {
    using T = float;
    using Reg = __m512;
    static constexpr int width = 16;
    static Reg zero() { return _mm512_setzero_ps(); }
    static Reg load(const T* p) { return _mm512_loadu_ps(p); }
    static Reg broadcast(const T* p) { return _mm512_set1_ps(*p); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
    static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
    static void store(T* p, Reg v) { _mm512_storeu_ps(p, v); }
};
struct Avx512F64 {
    using T = double;
    using Reg = __m512d;
    static constexpr int width = 8;
    static Reg zero() { return _mm512_setzero_pd(); }
    static Reg load(const T* p) { return _mm512_loadu_pd(p); }
    static Reg broadcast(const T* p) { return _mm512_set1_pd(*p); }
    static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
    static Reg mul(Reg a, Reg b) { return _mm512_mul_pd(a, b); }
    static void store(T* p, Reg v) { _mm512_storeu_pd(p, v); }
};
}  // namespace

void sgemm_ukr_avx512(const MicroArgs<float>& u) { ukernel_body<Avx512F32, 8, 2>(u); }
void dgemm_ukr_avx512(const MicroArgs<double>& u) { ukernel_body<Avx512F64, 8, 2>(u); }

// Narrow variants (one register wide) for the last strip of a skinny C.
void sgemm_ukr_avx512_narrow(const MicroArgs<float>& u) { ukernel_body<Avx512F32, 8, 1>(u); }
void dgemm_ukr_avx512_narrow(const MicroArgs<double>& u) { ukernel_body<Avx512F64, 8, 1>(u); }

}  // namespace whygpu
