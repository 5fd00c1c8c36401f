// Rung 6, the dispatcher: which micro-kernel runs on this CPU, and with
// which block sizes.  "What runs on Zen 4?" has its answer in kTable below.
//
// The CPU is asked once (cpuid for the instruction sets, xgetbv for whether
// the operating system saves the wide registers), the answer is cached, and
// WHYGPU_ARCH=portable|avx2|avx512 overrides it -- to an instruction set
// the CPU really has; asking for more falls back to the best one, with a
// warning, instead of dying with "Illegal instruction".
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "packed.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <cpuid.h>
#define WHYGPU_X86 1
#endif

namespace whygpu {

// ---- The table: one row per (instruction set, type) -----------------------
// Only the register tile is fixed here: it is set by the registers an
// instruction set has.  The block sizes kc, mc and nc depend on the caches of
// the CPU the code runs on, so 06_blocking.cpp derives them at run time.
namespace {
const Blocking<float> kFloatTable[] = {
    {4, 8, sgemm_ukr_portable, "sgemm_portable_4x8"},
#if defined(WHYGPU_X86_KERNELS)
    {6, 16, sgemm_ukr_avx2, "sgemm_avx2_6x16", 8, sgemm_ukr_avx2_narrow},
    {8, 32, sgemm_ukr_avx512, "sgemm_avx512_8x32", 16, sgemm_ukr_avx512_narrow},
#endif
};
const Blocking<double> kDoubleTable[] = {
    {4, 4, dgemm_ukr_portable, "dgemm_portable_4x4"},
#if defined(WHYGPU_X86_KERNELS)
    {6, 8, dgemm_ukr_avx2, "dgemm_avx2_6x8", 4, dgemm_ukr_avx2_narrow},
    {8, 16, dgemm_ukr_avx512, "dgemm_avx512_8x16", 8, dgemm_ukr_avx512_narrow},
#endif
};

template <typename T, std::size_t N>
const Blocking<T>* tuned(const Blocking<T> (&table)[N]) {
    // One copy per type, built on first use (C++11 magic statics are thread-safe).
    static const struct Tuned {
        Blocking<T> rows[N];
        explicit Tuned(const Blocking<T> (&t)[N]) {
            for (std::size_t i = 0; i < N; ++i) {
                rows[i] = t[i];
                choose_blocks(rows[i], sizeof(T));  // 06_blocking.cpp
            }
        }
    } t(table);
    return t.rows;
}

// ---- CPU detection ---------------------------------------------------------
struct CpuFeatures {
    bool avx2_fma = false;
    bool avx512f = false;
};

CpuFeatures detect() {
    CpuFeatures f;
#if defined(WHYGPU_X86)
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
    const bool osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), fma = ecx & (1u << 12);
    if (!(osxsave && avx)) return f;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool os_ymm = (xcr0_lo & 0x6u) == 0x6u;     // SSE + AVX state saved by the OS
    const bool os_zmm = (xcr0_lo & 0xE6u) == 0xE6u;   // + opmask and upper zmm state
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f.avx2_fma = os_ymm && fma && (ebx & (1u << 5));
    f.avx512f = f.avx2_fma && os_zmm && (ebx & (1u << 16));
#endif
    return f;
}

const CpuFeatures& features() {
    static const CpuFeatures f = detect();
    return f;
}

std::string g_env_warning;  // written once, during the first current_arch()

Arch initial_arch() {
    Arch best = best_arch();
    const char* env = std::getenv("WHYGPU_ARCH");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return best;
    for (Arch a : {Arch::portable, Arch::avx2, Arch::avx512}) {
        if (std::strcmp(env, arch_name(a)) == 0) {
            if (arch_supported(a)) return a;
            g_env_warning = std::string("WHYGPU_ARCH=") + env +
                            " is not supported by this CPU or build; using " + arch_name(best);
            return best;
        }
    }
    g_env_warning = std::string("WHYGPU_ARCH=") + env +
                    " is not one of auto, portable, avx2, avx512; using " + arch_name(best);
    return best;
}

std::atomic<int> g_arch{-1};
}  // namespace

const char* arch_name(Arch a) {
    switch (a) {
        case Arch::avx512: return "avx512";
        case Arch::avx2: return "avx2";
        default: return "portable";
    }
}

bool arch_supported(Arch a) {
    switch (a) {
        case Arch::portable: return true;
#if defined(WHYGPU_X86_KERNELS)
        case Arch::avx2: return features().avx2_fma;
        case Arch::avx512: return features().avx512f;
#endif
        default: return false;
    }
}

Arch best_arch() {
    if (arch_supported(Arch::avx512)) return Arch::avx512;
    if (arch_supported(Arch::avx2)) return Arch::avx2;
    return Arch::portable;
}

Arch current_arch() {
    int a = g_arch.load(std::memory_order_acquire);
    if (a < 0) {
        static const Arch first = initial_arch();  // thread-safe, runs once
        int expected = -1;
        g_arch.compare_exchange_strong(expected, static_cast<int>(first));
        a = g_arch.load(std::memory_order_acquire);
    }
    return static_cast<Arch>(a);
}

void set_arch(Arch a) {
    if (!arch_supported(a))
        throw std::invalid_argument(std::string("instruction set '") + arch_name(a) +
                                    "' is not supported by this CPU or build");
    current_arch();  // make sure the environment has been read first
    g_arch.store(static_cast<int>(a), std::memory_order_release);
}

const char* arch_env_warning() {
    current_arch();
    return g_env_warning.c_str();
}

namespace {
// Rows are indexed by Arch; a build without the x86 micro-kernels has only
// the portable row, so asking it for avx2/avx512 must throw, not read past the end.
template <typename T, std::size_t N>
const Blocking<T>& row_for(const Blocking<T> (&table)[N], Arch a) {
    const auto i = static_cast<std::size_t>(a);
    if (i >= N)
        throw std::invalid_argument(std::string("instruction set '") + arch_name(a) +
                                    "' has no micro-kernel in this build");
    return tuned(table)[i];
}
}  // namespace

template <>
const Blocking<float>& blocking_for<float>(Arch a) {
    return row_for(kFloatTable, a);
}
template <>
const Blocking<double>& blocking_for<double>(Arch a) {
    return row_for(kDoubleTable, a);
}

// ---- Scratch -----------------------------------------------------------------
namespace {
struct Scratch {
    void* p[2] = {nullptr, nullptr};
    std::size_t bytes[2] = {0, 0};
    ~Scratch() {
        for (void* q : p) std::free(q);
    }
};
thread_local Scratch t_scratch;
}  // namespace

void* thread_scratch_nothrow(ScratchSlot slot, std::size_t bytes) {
    Scratch& s = t_scratch;
    if (s.bytes[slot] < bytes) {
        std::free(s.p[slot]);
        s.p[slot] = nullptr;
        s.bytes[slot] = 0;
        const std::size_t rounded = (bytes + 63) / 64 * 64;
        s.p[slot] = std::aligned_alloc(64, rounded);
        if (s.p[slot] == nullptr) return nullptr;
        s.bytes[slot] = rounded;
    }
    return s.p[slot];
}

void* thread_scratch(ScratchSlot slot, std::size_t bytes) {
    void* p = thread_scratch_nothrow(slot, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}

}  // namespace whygpu
