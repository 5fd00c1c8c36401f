// DeviceArray: shapes and dtypes, device-side copies and fills, views, and its Python class.
#include "binding.h"

#include <cstdint>

namespace whygpu {
namespace cudabind {

py::ssize_t as_dim(const py::handle& d, const py::object& whole) {
    // ints and NumPy integers (anything with __index__), but not bools
    if (py::isinstance<py::bool_>(d) || !py::hasattr(d, "__index__"))
        throw py::type_error("shape must be an int or a sequence of ints, got " + py::repr(whole).cast<std::string>());
    return d.attr("__index__")().cast<py::ssize_t>();
}

std::vector<py::ssize_t> parse_shape(const py::object& shape) {
    std::vector<py::ssize_t> out;
    if (py::isinstance<py::sequence>(shape) && !py::isinstance<py::str>(shape) && !py::isinstance<py::bytes>(shape)) {
        for (auto item : shape.cast<py::sequence>()) out.push_back(as_dim(item, shape));
    } else {
        out.push_back(as_dim(shape, shape));
    }
    if (out.size() > 32) throw py::value_error("at most 32 dimensions");
    for (auto d : out)
        if (d < 0) throw py::value_error("negative dimensions are not allowed: " + py::repr(shape).cast<std::string>());
    return out;
}

py::dtype parse_dtype(const py::object& d) {
    py::dtype dt = py::dtype::from_args(d);
    const char kind = dt.kind();
    if (!(kind == 'f' || kind == 'i' || kind == 'u' || kind == 'b') || !dt.attr("isnative").cast<bool>())
        throw py::type_error("a DeviceArray holds booleans, integers or floats in native byte order, not " +
                             py::str(dt).cast<std::string>());
    return dt;
}

py::tuple shape_tuple(const DeviceArray& x) {
    py::tuple t(x.shape.size());
    for (std::size_t i = 0; i < x.shape.size(); ++i) t[i] = x.shape[i];
    return t;
}

std::string describe(const DeviceArray& x) {
    return "DeviceArray(shape=" + py::repr(shape_tuple(x)).cast<std::string>() +
           ", dtype=" + py::str(x.dtype()).cast<std::string>() + (x.freed() ? ", freed)" : ")");
}

namespace {

DeviceArray copy_array(const DeviceArray& x) {
    const void* src = x.data();
    DeviceArray y = make_array(x.shape, x.dtype());
    const std::size_t n = x.nbytes();
    if (n > 0) {
        void* dst = y.data();
        auto keep = x.buf;
        run_released("copy (cudaMemcpyAsync device to device)",
                     [&] { return cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream()); });
    }
    return y;
}

// dst[...] = src (same shape and dtype), device to device, asynchronous.
void copy_into(DeviceArray& dst, const DeviceArray& src) {
    if (dst.typestr != src.typestr || dst.shape != src.shape)
        throw py::value_error("copy_into: " + describe(src) + " does not fit " + describe(dst) +
                              " (same shape and dtype needed)");
    void* d = dst.data("dst");
    const void* s = src.data("src");
    const std::size_t n = dst.nbytes();
    if (n == 0 || d == s) return;
    auto k1 = dst.buf, k2 = src.buf;
    run_released("copy_into (cudaMemcpyAsync device to device)",
                 [&] { return cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToDevice, stream()); });
}

DeviceArray zeros(const py::object& shape, const py::object& dtype) {
    DeviceArray x = make_array(parse_shape(shape), parse_dtype(dtype));
    const std::size_t n = x.nbytes();
    if (n > 0) {
        void* p = x.data();
        run_released("zeros (cudaMemsetAsync)", [&] { return cudaMemsetAsync(p, 0, n, stream()); });
    }
    return x;
}

DeviceArray reshape(const DeviceArray& x, const py::args& args) {
    x.data();
    py::object spec = args.size() == 1 ? py::object(args[0]) : py::object(args);
    std::vector<py::ssize_t> shape;
    int infer = -1;
    if (!py::isinstance<py::sequence>(spec) || py::isinstance<py::str>(spec)) spec = py::make_tuple(spec);
    for (auto item : spec.cast<py::sequence>()) {
        const auto d = as_dim(item, spec);
        if (d == -1) {
            if (infer >= 0) throw py::value_error("can only specify one unknown dimension (-1)");
            infer = static_cast<int>(shape.size());
        } else if (d < 0) {
            throw py::value_error("negative dimensions are not allowed");
        }
        shape.push_back(d);
    }
    py::ssize_t known = 1;
    for (std::size_t i = 0; i < shape.size(); ++i)
        if (static_cast<int>(i) != infer) known *= shape[i];
    if (infer >= 0) {
        if (known == 0 || x.size() % known != 0)
            throw py::value_error("cannot reshape " + describe(x) + " to " + py::repr(spec).cast<std::string>());
        shape[infer] = x.size() / known;
        known = x.size();
    }
    if (known != x.size())
        throw py::value_error("cannot reshape " + describe(x) + " to " + py::repr(spec).cast<std::string>());
    DeviceArray y = x;  // shares the Buffer
    y.shape = std::move(shape);
    return y;
}

py::dict cuda_array_interface(const DeviceArray& x) {
    void* p = x.data();
    py::dict d;
    d["shape"] = shape_tuple(x);
    d["typestr"] = x.typestr;
    d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(p), false);
    d["strides"] = py::none();
    d["version"] = 3;
    d["stream"] = 1;  // the legacy default stream, which all of whygpu's work is issued on
    return d;
}

}  // namespace

void bind_array(py::module_& m) {
    py::class_<DeviceArray>(m, "DeviceArray",
        "A C-contiguous array in GPU memory: shape, dtype, and explicit transfers (to_device / to_host).\n"
        "DeviceArray(shape, dtype=float32) allocates it uninitialised.")
        .def(py::init([](const py::object& shape, const py::object& dtype) {
                 return make_array(parse_shape(shape), parse_dtype(dtype));
             }), py::arg("shape"), py::arg("dtype") = py::dtype("float32"))
        .def_static("from_host", &from_host, py::arg("array"), "Copy a host array to a new DeviceArray.")
        .def_static("zeros", &zeros, py::arg("shape"), py::arg("dtype") = py::dtype("float32"))
        .def("to_host", &to_host, py::arg("out") = py::none(),
             "Copy to a new NumPy array (or into `out`: C-contiguous, same shape and dtype). Waits for the GPU.")
        .def("copy_from_host", &copy_from_host, py::arg("array"),
             "Overwrite with a host array of the same shape and dtype (no reallocation).")
        .def("copy", &copy_array, "A new DeviceArray with the same contents (device to device).")
        .def("reshape", &reshape, "A view with another shape (shares the memory); one dimension may be -1.")
        .def("free", [](DeviceArray& x) { x.buf.reset(); },
             "Release this array's device memory now (views made by reshape keep it alive).")
        .def("__enter__", [](DeviceArray& x) -> DeviceArray& { return x; }, py::return_value_policy::reference)
        .def("__exit__", [](DeviceArray& x, const py::args&) { x.buf.reset(); })
        .def_property_readonly("shape", &shape_tuple)
        .def_property_readonly("dtype", &DeviceArray::dtype)
        .def_property_readonly("ndim", [](const DeviceArray& x) { return x.shape.size(); })
        .def_property_readonly("size", &DeviceArray::size)
        .def_property_readonly("itemsize", [](const DeviceArray& x) { return x.itemsize; })
        .def_property_readonly("nbytes", &DeviceArray::nbytes)
        .def_property_readonly("freed", &DeviceArray::freed)
        .def_property_readonly("ptr", [](const DeviceArray& x) { return reinterpret_cast<std::uintptr_t>(x.data()); },
                               "The device address (for interoperation).")
        .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
        .def("__dlpack__", [](const DeviceArray& x, const py::object& stream, const py::kwargs&) {
            return to_dlpack(x, stream);
        }, py::arg("stream") = py::none(),
           "A DLPack capsule of this array (zero-copy; the memory stays alive while a consumer uses it).")
        .def("__dlpack_device__", [](const DeviceArray&) { return py::make_tuple(kDLCUDA, current_device()); })
        .def("shares_memory", [](const DeviceArray& x, const DeviceArray& y) {
            return x.buf && x.buf == y.buf && x.nbytes() > 0;
        }, "Whether both arrays use the same device memory (views of one allocation).")
        .def("__array__", [](const DeviceArray&, const py::args&, const py::kwargs&) -> py::object {
            throw py::type_error("a DeviceArray lives in GPU memory; copies are explicit: call .to_host()");
        })
        .def("__len__", [](const DeviceArray& x) {
            if (x.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
            return x.shape[0];
        })
        .def("__repr__", &describe);
}

void bind_copy_into(py::module_& m) {
    m.def("copy_into", &copy_into, py::arg("dst"), py::arg("src"),
          "dst[...] = src: a device-to-device copy between DeviceArrays of one shape and dtype (asynchronous).");
}

}  // namespace cudabind
}  // namespace whygpu
