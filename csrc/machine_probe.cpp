// machine_probe.cpp -- run the probe loops of machine_probe_<isa>.cpp on one
// or more threads and time them.  Compiled with baseline flags only: the ISA
// is chosen at run time (an unsupported one is refused, never executed).
#include "machine_probe.h"

#include <chrono>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#if defined(WHYGPU_HAVE_OPENMP)
#include <omp.h>
#endif

namespace whygpu {
namespace probe {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

void check_threads(int threads) {
    if (threads < 1) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
#if !defined(WHYGPU_HAVE_OPENMP)
    if (threads != 1)
        throw std::invalid_argument("whygpu was built without OpenMP: the probes run on 1 thread only");
#endif
}

void check_arch(Arch arch) {
    if (!arch_supported(arch))
        throw std::invalid_argument(std::string("instruction set ") + arch_name(arch) +
                                    " is not supported by this CPU or build");
}

using ChainsFn = double (*)(std::int64_t, float);
using TriadFn = void (*)(double*, const double*, const double*, double, std::int64_t);

ChainsFn chains_for(Arch arch) {
    switch (arch) {
#if defined(WHYGPU_X86_KERNELS)
        case Arch::avx512: return fma_chains_avx512;
        case Arch::avx2: return fma_chains_avx2;
#endif
        default: return fma_chains_portable;
    }
}

TriadFn triad_for(Arch arch) {
    switch (arch) {
#if defined(WHYGPU_X86_KERNELS)
        case Arch::avx512: return triad_avx512;
        case Arch::avx2: return triad_avx2;
#endif
        default: return triad_portable;
    }
}

int lanes_for(Arch arch) {
    switch (arch) {
#if defined(WHYGPU_X86_KERNELS)
        case Arch::avx512: return fma_lanes_avx512();
        case Arch::avx2: return fma_lanes_avx2();
#endif
        default: return fma_lanes_portable();
    }
}

// A 64-byte aligned array of doubles, freed automatically.
struct FreeDeleter {
    void operator()(double* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<double, FreeDeleter>;

Buffer aligned_doubles(std::int64_t n) {
    std::size_t bytes = static_cast<std::size_t>(n) * sizeof(double);
    bytes = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (p == nullptr) throw std::bad_alloc();
    return Buffer(static_cast<double*>(p));
}

volatile double g_sink_unused = 0.0;  // write-only: keeps results observable

}  // namespace

std::int64_t fma_flops_per_iter(Arch arch) {
    return static_cast<std::int64_t>(kChains) * lanes_for(arch) * 2;
}

double fma_peak_seconds(Arch arch, int threads, std::int64_t iters) {
    check_arch(arch);
    check_threads(threads);
    if (iters < 1) throw std::invalid_argument("iters must be >= 1");
    const ChainsFn chains = chains_for(arch);
    double sink = 0.0;
#if defined(WHYGPU_HAVE_OPENMP)
    Clock::time_point t0;
    double elapsed = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#pragma omp single
        t0 = Clock::now();  // implicit barrier: every thread starts after this
        sink += chains(iters, 1.0f + 0.001f * static_cast<float>(omp_get_thread_num()));
#pragma omp barrier
#pragma omp single
        elapsed = seconds_since(t0);
    }
#else
    const auto t0 = Clock::now();
    sink = chains(iters, 1.0f);
    const double elapsed = seconds_since(t0);
#endif
    g_sink_unused = sink;
    return elapsed;
}

double scalar_chain_seconds(std::int64_t n, std::int64_t reps) {
    if (n < 1 || reps < 1) throw std::invalid_argument("n and reps must be >= 1");
    std::unique_ptr<float[]> x(new float[n]), y(new float[n]);
    for (std::int64_t i = 0; i < n; ++i) {
        x[i] = 1e-3f * static_cast<float>(i % 7 + 1);
        y[i] = 1e-3f * static_cast<float>(i % 5 + 1);
    }
    // One accumulator, no -ffast-math: every add waits for the previous one,
    // exactly like `sum += a[i][p] * b[p][j]` in the naive kernel.
    float acc = 0.0f;
    const auto t0 = Clock::now();
    for (std::int64_t r = 0; r < reps; ++r)
        for (std::int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
    const double elapsed = seconds_since(t0);
    g_sink_unused = acc;
    return elapsed;
}

std::vector<double> triad_seconds(Arch arch, std::int64_t n_per_thread, int threads, int sweeps,
                                  int samples) {
    check_arch(arch);
    check_threads(threads);
    if (n_per_thread < 1 || sweeps < 1 || samples < 1)
        throw std::invalid_argument("n_per_thread, sweeps and samples must be >= 1");
    const TriadFn triad = triad_for(arch);
    const std::int64_t n = n_per_thread * threads;
    Buffer a = aligned_doubles(n), b = aligned_doubles(n), c = aligned_doubles(n);
    double* pa = a.get();
    double* pb = b.get();
    double* pc = c.get();
    std::vector<double> out(static_cast<std::size_t>(samples), 0.0);
#if defined(WHYGPU_HAVE_OPENMP)
    Clock::time_point t0;
#pragma omp parallel num_threads(threads)
    {
        // Each thread first-touches and then sweeps only its own slice, so a
        // slice sized for one core's L2 stays in that core's L2.
        const std::int64_t lo = static_cast<std::int64_t>(omp_get_thread_num()) * n_per_thread;
        for (std::int64_t i = lo; i < lo + n_per_thread; ++i) { pa[i] = 0.0; pb[i] = 1.0; pc[i] = 2.0; }
        for (int s = 0; s < samples; ++s) {
#pragma omp barrier
#pragma omp single
            t0 = Clock::now();  // implicit barrier after single
            for (int r = 0; r < sweeps; ++r)
                triad(pa + lo, pb + lo, pc + lo, 1.0 + 1e-9 * r, n_per_thread);
#pragma omp barrier
#pragma omp single
            out[static_cast<std::size_t>(s)] = seconds_since(t0);
        }
    }
#else
    for (std::int64_t i = 0; i < n; ++i) { pa[i] = 0.0; pb[i] = 1.0; pc[i] = 2.0; }
    for (int s = 0; s < samples; ++s) {
        const auto t0 = Clock::now();
        for (int r = 0; r < sweeps; ++r) triad(pa, pb, pc, 1.0 + 1e-9 * r, n);
        out[static_cast<std::size_t>(s)] = seconds_since(t0);
    }
#endif
    g_sink_unused = pa[n - 1];
    return out;
}

}  // namespace probe
}  // namespace whygpu
