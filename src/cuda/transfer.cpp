// Host <-> device copies: pinned staging buffers, DeviceArray transfers, pinned host arrays and the Uploader.
//
// The GPU's copy engine (DMA) reads and writes only page-locked ("pinned")
// host memory.  Given an ordinary, pageable pointer, cudaMemcpy first copies
// through a small pinned buffer of the driver's, piece by piece, and waits at
// each: slow.  So pageable data are staged here through pinned buffers of our
// own, in chunks, two at a time: while the copy engine moves one chunk, the
// CPU fills (or empties) the other.  Memory that is already pinned
// (pinned_empty, or anything cudaMallocHost'd or registered) goes straight to
// the copy engine.  The buffers are per thread: several Python threads may
// copy at once, and nothing here is global.
#include "binding.h"

#include <algorithm>
#include <cstring>

namespace whygpu {
namespace cudabind {

namespace {

struct Staging {
    void* buf[2] = {nullptr, nullptr};
    cudaEvent_t done[2] = {nullptr, nullptr};  // the copy that last used buf[i] has finished
    bool failed = false;                       // pinned memory was refused: use plain cudaMemcpy

    bool ready() {
        if (buf[0] != nullptr) return true;
        if (failed) return false;
        bool ok = true;
        for (int i = 0; i < 2 && ok; ++i)
            ok = cudaMallocHost(&buf[i], kStageChunk) == cudaSuccess &&
                 cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming) == cudaSuccess;
        if (!ok) {
            cudaGetLastError();
            release();
            failed = true;
        }
        return ok;
    }
    void release() {
        for (int i = 0; i < 2; ++i) {
            if (done[i] != nullptr) cudaEventDestroy(done[i]);
            if (buf[i] != nullptr) cudaFreeHost(buf[i]);
            done[i] = nullptr;
            buf[i] = nullptr;
        }
        cudaGetLastError();  // errors are ignored: at exit the runtime may be gone
    }
    ~Staging() { release(); }
};

Staging& staging() {
    thread_local Staging s;
    return s;
}

bool pinned_pointer(const void* p) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeHost;
}

}  // namespace

cudaError_t copy_h2d(void* dst, const void* src, std::size_t n) {
    if (n == 0) return cudaSuccess;
    if (pinned_pointer(src)) {
        WHYGPU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, 0));
        return cudaStreamSynchronize(0);
    }
    Staging& s = staging();
    if (!s.ready()) {
        WHYGPU_TRY(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
        return cudaStreamSynchronize(0);  // a pageable cudaMemcpy may return before its DMA ends
    }
    auto* d = static_cast<char*>(dst);
    const auto* h = static_cast<const char*>(src);
    int i = 0;
    for (std::size_t off = 0; off < n; off += kStageChunk, i ^= 1) {
        const std::size_t len = std::min(kStageChunk, n - off);
        WHYGPU_TRY(cudaEventSynchronize(s.done[i]));  // the copy engine is done reading buf[i]
        std::memcpy(s.buf[i], h + off, len);
        WHYGPU_TRY(cudaMemcpyAsync(d + off, s.buf[i], len, cudaMemcpyHostToDevice, 0));
        WHYGPU_TRY(cudaEventRecord(s.done[i], 0));
    }
    return cudaStreamSynchronize(0);
}

cudaError_t copy_d2h(void* dst, const void* src, std::size_t n) {
    if (n == 0) return cudaSuccess;
    if (pinned_pointer(dst)) {
        WHYGPU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, 0));
        return cudaStreamSynchronize(0);
    }
    Staging& s = staging();
    if (!s.ready()) return cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost);  // returns when the data are there
    auto* h = static_cast<char*>(dst);
    const auto* d = static_cast<const char*>(src);
    const std::size_t chunks = (n + kStageChunk - 1) / kStageChunk;
    auto issue = [&](std::size_t c) {
        const std::size_t off = c * kStageChunk, len = std::min(kStageChunk, n - off);
        WHYGPU_TRY(cudaMemcpyAsync(s.buf[c % 2], d + off, len, cudaMemcpyDeviceToHost, 0));
        return cudaEventRecord(s.done[c % 2], 0);
    };
    WHYGPU_TRY(issue(0));
    for (std::size_t c = 0; c < chunks; ++c) {
        if (c + 1 < chunks) WHYGPU_TRY(issue(c + 1));  // buf[(c+1) % 2] was emptied in the previous round
        WHYGPU_TRY(cudaEventSynchronize(s.done[c % 2]));
        const std::size_t off = c * kStageChunk;
        std::memcpy(h + off, s.buf[c % 2], std::min(kStageChunk, n - off));
    }
    return cudaSuccess;
}

namespace {

// A NumPy array in page-locked memory, freed (cudaFreeHost) with its last reference.
py::array pinned_empty(const py::object& shape, const py::object& dtype) {
    ensure_usable();
    const std::vector<py::ssize_t> dims = parse_shape(shape);
    const py::dtype dt = parse_dtype(dtype);
    std::size_t total = static_cast<std::size_t>(dt.itemsize());
    for (auto d : dims) {
        if (d != 0 && total > (std::size_t(1) << 62) / static_cast<std::size_t>(d))
            throw py::value_error("pinned array too large");
        total *= static_cast<std::size_t>(d);
    }
    void* p = nullptr;
    cudaError_t e;
    {
        py::gil_scoped_release release;
        e = cudaMallocHost(&p, std::max<std::size_t>(total, 1));
    }
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        throw CudaOutOfMemory("could not allocate " + mib(total) + " of pinned host memory");
    }
    check(e, "cudaMallocHost");
    py::capsule owner(p, [](void* q) {
        if (cudaFreeHost(q) != cudaSuccess) cudaGetLastError();
    });
    return py::array(dt, dims, {}, p, owner);
}

bool is_pinned(const py::array& a) {
    ensure_usable();
    return a.nbytes() > 0 && pinned_pointer(a.data());
}

void check_same(const DeviceArray& x, const py::array& host, const char* what) {
    if (host.dtype().attr("str").cast<std::string>() != x.typestr)
        throw py::type_error(std::string(what) + " has dtype " + py::str(host.dtype()).cast<std::string>() +
                             ", the DeviceArray " + py::str(x.dtype()).cast<std::string>() +
                             " (no conversions: use .astype())");
    std::vector<py::ssize_t> shape(host.shape(), host.shape() + host.ndim());
    if (shape != x.shape)
        throw py::value_error(std::string(what) + " has shape " + py::repr(py::cast(shape)).cast<std::string>() +
                              ", the DeviceArray " + py::repr(shape_tuple(x)).cast<std::string>());
}

}  // namespace

DeviceArray from_host(const py::object& obj) {
    no_capture("to_device (a copy from the host)");
    py::array host = py::array::ensure(obj, py::array::c_style);
    if (!host) throw py::type_error("to_device needs an array-like of numbers");
    const py::dtype dt = parse_dtype(host.dtype());
    std::vector<py::ssize_t> shape(host.shape(), host.shape() + host.ndim());
    DeviceArray x = make_array(std::move(shape), dt);
    if (x.nbytes() > 0) {
        void* dst = x.data();
        const void* src = host.data();
        const std::size_t n = x.nbytes();
        wait_for_gpu("to_device (waiting for the GPU)");  // copy_h2d waits for earlier work: let Ctrl-C end that
        run_released("to_device (copy host to device)", [&] { return copy_h2d(dst, src, n); });
    }
    return x;
}

py::array to_host(const DeviceArray& x, const py::object& out) {
    no_capture("to_host (a copy to the host)");
    void* src = x.data();
    py::array result;
    if (out.is_none()) {
        result = py::array(x.dtype(), x.shape);
    } else {
        if (!py::isinstance<py::array>(out)) throw py::type_error("out must be a numpy.ndarray");
        result = py::reinterpret_borrow<py::array>(out);
        check_same(x, result, "out");
        const int flags = py::detail::array_proxy(result.ptr())->flags;
        if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) || !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
            throw py::value_error("out must be C-contiguous and writeable");
    }
    const std::size_t n = x.nbytes();
    if (n > 0) {
        void* dst = result.mutable_data();
        auto keep = x.buf;  // the memory stays alive while the GIL is released
        wait_for_gpu("to_host (waiting for the GPU)");  // the work before the copy: Ctrl-C may end this wait
        run_released("to_host (copy device to host)", [&] { return copy_d2h(dst, src, n); });
    }
    return result;
}

void copy_from_host(DeviceArray& x, const py::object& obj) {
    no_capture("copy_from_host (a copy from the host)");
    void* dst = x.data();
    py::array host = py::array::ensure(obj, py::array::c_style);
    if (!host) throw py::type_error("copy_from_host needs an array-like of numbers");
    check_same(x, host, "the host array");
    const std::size_t n = x.nbytes();
    if (n == 0) return;
    const void* src = host.data();
    auto keep = x.buf;
    wait_for_gpu("copy_from_host (waiting for the GPU)");
    run_released("copy_from_host (copy host to device)", [&] { return copy_h2d(dst, src, n); });
}

namespace {

// Host -> device copies that do not wait for the GPU: the data are copied into
// a pinned buffer of the Uploader's own, and the copy engine takes them from
// there in stream order.  The next load waits only until that copy is done, so
// the host can prepare batch t+1 while the GPU still runs step t.  (A plain
// DeviceArray.copy_from_host waits for the copy, and so for everything before it.)
struct Uploader {
    DeviceArray target;
    std::size_t n = 0;
    void* host = nullptr;       // pinned, n bytes
    cudaEvent_t done = nullptr;  // the latest copy out of `host` has finished

    explicit Uploader(const DeviceArray& dst) : target(dst) {
        dst.data("the target");
        ensure_usable();
        n = dst.nbytes();
        if (n > 0 && (cudaMallocHost(&host, n) != cudaSuccess ||
                      cudaEventCreateWithFlags(&done, cudaEventDisableTiming) != cudaSuccess)) {
            cudaGetLastError();
            release();  // no pinned memory: load() falls back to a waiting copy
        }
    }
    Uploader(const Uploader&) = delete;
    Uploader& operator=(const Uploader&) = delete;
    void release() {
        if (done != nullptr) {
            cudaEventSynchronize(done);
            cudaEventDestroy(done);
        }
        if (host != nullptr) cudaFreeHost(host);
        done = nullptr;
        host = nullptr;
        cudaGetLastError();
    }
    ~Uploader() { release(); }

    void load(const py::object& obj) {
        no_capture("Uploader.load (a copy from the host)");
        void* dst = target.data("the target");
        py::array h = py::array::ensure(obj, py::array::c_style);
        if (!h) throw py::type_error("Uploader.load needs an array-like of numbers");
        check_same(target, h, "the host array");
        if (n == 0) return;
        const void* src = h.data();
        auto keep = target.buf;
        if (host == nullptr) {
            run_released("Uploader.load (copy host to device)", [&] { return copy_h2d(dst, src, n); });
            return;
        }
        run_released("Uploader.load (copy host to device)", [&] {
            WHYGPU_TRY(cudaEventSynchronize(done));  // the previous load has left `host`
            std::memcpy(host, src, n);
            WHYGPU_TRY(cudaMemcpyAsync(dst, host, n, cudaMemcpyHostToDevice, 0));
            return cudaEventRecord(done, 0);
        });
    }
};

}  // namespace

void bind_transfer(py::module_& m) {
    py::class_<Uploader>(m, "Uploader", "Asynchronous host -> device copies into one DeviceArray, through a "
                                        "pinned buffer of its own (see src/cuda/transfer.cpp).")
        .def(py::init<const DeviceArray&>(), py::arg("target"))
        .def("load", &Uploader::load, py::arg("array"),
             "Queue a copy of `array` (same shape and dtype) into the target; returns without waiting for the GPU.")
        .def_property_readonly("target", [](const Uploader& u) { return u.target; })
        .def_property_readonly("pinned", [](const Uploader& u) { return u.host != nullptr; });

    m.def("pinned_empty", &pinned_empty, py::arg("shape"), py::arg("dtype") = py::dtype("float32"),
          "An uninitialised NumPy array in page-locked (pinned) host memory: copies to and from the GPU "
          "go straight to the copy engine.");
    m.def("is_pinned", &is_pinned, py::arg("array"), "Whether a NumPy array's memory is page-locked.");
    m.def("staging_chunk_bytes", [] { return kStageChunk; },
          "Bytes per chunk of the pinned staging buffers that pageable transfers go through.");
}

}  // namespace cudabind
}  // namespace whygpu
