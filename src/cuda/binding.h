// What the files of the _cuda binding share: the error types and checks, the
// waits, the stream and capture state, device memory (Buffer, DeviceArray),
// and the bind_* functions that module.cpp calls in order.
//
// _cuda is the pybind11 binding of the CUDA ladder (csrc/cuda/) -- device
// memory (DeviceArray), the GEMM rungs on device arrays, the element-wise
// training operations, and the checks that turn CUDA's error codes into
// Python exceptions.  Argument checking and CUDA runtime calls only: no
// arithmetic lives here.  Use it through whygpu.cuda, not directly.  One file
// per concern (pybind11's advice for large modules):
//
//   module.cpp    PYBIND11_MODULE: calls the bind_* functions below, in order
//   errors.cpp    CUDA errors -> exceptions, "is there a GPU", interruptible waits
//   device.cpp    driver, device and build information; synchronize
//   graph.cpp     streams, graph capture, Graph (replay, and the memory it keeps)
//   memory.cpp    the allocator: Buffer, make_array
//   array.cpp     DeviceArray: shapes, device-side copies, its Python class
//   transfer.cpp  host <-> device copies through pinned staging; Uploader
//   dlpack.cpp    DLPack exchange with PyTorch, CuPy, JAX
//   gemm.cpp      the GEMM rungs on DeviceArrays
//   nn.cpp        the element-wise training operations (submodule nn)
//   probe.cpp     the GPU's roofs (submodule probe)
//
// Nothing here touches CUDA when the module is imported, so it imports on a
// machine without a driver or a GPU; the first call that needs the GPU asks
// the runtime, and explains in a CudaUnavailableError when it cannot.
//
// Exceptions: a CUDA error becomes whygpu.cuda.CudaError (a RuntimeError)
// carrying CUDA's own message; running out of device memory MemoryError; no
// usable GPU whygpu.cuda.CudaUnavailableError; bad arguments TypeError or
// ValueError before any CUDA call.
//
// Streams: everything runs on the legacy default stream, in issue order --
// except while a thread captures a CUDA graph (capture_begin/capture_end):
// then that thread's launches go to its capture stream and are recorded, to
// be replayed later (Graph.replay) on the default stream.
// Kernel launches return at once (asynchronous, like CUDA), so an error
// *inside* a kernel surfaces at the next synchronising call (to_host,
// synchronize); launch errors are raised by the call that launched.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace whygpu {
namespace cudabind {

namespace py = pybind11;

// ---- Errors and waits (errors.cpp) -------------------------------------------------

struct CudaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct CudaOutOfMemory : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct CudaUnavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string mib(std::size_t bytes);
// Throws for anything but cudaSuccess.  Safe without the GIL (only C++ exceptions).
void check(cudaError_t e, const std::string& what);
std::string version_string(int v);
// Why the GPU cannot be used, or "" when it can (asks the driver, creates no context).
std::string unavailable_reason();
void ensure_usable();

// Runs a CUDA call without the GIL and raises if it failed.
template <typename F>
void run_released(const std::string& what, F&& f) {
    cudaError_t e;
    {
        py::gil_scoped_release release;
        e = f();
    }
    check(e, what);
}

extern unsigned long g_main_thread;  // set at import: signals are delivered to the main thread only
// Waits until the default stream has finished everything issued so far.  Call
// without the GIL.  On Ctrl-C it returns at once with `interrupted` set.
cudaError_t wait_interruptibly(bool& interrupted);
// wait_interruptibly from Python-facing code (with the GIL): raises the KeyboardInterrupt, or a CUDA error.
void wait_for_gpu(const std::string& what);

#define WHYGPU_TRY(call)                          \
    do {                                          \
        const cudaError_t e_ = (call);            \
        if (e_ != cudaSuccess) return e_;         \
    } while (0)

// ---- Streams and graph capture (graph.cpp) -----------------------------------------

struct Buffer;
cudaStream_t stream();  // this thread's capture stream while it captures, else the legacy default stream
bool capturing_here();

struct CaptureKeep {
    std::vector<std::shared_ptr<Buffer>> made;   // allocated during the capture
    std::vector<std::pair<void*, bool>> dropped;  // released during the capture: (pointer, from the pool)
};
extern std::mutex g_capture_mu;
extern CaptureKeep* g_capture;  // the capture in progress: one at a time in the process

void no_capture(const std::string& what);
// Waits until the frees issued so far have happened (for the allocator's
// out-of-memory retry): device-wide, unless a capture is in progress.  No GIL.
cudaError_t settle_frees();

// ---- Device memory (memory.cpp, array.cpp) -----------------------------------------

struct DLManagedTensor;                    // DLPack (dlpack.cpp)
void release_foreign(DLManagedTensor* t);  // gives another library's tensor back

struct Buffer {
    void* ptr = nullptr;
    std::size_t nbytes = 0;
    bool pooled = false;
    DLManagedTensor* foreign = nullptr;  // memory another library owns (from_dlpack): given back, never freed here

    Buffer(void* p, std::size_t n, DLManagedTensor* owner) : ptr(p), nbytes(n), foreign(owner) {}
    explicit Buffer(std::size_t n);
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};

// A dense, C-contiguous array in device memory.  Views (reshape) share the
// Buffer; free() drops this array's reference, and the memory goes back when
// the last array using it lets go.
struct DeviceArray {
    std::shared_ptr<Buffer> buf;
    std::vector<py::ssize_t> shape;
    std::string typestr;  // NumPy's dtype.str, e.g. "<f4"
    py::ssize_t itemsize = 0;

    py::ssize_t size() const {
        py::ssize_t s = 1;
        for (auto d : shape) s *= d;
        return s;
    }
    std::size_t nbytes() const { return static_cast<std::size_t>(size()) * static_cast<std::size_t>(itemsize); }
    bool freed() const { return !buf; }
    void* data(const char* name = "array") const {
        if (!buf) throw py::value_error(std::string(name) + " has been freed (DeviceArray.free() was called)");
        return buf->ptr;
    }
    bool is(const char* ts) const { return typestr == ts; }
    py::dtype dtype() const { return py::dtype(typestr); }
};

DeviceArray make_array(std::vector<py::ssize_t> shape, const py::dtype& dt);  // memory.cpp
py::ssize_t as_dim(const py::handle& d, const py::object& whole);
std::vector<py::ssize_t> parse_shape(const py::object& shape);
py::dtype parse_dtype(const py::object& d);
py::tuple shape_tuple(const DeviceArray& x);
std::string describe(const DeviceArray& x);

// ---- Host <-> device copies (transfer.cpp) -----------------------------------------

constexpr std::size_t kStageChunk = std::size_t(4) << 20;  // 4 MiB: a chunk's DMA outlasts its memcpy setup

cudaError_t copy_h2d(void* dst, const void* src, std::size_t n);  // done when it returns; no GIL
cudaError_t copy_d2h(void* dst, const void* src, std::size_t n);  // after all work issued before it; no GIL
DeviceArray from_host(const py::object& obj);
py::array to_host(const DeviceArray& x, const py::object& out);
void copy_from_host(DeviceArray& x, const py::object& obj);

// ---- DLPack (dlpack.cpp) -----------------------------------------------------------

constexpr std::int32_t kDLCUDA = 2;
int current_device();
py::capsule to_dlpack(const DeviceArray& x, const py::object& stream);

// ---- GEMM (gemm.cpp): float32 operands, shared with nn.cpp --------------------------

const float* f32_in(const DeviceArray& x, const char* name);
float* f32_out(DeviceArray& x, const char* name);

// ---- Registration, in the order module.cpp calls them ------------------------------

void bind_errors(py::module_& m);     // errors.cpp: the exception translator
void bind_device(py::module_& m);     // device.cpp: driver, device and build information, synchronize
void bind_array(py::module_& m);      // array.cpp: the DeviceArray class
void bind_gemm(py::module_& m);       // gemm.cpp: gemm, default_precision, rung_unavailable
void bind_graph(py::module_& m);      // graph.cpp: the Graph class
void bind_dlpack(py::module_& m);     // dlpack.cpp: from_dlpack_capsule
void bind_copy_into(py::module_& m);  // array.cpp: copy_into
void bind_capture(py::module_& m);    // graph.cpp: capture_begin, capture_end, is_capturing
void bind_transfer(py::module_& m);   // transfer.cpp: Uploader, pinned memory
void bind_probe(py::module_& m);      // probe.cpp: the probe submodule
void bind_nn(py::module_& m);         // nn.cpp: the functions of the nn submodule

}  // namespace cudabind
}  // namespace whygpu
