// Rung 7 -- openmp: rung 6 on every core.
//
// What changes from rung 6 (packed): the same loops and the same
// micro-kernel, run by a team of threads, shared out the way BLIS does:
//   * the B panel (kc x nc, in L3) is packed once, by all threads together
//     (each packs some of its NR-wide strips), and read by all of them;
//   * C is cut into a grid of tm x tn rectangles, one per thread: rows split
//     first (the ic loop: each core packs its own A block into its own L2),
//     columns too (the jr loop) when there are fewer row strips than
//     threads -- a batch of 6 rows, a 10-class output layer.
// Every tile of C is written by exactly one thread, so no locks and no
// reductions are needed.  We never split the k (pc) loop: two threads
// adding into the same C tile would need a reduction.
//
// One barrier per panel: the B panel is double-buffered, so while a slow
// thread still computes with panel p, a fast one already packs panel p+1
// into the other buffer.  (A thread packs p+1 only after the barrier of p,
// which every thread passes only after finishing p-1: the buffer it
// overwrites is free.)
//
// Why it is faster: matrix multiplication is embarrassingly parallel; every
// tile of C is independent.  With P cores the compute time divides by P;
// what does not divide is packing B's share, the wait at each barrier and
// the memory bandwidth the cores compete for.
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

namespace {
// tm x tn threads over a grid of m_strips x n_strips micro-tiles: the split
// whose busiest thread has the fewest tiles; on a tie, more row groups (each
// core then packs and keeps only its own A block).
struct Grid {
    int tm = 1, tn = 1;
};
Grid thread_grid(int threads, std::int64_t m_strips, std::int64_t n_strips) {
    Grid best;
    std::int64_t best_load = -1;
    for (int tm = threads; tm >= 1; --tm) {
        if (threads % tm != 0) continue;
        const int tn = threads / tm;
        const std::int64_t load = ((m_strips + tm - 1) / tm) * ((n_strips + tn - 1) / tn);
        if (best_load < 0 || load < best_load) {
            best_load = load;
            best.tm = tm;
            best.tn = tn;
        }
    }
    return best;
}
}  // namespace

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
    const std::int64_t m_strips = (g.m + bk.mr - 1) / bk.mr;
    const std::int64_t n_strips_max = (std::min(NC, g.n) + bk.nr - 1) / bk.nr;
    // No more threads than there are micro-tiles to hand out, and no more than
    // one per ~0.5 MFLOP: starting and joining a team costs microseconds,
    // which a tiny product (32 x 256 x 10) would not win back.
    const std::int64_t max_tiles = m_strips * n_strips_max;
    const double flops = 2.0 * double(g.m) * double(g.n) * double(g.k);
    const std::int64_t by_work = std::max<std::int64_t>(1, static_cast<std::int64_t>(flops / kFlopsPerThread));
    const int team = static_cast<int>(std::min<std::int64_t>({threads, max_tiles, by_work}));
    if (team == 1) {  // the serial rung does exactly this work without a team
        gemm_packed(call);
        return;
    }
    const Grid grid = thread_grid(team, m_strips, n_strips_max);
    // Two packed B panels (see above), shared by the team.
    const std::int64_t panel = KC * n_strips_max * bk.nr;
    T* bp = static_cast<T*>(thread_scratch(kScratchB, sizeof(T) * 2 * panel));

    bool out_of_memory = false;
#pragma omp parallel num_threads(team)
    {
        const int tid = omp_get_thread_num();
        const int nth = omp_get_num_threads();  // may be fewer than asked (OMP_THREAD_LIMIT)
        const Grid gr = (nth == team) ? grid : thread_grid(nth, m_strips, n_strips_max);
        const int ti = tid / gr.tn, tj = tid % gr.tn;
        const std::int64_t r0 = m_strips * ti / gr.tm, r1 = m_strips * (ti + 1) / gr.tm;
        // This thread's A block (mc x kc).  Allocation may throw, and an
        // exception must not escape an OpenMP region, hence the nothrow check.
        const std::int64_t a_strips = std::max<std::int64_t>(1, std::min(r1 - r0, plan.mc_strips));
        T* ap = static_cast<T*>(thread_scratch_nothrow(kScratchA, sizeof(T) * KC * bk.mr * a_strips));
        if (ap == nullptr) {
#pragma omp atomic write
            out_of_memory = true;
        }
        int buf = 0;
        for (std::int64_t jc = 0; jc < g.n; jc += NC) {
            const std::int64_t nc = std::min(NC, g.n - jc);
            const Direct d = choose_direct(bk, g, nc);
            const std::int64_t n_strips = (nc + bk.nr - 1) / bk.nr;
            const std::int64_t s0 = n_strips * tj / gr.tn, s1 = n_strips * (tj + 1) / gr.tn;
            for (std::int64_t pc = 0; pc < g.k; pc += KC) {
                const std::int64_t kc = std::min(KC, g.k - pc);
                const T beta = (pc == 0) ? g.beta : T(1);
                T* panel_p = bp + buf * panel;
                buf ^= 1;
                pack_b_panel(bk, g, d, jc, nc, pc, kc, panel_p, n_strips * tid / nth, n_strips * (tid + 1) / nth);
#pragma omp barrier  // the whole panel is packed before anyone reads it
                if (ap != nullptr && r0 < r1 && s0 < s1)
                    macro_kernel(bk, plan, g, d, jc, nc, pc, kc, beta, panel_p, ap, r0, r1, s0, s1);
            }
        }
    }
    if (out_of_memory) throw std::bad_alloc();
#endif
}

template void gemm_openmp<float>(const GemmArgs<float>&, int);
template void gemm_openmp<double>(const GemmArgs<double>&, int);

}  // namespace whygpu
