// ptx.cuh (emulated) -- the CPU stand-ins for csrc/cuda/ptx.cuh: the same
// functions, doing what the PTX ISA says the instructions do, so that rung
// 15's fragment bookkeeping, pipeline waits and edge handling are checked on
// a machine without a GPU.  build_emulated.py puts this directory first on
// the include path, so a .cu file's #include "ptx.cuh" lands here.
//
//  * ldmatrix and mma.sync are warp-collective: every lane publishes its
//    operands (row addresses, fragments) in the warp's exchange area of
//    emu.h, the warp meets at a barrier, and each lane gathers what the
//    fragment layout says it receives.  Consecutive instructions use the two
//    areas in turn, so one barrier per instruction suffices: a lane can only
//    write an area again two instructions later, after every lane has passed
//    the next instruction's barrier -- that is, has finished reading it.
//    The layouts are written out below from the PTX ISA, element by element,
//    independently of how the kernel uses them.
//  * cp.async is asynchronous for real: a copy is only queued, and lands
//    (with its zero fill) when the issuing thread's cp.async.wait_group lets
//    its group complete -- as late as a GPU may land it.  A kernel that
//    reads a stage before waiting for it, or counts its groups wrong, reads
//    stale shared memory here and fails the tests.
//  * mma.sync multiplies exactly what the tensor core would: bfloat16
//    operands as given, TF32 operands with the low 13 bits of each float32
//    ignored (as the hardware does), products summed in float32.
//  * Misaligned addresses abort with a message (a GPU would fault).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace whygpu {
namespace gpu {
namespace ptx {
namespace emu_detail {

inline void require_aligned(const void* p, unsigned bytes, const char* what) {
    if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0) {
        std::fprintf(stderr, "emulated %s: address %p is not %u-byte aligned\n", what, p, bytes);
        std::abort();
    }
}
inline void require_full_warp(const char* what) {
    if (emu::tl_warp_size != 32) {
        std::fprintf(stderr, "emulated %s: needs all 32 lanes of the warp\n", what);
        std::abort();
    }
}
// Which of the warp's two exchange areas this lane's current instruction uses: all 32
// lanes run the same collective instructions, so their counts agree (reset per block).
struct Phase {
    unsigned long long block = 0;
    unsigned area = 0;
};
inline Phase g_phase[1024];  // per thread of the block (all fibers share one OS thread)
inline Phase& phase() {
    Phase& p = g_phase[emu::tl_tid];
    if (p.block != emu::tl_block_serial) p = {emu::tl_block_serial, 0};
    return p;
}
inline unsigned char* area() {
    return emu::tl_warp_xchg + phase().area * 32 * emu::kXchgBytes;
}
// Lane `lane`'s slot in the current area.
inline unsigned char* slot(unsigned lane) { return area() + lane * emu::kXchgBytes; }
// Publish-then-read: after this, every lane's slot of the current area holds what it wrote;
// the next instruction goes to the other area.
inline void warp_barrier() { emu::tl_warp_barrier->arrive_and_wait(); }
inline void next_area() { phase().area ^= 1u; }

struct Copy {
    void* dst;
    const void* src;
    int bytes;
};
struct AsyncCopies {
    unsigned long long block = 0;     // the block these copies belong to
    std::vector<Copy> open;           // issued since the last commit
    std::vector<std::vector<Copy>> groups;  // committed, oldest first
};
inline AsyncCopies g_async[1024];  // per thread of the block
inline AsyncCopies& async_state() {
    AsyncCopies& a = g_async[emu::tl_tid];
    if (a.block != emu::tl_block_serial) {  // a new block: nothing of the last one carries over
        a.open.clear();
        a.groups.clear();
        a.block = emu::tl_block_serial;
    }
    return a;
}
inline void land(const std::vector<Copy>& group) {
    for (const Copy& c : group) {
        std::memcpy(c.dst, c.src, c.bytes);
        std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
    }
}

inline float bf16_to_float(uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float tf32_operand(uint32_t bits) {  // what the tensor core reads of a TF32 register
    const uint32_t u = bits & 0xffffe000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace emu_detail

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
    emu_detail::require_aligned(dst, 16, "cp.async (shared address)");
    emu_detail::require_aligned(src, 16, "cp.async (global address)");
    if (src_bytes < 0 || src_bytes > 16) {
        std::fprintf(stderr, "emulated cp.async: src-size %d is not in 0..16\n", src_bytes);
        std::abort();
    }
    emu_detail::async_state().open.push_back({dst, src, src_bytes});
}
inline void cp_async_commit() {
    auto& st = emu_detail::async_state();
    st.groups.push_back(std::move(st.open));  // an empty group is a group too, as in PTX
    st.open.clear();
}
template <int N>
inline void cp_async_wait() {
    auto& st = emu_detail::async_state();
    while (st.groups.size() > static_cast<std::size_t>(N)) {
        emu_detail::land(st.groups.front());
        st.groups.erase(st.groups.begin());
    }
}

// ldmatrix .x4 (b16): lane L gives the address of row L % 8 of matrix L / 8.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
    using namespace emu_detail;
    require_full_warp("ldmatrix");
    require_aligned(row_addr, 16, "ldmatrix (row address)");
    const unsigned lane = emu::tl_lane;
    std::memcpy(slot(lane), &row_addr, sizeof row_addr);
    warp_barrier();
    const unsigned g = lane / 4, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {  // matrix i, row g, bytes 4t .. 4t+3
        const unsigned char* row;
        std::memcpy(&row, slot(8 * i + g), sizeof row);
        std::memcpy(&r[i], row + 4 * t, 4);
    }
    next_area();
}

namespace emu_detail {
// The warp's fragments, gathered: every lane publishes a[4], b[2], d[4] (40 bytes).
struct Frag {
    uint32_t a[4], b[2];
    float d[4];
};
inline const Frag& frag_of(unsigned lane) { return *reinterpret_cast<const Frag*>(slot(lane)); }
// Which lane and register hold an element, per the PTX ISA's figures.
// C/D (16 x 8): row r, column c -> lane 4 (r % 8) + c / 2, register 2 (r / 8) + c % 2.
inline float d_elem(unsigned r, unsigned c) { return frag_of(4 * (r % 8) + c / 2).d[2 * (r / 8) + c % 2]; }
// bf16 A (16 x 16): row r, column k -> lane 4 (r % 8) + (k % 8) / 2, register (r / 8) + 2 (k / 8), half k % 2.
inline float a_bf16(unsigned r, unsigned k) {
    const uint32_t reg = frag_of(4 * (r % 8) + (k % 8) / 2).a[(r / 8) + 2 * (k / 8)];
    return bf16_to_float(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xffffu));
}
// bf16 B (16 x 8): row k, column n -> lane 4 n + (k % 8) / 2, register k / 8, half k % 2.
inline float b_bf16(unsigned k, unsigned n) {
    const uint32_t reg = frag_of(4 * n + (k % 8) / 2).b[k / 8];
    return bf16_to_float(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xffffu));
}
// TF32 A (16 x 8): row r, column k -> lane 4 (r % 8) + k % 4, register (r / 8) + 2 (k / 4).
inline float a_tf32(unsigned r, unsigned k) { return tf32_operand(frag_of(4 * (r % 8) + k % 4).a[(r / 8) + 2 * (k / 4)]); }
// TF32 B (8 x 8): row k, column n -> lane 4 n + k % 4, register k / 4.
inline float b_tf32(unsigned k, unsigned n) { return tf32_operand(frag_of(4 * n + k % 4).b[k / 4]); }

template <unsigned K, typename AF, typename BF>
inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], AF a_at, BF b_at) {
    require_full_warp("mma.sync");
    const unsigned lane = emu::tl_lane;
    Frag mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.d, d, sizeof mine.d);
    std::memcpy(slot(lane), &mine, sizeof mine);
    warp_barrier();
    const unsigned g = lane / 4, t = lane % 4;
    for (unsigned q = 0; q < 4; ++q) {  // this lane's four outputs
        const unsigned r = g + 8 * (q / 2), c = 2 * t + q % 2;
        float sum = d_elem(r, c);
        for (unsigned k = 0; k < K; ++k) sum += a_at(r, k) * b_at(k, c);
        d[q] = sum;
    }
    next_area();
}

}  // namespace emu_detail

inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu_detail::mma<16>(d, a, b, emu_detail::a_bf16, emu_detail::b_bf16);
}
inline void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu_detail::mma<8>(d, a, b, emu_detail::a_tf32, emu_detail::b_tf32);
}

// cvt.rna.tf32.f32: round to 10 explicit significand bits, ties away from zero
// (the result is a float32 bit pattern with the low 13 bits zero).
inline uint32_t to_tf32(uint32_t f32_bits) {
    if ((f32_bits & 0x7f800000u) == 0x7f800000u) return f32_bits;  // inf and NaN unchanged
    return (f32_bits + 0x1000u) & 0xffffe000u;  // + half of the dropped unit: magnitude rounds up at a tie
}

}  // namespace ptx
}  // namespace gpu
}  // namespace whygpu
