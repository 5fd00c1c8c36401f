// Rung 3 -- naive: the textbook definition, C[i][j] = sum_p A[i][p] * B[p][j].
//
// What changes from rung 2 (Cython): nothing in the algorithm; this is the
// same ijk triple loop, now compiled C++ with no interpreter in the way.
//
// Why it is still slow: the innermost loop walks B down a column, p * rs_b,
// so every step touches a new cache line (row-major B) and uses 4 or 8 bytes
// of the 64 it loaded.  The running sum is one dependency chain, so the FMA
// units wait for the previous add every time (and, without -ffast-math, the
// compiler may not reorder the sum into SIMD lanes).  This rung is kept as
// the oracle: the simplest code that is obviously right.
#include "gemm.h"

namespace whygpu {

template <typename T>
void gemm_naive(const GemmArgs<T>& g) {
    if (g.k == 0 || g.alpha == T(0)) { scale_c(g); return; }
    for (std::int64_t i = 0; i < g.m; ++i) {
        if (stopping(g)) return;  // Ctrl-C (gemm.h)
        for (std::int64_t j = 0; j < g.n; ++j) {
            T sum = T(0);
            for (std::int64_t p = 0; p < g.k; ++p)  // A along a row, B down a column
                sum += g.a[i * g.rs_a + p * g.cs_a] * g.b[p * g.rs_b + j * g.cs_b];
            T& cij = g.c[i * g.rs_c + j * g.cs_c];
            cij = (g.beta == T(0)) ? g.alpha * sum : g.alpha * sum + g.beta * cij;
        }
    }
}

template void gemm_naive<float>(const GemmArgs<float>&);
template void gemm_naive<double>(const GemmArgs<double>&);

}  // namespace whygpu
