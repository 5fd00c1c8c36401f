// Rung 5 -- blocked: the i-k-j loops of rung 4, run tile by tile.
//
// What changes from rung 4: the three loops are cut into tiles of
// BI x BK of A, BK x BJ of B and BI x BJ of C, and the i-k-j order runs
// inside a tile.  A BK x BJ tile of B (128 x 256 floats = 128 KiB) is reused
// by BI = 128 rows of C while it sits in the L2 cache, and each row segment
// of C (1 KiB) stays in L1 across the tile's k loop.
//
// Why it is faster: rung 4 reads all of B once per row of C, i.e. m times;
// when B no longer fits in the caches those reads come from DRAM.  Here B
// comes from memory once per BI rows, so traffic drops by about BI.  The gain
// therefore shows only for matrices larger than the caches: on a Zen 4 with
// 1 MiB L2 and 32 MiB L3, rung 4 falls from ~23 to ~12-15 GFLOP/s at
// n = 2048 while this rung holds ~19; below that both run at the same speed.
// What neither fixes: every multiply-add still loads and stores C, with
// baseline (SSE2, no FMA) vectors -- the compute limit rung 6 removes.
//
// Layout required: row-major rows, cs_a == cs_b == cs_c == 1 (see gemm.h).
#include <algorithm>

#include "gemm.h"

namespace whygpu {

namespace {
constexpr std::int64_t BI = 128;  // rows of C per tile
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
                if (stopping(g)) return;  // Ctrl-C (gemm.h)
                const std::int64_t p1 = std::min(p0 + BK, g.k);
                // The tile product: rung 4's loops on a cache-sized piece.
                // Row pointers start at the tile's first column so that the
                // inner loop is the same simple 0..len loop as rung 4 (GCC
                // vectorizes a j0..j1 loop on `g.c` far less well: 13 vs 23
                // GFLOP/s measured on Zen 4).
                const std::int64_t len = j1 - j0;
                for (std::int64_t i = i0; i < i1; ++i) {
                    T* __restrict crow = g.c + i * g.rs_c + j0;           // C[i][j0:j1]
                    const T* arow = g.a + i * g.rs_a;                     // A[i][:]
                    for (std::int64_t p = p0; p < p1; ++p) {
                        const T aip = g.alpha * arow[p];
                        const T* __restrict brow = g.b + p * g.rs_b + j0;  // B[p][j0:j1]
                        for (std::int64_t j = 0; j < len; ++j) crow[j] += aip * brow[j];
                    }
                }
            }
        }
    }
}

template void gemm_blocked<float>(const GemmArgs<float>&);
template void gemm_blocked<double>(const GemmArgs<double>&);

}  // namespace whygpu
