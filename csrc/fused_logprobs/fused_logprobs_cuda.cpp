// Torch glue of the CUDA fused log-prob row kernels: checks, stream, registration.
//   effreason::fused_logprobs_row_stats(logits, targets) -> (logprobs, lse, entropy), float32 (C,)
//   effreason::fused_logprobs_row_grad_(logits!, targets, lse, coef, entropy_coef?, entropy?) -> ()
// Used by effreason/ops/chunked_kernels.py (backend "cuda"); the Triton twins live in kernels/fused_logprobs.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fused_logprobs_kernel.h"

namespace {

using effreason::fused_logprobs::ScalarKind;

ScalarKind scalar_kind(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    case at::kHalf:
      return ScalarKind::kFloat16;
    default:
      TORCH_CHECK(false, "logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  }
}

void check_row_vector(const char* name, const at::Tensor& vector, const at::Tensor& logits, at::ScalarType dtype) {
  TORCH_CHECK(vector.is_cuda() && vector.device() == logits.device(), name, " must be on ", logits.device());
  TORCH_CHECK(vector.dim() == 1 && vector.size(0) == logits.size(0), name, " must have shape (", logits.size(0), ",)");
  TORCH_CHECK(vector.scalar_type() == dtype && vector.is_contiguous(), name, " must be contiguous ", dtype);
}

void check_logits(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.is_cuda(), "logits must be a CUDA tensor");
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, "logits must be 2-D with contiguous rows");
  check_row_vector("targets", targets, logits, at::kLong);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_stats_cuda(const at::Tensor& logits, const at::Tensor& targets) {
  check_logits(logits, targets);
  const ScalarKind kind = scalar_kind(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor logprobs = at::empty({logits.size(0)}, options);
  at::Tensor lse = at::empty({logits.size(0)}, options);
  at::Tensor entropy = at::empty({logits.size(0)}, options);
  const cudaError_t status = effreason::fused_logprobs::launch_row_stats(
      logits.data_ptr(), kind, logits.size(0), logits.size(1), logits.stride(0), targets.data_ptr<int64_t>(),
      logprobs.data_ptr<float>(), lse.data_ptr<float>(), entropy.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "fused_logprobs_row_stats: ", cudaGetErrorString(status));
  return {logprobs, lse, entropy};
}

void row_grad_cuda(at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& coef,
                   const std::optional<at::Tensor>& entropy_coef, const std::optional<at::Tensor>& entropy) {
  check_logits(logits, targets);
  check_row_vector("lse", lse, logits, at::kFloat);
  check_row_vector("coef", coef, logits, at::kFloat);
  TORCH_CHECK(entropy_coef.has_value() == entropy.has_value(), "entropy_coef and entropy go together");
  if (entropy_coef.has_value()) {
    check_row_vector("entropy_coef", *entropy_coef, logits, at::kFloat);
    check_row_vector("entropy", *entropy, logits, at::kFloat);
  }
  const ScalarKind kind = scalar_kind(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaError_t status = effreason::fused_logprobs::launch_row_grad(
      logits.data_ptr(), kind, logits.size(0), logits.size(1), logits.stride(0), targets.data_ptr<int64_t>(),
      lse.data_ptr<float>(), coef.data_ptr<float>(),
      entropy_coef.has_value() ? entropy_coef->data_ptr<float>() : nullptr,
      entropy.has_value() ? entropy->data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "fused_logprobs_row_grad_: ", cudaGetErrorString(status));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("fused_logprobs_row_stats(Tensor logits, Tensor targets) -> (Tensor, Tensor, Tensor)");
  m.def(
      "fused_logprobs_row_grad_(Tensor(a!) logits, Tensor targets, Tensor lse, Tensor coef, "
      "Tensor? entropy_coef=None, Tensor? entropy=None) -> ()");
}

TORCH_LIBRARY_IMPL(effreason, CUDA, m) {
  m.impl("fused_logprobs_row_stats", &row_stats_cuda);
  m.impl("fused_logprobs_row_grad_", &row_grad_cuda);
}
