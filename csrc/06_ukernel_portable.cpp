// Rung 6, micro-kernel for any CPU: plain C++, no intrinsics.
//
// Built with the compiler's baseline flags only (SSE2 on x86-64, NEON on
// arm64), so it runs everywhere.  The "vector" is a single number; the
// compiler's own vectorizer may still pack the fixed-size tile into SIMD
// registers.  It is the fallback when the CPU has neither AVX2 nor AVX-512,
// and what WHYGPU_ARCH=portable forces, to measure what SIMD buys.
#include "packed.h"
#include "ukernel_template.h"

namespace whygpu {
namespace {
template <typename Scalar>
struct ScalarVec {
    using T = Scalar;
    using Reg = Scalar;
    static constexpr int width = 1;
    static Reg zero() { return T(0); }
    static Reg load(const T* p) { return *p; }
    static Reg broadcast(const T* p) { return *p; }
    static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }  // no fused op: portable
    static Reg mul(Reg a, Reg b) { return a * b; }
    static void store(T* p, Reg v) { *p = v; }
};
}  // namespace

// float: 4 x 8 tile; double: 4 x 4 tile (16 SSE2 registers on x86-64).
void sgemm_ukr_portable(const MicroArgs<float>& u) { ukernel_body<ScalarVec<float>, 4, 8>(u); }
void dgemm_ukr_portable(const MicroArgs<double>& u) { ukernel_body<ScalarVec<double>, 4, 4>(u); }

}  // namespace whygpu
