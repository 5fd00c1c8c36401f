// wgmma_host.h -- the bit-level encodings rung 16 (16_wgmma.cu) hands to the
// Hopper hardware, as plain constexpr C++ so that they can be checked on any
// machine (tests/cuda_emu/check_wgmma_host.cpp) -- a wrong bit here gives
// silently wrong products on the GPU, not an error.
//
//  * The wgmma shared-memory matrix descriptor (PTX ISA, "Asynchronous
//    Warpgroup Level Matrix Shared Memory Layout: Matrix Descriptor"): 64 bits
//    telling the tensor core where an operand tile starts in shared memory and
//    how its 8 x 16-byte "core matrices" are laid out.
//  * The parameters of a TMA tensor map (cuTensorMapEncodeTiled) describing a
//    K-major bfloat16 matrix, and the conditions under which TMA cannot
//    describe it at all.
//
// No CUDA header: a host compiler builds the tests from this file alone.
// Under nvcc the functions are also __host__ __device__, so the kernel builds
// its descriptors with the very code the tests check.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define WHYGPU_HD __host__ __device__
#else
#define WHYGPU_HD
#endif

namespace whygpu {
namespace gpu {
namespace wgmma_host {

// ---- The matrix descriptor ------------------------------------------------------------
// Bit layout (PTX ISA, matrix-descriptor format of wgmma):
//   bits  0-13  start address in shared memory, >> 4 (addresses are 16-byte granular;
//               14 bits of 16-byte units cover the 256 KiB shared window)
//   bits 16-29  leading-dimension byte offset, >> 4
//   bits 32-45  stride-dimension byte offset, >> 4
//   bits 49-51  matrix base offset (non-zero only when a swizzled tile does not
//               start on the swizzle pattern's 1024-byte boundary -- never here)
//   bits 62-63  swizzle mode: 0 none (interleave), 1 128-byte, 2 64-byte, 3 32-byte
// Everything else is zero.
enum Swizzle : std::uint64_t { kSwizzleNone = 0, kSwizzle128B = 1, kSwizzle64B = 2, kSwizzle32B = 3 };

WHYGPU_HD constexpr std::uint64_t smem_descriptor(std::uint32_t smem_addr, std::uint32_t lbo_bytes,
                                                  std::uint32_t sbo_bytes, std::uint32_t base_offset, Swizzle swizzle) {
    return (std::uint64_t)((smem_addr & 0x3FFFFu) >> 4)                  // bits 0-13
           | (std::uint64_t)((lbo_bytes & 0x3FFFFu) >> 4) << 16          // bits 16-29
           | (std::uint64_t)((sbo_bytes & 0x3FFFFu) >> 4) << 32          // bits 32-45
           | (std::uint64_t)(base_offset & 0x7u) << 49                  // bits 49-51
           | (std::uint64_t)(swizzle & 0x3u) << 62;                     // bits 62-63
}

// The one descriptor rung 16 uses: a K-major tile whose rows are 128 bytes
// (64 bfloat16 of k) stored one after the other and 128-byte swizzled, the
// layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B.  Its core matrices (8 rows
// x 16 bytes) repeat every 8 rows = 1024 bytes along M/N: the stride offset.
// Along K a wgmma's 16 elements (32 bytes) stay inside one 128-byte row, so
// the leading offset is not used with a 128-byte swizzle (the PTX ISA says it
// is ignored for swizzled K-major layouts; 16 bytes -- field value 1 -- is the
// conventional filler).  Stepping k by 16 inside the row is done by adding
// 32 bytes to the start address: the swizzle is a function of the address
// bits, which is why the tile must sit on a 1024-byte boundary (base offset 0).
constexpr std::uint32_t kSw128RowBytes = 128;
constexpr std::uint32_t kSw128AtomBytes = 8 * kSw128RowBytes;  // 1024: the swizzle pattern's period
WHYGPU_HD constexpr std::uint64_t kmajor_sw128_descriptor(std::uint32_t smem_addr) {
    return smem_descriptor(smem_addr, 16, kSw128AtomBytes, 0, kSwizzle128B);
}

// ---- TMA tensor maps -------------------------------------------------------------------
// A K-major bfloat16 matrix X of `rows` rows and `k` columns, row stride `ld`
// elements, read in boxes of `box_rows` rows x 64 columns (one 128-byte
// swizzle row of k per tile row).  cuTensorMapEncodeTiled lists dimensions
// innermost first, and gives the strides (in bytes) of all but the innermost.
constexpr std::uint32_t kBoxK = 64;              // 64 bf16 = 128 bytes: the 128-byte swizzle span
constexpr std::uint32_t kBf16Bytes = 2;

struct TmaParams {
    std::uint64_t global_dim[2];     // {k, rows}
    std::uint64_t global_stride[1];  // {ld * 2}: bytes from one row to the next
    std::uint32_t box_dim[2];        // {64, box_rows}
    std::uint32_t element_stride[2]; // {1, 1}: every element
};

constexpr TmaParams kmajor_bf16_tma(std::uint64_t rows, std::uint64_t k, std::uint64_t ld, std::uint32_t box_rows) {
    return TmaParams{{k, rows}, {ld * kBf16Bytes}, {kBoxK, box_rows}, {1, 1}};
}

// Why TMA cannot describe that matrix (the cuTensorMapEncodeTiled rules for
// a 2-D, non-interleaved, 128-byte-swizzled bfloat16 map), or nullptr when it
// can.  The launcher checks this before encoding, so that a caller gets a
// sentence instead of an opaque CUDA_ERROR_INVALID_VALUE.
inline const char* tma_invalid(std::uintptr_t addr, std::uint64_t rows, std::uint64_t k, std::uint64_t ld,
                               std::uint32_t box_rows) {
    if (addr % 16 != 0) return "TMA needs the matrix's address 16-byte aligned";
    if (rows == 0 || k == 0) return "TMA cannot describe an empty matrix";
    if (rows > (std::uint64_t(1) << 32) || k > (std::uint64_t(1) << 32))
        return "TMA cannot describe a dimension over 2**32 elements";
    if (ld < k) return "the row stride is shorter than a row";
    const std::uint64_t stride = ld * kBf16Bytes;
    if (stride % 16 != 0) return "TMA needs the row stride a multiple of 16 bytes (8 bfloat16)";
    if (stride >= (std::uint64_t(1) << 40)) return "TMA needs the row stride under 2**40 bytes";
    if (box_rows == 0 || box_rows > 256) return "a TMA box has 1 to 256 rows";
    return nullptr;
}

}  // namespace wgmma_host
}  // namespace gpu
}  // namespace whygpu
