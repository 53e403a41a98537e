// x W^T + b on float32 CPU rows for the decode step (csrc/decode_step/decode_layers.cpp): the AVX-512
// product of linear_avx512.cpp where the CPU and layouts allow, ATen's GEMM otherwise.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace effreason {

// out = x W^T + b, or out += x W^T + b with `accumulate`; x (M, K) and out (M, N) with contiguous rows,
// weight (N, K), bias (N,) or none. One thread (call it inside a parallel region, or for one range).
void linear_into(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out,
                 bool accumulate);

}  // namespace effreason
