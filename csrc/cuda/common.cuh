// common.cuh -- device helpers every CUDA rung shares: element access of
// op(A), op(B) and C with the layouts of gemm_cuda.h, guarded tile loads into
// shared memory, 16-byte loads with an element-by-element fallback, and the
// epilogue C = alpha * acc + beta * C (+ bias, relu).
//
// Offsets are computed in 64 bits (row * ld can exceed 2**31 for a large
// matrix even when every index fits in an int).
#pragma once

#include <cuda_runtime.h>

#include "gemm_cuda.h"

namespace whygpu {
namespace gpu {
namespace detail {

// ceil(a / b) for a >= 0 without overflow near INT_MAX.
__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return a == 0 ? 0 : (a - 1) / b + 1; }

// op(A)[i, p] and op(B)[p, j], unguarded: the caller knows i < m, p < k, j < n.
__device__ __forceinline__ float a_elem(const GemmArgs& g, int i, int p) {
    return g.trans_a ? g.a[(long long)p * g.lda + i] : g.a[(long long)i * g.lda + p];
}
__device__ __forceinline__ float b_elem(const GemmArgs& g, int p, int j) {
    return g.trans_b ? g.b[(long long)j * g.ldb + p] : g.b[(long long)p * g.ldb + j];
}

// The fused epilogue of gemm_cuda.h: + bias[j], then relu.
__device__ __forceinline__ float epilogue(const GemmArgs& g, int j, float v) {
    if (g.bias != nullptr) v += g.bias[j];
    return g.relu ? fmaxf(v, 0.f) : v;
}

// C[i, j] = alpha * acc + beta * C[i, j] (+ the epilogue); beta == 0 never reads C.
__device__ __forceinline__ void c_store(const GemmArgs& g, int i, int j, float acc) {
    float* cij = g.c + (long long)i * g.ldc + j;
    *cij = epilogue(g, j, (g.beta == 0.f) ? g.alpha * acc : g.alpha * acc + g.beta * *cij);
}

// The same for the four elements C[i, j .. j+3] (any of them may be outside
// the matrix): one 16-byte access when C allows it, else element by element.
__device__ __forceinline__ void c_store4(const GemmArgs& g, int i, int j, float4 acc) {
    if (i >= g.m) return;
    float* cij = g.c + (long long)i * g.ldc + j;
    if (g.vec_c && j + 3 < g.n) {
        float4 out = make_float4(g.alpha * acc.x, g.alpha * acc.y, g.alpha * acc.z, g.alpha * acc.w);
        if (g.beta != 0.f) {
            const float4 old = *reinterpret_cast<const float4*>(cij);
            out.x += g.beta * old.x; out.y += g.beta * old.y;
            out.z += g.beta * old.z; out.w += g.beta * old.w;
        }
        if (g.bias != nullptr || g.relu) {
            out.x = epilogue(g, j, out.x); out.y = epilogue(g, j + 1, out.y);
            out.z = epilogue(g, j + 2, out.z); out.w = epilogue(g, j + 3, out.w);
        }
        *reinterpret_cast<float4*>(cij) = out;
        return;
    }
    const float v[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
        if (j + q < g.n) c_store(g, i, j + q, v[q]);
}

// Copies the ROWS x COLS tile of op(X) whose top-left element is (r0, c0)
// into shared memory, element (r, c) going to s[r * RS + c * CS], with zeros
// where the tile sticks out of op(X) (nrows x ncols).  op(X)[r, c] is
// x[r * ldx + c], or x[c * ldx + r] when `trans`.  Consecutive threads walk
// along the dimension that is contiguous in memory, so a warp's global reads
// coalesce however X is stored.  NT threads, ids 0..NT-1, take part.
template <int ROWS, int COLS, int NT, int RS, int CS>
__device__ __forceinline__ void load_tile(const float* __restrict__ x, long long ldx, bool trans, int nrows,
                                          int ncols, int r0, int c0, float* s, int tid) {
    static_assert((ROWS * COLS) % NT == 0, "every thread loads the same number of elements");
#pragma unroll
    for (int q = 0; q < ROWS * COLS / NT; ++q) {
        const int e = tid + q * NT;
        int r, c;
        if (!trans) { r = e / COLS; c = e % COLS; }  // memory rows of X are op(X)'s rows
        else        { r = e % ROWS; c = e / ROWS; }  // memory rows of X are op(X)'s columns
        const int gr = r0 + r, gc = c0 + c;
        float v = 0.f;
        if (gr < nrows && gc < ncols)
            v = trans ? x[(long long)gc * ldx + gr] : x[(long long)gr * ldx + gc];
        s[r * RS + c * CS] = v;
    }
}

// Elements [row, col .. col+3] of a row-major matrix X stored with nrows x
// ncols elements and row stride ld (memory coordinates, not op(X)'s), zeros
// outside.  One 16-byte load when `vec` (X 16-byte aligned, ld % 4 == 0; col
// is a multiple of 4 at every call) and all four are inside; else element by
// element: the edges, and leading dimensions that are not multiples of 4.
__device__ __forceinline__ float4 load4(const float* __restrict__ x, long long ld, int nrows, int ncols, int row,
                                        int col, bool vec) {
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row >= nrows) return v;
    const float* p = x + (long long)row * ld + col;
    if (vec && col + 3 < ncols) return *reinterpret_cast<const float4*>(p);
    if (col < ncols) v.x = p[0];
    if (col + 1 < ncols) v.y = p[1];
    if (col + 2 < ncols) v.z = p[2];
    if (col + 3 < ncols) v.w = p[3];
    return v;
}

}  // namespace detail
}  // namespace gpu
}  // namespace whygpu
