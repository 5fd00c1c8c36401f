// check_kernels.cpp -- runs every CUDA rung and the nn element-wise ops under
// the CPU emulation of emu.h and compares them with a double-precision
// reference; exits non-zero on the first mismatch.  Built and run by
// tests/test_cuda_emulated.py (optionally with AddressSanitizer, which then
// also catches any read or write outside the matrices or shared tiles).
//
// Every output matrix sits inside a larger buffer filled with a sentinel, so
// a write outside C (or into the padding of its leading dimension) is seen.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gemm_cuda.h"
#include "nn_ops.h"
#include "probe.h"

using whygpu::gpu::GemmArgs;

namespace {

int g_failures = 0;
std::mt19937 g_rng(12345);

float uniform() { return std::uniform_real_distribution<float>(-1.f, 1.f)(g_rng); }

constexpr float kSentinel = 12345.f;

// A rows x cols row-major matrix with leading dimension ld >= cols inside a
// buffer with `guard` floats of sentinel before and after (0: the buffer ends
// with the last element, so AddressSanitizer sees any read past it); `shift`
// floats moves the start off 16-byte alignment.
struct Mat {
    int rows, cols;
    long long ld;
    std::vector<float> buf;
    float* p;
    Mat(int r, int c, long long ld_, int shift, int guard, bool fill_random) : rows(r), cols(c), ld(ld_) {
        const long long n = (r > 0 ? (long long)(r - 1) * ld + c : 0);
        buf.assign(guard + shift + n + guard, kSentinel);
        // 16-byte aligned base: vector's data is; guard is a multiple of 4.
        p = buf.data() + guard + shift;
        for (int i = 0; i < r; ++i)
            for (int j = 0; j < c; ++j) p[(long long)i * ld + j] = fill_random ? uniform() : 0.f;
    }
    float at(int i, int j) const { return p[(long long)i * ld + j]; }
    bool untouched_outside() const {  // everything but the (rows x cols) elements still holds the sentinel
        std::vector<char> inside(buf.size(), 0);
        for (int i = 0; i < rows; ++i)
            for (int j = 0; j < cols; ++j) inside[(p - buf.data()) + (long long)i * ld + j] = 1;
        for (std::size_t e = 0; e < buf.size(); ++e)
            if (!inside[e] && buf[e] != kSentinel) return false;
        return true;
    }
};

void fail(const std::string& what) {
    std::printf("FAIL %s\n", what.c_str());
    if (++g_failures > 20) std::exit(1);
}

// An operand as the tensor cores see it: rounded to bfloat16 (nearest, ties to even) or
// TF32 (nearest, ties away from zero: cvt.rna), the value kept in a double.
double rounded(float x, int precision) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if (precision == whygpu::gpu::kBF16) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    else if (precision == whygpu::gpu::kTF32) u = (u + 0x1000u) & 0xffffe000u;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
}
// Unit roundoff of an operand's precision (the sums are float32 in every case).
double unit_roundoff(int precision) {
    return precision == whygpu::gpu::kBF16 ? std::ldexp(1.0, -8) : precision == whygpu::gpu::kTF32 ? std::ldexp(1.0, -11)
                                                                                                : 0.0;
}

// C = alpha op(A) op(B) + beta C on `rung` in `precision`, against two references in double:
// the exact product of the float32 data, within the bound that follows from the precision
// (each product of two rounded operands is off by at most (2u + u^2) |a b|, the float32
// sums by (k + 2) 2**-24 sum |a b| each way); and the exact product of the operands
// rounded as the precision says, within the float32 sums' bound alone -- which shows the
// kernel rounds the way it claims (neither more nor less).
void check_gemm(int rung, int m, int n, int k, bool ta, bool tb, float alpha, float beta, int ldpad, int shift,
                int split_k = 0, int precision = whygpu::gpu::kFloat32) {
    char label[256];
    std::snprintf(label, sizeof label, "%s/%d m=%d n=%d k=%d ta=%d tb=%d alpha=%g beta=%g ldpad=%d shift=%d split_k=%d",
                  whygpu::gpu::rung_name(rung), precision, m, n, k, ta, tb, alpha, beta, ldpad, shift, split_k);
    // Stored shapes: A (m, k) or (k, m); B (k, n) or (n, k); C (m, n).
    const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    Mat A(ar, ac, ac + ldpad, shift, 0, true), B(br, bc, bc + ldpad, shift, 0, true);
    Mat C(m, n, n + ldpad, shift, 64, true);
    std::vector<float> c0(C.buf);
    if (beta == 0.f)  // garbage that must not leak into the result
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) C.p[(long long)i * C.ld + j] = NAN;
    GemmArgs g;
    g.m = m; g.n = n; g.k = k; g.alpha = alpha; g.beta = beta;
    g.a = A.p; g.lda = A.ld; g.trans_a = ta;
    g.b = B.p; g.ldb = B.ld; g.trans_b = tb;
    g.c = C.p; g.ldc = C.ld;
    g.split_k = split_k;
    g.precision = precision;
    const cudaError_t e = whygpu::gpu::gemm(rung, g, nullptr);
    if (e != cudaSuccess) { fail(std::string(label) + ": error code " + std::to_string(e)); return; }
    const float* c0p = c0.data() + (C.p - C.buf.data());
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
            double ref = 0, ref_r = 0, mag = 0;
            for (int p = 0; p < k; ++p) {
                const float av = ta ? A.at(p, i) : A.at(i, p), bv = tb ? B.at(j, p) : B.at(p, j);
                ref += (double)av * bv;
                ref_r += rounded(av, precision) * rounded(bv, precision);
                mag += std::fabs((double)av * bv);
            }
            const double old = c0p[(long long)i * C.ld + j];
            ref = alpha * ref + (beta == 0.f ? 0.0 : beta * old);
            ref_r = alpha * ref_r + (beta == 0.f ? 0.0 : beta * old);
            const double u = unit_roundoff(precision);
            const double sums = 2.0 * (k + 2) * 6e-8 * (std::fabs(alpha) * mag * (1 + 2 * u) + std::fabs(beta * old));
            const double bound = (2 * u + u * u) * std::fabs(alpha) * mag + sums + 1e-30;
            const double got = C.at(i, j);
            if (!(std::fabs(got - ref) <= bound) || !(std::fabs(got - ref_r) <= sums + 1e-30)) {
                char where[160];
                std::snprintf(where, sizeof where, ": C[%d,%d] = %.9g, expected %.9g (%.9g with rounded operands)", i,
                              j, got, ref, ref_r);
                fail(std::string(label) + where);
                return;
            }
        }
    if (!C.untouched_outside()) fail(std::string(label) + ": wrote outside C");
    if (!A.untouched_outside() || !B.untouched_outside()) fail(std::string(label) + ": wrote into A or B");
}

// ---- nn ops ------------------------------------------------------------------

bool close(double got, double ref, double tol = 2e-6) { return std::fabs(got - ref) <= tol * (1 + std::fabs(ref)); }

void check_nn() {
    namespace nn = whygpu::gpu::nn;
    const int rows = 37, cols = 45;
    std::vector<float> x(rows * cols), y(rows * cols), b(cols), dy(rows * cols), dx(rows * cols), db(cols, 0.5f);
    for (auto& v : x) v = 4 * uniform();
    for (auto& v : b) v = uniform();
    for (auto& v : dy) v = uniform();

    y = x;
    nn::bias_add(y.data(), b.data(), rows, cols, nullptr);
    for (int i = 0; i < rows * cols; ++i)
        if (!close(y[i], x[i] + b[i % cols])) { fail("bias_add"); break; }

    nn::bias_grad(dy.data(), db.data(), rows, cols, 0.25f, nullptr);
    for (int j = 0; j < cols; ++j) {
        double s = 0;
        for (int i = 0; i < rows; ++i) s += dy[i * cols + j];
        if (!close(db[j], 0.25 * 0.5 + s, 1e-5)) { fail("bias_grad"); break; }
    }

    for (float slope : {0.f, 0.1f}) {
        nn::leaky_relu_fwd(x.data(), y.data(), rows * cols, slope, nullptr);
        nn::leaky_relu_bwd(dy.data(), x.data(), dx.data(), rows * cols, slope, nullptr);
        for (int i = 0; i < rows * cols; ++i) {
            if (!close(y[i], x[i] > 0 ? x[i] : slope * x[i])) { fail("leaky_relu_fwd"); break; }
            if (!close(dx[i], x[i] > 0 ? dy[i] : slope * dy[i])) { fail("leaky_relu_bwd"); break; }
        }
    }
    nn::sigmoid_fwd(x.data(), y.data(), rows * cols, nullptr);
    nn::sigmoid_bwd(dy.data(), y.data(), dx.data(), rows * cols, nullptr);
    for (int i = 0; i < rows * cols; ++i) {
        const double s = 1 / (1 + std::exp(-(double)x[i]));
        if (!close(y[i], s)) { fail("sigmoid_fwd"); break; }
        if (!close(dx[i], dy[i] * y[i] * (1 - y[i]))) { fail("sigmoid_bwd"); break; }
    }
    nn::tanh_fwd(x.data(), y.data(), rows * cols, nullptr);
    nn::tanh_bwd(dy.data(), y.data(), dx.data(), rows * cols, nullptr);
    for (int i = 0; i < rows * cols; ++i) {
        if (!close(y[i], std::tanh((double)x[i]))) { fail("tanh_fwd"); break; }
        if (!close(dx[i], dy[i] * (1 - (double)y[i] * y[i]))) { fail("tanh_bwd"); break; }
    }

    // softmax + cross-entropy, with two bad labels
    std::vector<std::int64_t> labels(rows);
    for (int i = 0; i < rows; ++i) labels[i] = (i * 7) % cols;
    labels[3] = -1;
    labels[5] = cols;
    std::vector<float> probs(rows * cols), row_loss(rows);
    double out[2] = {-1, -1};
    nn::softmax_xent_fwd(x.data(), labels.data(), probs.data(), row_loss.data(), out, rows, cols, nullptr);
    double loss = 0;
    for (int i = 0; i < rows; ++i) {
        double mx = -1e300, s = 0;
        for (int j = 0; j < cols; ++j) mx = std::max(mx, (double)x[i * cols + j]);
        for (int j = 0; j < cols; ++j) s += std::exp(x[i * cols + j] - mx);
        for (int j = 0; j < cols; ++j)
            if (!close(probs[i * cols + j], std::exp(x[i * cols + j] - mx) / s)) { fail("softmax_xent_fwd probs"); i = rows; break; }
        if (i < rows && labels[i] >= 0 && labels[i] < cols) loss += std::log(s) - (x[i * cols + labels[i]] - mx);
    }
    if (!close(out[0], loss, 1e-5) || out[1] != 2) fail("softmax_xent_fwd loss " + std::to_string(out[0]) + " vs " + std::to_string(loss));
    const float scale = 1.f / rows;
    nn::softmax_xent_bwd(probs.data(), labels.data(), dx.data(), rows, cols, scale, nullptr);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const double ref = scale * probs[i * cols + j] - (labels[i] == j ? scale : 0.0);
            if (!close(dx[i * cols + j], ref)) { fail("softmax_xent_bwd"); i = rows; break; }
        }

    // the Softmax layer, forward and backward
    nn::softmax_fwd(x.data(), y.data(), rows, cols, nullptr);
    nn::softmax_bwd(dy.data(), y.data(), dx.data(), rows, cols, nullptr);
    for (int i = 0; i < rows; ++i) {
        double mx = -1e300, s = 0, dot = 0;
        for (int j = 0; j < cols; ++j) mx = std::max(mx, (double)x[i * cols + j]);
        for (int j = 0; j < cols; ++j) s += std::exp(x[i * cols + j] - mx);
        for (int j = 0; j < cols; ++j) dot += (double)dy[i * cols + j] * y[i * cols + j];
        bool ok = true;
        for (int j = 0; j < cols && ok; ++j) {
            const int e = i * cols + j;
            if (!close(y[e], std::exp(x[e] - mx) / s)) { fail("softmax_fwd"); ok = false; }
            else if (!close(dx[e], y[e] * (dy[e] - dot), 1e-5)) { fail("softmax_bwd"); ok = false; }
        }
        if (!ok) break;
    }

    // MSE and BCE-with-logits: summed in double; gradients element-wise
    {
        const int n = rows * cols;
        std::vector<float> t(n);
        for (auto& v : t) v = 0.5f * (uniform() + 1.f);  // in [0, 1]: also a BCE target
        double got[1] = {-1};
        nn::mse_fwd(x.data(), t.data(), got, n, nullptr);
        double ref = 0;
        for (int i = 0; i < n; ++i) ref += ((double)x[i] - t[i]) * ((double)x[i] - t[i]);
        if (!close(got[0], ref, 1e-12)) fail("mse_fwd");
        nn::mse_bwd(x.data(), t.data(), dx.data(), n, 0.125f, nullptr);
        for (int i = 0; i < n; ++i)
            if (!close(dx[i], 0.25 * ((double)x[i] - t[i]))) { fail("mse_bwd"); break; }
        nn::bce_logits_fwd(x.data(), t.data(), got, n, nullptr);
        ref = 0;
        for (int i = 0; i < n; ++i) {
            const double xi = x[i];
            ref += std::max(xi, 0.0) - xi * t[i] + std::log1p(std::exp(-std::fabs(xi)));
        }
        if (!close(got[0], ref, 1e-6)) fail("bce_logits_fwd");
        nn::bce_logits_bwd(x.data(), t.data(), dx.data(), n, 0.5f, nullptr);
        for (int i = 0; i < n; ++i)
            if (!close(dx[i], 0.5 * (1 / (1 + std::exp(-(double)x[i])) - t[i]))) { fail("bce_logits_bwd"); break; }
        got[0] = -1;
        nn::mse_fwd(x.data(), t.data(), got, 0, nullptr);  // empty: a sum of nothing is 0
        if (got[0] != 0) fail("mse_fwd (n = 0)");
        std::vector<std::uint8_t> mask(n);
        for (int i = 0; i < n; ++i) mask[i] = (i * 5) % 3 != 0;
        std::fill(y.begin(), y.end(), kSentinel);
        nn::mask_scale(x.data(), mask.data(), y.data(), n, 2.f, nullptr);
        for (int i = 0; i < n; ++i)
            if (y[i] != (mask[i] ? 2.f * x[i] : 0.f)) { fail("mask_scale"); break; }
    }

    // optimizers: one step each against the formulas in nn_ops.h
    const int n = 301;
    std::vector<float> p(n), g(n), buf(n), m1(n), v1(n);
    for (int i = 0; i < n; ++i) { p[i] = uniform(); g[i] = uniform(); buf[i] = uniform(); m1[i] = uniform(); v1[i] = std::fabs(uniform()); }
    for (bool nesterov : {false, true}) {
        std::vector<float> p2(p), b2(buf);
        nn::sgd_update(p2.data(), g.data(), b2.data(), n, 0.1f, 0.9f, 0.01f, nesterov, nullptr);
        for (int i = 0; i < n; ++i) {
            const double gi = g[i] + 0.01 * p[i], bb = 0.9 * buf[i] + gi;
            const double ref = p[i] - 0.1 * (nesterov ? gi + 0.9 * bb : bb);
            if (!close(b2[i], bb) || !close(p2[i], ref)) { fail("sgd_update"); break; }
        }
    }
    {
        std::vector<float> p2(p);
        nn::sgd_update(p2.data(), g.data(), nullptr, n, 0.1f, 0.f, 0.f, false, nullptr);
        for (int i = 0; i < n; ++i)
            if (!close(p2[i], p[i] - 0.1 * g[i])) { fail("sgd_update (no momentum)"); break; }
    }
    {
        std::vector<float> p2(p), m2(m1), v2(v1);
        const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, bc1 = 1 - b1 * b1, bc2 = 1 - b2 * b2;
        nn::adam_update(p2.data(), g.data(), m2.data(), v2.data(), n, lr, b1, b2, eps, wd, bc1, bc2, nullptr);
        for (int i = 0; i < n; ++i) {
            const double gi = g[i] + wd * p[i], mi = b1 * m1[i] + (1 - b1) * gi, vi = b2 * v1[i] + (1 - b2) * gi * gi;
            const double ref = p[i] - (lr / bc1) * mi / (std::sqrt(vi) / std::sqrt(bc2) + eps);
            if (!close(m2[i], mi) || !close(v2[i], vi, 1e-5) || !close(p2[i], ref)) { fail("adam_update"); break; }
        }
    }
}

// The probes of probe.cu: the copy at awkward sizes and alignments (with a
// sentinel after dst: nothing may be written past n), and the FMA kernel's
// result against the same recurrence on the host.
void check_probes() {
    namespace pr = whygpu::gpu::probe;
    for (long long n : {0LL, 1LL, 3LL, 4LL, 5LL, 1023LL, 4097LL}) {
        for (int shift : {0, 1, 3}) {  // float offsets: 0 keeps 16-byte alignment, 1 and 3 lose it
            std::vector<float> src(n + 8), dst(n + 8 + shift, kSentinel);
            for (auto& v : src) v = uniform();
            const float* s = src.data() + (shift == 3 ? 3 : 0);
            float* d = dst.data() + shift;
            if (pr::copy(s, d, n, 2, 3, nullptr) != cudaSuccess) { fail("probe copy launch"); continue; }
            for (long long i = 0; i < n; ++i)
                if (d[i] != s[i]) { fail("probe copy"); break; }
            for (long long i = n; i < n + 8; ++i)
                if (d[i] != kSentinel) { fail("probe copy wrote past the end"); break; }
        }
    }
    if (pr::copy(nullptr, nullptr, 4, 0, 1, nullptr) == cudaSuccess) fail("probe copy accepted 0 passes");
    const int blocks = 3, threads = 64;
    const long long iters = 5;
    std::vector<float> sink(blocks * threads, kSentinel);
    if (pr::fma_peak(blocks, threads, iters, sink.data(), nullptr) != cudaSuccess) fail("probe fma launch");
    for (int t = 0; t < blocks * threads; ++t) {
        double sum = 0;
        for (int c = 0; c < pr::kFmaChains; ++c) {
            float x = 1.0f + 1e-3f * (float)((t + c) % 7);
            for (long long i = 0; i < iters * pr::kFmaUnroll; ++i) x = std::fma(x, 0.999f, 0.001f);
            sum += x;
        }
        if (!std::isfinite(sink[t]) || std::fabs(sink[t] - sum) > 1e-5 * std::fabs(sum)) { fail("probe fma"); break; }
    }
    // The tensor-core probe: accumulator tile c starts at c and gains k / 128 per mma (A = 0.5, B = 2**-6
    // everywhere, k = 16 for bf16, 8 for TF32), iters * kMmaUnroll times; each thread stores the sum of its
    // 4 accumulators per tile.  All exact in float32: any lost, repeated or misplaced mma shows.
    for (bool bf16 : {true, false}) {
        const int mblocks = 2, mthreads = 64;
        const long long miters = 3;
        std::vector<float> msink(mblocks * mthreads, kSentinel);
        if (pr::mma_peak(mblocks, mthreads, miters, bf16, msink.data(), nullptr) != cudaSuccess) {
            fail("probe mma launch");
            continue;
        }
        const double per_mma = (bf16 ? 16 : 8) * 0.5 * std::ldexp(1.0, -6);
        double expected = 0;
        for (int c = 0; c < pr::kMmaChains; ++c) expected += 4 * (c + miters * pr::kMmaUnroll * per_mma);
        for (int t = 0; t < mblocks * mthreads; ++t)
            if (msink[t] != expected) {
                fail(std::string("probe mma (") + (bf16 ? "bf16" : "tf32") + "): thread " + std::to_string(t) +
                     " stored " + std::to_string(msink[t]) + ", expected " + std::to_string(expected));
                break;
            }
        if (pr::mma_peak(1, 48, 1, bf16, msink.data(), nullptr) == cudaSuccess) fail("probe mma accepted a partial warp");
    }
    if (pr::mma_flops_per_iter(true) != 2 * pr::mma_flops_per_iter(false)) fail("probe mma flop counts");
}

}  // namespace

int main(int argc, char** argv) {
    // check_kernels [quick|full] [rung]: quick leaves out the largest shape; a rung number checks only it.
    const bool quick = argc > 1 && std::string(argv[1]) == "quick";
    const int only = argc > 2 ? std::atoi(argv[2]) : 0;
    struct Shape { int m, n, k; };
    // 0, 1, primes, tile multiples and non-multiples of every tile (32, 64, 128; k-steps 8, 16, 32).
    std::vector<Shape> shapes = {{1, 1, 1}, {0, 5, 3}, {5, 0, 3}, {4, 5, 0}, {1, 7, 3}, {7, 1, 13}, {3, 5, 1},
                                 {17, 31, 9}, {33, 65, 31}, {64, 64, 64}, {131, 67, 37}, {129, 257, 17}};
    if (!quick) shapes.push_back({257, 130, 130});
    using whygpu::gpu::kBF16;
    using whygpu::gpu::kFloat32;
    using whygpu::gpu::kTF32;
    for (int rung = whygpu::gpu::kFirstRung; rung <= whygpu::gpu::kLastRung; ++rung) {
        if (only && rung != only) continue;
        std::vector<int> precisions = {kFloat32};
        if (rung == whygpu::gpu::kMma) precisions = {kTF32, kBF16};
        if (rung == whygpu::gpu::kWgmma) {  // wgmma and TMA: no CPU stand-in; the rung must say so, not run
            if (whygpu::gpu::rung_unavailable(rung, kBF16) == nullptr) fail("cuda_wgmma claims to run emulated");
            std::printf("%s unavailable here: %s\n", whygpu::gpu::rung_name(rung),
                        whygpu::gpu::rung_unavailable(rung, kBF16));
            continue;
        }
        for (int prec : precisions) {
            for (const auto& s : shapes)
                for (int t = 0; t < 4; ++t) check_gemm(rung, s.m, s.n, s.k, t & 1, t & 2, 1.f, 0.f, 0, 0, 0, prec);
            // alpha/beta, padded leading dimensions, misaligned pointers (no float4), and float4-friendly sizes
            for (int t = 0; t < 4; ++t) {
                check_gemm(rung, 37, 45, 29, t & 1, t & 2, -0.5f, 0.75f, 3, 0, 0, prec);
                check_gemm(rung, 36, 44, 28, t & 1, t & 2, 2.f, 1.f, 4, 1, 0, prec);
                check_gemm(rung, 132, 136, 24, t & 1, t & 2, 1.5f, -1.f, 4, 0, 0, prec);
                check_gemm(rung, 9, 10, 11, t & 1, t & 2, 0.f, 0.5f, 1, 0, 0, prec);  // alpha == 0: C = beta C only
            }
            if (rung == whygpu::gpu::kMma)  // k over many stages: the cp.async ring wraps around several times
                for (int t = 0; t < 4; ++t) check_gemm(rung, 70, 50, 300, t & 1, t & 2, 1.f, 0.f, 0, 0, 0, prec);
        }
        // A precision a rung does not compute in is refused, not silently replaced.
        for (int prec : {kFloat32, kTF32, kBF16}) {
            const bool claimed = std::find(precisions.begin(), precisions.end(), prec) != precisions.end();
            if ((whygpu::gpu::rung_unavailable(rung, prec) == nullptr) != claimed)
                fail(std::string(whygpu::gpu::rung_name(rung)) + ": rung_unavailable disagrees for precision " +
                     std::to_string(prec));
        }
        if (rung == whygpu::gpu::kWarptile) {
            // Split-k: forced on the shapes above (slices of 1 to 7 k-tiles, more slices than k-tiles), and
            // chosen by the launcher on long-k shapes with few tiles of C (the emulated GPU has 4 SMs).
            for (const auto& s : shapes)
                for (int t = 0; t < 4; ++t)
                    for (int split : {2, 3, 7}) check_gemm(rung, s.m, s.n, s.k, t & 1, t & 2, 1.f, 0.f, 0, 0, split);
            for (int t = 0; t < 4; ++t) {
                check_gemm(rung, 37, 45, 1000, t & 1, t & 2, 1.f, 0.f, 0, 0);
                check_gemm(rung, 5, 130, 2051, t & 1, t & 2, -0.5f, 0.75f, 3, 0);
                check_gemm(rung, 130, 7, 1500, t & 1, t & 2, 2.f, 1.f, 4, 1);
                check_gemm(rung, 36, 44, 777, t & 1, t & 2, 1.5f, -1.f, 4, 0, 5);
            }
        }
        std::printf("%s done\n", whygpu::gpu::rung_name(rung));
        std::fflush(stdout);
    }
    if (!only) {
        check_nn();
        std::printf("nn ops done\n");
        check_probes();
        std::printf("probes done\n");
    }
    if (g_failures) { std::printf("%d failures\n", g_failures); return 1; }
    std::printf("all passed\n");
    return 0;
}
