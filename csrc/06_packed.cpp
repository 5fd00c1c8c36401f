// Rung 6 -- packed: Goto/BLIS-style loops around a SIMD register-tiled
// micro-kernel.
//
// What changes from rung 5 (blocked):
//   1. Register blocking.  The innermost work is a micro-kernel that keeps an
//      MR x NR tile of C (e.g. 8 x 32 floats = 16 AVX-512 registers) in
//      registers for the whole k loop.  Each step loads one row of B (NR
//      numbers) and MR numbers of A and does MR x NR multiply-adds: 16 FMAs
//      for 2 vector loads and 8 broadcasts.  C is touched once per panel,
//      not once per k step as in rung 5.
//   2. Packing.  Before computing, a kc x nc panel of B is copied into NR-wide
//      strips and an mc x kc block of A into MR-tall micro-panels, both in
//      exactly the order the micro-kernel reads them.  The micro-kernel then
//      reads memory strictly sequentially, with no TLB misses and no stride,
//      whatever the layout of the inputs (transposed, sliced, Fortran).
//      Packing costs O(n^2) memory moves against O(n^3) flops.
//   3. Explicit SIMD.  The micro-kernel is written with FMA intrinsics, one
//      file per instruction set (06_ukernel_avx512.cpp, 06_ukernel_avx2.cpp,
//      06_ukernel_portable.cpp), chosen at run time (06_dispatch.cpp).
//
//   4. Skinny shapes.  Packing pays off when a packed panel is reused many
//      times.  Deep-learning layers are often skinny (a batch of 32 rows, an
//      output layer of 10 columns), so an operand whose panels would feed
//      only a few tiles is read in place instead (packed.h, choose_direct),
//      a narrow micro-kernel serves a last strip of <= NR/2 columns, and a
//      product with very few columns is computed as C^T = B^T A^T (orient).
//
// Cache plan (block sizes derived from this CPU's caches in 06_blocking.cpp):
//   a kc x NR micro-panel of B       -> L1   (reused by the mc/MR A micro-panels)
//   the mc x kc packed block of A    -> L2   (reused by every B strip of the panel)
//   the kc x nc packed panel of B    -> L3   (reused by every A block)
//   C                                -> each MR x NR tile loaded and stored once per panel
//
// The loops, outermost first (the five loops of Goto and BLIS):
//   jc: columns of C in steps of nc        (a B panel per step)
//    pc: depth in steps of kc              (pack B[pc:pc+kc, jc:jc+nc])
//     ic: rows of C in steps of mc         (pack A[ic:ic+mc, pc:pc+kc])
//      jr: columns in steps of NR          (one B micro-panel)
//       ir: rows in steps of MR            (one micro-kernel call)
//        p: inside the micro-kernel, kc rank-1 updates of the register tile
#include <algorithm>

#include "packed.h"

namespace whygpu {

template <typename T>
void gemm_packed(const GemmArgs<T>& call) {
    if (call.m == 0 || call.n == 0) return;
    if (call.k == 0 || call.alpha == T(0)) { scale_c(call); return; }

    const Blocking<T>& bk = blocking_for<T>(current_arch());
    const GemmArgs<T> g = orient(call, bk);  // maybe compute C^T = B^T A^T instead
    const Plan plan = plan_blocks(bk, g.n, g.k);
    const std::int64_t KC = plan.kc, NC = plan.nc;
    const std::int64_t m_strips = (g.m + bk.mr - 1) / bk.mr;
    const std::int64_t a_strips = std::min(m_strips, plan.mc_strips);
    // Packed B panel (kc x nc, in NR strips) and A block (mc x kc, in MR strips):
    // per-thread scratch, no malloc per call.
    T* bp = static_cast<T*>(thread_scratch(kScratchB, sizeof(T) * KC * std::min(NC, (g.n + bk.nr - 1) / bk.nr * bk.nr)));
    T* ap = static_cast<T*>(thread_scratch(kScratchA, sizeof(T) * KC * bk.mr * a_strips));

    for (std::int64_t jc = 0; jc < g.n; jc += NC) {
        const std::int64_t nc = std::min(NC, g.n - jc);
        const Direct d = choose_direct(bk, g, nc);  // operands read in place, unpacked
        const std::int64_t n_strips = (nc + bk.nr - 1) / bk.nr;
        for (std::int64_t pc = 0; pc < g.k; pc += KC) {
            const std::int64_t kc = std::min(KC, g.k - pc);
            const T beta = (pc == 0) ? g.beta : T(1);  // later panels accumulate
            pack_b_panel(bk, g, d, jc, nc, pc, kc, bp, 0, n_strips);
            macro_kernel(bk, plan, g, d, jc, nc, pc, kc, beta, bp, ap, 0, m_strips, 0, n_strips);
        }
    }
}

template void gemm_packed<float>(const GemmArgs<float>&);
template void gemm_packed<double>(const GemmArgs<double>&);

}  // namespace whygpu
