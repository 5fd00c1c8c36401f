// machine_probe.h -- microbenchmarks that measure this machine's "roofs":
// how many floating-point operations per second its cores can retire, and
// how many bytes per second its caches and memory can deliver.  The
// roofline model (python/whygpu/predict/roofline.py) compares every kernel of the
// ladder against these measured limits, not against a data-sheet number.
//
//   * fma_peak   -- kChains independent chains of vector multiply-adds per
//                   thread: the most arithmetic the core can do per cycle.
//                   One file per instruction set, chosen at run time like
//                   the micro-kernels (the same Arch as the packed kernels).
//   * scalar_chain -- one dependent chain of scalar multiply-adds (a dot
//                   product with a single accumulator): the limit of the
//                   textbook i-j-k loop, which adds into one sum.
//   * triad      -- STREAM's a[i] = b[i] + s * c[i] over a chosen working
//                   set, so it measures L2, L3 or DRAM bandwidth.
//
// All of them take a thread count, run with OpenMP when it was built, and
// keep no global state.
#pragma once

#include <cstdint>
#include <vector>

#include "packed.h"  // Arch

namespace whygpu {
namespace probe {

// Independent accumulator chains per thread.  An FMA has a latency of about
// 4 cycles and 2 pipes can start one each cycle, so at least 8 must be in
// flight; 12 leaves margin and still fits the registers of every ISA.
constexpr int kChains = 12;

// Per-ISA bodies (machine_probe_<isa>.cpp).  fma_chains_* runs `iters`
// rounds of kChains vector FMAs and returns a value depending on all of them
// (so the compiler cannot drop the work); fma_lanes_* is the float32 lanes
// per vector, so one round is kChains * lanes * 2 flops.
double fma_chains_portable(std::int64_t iters, float seed);
int fma_lanes_portable();
void triad_portable(double* a, const double* b, const double* c, double s, std::int64_t n);
#if defined(WHYGPU_X86_KERNELS)
double fma_chains_avx2(std::int64_t iters, float seed);
int fma_lanes_avx2();
void triad_avx2(double* a, const double* b, const double* c, double s, std::int64_t n);
double fma_chains_avx512(std::int64_t iters, float seed);
int fma_lanes_avx512();
void triad_avx512(double* a, const double* b, const double* c, double s, std::int64_t n);
#endif

// float32 flops in one round of fma_chains for `arch`.
std::int64_t fma_flops_per_iter(Arch arch);

// Wall seconds for `threads` threads each running `iters` rounds of the
// FMA chains of `arch` (flops = threads * iters * fma_flops_per_iter(arch)).
// Throws std::invalid_argument for an unsupported arch or threads < 1.
double fma_peak_seconds(Arch arch, int threads, std::int64_t iters);

// Seconds for `reps` passes of a one-accumulator float dot product over n
// numbers (2 * n * reps flops).  Single-threaded: a dependency chain is
// serial by definition.
double scalar_chain_seconds(std::int64_t n, std::int64_t reps);

// Triad over three float64 arrays of n_per_thread elements per thread (each
// thread works on its own slice, so a slice that fits a thread's L2 measures
// L2).  Returns one wall time per sample, each of `sweeps` passes; bytes per
// pass = 24 * n_per_thread * threads (STREAM's count: 2 reads + 1 write).
std::vector<double> triad_seconds(Arch arch, std::int64_t n_per_thread, int threads, int sweeps,
                                  int samples);

}  // namespace probe
}  // namespace whygpu
