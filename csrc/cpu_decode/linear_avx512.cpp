// AVX-512 float32 x W^T for decode-sized products; see linear_avx512.h. x86-64 GCC / Clang only; elsewhere
// linear_takes() is false and linear.cpp uses ATen's GEMM.
//
// Weights stay in their (N, K) nn.Linear layout, so there is no packed copy: a register tile of kRows x
// kCols outputs keeps one zmm of partial sums per output, fed along K 16 floats at a time (one load of
// each x row and of each weight row per 16 K, kRows * kCols FMAs). At the end, each output row's four
// partial-sum vectors are added lane-quad-wise (sum_lane_quads) and folded to four floats.
// Loop order: weight tiles outer (kCols rows of W stay in L1 while every x row tile passes), so each
// weight is read from the outer caches once per call; while one weight tile computes, the next one is
// prefetched a slice per row tile. At decode the weights come from L3 or DRAM (a whole model's do not fit
// L2), where a product that waits for them, as a packing GEMM does, is slower (bench/RESULTS.md).
#include "cpu_decode/linear_avx512.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags the deliberately undefined registers inside its own AVX-512 intrinsics as uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#define EFFREASON_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq")))

namespace effreason::avx512 {
namespace {

constexpr int kRows = 6;  // x rows per register tile
constexpr int kCols = 4;  // weight rows (outputs) per register tile: 24 accumulators + 6 x + 1 w registers
constexpr int64_t kLine = 64;  // bytes per cache line
// The tile's loops over rows and columns carry `#pragma GCC unroll`: unrolled only partially, GCC keeps the
// accumulators in memory instead of registers.

// Lane (h, i) = sum_j v_i lane (h, j): the four quad totals of each 128-bit lane h of four vectors v_0..v_3.
EFFREASON_AVX512 inline __m512 sum_lane_quads(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, 0x44), _mm512_shuffle_ps(v0, v1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_ps(v2, v3, 0x44), _mm512_shuffle_ps(v2, v3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x88), _mm512_shuffle_ps(s01, s23, 0xDD));
}

// The full sums of four vectors, [sum v0, sum v1, sum v2, sum v3].
EFFREASON_AVX512 inline __m128 sum_four(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  const __m512 quads = sum_lane_quads(v0, v1, v2, v3);
  const __m256 halves = _mm256_add_ps(_mm512_castps512_ps256(quads), _mm512_extractf32x8_ps(quads, 1));
  return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
}

template <int R, int C, bool kTail>
EFFREASON_AVX512 void tile(const float* x, int64_t x_stride, const float* w, int64_t w_stride, const float* bias,
                           float* out, int64_t out_stride, int64_t depth, bool accumulate) {
  __m512 acc[R][4];  // columns past C stay zero; constant indices let the compiler keep all in registers
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= depth; k += 16) {
    __m512 xv[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * x_stride + k);
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m512 wv = _mm512_loadu_ps(w + c * w_stride + k);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  if (kTail) {  // the last depth % 16 columns, masked (a separate instantiation: GCC spills the accumulators
                // around a tail that may not run)
    const auto mask = static_cast<__mmask16>((1u << (depth - k)) - 1);
    __m512 xv[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(mask, x + r * x_stride + k);
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, w + c * w_stride + k);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  const auto cols = static_cast<__mmask8>((1u << C) - 1);
  const __m128 add = bias == nullptr ? _mm_setzero_ps() : C == 4 ? _mm_loadu_ps(bias) : _mm_maskz_loadu_ps(cols, bias);
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m128 sums = _mm_add_ps(sum_four(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), add);
    float* row = out + r * out_stride;
    if constexpr (C == 4) {
      _mm_storeu_ps(row, accumulate ? _mm_add_ps(sums, _mm_loadu_ps(row)) : sums);
    } else {
      _mm_mask_storeu_ps(row, cols, accumulate ? _mm_add_ps(sums, _mm_maskz_loadu_ps(cols, row)) : sums);
    }
  }
}

template <int R, bool kTail>
EFFREASON_AVX512 void tile_rows(const float* x, int64_t x_stride, const float* w, int64_t w_stride, const float* bias,
                                float* out, int64_t out_stride, int64_t cols, int64_t depth, bool accumulate) {
  switch (cols) {
    case 1: tile<R, 1, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, depth, accumulate); break;
    case 2: tile<R, 2, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, depth, accumulate); break;
    case 3: tile<R, 3, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, depth, accumulate); break;
    default: tile<R, 4, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, depth, accumulate);
  }
}

template <bool kTail>
EFFREASON_AVX512 void any_tile_of(int64_t rows, const float* x, int64_t x_stride, const float* w, int64_t w_stride,
                                  const float* bias, float* out, int64_t out_stride, int64_t cols, int64_t depth,
                                  bool accumulate) {
  switch (rows) {
    case 1: tile_rows<1, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate); break;
    case 2: tile_rows<2, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate); break;
    case 3: tile_rows<3, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate); break;
    case 4: tile_rows<4, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate); break;
    case 5: tile_rows<5, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate); break;
    default: tile_rows<6, kTail>(x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate);
  }
}

// One register tile of up to kRows x kCols outputs.
EFFREASON_AVX512 void any_tile(int64_t rows, const float* x, int64_t x_stride, const float* w, int64_t w_stride,
                               const float* bias, float* out, int64_t out_stride, int64_t cols, int64_t depth,
                               bool accumulate) {
  if (depth % 16 == 0) {
    any_tile_of<false>(rows, x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate);
  } else {
    any_tile_of<true>(rows, x, x_stride, w, w_stride, bias, out, out_stride, cols, depth, accumulate);
  }
}

}  // namespace

// Whether this CPU has the AVX-512 subsets (F, VL, DQ) that EFFREASON_AVX512 code uses.
bool linear_takes() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq");
  return has;
}

void linear(const float* x, int64_t x_stride, const float* w, int64_t w_stride, const float* bias, float* out,
            int64_t out_stride, int64_t rows, int64_t cols, int64_t depth, bool accumulate) {
  const int64_t row_tiles = (rows + kRows - 1) / kRows;
  for (int64_t n = 0; n < cols; n += kCols) {
    const int64_t tile_cols = std::min<int64_t>(kCols, cols - n);
    const float* w_tile = w + n * w_stride;
    const float* bias_tile = bias ? bias + n : nullptr;
    // the next weight tile, one slice per row tile, so it is in L1 when its turn comes
    const char* next = reinterpret_cast<const char*>(w_tile + kCols * w_stride);
    const int64_t next_bytes = n + kCols < cols ? std::min<int64_t>(kCols, cols - n - kCols) * w_stride * 4 : 0;
    const int64_t slice = ((next_bytes + row_tiles - 1) / row_tiles + kLine - 1) / kLine * kLine;
    for (int64_t m = 0; m < rows; m += kRows) {
      const int64_t first = m / kRows * slice;
      for (int64_t offset = first; offset < std::min(first + slice, next_bytes); offset += kLine) {
        __builtin_prefetch(next + offset, 0, 3);
      }
      any_tile(std::min<int64_t>(kRows, rows - m), x + m * x_stride, x_stride, w_tile, w_stride, bias_tile,
               out + m * out_stride + n, out_stride, tile_cols, depth, accumulate);
    }
  }
}

}  // namespace effreason::avx512

#else  // not x86-64 GCC/Clang

namespace effreason::avx512 {
bool linear_takes() { return false; }
void linear(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t, int64_t,
            bool) {}
}  // namespace effreason::avx512

#endif
