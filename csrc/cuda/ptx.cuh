// ptx.cuh -- the warp-level tensor-core instructions rung 15 uses, one
// inline-PTX wrapper each, with the register layouts they imply.
//
// The CPU emulation (tests/cuda_emu/ptx.cuh, same names and signatures) is
// picked instead of this file when the kernels are built for tests: the
// emulated sources are compiled with tests/cuda_emu first on the include
// path.  So include this header from a .cu file directly, never through
// another header of this directory (which would find this copy first).
//
// Fragments follow the PTX ISA ("Warp-level matrix fragment layouts" of
// mma.m16n8k16 / m16n8k8).  In a warp, lane = 4 * g + t: g = lane / 4 is
// the lane's group (a row of A and C, a column of B), t = lane % 4 its
// place in the group.  A 32-bit register holds one TF32 value or two
// bfloat16 values (lower half first).
#pragma once

#include <cstdint>

namespace whygpu {
namespace gpu {
namespace ptx {

// The 32-bit shared-memory address PTX wants for a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ---- cp.async: global -> shared without passing through registers (sm_80+) -----------
// Copies `src_bytes` (0..16) bytes from global `src` to shared `dst` and zero-fills the
// rest of the 16 bytes: src_bytes < 16 is how a tile sticking out of the matrix reads
// zeros.  Both addresses 16-byte aligned.  .cg: cached in L2 only (each tile is read once
// per block; L1 would only be polluted).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}
// Closes the group of copies this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight
// (other threads' copies need a __syncthreads after it to be visible).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- ldmatrix: four 8x8 matrices of 16-bit elements from shared memory ----------------
// Lanes 8i .. 8i+7 give the addresses of the 8 rows (16 bytes each) of matrix i;
// lane 4g + t receives, in r[i], the 32 bits at row g, bytes 4t .. 4t+3 of matrix i.
// With 32-bit data (TF32) the same instruction hands out 8x4 matrices: row g, element t.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row_addr)));
}

// ---- mma.sync: D = A B + D on the tensor cores, one warp ------------------------------
// bfloat16 m16n8k16.  A (16 x 16, row-major): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..),
// a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..).  B (16 x 8, "col": k runs along a register):
// b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g).  C/D (16 x 8, float32): d[0..1] =
// (g, 2t..2t+1), d[2..3] = (g+8, 2t..2t+1).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// TF32 m16n8k8.  A (16 x 8): a[0] = (g, t), a[1] = (g+8, t), a[2] = (g, t+4), a[3] = (g+8, t+4).
// B (8 x 8): b[0] = (k t, n g), b[1] = (k t+4, n g).  C/D as for bf16.
__device__ __forceinline__ void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// float32 bits -> TF32 (round to nearest, ties away from zero: cvt.rna).  The tensor
// core would otherwise just ignore the low 13 bits (truncation: twice the error).
__device__ __forceinline__ uint32_t to_tf32(uint32_t f32_bits) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(f32_bits)));
    return r;
}

}  // namespace ptx
}  // namespace gpu
}  // namespace whygpu
