// The GPU's roofs: the probe submodule, timing the microbenchmarks of csrc/cuda/probe.cu.
//
// Everything is allocated and freed here (RAII, also on errors) and timed with
// CUDA events, without the GIL.
#include "binding.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "gemm_cuda.h"
#include "probe.h"

namespace whygpu {
namespace cudabind {

namespace {

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

}  // namespace

void bind_probe(py::module_& m) {
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
}

}  // namespace cudabind
}  // namespace whygpu
