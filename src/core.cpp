// _core: the pybind11 binding of the C++ ladder (csrc/).  Argument checking
// and nothing else: no arithmetic lives here.
//
// The public, friendly checks (clear messages about dtypes, shapes, `out`)
// are in python/whygpu/_api.py; this layer re-checks everything that could
// make C++ touch memory it should not, so that calling whygpu._core directly
// with bad arguments raises instead of crashing the interpreter.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "gemm.h"
#include "packed.h"

namespace py = pybind11;
using whygpu::GemmArgs;

namespace {

// Ids shared with python/whygpu/_registry.py (the ladder's rung order).
enum KernelId : int { kNaive = 3, kReordered = 4, kBlocked = 5, kPacked = 6, kOpenMP = 7 };

// Ctrl-C while a kernel runs without the GIL (gemm.h, Interrupt): take the
// GIL for a moment and run Python's signal handlers; a KeyboardInterrupt (or
// whatever a handler raised) is then pending, and the kernel stops.
bool poll_python_signals(void*) {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
}

// Signals reach Python's handlers only in the main thread: elsewhere there is nothing to poll.
// (The interpreter's main thread is the one that imported this module, in practice.)
unsigned long g_main_thread = 0;
bool main_thread() { return PyThread_get_thread_ident() == g_main_thread; }

std::int64_t elem_stride(const py::array& x, int axis, const char* what) {
    const auto s = x.strides(axis);
    if (s % static_cast<py::ssize_t>(x.itemsize()) != 0)
        throw py::value_error(std::string(what) + " has a stride that is not a multiple of its item size");
    return static_cast<std::int64_t>(s / static_cast<py::ssize_t>(x.itemsize()));
}

template <typename T>
void run(int kernel, const py::array& a, const py::array& b, py::array& c, double alpha,
         double beta, int threads) {
    GemmArgs<T> g;
    g.m = a.shape(0);
    g.k = a.shape(1);
    g.n = b.shape(1);
    g.alpha = static_cast<T>(alpha);
    g.beta = static_cast<T>(beta);
    g.a = static_cast<const T*>(a.data());
    g.rs_a = elem_stride(a, 0, "a");
    g.cs_a = elem_stride(a, 1, "a");
    g.b = static_cast<const T*>(b.data());
    g.rs_b = elem_stride(b, 0, "b");
    g.cs_b = elem_stride(b, 1, "b");
    g.c = static_cast<T*>(c.mutable_data());
    g.rs_c = elem_stride(c, 0, "c");
    g.cs_c = elem_stride(c, 1, "c");

    const bool row_major_needed = (kernel == kReordered || kernel == kBlocked);
    // Empty operands are never read (NumPy gives them zero strides), so only
    // check the layouts the kernel will really walk.
    const bool reads_ab = g.m > 0 && g.n > 0 && g.k > 0, writes_c = g.m > 0 && g.n > 0;
    if (row_major_needed && ((reads_ab && g.k > 1 && g.cs_a != 1) || (reads_ab && g.n > 1 && g.cs_b != 1) ||
                             (writes_c && g.n > 1 && g.cs_c != 1)))
        throw py::value_error("the reordered and blocked kernels need row-contiguous a, b and c");
    if (row_major_needed) { g.cs_a = 1; g.cs_b = 1; g.cs_c = 1; }  // size-1 axes: any stride is fine

    whygpu::Interrupt irq;
    if (g.m > 0 && g.n > 0 && g.k > 0 && main_thread()) {
        irq.poll = &poll_python_signals;
        g.interrupt = &irq;
    }
    {
        py::gil_scoped_release release;  // from here on, no Python objects are touched
        switch (kernel) {
            case kNaive: whygpu::gemm_naive(g); break;
            case kReordered: whygpu::gemm_reordered(g); break;
            case kBlocked: whygpu::gemm_blocked(g); break;
            case kPacked: whygpu::gemm_packed(g); break;
            case kOpenMP: whygpu::gemm_openmp(g, threads); break;
            default: break;  // checked before the GIL was released
        }
    }
    if (irq.stop.load()) throw py::error_already_set();  // the KeyboardInterrupt poll_python_signals left pending
}

void gemm(int kernel, const py::array& a, const py::array& b, py::array& c, double alpha,
          double beta, int threads) {
    if (kernel < kNaive || kernel > kOpenMP) throw py::value_error("unknown kernel id " + std::to_string(kernel));
    if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
    if (a.ndim() != 2 || b.ndim() != 2 || c.ndim() != 2) throw py::value_error("a, b and c must be 2-D");
    if (a.shape(1) != b.shape(0) || c.shape(0) != a.shape(0) || c.shape(1) != b.shape(1))
        throw py::value_error("shapes do not match: need a (m,k), b (k,n), c (m,n)");
    if (!c.writeable()) throw py::value_error("c is read-only");
    const auto f32 = py::dtype::of<float>(), f64 = py::dtype::of<double>();
    const bool is32 = a.dtype().is(f32) && b.dtype().is(f32) && c.dtype().is(f32);
    const bool is64 = a.dtype().is(f64) && b.dtype().is(f64) && c.dtype().is(f64);
    if (!is32 && !is64) throw py::type_error("a, b and c must all be float32 or all float64");
    for (const py::array* x : std::initializer_list<const py::array*>{&a, &b, &c})
        if (reinterpret_cast<std::uintptr_t>(x->data()) % static_cast<std::uintptr_t>(x->itemsize()) != 0)
            throw py::value_error("arrays must be aligned to their item size");
    if (is32) run<float>(kernel, a, b, c, alpha, beta, threads);
    else run<double>(kernel, a, b, c, alpha, beta, threads);
}

// The fast path of whygpu.matmul for the everyday case (two aligned 2-D
// ndarrays of one float dtype, a fresh output).  Returns None for anything
// else, and Python's full checks then produce the precise error message.
// Saves a few microseconds per call, which matters for a batch of 32.
template <typename T>
py::object matmul_fast_t(int kernel, const py::array& a, const py::array& b, int threads) {
    const auto m = a.shape(0), k = a.shape(1), n = b.shape(1);
    py::array_t<T> c({m, n});
    if (m == 0 || n == 0) return std::move(c);
    if (k == 0) {
        std::fill(c.mutable_data(), c.mutable_data() + m * n, T(0));
        return std::move(c);
    }
    py::array cc = c;
    run<T>(kernel, a, b, cc, 1.0, 0.0, threads);
    return std::move(c);
}

py::object matmul_fast(int kernel, const py::object& ao, const py::object& bo, int threads) {
    if (!(kernel == kNaive || kernel == kPacked || kernel == kOpenMP) || threads < 1) return py::none();
    if (!py::isinstance<py::array>(ao) || !py::isinstance<py::array>(bo)) return py::none();
    const auto a = py::reinterpret_borrow<py::array>(ao);
    const auto b = py::reinterpret_borrow<py::array>(bo);
    if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(0)) return py::none();
    constexpr int aligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    if (!(py::detail::array_proxy(a.ptr())->flags & aligned) ||
        !(py::detail::array_proxy(b.ptr())->flags & aligned))
        return py::none();
    const auto f32 = py::dtype::of<float>(), f64 = py::dtype::of<double>();
    if (a.dtype().is(f32) && b.dtype().is(f32)) return matmul_fast_t<float>(kernel, a, b, threads);
    if (a.dtype().is(f64) && b.dtype().is(f64)) return matmul_fast_t<double>(kernel, a, b, threads);
    return py::none();
}

whygpu::Arch parse_arch(const std::string& name) {
    for (auto a : {whygpu::Arch::portable, whygpu::Arch::avx2, whygpu::Arch::avx512})
        if (name == whygpu::arch_name(a)) return a;
    throw py::value_error("unknown instruction set '" + name + "'; expected portable, avx2 or avx512");
}

template <typename T>
py::dict blocking_dict(whygpu::Arch a) {
    const auto& bk = whygpu::blocking_for<T>(a);
    py::dict d;
    d["micro_kernel"] = bk.name;
    d["mr"] = bk.mr;
    d["nr"] = bk.nr;
    d["kc"] = bk.kc;
    d["mc"] = bk.mc;
    d["nc"] = bk.nc;
    d["source"] = bk.source;       // "model" (from the caches) or "WHYGPU_BLOCKING"
    d["elem_bytes"] = static_cast<int>(sizeof(T));
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    m.doc() = "whygpu's C++ kernel ladder (rungs 3-7). Use the whygpu package, not this module.";
    m.def("gemm", &gemm, py::arg("kernel"), py::arg("a"), py::arg("b"), py::arg("c"),
          py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("threads") = 1,
          "c = alpha * a @ b + beta * c on C++ rung `kernel` (3..7). No conversions.");
    m.def("matmul_fast", &matmul_fast, py::arg("kernel"), py::arg("a"), py::arg("b"),
          py::arg("threads"), "a @ b for plain aligned float arrays, else None (see _api.py).");
    m.def("openmp_available", &whygpu::openmp_available);
    m.def("arch", [] { return std::string(whygpu::arch_name(whygpu::current_arch())); },
          "The instruction set the packed kernels use now.");
    m.def("best_arch", [] { return std::string(whygpu::arch_name(whygpu::best_arch())); });
    m.def("set_arch", [](const std::string& name) { whygpu::set_arch(parse_arch(name)); });
    m.def("supported_archs", [] {
        py::list out;
        for (auto a : {whygpu::Arch::portable, whygpu::Arch::avx2, whygpu::Arch::avx512})
            if (whygpu::arch_supported(a)) out.append(whygpu::arch_name(a));
        return out;
    });
    m.def("arch_env_warning", [] { return std::string(whygpu::arch_env_warning()); });
    m.def("blocking_env_warning", [] { return std::string(whygpu::blocking_env_warning()); });
    m.def("cache_model", [] {
        // The caches the block sizes were derived from (06_blocking.cpp).
        const auto& cm = whygpu::cache_model();
        py::dict out;
        const std::pair<const char*, const whygpu::CacheLevel*> levels[] = {
            {"L1d", &cm.l1}, {"L2", &cm.l2}, {"L3", &cm.l3}};
        for (const auto& lv : levels) {
            py::dict c;
            c["bytes"] = lv.second->bytes;
            c["ways"] = lv.second->ways;
            c["sets"] = lv.second->sets;
            c["line"] = lv.second->line;
            out[lv.first] = c;
        }
        out["source"] = cm.source;
        return out;
    });
    m.def("blocking", [](const std::string& dtype, const std::string& arch) {
        const auto a = arch.empty() ? whygpu::current_arch() : parse_arch(arch);
        if (dtype == "float32") return blocking_dict<float>(a);
        if (dtype == "float64") return blocking_dict<double>(a);
        throw py::value_error("dtype must be 'float32' or 'float64'");
    }, py::arg("dtype") = "float32", py::arg("arch") = "");
}
