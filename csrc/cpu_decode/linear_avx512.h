// AVX-512 float32 product x W^T for decode-sized row counts, on the weight in its own (N, K) layout.
#pragma once

#include <cstdint>

namespace effreason::avx512 {

// Whether this CPU has the AVX-512 (F, VL, DQ) the product needs.
bool linear_takes();

// out[m, n] = (accumulate ? out[m, n] : 0) + (bias ? bias[n] : 0) + sum_k x[m, k] w[n, k], for m < rows,
// n < cols, k < depth; row strides in floats. One thread.
void linear(const float* x, int64_t x_stride, const float* w, int64_t w_stride, const float* bias, float* out,
            int64_t out_stride, int64_t rows, int64_t cols, int64_t depth, bool accumulate);

}  // namespace effreason::avx512
