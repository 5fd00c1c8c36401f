// CUDA's error codes turned into exceptions, whether a GPU is usable, and the interruptible waits for it.
#include "binding.h"

#include <atomic>
#include <chrono>
#include <thread>

namespace whygpu {
namespace cudabind {

namespace {

std::string cuda_message(cudaError_t e, const std::string& what) {
    return "CUDA error in " + what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
}

std::atomic<bool> g_usable{false};  // once the GPU was found usable, it stays so

}  // namespace

std::string mib(std::size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

void check(cudaError_t e, const std::string& what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();  // clear a non-sticky error, so the next call does not report it again
    if (e == cudaErrorMemoryAllocation) throw CudaOutOfMemory("CUDA out of memory in " + what);
    throw CudaError(cuda_message(e, what));
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Asks the driver (it does not create a context).  The compiled-architecture
// check is in whygpu/cuda.py.
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

void ensure_usable() {
    if (g_usable.load(std::memory_order_acquire)) return;
    const std::string why = unavailable_reason();
    if (!why.empty()) throw CudaUnavailable("CUDA is unavailable: " + why);
    g_usable.store(true, std::memory_order_release);
}

// ---- Waiting for the GPU, interruptibly ---------------------------------------------
// cudaStreamSynchronize blocks in the driver, where Ctrl-C cannot reach: a
// user who queued a minute of naive GEMMs would have to kill Python.  So the
// waits that may be long (synchronize, copies back to the host) poll an event
// instead -- spinning for the first millisecond, then sleeping 50 us between
// looks -- and, in the main thread, take the GIL every 20 ms to run Python's
// signal handlers.  The GPU work itself goes on; only the wait is given up.
unsigned long g_main_thread = 0;

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

void wait_for_gpu(const std::string& what) {
    bool interrupted = false;
    run_released(what, [&] { return wait_interruptibly(interrupted); });
    if (interrupted) throw py::error_already_set();
}

// C++ exceptions -> the Python classes defined in whygpu/cuda.py (looked up
// when raised, so that importing this module imports nothing else).
void bind_errors(py::module_&) {
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
}

}  // namespace cudabind
}  // namespace whygpu
