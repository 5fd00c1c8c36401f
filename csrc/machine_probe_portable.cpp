// Machine probe, baseline ISA (SSE2 on x86-64, NEON on arm64): what code
// compiled for "any CPU" can do.  The "vector" is a fixed array of 4 floats
// with no fused multiply-add -- the compiler turns it into one SSE multiply
// and one add -- which is what the auto-vectorized rungs (reordered,
// blocked) and the portable micro-kernel get.
#include "machine_probe_body.h"

namespace whygpu {
namespace probe {
namespace {
struct Vec4 {
    struct Reg { float v[4]; };
    // Lanes differ slightly: with four equal lanes the compiler would notice
    // and compute only one of them.
    static Reg set1(float x) { return Reg{{x, x * 1.001f, x * 1.002f, x * 1.003f}}; }
    static Reg fma(Reg a, Reg b, Reg c) {
        Reg r;
        for (int l = 0; l < 4; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];  // no fused op: portable
        return r;
    }
    static double sum(Reg a) { return double(a.v[0]) + a.v[1] + a.v[2] + a.v[3]; }
};
}  // namespace

double fma_chains_portable(std::int64_t iters, float seed) { return fma_chains_body<Vec4>(iters, seed); }
int fma_lanes_portable() { return 4; }
void triad_portable(double* a, const double* b, const double* c, double s, std::int64_t n) {
    triad_body(a, b, c, s, n);
}

}  // namespace probe
}  // namespace whygpu
