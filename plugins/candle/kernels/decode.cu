// Fused CUDA kernels for generating one token with the dense llama (src/dense_llama.rs).
//
// At batch 1 candle spends 5-8 us of CPU on every elementwise op and ~16 us on every cuBLAS
// call, more than the GPU needs for most of them, so a token's speed is set by how many ops
// it launches. These kernels replace groups of candle ops for one token:
//   gemv_*             y = W x for one row of activations (cuBLAS GEMM: ~16 us of CPU per call)
//   decode_attention_* RoPE of q and k, the KV-cache append and the attention of one query
//                      head over the cache (cast, RoPE, two copies, two cuBLAS batched
//                      matmuls, softmax and a cast: 8 ops); past 1024 positions split
//                      over blocks and joined by decode_attention_combine_*
//   add_rms_norm_*     the residual add and the next RMS norm (2 ops)
//   swiglu_*           silu(gate) * up (2 ops; also at prefill, one row per prompt token)
//   causal_softmax_f32 prefill only: the causal mask and the softmax of the F32 attention
//                      scores in one pass (candle: a broadcast add and a softmax)
//   argmax_*           the greedy choice over the logits, so 4 bytes come back to the CPU
//                      instead of the whole vocabulary's logits (a cast, a 0.5 MB copy and
//                      a scan on the CPU at a 128k vocabulary)
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

// The sum (or max) of `v` over the block; every thread gets it. `red` holds 32 floats.
// Starts and ends with a barrier, so `red` and any shared data written before are safe.
template <bool MAX>
__device__ float block_reduce(float v, float *red) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    const uint32_t warps = blockDim.x / 32;
    __syncthreads();
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float all = red[0];
    for (uint32_t w = 1; w < warps; ++w) all = MAX ? fmaxf(all, red[w]) : all + red[w];
    __syncthreads();
    return all;
}

// Threads per block of decode_attention, and positions scored per pass (online softmax
// across passes, so any length fits in shared memory).
#define ATTN_THREADS 1024
#define ATTN_CHUNK 2048

// One generated token's attention; block `h` computes query head h, head size D.
//   qkv:   [(heads + 2 kv_heads) * D] in T, this token's projection: q heads, k heads, v heads.
//   rope:  [D] F32: cos then sin of this position (D / 2 each), half-split RoPE layout:
//          (x[i], x[i + D/2]) -> (x[i] c - x[i + D/2] s, x[i] s + x[i + D/2] c).
//   cache: [2, kv_heads, cap, D] F32, K then V; positions < pos hold the sequence so far.
//          The first query head of each KV group writes this token's rotated k and its v at
//          `pos`; no block reads that row (they use their own copy in shared memory), so
//          there is no race.
//   out:   [heads * D] in T: softmax(q k^T) v, q rotated and multiplied by q_scale.
// The time goes to waiting on memory, so each thread keeps many loads in flight: a score is
// one thread's dot product of a whole K row (D / 4 float4 loads, unrolled), and the weighted
// sum of V gives each thread 4 dimensions of every (ATTN_THREADS / (D / 4))-th position.
//
// Long contexts split the positions over blockIdx.y (flash decoding): block (h, s) takes
// positions [s * span, (s + 1) * span) and, when gridDim.y > 1, writes its partial result to
// `partial` ([heads, splits, D + 2] F32: the unnormalised sum, its max score and its sum of
// weights) for decode_attention_combine; with one split it writes `out` itself.
template <typename T, int D>
__device__ void decode_attention(const T *__restrict__ qkv, const float *__restrict__ rope,
                                 float *__restrict__ cache, T *__restrict__ out,
                                 float *__restrict__ partial, uint32_t heads, uint32_t kv_heads,
                                 uint32_t cap, uint32_t pos, uint32_t span, float q_scale) {
    constexpr uint32_t HALF = D / 2, LANES = D / 4, GROUPS = ATTN_THREADS / LANES;
    __shared__ __align__(16) float q[D];
    __shared__ __align__(16) float k_new[D];
    __shared__ __align__(16) float v_new[D];
    __shared__ float red[32];
    __shared__ __align__(16) float part[GROUPS * D];
    __shared__ float scores[ATTN_CHUNK];
    const uint32_t head = blockIdx.x, tid = threadIdx.x;
    const uint32_t group = heads / kv_heads, kv = head / group;
    const T *qh = qkv + (size_t)head * D;
    const T *kh = qkv + (size_t)(heads + kv) * D;
    const T *vh = qkv + (size_t)(heads + kv_heads + kv) * D;
    if (tid < HALF) {
        const float c = rope[tid], s = rope[HALF + tid];
        const float q0 = to_f(qh[tid]), q1 = to_f(qh[tid + HALF]);
        q[tid] = (q0 * c - q1 * s) * q_scale;
        q[tid + HALF] = (q0 * s + q1 * c) * q_scale;
        const float k0 = to_f(kh[tid]), k1 = to_f(kh[tid + HALF]);
        k_new[tid] = k0 * c - k1 * s;
        k_new[tid + HALF] = k0 * s + k1 * c;
    }
    if (tid < D) v_new[tid] = to_f(vh[tid]);
    __syncthreads();
    float *keys = cache + (size_t)kv * cap * D;
    float *values = cache + (size_t)(kv_heads + kv) * cap * D;
    if (head % group == 0 && blockIdx.y == 0 && tid < D) {
        keys[(size_t)pos * D + tid] = k_new[tid];
        values[(size_t)pos * D + tid] = v_new[tid];
    }
    const float4 *q4 = reinterpret_cast<const float4 *>(q);
    // Thread (g, lane) sums dimensions 4 lane .. 4 lane + 3 over positions g, g + GROUPS, ...
    const uint32_t g = tid / LANES, lane = tid % LANES;
    const uint32_t first = blockIdx.y * span, end = min(pos + 1, first + span);
    float best = -INFINITY, total = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (uint32_t start = first; start < end; start += ATTN_CHUNK) {
        const uint32_t n = min(ATTN_CHUNK, end - start);
        float local = -INFINITY;
        for (uint32_t p = tid; p < n; p += ATTN_THREADS) {
            const uint32_t at = start + p;
            const float4 *k4 =
                reinterpret_cast<const float4 *>(at == pos ? k_new : keys + (size_t)at * D);
            float s = 0.0f;
#pragma unroll
            for (uint32_t i = 0; i < LANES; ++i) {
                const float4 kk = k4[i], qq = q4[i];
                s += kk.x * qq.x + kk.y * qq.y + kk.z * qq.z + kk.w * qq.w;
            }
            scores[p] = s;
            local = fmaxf(local, s);
        }
        const float next = fmaxf(best, block_reduce<true>(local, red));
        local = 0.0f;
        for (uint32_t p = tid; p < n; p += ATTN_THREADS) {
            const float e = expf(scores[p] - next);
            scores[p] = e;
            local += e;
        }
        // exp(-inf) = 0 on the first pass: nothing to rescale yet.
        const float rescale = expf(best - next);
        total = total * rescale + block_reduce<false>(local, red);
        acc.x *= rescale, acc.y *= rescale, acc.z *= rescale, acc.w *= rescale;
        best = next;
#pragma unroll 8
        for (uint32_t p = g; p < n; p += GROUPS) {
            const uint32_t at = start + p;
            const float4 v = *reinterpret_cast<const float4 *>(
                (at == pos ? v_new : values + (size_t)at * D) + 4 * lane);
            const float w = scores[p];
            acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
        }
        __syncthreads();
    }
    reinterpret_cast<float4 *>(part)[tid] = acc;
    __syncthreads();
    if (tid < D) {
        // Dimension tid sits in lane tid / 4, component tid % 4, of every group.
        float sum = 0.0f;
        for (uint32_t r = 0; r < GROUPS; ++r) sum += part[r * D + tid];
        if (gridDim.y == 1) {
            out[(size_t)head * D + tid] = from_f<T>(sum / total);
        } else {
            float *mine = partial + ((size_t)head * gridDim.y + blockIdx.y) * (D + 2);
            mine[tid] = sum;
            if (tid == 0) mine[D] = best, mine[D + 1] = total;
        }
    }
}

// Joins decode_attention's partial results of `splits` position ranges: block h, thread d.
// Each range's sum and weights are rescaled from its own max score to the overall one.
template <typename T, int D>
__device__ void decode_attention_combine(const float *__restrict__ partial, T *__restrict__ out,
                                         uint32_t splits) {
    const uint32_t head = blockIdx.x, d = threadIdx.x;
    const float *rows = partial + (size_t)head * splits * (D + 2);
    float best = -INFINITY;
    for (uint32_t s = 0; s < splits; ++s) best = fmaxf(best, rows[s * (D + 2) + D]);
    float sum = 0.0f, total = 0.0f;
    for (uint32_t s = 0; s < splits; ++s) {
        const float *row = rows + s * (D + 2);
        const float scale = expf(row[D] - best);
        sum += row[d] * scale;
        total += row[D + 1] * scale;
    }
    out[(size_t)head * D + d] = from_f<T>(sum / total);
}

// out[0..n] = x + delta (rounded to T, as candle's add), out[n..2n] = RMS norm of that sum
// times w. One block.
template <typename T>
__device__ void add_rms_norm(const T *__restrict__ x, const T *__restrict__ delta,
                             const T *__restrict__ w, T *__restrict__ out, uint32_t n, float eps) {
    __shared__ float red[32];
    float squares = 0.0f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const T sum = from_f<T>(to_f(x[i]) + to_f(delta[i]));
        out[i] = sum;
        const float f = to_f(sum);
        squares += f * f;
    }
    const float scale = rsqrtf(block_reduce<false>(squares, red) / n + eps);
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        out[n + i] = from_f<T>(to_f(out[i]) * scale * to_f(w[i]));
}

// gate_up: [rows, 2 * ffn] (each row: gate, then up) -> out[r, i] = silu(gate[r, i]) * up[r, i],
// for `total` = rows * ffn outputs (one row when generating, the prompt's rows at prefill).
template <typename T>
__device__ void swiglu(const T *__restrict__ gate_up, T *__restrict__ out, uint32_t ffn,
                       uint32_t total) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const uint32_t row = i / ffn, col = i - row * ffn;
        const T *in = gate_up + (size_t)row * 2 * ffn;
        const float g = to_f(in[col]), u = to_f(in[ffn + col]);
        out[i] = from_f<T>(g / (1.0f + expf(-g)) * u);
    }
}

// Causal softmax of attention scores at prefill, in place of candle's mask add + softmax
// (two passes over the [rows, len] scores, the add with broadcast index arithmetic: 2.4 ms of
// a 386-token prompt on an H100 for the 1B model). Row r is query i = r % t of a prompt chunk
// at positions pos..pos + t, which sees keys 0..=pos + i; later keys get 0. One warp per row.
extern "C" __global__ void causal_softmax_f32(const float *__restrict__ scores,
                                              float *__restrict__ out, uint32_t rows,
                                              uint32_t t, uint32_t len, uint32_t pos) {
    const uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t seen = min(len, pos + row % t + 1);
    const float *x = scores + (size_t)row * len;
    float *y = out + (size_t)row * len;
    float peak = -INFINITY;
    for (uint32_t j = lane; j < seen; j += 32) peak = fmaxf(peak, x[j]);
    for (int offset = 16; offset > 0; offset >>= 1)
        peak = fmaxf(peak, __shfl_xor_sync(0xffffffffu, peak, offset));
    float sum = 0.0f;
    for (uint32_t j = lane; j < seen; j += 32) sum += expf(x[j] - peak);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (uint32_t j = lane; j < len; j += 32) y[j] = j < seen ? expf(x[j] - peak) * inv : 0.0f;
}

// out[0] = the index of the largest of x[0..n]: the lowest index on ties, NaN never wins,
// 0 when nothing beats -inf (as the CPU sampler's argmax). One block.
template <typename T>
__device__ void argmax(const T *__restrict__ x, uint32_t n, uint32_t *__restrict__ out) {
    __shared__ float best_value[32];
    __shared__ uint32_t best_index[32];
    float value = -INFINITY;
    uint32_t index = n;
    // Each thread sees ascending indices, so a strict > keeps the lowest of equal values.
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = to_f(x[i]);
        if (v > value) value = v, index = i;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, value, offset);
        const uint32_t i = __shfl_xor_sync(0xffffffffu, index, offset);
        if (v > value || (v == value && i < index)) value = v, index = i;
    }
    if (threadIdx.x % 32 == 0) best_value[threadIdx.x / 32] = value, best_index[threadIdx.x / 32] = index;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (uint32_t w = 1; w < blockDim.x / 32; ++w) {
            if (best_value[w] > value || (best_value[w] == value && best_index[w] < index))
                value = best_value[w], index = best_index[w];
        }
        out[0] = index < n ? index : 0;
    }
}

#define DECODE_KERNELS(SUFFIX, T)                                                            \
    extern "C" __global__ void gemv_##SUFFIX(const T *w, const T *x, T *y, uint32_t rows,      \
                                             uint32_t k) {                                   \
        gemv<T>(w, x, y, rows, k);                                                           \
    }                                                                                        \
    extern "C" __global__ void add_rms_norm_##SUFFIX(const T *x, const T *delta, const T *w,   \
                                                     T *out, uint32_t n, float eps) {         \
        add_rms_norm<T>(x, delta, w, out, n, eps);                                           \
    }                                                                                        \
    extern "C" __global__ void argmax_##SUFFIX(const T *x, uint32_t n, uint32_t *out) {       \
        argmax<T>(x, n, out);                                                                \
    }                                                                                        \
    extern "C" __global__ void swiglu_##SUFFIX(const T *gate_up, T *out, uint32_t ffn,        \
                                               uint32_t total) {                             \
        swiglu<T>(gate_up, out, ffn, total);                                                 \
    }

// decode_attention_<D>_<dtype> for every head size the dense llama takes it at.
#define ATTENTION_KERNEL(SUFFIX, T, D)                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS) decode_attention_##D##_##SUFFIX( \
        const T *qkv, const float *rope, float *cache, T *out, float *partial, uint32_t heads, \
        uint32_t kv_heads, uint32_t cap, uint32_t pos, uint32_t span, float q_scale) {       \
        decode_attention<T, D>(qkv, rope, cache, out, partial, heads, kv_heads, cap, pos, span, \
                               q_scale);                                                     \
    }                                                                                        \
    extern "C" __global__ void decode_attention_combine_##D##_##SUFFIX(                       \
        const float *partial, T *out, uint32_t splits) {                                     \
        decode_attention_combine<T, D>(partial, out, splits);                                \
    }
#define ATTENTION_KERNELS(SUFFIX, T)                                                         \
    ATTENTION_KERNEL(SUFFIX, T, 16)                                                          \
    ATTENTION_KERNEL(SUFFIX, T, 32)                                                          \
    ATTENTION_KERNEL(SUFFIX, T, 64)                                                          \
    ATTENTION_KERNEL(SUFFIX, T, 128)                                                         \
    ATTENTION_KERNEL(SUFFIX, T, 256)

DECODE_KERNELS(f16, __half)
DECODE_KERNELS(bf16, __nv_bfloat16)
ATTENTION_KERNELS(f16, __half)
ATTENTION_KERNELS(bf16, __nv_bfloat16)
