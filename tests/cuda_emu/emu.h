// emu.h -- just enough of CUDA to run whygpu's kernels on the CPU, for
// checking their index arithmetic, edge guards and barriers on a machine
// without a GPU (tests/test_cuda_emulated.py).  NOT a CUDA implementation:
// each thread of a block is a fiber (a coroutine with its own stack),
// all of a block's fibers run on the launching OS thread and switch only at a
// barrier, so __syncthreads costs two context switches and no system call to
// wake an OS thread (with one OS thread per CUDA thread, 256 threads on 2 cores
// spent most of the test time in futex calls).  Shared memory is a static array
// (blocks run one after the other), a warp shuffle goes through memory between
// two per-warp barriers, a copy with pinned host memory waits for the next
// synchronisation (as late as CUDA may run it).  The thread that completes a
// barrier runs on first, up to its next barrier, before the threads it
// released: a kernel missing a barrier before it overwrites shared memory the
// others still read gets wrong results here every time.  A barrier that not
// every thread of the block reaches is reported (abort), not a hang.  Timing,
// coalescing and bank conflicts mean nothing here; results and races do.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <deque>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

enum cudaError_t {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100, cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700,
    cudaErrorStreamCaptureUnsupported = 900, cudaErrorStreamCaptureInvalidated = 901,
};
using cudaStream_t = void*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

// ---- A fake runtime API: host memory stands in for device memory -------------------
// Enough for src/cuda/*.cpp, so that the real binding can be built over
// the emulated kernels (build_emulated.py --module) and whygpu.cuda's GPU
// tests run on the CPU.  One "device", always usable.
inline const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
        case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
        default: return "cudaErrorUnknown";
    }
}
inline const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
        case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
        default: return "unknown error";
    }
}
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
enum cudaDeviceAttr { cudaDevAttrClockRate = 13, cudaDevAttrMultiProcessorCount = 16,
                      cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76,
                      cudaDevAttrMemoryPoolsSupported = 115 };
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
    // "compute capability 9.0": as cudaDeviceProp below
    *v = a == cudaDevAttrMemoryPoolsSupported ? 1 : a == cudaDevAttrMultiProcessorCount ? 4
       : a == cudaDevAttrComputeCapabilityMajor ? 9 : a == cudaDevAttrComputeCapabilityMinor ? 0 : 1000000;
    return cudaSuccess;
}
using cudaMemPool_t = void*;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int) { *p = nullptr; return cudaSuccess; }
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
// WHYGPU_EMU_POOL_FULL=1: the pool's cached blocks fill the device, so that
// cudaMallocAsync outside a capture fails (out of memory, said on stderr) until
// cudaMemPoolTrimTo has given them back -- and the next allocation fills the
// pool again.  Each allocation then takes the allocator's retry path.
namespace emu {
inline std::atomic<bool> g_pool_trimmed{false};
inline bool pool_full() {
    const char* full = std::getenv("WHYGPU_EMU_POOL_FULL");
    return full != nullptr && full[0] != '\0' && full[0] != '0';
}
}  // namespace emu
inline cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, std::size_t) {
    emu::g_pool_trimmed.store(true);
    return cudaSuccess;
}
// The legacy default stream.  Kernels run at their launch, but a copy between
// device memory and *pinned* host memory is only queued, and runs at the next
// synchronising call (or launch, or copy that must come after it): as late as
// CUDA may run it.  So code that reuses a pinned buffer before waiting for the
// copy that reads it, or reads one before the copy into it is known to be done
// (the staging pipeline of src/cuda/transfer.cpp), gets wrong data here as it
// could on a GPU.  Copies with pageable memory run at once, as CUDA stages them.
namespace emu {
struct PendingCopy {
    void* dst;
    const void* src;
    std::size_t n;
};
inline std::mutex g_stream_mu;
inline std::vector<PendingCopy> g_pending;  // issue order
inline void drain() {
    std::lock_guard<std::mutex> lock(g_stream_mu);
    for (const auto& c : g_pending) std::memcpy(c.dst, c.src, c.n);
    g_pending.clear();
}
inline std::mutex g_pinned_mu;
inline std::map<std::uintptr_t, std::size_t> g_pinned;  // cudaMallocHost'd: base -> size
inline bool pinned(const void* p) {
    const auto u = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard<std::mutex> lock(g_pinned_mu);
    auto it = g_pinned.upper_bound(u);
    if (it == g_pinned.begin()) return false;
    --it;
    return u < it->first + std::max<std::size_t>(it->second, 1);
}
}  // namespace emu


// Streams and CUDA graphs.  Every stream is the one queue of the emulation
// (work runs in issue order), except while a stream is being captured: then
// the launches, copies and memsets issued to it are recorded, not run, and
// cudaGraphLaunch runs the recording, in order, each time it is called --
// with the arguments captured, as a GPU replays them.  Memory that the
// captured work allocates (cudaMallocAsync on the capturing stream) is
// allocated once and belongs to the graph; a free recorded there is done when
// the graph is destroyed.  Synchronising a capturing stream, or the whole
// device, during a capture is an error and invalidates it, as on a GPU.
namespace emu {
struct Stream {
    bool capturing = false;
    std::atomic<bool> invalidated{false};  // also set by cudaDeviceSynchronize, from any thread
    std::vector<std::function<void()>> nodes;
    std::vector<void*> owned;  // allocated by the captured work
};
inline std::mutex g_capture_mu;
inline std::vector<Stream*> g_capturing;  // streams now capturing
inline Stream* capturing(void* s) {
    if (s == nullptr) return nullptr;
    auto* st = static_cast<Stream*>(s);
    return st->capturing ? st : nullptr;
}
}  // namespace emu
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1,
                             cudaStreamCaptureModeRelaxed = 2 };
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1 };
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
struct EmuGraph {
    std::vector<std::function<void()>> nodes;
    std::vector<void*> owned;
};
using cudaGraph_t = EmuGraph*;
using cudaGraphExec_t = EmuGraph*;
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = new emu::Stream; return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete static_cast<emu::Stream*>(s); return cudaSuccess; }
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    if (s == nullptr) return cudaErrorStreamCaptureUnsupported;  // the legacy stream cannot be captured
    auto* st = static_cast<emu::Stream*>(s);
    if (st->capturing) return cudaErrorInvalidValue;
    st->capturing = true;
    st->invalidated = false;
    st->nodes.clear();
    st->owned.clear();
    std::lock_guard<std::mutex> lock(emu::g_capture_mu);
    emu::g_capturing.push_back(st);
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
    auto* st = static_cast<emu::Stream*>(s);
    if (st == nullptr || !st->capturing) return cudaErrorInvalidValue;
    st->capturing = false;
    {
        std::lock_guard<std::mutex> lock(emu::g_capture_mu);
        emu::g_capturing.erase(std::find(emu::g_capturing.begin(), emu::g_capturing.end(), st));
    }
    auto* graph = new EmuGraph{std::move(st->nodes), std::move(st->owned)};
    st->nodes.clear();
    st->owned.clear();
    if (st->invalidated) {
        for (void* p : graph->owned) std::free(p);
        delete graph;
        *g = nullptr;
        return cudaErrorStreamCaptureInvalidated;
    }
    *g = graph;
    return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
    *status = emu::capturing(s) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
// The graph's recording is shared by its one executable instance (no copies are made).
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long = 0) {
    *e = g;
    return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    if (g == nullptr) return cudaSuccess;
    for (void* p : g->owned) std::free(p);
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);  // below: it needs the copies and launches

inline cudaError_t cudaMalloc(void** p, std::size_t n) {
    if (n > (std::size_t(1) << 36)) return cudaErrorMemoryAllocation;  // "64 GiB of device memory"
    *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaMallocAsync(void** p, std::size_t n, cudaStream_t s) {
    if (!emu::capturing(s) && emu::pool_full() && !emu::g_pool_trimmed.exchange(false)) {
        std::fprintf(stderr, "emu: cudaMallocAsync of %zu bytes refused: the pool is full (WHYGPU_EMU_POOL_FULL)\n", n);
        return cudaErrorMemoryAllocation;
    }
    const cudaError_t e = cudaMalloc(p, n);
    if (auto* st = emu::capturing(s); st != nullptr && e == cudaSuccess) st->owned.push_back(*p);
    return e;
}
inline cudaError_t cudaFree(void* p) { emu::drain(); std::free(p); return cudaSuccess; }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
    if (auto* st = emu::capturing(s)) {  // the graph's own memory: freed with the graph
        if (std::find(st->owned.begin(), st->owned.end(), p) == st->owned.end()) st->invalidated = true;
        return cudaSuccess;
    }
    return cudaFree(p);
}
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
inline cudaError_t cudaMemcpy(void* d, const void* s, std::size_t n, cudaMemcpyKind) {
    emu::drain();
    std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, std::size_t n, cudaMemcpyKind k, cudaStream_t st) {
    if (auto* c = emu::capturing(st)) {
        if (k != cudaMemcpyDeviceToDevice) { c->invalidated = true; return cudaErrorStreamCaptureUnsupported; }
        c->nodes.push_back([=] { cudaMemcpyAsync(d, s, n, k, nullptr); });
        return cudaSuccess;
    }
    const bool deferred =
        (k == cudaMemcpyHostToDevice && emu::pinned(s)) || (k == cudaMemcpyDeviceToHost && emu::pinned(d));
    if (!deferred) return cudaMemcpy(d, s, n, k);
    std::lock_guard<std::mutex> lock(emu::g_stream_mu);
    emu::g_pending.push_back({d, s, n});
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, std::size_t n, cudaStream_t s) {
    if (auto* c = emu::capturing(s)) {
        c->nodes.push_back([=] { cudaMemsetAsync(p, v, n, nullptr); });
        return cudaSuccess;
    }
    emu::drain();
    std::memset(p, v, n);
    return cudaSuccess;
}
// Waiting for every stream waits for a capturing one too: illegal, and it
// invalidates every capture in progress (whichever thread began it).
inline cudaError_t cudaDeviceSynchronize() {
    {
        std::lock_guard<std::mutex> lock(emu::g_capture_mu);
        for (emu::Stream* st : emu::g_capturing) st->invalidated = true;
        if (!emu::g_capturing.empty()) return cudaErrorStreamCaptureUnsupported;
    }
    emu::drain();
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(std::size_t* f, std::size_t* t) {
    *f = std::size_t(1) << 35;
    *t = std::size_t(1) << 36;
    return cudaSuccess;
}
struct cudaDeviceProp {
    char name[256] = "Emulated GPU (whygpu tests/cuda_emu)";
    int major = 9, minor = 0, multiProcessorCount = 4, l2CacheSize = 1 << 20;
    std::size_t totalGlobalMem = std::size_t(1) << 36, sharedMemPerBlockOptin = 48 << 10;
    int regsPerMultiprocessor = 65536, maxThreadsPerMultiProcessor = 2048;
};
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) { *p = cudaDeviceProp{}; return cudaSuccess; }

// Events: a host clock.  Recording one does not run the queued copies (that
// would hide a missing wait); waiting for one runs them all.
struct EmuEvent {
    std::chrono::steady_clock::time_point t{};
};
using cudaEvent_t = EmuEvent*;
constexpr unsigned cudaEventDisableTiming = 2;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new EmuEvent; return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) {
    e->t = std::chrono::steady_clock::now();
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { emu::drain(); return cudaSuccess; }
// One queue: work issued after the wait already runs after the event's work.
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
// Kernels run at their launch here, so a recorded event is always complete (after the queued copies).
inline cudaError_t cudaEventQuery(cudaEvent_t) { emu::drain(); return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (auto* c = emu::capturing(s)) { c->invalidated = true; return cudaErrorStreamCaptureUnsupported; }
    emu::drain();
    return cudaSuccess;
}

// Pinned host memory: ordinary memory, remembered so that
// cudaPointerGetAttributes can tell it from pageable memory as CUDA does.
// WHYGPU_EMU_NO_PINNED=1 refuses it, as a system out of page-locked memory would.
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2,
                      cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes {
    cudaMemoryType type = cudaMemoryTypeUnregistered;
    int device = 0;
    void* devicePointer = nullptr;
    void* hostPointer = nullptr;
};
inline cudaError_t cudaMallocHost(void** p, std::size_t n) {
    const char* refuse = std::getenv("WHYGPU_EMU_NO_PINNED");
    if (refuse != nullptr && refuse[0] != '\0' && refuse[0] != '0') return cudaErrorMemoryAllocation;
    *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096 + 4096);
    if (!*p) return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> lock(emu::g_pinned_mu);
    emu::g_pinned[reinterpret_cast<std::uintptr_t>(*p)] = n;
    return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {
    if (p == nullptr) return cudaSuccess;
    emu::drain();  // CUDA waits for the copies that use it
    {
        std::lock_guard<std::mutex> lock(emu::g_pinned_mu);
        if (emu::g_pinned.erase(reinterpret_cast<std::uintptr_t>(p)) == 0) return cudaErrorInvalidValue;
    }
    std::free(p);
    return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
    *a = cudaPointerAttributes{};
    if (emu::pinned(p)) {
        a->type = cudaMemoryTypeHost;
        a->hostPointer = const_cast<void*>(p);
    }
    return cudaSuccess;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

using std::max;
using std::min;

namespace emu {
class Barrier;
// What a CUDA thread reads about itself.  All fibers run on the launching OS thread, so these
// are set by the scheduler before it resumes a fiber (thread_local: Python threads may launch
// at once; launches are serialised by g_launch_mu, each runs its fibers on its own thread).
inline thread_local dim3 tl_thread, tl_block;
inline thread_local Barrier* tl_block_barrier = nullptr;
inline thread_local Barrier* tl_warp_barrier = nullptr;
inline thread_local float* tl_warp_slots = nullptr;
// Per warp, two areas of 64 bytes per lane for the warp-collective instructions of
// tests/cuda_emu/ptx.cuh (ldmatrix hands rows between lanes, mma.sync gathers the warp's
// fragments); consecutive instructions alternate between the two (see ptx.cuh).
constexpr unsigned kXchgBytes = 64;
inline thread_local unsigned char* tl_warp_xchg = nullptr;
inline thread_local unsigned tl_lane = 0;
inline thread_local unsigned tl_tid = 0;  // the linear thread index in the block: the slot of per-thread state
inline thread_local unsigned tl_warp_size = 32;  // lanes in this thread's warp (fewer in a partial last warp)
inline thread_local unsigned long long tl_block_serial = 0;  // changes with every block run
inline std::atomic<unsigned long long> g_block_serial{0};
inline dim3 g_grid, g_block;
inline std::mutex g_launch_mu;  // one launch at a time (one grid): Python threads may launch at once

// Switching between fibers.  On x86-64 a dozen instructions (save the callee-saved registers
// and the SSE/x87 control words on the old stack, load the new stack pointer, restore): ~10 ns,
// where glibc's swapcontext makes a system call each time (~0.4 us here, most of a test's time).
// Elsewhere, ucontext.
#if defined(__x86_64__)
// emu_fiber_switch(&save_sp, new_sp): saves this context on its stack, *save_sp = its stack
// pointer, and continues the context saved at new_sp.  (Weak: every file including emu.h has it.)
extern "C" void emu_fiber_switch(void** save_sp, void* new_sp);
asm(R"(
    .text
    .weak emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch
)");
struct Context {
    void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { emu_fiber_switch(&from.sp, to.sp); }
// A new context that starts in start() (which must never return) on the stack [lo, lo + size).
inline void make_context(Context& c, char* lo, std::size_t size, void (*start)()) {
    auto* top = reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::uintptr_t>(lo + size) & ~std::uintptr_t(15));
    std::uint32_t csr[2];
    asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
    // from the stack pointer up, what emu_fiber_switch pops: the control words, r15 .. rbp, and
    // the address it returns to (start, entered as if called: rsp % 16 == 8)
    top[-1] = 0;
    top[-2] = reinterpret_cast<std::uint64_t>(start);
    for (int r = 3; r <= 8; ++r) top[-r] = 0;
    std::memcpy(&top[-9], csr, 8);
    c.sp = &top[-9];
}
#else
struct Context {
    ucontext_t uc{};
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* lo, std::size_t size, void (*start)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, start, 0);
}
#endif

// The fibers of one block, and the scheduler that runs them: a queue of the fibers ready to run.
// A fiber leaves it when it waits at a barrier and is put back, in arrival order, when the last
// thread arrives.  Stacks are made once (mmap, a guard page below each) and reused.
class Fibers {
  public:
    static constexpr std::size_t kStack = 256 * 1024;
    static Fibers& here() {
        thread_local Fibers f;
        return f;
    }
    ~Fibers() {
        for (char* s : stacks_) munmap(s, kStack + kGuard);
    }
    // Runs body() as threads 0 .. nt-1 of one block; setup(t) sets thread t's thread_locals.
    template <typename Body, typename Setup>
    void run_block(unsigned nt, Body& body, Setup& setup) {
        while (stacks_.size() < nt) stacks_.push_back(new_stack());
        ctx_.resize(nt);
        done_ = 0;
        body_ = [&body] { body(); };
        for (unsigned t = 0; t < nt; ++t) {
            make_context(ctx_[t], stacks_[t] + kGuard, kStack, &Fibers::entry);
            ready_.push_back(t);
        }
        while (done_ < nt) {
            if (ready_.empty()) {
                std::fprintf(stderr, "emulated kernel: %u of %u threads of block (%u,%u,%u) wait at a barrier "
                             "the others never reach (a __syncthreads or warp collective in divergent code)\n",
                             nt - done_, nt, tl_block.x, tl_block.y, tl_block.z);
                std::abort();
            }
            current_ = ready_.front();
            ready_.pop_front();
            setup(current_);
            switch_to(sched_, ctx_[current_]);  // back here when the fiber waits or is done
        }
    }
    unsigned current() const { return current_; }
    void make_ready(unsigned t) { ready_.push_back(t); }
    void yield() { switch_to(ctx_[current_], sched_); }  // to the scheduler; resumed once ready again

  private:
    static constexpr std::size_t kGuard = 4096;
    [[noreturn]] static void entry() {
        Fibers& f = here();
        f.body_();
        ++f.done_;
        switch_to(f.ctx_[f.current_], f.sched_);  // never resumed: its context is made anew per block
        std::abort();
    }
    static char* new_stack() {
        void* p = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) { std::perror("emu: mmap of a fiber stack"); std::abort(); }
        mprotect(p, kGuard, PROT_NONE);  // a kernel that overflows its stack faults here, not in another's
        return static_cast<char*>(p);
    }
    Context sched_{};
    std::vector<Context> ctx_;
    std::vector<char*> stacks_;
    std::deque<unsigned> ready_;
    std::function<void()> body_;
    unsigned current_ = 0, done_ = 0;
};

// __syncthreads (the whole block) and the warp collectives (one warp): the last thread to arrive
// releases the others, in the order they arrived, and runs on.
class Barrier {
  public:
    explicit Barrier(unsigned expected) : expected_(expected) { waiting_.reserve(expected); }
    void arrive_and_wait() {
        Fibers& f = Fibers::here();
        if (waiting_.size() + 1 == expected_) {
            for (unsigned t : waiting_) f.make_ready(t);
            waiting_.clear();
            return;
        }
        waiting_.push_back(f.current());
        f.yield();
    }

  private:
    unsigned expected_;
    std::vector<unsigned> waiting_;
};

// Runs f() as every thread of every block of the grid, blocks one at a time (shared memory is
// a static array): each block's threads are fibers on this OS thread.
template <typename F>
void launch(dim3 grid, dim3 block, F f) {
    std::lock_guard<std::mutex> serial(g_launch_mu);
    drain();  // the queued copies come first in stream order
    g_grid = grid;
    g_block = block;
    const unsigned nt = block.x * block.y * block.z;
    const unsigned nwarps = (nt + 31) / 32;
    if (nt == 0 || nt > 1024) { std::fprintf(stderr, "bad block size %u\n", nt); std::abort(); }
    std::vector<float> slots(nwarps * 32);
    std::vector<unsigned char> xchg(std::size_t(nwarps) * 2 * 32 * kXchgBytes);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                Barrier block_barrier(nt);  // new per block: a block that aborts leaves no waiter behind
                std::vector<Barrier> warp_barriers;
                warp_barriers.reserve(nwarps);
                for (unsigned w = 0; w < nwarps; ++w) warp_barriers.emplace_back(std::min(32u, nt - 32 * w));
                tl_block = dim3(bx, by, bz);
                tl_block_serial = ++g_block_serial;
                tl_block_barrier = &block_barrier;
                auto setup = [&](unsigned t) {
                    tl_thread = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                    tl_tid = t;
                    tl_warp_barrier = &warp_barriers[t / 32];
                    tl_warp_slots = &slots[(t / 32) * 32];
                    tl_warp_xchg = &xchg[std::size_t(t / 32) * 2 * 32 * kXchgBytes];
                    tl_lane = t % 32;
                    tl_warp_size = std::min(32u, nt - 32 * (t / 32));
                };
                Fibers::here().run_block(nt, f, setup);
            }
}
// A launch as written in the sources (build_emulated.py rewrites kernel<<<g, b, smem, stream>>>(args)
// to this): run now, or recorded while `stream` is being captured.
template <typename F>
void launch_on(cudaStream_t stream, dim3 grid, dim3 block, F f) {
    if (auto* c = capturing(stream)) {
        c->nodes.push_back([=] { launch(grid, block, f); });
        return;
    }
    launch(grid, block, f);
}
}  // namespace emu

inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (e == nullptr) return cudaErrorInvalidValue;
    if (emu::capturing(s)) return cudaErrorStreamCaptureUnsupported;
    for (auto& node : e->nodes) node();
    return cudaSuccess;
}

#define threadIdx (emu::tl_thread)
#define blockIdx (emu::tl_block)
#define blockDim (emu::g_block)
#define gridDim (emu::g_grid)

inline void __syncthreads() { emu::tl_block_barrier->arrive_and_wait(); }

inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// Every lane of the warp must call it (as in the kernels here).
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    emu::tl_warp_slots[emu::tl_lane] = v;
    emu::tl_warp_barrier->arrive_and_wait();
    const float r = emu::tl_warp_slots[emu::tl_lane ^ static_cast<unsigned>(lane_mask)];
    emu::tl_warp_barrier->arrive_and_wait();
    return r;
}
