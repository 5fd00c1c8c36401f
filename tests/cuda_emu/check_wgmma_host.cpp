// check_wgmma_host.cpp -- checks the host-side encodings of rung 16
// (csrc/cuda/wgmma_host.h) without a GPU: the wgmma shared-memory matrix
// descriptors against values worked out by hand from the PTX ISA's bit layout,
// and the TMA tensor-map parameters and validity rules of cuTensorMapEncodeTiled.
// A wrong bit in a descriptor would not fail on the GPU: it would multiply the
// wrong numbers.  Exits 0 when everything holds, 1 otherwise (tests/test_wgmma_host.py).
//
//     g++ -std=c++17 -Icsrc/cuda tests/cuda_emu/check_wgmma_host.cpp -o check && ./check
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "wgmma_host.h"

namespace wh = whygpu::gpu::wgmma_host;

static int failures = 0;

#define CHECK(cond)                                                    \
    do {                                                               \
        if (!(cond)) {                                                 \
            std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                \
        }                                                              \
    } while (0)

static void check_eq(std::uint64_t got, std::uint64_t want, const char* what) {
    if (got != want) {
        std::printf("FAILED %s: got 0x%016llx, want 0x%016llx\n", what, (unsigned long long)got,
                    (unsigned long long)want);
        ++failures;
    }
}

// A reason that is set and mentions `word` (so each rule reports itself, not another one).
static void check_reason(const char* why, const char* word, const char* what) {
    if (why == nullptr || std::strstr(why, word) == nullptr) {
        std::printf("FAILED %s: reason \"%s\", expected one mentioning \"%s\"\n", what, why ? why : "(none)", word);
        ++failures;
    }
}

// The descriptor is a compile-time function: the kernel's constants are checked at compile time too.
static_assert(wh::kmajor_sw128_descriptor(0x400) == 0x4000004000010040ull, "descriptor at 0x400");

int main() {
    // ---- Descriptors (PTX ISA matrix-descriptor format: start >> 4 in bits 0-13,
    // leading byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45, base
    // offset in 49-51, swizzle mode in 62-63 with 1 = 128-byte swizzle).

    // K-major, 128-byte swizzle, tile at shared address 0x400:
    //   start  0x400 >> 4 = 0x40                     -> 0x0000000000000040
    //   LBO    16 >> 4 = 1, << 16                    -> 0x0000000000010000
    //   SBO    1024 >> 4 = 64 = 0x40, << 32          -> 0x0000004000000000
    //   swizzle 1 << 62                              -> 0x4000000000000000
    check_eq(wh::kmajor_sw128_descriptor(0x400), 0x4000004000010040ull, "sw128 descriptor at 0x400");

    // The second consumer warpgroup's A rows of stage 1 in a layout like the
    // kernel's: base 0x10400 + 16 KiB (stage 1) + 8 KiB (64 rows x 128 bytes)
    // = 0x16400; 0x16400 >> 4 = 0x1640 (fits the 14-bit field: < 0x4000).
    check_eq(wh::kmajor_sw128_descriptor(0x16400), 0x4000004000011640ull, "sw128 descriptor at 0x16400");

    // Stepping k by 16 bf16 = 32 bytes inside a swizzle row adds 32 >> 4 = 2 to
    // the start field and nothing else (what the kernel's da + 2 * kk does).
    for (std::uint32_t kk = 0; kk < 4; ++kk)
        check_eq(wh::kmajor_sw128_descriptor(0x400 + 32 * kk), wh::kmajor_sw128_descriptor(0x400) + 2 * kk,
                 "k step inside the swizzle row");

    // Every field at its maximum, to see that none overlaps another and the
    // reserved bits (14-15, 30-31, 46-48, 52-61) stay zero:
    //   start/LBO/SBO 0x3fff0 >> 4 = 0x3fff each     -> 0x00003fff3fff3fff
    //   base offset 7 << 49                          -> 0x000e000000000000
    //   swizzle 3 (32-byte) << 62                    -> 0xc000000000000000
    check_eq(wh::smem_descriptor(0x3fff0, 0x3fff0, 0x3fff0, 7, wh::kSwizzle32B), 0xc00e3fff3fff3fffull,
             "all fields at their maximum");
    // The swizzle codes: 64-byte is 2 -> bit 63 alone; none is 0.
    check_eq(wh::smem_descriptor(0, 0, 0, 0, wh::kSwizzle64B), 0x8000000000000000ull, "64-byte swizzle code");
    check_eq(wh::smem_descriptor(0, 0, 0, 0, wh::kSwizzleNone), 0, "no swizzle");
    // Only the low 18 bits of an address count (the 14-bit field holds 16-byte units):
    // 0x40010 -> 0x00010 -> start 1.
    check_eq(wh::smem_descriptor(0x40010, 0, 0, 0, wh::kSwizzleNone), 1, "address wraps at 256 KiB");
    // Non-swizzled interleave example: LBO 128 bytes -> 8 << 16, SBO 256 bytes -> 16 << 32.
    check_eq(wh::smem_descriptor(0x100, 128, 256, 0, wh::kSwizzleNone), 0x0000001000080010ull, "no-swizzle offsets");

    // ---- Tensor-map parameters: (rows, k) bf16 with row stride ld, innermost dimension first.
    {
        const wh::TmaParams p = wh::kmajor_bf16_tma(1000, 4096, 4104, 128);
        CHECK(p.global_dim[0] == 4096 && p.global_dim[1] == 1000);  // {k, rows}
        CHECK(p.global_stride[0] == 4104 * 2);                        // 8208 bytes from row to row
        CHECK(p.box_dim[0] == 64 && p.box_dim[1] == 128);             // 64 bf16 = 128 bytes = the swizzle span
        CHECK(p.element_stride[0] == 1 && p.element_stride[1] == 1);
        CHECK(p.box_dim[0] * wh::kBf16Bytes == wh::kSw128RowBytes);  // the box row is exactly one swizzle row
    }
    {
        const wh::TmaParams p = wh::kmajor_bf16_tma(5, 3, 8, 256);  // smaller than one box: TMA zero-fills the rest
        CHECK(p.global_dim[0] == 3 && p.global_dim[1] == 5 && p.global_stride[0] == 16 && p.box_dim[1] == 256);
    }

    // ---- When TMA can describe the matrix, and why not.
    const std::uintptr_t ok_addr = 0x7f0000000100;  // 256-byte aligned, as tensor_core.cu allocates
    CHECK(wh::tma_invalid(ok_addr, 1000, 4096, 4104, 128) == nullptr);
    CHECK(wh::tma_invalid(ok_addr, 1, 1, 8, 256) == nullptr);                    // a 1 x 1 matrix, ld 8 (16 bytes)
    CHECK(wh::tma_invalid(ok_addr, std::uint64_t(1) << 32, 8, 8, 128) == nullptr);  // 2**32 rows is still allowed
    check_reason(wh::tma_invalid(ok_addr + 8, 1000, 4096, 4104, 128), "16-byte aligned", "8-byte aligned address");
    check_reason(wh::tma_invalid(ok_addr, 1000, 4096, 4100, 128), "multiple of 16 bytes", "ld 4100 = 8200 bytes");
    check_reason(wh::tma_invalid(ok_addr, 1000, 12, 12, 128), "multiple of 16 bytes", "ld 12 = 24 bytes");
    check_reason(wh::tma_invalid(ok_addr, (std::uint64_t(1) << 32) + 1, 8, 8, 128), "2**32", "too many rows");
    check_reason(wh::tma_invalid(ok_addr, 8, (std::uint64_t(1) << 32) + 8, (std::uint64_t(1) << 32) + 8, 128),
                 "2**32", "too long a k");
    check_reason(wh::tma_invalid(ok_addr, 8, 8, std::uint64_t(1) << 39, 128), "2**40", "stride of 2**40 bytes");
    check_reason(wh::tma_invalid(ok_addr, 1000, 4096, 4104, 257), "256", "a box of 257 rows");
    check_reason(wh::tma_invalid(ok_addr, 1000, 4096, 4104, 0), "256", "a box of no rows");
    check_reason(wh::tma_invalid(ok_addr, 1000, 4096, 4088, 128), "shorter than a row", "ld < k");
    check_reason(wh::tma_invalid(ok_addr, 0, 4096, 4096, 128), "empty", "no rows");

    if (failures != 0) {
        std::printf("%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("wgmma_host: all checks passed\n");
    return 0;
}
