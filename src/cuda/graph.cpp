// Streams and CUDA graph capture: which stream a thread issues to, the capture state, and Graph.
//
// A CUDA graph records a sequence of launches once and replays it with one
// call: a training step of ~20 kernels costs one launch instead of ~20, and
// none of the Python that issued them.  The legacy default stream cannot be
// captured, so a capturing thread issues its work to a stream of its own;
// every other call issues to the default stream.  The memory the captured
// launches use must outlive the graph: buffers made during the capture are
// kept by it, and buffers dropped during the capture are freed only when the
// graph goes (Python may drop an array whose memory a recorded launch uses).
#include "binding.h"

#include <atomic>
#include <shared_mutex>

namespace whygpu {
namespace cudabind {

namespace {
thread_local cudaStream_t tl_stream = nullptr;          // this thread's capture stream while it captures
thread_local cudaStream_t tl_capture_stream = nullptr;  // made at a thread's first capture, kept

// Captures in progress, and a gate that keeps a capture from beginning while a
// device-wide wait is under way (settle_frees): cudaDeviceSynchronize waits for
// every stream, a capturing one too, and that is illegal -- it would invalidate
// the capture (or fail, in the global and thread-local capture modes).
std::atomic<int> g_captures{0};
std::shared_mutex g_sync_gate;
}  // namespace

cudaStream_t stream() { return tl_stream; }
bool capturing_here() { return tl_stream != nullptr; }

std::mutex g_capture_mu;
CaptureKeep* g_capture = nullptr;

void no_capture(const std::string& what) {
    if (capturing_here())
        throw std::runtime_error(what + " cannot run while this thread captures a CUDA graph: a graph holds GPU "
                                 "work only (copies from the host, and waiting for the GPU, happen outside it)");
}

// While another thread captures, wait for the legacy default stream only: every
// free whygpu issues goes to it (cudaFreeAsync on stream 0, also a Graph's), so
// once it is idle they have all happened, and the capture stream (non-blocking)
// is not waited for.
cudaError_t settle_frees() {
    std::shared_lock<std::shared_mutex> gate(g_sync_gate);
    if (g_captures.load(std::memory_order_acquire) == 0) return cudaDeviceSynchronize();
    return cudaStreamSynchronize(0);
}

namespace {

// A captured sequence of GPU work, replayed on the default stream.
struct Graph {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CaptureKeep keep;  // memory the recorded launches use
    long long replays = 0;
    // An event per stream the graph was replayed on, recorded after each replay
    // there: the memory the graph keeps is released after the last of them.
    std::vector<std::pair<cudaStream_t, cudaEvent_t>> replayed_on;

    Graph() = default;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    ~Graph() {
        // Neither call waits for a replay in flight: the driver frees the graph
        // once that replay completes.  Its memory is released in stream order:
        // the legacy stream first waits for the last replay on every stream,
        // then frees the pool's blocks (cudaFreeAsync); cudaFree (the rest, and
        // the buffers in keep.made when they go) synchronises with all streams.
        if (exec != nullptr) cudaGraphExecDestroy(exec);
        if (graph != nullptr) cudaGraphDestroy(graph);
        for (auto& r : replayed_on) {
            cudaStreamWaitEvent(0, r.second, 0);
            cudaEventDestroy(r.second);  // its pending record still completes; the wait above already holds it
        }
        for (auto& d : keep.dropped) d.second ? cudaFreeAsync(d.first, 0) : cudaFree(d.first);
        cudaGetLastError();  // at interpreter exit the runtime may be gone
    }
    // The event recorded after each replay on `s`, made at the first.
    cudaEvent_t replay_event(cudaStream_t s) {
        for (auto& r : replayed_on)
            if (r.first == s) return r.second;
        cudaEvent_t e = nullptr;
        check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "Graph.replay (cudaEventCreateWithFlags)");
        replayed_on.emplace_back(s, e);
        return e;
    }
    void replay() {
        if (exec == nullptr) throw py::value_error("this Graph holds nothing to replay");
        no_capture("Graph.replay");
        const cudaStream_t s = 0;  // the legacy default stream, as all of whygpu's work
        const cudaEvent_t done = replay_event(s);
        run_released("Graph.replay (cudaGraphLaunch)", [&] {
            WHYGPU_TRY(cudaGraphLaunch(exec, s));
            return cudaEventRecord(done, s);
        });
        ++replays;
    }
};

void capture_begin() {
    ensure_usable();
    if (capturing_here()) throw std::runtime_error("this thread is already capturing a CUDA graph");
    {
        // Counted before it begins, and not while settle_frees waits device-wide
        // (that wait needs no GIL, so neither does this one).
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> gate(g_sync_gate);
        g_captures.fetch_add(1, std::memory_order_acq_rel);
    }
    try {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        if (g_capture != nullptr)
            throw std::runtime_error("another thread is capturing a CUDA graph: one capture at a time");
        if (tl_capture_stream == nullptr)
            check(cudaStreamCreateWithFlags(&tl_capture_stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        // Relaxed: allocating device memory (cudaMalloc) stays allowed while capturing.
        check(cudaStreamBeginCapture(tl_capture_stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
        g_capture = new CaptureKeep;
        tl_stream = tl_capture_stream;
    } catch (...) {
        g_captures.fetch_sub(1, std::memory_order_acq_rel);
        throw;
    }
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
    g_captures.fetch_sub(1, std::memory_order_acq_rel);
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

}  // namespace

void bind_graph(py::module_& m) {
    py::class_<Graph>(m, "Graph", "A captured sequence of GPU work (capture_begin ... capture_end); replay() "
                                  "runs it again on the default stream, with the same arguments and memory.")
        .def("replay", &Graph::replay, "Run the recorded work once more (asynchronous).")
        .def_property_readonly("replays", [](const Graph& g) { return g.replays; })
        .def_property_readonly("kept_arrays", [](const Graph& g) { return g.keep.made.size() + g.keep.dropped.size(); },
                               "Device buffers the graph keeps alive (made or dropped during the capture).");
}

void bind_capture(py::module_& m) {
    m.def("capture_begin", &capture_begin,
          "Start recording this thread's GPU work into a CUDA graph (nothing runs until replay).");
    m.def("capture_end", &capture_end, "Stop recording; returns the Graph.");
    m.def("is_capturing", &capturing_here, "Whether this thread is capturing a CUDA graph.");
}

}  // namespace cudabind
}  // namespace whygpu
