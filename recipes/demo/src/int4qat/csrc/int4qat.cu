// Group-wise int4 fake quantisation (the demo miniature of slime's int4_qat kernel).
//
// For each group of `group_size` consecutive float32 values (the last group may be shorter):
//   amax  = max |x|                      (exact)
//   scale = amax / 7.0f                  (IEEE float32 division, round to nearest even)
//   if scale == 0: out = +0.0 for the whole group
//   q     = roundf(x / scale)            (IEEE division; roundf = round half AWAY from zero)
//   q     = clamp(q, -8, 7)
//   out   = q * scale                    (one float32 multiply)
//
// Every step is a single correctly rounded float32 operation (no fast math, no FMA can form:
// there is no add), so the pure-Python reference in int4qat/__init__.py reproduces the result
// bit for bit. Inputs are expected to be finite; NaN/Inf give unspecified (but deterministic)
// values.
//
// Layout: one warp per group; lanes stride over the group, the max is reduced with warp
// shuffles (max is exact and order independent, so the result does not depend on the
// reduction order). Groups of any size >= 1 work; in-place use (d_in == d_out) is allowed.

#include <cuda_runtime.h>

// A named namespace on purpose: an anonymous namespace gets an internal name derived from the
// source file's absolute path, which makes the cubins depend on the build directory.
namespace int4qat_detail {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

__global__ void int4qat_fake_quant_kernel(const float* in, float* out, long long n,
                                          int group_size, long long n_groups) {
    const int lane = threadIdx.x % kWarp;
    const long long warp_global =
        (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
    const long long warp_stride = (long long)gridDim.x * kWarpsPerBlock;

    for (long long g = warp_global; g < n_groups; g += warp_stride) {
        const long long begin = g * (long long)group_size;
        long long end = begin + group_size;
        if (end > n) end = n;

        float amax = 0.0f;
        for (long long i = begin + lane; i < end; i += kWarp) {
            const float a = fabsf(in[i]);
            amax = a > amax ? a : amax;
        }
#pragma unroll
        for (int offset = kWarp / 2; offset > 0; offset /= 2) {
            const float other = __shfl_xor_sync(0xffffffffu, amax, offset);
            amax = other > amax ? other : amax;
        }

        const float scale = __fdiv_rn(amax, 7.0f);
        for (long long i = begin + lane; i < end; i += kWarp) {
            float r;
            if (scale == 0.0f) {
                r = 0.0f;
            } else {
                float q = roundf(__fdiv_rn(in[i], scale));
                q = q < -8.0f ? -8.0f : (q > 7.0f ? 7.0f : q);
                r = __fmul_rn(q, scale);
            }
            out[i] = r;
        }
    }
}

}  // namespace int4qat_detail

using int4qat_detail::int4qat_fake_quant_kernel;
using int4qat_detail::kWarp;
using int4qat_detail::kWarpsPerBlock;

extern "C" {

// Launch on `stream` (a cudaStream_t, or NULL for the default stream); d_in/d_out are device
// pointers. Returns a cudaError_t (0 = success). Asynchronous: errors of the kernel itself show
// up at the next synchronisation.
int int4qat_fake_quant(const float* d_in, float* d_out, long n, int group_size, void* stream) {
    if (n < 0 || group_size <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return (int)cudaSuccess;
    const long long n_groups = ((long long)n + group_size - 1) / group_size;
    long long blocks = (n_groups + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // grid-stride loop covers the rest
    int4qat_fake_quant_kernel<<<(unsigned)blocks, kWarpsPerBlock * kWarp, 0,
                                (cudaStream_t)stream>>>(d_in, d_out, (long long)n, group_size,
                                                        n_groups);
    return (int)cudaGetLastError();
}

// Host-memory convenience for tests (ctypes, no torch): copies in, runs, copies back.
int int4qat_fake_quant_host(const float* h_in, float* h_out, long n, int group_size) {
    if (n < 0 || group_size <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return (int)cudaSuccess;
    const size_t bytes = (size_t)n * sizeof(float);
    float* d_in = nullptr;
    float* d_out = nullptr;
    cudaError_t err = cudaMalloc((void**)&d_in, bytes);
    if (err == cudaSuccess) err = cudaMalloc((void**)&d_out, bytes);
    if (err == cudaSuccess) err = cudaMemcpy(d_in, h_in, bytes, cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = (cudaError_t)int4qat_fake_quant(d_in, d_out, n, group_size, nullptr);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err == cudaSuccess) err = cudaMemcpy(h_out, d_out, bytes, cudaMemcpyDeviceToHost);
    if (d_out) cudaFree(d_out);
    if (d_in) cudaFree(d_in);
    return (int)err;
}

// Number of visible CUDA devices (0 when there is no driver or no GPU); returns a cudaError_t.
int int4qat_device_count(int* count) {
    int c = 0;
    cudaError_t err = cudaGetDeviceCount(&c);
    *count = err == cudaSuccess ? c : 0;
    return (int)err;
}

const char* int4qat_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

}  // extern "C"
