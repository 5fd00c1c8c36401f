// The GEMM rungs on DeviceArrays: argument checks, then one call into csrc/cuda/dispatch.cu.
#include "binding.h"

#include "gemm_cuda.h"

namespace whygpu {
namespace cudabind {

const float* f32_in(const DeviceArray& x, const char* name) {
    if (!x.is("<f4")) throw py::type_error(std::string(name) + " must be float32, got " + py::str(x.dtype()).cast<std::string>());
    return static_cast<const float*>(x.data(name));
}
float* f32_out(DeviceArray& x, const char* name) { return const_cast<float*>(f32_in(x, name)); }

namespace {

constexpr py::ssize_t kMaxDim = py::ssize_t(1) << 30;  // keeps every index inside the kernels an int

void gemm(int rung, const DeviceArray& a, const DeviceArray& b, DeviceArray& c, double alpha, double beta,
          bool trans_a, bool trans_b, int split_k, const py::object& bias, bool relu, int precision) {
    if (split_k < 0) throw py::value_error("split_k must be 0 (chosen by shape) or >= 1, got " + std::to_string(split_k));
    if (whygpu::gpu::rung_name(rung) == nullptr) throw py::value_error("unknown CUDA rung " + std::to_string(rung));
    if (a.shape.size() != 2 || b.shape.size() != 2 || c.shape.size() != 2)
        throw py::value_error("a, b and c must be 2-D");
    const py::ssize_t m = trans_a ? a.shape[1] : a.shape[0], k = trans_a ? a.shape[0] : a.shape[1];
    const py::ssize_t k2 = trans_b ? b.shape[1] : b.shape[0], n = trans_b ? b.shape[0] : b.shape[1];
    if (k != k2 || c.shape[0] != m || c.shape[1] != n)
        throw py::value_error("shapes do not match: need op(a) (m, k), op(b) (k, n), c (m, n)");
    for (auto d : {m, n, k})
        if (d >= kMaxDim) throw py::value_error("matrix dimensions of 2**30 or more are not supported");
    whygpu::gpu::GemmArgs g;
    g.a = f32_in(a, "a");
    g.b = f32_in(b, "b");
    g.c = f32_out(c, "c");
    if (c.nbytes() > 0 && (c.buf == a.buf || c.buf == b.buf))
        throw py::value_error("c shares memory with a or b: the kernels read a and b while writing c");
    g.m = static_cast<int>(m);
    g.n = static_cast<int>(n);
    g.k = static_cast<int>(k);
    g.alpha = static_cast<float>(alpha);
    g.beta = static_cast<float>(beta);
    g.lda = a.shape[1];
    g.ldb = b.shape[1];
    g.ldc = c.shape[1];
    g.trans_a = trans_a;
    g.trans_b = trans_b;
    g.split_k = split_k;
    g.relu = relu;
    g.precision = precision < 0 ? whygpu::gpu::default_precision(rung) : precision;
    // A rung that cannot compute in this precision on this GPU (whygpu.cuda has already
    // refused precisions a rung never computes in, with a ValueError).
    if (const char* why = whygpu::gpu::rung_unavailable(rung, g.precision)) throw CudaUnavailable(why);
    std::shared_ptr<Buffer> keep_bias;
    if (!bias.is_none()) {
        const auto& bv = bias.cast<const DeviceArray&>();
        if (bv.shape.size() != 1 || bv.shape[0] != n)
            throw py::value_error("bias must be a 1-D DeviceArray with one entry per column of c (" +
                                  std::to_string(n) + "), got " + describe(bv));
        g.bias = f32_in(bv, "bias");
        if (c.nbytes() > 0 && bv.buf == c.buf) throw py::value_error("bias shares memory with c");
        keep_bias = bv.buf;
    }
    auto keep_a = a.buf, keep_b = b.buf, keep_c = c.buf;
    run_released(std::string("gemm (") + whygpu::gpu::rung_name(rung) + ")",
                 [&] { return whygpu::gpu::gemm(rung, g, stream()); });
}

}  // namespace

void bind_gemm(py::module_& m) {
    m.def("gemm", &gemm, py::arg("rung"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha") = 1.0,
          py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("split_k") = 0,
          py::arg("bias") = py::none(), py::arg("relu") = false, py::arg("precision") = -1,
          "c = alpha * op(a) @ op(b) + beta * c on CUDA rung `rung`, float32 DeviceArrays. Asynchronous. "
          "split_k (cuda_warptile only): 0 = chosen from the shape, s >= 1 = s slices of k. Fused epilogue: "
          "then c += bias (one entry per column) and c = max(c, 0) when relu. precision: 0 float32, 1 tf32, "
          "2 bf16 (tensor-core rungs), -1 the rung's default.");
    m.def("default_precision", &whygpu::gpu::default_precision, py::arg("rung"),
          "The precision (0 float32, 1 tf32, 2 bf16) rung `rung` computes in unless told otherwise.");
    m.def("rung_unavailable", [](int rung, int precision) {
        const char* why = whygpu::gpu::rung_unavailable(rung, precision);
        return std::string(why ? why : "");
    }, py::arg("rung"), py::arg("precision"),
          "Why rung `rung` cannot compute in `precision` on the current GPU, or '' when it can.");
}

}  // namespace cudabind
}  // namespace whygpu
