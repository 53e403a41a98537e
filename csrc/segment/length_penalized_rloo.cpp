// CPU implementation and schema of effreason::length_penalized_rloo (see length_penalized_rloo.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "segment/length_penalized_rloo.h"

namespace effreason {

std::tuple<at::Tensor, at::Tensor> check_and_allocate(const at::Tensor& correct, const at::Tensor& lengths,
                                                       int64_t group_size, double alpha) {
  TORCH_CHECK(correct.dim() == 1 && correct.scalar_type() == at::kBool, "correct must be a 1-D bool tensor");
  TORCH_CHECK(lengths.dim() == 1 && lengths.numel() == correct.numel(), "lengths must be 1-D with one entry per sample");
  TORCH_CHECK(group_size >= 2, "group_size must be >= 2 for RLOO, got ", group_size);
  TORCH_CHECK(correct.numel() % group_size == 0, "the number of samples must be divisible by group_size");
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  auto options = correct.options().dtype(at::kFloat);
  return {at::empty({correct.numel()}, options), at::empty({correct.numel()}, options)};
}

static std::tuple<at::Tensor, at::Tensor> length_penalized_rloo_cpu(const at::Tensor& correct, const at::Tensor& lengths,
                                                                    int64_t group_size, double alpha) {
  auto [rewards, advantages] = check_and_allocate(correct, lengths, group_size, alpha);
  const at::Tensor correct_c = correct.contiguous();
  const at::Tensor lengths_d = lengths.to(at::kDouble).contiguous();
  const bool* correct_ptr = correct_c.data_ptr<bool>();
  const double* lengths_ptr = lengths_d.data_ptr<double>();
  float* rewards_ptr = rewards.data_ptr<float>();
  float* advantages_ptr = advantages.data_ptr<float>();
  const int64_t num_groups = correct.numel() / group_size;
  at::parallel_for(0, num_groups, 256, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t offset = group * group_size;
      length_penalized_rloo_group(correct_ptr + offset, lengths_ptr + offset, group_size, alpha,
                                  rewards_ptr + offset, advantages_ptr + offset);
    }
  });
  return {rewards, advantages};
}

}  // namespace effreason

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("length_penalized_rloo(Tensor correct, Tensor lengths, int group_size, float alpha) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("length_penalized_rloo", &effreason::length_penalized_rloo_cpu);
}
