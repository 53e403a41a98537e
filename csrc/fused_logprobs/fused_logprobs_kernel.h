// Plain launchers of the fused log-prob row kernels (CUDA toolkit headers only; no torch).
//
// A logits chunk z (rows, vocab) with row stride `row_stride` (elements, unit column stride):
//  * launch_row_stats: per row, float32 logp_target = z_target - lse, lse, entropy (online over the row).
//  * launch_row_grad:  overwrite z in place with coef (onehot - p) - entropy_coef p (log p + H),
//                      p = exp(z - lse); entropy_coef/entropy may be null (no entropy gradient).
// Targets must already be in [0, vocab) (checked by the caller).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace effreason {
namespace fused_logprobs {

enum class ScalarKind : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

cudaError_t launch_row_stats(const void* logits, ScalarKind kind, int64_t rows, int64_t vocab, int64_t row_stride,
                             const int64_t* targets, float* logprobs, float* lse, float* entropy, cudaStream_t stream);

cudaError_t launch_row_grad(void* logits, ScalarKind kind, int64_t rows, int64_t vocab, int64_t row_stride,
                            const int64_t* targets, const float* lse, const float* coef, const float* entropy_coef,
                            const float* entropy, cudaStream_t stream);

}  // namespace fused_logprobs
}  // namespace effreason
