// Rung 6, the block sizes: how big each block of the five loops is, derived
// from the caches of the CPU the code runs on (not constants tuned on one
// machine).  The model is Low, Igual, Smith and Quintana-Orti, "Analytical
// modeling is enough for high-performance BLIS" (ACM TOMS 43(2), 2016).
//
// The loops (06_packed.cpp) and where each block is meant to live:
//   jc: a kc x nc panel of B, packed once, shared by all threads  -> L3
//    ic: an mc x kc block of A, packed by each thread              -> L2
//     jr: one kc x NR micro-panel of B, reused mc/MR times          -> L1
//      ir: one MR x kc micro-panel of A, streamed from L2 per call
//
// kc (L1).  The B micro-panel (kc x NR) must stay in L1 while the A
//   micro-panels (MR x kc) stream past it, so one of each must fit, with one
//   of the L1's W ways left for C's tile and the next A micro-panel:
//       (MR + NR) * kc * S <= (W - 1) / W * L1     (S = bytes per element)
//   Zen 3/4's L1d (32 KiB, 8 ways) with the AVX2 6 x 16 float tile:
//   kc = 28672 / (22 * 4) = 325 -> 320 (a multiple of 8, for the unrolled
//   k loop); with AVX-512's 8 x 32 tile, 28672 / (40 * 4) = 179 -> 176.
// mc (L2).  The packed A block fills about half of L2; the other half holds
//   the B micro-panels passing through on their way to L1, and C.
//       mc = (L2 / 2) / (kc * S), in whole MR strips.
// nc (L3).  Two kc x nc panels of B (the one being read and the next one
//   being packed) take half of the L3 the threads share.
//       nc = (L3 / 2) / (2 * kc * S), in whole NR strips, at most 8192
//   (a virtual machine may report its host's whole L3; wider panels buy
//   nothing for the products here).
//
// WHYGPU_BLOCKING=kc,mc,nc overrides the model (the lesson "what blocking
// buys": try 16,6,16 against the default); an empty field keeps the model's
// value ("256,,") and anything unusable is reported, not silently ignored.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

#include "packed.h"

namespace whygpu {

namespace {

// A number from a sysfs file such as ".../index0/size" ("32K"), or 0.
std::int64_t read_sysfs(const std::string& path) {
    std::ifstream f(path);
    std::string text;
    if (!(f >> text) || text.empty()) return 0;
    std::int64_t mult = 1;
    switch (text.back()) {
        case 'K': mult = 1024; text.pop_back(); break;
        case 'M': mult = 1024 * 1024; text.pop_back(); break;
        case 'G': mult = std::int64_t(1) << 30; text.pop_back(); break;
        default: break;
    }
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    return (end != text.c_str() && *end == '\0' && v > 0) ? v * mult : 0;
}

// Fill in what the OS left out: 8 ways and 64-byte lines are the common case.
CacheLevel complete(CacheLevel c, std::int64_t fallback_bytes) {
    if (c.bytes <= 0) c.bytes = fallback_bytes;
    if (c.line <= 0) c.line = 64;
    if (c.ways <= 0) c.ways = 8;
    if (c.sets <= 0) c.sets = std::max<std::int64_t>(1, c.bytes / (std::int64_t(c.ways) * c.line));
    return c;
}

CacheModel read_caches() {
    CacheModel m;
    m.source = "assumed";
    bool found = false;
    const std::string base = "/sys/devices/system/cpu/cpu0/cache/index";
    for (int i = 0; i < 8; ++i) {
        const std::string dir = base + std::to_string(i) + "/";
        std::ifstream type_file(dir + "type");
        std::string type;
        if (!(type_file >> type) || type == "Instruction") continue;
        const std::int64_t level = read_sysfs(dir + "level");
        CacheLevel c;
        c.bytes = read_sysfs(dir + "size");
        c.ways = static_cast<int>(read_sysfs(dir + "ways_of_associativity"));
        c.sets = read_sysfs(dir + "number_of_sets");
        c.line = static_cast<int>(read_sysfs(dir + "coherency_line_size"));
        if (c.bytes <= 0) continue;
        if (level == 1) m.l1 = c;
        else if (level == 2) m.l2 = c;
        else if (level == 3) m.l3 = c;
        else continue;
        found = true;
    }
    if (found) m.source = "sysfs";
    // Conservative sizes where the OS says nothing (a laptop-class x86 core).
    m.l1 = complete(m.l1, 32 * 1024);
    m.l2 = complete(m.l2, 256 * 1024);
    m.l3 = complete(m.l3, m.l2.bytes * 4);
    return m;
}

std::string g_blocking_warning;  // written once, inside the first blocking_for()

// WHYGPU_BLOCKING=kc,mc,nc; each field a positive integer or empty (keep the model's).
// Returns false (and sets the warning) if the text cannot be used.
bool parse_override(const char* text, std::int64_t out[3]) {
    std::string s(text);
    std::int64_t v[3] = {0, 0, 0};
    std::size_t pos = 0;
    for (int f = 0; f < 3; ++f) {
        const std::size_t comma = s.find(',', pos);
        const bool last = (f == 2);
        if (!last && comma == std::string::npos) return false;
        if (last && comma != std::string::npos) return false;
        const std::string field = s.substr(pos, last ? std::string::npos : comma - pos);
        if (!field.empty()) {
            char* end = nullptr;
            const long long x = std::strtoll(field.c_str(), &end, 10);
            if (end == field.c_str() || *end != '\0' || x < 1 || x > (1 << 20)) return false;
            v[f] = x;
        }
        pos = comma + 1;
    }
    for (int f = 0; f < 3; ++f) out[f] = v[f];
    return true;
}

}  // namespace

const CacheModel& cache_model() {
    static const CacheModel m = read_caches();  // thread-safe, runs once
    return m;
}

template <typename T>
void choose_blocks(Blocking<T>& bk, std::size_t elem_bytes) {
    const CacheModel& cm = cache_model();
    const auto S = static_cast<std::int64_t>(elem_bytes);
    const std::int64_t mr = bk.mr, nr = bk.nr;

    // WHYGPU_BLOCKING=kc,mc,nc: any field given replaces the model's; mc and nc
    // are derived from the kc in force, so "256,," still gets a fitting mc.
    std::int64_t v[3] = {0, 0, 0};
    const char* env = std::getenv("WHYGPU_BLOCKING");
    if (env != nullptr && *env != '\0' && !parse_override(env, v) && g_blocking_warning.empty())
        g_blocking_warning = std::string("WHYGPU_BLOCKING=") + env +
                             " is not kc,mc,nc (positive integers; an empty field keeps the model's);"
                             " using the block sizes derived from the caches";
    bk.source = (v[0] || v[1] || v[2]) ? "WHYGPU_BLOCKING" : "model";

    // kc: an A micro-panel (MR x kc) and a B micro-panel (kc x NR) together
    // in L1, one way of it left for C and the next A micro-panel.
    const std::int64_t l1_usable = std::int64_t(cm.l1.ways - 1) * cm.l1.sets * cm.l1.line;
    std::int64_t kc = l1_usable / ((mr + nr) * S);
    kc = std::max<std::int64_t>(8, kc / 8 * 8);  // a multiple of 8: the unrolled k loop
    if (v[0]) kc = v[0];
    // mc: the packed A block (mc x kc) fills about half of L2.
    std::int64_t mc = std::max<std::int64_t>(mr, (cm.l2.bytes / 2) / (kc * S) / mr * mr);
    if (v[1]) mc = v[1];
    // nc: two packed B panels (kc x nc, double-buffered) in half of L3.
    std::int64_t nc = (cm.l3.bytes / 2) / (2 * kc * S) / nr * nr;
    nc = std::min<std::int64_t>(8192, std::max<std::int64_t>(nr, nc));
    if (v[2]) nc = v[2];
    bk.kc = kc;
    bk.mc = mc;
    bk.nc = nc;
}

template void choose_blocks<float>(Blocking<float>&, std::size_t);
template void choose_blocks<double>(Blocking<double>&, std::size_t);

const char* blocking_env_warning() {
    blocking_for<float>(Arch::portable);  // make sure the environment has been read
    blocking_for<double>(Arch::portable);
    return g_blocking_warning.c_str();
}

}  // namespace whygpu
