// CUDA row kernels of the fused log-prob / policy-loss ops (effreason.ops.fused, backend "cuda").
// One block per row of a logits chunk; float32 math whatever the storage type. See the header.
#include "fused_logprobs_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

namespace effreason {
namespace fused_logprobs {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) { return __float2bfloat16(value); }
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half(value); }

// Online softmax statistics relative to a running max m:
// sum = sum_v exp(z_v - m), shifted = sum_v exp(z_v - m) (z_v - m). Empty state: m = -inf, sum = 0.
struct RowState {
  float max;
  float sum;
  float shifted;
};

__device__ __forceinline__ RowState rebase(RowState state, float new_max) {
  if (state.sum == 0.0f) return RowState{new_max, 0.0f, 0.0f};  // the -inf identity: nothing to rescale
  const float delta = state.max - new_max;
  const float scale = expf(delta);
  return RowState{new_max, state.sum * scale, scale * (state.shifted + state.sum * delta)};
}

__device__ __forceinline__ RowState merge(RowState a, RowState b) {
  const float new_max = fmaxf(a.max, b.max);
  const RowState x = rebase(a, new_max);
  const RowState y = rebase(b, new_max);
  return RowState{new_max, x.sum + y.sum, x.shifted + y.shifted};
}

__device__ __forceinline__ RowState add_logit(RowState state, float z) {
  if (z == -CUDART_INF_F) return state;
  if (z > state.max) state = rebase(state, z);
  const float shifted = z - state.max;
  const float e = expf(shifted);
  return RowState{state.max, state.sum + e, state.shifted + e * shifted};
}

__device__ RowState block_reduce(RowState state) {
  __shared__ RowState warp_states[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    RowState other{__shfl_xor_sync(0xffffffffu, state.max, offset), __shfl_xor_sync(0xffffffffu, state.sum, offset),
                   __shfl_xor_sync(0xffffffffu, state.shifted, offset)};
    state = merge(state, other);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp == 0) {
    state = lane < kWarps ? warp_states[lane] : RowState{-CUDART_INF_F, 0.0f, 0.0f};
    for (int offset = 16; offset > 0; offset >>= 1) {
      RowState other{__shfl_xor_sync(0xffffffffu, state.max, offset), __shfl_xor_sync(0xffffffffu, state.sum, offset),
                     __shfl_xor_sync(0xffffffffu, state.shifted, offset)};
      state = merge(state, other);
    }
  }
  return state;  // valid in thread 0
}

template <typename T>
__global__ void row_stats_kernel(const T* __restrict__ logits, int64_t vocab, int64_t row_stride,
                                 const int64_t* __restrict__ targets, float* __restrict__ logprobs,
                                 float* __restrict__ lse, float* __restrict__ entropy) {
  const int64_t row = blockIdx.x;
  const T* row_logits = logits + row * row_stride;
  RowState state{-CUDART_INF_F, 0.0f, 0.0f};
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) state = add_logit(state, to_float(row_logits[v]));
  state = block_reduce(state);
  if (threadIdx.x == 0) {
    const float log_sum = logf(state.sum);
    const float row_lse = state.max + log_sum;
    lse[row] = row_lse;
    logprobs[row] = to_float(row_logits[targets[row]]) - row_lse;
    entropy[row] = log_sum - state.shifted / state.sum;
  }
}

template <typename T>
__global__ void row_grad_kernel(T* __restrict__ logits, int64_t vocab, int64_t row_stride,
                                const int64_t* __restrict__ targets, const float* __restrict__ lse,
                                const float* __restrict__ coef, const float* __restrict__ entropy_coef,
                                const float* __restrict__ entropy) {
  const int64_t row = blockIdx.x;
  T* row_logits = logits + row * row_stride;
  const int64_t target = targets[row];
  const float row_lse = lse[row];
  const float row_coef = coef[row];
  const float row_entropy_coef = entropy_coef == nullptr ? 0.0f : entropy_coef[row];
  const float row_entropy = entropy == nullptr ? 0.0f : entropy[row];
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float logp = to_float(row_logits[v]) - row_lse;
    const float p = expf(logp);
    float grad = -p * (row_coef + row_entropy_coef * (logp + row_entropy));
    if (v == target) grad += row_coef;
    row_logits[v] = from_float<T>(grad);
  }
}

template <typename T>
cudaError_t row_stats_typed(const void* logits, int64_t rows, int64_t vocab, int64_t row_stride, const int64_t* targets,
                            float* logprobs, float* lse, float* entropy, cudaStream_t stream) {
  row_stats_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
      static_cast<const T*>(logits), vocab, row_stride, targets, logprobs, lse, entropy);
  return cudaGetLastError();
}

template <typename T>
cudaError_t row_grad_typed(void* logits, int64_t rows, int64_t vocab, int64_t row_stride, const int64_t* targets,
                           const float* lse, const float* coef, const float* entropy_coef, const float* entropy,
                           cudaStream_t stream) {
  row_grad_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(
      static_cast<T*>(logits), vocab, row_stride, targets, lse, coef, entropy_coef, entropy);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_row_stats(const void* logits, ScalarKind kind, int64_t rows, int64_t vocab, int64_t row_stride,
                             const int64_t* targets, float* logprobs, float* lse, float* entropy, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (kind) {
    case ScalarKind::kFloat32:
      return row_stats_typed<float>(logits, rows, vocab, row_stride, targets, logprobs, lse, entropy, stream);
    case ScalarKind::kBFloat16:
      return row_stats_typed<__nv_bfloat16>(logits, rows, vocab, row_stride, targets, logprobs, lse, entropy, stream);
    case ScalarKind::kFloat16:
      return row_stats_typed<__half>(logits, rows, vocab, row_stride, targets, logprobs, lse, entropy, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_row_grad(void* logits, ScalarKind kind, int64_t rows, int64_t vocab, int64_t row_stride,
                            const int64_t* targets, const float* lse, const float* coef, const float* entropy_coef,
                            const float* entropy, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (kind) {
    case ScalarKind::kFloat32:
      return row_grad_typed<float>(logits, rows, vocab, row_stride, targets, lse, coef, entropy_coef, entropy, stream);
    case ScalarKind::kBFloat16:
      return row_grad_typed<__nv_bfloat16>(logits, rows, vocab, row_stride, targets, lse, coef, entropy_coef, entropy,
                                           stream);
    case ScalarKind::kFloat16:
      return row_grad_typed<__half>(logits, rows, vocab, row_stride, targets, lse, coef, entropy_coef, entropy, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_logprobs
}  // namespace effreason
