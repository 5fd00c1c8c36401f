// tensor_core.cu -- what the tensor-core rungs (15_mma.cu, 16_wgmma.cu) share:
// which precision each computes in, whether the GPU has it, and the operand
// preparation that lets their inner loops assume one layout.
//
// Tensor cores want both operands K-major (the k index contiguous: A as
// (m, k), B as (n, k)), with 16-byte aligned rows, in their own element
// type.  A dense layer's three GEMMs (Y = X W^T, dX = dY W, dW = dY^T X)
// store at least one operand the other way, and float32 data has to be
// rounded to bfloat16 before a bf16 tensor core can read it.  So before the
// launch, an operand that is not already usable is rewritten once into a
// stream-ordered scratch buffer: rounded to bf16 (always, for bf16 -- the
// step an autocast makes), transposed through shared memory when it is
// stored the other way, its rows padded to a multiple of 16 bytes.  That is
// O(mk + nk) memory traffic in front of O(mnk) arithmetic.  TF32 reads
// float32 data as it is whenever the layout allows.
#include <cstdint>
#include <cstdio>
#include <string>

#include "common.cuh"

namespace whygpu {
namespace gpu {
namespace {

// float32 -> bfloat16 bits, round to nearest even (what __float2bfloat16_rn does),
// NaN kept a (quiet) NaN.
__device__ __forceinline__ uint16_t float_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
__device__ __forceinline__ uint16_t convert(float v, uint16_t*) { return float_to_bf16(v); }
__device__ __forceinline__ float convert(float v, float*) { return v; }

// d[r * ldd + p] = X[r, p] for r < rows, p < k: the K-major copy of an operand.
// X[r, p] is x[r * ld + p] when `kmajor`, else x[p * ld + r].  A 32 x 32 tile
// goes through shared memory so that both the reads (along x's rows) and the
// writes (along d's rows) are coalesced, whichever way x is stored.  Block 32 x 8.
template <typename T>
__global__ void to_kmajor_kernel(const float* __restrict__ x, long long ld, bool kmajor, int rows, int k,
                                 T* __restrict__ d, long long ldd) {
    __shared__ float tile[32][33];  // tile[r][p]; 33: a column walk hits 32 different banks
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int p0 = blockIdx.x * 32;
    for (int r0 = blockIdx.y * 32; r0 < rows; r0 += gridDim.y * 32) {  // gridDim.y is at most 65535
        for (int q = ty; q < 32; q += 8) {
            if (kmajor) {  // consecutive threads: consecutive p
                const int r = r0 + q, p = p0 + tx;
                tile[q][tx] = (r < rows && p < k) ? x[(long long)r * ld + p] : 0.f;
            } else {       // consecutive threads: consecutive r
                const int r = r0 + tx, p = p0 + q;
                tile[tx][q] = (r < rows && p < k) ? x[(long long)p * ld + r] : 0.f;
            }
        }
        __syncthreads();
        for (int q = ty; q < 32; q += 8) {
            const int r = r0 + q, p = p0 + tx;
            if (r < rows && p < k) d[(long long)r * ldd + p] = convert(tile[q][tx], d);
        }
        __syncthreads();  // the tile is reused by the next r0
    }
}

template <typename T>
cudaError_t to_kmajor(const float* x, long long ld, bool kmajor, int rows, int k, T* d, long long ldd,
                      cudaStream_t stream) {
    const long long bx = detail::ceil_div(k, 32), by = detail::ceil_div(rows, 32);
    to_kmajor_kernel<T><<<dim3((unsigned)bx, (unsigned)(by < 65535 ? by : 65535)), dim3(32, 8), 0, stream>>>(
        x, ld, kmajor, rows, k, d, ldd);
    return cudaGetLastError();
}

const char* precision_name(int p) {
    return p == kFloat32 ? "float32" : p == kTF32 ? "tf32" : p == kBF16 ? "bf16" : "an unknown precision";
}

}  // namespace

int default_precision(int rung) {
    return rung == kMma ? kTF32 : rung == kWgmma ? kBF16 : kFloat32;
}

const char* rung_unavailable(int rung, int precision) {
    thread_local std::string why;  // per thread: callers on several threads do not share it
    const char* name = rung_name(rung);
    if (name == nullptr) return "no such CUDA rung";
    if (rung < kMma) {
        if (precision == kFloat32) return nullptr;
        why = std::string(name) + " computes in float32 only (ordinary FMA units); " +
              precision_name(precision) + " products need a tensor-core rung: cuda_mma or cuda_wgmma";
        return why.c_str();
    }
    if (rung == kMma && precision != kTF32 && precision != kBF16) {
        why = std::string("cuda_mma computes on tensor cores in tf32 or bf16, not ") + precision_name(precision);
        return why.c_str();
    }
    if (rung == kWgmma && precision != kBF16) {
        why = std::string("cuda_wgmma computes in bf16 only, not ") + precision_name(precision);
        return why.c_str();
    }
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        cudaGetLastError();
        return "no usable CUDA device";
    }
    if (major < 8) {
        why = std::string(name) + " needs tensor cores with bf16/TF32 (compute capability 8.0, Ampere, or newer); "
              "this GPU is " + std::to_string(major) + "." + std::to_string(minor);
        return why.c_str();
    }
    if (rung == kWgmma) return wgmma_unavailable();
    return nullptr;
}

cudaError_t tensor_core_gemm(int rung, const GemmArgs& g, cudaStream_t stream) {
    if (rung_unavailable(rung, g.precision) != nullptr) return cudaErrorInvalidValue;
    const bool bf16 = g.precision == kBF16;
    const long long es = bf16 ? 2 : 4;                  // bytes per element
    const long long ldk = (g.k + 16 / es - 1) / (16 / es) * (16 / es);  // rows padded to 16 bytes
    // Usable as stored: TF32 reads float32, K-major, 16-byte aligned rows (gemm() set vec_*).
    const bool keep_a = !bf16 && !g.trans_a && g.vec_a;
    const bool keep_b = !bf16 && g.trans_b && g.vec_b;

    TcArgs t;
    t.g = g;
    t.a = g.a; t.lda = g.lda;
    t.b = g.b; t.ldb = g.ldb;
    const std::size_t a_bytes = keep_a ? 0 : ((std::size_t)g.m * ldk * es + 255) / 256 * 256;
    const std::size_t b_bytes = keep_b ? 0 : (std::size_t)g.n * ldk * es;
    unsigned char* ws = nullptr;
    if (a_bytes + b_bytes > 0) {
        // Stream-ordered (as split-k's workspace): allocated, used and freed in issue order.
        const cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&ws), a_bytes + b_bytes, stream);
        if (e != cudaSuccess) return e;
    }
    cudaError_t e = cudaSuccess;
    if (!keep_a) {  // op(A) is K-major when A is stored (m, k): not trans_a
        t.a = ws; t.lda = ldk;
        e = bf16 ? to_kmajor(g.a, g.lda, !g.trans_a, g.m, g.k, reinterpret_cast<uint16_t*>(ws), ldk, stream)
                 : to_kmajor(g.a, g.lda, !g.trans_a, g.m, g.k, reinterpret_cast<float*>(ws), ldk, stream);
    }
    if (e == cudaSuccess && !keep_b) {  // op(B)^T is K-major when B is stored (n, k): trans_b
        unsigned char* wb = ws + a_bytes;
        t.b = wb; t.ldb = ldk;
        e = bf16 ? to_kmajor(g.b, g.ldb, g.trans_b, g.n, g.k, reinterpret_cast<uint16_t*>(wb), ldk, stream)
                 : to_kmajor(g.b, g.ldb, g.trans_b, g.n, g.k, reinterpret_cast<float*>(wb), ldk, stream);
    }
    if (e == cudaSuccess) e = rung == kWgmma ? launch_wgmma(t, stream) : launch_mma(t, stream);
    if (ws != nullptr) {
        const cudaError_t f = cudaFreeAsync(ws, stream);
        if (e == cudaSuccess) e = f;
    }
    return e;
}

}  // namespace gpu
}  // namespace whygpu
