// The decode step's products on float32 CPU rows (effreason/sampler/cpu_decode.py):
//
//   linear(x, W, b)            = x W^T + b                (torch.nn.functional.linear)
//   add_linear_(h, x, W, b)    : h += x W^T + b           (a residual update in place)
//
// Rows are split over threads (at::parallel_for), each thread running the AVX-512 product of
// linear_avx512.cpp on its rows and the whole weight, in the weight's own (N, K) layout. On a CPU without
// AVX-512, or a weight or rows the product does not take (non-contiguous), each thread runs ATen's GEMM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "cpu_decode/linear_avx512.h"

namespace effreason {
namespace {

constexpr int64_t kRowsPerTask = 6;  // the AVX-512 product's register tile height: whole tiles per thread

bool rows_contiguous(const at::Tensor& t) { return t.dim() == 2 && t.stride(1) == 1; }

// out = x W^T + b, or out += x W^T + b with `accumulate`, for the rows of one thread.
void linear_rows(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out,
                 bool accumulate) {
  const bool fast = avx512::linear_takes() && rows_contiguous(x) && rows_contiguous(out) && weight.is_contiguous() &&
                    (!bias.has_value() || bias->is_contiguous());
  if (!fast) {
    if (accumulate) {
      out.addmm_(x, weight.t());
    } else {
      at::mm_out(out, x, weight.t());
    }
    if (bias.has_value()) out.add_(*bias);
    return;
  }
  avx512::linear(x.data_ptr<float>(), x.stride(0), weight.data_ptr<float>(), weight.stride(0),
                 bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr<float>(), out.stride(0), x.size(0),
                 weight.size(0), weight.size(1), accumulate);
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  for (const auto* t : {&x, &weight}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->device().is_cpu() && t->scalar_type() == at::kFloat,
                      "x and weight must be float32 CPU tensors (M, K) and (N, K)");
  }
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "x (M, K) and weight (N, K) must share K");
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                          bias->device().is_cpu() && bias->scalar_type() == at::kFloat),
                    "bias must be None or a float32 CPU tensor (N,)");
}

// `out` (M, N) = x W^T + b, or += with `accumulate`, rows split over threads.
void linear_parallel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     at::Tensor& out, bool accumulate) {
  const at::Tensor rows = rows_contiguous(x) ? x : x.contiguous();
  at::parallel_for(0, x.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
    at::Tensor out_rows = out.slice(0, begin, end);
    linear_rows(rows.slice(0, begin, end), weight, bias, out_rows, accumulate);
  });
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_inputs(x, weight, bias);
  at::Tensor out = at::empty({x.size(0), weight.size(0)}, x.options());
  linear_parallel(x, weight, bias, out, false);
  return out;
}

void add_linear_cpu(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias) {
  check_inputs(x, weight, bias);
  const bool same_shape = residual.dim() == 2 && residual.size(0) == x.size(0) && residual.size(1) == weight.size(0);
  TORCH_CHECK_VALUE(same_shape && residual.device().is_cpu() &&
                        residual.scalar_type() == at::kFloat && rows_contiguous(residual),
                    "residual must be a float32 CPU tensor (M, N) with contiguous rows");
  linear_parallel(x, weight, bias, residual, true);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("add_linear_(Tensor(a!) residual, Tensor x, Tensor weight, Tensor? bias=None) -> ()");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("add_linear_", &add_linear_cpu);
}

}  // namespace effreason
