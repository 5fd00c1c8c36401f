// Device memory: the stream-ordered pool allocator, Buffer (one allocation) and make_array.
#include "binding.h"

#include <cstdint>

namespace whygpu {
namespace cudabind {

namespace {

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

}  // namespace

Buffer::Buffer(std::size_t n) : nbytes(n) {
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
            // Not a plain cudaDeviceSynchronize: that would invalidate another thread's capture.
            settle_frees();
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

Buffer::~Buffer() {
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

}  // namespace cudabind
}  // namespace whygpu
