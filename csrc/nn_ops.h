// nn_ops.h -- the non-matmul work of training a dense network: bias add,
// activations and their gradients, losses, optimizer updates.
//
// Why compiled: in a NumPy training step these element-wise passes run on
// one core while the matmuls run on all of them, so with P cores they become
// the serial fraction that Amdahl's law punishes.  Here each one is a single
// fused pass (NumPy needs temporaries and several passes for most of them),
// OpenMP-parallel with a per-call thread count.
//
// Conventions: arrays are C-contiguous (the binding checks), sizes are
// element counts, `threads` >= 1.  Small arrays stay serial (the `if` clause
// of each parallel loop): waking a team costs microseconds, more than a pass
// over a few thousand floats.  Every function is defined for float and double.
// Without OpenMP at build time the pragmas are ignored and everything runs
// serially, with the same results.
#pragma once

#include <cstdint>

namespace whygpu {
namespace nn {

using i64 = std::int64_t;

// Arrays smaller than this (in elements) are processed by one thread.
constexpr i64 kParallelMin = 1 << 15;

// y[i, j] += b[j] for a (rows x cols) matrix y.
template <typename T> void bias_add(T* y, const T* b, i64 rows, i64 cols, int threads);
// db[j] = beta * db[j] + sum_i dy[i, j]  (beta == 0 overwrites, never reads db).
template <typename T> void bias_grad(const T* dy, T* db, i64 rows, i64 cols, T beta, int threads);

// Leaky ReLU (slope 0 is ReLU): y = x > 0 ? x : slope * x.
template <typename T> void leaky_relu_fwd(const T* x, T* y, i64 n, T slope, int threads);
// dx = x > 0 ? dy : slope * dy   (x is the forward *input*).
template <typename T> void leaky_relu_bwd(const T* dy, const T* x, T* dx, i64 n, T slope, int threads);
// y = 1 / (1 + exp(-x)), computed without overflow; dx = dy * y * (1 - y).
template <typename T> void sigmoid_fwd(const T* x, T* y, i64 n, int threads);
template <typename T> void sigmoid_bwd(const T* dy, const T* y, T* dx, i64 n, int threads);
// y = tanh(x); dx = dy * (1 - y^2).
template <typename T> void tanh_fwd(const T* x, T* y, i64 n, int threads);
template <typename T> void tanh_bwd(const T* dy, const T* y, T* dx, i64 n, int threads);
// Row-wise softmax of a (rows x cols) matrix; backward dx = y * (dy - sum_j dy*y).
template <typename T> void softmax_fwd(const T* x, T* y, i64 rows, i64 cols, int threads);
template <typename T> void softmax_bwd(const T* dy, const T* y, T* dx, i64 rows, i64 cols, int threads);

// Fused softmax + cross-entropy.  Writes the probabilities (kept for the
// backward pass) and returns the *sum* over rows of -log p[i, label[i]].
// Labels outside [0, cols) are counted in *bad and contribute nothing.
template <typename T>
double softmax_xent_fwd(const T* logits, const std::int64_t* labels, T* probs, i64 rows, i64 cols,
                        int threads, i64* bad);
// dlogits = scale * (probs - onehot(labels)); scale is 1/rows for a mean.
template <typename T>
void softmax_xent_bwd(const T* probs, const std::int64_t* labels, T* dx, i64 rows, i64 cols, T scale,
                      int threads);
// Sum of (y - t)^2; gradient dx = scale * 2 * (y - t).
template <typename T> double mse_fwd(const T* y, const T* t, i64 n, int threads);
template <typename T> void mse_bwd(const T* y, const T* t, T* dx, i64 n, T scale, int threads);
// Sum of the numerically stable binary cross-entropy with logits x and
// targets t: max(x, 0) - x t + log(1 + exp(-|x|)); gradient scale * (sigmoid(x) - t).
template <typename T> double bce_logits_fwd(const T* x, const T* t, i64 n, int threads);
template <typename T> void bce_logits_bwd(const T* x, const T* t, T* dx, i64 n, T scale, int threads);

// y = x * mask * scale (dropout, forward and backward alike).
template <typename T>
void mask_scale(const T* x, const std::uint8_t* mask, T* y, i64 n, T scale, int threads);

// SGD, PyTorch's formulation, in place:
//   g' = g + weight_decay * p
//   momentum == 0: p -= lr * g'
//   else:          buf = momentum * buf + g';  p -= lr * (nesterov ? g' + momentum * buf : buf)
// buf may be null when momentum == 0.
template <typename T>
void sgd_update(T* p, const T* g, T* buf, i64 n, T lr, T momentum, T weight_decay, bool nesterov,
                int threads);
// Adam (PyTorch's formulation, L2 weight decay added to the gradient), in place:
//   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)   with bc = 1 - beta^step.
template <typename T>
void adam_update(T* p, const T* g, T* m, T* v, i64 n, T lr, T beta1, T beta2, T eps, T weight_decay,
                 T bc1, T bc2, int threads);

// ---- Fewer calls per step --------------------------------------------------
// y = y + b (each row; b may be null), then max(y, 0) when relu: the
// element-wise work of a Linear layer and the ReLU after it in one pass and
// one call (the forward pass's ReLU mask is then y > 0, the same set).
template <typename T> void bias_relu(T* y, const T* b, i64 rows, i64 cols, bool relu, int threads);

// Every parameter's optimizer step in one call and one team of threads,
// instead of a call (and a parallel region) per parameter.  The formulas of
// sgd_update / adam_update; Adam takes step = lr / bc1 and inv_sqrt_bc2 =
// 1 / sqrt(bc2), as its GPU twin (csrc/cuda/nn_ops.h) does.
template <typename T>
struct TensorRef {
    T* p;        // parameter, updated in place
    const T* g;  // its gradient
    T* s1;       // SGD's momentum buffer (null without momentum) or Adam's m
    T* s2;       // Adam's v
    i64 n;
};
template <typename T>
void sgd_update_multi(const TensorRef<T>* t, int count, T lr, T momentum, T weight_decay, bool nesterov,
                      int threads);
template <typename T>
void adam_update_multi(const TensorRef<T>* t, int count, T step, T beta1, T beta2, T eps, T weight_decay,
                       T inv_sqrt_bc2, int threads);

}  // namespace nn
}  // namespace whygpu
