// linear_into (linear.h) and the op effreason::linear(x, weight, bias, residual) = F.linear(x, weight, bias)
// (+ residual) for float32 CPU rows, split over rows with at::parallel_for; the op exists so the product
// decode_layers runs can be tested against F.linear.
#include "linear/linear.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "linear/linear_avx512.h"

namespace effreason {

namespace {

bool rows_contiguous(const at::Tensor& t) { return t.dim() == 2 && t.stride(1) == 1; }

}  // namespace

void linear_into(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out,
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

namespace {

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& residual) {
  for (const auto* t : {&x, &weight}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->device().is_cpu() && t->scalar_type() == at::kFloat,
                      "x and weight must be float32 CPU tensors (M, K) and (N, K)");
  }
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "x (M, K) and weight (N, K) must share K");
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                          bias->device().is_cpu() && bias->scalar_type() == at::kFloat),
                    "bias must be None or a float32 CPU tensor (N,)");
  TORCH_CHECK_VALUE(!residual.has_value() || (residual->sizes() == at::IntArrayRef{x.size(0), weight.size(0)} &&
                                              residual->device().is_cpu() && residual->scalar_type() == at::kFloat),
                    "residual must be None or a float32 CPU tensor (M, N)");
  at::Tensor out = residual.has_value() ? residual->clone(at::MemoryFormat::Contiguous)
                                        : at::empty({x.size(0), weight.size(0)}, x.options());
  const at::Tensor rows = rows_contiguous(x) ? x : x.contiguous();
  // the weight as given: a layout the AVX-512 product does not take goes to ATen's GEMM
  at::parallel_for(0, x.size(0), 6, [&](int64_t begin, int64_t end) {
    at::Tensor out_rows = out.slice(0, begin, end);
    linear_into(rows.slice(0, begin, end), weight, bias, out_rows, residual.has_value());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None, Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("linear", &linear_cpu);
}

}  // namespace effreason
