// CUDA kernel of effreason::length_penalized_rloo: one thread per prompt group (k is small,
// 8 in the paper), the math shared with the CPU op through length_penalized_rloo.h.
// Depends on the CUDA toolkit only; the torch glue lives in length_penalized_rloo_cuda.cpp.
#include <cuda_runtime.h>

#include "segment/length_penalized_rloo.h"

namespace effreason {

__global__ void length_penalized_rloo_kernel(const bool* __restrict__ correct, const double* __restrict__ lengths,
                                             int64_t num_groups, int64_t group_size, double alpha,
                                             float* __restrict__ rewards, float* __restrict__ advantages) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= num_groups) return;
  const int64_t offset = group * group_size;
  length_penalized_rloo_group(correct + offset, lengths + offset, group_size, alpha, rewards + offset,
                              advantages + offset);
}

cudaError_t launch_length_penalized_rloo(const bool* correct, const double* lengths, int64_t num_groups,
                                         int64_t group_size, double alpha, float* rewards, float* advantages,
                                         cudaStream_t stream) {
  if (num_groups == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  const int blocks = static_cast<int>((num_groups + kThreads - 1) / kThreads);
  length_penalized_rloo_kernel<<<blocks, kThreads, 0, stream>>>(correct, lengths, num_groups, group_size, alpha,
                                                                rewards, advantages);
  return cudaGetLastError();
}

}  // namespace effreason
