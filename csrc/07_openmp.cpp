// Rung 7 -- openmp: rung 6 on every core.
//
// What changes from rung 6 (packed): the same loops and the same
// micro-kernel, run by a team of threads.  Two loops are shared out:
//   * packing the B panel: each thread packs some of its NR-wide strips;
//   * the grid of micro-tiles of C (row strips x column strips of the panel):
//     each thread takes one contiguous run of tiles, packs the A micro-panels
//     it needs itself, and writes its own tiles of C.
// Every tile of C is written by exactly one thread, so no locks and no
// reductions are needed.  We never split the k (pc) loop: two threads
// adding into the same C tile would need a reduction.  Splitting the grid,
// not just the rows, keeps both cores busy when m is small (a batch of 32 is
// only 4 row strips) -- the shapes of deep-learning layers.
//
// Why it is faster: matrix multiplication is embarrassingly parallel; every
// tile of C is independent.  With P cores the compute time divides by P;
// what does not divide is the barrier after each packed panel and the share
// of memory bandwidth the cores compete for.
//
// The thread count is an argument, so each call may choose its own.
#include <algorithm>
#include <new>
#include <stdexcept>

#include "packed.h"

#if defined(WHYGPU_HAVE_OPENMP)
#include <omp.h>
#endif

namespace whygpu {

constexpr double kFlopsPerThread = 5e5;

bool openmp_available() {
#if defined(WHYGPU_HAVE_OPENMP)
    return true;
#else
    return false;
#endif
}

template <typename T>
void gemm_openmp(const GemmArgs<T>& call, int threads) {
#if !defined(WHYGPU_HAVE_OPENMP)
    (void)call; (void)threads;
    throw std::runtime_error("the openmp kernel is unavailable: whygpu was built without OpenMP");
#else
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    if (call.m == 0 || call.n == 0) return;
    if (call.k == 0 || call.alpha == T(0)) { scale_c(call); return; }

    const Blocking<T>& bk = blocking_for<T>(current_arch());
    const GemmArgs<T> g = orient(call, bk);  // maybe compute C^T = B^T A^T instead
    const Plan plan = plan_blocks(bk, g.n, g.k);
    const std::int64_t KC = plan.kc, NC = plan.nc;
    const std::int64_t nc_round = (NC + bk.nr - 1) / bk.nr * bk.nr;
    T* bp = static_cast<T*>(thread_scratch(kScratchB, sizeof(T) * KC * nc_round));  // shared by the team
    const std::int64_t m_strips = (g.m + bk.mr - 1) / bk.mr;
    // No more threads than there are micro-tiles to hand out, and no more than
    // one per ~0.5 MFLOP: starting and joining a team costs microseconds,
    // which a tiny product (32 x 256 x 10) would not win back.
    const std::int64_t max_tiles = m_strips * ((NC + bk.nr - 1) / bk.nr);
    const double flops = 2.0 * double(g.m) * double(g.n) * double(g.k);
    const std::int64_t by_work = std::max<std::int64_t>(1, static_cast<std::int64_t>(flops / kFlopsPerThread));
    const int team = static_cast<int>(std::min<std::int64_t>({threads, max_tiles, by_work}));
    if (team == 1) {  // the serial rung does exactly this work without a team
        gemm_packed(call);
        return;
    }

    bool out_of_memory = false;
#pragma omp parallel num_threads(team)
    {
        // This thread's A micro-panel (kc x MR).  Allocation may throw, and an
        // exception must not escape an OpenMP region, hence the nothrow check.
        T* ap = static_cast<T*>(thread_scratch_nothrow(kScratchA, sizeof(T) * KC * bk.mr));
        if (ap == nullptr) {
#pragma omp atomic write
            out_of_memory = true;
        }
        const int tid = omp_get_thread_num();
        const int nth = omp_get_num_threads();
        for (std::int64_t jc = 0; jc < g.n; jc += NC) {
            const std::int64_t nc = std::min(NC, g.n - jc);
            const Direct d = choose_direct(bk, g, nc);
            const std::int64_t n_strips = (nc + bk.nr - 1) / bk.nr;
            const std::int64_t tiles = m_strips * n_strips;
            for (std::int64_t pc = 0; pc < g.k; pc += KC) {
                const std::int64_t kc = std::min(KC, g.k - pc);
                const T beta = (pc == 0) ? g.beta : T(1);
#pragma omp for schedule(static)
                for (std::int64_t js = 0; js < n_strips; ++js) {
                    const int nr = static_cast<int>(std::min<std::int64_t>(bk.nr, nc - js * bk.nr));
                    if (b_strip_packed(bk, d, nc, js))
                        pack_b_strip(g, pc, kc, jc + js * bk.nr, nr, bk.strip_width(nr), bp + js * kc * bk.nr);
                }  // implicit barrier: the whole panel is packed before anyone reads it
                const std::int64_t t0 = tiles * tid / nth, t1 = tiles * (tid + 1) / nth;
                if (ap != nullptr) macro_kernel(bk, g, d, jc, nc, pc, kc, beta, bp, ap, t0, t1);
#pragma omp barrier  // nobody repacks the panel while another thread still reads it
            }
        }
    }
    if (out_of_memory) throw std::bad_alloc();
#endif
}

template void gemm_openmp<float>(const GemmArgs<float>&, int);
template void gemm_openmp<double>(const GemmArgs<double>&, int);

}  // namespace whygpu
