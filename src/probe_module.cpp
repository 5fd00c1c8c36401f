// _probe: the pybind11 binding of the machine probes (csrc/machine_probe.h)
// that python/whygpu/predict/roofline.py uses to measure this machine's roofs.
// Argument checking only; the GIL is released while a probe runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "machine_probe.h"
#include "packed.h"

namespace py = pybind11;
namespace probe = whygpu::probe;

namespace {

whygpu::Arch parse_arch(const std::string& name) {
    for (auto a : {whygpu::Arch::portable, whygpu::Arch::avx2, whygpu::Arch::avx512})
        if (name == whygpu::arch_name(a)) return a;
    throw py::value_error("unknown instruction set '" + name + "'; expected portable, avx2 or avx512");
}

}  // namespace

PYBIND11_MODULE(_probe, m) {
    m.doc() = "Microbenchmarks of this machine's peak FLOP/s and bandwidth (used by whygpu.predict.roofline).";
    m.def("fma_flops_per_iter", [](const std::string& arch) {
        return probe::fma_flops_per_iter(parse_arch(arch));
    }, py::arg("arch"), "float32 flops in one round of the FMA chains for `arch`.");
    m.def("fma_peak_seconds", [](const std::string& arch, int threads, std::int64_t iters) {
        const auto a = parse_arch(arch);
        py::gil_scoped_release release;
        return probe::fma_peak_seconds(a, threads, iters);
    }, py::arg("arch"), py::arg("threads"), py::arg("iters"),
       "Wall seconds for `threads` threads each running `iters` rounds of 12 FMA chains.");
    m.def("scalar_chain_seconds", [](std::int64_t n, std::int64_t reps) {
        py::gil_scoped_release release;
        return probe::scalar_chain_seconds(n, reps);
    }, py::arg("n"), py::arg("reps"), "Seconds for reps passes of a one-accumulator dot product of n floats.");
    m.def("triad_seconds", [](const std::string& arch, std::int64_t n_per_thread, int threads, int sweeps,
                              int samples) {
        const auto a = parse_arch(arch);
        py::gil_scoped_release release;
        return probe::triad_seconds(a, n_per_thread, threads, sweeps, samples);
    }, py::arg("arch"), py::arg("n_per_thread"), py::arg("threads"), py::arg("sweeps"), py::arg("samples"),
       "Seconds per sample of `sweeps` STREAM triads over 3 float64 arrays of n_per_thread per thread.");
    m.attr("chains") = probe::kChains;
#if defined(__clang__)
    m.attr("compiler") = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    m.attr("compiler") = std::string("gcc ") + __VERSION__;
#else
    m.attr("compiler") = std::string("unknown");
#endif
}
