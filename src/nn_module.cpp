// _nn_core: the pybind11 binding of csrc/nn_ops.h, the element-wise work of
// whygpu.nn's compiled back ends.  Argument checking and nothing else: every
// array must already be an ndarray (no silent conversion to a temporary that
// an output would be written into), of one float dtype, C-contiguous,
// aligned, of the right shape, and writeable where written.  Anything else
// raises TypeError or ValueError instead of touching bad memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "nn_ops.h"

namespace py = pybind11;
namespace nn = whygpu::nn;
using nn::i64;

namespace {

enum class DT { f32, f64 };

DT float_dtype(const py::array& a, const char* name) {
    if (a.dtype().is(py::dtype::of<float>())) return DT::f32;
    if (a.dtype().is(py::dtype::of<double>())) return DT::f64;
    throw py::type_error(std::string(name) + " must be float32 or float64, got " +
                         std::string(py::str(a.dtype())));
}

// Contiguous, aligned, writeable if written: what every pointer below assumes.
void check_layout(const py::array& a, const char* name, bool written) {
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(a.itemsize()) != 0)
        throw py::value_error(std::string(name) + " must be aligned to its item size");
    if (written && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
}

// `a` has dtype dt and exactly the shape of `ref`.
void like(const py::array& a, const char* name, DT dt, const py::array& ref, bool written) {
    if (float_dtype(a, name) != dt) throw py::type_error(std::string(name) + " must have the same dtype as the other arrays");
    if (a.ndim() != ref.ndim()) throw py::value_error(std::string(name) + " has the wrong number of dimensions");
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.shape(d) != ref.shape(d)) throw py::value_error(std::string(name) + " has the wrong shape");
    check_layout(a, name, written);
}

void check_threads(int threads) {
    if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
}

void need_2d(const py::array& a, const char* name) {
    if (a.ndim() != 2) throw py::value_error(std::string(name) + " must be 2-D");
}

template <typename T> T* w(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <typename T> const T* r(const py::array& a) { return static_cast<const T*>(a.data()); }

// ---- Each binding: check, release the GIL, dispatch on dtype. -------------

void bias_add(py::array y, py::array b, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(y, "y");
    need_2d(y, "y");
    check_layout(y, "y", true);
    if (float_dtype(b, "b") != dt) throw py::type_error("b must have the dtype of y");
    if (b.ndim() != 1 || b.shape(0) != y.shape(1)) throw py::value_error("b must be 1-D with y.shape[1] elements");
    check_layout(b, "b", false);
    const i64 rows = y.shape(0), cols = y.shape(1);
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::bias_add(w<float>(y), r<float>(b), rows, cols, threads);
    else nn::bias_add(w<double>(y), r<double>(b), rows, cols, threads);
}

void bias_grad(py::array dy, py::array db, double beta, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(dy, "dy");
    need_2d(dy, "dy");
    check_layout(dy, "dy", false);
    if (float_dtype(db, "db") != dt) throw py::type_error("db must have the dtype of dy");
    if (db.ndim() != 1 || db.shape(0) != dy.shape(1)) throw py::value_error("db must be 1-D with dy.shape[1] elements");
    check_layout(db, "db", true);
    const i64 rows = dy.shape(0), cols = dy.shape(1);
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::bias_grad(r<float>(dy), w<float>(db), rows, cols, static_cast<float>(beta), threads);
    else nn::bias_grad(r<double>(dy), w<double>(db), rows, cols, beta, threads);
}

// y = f(x), same shape (in place allowed: element i reads only element i).
template <void (*F32)(const float*, float*, i64, int), void (*F64)(const double*, double*, i64, int)>
void unary(py::array x, py::array y, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(x, "x");
    check_layout(x, "x", false);
    like(y, "y", dt, x, true);
    const i64 n = x.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) F32(r<float>(x), w<float>(y), n, threads);
    else F64(r<double>(x), w<double>(y), n, threads);
}

// dx = f(dy, s), all the same shape.
template <void (*F32)(const float*, const float*, float*, i64, int),
          void (*F64)(const double*, const double*, double*, i64, int)>
void binary(py::array dy, py::array s, py::array dx, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(dy, "dy");
    check_layout(dy, "dy", false);
    like(s, "saved", dt, dy, false);
    like(dx, "dx", dt, dy, true);
    const i64 n = dy.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) F32(r<float>(dy), r<float>(s), w<float>(dx), n, threads);
    else F64(r<double>(dy), r<double>(s), w<double>(dx), n, threads);
}

void leaky_relu_fwd(py::array x, py::array y, double slope, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(x, "x");
    check_layout(x, "x", false);
    like(y, "y", dt, x, true);
    const i64 n = x.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::leaky_relu_fwd(r<float>(x), w<float>(y), n, static_cast<float>(slope), threads);
    else nn::leaky_relu_fwd(r<double>(x), w<double>(y), n, slope, threads);
}

void leaky_relu_bwd(py::array dy, py::array x, py::array dx, double slope, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(dy, "dy");
    check_layout(dy, "dy", false);
    like(x, "x", dt, dy, false);
    like(dx, "dx", dt, dy, true);
    const i64 n = dy.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::leaky_relu_bwd(r<float>(dy), r<float>(x), w<float>(dx), n, static_cast<float>(slope), threads);
    else nn::leaky_relu_bwd(r<double>(dy), r<double>(x), w<double>(dx), n, slope, threads);
}

void softmax_fwd(py::array x, py::array y, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(x, "x");
    need_2d(x, "x");
    check_layout(x, "x", false);
    like(y, "y", dt, x, true);
    const i64 rows = x.shape(0), cols = x.shape(1);
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::softmax_fwd(r<float>(x), w<float>(y), rows, cols, threads);
    else nn::softmax_fwd(r<double>(x), w<double>(y), rows, cols, threads);
}

void softmax_bwd(py::array dy, py::array y, py::array dx, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(dy, "dy");
    need_2d(dy, "dy");
    check_layout(dy, "dy", false);
    like(y, "y", dt, dy, false);
    like(dx, "dx", dt, dy, true);
    const i64 rows = dy.shape(0), cols = dy.shape(1);
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::softmax_bwd(r<float>(dy), r<float>(y), w<float>(dx), rows, cols, threads);
    else nn::softmax_bwd(r<double>(dy), r<double>(y), w<double>(dx), rows, cols, threads);
}

void check_labels(const py::array& labels, i64 rows) {
    if (!labels.dtype().is(py::dtype::of<std::int64_t>())) throw py::type_error("labels must be int64");
    if (labels.ndim() != 1 || labels.shape(0) != rows)
        throw py::value_error("labels must be 1-D with one entry per row");
    check_layout(labels, "labels", false);
}

double softmax_xent_fwd(py::array logits, py::array labels, py::array probs, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(logits, "logits");
    need_2d(logits, "logits");
    check_layout(logits, "logits", false);
    like(probs, "probs", dt, logits, true);
    const i64 rows = logits.shape(0), cols = logits.shape(1);
    check_labels(labels, rows);
    const auto* lab = r<std::int64_t>(labels);
    i64 bad = 0;
    double loss;
    {
        py::gil_scoped_release nogil;
        if (dt == DT::f32) loss = nn::softmax_xent_fwd(r<float>(logits), lab, w<float>(probs), rows, cols, threads, &bad);
        else loss = nn::softmax_xent_fwd(r<double>(logits), lab, w<double>(probs), rows, cols, threads, &bad);
    }
    if (bad != 0)
        throw py::value_error(std::to_string(bad) + " label(s) outside [0, " + std::to_string(cols) + ")");
    return loss;
}

void softmax_xent_bwd(py::array probs, py::array labels, py::array dx, double scale, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(probs, "probs");
    need_2d(probs, "probs");
    check_layout(probs, "probs", false);
    like(dx, "dx", dt, probs, true);
    const i64 rows = probs.shape(0), cols = probs.shape(1);
    check_labels(labels, rows);
    const auto* lab = r<std::int64_t>(labels);
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::softmax_xent_bwd(r<float>(probs), lab, w<float>(dx), rows, cols, static_cast<float>(scale), threads);
    else nn::softmax_xent_bwd(r<double>(probs), lab, w<double>(dx), rows, cols, scale, threads);
}

// Sum of a per-element loss of (y, t).
template <double (*F32)(const float*, const float*, i64, int), double (*F64)(const double*, const double*, i64, int)>
double loss_sum(py::array y, py::array t, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(y, "input");
    check_layout(y, "input", false);
    like(t, "target", dt, y, false);
    const i64 n = y.size();
    py::gil_scoped_release nogil;
    return dt == DT::f32 ? F32(r<float>(y), r<float>(t), n, threads) : F64(r<double>(y), r<double>(t), n, threads);
}

// dx = gradient of that loss, times scale.
template <void (*F32)(const float*, const float*, float*, i64, float, int),
          void (*F64)(const double*, const double*, double*, i64, double, int)>
void loss_grad(py::array y, py::array t, py::array dx, double scale, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(y, "input");
    check_layout(y, "input", false);
    like(t, "target", dt, y, false);
    like(dx, "dx", dt, y, true);
    const i64 n = y.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) F32(r<float>(y), r<float>(t), w<float>(dx), n, static_cast<float>(scale), threads);
    else F64(r<double>(y), r<double>(t), w<double>(dx), n, scale, threads);
}

void mask_scale(py::array x, py::array mask, py::array y, double scale, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(x, "x");
    check_layout(x, "x", false);
    like(y, "y", dt, x, true);
    if (mask.itemsize() != 1 || (mask.dtype().kind() != 'b' && mask.dtype().kind() != 'u'))
        throw py::type_error("mask must be bool or uint8");
    if (mask.size() != x.size() || mask.ndim() != x.ndim()) throw py::value_error("mask must have the shape of x");
    for (py::ssize_t d = 0; d < x.ndim(); ++d)
        if (mask.shape(d) != x.shape(d)) throw py::value_error("mask must have the shape of x");
    check_layout(mask, "mask", false);
    const auto* m = r<std::uint8_t>(mask);
    const i64 n = x.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::mask_scale(r<float>(x), m, w<float>(y), n, static_cast<float>(scale), threads);
    else nn::mask_scale(r<double>(x), m, w<double>(y), n, scale, threads);
}

void sgd_update(py::array p, py::array g, py::object buf_obj, double lr, double momentum, double weight_decay,
                bool nesterov, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(p, "param");
    check_layout(p, "param", true);
    like(g, "grad", dt, p, false);
    py::array buf;
    if (momentum != 0.0) {
        if (!py::isinstance<py::array>(buf_obj)) throw py::type_error("momentum != 0 needs a momentum buffer array");
        buf = py::reinterpret_borrow<py::array>(buf_obj);
        like(buf, "momentum buffer", dt, p, true);
    }
    const i64 n = p.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32)
        nn::sgd_update(w<float>(p), r<float>(g), momentum != 0.0 ? w<float>(buf) : nullptr, n,
                       static_cast<float>(lr), static_cast<float>(momentum), static_cast<float>(weight_decay),
                       nesterov, threads);
    else
        nn::sgd_update(w<double>(p), r<double>(g), momentum != 0.0 ? w<double>(buf) : nullptr, n, lr, momentum,
                       weight_decay, nesterov, threads);
}

void adam_update(py::array p, py::array g, py::array m, py::array v, double lr, double beta1, double beta2,
                 double eps, double weight_decay, double bc1, double bc2, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(p, "param");
    check_layout(p, "param", true);
    like(g, "grad", dt, p, false);
    like(m, "m", dt, p, true);
    like(v, "v", dt, p, true);
    if (!(bc1 > 0.0) || !(bc2 > 0.0)) throw py::value_error("bias corrections must be > 0");
    const i64 n = p.size();
    py::gil_scoped_release nogil;
    if (dt == DT::f32)
        nn::adam_update(w<float>(p), r<float>(g), w<float>(m), w<float>(v), n, static_cast<float>(lr),
                        static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps),
                        static_cast<float>(weight_decay), static_cast<float>(bc1), static_cast<float>(bc2), threads);
    else
        nn::adam_update(w<double>(p), r<double>(g), w<double>(m), w<double>(v), n, lr, beta1, beta2, eps,
                        weight_decay, bc1, bc2, threads);
}

void bias_relu(py::array y, py::object b_obj, bool relu, int threads) {
    check_threads(threads);
    const DT dt = float_dtype(y, "y");
    need_2d(y, "y");
    check_layout(y, "y", true);
    py::array b;
    if (!b_obj.is_none()) {
        if (!py::isinstance<py::array>(b_obj)) throw py::type_error("b must be an ndarray or None");
        b = py::reinterpret_borrow<py::array>(b_obj);
        if (float_dtype(b, "b") != dt) throw py::type_error("b must have the dtype of y");
        if (b.ndim() != 1 || b.shape(0) != y.shape(1)) throw py::value_error("b must be 1-D with y.shape[1] elements");
        check_layout(b, "b", false);
    }
    const i64 rows = y.shape(0), cols = y.shape(1);
    const bool has_b = !b_obj.is_none();
    py::gil_scoped_release nogil;
    if (dt == DT::f32) nn::bias_relu(w<float>(y), has_b ? r<float>(b) : nullptr, rows, cols, relu, threads);
    else nn::bias_relu(w<double>(y), has_b ? r<double>(b) : nullptr, rows, cols, relu, threads);
}

// kind "sgd": hyper = [lr, momentum, weight_decay, nesterov]; "adam": [lr/bc1, beta1, beta2, eps,
// weight_decay, 1/sqrt(bc2)] -- the layout of whygpu._cuda.nn.optimizer_update.
// An element of a list that must be an ndarray: no silent conversion to a temporary that would be updated.
py::array array_item(const py::list& l, std::size_t i, const char* what) {
    py::object o = l[i];
    if (!py::isinstance<py::array>(o)) throw py::type_error(std::string(what) + " must be an ndarray");
    return py::reinterpret_borrow<py::array>(o);
}

template <typename T>
void optimizer_update_t(bool adam, const py::list& params, const py::list& grads, const py::list& s1,
                        const py::list& s2, const std::vector<double>& h, int threads) {
    std::vector<nn::TensorRef<T>> refs;
    std::vector<py::array> keep;  // the arrays stay referenced while the GIL is released
    for (std::size_t i = 0; i < params.size(); ++i) {
        auto p = array_item(params, i, "a parameter");
        auto g = array_item(grads, i, "a gradient");
        if (float_dtype(p, "a parameter") != (std::is_same<T, float>::value ? DT::f32 : DT::f64))
            throw py::type_error("all parameters must have one dtype");
        check_layout(p, "a parameter", true);
        const DT dt = float_dtype(p, "a parameter");
        like(g, "a gradient", dt, p, false);
        if (p.ptr() == g.ptr() || p.data() == g.data()) throw py::value_error("a gradient shares memory with its parameter");
        nn::TensorRef<T> t{w<T>(p), r<T>(g), nullptr, nullptr, static_cast<i64>(p.size())};
        keep.push_back(p);
        keep.push_back(g);
        if (s1.size() > 0) {
            auto s = array_item(s1, i, "a state array");
            like(s, "a state array", dt, p, true);
            t.s1 = w<T>(s);
            keep.push_back(s);
        }
        if (s2.size() > 0) {
            auto s = array_item(s2, i, "a state array");
            like(s, "a state array", dt, p, true);
            t.s2 = w<T>(s);
            keep.push_back(s);
        }
        refs.push_back(t);
    }
    const T h0 = static_cast<T>(h[0]), h1 = static_cast<T>(h[1]), h2 = static_cast<T>(h[2]),
            h3 = static_cast<T>(h[3]);
    const int count = static_cast<int>(refs.size());
    if (adam) {
        const T h4 = static_cast<T>(h[4]), h5 = static_cast<T>(h[5]);
        py::gil_scoped_release nogil;
        nn::adam_update_multi(refs.data(), count, h0, h1, h2, h3, h4, h5, threads);
    } else {
        py::gil_scoped_release nogil;
        nn::sgd_update_multi(refs.data(), count, h0, h1, h2, h[3] != 0.0, threads);
    }
}

void optimizer_update(const std::string& kind, py::list params, py::list grads, py::object state1,
                      py::object state2, std::vector<double> hyper, int threads) {
    check_threads(threads);
    const bool adam = kind == "adam";
    if (!adam && kind != "sgd") throw py::value_error("kind must be 'sgd' or 'adam', got '" + kind + "'");
    if (grads.size() != params.size()) throw py::value_error("params and grads must be lists of the same length");
    if (hyper.size() != (adam ? 6u : 4u))
        throw py::value_error(std::string("hyper must hold ") + (adam ? "6" : "4") + " numbers for " + kind);
    auto state_list = [&](const py::object& s, const char* what, bool needed) -> py::list {
        if (s.is_none()) {
            if (needed) throw py::value_error(std::string(what) + " is needed");
            return py::list();
        }
        py::list l = s.cast<py::list>();
        if (l.size() != params.size()) throw py::value_error(std::string(what) + " must have one array per parameter");
        return l;
    };
    py::list s1 = state_list(state1, adam ? "m" : "momentum buffers", adam || hyper[1] != 0.0);
    py::list s2 = state_list(state2, "v", adam);
    if (params.size() == 0) return;
    const DT dt = float_dtype(array_item(params, 0, "a parameter"), "a parameter");
    if (dt == DT::f32) optimizer_update_t<float>(adam, params, grads, s1, s2, hyper, threads);
    else optimizer_update_t<double>(adam, params, grads, s1, s2, hyper, threads);
}

}  // namespace

PYBIND11_MODULE(_nn_core, m) {
    m.doc() = "whygpu.nn's compiled element-wise ops (csrc/nn_ops.h). Use whygpu.nn, not this module.";
    auto A = [](const char* name) { return py::arg(name).noconvert(); };
    m.def("bias_add", &bias_add, A("y"), A("b"), py::arg("threads"), "y += b (row broadcast), in place.");
    m.def("bias_grad", &bias_grad, A("dy"), A("db"), py::arg("beta"), py::arg("threads"),
          "db = beta * db + dy.sum(axis=0).");
    m.def("leaky_relu_fwd", &leaky_relu_fwd, A("x"), A("y"), py::arg("slope"), py::arg("threads"));
    m.def("leaky_relu_bwd", &leaky_relu_bwd, A("dy"), A("x"), A("dx"), py::arg("slope"), py::arg("threads"));
    m.def("sigmoid_fwd", &unary<nn::sigmoid_fwd<float>, nn::sigmoid_fwd<double>>, A("x"), A("y"), py::arg("threads"));
    m.def("sigmoid_bwd", &binary<nn::sigmoid_bwd<float>, nn::sigmoid_bwd<double>>, A("dy"), A("y"), A("dx"),
          py::arg("threads"));
    m.def("tanh_fwd", &unary<nn::tanh_fwd<float>, nn::tanh_fwd<double>>, A("x"), A("y"), py::arg("threads"));
    m.def("tanh_bwd", &binary<nn::tanh_bwd<float>, nn::tanh_bwd<double>>, A("dy"), A("y"), A("dx"),
          py::arg("threads"));
    m.def("softmax_fwd", &softmax_fwd, A("x"), A("y"), py::arg("threads"));
    m.def("softmax_bwd", &softmax_bwd, A("dy"), A("y"), A("dx"), py::arg("threads"));
    m.def("softmax_xent_fwd", &softmax_xent_fwd, A("logits"), A("labels"), A("probs"), py::arg("threads"),
          "Writes softmax(logits) into probs; returns the summed cross-entropy.");
    m.def("softmax_xent_bwd", &softmax_xent_bwd, A("probs"), A("labels"), A("dx"), py::arg("scale"),
          py::arg("threads"), "dx = scale * (probs - onehot(labels)).");
    m.def("mse_fwd", &loss_sum<nn::mse_fwd<float>, nn::mse_fwd<double>>, A("y"), A("t"), py::arg("threads"));
    m.def("mse_bwd", &loss_grad<nn::mse_bwd<float>, nn::mse_bwd<double>>, A("y"), A("t"), A("dx"),
          py::arg("scale"), py::arg("threads"));
    m.def("bce_logits_fwd", &loss_sum<nn::bce_logits_fwd<float>, nn::bce_logits_fwd<double>>, A("x"), A("t"),
          py::arg("threads"));
    m.def("bce_logits_bwd", &loss_grad<nn::bce_logits_bwd<float>, nn::bce_logits_bwd<double>>, A("x"), A("t"),
          A("dx"), py::arg("scale"), py::arg("threads"));
    m.def("mask_scale", &mask_scale, A("x"), A("mask"), A("y"), py::arg("scale"), py::arg("threads"));
    m.def("sgd_update", &sgd_update, A("p"), A("g"), py::arg("buf"), py::arg("lr"), py::arg("momentum"),
          py::arg("weight_decay"), py::arg("nesterov"), py::arg("threads"));
    m.def("bias_relu", &bias_relu, A("y"), py::arg("b"), py::arg("relu"), py::arg("threads"),
          "y += b (row broadcast; b may be None), then y = max(y, 0) when relu; in place, one pass.");
    m.def("optimizer_update", &optimizer_update, py::arg("kind"), py::arg("params"), py::arg("grads"),
          py::arg("state1"), py::arg("state2"), py::arg("hyper"), py::arg("threads"),
          "Every parameter's SGD or Adam step in one call (hyper as whygpu._cuda.nn.optimizer_update).");
    m.def("adam_update", &adam_update, A("p"), A("g"), A("m"), A("v"), py::arg("lr"), py::arg("beta1"),
          py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("bc1"), py::arg("bc2"),
          py::arg("threads"));
    m.attr("PARALLEL_MIN") = nn::kParallelMin;
}
