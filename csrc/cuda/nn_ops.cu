// nn_ops.cu -- the element-wise training operations of nn_ops.h on the GPU.
//
// Each is one pass over memory (these kernels are bandwidth-bound: a few
// flops per byte), written as grid-stride loops so any size works with a
// bounded grid.  The formulas copy csrc/nn_ops.cpp line for line, including
// how NaN flows through min/max, so CPU and GPU training agree.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "nn_ops.h"

namespace whygpu {
namespace gpu {
namespace nn {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(i64 n) {
    const i64 blocks = (n + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

#define WHYGPU_GRID_STRIDE(i, n) \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ float stable_sigmoid(float x) {
    if (x >= 0.f) return 1.f / (1.f + expf(-x));  // exp of a non-positive number never overflows
    const float e = expf(x);
    return e / (1.f + e);
}

__global__ void bias_add_kernel(float* y, const float* b, i64 rows, i64 cols) {
    WHYGPU_GRID_STRIDE(e, rows * cols) y[e] += b[e % cols];
}

// Column sums: a block owns 32 columns (a warp reads 32 neighbours of a row:
// coalesced); its 8 rows of threads take every 8th row, and their partial
// sums are added in a fixed order, so the result is the same on every run.
__global__ void bias_grad_kernel(const float* dy, float* db, i64 rows, i64 cols, float beta) {
    __shared__ float part[8][33];
    const i64 j = blockIdx.x * 32LL + threadIdx.x;
    float s = 0.f;
    if (j < cols)
        for (i64 i = threadIdx.y; i < rows; i += 8) s += dy[i * cols + j];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        float t = 0.f;
        for (int r = 0; r < 8; ++r) t += part[r][threadIdx.x];
        db[j] = (beta == 0.f) ? t : beta * db[j] + t;
    }
}

__global__ void leaky_relu_fwd_kernel(const float* x, float* y, i64 n, float slope) {
    if (slope == 0.f) {
        WHYGPU_GRID_STRIDE(i, n) { const float v = x[i]; y[i] = v > 0.f ? v : 0.f; }
        return;
    }
    // std::max(v, 0) + slope * std::min(v, 0), as on the CPU (NaN stays NaN).
    WHYGPU_GRID_STRIDE(i, n) { const float v = x[i]; y[i] = (v < 0.f ? 0.f : v) + slope * (0.f < v ? 0.f : v); }
}

__global__ void leaky_relu_bwd_kernel(const float* dy, const float* x, float* dx, i64 n, float slope) {
    WHYGPU_GRID_STRIDE(i, n) {
        const float g = dy[i];
        const bool pos = x[i] > 0.f;
        dx[i] = slope == 0.f ? (pos ? g : 0.f) : (pos ? g : 0.f) + slope * (pos ? 0.f : g);
    }
}

__global__ void sigmoid_fwd_kernel(const float* x, float* y, i64 n) {
    WHYGPU_GRID_STRIDE(i, n) y[i] = stable_sigmoid(x[i]);
}
__global__ void sigmoid_bwd_kernel(const float* dy, const float* y, float* dx, i64 n) {
    WHYGPU_GRID_STRIDE(i, n) dx[i] = dy[i] * y[i] * (1.f - y[i]);
}
__global__ void tanh_fwd_kernel(const float* x, float* y, i64 n) {
    WHYGPU_GRID_STRIDE(i, n) y[i] = tanhf(x[i]);
}
__global__ void tanh_bwd_kernel(const float* dy, const float* y, float* dx, i64 n) {
    WHYGPU_GRID_STRIDE(i, n) dx[i] = dy[i] * (1.f - y[i] * y[i]);
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp per row: max, sum of exp(x - max), probabilities, and the row's
// loss log(sum) - (x[label] - max), exact even when p[label] underflows.
// A bad label is marked -inf in row_loss (a real loss is >= 0 or NaN).
__global__ void softmax_xent_rows_kernel(const float* x, const std::int64_t* labels, float* probs,
                                         float* row_loss, i64 rows, i64 cols) {
    const i64 row = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together
    const float* xr = x + row * cols;
    float* pr = probs + row * cols;
    float mx = -INFINITY;
    for (i64 j = lane; j < cols; j += 32) mx = fmaxf(mx, xr[j]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (i64 j = lane; j < cols; j += 32) {
        const float e = expf(xr[j] - mx);
        pr[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (i64 j = lane; j < cols; j += 32) pr[j] *= inv;
    if (lane == 0) {
        const std::int64_t lab = labels[row];
        row_loss[row] = (lab < 0 || lab >= cols) ? -INFINITY : logf(sum) - (xr[lab] - mx);
    }
}

// out[0] = sum of the row losses (in double), out[1] = number of bad labels.
// One block, a fixed summation order: deterministic.
__global__ void sum_losses_kernel(const float* row_loss, i64 rows, double* out) {
    __shared__ double s_loss[kThreads];
    __shared__ double s_bad[kThreads];
    double loss = 0.0, bad = 0.0;
    for (i64 i = threadIdx.x; i < rows; i += kThreads) {
        const float l = row_loss[i];
        if (l == -INFINITY) bad += 1.0;
        else loss += l;
    }
    s_loss[threadIdx.x] = loss;
    s_bad[threadIdx.x] = bad;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            s_loss[threadIdx.x] += s_loss[threadIdx.x + half];
            s_bad[threadIdx.x] += s_bad[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { out[0] = s_loss[0]; out[1] = s_bad[0]; }
}

__global__ void softmax_xent_bwd_kernel(const float* probs, const std::int64_t* labels, float* dx, i64 rows,
                                        i64 cols, float scale) {
    WHYGPU_GRID_STRIDE(e, rows * cols) {
        const float d = scale * probs[e];
        dx[e] = (labels[e / cols] == e % cols) ? d - scale : d;
    }
}

// The Softmax layer: one warp per row, as in softmax_xent_rows_kernel.
__global__ void softmax_rows_kernel(const float* x, float* y, i64 rows, i64 cols) {
    const i64 row = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    float mx = -INFINITY;
    for (i64 j = lane; j < cols; j += 32) mx = fmaxf(mx, xr[j]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (i64 j = lane; j < cols; j += 32) {
        const float e = expf(xr[j] - mx);
        yr[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (i64 j = lane; j < cols; j += 32) yr[j] *= inv;
}

// dx = y * (dy - dot(dy, y)) per row; one warp per row.
__global__ void softmax_bwd_rows_kernel(const float* dy, const float* y, float* dx, i64 rows, i64 cols) {
    const i64 row = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* dyr = dy + row * cols;
    const float* yr = y + row * cols;
    float* dxr = dx + row * cols;
    float dot = 0.f;
    for (i64 j = lane; j < cols; j += 32) dot += dyr[j] * yr[j];
    dot = warp_sum(dot);
    for (i64 j = lane; j < cols; j += 32) dxr[j] = yr[j] * (dyr[j] - dot);
}

// out[0] = sum over i of term(i), in double.  One block and a fixed order
// (thread-strided partial sums, then a tree): the same bits on every run.
// Losses are batch x outputs elements, small enough for one block.
template <typename Term>
__device__ void block_sum_to(i64 n, double* out, Term term) {
    __shared__ double part[kThreads];
    double s = 0.0;
    for (i64 i = threadIdx.x; i < n; i += kThreads) s += term(i);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = part[0];
}

__global__ void mse_sum_kernel(const float* y, const float* t, i64 n, double* out) {
    block_sum_to(n, out, [=](i64 i) {
        const double d = static_cast<double>(y[i]) - static_cast<double>(t[i]);
        return d * d;
    });
}
__global__ void mse_bwd_kernel(const float* y, const float* t, float* dx, i64 n, float scale2) {
    WHYGPU_GRID_STRIDE(i, n) dx[i] = scale2 * (y[i] - t[i]);
}

__global__ void bce_sum_kernel(const float* x, const float* t, i64 n, double* out) {
    block_sum_to(n, out, [=](i64 i) {
        const float xi = x[i];
        return static_cast<double>((xi < 0.f ? 0.f : xi) - xi * t[i] + log1pf(expf(-fabsf(xi))));
    });
}
__global__ void bce_bwd_kernel(const float* x, const float* t, float* dx, i64 n, float scale) {
    WHYGPU_GRID_STRIDE(i, n) dx[i] = scale * (stable_sigmoid(x[i]) - t[i]);
}

__global__ void mask_scale_kernel(const float* x, const std::uint8_t* mask, float* y, i64 n, float scale) {
    WHYGPU_GRID_STRIDE(i, n) y[i] = x[i] * (mask[i] ? scale : 0.f);
}

// One element of an SGD / Adam step: shared by the per-tensor and the multi-tensor kernels.
__device__ __forceinline__ void sgd_one(float* p, const float* g, float* buf, i64 i, float lr, float momentum,
                                        float wd, bool nesterov) {
    const float gi = g[i] + wd * p[i];
    if (momentum == 0.f) {
        p[i] -= lr * gi;
    } else {
        const float b = momentum * buf[i] + gi;
        buf[i] = b;
        p[i] -= lr * (nesterov ? gi + momentum * b : b);
    }
}

__device__ __forceinline__ void adam_one(float* p, const float* g, float* m, float* v, i64 i, float step,
                                         float beta1, float beta2, float eps, float wd, float inv_sqrt_bc2) {
    const float gi = g[i] + wd * p[i];
    const float mi = beta1 * m[i] + (1.f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
}

__global__ void sgd_kernel(float* p, const float* g, float* buf, i64 n, float lr, float momentum, float wd,
                           bool nesterov) {
    WHYGPU_GRID_STRIDE(i, n) sgd_one(p, g, buf, i, lr, momentum, wd, nesterov);
}

__global__ void adam_kernel(float* p, const float* g, float* m, float* v, i64 n, float step, float beta1,
                            float beta2, float eps, float wd, float inv_sqrt_bc2) {
    WHYGPU_GRID_STRIDE(i, n) adam_one(p, g, m, v, i, step, beta1, beta2, eps, wd, inv_sqrt_bc2);
}

// Block row blockIdx.y updates tensor blockIdx.y; its blocks stride over that tensor.
__global__ void sgd_multi_kernel(TensorList t, const float* hyper_dev, OptHyper h) {
    const float* hv = hyper_dev != nullptr ? hyper_dev : h.v;
    const float lr = hv[0], momentum = hv[1], wd = hv[2];
    const bool nesterov = hv[3] != 0.f;
    const int k = blockIdx.y;
    WHYGPU_GRID_STRIDE(i, t.n[k]) sgd_one(t.p[k], t.g[k], t.s1[k], i, lr, momentum, wd, nesterov);
}

__global__ void adam_multi_kernel(TensorList t, const float* hyper_dev, OptHyper h) {
    const float* hv = hyper_dev != nullptr ? hyper_dev : h.v;
    const int k = blockIdx.y;
    WHYGPU_GRID_STRIDE(i, t.n[k]) adam_one(t.p[k], t.g[k], t.s1[k], t.s2[k], i, hv[0], hv[1], hv[2], hv[3], hv[4], hv[5]);
}

// See fit_metrics in nn_ops.h.  np.argmax's rule: the first of equal maxima.
__global__ void fit_metrics_kernel(const double* loss_out, int loss_len, double weight, const float* out,
                                   const std::int64_t* labels, const float* targets, i64 rows, i64 cols,
                                   double* acc) {
    __shared__ double s_right[kThreads];
    double right = 0.0;
    for (i64 i = threadIdx.x; i < rows; i += kThreads) {
        const float* o = out + i * cols;
        if (labels != nullptr) {
            i64 best = 0;
            for (i64 j = 1; j < cols; ++j)
                if (o[j] > o[best]) best = j;
            right += (cols > 0 && labels[i] == best) ? 1.0 : 0.0;
        } else if (targets != nullptr) {
            bool all = true;
            for (i64 j = 0; j < cols; ++j) all = all && ((o[j] > 0.f) == (targets[i * cols + j] >= 0.5f));
            right += all ? 1.0 : 0.0;
        }
    }
    s_right[threadIdx.x] = right;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) s_right[threadIdx.x] += s_right[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        acc[0] += weight * loss_out[0];
        if (loss_len > 1) acc[1] += loss_out[1];
        acc[2] += s_right[0];
    }
}

}  // namespace

cudaError_t bias_add(float* y, const float* b, i64 rows, i64 cols, cudaStream_t stream) {
    if (rows * cols == 0) return cudaSuccess;
    bias_add_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(y, b, rows, cols);
    return cudaGetLastError();
}

cudaError_t bias_grad(const float* dy, float* db, i64 rows, i64 cols, float beta, cudaStream_t stream) {
    if (cols == 0) return cudaSuccess;  // rows == 0 still writes db = beta * db
    bias_grad_kernel<<<static_cast<unsigned>((cols + 31) / 32), dim3(32, 8), 0, stream>>>(dy, db, rows, cols, beta);
    return cudaGetLastError();
}

cudaError_t leaky_relu_fwd(const float* x, float* y, i64 n, float slope, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    leaky_relu_fwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n, slope);
    return cudaGetLastError();
}
cudaError_t leaky_relu_bwd(const float* dy, const float* x, float* dx, i64 n, float slope, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    leaky_relu_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, x, dx, n, slope);
    return cudaGetLastError();
}
cudaError_t sigmoid_fwd(const float* x, float* y, i64 n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    sigmoid_fwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
    return cudaGetLastError();
}
cudaError_t sigmoid_bwd(const float* dy, const float* y, float* dx, i64 n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    sigmoid_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, y, dx, n);
    return cudaGetLastError();
}
cudaError_t tanh_fwd(const float* x, float* y, i64 n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    tanh_fwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
    return cudaGetLastError();
}
cudaError_t tanh_bwd(const float* dy, const float* y, float* dx, i64 n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    tanh_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, y, dx, n);
    return cudaGetLastError();
}

cudaError_t softmax_xent_fwd(const float* logits, const std::int64_t* labels, float* probs, float* row_loss,
                             double* out, i64 rows, i64 cols, cudaStream_t stream) {
    // (cols == 0 needs no special case: every label is then out of range.)
    if (rows > 0) {
        const i64 blocks = (rows * 32 + kThreads - 1) / kThreads;  // 8 rows (warps) per block
        softmax_xent_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(logits, labels, probs,
                                                                                          row_loss, rows, cols);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    sum_losses_kernel<<<1, kThreads, 0, stream>>>(row_loss, rows, out);
    return cudaGetLastError();
}

cudaError_t softmax_xent_bwd(const float* probs, const std::int64_t* labels, float* dx, i64 rows, i64 cols,
                             float scale, cudaStream_t stream) {
    if (rows * cols == 0) return cudaSuccess;
    softmax_xent_bwd_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(probs, labels, dx, rows, cols, scale);
    return cudaGetLastError();
}

cudaError_t softmax_fwd(const float* x, float* y, i64 rows, i64 cols, cudaStream_t stream) {
    if (rows * cols == 0) return cudaSuccess;
    const i64 blocks = (rows * 32 + kThreads - 1) / kThreads;  // 8 rows (warps) per block
    softmax_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, y, rows, cols);
    return cudaGetLastError();
}

cudaError_t softmax_bwd(const float* dy, const float* y, float* dx, i64 rows, i64 cols, cudaStream_t stream) {
    if (rows * cols == 0) return cudaSuccess;
    const i64 blocks = (rows * 32 + kThreads - 1) / kThreads;
    softmax_bwd_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(dy, y, dx, rows, cols);
    return cudaGetLastError();
}

cudaError_t mse_fwd(const float* y, const float* t, double* out, i64 n, cudaStream_t stream) {
    mse_sum_kernel<<<1, kThreads, 0, stream>>>(y, t, n, out);  // n == 0 writes out[0] = 0
    return cudaGetLastError();
}
cudaError_t mse_bwd(const float* y, const float* t, float* dx, i64 n, float scale, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    mse_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, t, dx, n, 2.f * scale);
    return cudaGetLastError();
}

cudaError_t bce_logits_fwd(const float* x, const float* t, double* out, i64 n, cudaStream_t stream) {
    bce_sum_kernel<<<1, kThreads, 0, stream>>>(x, t, n, out);
    return cudaGetLastError();
}
cudaError_t bce_logits_bwd(const float* x, const float* t, float* dx, i64 n, float scale, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    bce_bwd_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, t, dx, n, scale);
    return cudaGetLastError();
}

cudaError_t mask_scale(const float* x, const std::uint8_t* mask, float* y, i64 n, float scale, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    mask_scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, mask, y, n, scale);
    return cudaGetLastError();
}

cudaError_t sgd_update(float* p, const float* g, float* buf, i64 n, float lr, float momentum, float weight_decay,
                       bool nesterov, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    sgd_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, g, buf, n, lr, momentum, weight_decay, nesterov);
    return cudaGetLastError();
}

cudaError_t adam_update(float* p, const float* g, float* m, float* v, i64 n, float lr, float beta1, float beta2,
                        float eps, float weight_decay, float bc1, float bc2, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    adam_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, g, m, v, n, lr / bc1, beta1, beta2, eps, weight_decay,
                                                     1.f / std::sqrt(bc2));
    return cudaGetLastError();
}

namespace {
template <typename Kernel>
cudaError_t multi_launch(Kernel kernel, const TensorList& t, const float* hyper_dev, const OptHyper& hyper,
                         cudaStream_t stream) {
    if (t.count <= 0) return cudaSuccess;
    i64 most = 0;
    for (int k = 0; k < t.count; ++k) most = t.n[k] > most ? t.n[k] : most;
    if (most == 0) return cudaSuccess;
    const unsigned gx = grid_for(most) < 1024u ? grid_for(most) : 1024u;  // a grid-stride loop does the rest
    kernel<<<dim3(gx, (unsigned)t.count), kThreads, 0, stream>>>(t, hyper_dev, hyper);
    return cudaGetLastError();
}
}  // namespace

cudaError_t sgd_update_multi(const TensorList& t, const float* hyper_dev, const OptHyper& hyper, cudaStream_t stream) {
    return multi_launch(sgd_multi_kernel, t, hyper_dev, hyper, stream);
}

cudaError_t adam_update_multi(const TensorList& t, const float* hyper_dev, const OptHyper& hyper,
                              cudaStream_t stream) {
    return multi_launch(adam_multi_kernel, t, hyper_dev, hyper, stream);
}

cudaError_t fit_metrics(const double* loss_out, int loss_len, double weight, const float* out,
                        const std::int64_t* labels, const float* targets, i64 rows, i64 cols, double* acc,
                        cudaStream_t stream) {
    fit_metrics_kernel<<<1, kThreads, 0, stream>>>(loss_out, loss_len, weight, out, labels, targets, rows, cols,
                                                   acc);
    return cudaGetLastError();
}

}  // namespace nn
}  // namespace gpu
}  // namespace whygpu
