// nn_ops.cpp -- the element-wise work of a training step (see nn_ops.h).
//
// Each function is one pass over memory, OpenMP-parallel over independent
// elements or rows, so no two threads ever write the same element and no
// locks are needed.  Reductions (loss sums) use OpenMP's reduction clause.
#include "nn_ops.h"

#include <algorithm>
#include <cmath>

#if defined(WHYGPU_HAVE_OPENMP)
#define WHYGPU_OMP(directive) _Pragma(#directive)
#else
#define WHYGPU_OMP(directive)
#endif

namespace whygpu {
namespace nn {

namespace {
// Worth waking a team of threads for `work` elements?
inline bool par(i64 work, int threads) { return threads > 1 && work >= kParallelMin; }

// One element of an Adam step (adam_update and adam_update_multi).
template <typename T>
inline void adam_one(T* p, const T* g, T* m, T* v, i64 i, T step, T beta1, T beta2, T eps, T weight_decay,
                     T inv_sqrt_bc2) {
    const T gi = g[i] + weight_decay * p[i];
    const T mi = beta1 * m[i] + (T(1) - beta1) * gi;
    const T vi = beta2 * v[i] + (T(1) - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
}

template <typename T>
inline T stable_sigmoid(T x) {
    // exp of a non-positive number never overflows.
    if (x >= T(0)) {
        const T e = std::exp(-x);
        return T(1) / (T(1) + e);
    }
    const T e = std::exp(x);
    return e / (T(1) + e);
}
}  // namespace

template <typename T>
void bias_add(T* y, const T* b, i64 rows, i64 cols, int threads) {
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < rows; ++i) {
        T* row = y + i * cols;
        for (i64 j = 0; j < cols; ++j) row[j] += b[j];
    }
}

template <typename T>
void bias_grad(const T* dy, T* db, i64 rows, i64 cols, T beta, int threads) {
    // Column sums.  Each thread owns a contiguous range of columns (whole
    // 64-byte lines, so no false sharing) and walks all rows of it: every
    // db[j] has one writer, no reduction needed, and the inner loop is a
    // unit-stride vector add.
    constexpr i64 kLine = 64 / sizeof(T);
    const i64 lines = (cols + kLine - 1) / kLine;
    const i64 chunks = par(rows * cols, threads) ? std::min<i64>(threads, lines) : 1;
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(chunks > 1))
    for (i64 c = 0; c < chunks; ++c) {
        const i64 j0 = std::min(cols, lines * c / chunks * kLine);
        const i64 j1 = std::min(cols, lines * (c + 1) / chunks * kLine);
        for (i64 j = j0; j < j1; ++j) db[j] = (beta == T(0)) ? T(0) : beta * db[j];
        for (i64 i = 0; i < rows; ++i) {
            const T* row = dy + i * cols;
            for (i64 j = j0; j < j1; ++j) db[j] += row[j];
        }
    }
}

template <typename T>
void leaky_relu_fwd(const T* x, T* y, i64 n, T slope, int threads) {
    // Written as min/max and selects between a loaded value and zero, never a
    // branch on the sign of the data (mispredicted half the time on random
    // signs) nor a conditional multiply or load (which the compiler will not
    // speculate): so these loops vectorize.
    [[maybe_unused]] const bool p = par(n, threads);
    if (slope == T(0)) {
        WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
        for (i64 i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
        return;
    }
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) y[i] = std::max(x[i], T(0)) + slope * std::min(x[i], T(0));
}

template <typename T>
void leaky_relu_bwd(const T* dy, const T* x, T* dx, i64 n, T slope, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    if (slope == T(0)) {
        WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
        for (i64 i = 0; i < n; ++i) {
            const T g = dy[i];
            dx[i] = x[i] > T(0) ? g : T(0);
        }
        return;
    }
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) {
        const T g = dy[i];
        const bool pos = x[i] > T(0);
        dx[i] = (pos ? g : T(0)) + slope * (pos ? T(0) : g);
    }
}

template <typename T>
void sigmoid_fwd(const T* x, T* y, i64 n, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) y[i] = stable_sigmoid(x[i]);
}

template <typename T>
void sigmoid_bwd(const T* dy, const T* y, T* dx, i64 n, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
}

template <typename T>
void tanh_fwd(const T* x, T* y, i64 n, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

template <typename T>
void tanh_bwd(const T* dy, const T* y, T* dx, i64 n, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * (T(1) - y[i] * y[i]);
}

template <typename T>
void softmax_fwd(const T* x, T* y, i64 rows, i64 cols, int threads) {
    if (cols <= 0) return;
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < rows; ++i) {
        const T* xr = x + i * cols;
        T* yr = y + i * cols;
        T mx = xr[0];
        for (i64 j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
        T sum = 0;  // subtracting the max keeps exp() <= 1: no overflow
        for (i64 j = 0; j < cols; ++j) { yr[j] = std::exp(xr[j] - mx); sum += yr[j]; }
        const T inv = T(1) / sum;
        for (i64 j = 0; j < cols; ++j) yr[j] *= inv;
    }
}

template <typename T>
void softmax_bwd(const T* dy, const T* y, T* dx, i64 rows, i64 cols, int threads) {
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < rows; ++i) {
        const T* dyr = dy + i * cols;
        const T* yr = y + i * cols;
        T* dxr = dx + i * cols;
        T dot = 0;
        for (i64 j = 0; j < cols; ++j) dot += dyr[j] * yr[j];
        for (i64 j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
    }
}

template <typename T>
double softmax_xent_fwd(const T* logits, const std::int64_t* labels, T* probs, i64 rows, i64 cols,
                        int threads, i64* bad) {
    double loss = 0.0;
    i64 nbad = 0;
    if (cols <= 0) { *bad = rows; return 0.0; }  // no class a label could name
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p) reduction(+ : loss, nbad))
    for (i64 i = 0; i < rows; ++i) {
        const T* xr = logits + i * cols;
        T* pr = probs + i * cols;
        T mx = xr[0];
        for (i64 j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
        T sum = 0;
        for (i64 j = 0; j < cols; ++j) { pr[j] = std::exp(xr[j] - mx); sum += pr[j]; }
        const T inv = T(1) / sum;
        for (i64 j = 0; j < cols; ++j) pr[j] *= inv;
        const std::int64_t lab = labels[i];
        if (lab < 0 || lab >= cols) { ++nbad; continue; }
        // -log softmax(x)[lab] = log(sum exp(x - mx)) - (x[lab] - mx): exact even when p underflows.
        loss += static_cast<double>(std::log(sum) - (xr[lab] - mx));
    }
    *bad = nbad;
    return loss;
}

template <typename T>
void softmax_xent_bwd(const T* probs, const std::int64_t* labels, T* dx, i64 rows, i64 cols, T scale,
                      int threads) {
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < rows; ++i) {
        const T* pr = probs + i * cols;
        T* dr = dx + i * cols;
        for (i64 j = 0; j < cols; ++j) dr[j] = scale * pr[j];
        const std::int64_t lab = labels[i];
        if (lab >= 0 && lab < cols) dr[lab] -= scale;
    }
}

template <typename T>
double mse_fwd(const T* y, const T* t, i64 n, int threads) {
    double s = 0.0;
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p) reduction(+ : s))
    for (i64 i = 0; i < n; ++i) {
        const double d = static_cast<double>(y[i]) - static_cast<double>(t[i]);
        s += d * d;
    }
    return s;
}

template <typename T>
void mse_bwd(const T* y, const T* t, T* dx, i64 n, T scale, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    const T s2 = T(2) * scale;
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) dx[i] = s2 * (y[i] - t[i]);
}

template <typename T>
double bce_logits_fwd(const T* x, const T* t, i64 n, int threads) {
    double s = 0.0;
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p) reduction(+ : s))
    for (i64 i = 0; i < n; ++i) {
        const T xi = x[i];
        s += static_cast<double>(std::max(xi, T(0)) - xi * t[i] + std::log1p(std::exp(-std::fabs(xi))));
    }
    return s;
}

template <typename T>
void bce_logits_bwd(const T* x, const T* t, T* dx, i64 n, T scale, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) dx[i] = scale * (stable_sigmoid(x[i]) - t[i]);
}

template <typename T>
void mask_scale(const T* x, const std::uint8_t* mask, T* y, i64 n, T scale, int threads) {
    [[maybe_unused]] const bool p = par(n, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < n; ++i) y[i] = x[i] * (mask[i] ? scale : T(0));  // branch-free
}

template <typename T>
void sgd_update(T* p, const T* g, T* buf, i64 n, T lr, T momentum, T weight_decay, bool nesterov,
                int threads) {
    [[maybe_unused]] const bool pp = par(n, threads);
    if (momentum == T(0)) {
        WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(pp))
        for (i64 i = 0; i < n; ++i) p[i] -= lr * (g[i] + weight_decay * p[i]);
        return;
    }
    if (nesterov) {
        WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(pp))
        for (i64 i = 0; i < n; ++i) {
            const T gi = g[i] + weight_decay * p[i];
            const T b = momentum * buf[i] + gi;
            buf[i] = b;
            p[i] -= lr * (gi + momentum * b);
        }
        return;
    }
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(pp))
    for (i64 i = 0; i < n; ++i) {
        const T gi = g[i] + weight_decay * p[i];
        const T b = momentum * buf[i] + gi;
        buf[i] = b;
        p[i] -= lr * b;
    }
}

template <typename T>
void adam_update(T* p, const T* g, T* m, T* v, i64 n, T lr, T beta1, T beta2, T eps, T weight_decay,
                 T bc1, T bc2, int threads) {
    [[maybe_unused]] const bool pp = par(n, threads);
    const T step = lr / bc1;
    const T inv_sqrt_bc2 = T(1) / std::sqrt(bc2);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(pp))
    for (i64 i = 0; i < n; ++i) adam_one(p, g, m, v, i, step, beta1, beta2, eps, weight_decay, inv_sqrt_bc2);
}

template <typename T>
void bias_relu(T* y, const T* b, i64 rows, i64 cols, bool relu, int threads) {
    [[maybe_unused]] const bool p = par(rows * cols, threads);
    WHYGPU_OMP(omp parallel for num_threads(threads) schedule(static) if(p))
    for (i64 i = 0; i < rows; ++i) {
        T* row = y + i * cols;
        if (b != nullptr && relu) {
            for (i64 j = 0; j < cols; ++j) row[j] = std::max(row[j] + b[j], T(0));
        } else if (b != nullptr) {
            for (i64 j = 0; j < cols; ++j) row[j] += b[j];
        } else if (relu) {
            for (i64 j = 0; j < cols; ++j) row[j] = std::max(row[j], T(0));
        }
    }
}

namespace {
template <typename T>
i64 total_elements(const TensorRef<T>* t, int count) {
    i64 n = 0;
    for (int k = 0; k < count; ++k) n += t[k].n;
    return n;
}
}  // namespace

// One team for all tensors: each thread takes its share of every tensor
// (omp for ... nowait: no barrier between tensors, they are independent).
template <typename T>
void sgd_update_multi(const TensorRef<T>* t, int count, T lr, T momentum, T weight_decay, bool nesterov,
                      int threads) {
    [[maybe_unused]] const bool pp = par(total_elements(t, count), threads);
    WHYGPU_OMP(omp parallel num_threads(threads) if(pp))
    for (int k = 0; k < count; ++k) {
        T* p = t[k].p;
        const T* g = t[k].g;
        T* buf = t[k].s1;
        WHYGPU_OMP(omp for schedule(static) nowait)
        for (i64 i = 0; i < t[k].n; ++i) {
            const T gi = g[i] + weight_decay * p[i];
            if (momentum == T(0)) {
                p[i] -= lr * gi;
            } else {
                const T b = momentum * buf[i] + gi;
                buf[i] = b;
                p[i] -= lr * (nesterov ? gi + momentum * b : b);
            }
        }
    }
}

template <typename T>
void adam_update_multi(const TensorRef<T>* t, int count, T step, T beta1, T beta2, T eps, T weight_decay,
                       T inv_sqrt_bc2, int threads) {
    [[maybe_unused]] const bool pp = par(total_elements(t, count), threads);
    WHYGPU_OMP(omp parallel num_threads(threads) if(pp))
    for (int k = 0; k < count; ++k) {
        T* p = t[k].p;
        const T* g = t[k].g;
        T* m = t[k].s1;
        T* v = t[k].s2;
        WHYGPU_OMP(omp for schedule(static) nowait)
        for (i64 i = 0; i < t[k].n; ++i)
            adam_one(p, g, m, v, i, step, beta1, beta2, eps, weight_decay, inv_sqrt_bc2);
    }
}

#define WHYGPU_NN_INSTANTIATE(T)                                                                    \
    template void bias_add<T>(T*, const T*, i64, i64, int);                                         \
    template void bias_grad<T>(const T*, T*, i64, i64, T, int);                                     \
    template void leaky_relu_fwd<T>(const T*, T*, i64, T, int);                                     \
    template void leaky_relu_bwd<T>(const T*, const T*, T*, i64, T, int);                           \
    template void sigmoid_fwd<T>(const T*, T*, i64, int);                                           \
    template void sigmoid_bwd<T>(const T*, const T*, T*, i64, int);                                 \
    template void tanh_fwd<T>(const T*, T*, i64, int);                                              \
    template void tanh_bwd<T>(const T*, const T*, T*, i64, int);                                    \
    template void softmax_fwd<T>(const T*, T*, i64, i64, int);                                      \
    template void softmax_bwd<T>(const T*, const T*, T*, i64, i64, int);                            \
    template double softmax_xent_fwd<T>(const T*, const std::int64_t*, T*, i64, i64, int, i64*);    \
    template void softmax_xent_bwd<T>(const T*, const std::int64_t*, T*, i64, i64, T, int);         \
    template double mse_fwd<T>(const T*, const T*, i64, int);                                       \
    template void mse_bwd<T>(const T*, const T*, T*, i64, T, int);                                  \
    template double bce_logits_fwd<T>(const T*, const T*, i64, int);                                \
    template void bce_logits_bwd<T>(const T*, const T*, T*, i64, T, int);                           \
    template void mask_scale<T>(const T*, const std::uint8_t*, T*, i64, T, int);                    \
    template void sgd_update<T>(T*, const T*, T*, i64, T, T, T, bool, int);                         \
    template void adam_update<T>(T*, const T*, T*, T*, i64, T, T, T, T, T, T, T, int);              \
    template void bias_relu<T>(T*, const T*, i64, i64, bool, int);                                  \
    template void sgd_update_multi<T>(const TensorRef<T>*, int, T, T, T, bool, int);                \
    template void adam_update_multi<T>(const TensorRef<T>*, int, T, T, T, T, T, T, int);

WHYGPU_NN_INSTANTIATE(float)
WHYGPU_NN_INSTANTIATE(double)

}  // namespace nn
}  // namespace whygpu
