// dispatch.cu -- the entry point of the CUDA ladder: gemm(rung, args)
// handles what no rung should repeat (empty matrices, k == 0, alpha == 0,
// which operands may use float4 accesses) and calls the rung's launcher.
#include <cstdint>

#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

// C = beta * C over an (m, n) matrix (+ the epilogue); beta == 0 writes zeros without reading C.
__global__ void scale_c_kernel(GemmArgs g) {
    const long long total = (long long)g.m * g.n;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(e % g.n);
        float* cij = g.c + (e / g.n) * g.ldc + j;
        *cij = detail::epilogue(g, j, (g.beta == 0.f) ? 0.f : g.beta * *cij);
    }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

const char* rung_name(int rung) {
    switch (rung) {
        case kNaive: return "cuda_naive";
        case kCoalesced: return "cuda_coalesced";
        case kSmem: return "cuda_smem";
        case k1DTiling: return "cuda_1d_tiling";
        case k2DTiling: return "cuda_2d_tiling";
        case kVectorized: return "cuda_vectorized";
        case kWarptile: return "cuda_warptile";
        case kMma: return "cuda_mma";
        case kWgmma: return "cuda_wgmma";
        default: return nullptr;
    }
}

cudaError_t gemm(int rung, GemmArgs g, cudaStream_t stream) {
    if (rung_name(rung) == nullptr || g.m < 0 || g.n < 0 || g.k < 0) return cudaErrorInvalidValue;
    if (rung < kMma && g.precision != kFloat32) return cudaErrorInvalidValue;  // rung_unavailable() says why
    if (g.m == 0 || g.n == 0) return cudaSuccess;
    if (g.k == 0 || g.alpha == 0.f) {  // BLAS: A and B are not read
        if (g.beta == 1.f && g.bias == nullptr && !g.relu) return cudaSuccess;
        const long long total = (long long)g.m * g.n;
        const long long blocks = total / 256 + 1;
        scale_c_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(g);
        return cudaGetLastError();
    }
    g.vec_a = aligned16(g.a) && g.lda % 4 == 0;
    g.vec_b = aligned16(g.b) && g.ldb % 4 == 0;
    g.vec_c = aligned16(g.c) && g.ldc % 4 == 0;
    switch (rung) {
        case kNaive: return launch_naive(g, stream);
        case kCoalesced: return launch_coalesced(g, stream);
        case kSmem: return launch_smem(g, stream);
        case k1DTiling: return launch_1d_tiling(g, stream);
        case k2DTiling: return launch_2d_tiling(g, stream);
        case kVectorized: return launch_vectorized(g, stream);
        case kWarptile: return launch_warptile(g, stream);
        case kMma:
        case kWgmma: return tensor_core_gemm(rung, g, stream);  // tensor_core.cu: operands first
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace gpu
}  // namespace whygpu
