// gemm.h -- the one contract every C++ rung of the ladder implements.
//
//     C = alpha * op(A) * op(B) + beta * C
//
// Matrices are described BLIS-style by a pointer and two strides (in
// elements, may be negative), so a transpose or a NumPy slice is just a
// different pair of strides and no rung ever needs a "trans" flag:
//
//     element (i, p) of op(A) is a[i * rs_a + p * cs_a]     op(A) is (m, k)
//     element (p, j) of op(B) is b[p * rs_b + j * cs_b]     op(B) is (k, n)
//     element (i, j) of C     is c[i * rs_c + j * cs_c]     C     is (m, n)
//
// Rules every rung follows (tested in tests/test_kernels.py):
//   * beta == 0 means "overwrite": C is never read, so NaN garbage in an
//     uninitialised output cannot leak into the result (BLAS convention);
//   * m, n or k may be 0 (k == 0 gives C = beta * C);
//   * no global mutable state: scratch memory is per call or thread_local,
//     so the kernels may be called from several threads at once.
//
// naive accepts any strides (it is the oracle).  reordered and blocked are
// written for the classic row-major layout and require cs_a == cs_b == cs_c
// == 1; the binding layer makes such copies when needed.  The packed rungs
// accept any strides: packing reads A and B once, in whatever layout.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace whygpu {

// ---- Stopping early: Ctrl-C during a long product ----------------------------
// A kernel runs without the GIL, so Python cannot raise KeyboardInterrupt
// until it returns: a teacher who picked n = 3000 for the naive rung would
// wait a minute.  So the kernels ask stopping(g) between rows, blocks or
// row strips (a few milliseconds of work at most) and return at once when it
// says so; C is then partly written.  Only the thread that made the call
// (the OpenMP master) asks the binding's `poll` -- which takes the GIL for a
// moment and runs Python's signal handlers -- and at most every 20 ms; every
// thread of a team sees the answer through `stop`.  No Python here: `poll`
// is a plain function pointer.
struct Interrupt {
    bool (*poll)(void* ctx) = nullptr;  // true: stop (the binding has a KeyboardInterrupt pending)
    void* ctx = nullptr;
    std::thread::id owner = std::this_thread::get_id();
    std::atomic<bool> stop{false};
    std::chrono::steady_clock::time_point next{};  // the owner's next poll (only the owner touches it)

    bool check() {
        if (stop.load(std::memory_order_relaxed)) return true;
        if (poll == nullptr || std::this_thread::get_id() != owner) return false;
        const auto now = std::chrono::steady_clock::now();
        if (now < next) return false;
        next = now + std::chrono::milliseconds(20);
        if (!poll(ctx)) return false;
        stop.store(true, std::memory_order_relaxed);
        return true;
    }
};

template <typename T>
struct GemmArgs {
    std::int64_t m = 0, n = 0, k = 0;
    T alpha = T(1);
    const T* a = nullptr;  // op(A): (m, k), a[i*rs_a + p*cs_a]
    std::int64_t rs_a = 0, cs_a = 1;
    const T* b = nullptr;  // op(B): (k, n), b[p*rs_b + j*cs_b]
    std::int64_t rs_b = 0, cs_b = 1;
    T beta = T(0);
    T* c = nullptr;        // C: (m, n), c[i*rs_c + j*cs_c]
    std::int64_t rs_c = 0, cs_c = 1;
    Interrupt* interrupt = nullptr;  // null: never stop early
};

// Should the kernel stop now (Ctrl-C)?  Cheap: call it every few milliseconds of work.
template <typename T>
inline bool stopping(const GemmArgs<T>& g) {
    return g.interrupt != nullptr && g.interrupt->check();
}

// ---- The ladder, rung 3 onwards (rungs 1-2 are Python and Cython). -------
// Each is defined in its own file, csrc/NN_<name>.cpp, for float and double.
template <typename T> void gemm_naive(const GemmArgs<T>& g);      // 03_naive.cpp
template <typename T> void gemm_reordered(const GemmArgs<T>& g);  // 04_reordered.cpp
template <typename T> void gemm_blocked(const GemmArgs<T>& g);    // 05_blocked.cpp
template <typename T> void gemm_packed(const GemmArgs<T>& g);     // 06_packed.cpp
// threads >= 1; without OpenMP at build time this throws std::runtime_error.
template <typename T> void gemm_openmp(const GemmArgs<T>& g, int threads);  // 07_openmp.cpp
bool openmp_available();

// C = beta * C over the whole (m, n) matrix, honouring "beta == 0 overwrites".
// Every rung starts from this when k == 0 and the slow rungs use it always.
template <typename T>
inline void scale_c(const GemmArgs<T>& g) {
    if (g.beta == T(1)) return;
    for (std::int64_t i = 0; i < g.m; ++i) {
        T* crow = g.c + i * g.rs_c;
        for (std::int64_t j = 0; j < g.n; ++j) {
            T& cij = crow[j * g.cs_c];
            cij = (g.beta == T(0)) ? T(0) : g.beta * cij;
        }
    }
}

}  // namespace whygpu
