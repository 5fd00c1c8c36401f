// PYBIND11_MODULE(_cuda): registers the binding's parts (see binding.h), in a fixed order.
#include "binding.h"

namespace py = pybind11;
namespace wcb = whygpu::cudabind;

PYBIND11_MODULE(_cuda, m) {
    wcb::g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    m.doc() = "whygpu's CUDA kernel ladder and device memory. Use whygpu.cuda, not this module.";

    // The order matters: a class is registered before the functions whose signatures name it.
    wcb::bind_errors(m);     // C++ exceptions -> whygpu.cuda's Python classes
    wcb::bind_device(m);     // unavailable_reason, kernels, ..., synchronize, memory_info, _check_error
    wcb::bind_array(m);      // DeviceArray
    wcb::bind_gemm(m);       // gemm, default_precision, rung_unavailable
    wcb::bind_graph(m);      // Graph
    wcb::bind_dlpack(m);     // from_dlpack_capsule
    wcb::bind_copy_into(m);  // copy_into
    wcb::bind_capture(m);    // capture_begin, capture_end, is_capturing
    wcb::bind_transfer(m);   // Uploader, pinned_empty, is_pinned, staging_chunk_bytes
    wcb::bind_probe(m);      // the probe submodule

    py::module_ nn_mod = m.def_submodule("nn", "element-wise training operations");
    wcb::bind_nn(nn_mod);
}
