// The module's information functions -- driver, device, build, memory -- and synchronize.
#include "binding.h"

#include "gemm_cuda.h"

#ifndef WHYGPU_CUDA_ARCHITECTURES
#define WHYGPU_CUDA_ARCHITECTURES ""
#endif
#ifndef WHYGPU_CUDA_COMPILER_VERSION
#define WHYGPU_CUDA_COMPILER_VERSION ""
#endif

namespace whygpu {
namespace cudabind {

namespace {

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

void bind_device(py::module_& m) {
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
    m.def("set_device", [](int device) {
        ensure_usable();
        check(cudaSetDevice(device), "cudaSetDevice");
    }, py::arg("device"), "Make `device` this thread's current GPU (before anything is allocated on it).");
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
}

}  // namespace cudabind
}  // namespace whygpu
