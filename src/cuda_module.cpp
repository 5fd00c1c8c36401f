// _cuda: the pybind11 binding of the CUDA ladder (csrc/cuda/) -- device
// memory (DeviceArray), the GEMM rungs on device arrays, the element-wise
// training operations, and the checks that turn CUDA's error codes into
// Python exceptions.  Argument checking and CUDA runtime calls only: no
// arithmetic lives here.  Use it through whygpu.cuda, not directly.
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
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gemm_cuda.h"
#include "nn_ops.h"
#include "probe.h"

namespace py = pybind11;

#ifndef WHYGPU_CUDA_ARCHITECTURES
#define WHYGPU_CUDA_ARCHITECTURES ""
#endif
#ifndef WHYGPU_CUDA_COMPILER_VERSION
#define WHYGPU_CUDA_COMPILER_VERSION ""
#endif

namespace {

// ---- Errors ------------------------------------------------------------------

struct CudaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct CudaOutOfMemory : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct CudaUnavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string cuda_message(cudaError_t e, const std::string& what) {
    return "CUDA error in " + what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
}

std::string mib(std::size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

// Throws for anything but cudaSuccess.  Safe without the GIL (only C++ exceptions).
void check(cudaError_t e, const std::string& what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();  // clear a non-sticky error, so the next call does not report it again
    if (e == cudaErrorMemoryAllocation) throw CudaOutOfMemory("CUDA out of memory in " + what);
    throw CudaError(cuda_message(e, what));
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Why the GPU cannot be used, or "" when it can.  Asks the driver (it does not
// create a context).  The compiled-architecture check is in whygpu/cuda.py.
std::string unavailable_reason() {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
        cudaGetLastError();
        return "no NVIDIA driver was found (libcuda.so.1 could not be loaded), so there is no GPU to run on";
    }
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        int runtime = 0;
        cudaRuntimeGetVersion(&runtime);
        return "the NVIDIA driver supports CUDA " + version_string(driver) + " but whygpu was built with CUDA " +
               version_string(runtime) + "; update the driver (or rebuild whygpu with an older CUDA toolkit)";
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
        cudaGetLastError();
        return "no CUDA GPU was found: the NVIDIA driver is installed but reports no device "
               "(is CUDA_VISIBLE_DEVICES empty?)";
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        return std::string("CUDA could not be initialised: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) +
               ")";
    }
    return "";
}

std::atomic<bool> g_usable{false};  // once the GPU was found usable, it stays so

void ensure_usable() {
    if (g_usable.load(std::memory_order_acquire)) return;
    const std::string why = unavailable_reason();
    if (!why.empty()) throw CudaUnavailable("CUDA is unavailable: " + why);
    g_usable.store(true, std::memory_order_release);
}

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

// ---- Waiting for the GPU, interruptibly ---------------------------------------------
// cudaStreamSynchronize blocks in the driver, where Ctrl-C cannot reach: a
// user who queued a minute of naive GEMMs would have to kill Python.  So the
// waits that may be long (synchronize, copies back to the host) poll an event
// instead -- spinning for the first millisecond, then sleeping 50 us between
// looks -- and, in the main thread, take the GIL every 20 ms to run Python's
// signal handlers.  The GPU work itself goes on; only the wait is given up.
unsigned long g_main_thread = 0;  // set at import: signals are delivered to the main thread only

// Waits until the default stream has finished everything issued so far.
// Call without the GIL.  On Ctrl-C it returns at once with `interrupted` set
// (a KeyboardInterrupt is then pending in Python).
cudaError_t wait_interruptibly(bool& interrupted) {
    thread_local cudaEvent_t ev = nullptr;
    if (ev == nullptr) {
        const cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
        if (e != cudaSuccess) return e;
    }
    const cudaError_t rec = cudaEventRecord(ev, 0);
    if (rec != cudaSuccess) return rec;
    const bool main = PyThread_get_thread_ident() == g_main_thread;
    const auto start = std::chrono::steady_clock::now();
    auto next_poll = start + std::chrono::milliseconds(20);
    for (;;) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e != cudaErrorNotReady) return e;  // done, or a kernel's error
        const auto now = std::chrono::steady_clock::now();
        if (now - start < std::chrono::milliseconds(1)) std::this_thread::yield();
        else std::this_thread::sleep_for(std::chrono::microseconds(50));
        if (main && now >= next_poll) {
            next_poll = now + std::chrono::milliseconds(20);
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) {
                interrupted = true;
                return cudaSuccess;
            }
        }
    }
}

// wait_interruptibly from Python-facing code (with the GIL): raises the KeyboardInterrupt, or a CUDA error.
void wait_for_gpu(const std::string& what) {
    bool interrupted = false;
    run_released(what, [&] { return wait_interruptibly(interrupted); });
    if (interrupted) throw py::error_already_set();
}

// ---- Streams and CUDA graph capture ------------------------------------------------
// A CUDA graph records a sequence of launches once and replays it with one
// call: a training step of ~20 kernels costs one launch instead of ~20, and
// none of the Python that issued them.  The legacy default stream cannot be
// captured, so a capturing thread issues its work to a stream of its own;
// every other call issues to the default stream.  The memory the captured
// launches use must outlive the graph: buffers made during the capture are
// kept by it, and buffers dropped during the capture are freed only when the
// graph goes (Python may drop an array whose memory a recorded launch uses).
struct Buffer;
thread_local cudaStream_t tl_stream = nullptr;  // this thread's capture stream while it captures
cudaStream_t stream() { return tl_stream; }
bool capturing_here() { return tl_stream != nullptr; }

struct CaptureKeep {
    std::vector<std::shared_ptr<Buffer>> made;   // allocated during the capture
    std::vector<std::pair<void*, bool>> dropped;  // released during the capture: (pointer, from the pool)
};
std::mutex g_capture_mu;
CaptureKeep* g_capture = nullptr;  // the capture in progress: one at a time in the process

void no_capture(const std::string& what) {
    if (capturing_here())
        throw std::runtime_error(what + " cannot run while this thread captures a CUDA graph: a graph holds GPU "
                                 "work only (copies from the host, and waiting for the GPU, happen outside it)");
}

// ---- Device memory ---------------------------------------------------------------

// The stream-ordered pool allocator (cudaMallocAsync) when the device has it:
// allocating and freeing the temporaries of a training step then costs no
// device-wide synchronisation, and freed memory is kept for reuse.
struct Allocator {
    std::once_flag once;
    bool pooled = false;

    void init() {
        std::call_once(once, [this] {
            int dev = 0, supported = 0;
            if (cudaGetDevice(&dev) == cudaSuccess &&
                cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) == cudaSuccess &&
                supported) {
                cudaMemPool_t pool;
                if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
                    std::uint64_t keep = UINT64_MAX;  // keep freed memory cached instead of returning it at each sync
                    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
                    pooled = true;
                }
            }
            cudaGetLastError();
        });
    }
};
Allocator g_alloc;

struct DLManagedTensor;  // DLPack, below
void release_foreign(DLManagedTensor* t);

struct Buffer {
    void* ptr = nullptr;
    std::size_t nbytes = 0;
    bool pooled = false;
    DLManagedTensor* foreign = nullptr;  // memory another library owns (from_dlpack): given back, never freed here

    Buffer(void* p, std::size_t n, DLManagedTensor* owner) : ptr(p), nbytes(n), foreign(owner) {}

    explicit Buffer(std::size_t n) : nbytes(n) {
        ensure_usable();
        g_alloc.init();
        // While capturing: plain cudaMalloc (allowed in a relaxed capture), not the pool's stream-ordered
        // allocation on the default stream; the graph keeps this memory (make_array).
        pooled = g_alloc.pooled && !capturing_here();
        if (n == 0) return;
        cudaError_t e;
        {
            py::gil_scoped_release release;
            e = pooled ? cudaMallocAsync(&ptr, n, 0) : cudaMalloc(&ptr, n);
            if (e == cudaErrorMemoryAllocation && pooled) {  // give cached blocks back and try once more
                cudaGetLastError();
                cudaDeviceSynchronize();
                int dev = 0;
                cudaMemPool_t pool;
                if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess)
                    cudaMemPoolTrimTo(pool, 0);
                cudaGetLastError();
                e = cudaMallocAsync(&ptr, n, 0);
            }
        }
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            std::size_t free_b = 0, total_b = 0;
            const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
            cudaGetLastError();
            ptr = nullptr;
            throw CudaOutOfMemory("CUDA out of memory: could not allocate " + mib(n) + " on the GPU" +
                                  (known ? " (" + mib(free_b) + " free of " + mib(total_b) + ")" : std::string()));
        }
        if (e != cudaSuccess) ptr = nullptr;
        check(e, pooled ? "cudaMallocAsync" : "cudaMalloc");
    }
    ~Buffer() {
        if (foreign != nullptr) {
            release_foreign(foreign);
            return;
        }
        if (ptr == nullptr) return;
        {
            std::lock_guard<std::mutex> lock(g_capture_mu);
            if (g_capture != nullptr) {  // a recorded launch may use it: the graph frees it
                g_capture->dropped.emplace_back(ptr, pooled);
                return;
            }
        }
        // Errors are ignored: at interpreter exit the runtime may already be gone.
        const cudaError_t e = pooled ? cudaFreeAsync(ptr, 0) : cudaFree(ptr);
        if (e != cudaSuccess) cudaGetLastError();
    }
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

DeviceArray make_array(std::vector<py::ssize_t> shape, const py::dtype& dt) {
    DeviceArray x;
    x.shape = std::move(shape);
    x.typestr = dt.attr("str").cast<std::string>();
    x.itemsize = dt.itemsize();
    std::size_t total = static_cast<std::size_t>(x.itemsize);
    for (auto d : x.shape) {
        if (d != 0 && total > (std::size_t(1) << 62) / static_cast<std::size_t>(d))
            throw py::value_error("DeviceArray too large");
        total *= static_cast<std::size_t>(d);
    }
    x.buf = std::make_shared<Buffer>(x.nbytes());
    if (capturing_here()) {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        if (g_capture != nullptr) g_capture->made.push_back(x.buf);
    }
    return x;
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

// ---- Host <-> device copies through pinned memory ------------------------------------
// The GPU's copy engine (DMA) reads and writes only page-locked ("pinned")
// host memory.  Given an ordinary, pageable pointer, cudaMemcpy first copies
// through a small pinned buffer of the driver's, piece by piece, and waits at
// each: slow.  So pageable data are staged here through pinned buffers of our
// own, in chunks, two at a time: while the copy engine moves one chunk, the
// CPU fills (or empties) the other.  Memory that is already pinned
// (pinned_empty, or anything cudaMallocHost'd or registered) goes straight to
// the copy engine.  The buffers are per thread: several Python threads may
// copy at once, and nothing here is global.

constexpr std::size_t kStageChunk = std::size_t(4) << 20;  // 4 MiB: a chunk's DMA outlasts its memcpy setup

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

#define WHYGPU_TRY(call)                          \
    do {                                          \
        const cudaError_t e_ = (call);            \
        if (e_ != cudaSuccess) return e_;         \
    } while (0)

// n bytes host -> device, done when it returns.  Call without the GIL.
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

// n bytes device -> host, after all work issued before it.  Call without the GIL.
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

// ---- The GPU's roofs: the probes of csrc/cuda/probe.cu ------------------------------------
// Everything is allocated and freed here (RAII, also on errors) and timed with
// CUDA events, without the GIL.

struct Event {
    cudaEvent_t e = nullptr;
    Event() { check(cudaEventCreate(&e), "cudaEventCreate"); }
    ~Event() {
        if (e != nullptr && cudaEventDestroy(e) != cudaSuccess) cudaGetLastError();
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
};

// Memory from `Alloc` (at least 16 bytes), given back by `Free`; errors raise.
template <cudaError_t (*Alloc)(void**, std::size_t), cudaError_t (*Free)(void*)>
struct ScopedMem {
    void* p = nullptr;
    ScopedMem(std::size_t n, const char* what) {
        const cudaError_t e = Alloc(&p, std::max<std::size_t>(n, 16));
        if (e != cudaSuccess) p = nullptr;
        check(e, std::string(what) + " (" + mib(n) + ")");
    }
    ~ScopedMem() {
        if (p != nullptr && Free(p) != cudaSuccess) cudaGetLastError();
    }
    ScopedMem(const ScopedMem&) = delete;
    ScopedMem& operator=(const ScopedMem&) = delete;
};
struct DeviceMem : ScopedMem<cudaMalloc, cudaFree> {
    explicit DeviceMem(std::size_t n) : ScopedMem(n, "cudaMalloc") {}
};
struct PinnedMem : ScopedMem<cudaMallocHost, cudaFreeHost> {
    explicit PinnedMem(std::size_t n) : ScopedMem(n, "cudaMallocHost") {}
};

// Seconds between two events around launch() on the default stream.
template <typename F>
double event_seconds(F&& launch, const char* what) {
    Event start, stop;
    check(cudaEventRecord(start.e, 0), "cudaEventRecord");
    check(launch(), what);
    check(cudaEventRecord(stop.e, 0), "cudaEventRecord");
    check(cudaEventSynchronize(stop.e), what);
    float ms = 0.f;
    check(cudaEventElapsedTime(&ms, start.e, stop.e), "cudaEventElapsedTime");
    return ms * 1e-3;
}

int device_sms() {
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    return std::max(prop.multiProcessorCount, 1);
}

void positive(long long v, const char* name) {
    if (v < 1) throw py::value_error(std::string(name) + " must be >= 1, got " + std::to_string(v));
}

// More bytes than any GPU holds: refused before any size arithmetic can overflow.
void sane_nbytes(long long nbytes) {
    positive(nbytes, "nbytes");
    if (nbytes > (1LL << 48)) throw py::value_error("nbytes must be <= 2**48, got " + std::to_string(nbytes));
}

double probe_fma_seconds(long long blocks, long long threads, long long iters) {
    positive(blocks, "blocks");
    positive(threads, "threads");
    positive(iters, "iters");
    if (threads > 1024) throw py::value_error("threads must be <= 1024 (a block's limit), got " + std::to_string(threads));
    if (blocks > (1LL << 24)) throw py::value_error("blocks must be <= 2**24, got " + std::to_string(blocks));
    ensure_usable();
    py::gil_scoped_release release;
    DeviceMem sink(static_cast<std::size_t>(blocks * threads) * sizeof(float));
    return event_seconds([&] {
        return whygpu::gpu::probe::fma_peak(static_cast<int>(blocks), static_cast<int>(threads), iters,
                                            static_cast<float*>(sink.p), 0);
    }, "the FMA probe");
}

// "bf16" or "tf32": the tensor-core probe's precision (the binding's spelling, as whygpu.cuda's).
bool probe_mma_bf16(const std::string& precision) {
    if (precision != "bf16" && precision != "tf32")
        throw py::value_error("precision must be 'bf16' or 'tf32', got '" + precision + "'");
    return precision == "bf16";
}

double probe_mma_seconds(long long blocks, long long threads, long long iters, const std::string& precision) {
    const bool bf16 = probe_mma_bf16(precision);
    positive(blocks, "blocks");
    positive(threads, "threads");
    positive(iters, "iters");
    if (threads > 1024 || threads % 32 != 0)
        throw py::value_error("threads must be a multiple of 32 (whole warps: mma.sync is warp-wide) and <= 1024, "
                              "got " + std::to_string(threads));
    if (blocks > (1LL << 24)) throw py::value_error("blocks must be <= 2**24, got " + std::to_string(blocks));
    ensure_usable();
    // The GPU must have bf16/TF32 tensor cores (compute capability 8.0+): rung 15 asks the same question.
    if (const char* why = whygpu::gpu::rung_unavailable(whygpu::gpu::kMma, bf16 ? whygpu::gpu::kBF16
                                                                                : whygpu::gpu::kTF32))
        throw CudaUnavailable(std::string("the tensor-core probe cannot run: ") + why);
    py::gil_scoped_release release;
    DeviceMem sink(static_cast<std::size_t>(blocks * threads) * sizeof(float));
    return event_seconds([&] {
        return whygpu::gpu::probe::mma_peak(static_cast<int>(blocks), static_cast<int>(threads), iters, bf16,
                                            static_cast<float*>(sink.p), 0);
    }, "the tensor-core probe");
}

std::vector<double> probe_copy_seconds(long long nbytes, long long reps) {
    sane_nbytes(nbytes);
    positive(reps, "reps");
    ensure_usable();
    py::gil_scoped_release release;
    // Whole float32s (the kernel's unit): 1-3 bytes more than asked at most, never fewer.
    const long long n = (nbytes + 3) / static_cast<long long>(sizeof(float));
    const auto bytes = static_cast<std::size_t>(n) * sizeof(float);
    DeviceMem src(bytes), dst(bytes);
    check(cudaMemsetAsync(src.p, 0, bytes, 0), "cudaMemsetAsync");
    const int blocks = device_sms() * 8;
    // Passes enough to move >= 256 MiB per launch: a copy that fits in L2 is over in
    // microseconds, and a kernel launch costs about as much.
    const int passes = static_cast<int>(std::min<long long>(1000, std::max<long long>(1, (256LL << 20) / (2 * nbytes))));
    auto launch = [&](int p) {
        return whygpu::gpu::probe::copy(static_cast<const float*>(src.p), static_cast<float*>(dst.p), n, p, blocks, 0);
    };
    event_seconds([&] { return launch(1); }, "the copy probe");  // untimed: first touch of both buffers
    std::vector<double> out;
    for (long long r = 0; r < reps; ++r)
        out.push_back(event_seconds([&] { return launch(passes); }, "the copy probe") / passes);
    return out;
}

std::vector<double> probe_host_copy_seconds(long long nbytes, const std::string& direction, const std::string& memory,
                                            long long reps) {
    sane_nbytes(nbytes);
    positive(reps, "reps");
    if (direction != "h2d" && direction != "d2h")
        throw py::value_error("direction must be 'h2d' or 'd2h', got '" + direction + "'");
    if (memory != "pageable" && memory != "pinned" && memory != "staged")
        throw py::value_error("memory must be 'pageable', 'pinned' or 'staged', got '" + memory + "'");
    ensure_usable();
    py::gil_scoped_release release;
    const auto n = static_cast<std::size_t>(nbytes);
    DeviceMem dev(n);
    std::unique_ptr<PinnedMem> pinned;
    std::unique_ptr<char[]> pageable;
    void* host = nullptr;
    if (memory == "pinned") {
        pinned.reset(new PinnedMem(n));
        host = pinned->p;
    } else {
        pageable.reset(new char[n]);
        host = pageable.get();
    }
    std::memset(host, 1, n);  // resident before timing (first-touch page faults are not the bus)
    const bool h2d = direction == "h2d";
    auto once = [&]() -> cudaError_t {
        if (memory == "staged") return h2d ? copy_h2d(dev.p, host, n) : copy_d2h(host, dev.p, n);
        if (memory == "pinned") {
            const cudaError_t e = h2d ? cudaMemcpyAsync(dev.p, host, n, cudaMemcpyHostToDevice, 0)
                                      : cudaMemcpyAsync(host, dev.p, n, cudaMemcpyDeviceToHost, 0);
            return e != cudaSuccess ? e : cudaStreamSynchronize(0);
        }
        const cudaError_t e = h2d ? cudaMemcpy(dev.p, host, n, cudaMemcpyHostToDevice)
                                  : cudaMemcpy(host, dev.p, n, cudaMemcpyDeviceToHost);
        return e != cudaSuccess ? e : cudaStreamSynchronize(0);
    };
    const std::string what = "the host copy probe (" + direction + ", " + memory + ")";
    check(once(), what);  // untimed: warm-up
    std::vector<double> out;
    for (long long r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        check(once(), what);
        out.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return out;
}

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


// ---- CUDA graphs and asynchronous uploads ---------------------------------------------

// A captured sequence of GPU work, replayed on the default stream.
struct Graph {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CaptureKeep keep;  // memory the recorded launches use
    long long replays = 0;

    Graph() = default;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    ~Graph() {
        if (exec != nullptr) cudaGraphExecDestroy(exec);  // waits for a replay in flight
        if (graph != nullptr) cudaGraphDestroy(graph);
        for (auto& d : keep.dropped) d.second ? cudaFreeAsync(d.first, 0) : cudaFree(d.first);
        cudaGetLastError();  // at interpreter exit the runtime may be gone
    }
    void replay() {
        if (exec == nullptr) throw py::value_error("this Graph holds nothing to replay");
        no_capture("Graph.replay");
        run_released("Graph.replay (cudaGraphLaunch)", [this] { return cudaGraphLaunch(exec, 0); });
        ++replays;
    }
};

thread_local cudaStream_t tl_capture_stream = nullptr;  // made at a thread's first capture, kept

void capture_begin() {
    ensure_usable();
    if (capturing_here()) throw std::runtime_error("this thread is already capturing a CUDA graph");
    std::lock_guard<std::mutex> lock(g_capture_mu);
    if (g_capture != nullptr)
        throw std::runtime_error("another thread is capturing a CUDA graph: one capture at a time");
    if (tl_capture_stream == nullptr)
        check(cudaStreamCreateWithFlags(&tl_capture_stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    // Relaxed: allocating device memory (cudaMalloc) stays allowed while capturing.
    check(cudaStreamBeginCapture(tl_capture_stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
    g_capture = new CaptureKeep;
    tl_stream = tl_capture_stream;
}

// Ends this thread's capture; the Graph it returns can be replayed.  On an
// error (the captured work did something a graph cannot hold) the capture is
// still ended, and what it kept is freed.
std::unique_ptr<Graph> capture_end() {
    if (!capturing_here()) throw std::runtime_error("this thread is not capturing a CUDA graph");
    auto gr = std::make_unique<Graph>();
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(tl_stream, &g);
    tl_stream = nullptr;
    {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        gr->keep = std::move(*g_capture);
        delete g_capture;
        g_capture = nullptr;
    }
    gr->graph = g;
    check(e, "cudaStreamEndCapture (the captured work did something a CUDA graph cannot hold)");
    check(cudaGraphInstantiate(&gr->exec, g, 0), "cudaGraphInstantiate");
    return gr;
}

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


// ---- DLPack: zero-copy exchange with PyTorch, CuPy, JAX ------------------------------
// The DLPack ABI (dlpack.h, v0.8 "dltensor" capsules), declared here so that
// the build needs no extra header.  A DeviceArray exports itself (__dlpack__)
// as a capsule holding a DLManagedTensor whose manager keeps the memory alive;
// from_dlpack wraps another library's CUDA tensor without a copy, and gives it
// back (its deleter) when the last DeviceArray using it goes.
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
constexpr std::int32_t kDLCUDA = 2;

void release_foreign(DLManagedTensor* t) {
    if (t == nullptr || t->deleter == nullptr) return;
    if (Py_IsInitialized()) {
        py::gil_scoped_acquire gil;  // the producer's deleter may be Python-side (CuPy)
        t->deleter(t);
    }
}

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

int current_device() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) cudaGetLastError();
    return dev;
}

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

// ---- GEMM on device arrays --------------------------------------------------------

constexpr py::ssize_t kMaxDim = py::ssize_t(1) << 30;  // keeps every index inside the kernels an int

const float* f32_in(const DeviceArray& x, const char* name) {
    if (!x.is("<f4")) throw py::type_error(std::string(name) + " must be float32, got " + py::str(x.dtype()).cast<std::string>());
    return static_cast<const float*>(x.data(name));
}
float* f32_out(DeviceArray& x, const char* name) { return const_cast<float*>(f32_in(x, name)); }

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

// ---- Element-wise training operations ------------------------------------------------

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

// ---- Device information ------------------------------------------------------------

py::dict device_info() {
    ensure_usable();
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    auto attr = [dev](cudaDeviceAttr a) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess) { cudaGetLastError(); return -1; }
        return v;
    };
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    py::dict d;
    d["device"] = dev;
    d["name"] = std::string(prop.name);
    d["compute_capability"] = py::make_tuple(prop.major, prop.minor);
    d["multiprocessors"] = prop.multiProcessorCount;
    d["clock_khz"] = attr(cudaDevAttrClockRate);
    d["memory_bytes"] = static_cast<unsigned long long>(prop.totalGlobalMem);
    d["l2_cache_bytes"] = prop.l2CacheSize;
    d["shared_memory_per_block_optin"] = static_cast<unsigned long long>(prop.sharedMemPerBlockOptin);
    d["registers_per_multiprocessor"] = prop.regsPerMultiprocessor;
    d["max_threads_per_multiprocessor"] = prop.maxThreadsPerMultiProcessor;
    d["driver_version"] = version_string(driver);
    d["runtime_version"] = version_string(runtime);
    return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    m.doc() = "whygpu's CUDA kernel ladder and device memory. Use whygpu.cuda, not this module.";

    // C++ exceptions -> the Python classes defined in whygpu/cuda.py (looked up
    // when raised, so that importing this module imports nothing else).
    py::register_exception_translator([](std::exception_ptr p) {
        auto raise = [](const char* cls, const char* msg) {
            try {
                py::object c = py::module_::import("whygpu.cuda").attr(cls);
                PyErr_SetString(c.ptr(), msg);
            } catch (py::error_already_set&) {
                PyErr_SetString(PyExc_RuntimeError, msg);
            }
        };
        try {
            if (p) std::rethrow_exception(p);
        } catch (const CudaOutOfMemory& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        } catch (const CudaUnavailable& e) {
            raise("CudaUnavailableError", e.what());
        } catch (const CudaError& e) {
            raise("CudaError", e.what());
        }
    });

    m.def("unavailable_reason", &unavailable_reason,
          "Why CUDA cannot be used here (driver, device), or '' when it can. Creates no context.");
    m.def("kernels", [] {
        std::vector<std::string> names;
        for (int r = whygpu::gpu::kFirstRung; r <= whygpu::gpu::kLastRung; ++r)
            names.emplace_back(whygpu::gpu::rung_name(r));
        return names;
    }, "The names of the CUDA GEMM kernels compiled into this module, in ladder order.");
    m.def("rung_of", [](const std::string& name) {
        for (int r = whygpu::gpu::kFirstRung; r <= whygpu::gpu::kLastRung; ++r)
            if (name == whygpu::gpu::rung_name(r)) return r;
        throw py::value_error("no CUDA kernel named '" + name + "'");
    });
    m.def("compiled_architectures", [] { return std::string(WHYGPU_CUDA_ARCHITECTURES); },
          "CMAKE_CUDA_ARCHITECTURES at build time, comma-separated, e.g. '80-real,90-real,90-virtual'.");
    m.def("compiler_version", [] { return std::string(WHYGPU_CUDA_COMPILER_VERSION); });
    m.def("runtime_version", [] {
        int v = 0;
        cudaRuntimeGetVersion(&v);
        return version_string(v);
    }, "The CUDA runtime version linked in (static).");
    m.def("device_count", [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
        return n;
    });
    m.def("device_info", &device_info, "Properties of the current device (raises without a usable GPU).");
    m.def("synchronize", [] {
        ensure_usable();
        no_capture("synchronize");
        wait_for_gpu("synchronize (waiting for the GPU)");
    }, "Wait until all work issued so far has finished; raises the first error a kernel hit.");
    m.def("memory_info", [] {
        ensure_usable();
        std::size_t free_b = 0, total_b = 0;
        check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
        return py::make_tuple(free_b, total_b);
    }, "(free, total) bytes of device memory.");
    m.def("_check_error", [](int code, const std::string& what) { check(static_cast<cudaError_t>(code), what); },
          "Raise what a CUDA error code would raise (for tests of the error mapping).");

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

    py::class_<Graph>(m, "Graph", "A captured sequence of GPU work (capture_begin ... capture_end); replay() "
                                  "runs it again on the default stream, with the same arguments and memory.")
        .def("replay", &Graph::replay, "Run the recorded work once more (asynchronous).")
        .def_property_readonly("replays", [](const Graph& g) { return g.replays; })
        .def_property_readonly("kept_arrays", [](const Graph& g) { return g.keep.made.size() + g.keep.dropped.size(); },
                               "Device buffers the graph keeps alive (made or dropped during the capture).");
    m.def("from_dlpack_capsule", &from_dlpack_capsule, py::arg("capsule"),
          "A DeviceArray over the CUDA tensor in a DLPack capsule (no copy; the capsule is consumed).");
    m.def("copy_into", &copy_into, py::arg("dst"), py::arg("src"),
          "dst[...] = src: a device-to-device copy between DeviceArrays of one shape and dtype (asynchronous).");
    m.def("capture_begin", &capture_begin,
          "Start recording this thread's GPU work into a CUDA graph (nothing runs until replay).");
    m.def("capture_end", &capture_end, "Stop recording; returns the Graph.");
    m.def("is_capturing", &capturing_here, "Whether this thread is capturing a CUDA graph.");
    py::class_<Uploader>(m, "Uploader", "Asynchronous host -> device copies into one DeviceArray, through a "
                                        "pinned buffer of its own (see src/cuda_module.cpp).")
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

    py::module_ probe = m.def_submodule("probe", "the GPU's roofs: microbenchmarks (csrc/cuda/probe.cu)");
    probe.def("fma_flops_per_iter", [] { return whygpu::gpu::probe::kFmaFlopsPerIter; },
              "float32 flops per thread per iteration of the FMA probe.");
    probe.def("fma_seconds", &probe_fma_seconds, py::arg("blocks"), py::arg("threads"), py::arg("iters"),
              "Seconds (CUDA events) of one launch of the FMA probe: blocks x threads threads, iters iterations "
              "each. Call it once untimed first (module load, clocks).");
    probe.def("mma_flops_per_iter", [](const std::string& precision) {
        return whygpu::gpu::probe::mma_flops_per_iter(probe_mma_bf16(precision));
    }, py::arg("precision") = "bf16",
              "Tensor-core flops per thread per iteration of the mma probe (a warp's mma.sync flops / 32), "
              "for precision 'bf16' (m16n8k16) or 'tf32' (m16n8k8).");
    probe.def("mma_seconds", &probe_mma_seconds, py::arg("blocks"), py::arg("threads"), py::arg("iters"),
              py::arg("precision") = "bf16",
              "Seconds (CUDA events) of one launch of the tensor-core probe: blocks x threads threads (threads a "
              "multiple of 32), iters iterations of independent mma.sync chains per warp, in 'bf16' or 'tf32'. "
              "Call it once untimed first. CudaUnavailableError on a GPU without bf16/TF32 tensor cores.");
    probe.def("copy_seconds", &probe_copy_seconds, py::arg("nbytes"), py::arg("reps"),
              "Seconds (CUDA events) per copy of nbytes (rounded up to whole float32s) device to device, `reps` "
              "samples (after one untimed copy; each sample averages enough passes in one launch to move "
              "256 MiB); a copy moves 2 * nbytes (read + write).");
    probe.def("host_copy_seconds", &probe_host_copy_seconds, py::arg("nbytes"), py::arg("direction"),
              py::arg("memory"), py::arg("reps"),
              "Seconds (host clock, copy + synchronisation) of each of `reps` copies of nbytes between host and "
              "device (after one untimed): direction 'h2d' or 'd2h'; memory 'pageable' (plain cudaMemcpy), "
              "'pinned' (cudaMallocHost'd) or 'staged' (pageable, through whygpu's pinned buffers, as "
              "DeviceArray copies).");

    py::module_ nn_mod = m.def_submodule("nn", "element-wise training operations");
    bind_nn(nn_mod);
}
