// DLPack: zero-copy exchange of device arrays with PyTorch, CuPy and JAX (__dlpack__, from_dlpack_capsule).
//
// The DLPack ABI (dlpack.h, v0.8 "dltensor" capsules), declared here so that
// the build needs no extra header.  A DeviceArray exports itself (__dlpack__)
// as a capsule holding a DLManagedTensor whose manager keeps the memory alive;
// from_dlpack wraps another library's CUDA tensor without a copy, and gives it
// back (its deleter) when the last DeviceArray using it goes.
#include "binding.h"

#include <cstdint>

namespace whygpu {
namespace cudabind {

struct DLDevice {
    std::int32_t device_type;  // kDLCUDA = 2
    std::int32_t device_id;
};
struct DLDataType {
    std::uint8_t code;  // kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBool 6
    std::uint8_t bits;
    std::uint16_t lanes;
};
struct DLTensor {
    void* data;
    DLDevice device;
    std::int32_t ndim;
    DLDataType dtype;
    std::int64_t* shape;
    std::int64_t* strides;  // in elements; null: C-contiguous
    std::uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor* self);
};

void release_foreign(DLManagedTensor* t) {
    if (t == nullptr || t->deleter == nullptr) return;
    if (Py_IsInitialized()) {
        py::gil_scoped_acquire gil;  // the producer's deleter may be Python-side (CuPy)
        t->deleter(t);
    }
}

int current_device() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) cudaGetLastError();
    return dev;
}

namespace {

struct ExportCtx {  // what an exported DLManagedTensor keeps alive
    DeviceArray array;
    std::vector<std::int64_t> shape;
    DLManagedTensor managed{};
};

DLDataType dl_dtype(const DeviceArray& x) {
    const char kind = x.typestr.size() > 1 ? x.typestr[1] : '?';
    DLDataType d{0, static_cast<std::uint8_t>(8 * x.itemsize), 1};
    d.code = kind == 'f' ? 2 : kind == 'i' ? 0 : kind == 'u' ? 1 : kind == 'b' ? 6 : 255;
    return d;
}

std::string typestr_of(const DLDataType& d) {
    if (d.lanes != 1) throw py::type_error("from_dlpack: vector dtypes (lanes > 1) are not supported");
    const int bytes = d.bits / 8;
    if (d.bits % 8 != 0 || bytes == 0) throw py::type_error("from_dlpack: unsupported dtype bit width");
    switch (d.code) {
        case 2: if (bytes == 2 || bytes == 4 || bytes == 8) return "<f" + std::to_string(bytes); break;
        case 0: if (bytes <= 8) return (bytes == 1 ? "|i" : "<i") + std::to_string(bytes); break;
        case 1: if (bytes <= 8) return (bytes == 1 ? "|u" : "<u") + std::to_string(bytes); break;
        case 6: if (bytes == 1) return "|b1"; break;
        default: break;
    }
    throw py::type_error("from_dlpack: dtype (code " + std::to_string(d.code) + ", " + std::to_string(d.bits) +
                         " bits) is not one a DeviceArray holds (bfloat16 and complex are not)");
}

}  // namespace

// x.__dlpack__(stream=None): the consumer will use the data on `stream`
// (the protocol's integers: 1 = the legacy default stream, -1 = no
// synchronisation wanted).  whygpu's work is on the legacy stream, so for
// any other stream the GPU is waited for first.
py::capsule to_dlpack(const DeviceArray& x, const py::object& stream) {
    x.data("the array");
    if (!stream.is_none()) {
        const long long s = stream.cast<long long>();
        if (s != 1 && s != -1) wait_for_gpu("__dlpack__ (waiting for the GPU)");
    } else {
        wait_for_gpu("__dlpack__ (waiting for the GPU)");
    }
    auto* ctx = new ExportCtx{x, std::vector<std::int64_t>(x.shape.begin(), x.shape.end()), {}};
    DLTensor& t = ctx->managed.dl_tensor;
    t.data = x.buf->ptr;
    t.device = {kDLCUDA, current_device()};
    t.ndim = static_cast<std::int32_t>(x.shape.size());
    t.dtype = dl_dtype(x);
    t.shape = ctx->shape.data();
    t.strides = nullptr;  // C-contiguous
    t.byte_offset = 0;
    ctx->managed.manager_ctx = ctx;
    ctx->managed.deleter = [](DLManagedTensor* self) { delete static_cast<ExportCtx*>(self->manager_ctx); };
    // A capsule nobody consumed ("dltensor" still its name) frees its tensor; a consumer renames it.
    return py::capsule(&ctx->managed, "dltensor", [](PyObject* cap) {
        if (PyCapsule_IsValid(cap, "dltensor")) {
            auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
            if (m != nullptr && m->deleter != nullptr) m->deleter(m);
        } else {
            PyErr_Clear();
        }
    });
}

namespace {

// A DeviceArray over another library's CUDA tensor (no copy).
DeviceArray from_dlpack_capsule(const py::capsule& cap) {
    if (!PyCapsule_IsValid(cap.ptr(), "dltensor"))
        throw py::value_error("from_dlpack: not an unconsumed DLPack capsule (each capsule can be used once)");
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    const DLTensor& t = m->dl_tensor;
    if (t.device.device_type != kDLCUDA)
        throw py::type_error("from_dlpack: the tensor is not in CUDA device memory (DLPack device type " +
                             std::to_string(t.device.device_type) + "); for host arrays use whygpu.cuda.to_device");
    if (t.device.device_id != current_device())
        throw py::value_error("from_dlpack: the tensor is on GPU " + std::to_string(t.device.device_id) +
                              ", whygpu uses GPU " + std::to_string(current_device()));
    DeviceArray x;
    x.typestr = typestr_of(t.dtype);
    x.itemsize = t.dtype.bits / 8;
    for (int d = 0; d < t.ndim; ++d) {
        if (t.shape[d] < 0) throw py::value_error("from_dlpack: negative dimension");
        x.shape.push_back(static_cast<py::ssize_t>(t.shape[d]));
    }
    if (t.strides != nullptr) {  // only C order: a DeviceArray is dense
        std::int64_t expect = 1;
        for (int d = t.ndim - 1; d >= 0; --d) {
            if (t.shape[d] != 1 && t.strides[d] != expect)
                throw py::value_error("from_dlpack: only C-contiguous tensors can be shared (a DeviceArray is "
                                      "dense, row-major); make it contiguous first, e.g. x.contiguous()");
            expect *= t.shape[d];
        }
    }
    // From here the capsule is consumed: the DeviceArray's Buffer owns the tensor and gives it back.
    if (PyCapsule_SetName(cap.ptr(), "used_dltensor") != 0) throw py::error_already_set();
    void* ptr = static_cast<char*>(t.data) + t.byte_offset;
    x.buf = std::make_shared<Buffer>(ptr, x.nbytes(), m);
    return x;
}

}  // namespace

void bind_dlpack(py::module_& m) {
    m.def("from_dlpack_capsule", &from_dlpack_capsule, py::arg("capsule"),
          "A DeviceArray over the CUDA tensor in a DLPack capsule (no copy; the capsule is consumed).");
}

}  // namespace cudabind
}  // namespace whygpu
