// AVX-512 fast path of the float32 CPU paged decode attention; see paged_attention_avx512.h.
//
// Query heads go four at a time, one per 128-bit lane of a zmm register ("a pass"); a group that is not
// a multiple of four is padded with zero queries, scored but never written out.
//
// Scores: lane (h, j) of qpack[c] holds q[h, 4c + j]. For each key row, one 128-bit broadcast of
// key[4c : 4c + 4] and one FMA per chunk c leave 16 partial sums whose lane quads add up to the four
// heads' scores; sum_lane_quads finishes four rows with six shuffles. The scores of four rows are one
// 16-float chunk, lane (h, i) = head h, row i, so the softmax is dense zmm work across all four heads.
// P V: per key row, the value row is loaded once and each head's accumulator rows (registers, over the
// whole context) take one FMA per 16 dims.
#include "paged_attention/paged_attention_avx512.h"

#include <algorithm>
#include <limits>

#include "cpu/avx512.h"
#include "cpu/vector_math.h"

#if defined(__x86_64__) && defined(__GNUC__)

namespace effreason::avx512 {
namespace {

constexpr int kHeads = 4;          // query heads per pass: one per 128-bit lane
constexpr int64_t kChunkRows = 4;  // key rows per 16-float chunk of scores

int64_t chunks_per_block(int64_t block_size) { return (block_size + kChunkRows - 1) / kChunkRows; }

// Every lane set to the max / sum of the four lanes of its 128-bit lane.
EFFREASON_AVX512 inline __m512 quad_max(__m512 v) {
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4E));
  return _mm512_max_ps(v, _mm512_permute_ps(v, 0xB1));
}

EFFREASON_AVX512 inline __m512 quad_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
  return _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
}

// cpu::exp_approx lane by lane (NaN stays NaN: max/min return their second operand on NaN).
EFFREASON_AVX512 inline __m512 exp_lanes(__m512 x) {
  using namespace cpu::exp_constants;
  const __m512 clamped = _mm512_min_ps(_mm512_set1_ps(kMax), _mm512_max_ps(_mm512_set1_ps(kMin), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), clamped));
  __m512 p = _mm512_set1_ps(kTaylor[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kTaylor[i]));
  const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kMin), _CMP_LT_OQ);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~underflow), p, _mm512_castsi512_ps(scale));
}

// Scores of heads h0 .. h0 + 3 in chunk layout: chunk b * chunks_per_block + c holds rows 4c .. 4c + 3 of
// the sequence's b-th block, lane (h, i) = scale q[h0 + h] . K[4c + i]; lanes of rows past the context
// are -inf. Returns the number of chunks (the last one's index + 1).
template <int kDim>
EFFREASON_AVX512 int64_t pass_scores(const HeadTask& task, int64_t h0, float* scores) {
  constexpr int kQuads = kDim / 4;
  __m512 qpack[kQuads];
  for (int c = 0; c < kQuads; ++c) {
    alignas(64) float lanes[16] = {};
    for (int h = 0; h < kHeads && h0 + h < task.group; ++h) {
      for (int j = 0; j < 4; ++j) lanes[4 * h + j] = task.query[(h0 + h) * task.q_stride + 4 * c + j] * task.scale;
    }
    qpack[c] = _mm512_load_ps(lanes);
  }
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t chunk = 0;
  for (int64_t start = 0; start < task.context; start += task.block_size) {
    const int64_t rows = std::min(task.block_size, task.context - start);
    const float* keys = task.k_head + static_cast<int64_t>(task.table[start / task.block_size]) * task.k_stride;
    chunk = start / task.block_size * chunks_per_block(task.block_size);
    for (int64_t t = 0; t < rows; t += kChunkRows, ++chunk) {
      __m512 partial[kChunkRows];
      for (int i = 0; i < kChunkRows; ++i) {
        const float* key = keys + std::min<int64_t>(t + i, rows - 1) * kDim;  // past the end: masked below
        partial[i] = _mm512_setzero_ps();
        for (int c = 0; c < kQuads; ++c) {
          partial[i] = _mm512_fmadd_ps(qpack[c], _mm512_broadcast_f32x4(_mm_loadu_ps(key + 4 * c)), partial[i]);
        }
      }
      const unsigned valid_rows = static_cast<unsigned>(std::min(kChunkRows, rows - t));
      const auto valid = static_cast<__mmask16>(((1u << valid_rows) - 1) * 0x1111u);
      _mm512_storeu_ps(scores + chunk * 16,
                       _mm512_mask_blend_ps(valid, minus_inf, sum_lane_quads(partial[0], partial[1], partial[2],
                                                                             partial[3])));
    }
  }
  return chunk;
}

// Softmax numerators in place over `chunks` chunks of one pass; returns lanes (h, *) = 1 / head h's sum.
EFFREASON_AVX512 __m512 pass_softmax(float* scores, int64_t chunks) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < chunks; ++c) top = _mm512_max_ps(top, _mm512_loadu_ps(scores + c * 16));
  top = quad_max(top);
  __m512 total = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const __m512 numerator = exp_lanes(_mm512_sub_ps(_mm512_loadu_ps(scores + c * 16), top));
    _mm512_storeu_ps(scores + c * 16, numerator);
    total = _mm512_add_ps(total, numerator);
  }
  return _mm512_div_ps(_mm512_set1_ps(1.f), quad_sum(total));
}

// out[h0 + h] = inverse[h] sum_t probs(h, t) V[t] for the pass's heads inside the group, kPass heads at a
// time with their accumulators (kDim / 16 zmm each) in registers over the whole context.
template <int kDim>
EFFREASON_AVX512 void pass_accumulate(const HeadTask& task, int64_t h0, const float* probs, __m512 inverse) {
  constexpr int kVectors = kDim / 16, kPass = kDim > 64 ? 2 : 4;
  alignas(64) float inverse_lanes[16];
  _mm512_store_ps(inverse_lanes, inverse);
  const int64_t block_floats = chunks_per_block(task.block_size) * 16;
  for (int sub = 0; sub < kHeads && h0 + sub < task.group; sub += kPass) {
    __m512 sums[kPass][kVectors];
    for (auto& head : sums) {
      for (auto& vector : head) vector = _mm512_setzero_ps();
    }
    for (int64_t start = 0; start < task.context; start += task.block_size) {
      const int64_t rows = std::min(task.block_size, task.context - start);
      const float* values = task.v_head + static_cast<int64_t>(task.table[start / task.block_size]) * task.v_stride;
      const float* block_probs = probs + start / task.block_size * block_floats + 4 * sub;
      for (int64_t t = 0; t < rows; ++t) {
        __m512 value[kVectors];
        for (int i = 0; i < kVectors; ++i) value[i] = _mm512_loadu_ps(values + t * kDim + 16 * i);
        const float* row_probs = block_probs + t / kChunkRows * 16 + t % kChunkRows;
        for (int h = 0; h < kPass; ++h) {
          const __m512 weight = _mm512_set1_ps(row_probs[4 * h]);
          for (int i = 0; i < kVectors; ++i) sums[h][i] = _mm512_fmadd_ps(weight, value[i], sums[h][i]);
        }
      }
    }
    for (int h = 0; h < kPass && h0 + sub + h < task.group; ++h) {
      float* out = task.out + (h0 + sub + h) * task.out_stride;
      const __m512 head_inverse = _mm512_set1_ps(inverse_lanes[4 * (sub + h)]);
      for (int i = 0; i < kVectors; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(sums[h][i], head_inverse));
    }
  }
}

template <int kDim>
EFFREASON_AVX512 void attend(const HeadTask& task, float* scores) {
  for (int64_t h0 = 0; h0 < task.group; h0 += kHeads) {
    const int64_t chunks = pass_scores<kDim>(task, h0, scores);
    pass_accumulate<kDim>(task, h0, scores, pass_softmax(scores, chunks));
  }
}

}  // namespace

bool attend_head_takes(int64_t group, int64_t head_dim) {
  // Below three heads a pass would mostly score padding; the generic path is as fast there.
  return cpu_has_avx512() && group >= 3 && (head_dim == 32 || head_dim == 64 || head_dim == 128);
}

int64_t attend_head_scratch(int64_t context, int64_t block_size) {
  return (context + block_size - 1) / block_size * chunks_per_block(block_size) * 16;
}

void attend_head(const HeadTask& task, float* scratch) {
  switch (task.head_dim) {
    case 32: attend<32>(task, scratch); break;
    case 64: attend<64>(task, scratch); break;
    default: attend<128>(task, scratch);
  }
}

}  // namespace effreason::avx512

#else  // not x86-64 GCC/Clang: the generic path runs everything

namespace effreason::avx512 {
bool attend_head_takes(int64_t, int64_t) { return false; }
int64_t attend_head_scratch(int64_t, int64_t) { return 0; }
void attend_head(const HeadTask&, float*) {}
}  // namespace effreason::avx512

#endif
