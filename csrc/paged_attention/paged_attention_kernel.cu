// Paged decode attention: one thread block per (sequence, KV head), the group's query heads packed.
//
//   out[s, h] = sum_{t < L_s} softmax_t(scale * q[s, h] . K[T_s[t / bs], g, t % bs]) V[...],  g = h / group
//
// The context is walked in chunks of kThreads tokens with an online softmax (Milakov & Gimelshein
// 2018): each thread scores one token for every head of the group, one warp per head rescales,
// then the threads accumulate P V over (head, dim) pairs, reading V rows coalesced. Same contract
// and oracle as effreason/sampler/attention.py::paged_decode_attention_reference.
#include "paged_attention/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

namespace effreason {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr size_t kMaxSharedBytes = 48 * 1024;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Shared memory: query (G*D), accumulator (G*D), chunk scores (G*kThreads), per-head max/sum/rescale (3G).
template <typename T>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(PagedAttentionArgs args) {
  extern __shared__ float shared[];
  const int seq = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int group = args.num_heads / args.num_kv_heads;
  const int dim = args.head_dim;
  float* q_s = shared;
  float* acc_s = q_s + group * dim;
  float* score_s = acc_s + group * dim;
  float* max_s = score_s + group * kThreads;
  float* sum_s = max_s + group;
  float* rescale_s = sum_s + group;

  const T* query = static_cast<const T*>(args.query) + seq * args.q_stride_seq;
  for (int i = threadIdx.x; i < group * dim; i += kThreads) {
    const int head = kv_head * group + i / dim;
    q_s[i] = to_float(query[head * args.q_stride_head + i % dim]);
    acc_s[i] = 0.f;
  }
  for (int g = threadIdx.x; g < group; g += kThreads) {
    max_s[g] = -CUDART_INF_F;
    sum_s[g] = 0.f;
  }
  __syncthreads();

  const T* k_cache = static_cast<const T*>(args.k_cache) + kv_head * args.k_stride_head;
  const T* v_cache = static_cast<const T*>(args.v_cache) + kv_head * args.v_stride_head;
  const int32_t* table = args.block_tables + seq * args.table_stride;
  const int context_len = args.context_lens[seq];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  for (int chunk = 0; chunk < context_len; chunk += kThreads) {
    const int count = min(kThreads, context_len - chunk);
    // 1. scores of this thread's token for every head of the group
    const int token = chunk + threadIdx.x;
    if (threadIdx.x < count) {
      const T* key = k_cache + static_cast<int64_t>(table[token / args.block_size]) * args.k_stride_block +
                     (token % args.block_size) * args.k_stride_row;
      for (int g = 0; g < group; ++g) {
        float dot = 0.f;
        for (int d = 0; d < dim; ++d) dot += q_s[g * dim + d] * to_float(key[d]);
        score_s[g * kThreads + threadIdx.x] = dot * args.scale;
      }
    }
    __syncthreads();
    // 2. one warp per head: new running max, probabilities in place, running sum
    for (int g = warp; g < group; g += kWarps) {
      float* scores = score_s + g * kThreads;
      float chunk_max = -CUDART_INF_F;
      for (int j = lane; j < count; j += 32) chunk_max = fmaxf(chunk_max, scores[j]);
      const float new_max = fmaxf(max_s[g], warp_max(chunk_max));
      float chunk_sum = 0.f;
      for (int j = lane; j < count; j += 32) {
        scores[j] = __expf(scores[j] - new_max);
        chunk_sum += scores[j];
      }
      chunk_sum = warp_sum(chunk_sum);
      if (lane == 0) {
        const float rescale = __expf(max_s[g] - new_max);
        rescale_s[g] = rescale;
        sum_s[g] = sum_s[g] * rescale + chunk_sum;
        max_s[g] = new_max;
      }
    }
    __syncthreads();
    // 3. accumulate P V over (head, dim) pairs
    for (int i = threadIdx.x; i < group * dim; i += kThreads) {
      const int g = i / dim;
      const int d = i % dim;
      const float* probs = score_s + g * kThreads;
      float acc = acc_s[i] * rescale_s[g];
      for (int j = 0; j < count; ++j) {
        const int t = chunk + j;
        const T* value = v_cache + static_cast<int64_t>(table[t / args.block_size]) * args.v_stride_block +
                         (t % args.block_size) * args.v_stride_row;
        acc += probs[j] * to_float(value[d]);
      }
      acc_s[i] = acc;
    }
    __syncthreads();
  }

  T* out = static_cast<T*>(args.out) + seq * args.o_stride_seq;
  for (int i = threadIdx.x; i < group * dim; i += kThreads) {
    const int head = kv_head * group + i / dim;
    out[head * args.o_stride_head + i % dim] = from_float<T>(acc_s[i] / sum_s[i / dim]);
  }
}

template <typename T>
cudaError_t launch(const PagedAttentionArgs& args, size_t shared_bytes, cudaStream_t stream) {
  const dim3 grid(args.num_seqs, args.num_kv_heads);
  paged_decode_kernel<T><<<grid, kThreads, shared_bytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t paged_attention_decode_launch(const PagedAttentionArgs& args, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  if (args.num_kv_heads <= 0 || args.num_heads % args.num_kv_heads != 0 || args.head_dim <= 0 ||
      args.block_size <= 0) {
    return cudaErrorInvalidValue;
  }
  const int group = args.num_heads / args.num_kv_heads;
  const size_t shared_bytes = sizeof(float) * (2 * group * args.head_dim + group * kThreads + 3 * group);
  if (shared_bytes > kMaxSharedBytes) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case kPagedFloat32: return launch<float>(args, shared_bytes, stream);
    case kPagedFloat16: return launch<__half>(args, shared_bytes, stream);
    case kPagedBFloat16: return launch<__nv_bfloat16>(args, shared_bytes, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace effreason
