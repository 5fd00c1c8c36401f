// The element-wise training operations of csrc/cuda/nn_ops.h on float32 DeviceArrays (the nn submodule).
#include "binding.h"

#include <cstdint>

#include "nn_ops.h"

namespace whygpu {
namespace cudabind {

namespace {

namespace nn = whygpu::gpu::nn;
using i64 = long long;

void same_size(const DeviceArray& x, const DeviceArray& y, const char* xn, const char* yn) {
    if (x.size() != y.size())
        throw py::value_error(std::string(xn) + " and " + yn + " must have the same number of elements, got " +
                              std::to_string(x.size()) + " and " + std::to_string(y.size()));
}

std::pair<i64, i64> rows_cols(const DeviceArray& x, const char* name) {
    if (x.shape.size() != 2) throw py::value_error(std::string(name) + " must be 2-D (rows, cols)");
    return {x.shape[0], x.shape[1]};
}

void labels_for(const DeviceArray& labels, i64 rows) {
    if (!labels.is("<i8")) throw py::type_error("labels must be int64, got " + py::str(labels.dtype()).cast<std::string>());
    if (labels.size() != rows)
        throw py::value_error("labels must hold one entry per row: " + std::to_string(rows) + ", got " +
                              std::to_string(labels.size()));
}

}  // namespace

void bind_nn(py::module_& m) {
    m.doc() = "Element-wise training operations on float32 DeviceArrays (see csrc/cuda/nn_ops.h). Asynchronous.";
    m.def("bias_add", [](DeviceArray& y, const DeviceArray& b) {
        auto [rows, cols] = rows_cols(y, "y");
        if (b.size() != cols) throw py::value_error("b must have one entry per column of y");
        float* yp = f32_out(y, "y");
        const float* bp = f32_in(b, "b");
        auto keep = y.buf; auto keep_b = b.buf;
        run_released("bias_add", [&] { return nn::bias_add(yp, bp, rows, cols, stream()); });
    }, py::arg("y"), py::arg("b"), "y[i, j] += b[j], in place.");
    m.def("bias_grad", [](const DeviceArray& dy, DeviceArray& db, double beta) {
        auto [rows, cols] = rows_cols(dy, "dy");
        if (db.size() != cols) throw py::value_error("db must have one entry per column of dy");
        const float* dyp = f32_in(dy, "dy");
        float* dbp = f32_out(db, "db");
        if (dy.buf == db.buf && dy.nbytes() > 0) throw py::value_error("db must not share memory with dy");
        auto keep = dy.buf; auto keep_db = db.buf;
        run_released("bias_grad", [&] { return nn::bias_grad(dyp, dbp, rows, cols, static_cast<float>(beta), stream()); });
    }, py::arg("dy"), py::arg("db"), py::arg("beta") = 0.0, "db = beta * db + dy.sum(axis=0) (beta 0 overwrites).");

    m.def("leaky_relu_fwd", [](const DeviceArray& x, DeviceArray& y, double slope) {
        same_size(x, y, "x", "y");
        const float* xp = f32_in(x, "x");
        float* yp = f32_out(y, "y");
        auto keep = x.buf; auto keep_y = y.buf;
        run_released("leaky_relu_fwd", [&] { return nn::leaky_relu_fwd(xp, yp, x.size(), static_cast<float>(slope), stream()); });
    }, py::arg("x"), py::arg("y"), py::arg("slope") = 0.0, "y = x > 0 ? x : slope * x (slope 0: ReLU).");
    m.def("leaky_relu_bwd", [](const DeviceArray& dy, const DeviceArray& x, DeviceArray& dx, double slope) {
        same_size(dy, x, "dy", "x");
        same_size(dy, dx, "dy", "dx");
        const float* dyp = f32_in(dy, "dy");
        const float* xp = f32_in(x, "x");
        float* dxp = f32_out(dx, "dx");
        auto k1 = dy.buf; auto k2 = x.buf; auto k3 = dx.buf;
        run_released("leaky_relu_bwd",
                     [&] { return nn::leaky_relu_bwd(dyp, xp, dxp, dy.size(), static_cast<float>(slope), stream()); });
    }, py::arg("dy"), py::arg("x"), py::arg("dx"), py::arg("slope") = 0.0,
       "dx = x > 0 ? dy : slope * dy (x is the forward input).");

    auto unary = [&m](const char* name, cudaError_t (*fn)(const float*, float*, i64, cudaStream_t), const char* doc) {
        m.def(name, [name, fn](const DeviceArray& x, DeviceArray& y) {
            same_size(x, y, "x", "y");
            const float* xp = f32_in(x, "x");
            float* yp = f32_out(y, "y");
            auto k1 = x.buf; auto k2 = y.buf;
            run_released(name, [&] { return fn(xp, yp, x.size(), stream()); });
        }, py::arg("x"), py::arg("y"), doc);
    };
    auto backward = [&m](const char* name, cudaError_t (*fn)(const float*, const float*, float*, i64, cudaStream_t),
                         const char* doc) {
        m.def(name, [name, fn](const DeviceArray& dy, const DeviceArray& y, DeviceArray& dx) {
            same_size(dy, y, "dy", "y");
            same_size(dy, dx, "dy", "dx");
            const float* dyp = f32_in(dy, "dy");
            const float* yp = f32_in(y, "y");
            float* dxp = f32_out(dx, "dx");
            auto k1 = dy.buf; auto k2 = y.buf; auto k3 = dx.buf;
            run_released(name, [&] { return fn(dyp, yp, dxp, dy.size(), stream()); });
        }, py::arg("dy"), py::arg("y"), py::arg("dx"), doc);
    };
    unary("sigmoid_fwd", nn::sigmoid_fwd, "y = 1 / (1 + exp(-x)), without overflow.");
    backward("sigmoid_bwd", nn::sigmoid_bwd, "dx = dy * y * (1 - y) (y is the forward output).");
    unary("tanh_fwd", nn::tanh_fwd, "y = tanh(x).");
    backward("tanh_bwd", nn::tanh_bwd, "dx = dy * (1 - y**2) (y is the forward output).");

    m.def("softmax_xent_fwd", [](const DeviceArray& logits, const DeviceArray& labels, DeviceArray& probs) {
        auto [rows, cols] = rows_cols(logits, "logits");
        labels_for(labels, rows);
        if (probs.shape != logits.shape) throw py::value_error("probs must have the shape of logits");
        const float* lp = f32_in(logits, "logits");
        float* pp = f32_out(probs, "probs");
        if (logits.buf == probs.buf && probs.nbytes() > 0)
            throw py::value_error("probs must not share memory with logits (the loss reads the logits after)");
        const auto* yp = static_cast<const std::int64_t*>(labels.data("labels"));
        DeviceArray scratch = make_array({static_cast<py::ssize_t>(rows)}, py::dtype("float32"));
        DeviceArray out = make_array({2}, py::dtype("float64"));
        float* sp = static_cast<float*>(scratch.data());
        double* op = static_cast<double*>(out.data());
        auto k1 = logits.buf; auto k2 = labels.buf; auto k3 = probs.buf;
        run_released("softmax_xent_fwd",
                     [&] { return nn::softmax_xent_fwd(lp, yp, pp, sp, op, rows, cols, stream()); });
        return out;
    }, py::arg("logits"), py::arg("labels"), py::arg("probs"),
       "Row-wise softmax into probs; returns a float64 DeviceArray [sum of -log p[label], number of labels "
       "outside [0, cols)] (copy it to the host for the loss).");
    m.def("softmax_xent_bwd", [](const DeviceArray& probs, const DeviceArray& labels, DeviceArray& dx,
                                 double scale) {
        auto [rows, cols] = rows_cols(probs, "probs");
        labels_for(labels, rows);
        same_size(probs, dx, "probs", "dx");
        const float* pp = f32_in(probs, "probs");
        float* dxp = f32_out(dx, "dx");
        const auto* yp = static_cast<const std::int64_t*>(labels.data("labels"));
        auto k1 = probs.buf; auto k2 = labels.buf; auto k3 = dx.buf;
        run_released("softmax_xent_bwd", [&] {
            return nn::softmax_xent_bwd(pp, yp, dxp, rows, cols, static_cast<float>(scale), stream());
        });
    }, py::arg("probs"), py::arg("labels"), py::arg("dx"), py::arg("scale"),
       "dx = scale * (probs - onehot(labels)).");

    m.def("softmax_fwd", [](const DeviceArray& x, DeviceArray& y) {
        auto [rows, cols] = rows_cols(x, "x");
        same_size(x, y, "x", "y");
        const float* xp = f32_in(x, "x");
        float* yp = f32_out(y, "y");
        auto k1 = x.buf; auto k2 = y.buf;
        run_released("softmax_fwd", [&] { return nn::softmax_fwd(xp, yp, rows, cols, stream()); });
    }, py::arg("x"), py::arg("y"), "Row-wise softmax of the (rows, cols) matrix x into y.");
    m.def("softmax_bwd", [](const DeviceArray& dy, const DeviceArray& y, DeviceArray& dx) {
        auto [rows, cols] = rows_cols(y, "y");
        same_size(dy, y, "dy", "y");
        same_size(dy, dx, "dy", "dx");
        const float* dyp = f32_in(dy, "dy");
        const float* yp = f32_in(y, "y");
        float* dxp = f32_out(dx, "dx");
        auto k1 = dy.buf; auto k2 = y.buf; auto k3 = dx.buf;
        run_released("softmax_bwd", [&] { return nn::softmax_bwd(dyp, yp, dxp, rows, cols, stream()); });
    }, py::arg("dy"), py::arg("y"), py::arg("dx"), "dx = y * (dy - rowsum(dy * y)) (y is the forward output).");

    // The summed losses return a one-element float64 DeviceArray (copy it to the host for the loss).
    auto summed = [&m](const char* name, cudaError_t (*fn)(const float*, const float*, double*, i64, cudaStream_t),
                       const char* doc) {
        m.def(name, [name, fn](const DeviceArray& x, const DeviceArray& t) {
            same_size(x, t, "x", "t");
            const float* xp = f32_in(x, "x");
            const float* tp = f32_in(t, "t");
            DeviceArray out = make_array({1}, py::dtype("float64"));
            double* op = static_cast<double*>(out.data());
            auto k1 = x.buf; auto k2 = t.buf;
            run_released(name, [&] { return fn(xp, tp, op, x.size(), stream()); });
            return out;
        }, py::arg("x"), py::arg("t"), doc);
    };
    auto summed_bwd = [&m](const char* name,
                           cudaError_t (*fn)(const float*, const float*, float*, i64, float, cudaStream_t),
                           const char* doc) {
        m.def(name, [name, fn](const DeviceArray& x, const DeviceArray& t, DeviceArray& dx, double scale) {
            same_size(x, t, "x", "t");
            same_size(x, dx, "x", "dx");
            const float* xp = f32_in(x, "x");
            const float* tp = f32_in(t, "t");
            float* dxp = f32_out(dx, "dx");
            auto k1 = x.buf; auto k2 = t.buf; auto k3 = dx.buf;
            run_released(name, [&] { return fn(xp, tp, dxp, x.size(), static_cast<float>(scale), stream()); });
        }, py::arg("x"), py::arg("t"), py::arg("dx"), py::arg("scale"), doc);
    };
    summed("mse_fwd", nn::mse_fwd, "[sum((x - t)**2)] as a float64 DeviceArray.");
    summed_bwd("mse_bwd", nn::mse_bwd, "dx = 2 * scale * (x - t).");
    summed("bce_logits_fwd", nn::bce_logits_fwd,
           "[sum(max(x, 0) - x * t + log1p(exp(-|x|)))] as a float64 DeviceArray (x: logits, t: targets).");
    summed_bwd("bce_logits_bwd", nn::bce_logits_bwd, "dx = scale * (sigmoid(x) - t).");

    m.def("mask_scale", [](const DeviceArray& x, const DeviceArray& mask, DeviceArray& y, double scale) {
        same_size(x, mask, "x", "mask");
        same_size(x, y, "x", "y");
        if (!mask.is("|b1") && !mask.is("|u1"))
            throw py::type_error("mask must be bool or uint8, got " + py::str(mask.dtype()).cast<std::string>());
        const float* xp = f32_in(x, "x");
        const auto* mp = static_cast<const std::uint8_t*>(mask.data("mask"));
        float* yp = f32_out(y, "y");
        auto k1 = x.buf; auto k2 = mask.buf; auto k3 = y.buf;
        run_released("mask_scale",
                     [&] { return nn::mask_scale(xp, mp, yp, x.size(), static_cast<float>(scale), stream()); });
    }, py::arg("x"), py::arg("mask"), py::arg("y"), py::arg("scale"),
       "y = mask ? x * scale : 0 (dropout; mask is bool or uint8).");

    m.def("sgd_update", [](DeviceArray& p, const DeviceArray& g, py::object buf, double lr, double momentum,
                           double weight_decay, bool nesterov) {
        same_size(p, g, "p", "g");
        float* pp = f32_out(p, "p");
        const float* gp = f32_in(g, "g");
        float* bp = nullptr;
        std::shared_ptr<Buffer> keep_buf;
        if (momentum != 0.0) {
            if (buf.is_none()) throw py::value_error("momentum != 0 needs a momentum buffer");
            auto& b = buf.cast<DeviceArray&>();
            same_size(p, b, "p", "buf");
            bp = f32_out(b, "buf");
            keep_buf = b.buf;
        }
        auto k1 = p.buf; auto k2 = g.buf;
        const i64 n = p.size();
        run_released("sgd_update", [&] {
            return nn::sgd_update(pp, gp, bp, n, static_cast<float>(lr), static_cast<float>(momentum),
                                  static_cast<float>(weight_decay), nesterov, stream());
        });
    }, py::arg("p"), py::arg("g"), py::arg("buf"), py::arg("lr"), py::arg("momentum") = 0.0,
       py::arg("weight_decay") = 0.0, py::arg("nesterov") = false, "SGD step in place (PyTorch's formulation).");
    m.def("adam_update", [](DeviceArray& p, const DeviceArray& g, DeviceArray& mo, DeviceArray& v, double lr,
                            double beta1, double beta2, double eps, double weight_decay, double bc1, double bc2) {
        same_size(p, g, "p", "g");
        same_size(p, mo, "p", "m");
        same_size(p, v, "p", "v");
        if (!(bc1 > 0.0) || !(bc2 > 0.0)) throw py::value_error("the bias corrections bc1, bc2 must be > 0");
        float* pp = f32_out(p, "p");
        const float* gp = f32_in(g, "g");
        float* mp = f32_out(mo, "m");
        float* vp = f32_out(v, "v");
        auto k1 = p.buf; auto k2 = g.buf; auto k3 = mo.buf; auto k4 = v.buf;
        const i64 n = p.size();
        run_released("adam_update", [&] {
            return nn::adam_update(pp, gp, mp, vp, n, static_cast<float>(lr), static_cast<float>(beta1),
                                   static_cast<float>(beta2), static_cast<float>(eps),
                                   static_cast<float>(weight_decay), static_cast<float>(bc1),
                                   static_cast<float>(bc2), stream());
        });
    }, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
       py::arg("eps"), py::arg("weight_decay"), py::arg("bc1"), py::arg("bc2"),
       "Adam step in place (PyTorch's formulation; bc = 1 - beta**step).");

    // A whole optimizer step in one launch per kMaxTensors tensors: see nn_ops.h.
    m.def("optimizer_update", [](const std::string& kind, py::list params, py::list grads, py::object state1,
                                 py::object state2, std::vector<double> hyper, py::object hyper_dev) {
        const bool adam = kind == "adam";
        if (!adam && kind != "sgd") throw py::value_error("kind must be 'sgd' or 'adam', got '" + kind + "'");
        const std::size_t nt = params.size();
        if (grads.size() != nt) throw py::value_error("params and grads must be lists of the same length");
        if (hyper.size() != (adam ? 6u : 4u))
            throw py::value_error(std::string("hyper must hold ") + (adam ? "6" : "4") + " numbers for " + kind);
        auto state_list = [&](const py::object& s, const char* what, bool needed) -> py::list {
            if (s.is_none()) {
                if (needed) throw py::value_error(std::string(what) + " is needed");
                return py::list();
            }
            py::list l = s.cast<py::list>();
            if (l.size() != nt) throw py::value_error(std::string(what) + " must have one array per parameter");
            return l;
        };
        const bool momentum = !adam && hyper[1] != 0.0;
        py::list s1 = state_list(state1, adam ? "m" : "momentum buffers", adam || momentum);
        py::list s2 = state_list(state2, "v", adam);
        nn::OptHyper h;
        for (std::size_t i = 0; i < hyper.size(); ++i) h.v[i] = static_cast<float>(hyper[i]);
        const float* hd = nullptr;
        std::vector<std::shared_ptr<Buffer>> keep;
        if (!hyper_dev.is_none()) {
            auto& hdev = hyper_dev.cast<DeviceArray&>();
            if (hdev.size() != static_cast<py::ssize_t>(hyper.size()))
                throw py::value_error("hyper_dev must hold as many float32s as hyper");
            hd = f32_in(hdev, "hyper_dev");
            keep.push_back(hdev.buf);
        }
        std::vector<nn::TensorList> lists;
        for (std::size_t i = 0; i < nt; ++i) {
            if (i % nn::kMaxTensors == 0) lists.emplace_back();
            nn::TensorList& l = lists.back();
            auto& p = params[i].cast<DeviceArray&>();
            const auto& g = grads[i].cast<DeviceArray&>();
            same_size(p, g, "a parameter", "its gradient");
            if (p.buf == g.buf && p.nbytes() > 0) throw py::value_error("a gradient shares memory with its parameter");
            const int k = l.count++;
            l.p[k] = f32_out(p, "a parameter");
            l.g[k] = f32_in(g, "a gradient");
            l.n[k] = p.size();
            l.s1[k] = nullptr;
            l.s2[k] = nullptr;
            keep.push_back(p.buf);
            keep.push_back(g.buf);
            if (s1.size() > 0) {
                auto& s = s1[i].cast<DeviceArray&>();
                same_size(p, s, "a parameter", "its state");
                l.s1[k] = f32_out(s, "a state array");
                keep.push_back(s.buf);
            }
            if (s2.size() > 0) {
                auto& s = s2[i].cast<DeviceArray&>();
                same_size(p, s, "a parameter", "its state");
                l.s2[k] = f32_out(s, "a state array");
                keep.push_back(s.buf);
            }
        }
        run_released(kind + "_update_multi", [&] {
            for (const auto& l : lists) {
                const cudaError_t e = adam ? nn::adam_update_multi(l, hd, h, stream())
                                           : nn::sgd_update_multi(l, hd, h, stream());
                if (e != cudaSuccess) return e;
            }
            return cudaSuccess;
        });
    }, py::arg("kind"), py::arg("params"), py::arg("grads"), py::arg("state1"), py::arg("state2"),
       py::arg("hyper"), py::arg("hyper_dev") = py::none(),
       "One launch updates many parameters: kind 'sgd' (hyper = lr, momentum, weight_decay, nesterov; state1 = "
       "momentum buffers or None) or 'adam' (hyper = lr/bc1, beta1, beta2, eps, weight_decay, 1/sqrt(bc2); "
       "state1 = m, state2 = v). With hyper_dev (a float32 DeviceArray), the kernel reads the hyperparameters "
       "from it instead (for CUDA graphs); hyper then only gives their number.");

    m.def("fit_metrics", [](const DeviceArray& loss_out, const DeviceArray& out, py::object labels,
                            py::object targets, DeviceArray& acc, double weight) {
        if (!loss_out.is("<f8") || (loss_out.size() != 1 && loss_out.size() != 2))
            throw py::value_error("loss_out must be the float64 DeviceArray a loss returned (1 or 2 numbers)");
        if (!acc.is("<f8") || acc.size() != 3) throw py::value_error("acc must be a float64 DeviceArray of 3");
        auto [rows, cols] = rows_cols(out, "out");
        const float* op = f32_in(out, "out");
        const std::int64_t* lp = nullptr;
        const float* tp = nullptr;
        std::vector<std::shared_ptr<Buffer>> keep{loss_out.buf, out.buf, acc.buf};
        if (!labels.is_none()) {
            const auto& l = labels.cast<DeviceArray&>();
            labels_for(l, rows);
            lp = static_cast<const std::int64_t*>(l.data("labels"));
            keep.push_back(l.buf);
        } else if (!targets.is_none()) {
            const auto& tg = targets.cast<DeviceArray&>();
            same_size(out, tg, "out", "targets");
            tp = f32_in(tg, "targets");
            keep.push_back(tg.buf);
        }
        const auto* lo = static_cast<const double*>(loss_out.data("loss_out"));
        auto* ap = static_cast<double*>(acc.data("acc"));
        const int len = static_cast<int>(loss_out.size());
        run_released("fit_metrics",
                     [&] { return nn::fit_metrics(lo, len, weight, op, lp, tp, rows, cols, ap, stream()); });
    }, py::arg("loss_out"), py::arg("out"), py::arg("labels") = py::none(), py::arg("targets") = py::none(),
       py::arg("acc"), py::arg("weight") = 1.0,
       "acc += [weight * loss_out[0], loss_out[1] (bad labels), rows classified right] on the GPU "
       "(see nn_ops.h).");
}

}  // namespace cudabind
}  // namespace whygpu
