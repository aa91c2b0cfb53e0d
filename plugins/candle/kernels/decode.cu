// Fused CUDA kernels for generating one token with the dense llama (src/dense_llama.rs).
//
// At batch 1 candle spends 5-8 us of CPU on every elementwise op and ~16 us on every cuBLAS
// call, more than the GPU needs for most of them, so a token's speed is set by how many ops
// it launches. These kernels replace groups of candle ops for one token:
//   gemv_*     y = W x for one row of activations (cuBLAS GEMM: ~16 us of CPU per call)
//   rope_qkv_* the q/k/v projection cast to F32, RoPE on q and k, q scaled (5 ops)
//   swiglu_*   silu(gate) * up (2 ops)
// Every sum accumulates in F32. Built to PTX by build.rs with the `cuda` feature.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// y[row] = sum_k w[row, k] * x[k]. One warp per row, 16-byte loads: k % 8 == 0 and both
// pointers 16-byte aligned (the caller checks).
template <typename T>
__device__ void gemv(const T *__restrict__ w, const T *__restrict__ x, T *__restrict__ y,
                     uint32_t rows, uint32_t k) {
    const uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (row >= rows) return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)row * k);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x);
    const uint32_t chunks = k / 8;
    float acc = 0.0f;
#pragma unroll 4
    for (uint32_t c = lane; c < chunks; c += 32) {
        const uint4 wv = wr[c];
        const uint4 xx = xv[c];
        const T *wp = reinterpret_cast<const T *>(&wv);
        const T *xp = reinterpret_cast<const T *>(&xx);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += to_f(wp[i]) * to_f(xp[i]);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = from_f<T>(acc);
}

// qkv: one token's projection, [(heads + 2 kv_heads) * d] in T: q heads, k heads, v heads.
// out: [(heads + 2 kv_heads) * d] F32: q rotated and multiplied by q_scale, k rotated, v
// as is. cos/sin: [d / 2] F32 for this token's position. RoPE in the half-split layout:
// (x[i], x[i + d/2]) -> (x[i] c - x[i + d/2] s, x[i] s + x[i + d/2] c).
template <typename T>
__device__ void rope_qkv(const T *__restrict__ qkv, const float *__restrict__ cos,
                         const float *__restrict__ sin, float *__restrict__ out, uint32_t heads,
                         uint32_t kv_heads, uint32_t d, float q_scale) {
    const uint32_t half = d / 2;
    const uint32_t pairs = (heads + kv_heads) * half;
    const uint32_t total = pairs + kv_heads * d;
    for (uint32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        if (idx < pairs) {
            const uint32_t head = idx / half, i = idx % half;
            const size_t base = (size_t)head * d;
            const float x0 = to_f(qkv[base + i]), x1 = to_f(qkv[base + i + half]);
            const float c = cos[i], s = sin[i];
            const float scale = head < heads ? q_scale : 1.0f;
            out[base + i] = (x0 * c - x1 * s) * scale;
            out[base + i + half] = (x0 * s + x1 * c) * scale;
        } else {
            const size_t j = (size_t)(heads + kv_heads) * d + (idx - pairs);
            out[j] = to_f(qkv[j]);
        }
    }
}

// gate_up: [2 * ffn] (gate, then up) -> out[i] = silu(gate[i]) * up[i].
template <typename T>
__device__ void swiglu(const T *__restrict__ gate_up, T *__restrict__ out, uint32_t ffn) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < ffn; i += gridDim.x * blockDim.x) {
        const float g = to_f(gate_up[i]), u = to_f(gate_up[ffn + i]);
        out[i] = from_f<T>(g / (1.0f + expf(-g)) * u);
    }
}

#define DECODE_KERNELS(SUFFIX, T)                                                            \
    extern "C" __global__ void gemv_##SUFFIX(const T *w, const T *x, T *y, uint32_t rows,      \
                                             uint32_t k) {                                   \
        gemv<T>(w, x, y, rows, k);                                                           \
    }                                                                                        \
    extern "C" __global__ void rope_qkv_##SUFFIX(const T *qkv, const float *cos,              \
                                                 const float *sin, float *out, uint32_t heads, \
                                                 uint32_t kv_heads, uint32_t d,              \
                                                 float q_scale) {                            \
        rope_qkv<T>(qkv, cos, sin, out, heads, kv_heads, d, q_scale);                        \
    }                                                                                        \
    extern "C" __global__ void swiglu_##SUFFIX(const T *gate_up, T *out, uint32_t ffn) {      \
        swiglu<T>(gate_up, out, ffn);                                                        \
    }

DECODE_KERNELS(f16, __half)
DECODE_KERNELS(bf16, __nv_bfloat16)
