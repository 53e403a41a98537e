// CUDA registration of effreason::length_penalized_rloo: tensor checks, stream, launch.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

namespace effreason {

std::tuple<at::Tensor, at::Tensor> check_and_allocate(const at::Tensor& correct, const at::Tensor& lengths,
                                                       int64_t group_size, double alpha);

cudaError_t launch_length_penalized_rloo(const bool* correct, const double* lengths, int64_t num_groups,
                                         int64_t group_size, double alpha, float* rewards, float* advantages,
                                         cudaStream_t stream);

static std::tuple<at::Tensor, at::Tensor> length_penalized_rloo_cuda(const at::Tensor& correct,
                                                                     const at::Tensor& lengths, int64_t group_size,
                                                                     double alpha) {
  TORCH_CHECK(correct.is_cuda() && lengths.is_cuda(), "correct and lengths must be CUDA tensors");
  TORCH_CHECK(correct.device() == lengths.device(), "correct and lengths must be on the same device");
  const c10::cuda::CUDAGuard guard(correct.device());
  auto [rewards, advantages] = check_and_allocate(correct, lengths, group_size, alpha);
  const at::Tensor correct_c = correct.contiguous();
  const at::Tensor lengths_d = lengths.to(at::kDouble).contiguous();
  const cudaError_t status = launch_length_penalized_rloo(
      correct_c.data_ptr<bool>(), lengths_d.data_ptr<double>(), correct.numel() / group_size, group_size, alpha,
      rewards.data_ptr<float>(), advantages.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "length_penalized_rloo kernel launch failed: ", cudaGetErrorString(status));
  return {rewards, advantages};
}

}  // namespace effreason

TORCH_LIBRARY_IMPL(effreason, CUDA, m) {
  m.impl("length_penalized_rloo", &effreason::length_penalized_rloo_cuda);
}
