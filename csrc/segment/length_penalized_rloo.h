// The paper's length-normalised reward and its RLOO advantage for one group of samples.
// Header-only and free of torch so the CPU op and the CUDA kernel share one implementation.
//
// For the k samples of one prompt, with mean and population std of the lengths over the
// correct samples only (Arora & Zanette 2025):
//   r_i = 1 - alpha * sigmoid((len_i - mean) / (std + 1e-7))  if correct_i, else 0
//   A_i = r_i - (sum_j r_j - r_i) / (k - 1)                     (leave-one-out baseline)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EFFREASON_HOST_DEVICE __host__ __device__
#else
#define EFFREASON_HOST_DEVICE
#endif

namespace effreason {

constexpr double kRewardStdEps = 1e-7;

EFFREASON_HOST_DEVICE inline void length_penalized_rloo_group(
    const bool* correct, const double* lengths, int64_t group_size, double alpha,
    float* rewards, float* advantages) {
  double num_correct = 0.0, length_sum = 0.0;
  for (int64_t i = 0; i < group_size; ++i) {
    if (correct[i]) {
      num_correct += 1.0;
      length_sum += lengths[i];
    }
  }
  const double denominator = num_correct > 0.0 ? num_correct : 1.0;
  const double mean = length_sum / denominator;
  double squared_deviation = 0.0;
  for (int64_t i = 0; i < group_size; ++i) {
    if (correct[i]) squared_deviation += (lengths[i] - mean) * (lengths[i] - mean);
  }
  const double std_eps = sqrt(squared_deviation / denominator) + kRewardStdEps;
  double reward_sum = 0.0;  // of the float32-rounded rewards, as the torch reference sees them
  for (int64_t i = 0; i < group_size; ++i) {
    const double z = (lengths[i] - mean) / std_eps;
    rewards[i] = static_cast<float>(correct[i] ? 1.0 - alpha / (1.0 + exp(-z)) : 0.0);
    reward_sum += rewards[i];
  }
  const double others = static_cast<double>(group_size - 1);
  for (int64_t i = 0; i < group_size; ++i) {
    advantages[i] = static_cast<float>(rewards[i] - (reward_sum - rewards[i]) / others);
  }
}

}  // namespace effreason
