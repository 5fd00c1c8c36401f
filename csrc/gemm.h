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

#include <cstdint>

namespace whygpu {

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
};

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
