// nn_ops.h -- the element-wise work of training a dense network, on the GPU:
// bias add and gradient, activations and their gradients, softmax, fused
// softmax + cross-entropy, MSE and BCE-with-logits losses, dropout masks,
// SGD and Adam updates.  The same operations and formulas as
// the CPU versions in csrc/nn_ops.h (PyTorch's conventions), in float32, so
// that a GPU training step matches the CPU one to rounding.
//
// Why on the GPU at all: with the matmuls on the GPU, copying activations
// back to the host for a bias add would cost more than the whole step.  With
// these, parameters, activations and gradients stay in device memory; only
// the batch goes in and the loss comes out.
//
// Conventions: device pointers to C-contiguous arrays, sizes in elements,
// everything asynchronous on `stream` (the binding passes the legacy default
// stream, so operations run in the order they are issued).  Outputs may
// alias inputs of the same shape (in-place activations).  Each function
// returns the launch's error code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace whygpu {
namespace gpu {
namespace nn {

using i64 = long long;

// y[i, j] += b[j] for a (rows x cols) matrix y.
cudaError_t bias_add(float* y, const float* b, i64 rows, i64 cols, cudaStream_t stream);
// db[j] = beta * db[j] + sum_i dy[i, j]  (beta == 0 overwrites, never reads db).
cudaError_t bias_grad(const float* dy, float* db, i64 rows, i64 cols, float beta, cudaStream_t stream);

// Leaky ReLU (slope 0 is ReLU): y = x > 0 ? x : slope * x;  dx = x > 0 ? dy : slope * dy.
cudaError_t leaky_relu_fwd(const float* x, float* y, i64 n, float slope, cudaStream_t stream);
cudaError_t leaky_relu_bwd(const float* dy, const float* x, float* dx, i64 n, float slope, cudaStream_t stream);
// y = 1 / (1 + exp(-x)) without overflow; dx = dy * y * (1 - y)  (y is the forward *output*).
cudaError_t sigmoid_fwd(const float* x, float* y, i64 n, cudaStream_t stream);
cudaError_t sigmoid_bwd(const float* dy, const float* y, float* dx, i64 n, cudaStream_t stream);
// y = tanh(x); dx = dy * (1 - y^2).
cudaError_t tanh_fwd(const float* x, float* y, i64 n, cudaStream_t stream);
cudaError_t tanh_bwd(const float* dy, const float* y, float* dx, i64 n, cudaStream_t stream);

// Fused softmax + cross-entropy over the rows of (rows x cols) logits.
// Writes the probabilities (kept for the backward pass), the per-row losses
// -log p[i, label[i]] into row_loss (scratch, `rows` floats; 0 for a bad
// label), and into out[0] their sum and into out[1] the number of labels
// outside [0, cols), both as doubles in device memory (a fixed-order
// reduction: the same bits on every run).
cudaError_t softmax_xent_fwd(const float* logits, const std::int64_t* labels, float* probs, float* row_loss,
                             double* out, i64 rows, i64 cols, cudaStream_t stream);
// dlogits = scale * (probs - onehot(labels)); scale is 1/rows for a mean.
cudaError_t softmax_xent_bwd(const float* probs, const std::int64_t* labels, float* dx, i64 rows, i64 cols,
                             float scale, cudaStream_t stream);

// Row-wise softmax of a (rows x cols) matrix (the Softmax layer) and its
// gradient dx = y * (dy - sum_j dy * y) per row (y is the forward output).
cudaError_t softmax_fwd(const float* x, float* y, i64 rows, i64 cols, cudaStream_t stream);
cudaError_t softmax_bwd(const float* dy, const float* y, float* dx, i64 rows, i64 cols, cudaStream_t stream);

// Mean squared error: out[0] = sum (y - t)^2 as a double in device memory
// (one block, a fixed summation order); dx = 2 * scale * (y - t).
cudaError_t mse_fwd(const float* y, const float* t, double* out, i64 n, cudaStream_t stream);
cudaError_t mse_bwd(const float* y, const float* t, float* dx, i64 n, float scale, cudaStream_t stream);
// Sigmoid + binary cross-entropy on logits, stable:
// out[0] = sum max(x, 0) - x t + log1p(exp(-|x|)) (a double, as above); dx = scale * (sigmoid(x) - t).
cudaError_t bce_logits_fwd(const float* x, const float* t, double* out, i64 n, cudaStream_t stream);
cudaError_t bce_logits_bwd(const float* x, const float* t, float* dx, i64 n, float scale, cudaStream_t stream);

// Dropout: y = mask ? x * scale : 0 (mask: one byte per element, nonzero keeps).
cudaError_t mask_scale(const float* x, const std::uint8_t* mask, float* y, i64 n, float scale, cudaStream_t stream);

// SGD, PyTorch's formulation, in place:
//   g' = g + weight_decay * p
//   momentum == 0: p -= lr * g'                   (buf may be null)
//   else:          buf = momentum * buf + g';  p -= lr * (nesterov ? g' + momentum * buf : buf)
cudaError_t sgd_update(float* p, const float* g, float* buf, i64 n, float lr, float momentum, float weight_decay,
                       bool nesterov, cudaStream_t stream);
// Adam (PyTorch's formulation, L2 weight decay added to the gradient), in place:
//   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)   with bc = 1 - beta^step.
cudaError_t adam_update(float* p, const float* g, float* m, float* v, i64 n, float lr, float beta1, float beta2,
                        float eps, float weight_decay, float bc1, float bc2, cudaStream_t stream);

// ---- A whole model's optimizer step in one launch ("multi-tensor apply") --------
// The per-parameter updates above are one launch each: 2 per Linear layer,
// each a few microseconds of launch overhead for kernels that run for less.
// These take a list of tensors and update them all in one launch: block row
// blockIdx.y works on tensor blockIdx.y.  A list longer than kMaxTensors is
// split into several launches (the list travels as a kernel argument).
constexpr int kMaxTensors = 24;
struct TensorList {
    float* p[kMaxTensors];         // parameters, updated in place
    const float* g[kMaxTensors];   // their gradients
    float* s1[kMaxTensors];        // state: SGD's momentum buffer (null without momentum), Adam's m
    float* s2[kMaxTensors];        // state: Adam's v (unused by SGD)
    i64 n[kMaxTensors];            // elements in each
    int count = 0;
};
// The hyperparameters, as the kernels use them:
//   SGD  {lr, momentum, weight_decay, nesterov (0 or 1)}
//   Adam {lr / bc1, beta1, beta2, eps, weight_decay, 1 / sqrt(bc2)}
// They are read from device memory when hyper_dev is not null: a CUDA graph
// replays a launch with the arguments it was captured with, so values that
// change from step to step (the learning rate, Adam's bias corrections) must
// be read where the host can rewrite them between replays.
struct OptHyper {
    float v[6] = {0, 0, 0, 0, 0, 0};
};
cudaError_t sgd_update_multi(const TensorList& t, const float* hyper_dev, const OptHyper& hyper, cudaStream_t stream);
cudaError_t adam_update_multi(const TensorList& t, const float* hyper_dev, const OptHyper& hyper,
                              cudaStream_t stream);

// ---- Training metrics kept on the GPU ---------------------------------------------
// What fit() reports per epoch, added up without copying anything back per batch:
//   acc[0] += weight * loss_out[0]  (the batch's summed loss, from a *_fwd above, weighted to a per-sample sum)
//   acc[1] += loss_out[1]     (labels out of range; only when loss_len == 2)
//   acc[2] += rows classified right: argmax(out[i]) == labels[i] with labels,
//             all_j (out[i, j] > 0) == (targets[i, j] >= 0.5) with targets,
//             nothing with neither.
// One block, a fixed order: deterministic.
cudaError_t fit_metrics(const double* loss_out, int loss_len, double weight, const float* out,
                        const std::int64_t* labels, const float* targets, i64 rows, i64 cols, double* acc,
                        cudaStream_t stream);

}  // namespace nn
}  // namespace gpu
}  // namespace whygpu
