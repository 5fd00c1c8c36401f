// Rung 4 -- reordered: the same arithmetic in i-k-j loop order.
//
// What changes from rung 3 (naive i-j-k): the two inner loops swap.  For a
// fixed (i, p) we take one scalar A[i][p] and add A[i][p] * B[p][:] to the
// whole row C[i][:].
//
// Why it is faster: the innermost loop now walks B[p][:] and C[i][:] with
// unit stride, so every byte of every cache line fetched is used, the
// hardware prefetcher sees two simple streams, and the j iterations are
// independent -- the compiler turns them into SIMD multiply-adds on its own
// (look for vfmadd...ps / vmulps in the disassembly).  Typically 20-50x over
// naive.  What it still lacks: a row of C and all of B are streamed from
// memory again for every i, so for large n the data no longer fits in cache.
//
// Layout required: row-major rows, cs_a == cs_b == cs_c == 1 (see gemm.h).
#include "gemm.h"

namespace whygpu {

template <typename T>
void gemm_reordered(const GemmArgs<T>& g) {
    scale_c(g);  // C = beta * C, then accumulate alpha * A * B into it
    if (g.k == 0 || g.alpha == T(0)) return;
    for (std::int64_t i = 0; i < g.m; ++i) {
        if (stopping(g)) return;                           // Ctrl-C (gemm.h)
        T* __restrict crow = g.c + i * g.rs_c;             // C[i][:], n contiguous
        for (std::int64_t p = 0; p < g.k; ++p) {
            const T aip = g.alpha * g.a[i * g.rs_a + p];    // one scalar of A
            const T* __restrict brow = g.b + p * g.rs_b;   // B[p][:], n contiguous
            for (std::int64_t j = 0; j < g.n; ++j)         // unit stride: vectorizes
                crow[j] += aip * brow[j];
        }
    }
}

template void gemm_reordered<float>(const GemmArgs<float>&);
template void gemm_reordered<double>(const GemmArgs<double>&);

}  // namespace whygpu
