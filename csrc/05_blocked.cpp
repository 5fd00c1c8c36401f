// Rung 5 -- blocked: the i-k-j loops of rung 4, run tile by tile.
//
// What changes from rung 4: the three loops are cut into tiles of
// BI x BK of A, BK x BJ of B and BI x BJ of C, and the i-k-j order runs
// inside a tile.  A BK x BJ tile of B (here 128 x 256 floats = 128 KiB in
// float32) is reused by BI = 64 rows of C while it is still in the L2 cache,
// and the BI x BJ tile of C stays in cache across the whole k loop.
//
// Why it is faster: rung 4 reads all of B from main memory once per row of
// C, i.e. m times.  Here B is read from memory once per BI rows, so memory
// traffic drops by roughly BI and the loop becomes bound by the core (the
// vectorized multiply-add) rather than by DRAM.  The gain is largest for big
// matrices that overflow the caches; for small ones it is a wash.  What it
// still lacks: C is loaded and stored on every k step (no register
// blocking), and B's tile is read with a stride of ldb between its rows.
//
// Layout required: row-major rows, cs_a == cs_b == cs_c == 1 (see gemm.h).
#include <algorithm>

#include "gemm.h"

namespace whygpu {

namespace {
constexpr std::int64_t BI = 64;   // rows of C per tile
constexpr std::int64_t BK = 128;  // depth of a tile
constexpr std::int64_t BJ = 256;  // columns of C per tile
}  // namespace

template <typename T>
void gemm_blocked(const GemmArgs<T>& g) {
    scale_c(g);
    if (g.k == 0 || g.alpha == T(0)) return;
    for (std::int64_t i0 = 0; i0 < g.m; i0 += BI) {
        const std::int64_t i1 = std::min(i0 + BI, g.m);
        for (std::int64_t j0 = 0; j0 < g.n; j0 += BJ) {
            const std::int64_t j1 = std::min(j0 + BJ, g.n);
            for (std::int64_t p0 = 0; p0 < g.k; p0 += BK) {
                const std::int64_t p1 = std::min(p0 + BK, g.k);
                // The tile product: rung 4's loops on a cache-sized piece.
                for (std::int64_t i = i0; i < i1; ++i) {
                    T* __restrict crow = g.c + i * g.rs_c;
                    for (std::int64_t p = p0; p < p1; ++p) {
                        const T aip = g.alpha * g.a[i * g.rs_a + p];
                        const T* __restrict brow = g.b + p * g.rs_b;
                        for (std::int64_t j = j0; j < j1; ++j) crow[j] += aip * brow[j];
                    }
                }
            }
        }
    }
}

template void gemm_blocked<float>(const GemmArgs<float>&);
template void gemm_blocked<double>(const GemmArgs<double>&);

}  // namespace whygpu
