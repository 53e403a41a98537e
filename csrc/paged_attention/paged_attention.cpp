// CPU implementation and schema of effreason::paged_attention_decode (on CUDA the sampler uses the Triton
// kernel kernels/paged_attention.py). Same contract and oracle as
// effreason/sampler/attention.py::paged_decode_attention_reference:
//
//   out[s, h] = sum_{t < L_s} softmax_t(scale * q[s, h] . K[T_s[t / bs], g, t % bs]) V[...],  g = h / group
//
// One task per (sequence, KV head) walks the sequence's blocks in place (no gather of the paged
// cache): the group's query heads score each K tile while it is in L1, an exact two-pass softmax in
// float32, then P V as row updates. Scores take four query heads per pass with one horizontal-add
// tree for all four (AVX2 + FMA when the CPU has it); the other hot loops are compiled for AVX-512,
// AVX2 and baseline x86-64 (GCC target_clones) and chosen at load time, with head dims 32 / 64 / 128
// compiled in so P V keeps each head's accumulator row in registers. No software prefetch: the
// hardware prefetcher alone was faster (bench/RESULTS.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_decode/vector_math.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define EFFREASON_X86_AVX2 1
#endif

namespace effreason {
namespace {

using cpu::kLanes;

// out[h] = q[h] . key for kHeads query rows q (kHeads, dim): kHeads independent accumulations of kLanes
// partial sums each, so the FMA chains interleave instead of waiting on one another.
template <int kHeads>
__attribute__((always_inline)) inline void dot_heads(const float* q, const float* key, int64_t dim, float* out) {
  float partial[kHeads][kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (int h = 0; h < kHeads; ++h) {
      for (int lane = 0; lane < kLanes; ++lane) partial[h][lane] += q[h * dim + d + lane] * key[d + lane];
    }
  }
  for (int h = 0; h < kHeads; ++h) {
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int lane = 0; lane < width; ++lane) partial[h][lane] += partial[h][lane + width];
    }
    float total = partial[h][0];
    for (int64_t rest = d; rest < dim; ++rest) total += q[h * dim + rest] * key[rest];
    out[h] = total;
  }
}

constexpr int kHeadsPerPass = 4;

// Head dims with a compiled-in loop length (fully unrolled, accumulators in registers); others use dim.
#define EFFREASON_DISPATCH_HEAD_DIM(dim, CALL) \
  switch (dim) {                                \
    case 32: CALL(32); break;                   \
    case 64: CALL(64); break;                   \
    case 128: CALL(128); break;                 \
    default: CALL(0);                           \
  }

// scores[g * stride + t] = q[g] . keys[t] for the rows t < rows of one block tile (rows, dim);
// kDim > 0 is dim known at compile time.
template <int kDim>
__attribute__((always_inline)) inline void scores_rows(const float* q, const float* keys, int64_t rows,
                                                       int64_t group, int64_t runtime_dim, float* scores,
                                                       int64_t stride) {
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
  float dots[kHeadsPerPass];
  for (int64_t t = 0; t < rows; ++t) {
    const float* key = keys + t * dim;
    int64_t g = 0;
    for (; g + kHeadsPerPass <= group; g += kHeadsPerPass) {
      dot_heads<kHeadsPerPass>(q + g * dim, key, dim, dots);
      for (int h = 0; h < kHeadsPerPass; ++h) scores[(g + h) * stride + t] = dots[h];
    }
    for (; g < group; ++g) {
      dot_heads<1>(q + g * dim, key, dim, dots);
      scores[g * stride + t] = dots[0];
    }
  }
}

EFFREASON_CPU_CLONES
void block_scores(const float* q, const float* keys, int64_t rows, int64_t group, int64_t dim, float* scores,
                  int64_t stride) {
#define EFFREASON_SCORES(kDim) scores_rows<kDim>(q, keys, rows, group, dim, scores, stride)
  EFFREASON_DISPATCH_HEAD_DIM(dim, EFFREASON_SCORES)
#undef EFFREASON_SCORES
}

#ifdef EFFREASON_X86_AVX2
// [q[0] . key, ..., q[3] . key] for four query rows q (4, dim), dim a multiple of 8: four FMA chains,
// then one hadd tree reduces all four at once (instead of four separate horizontal sums).
__attribute__((target("avx2,fma"))) inline __m128 dot4_avx2(const float* q, const float* key, int64_t dim) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t d = 0; d < dim; d += 8) {
    const __m256 k = _mm256_loadu_ps(key + d);
    for (int h = 0; h < 4; ++h) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * dim + d), k, acc[h]);
  }
  const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  return _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
}

// block_scores for dim % 8 == 0 on AVX2 + FMA: query heads four at a time, then one by one.
__attribute__((target("avx2,fma"))) void block_scores_avx2(const float* q, const float* keys, int64_t rows,
                                                          int64_t group, int64_t dim, float* scores,
                                                          int64_t stride) {
  alignas(16) float dots[4];
  int64_t g = 0;
  for (; g + 4 <= group; g += 4) {
    for (int64_t t = 0; t < rows; ++t) {
      _mm_store_ps(dots, dot4_avx2(q + g * dim, keys + t * dim, dim));
      for (int h = 0; h < 4; ++h) scores[(g + h) * stride + t] = dots[h];
    }
  }
  for (; g < group; ++g) {
    for (int64_t t = 0; t < rows; ++t) dot_heads<1>(q + g * dim, keys + t * dim, dim, scores + g * stride + t);
  }
}
#endif

// block_scores through the AVX2 path when the CPU and the shapes allow it.
void tile_scores(const float* q, const float* keys, int64_t rows, int64_t group, int64_t dim, float* scores,
                 int64_t stride) {
#ifdef EFFREASON_X86_AVX2
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has_avx2 && dim % 8 == 0) {
    block_scores_avx2(q, keys, rows, group, dim, scores, stride);
    return;
  }
#endif
  block_scores(q, keys, rows, group, dim, scores, stride);
}

// Softmax numerator and its sum over one row: row[t] = exp(row[t] - max), returns sum_t row[t].
// Max and sum keep kLanes partial results so both reductions vectorise without -ffast-math; the shift,
// the exponential (csrc/cpu/vector_math.h) and the sum are one pass.
EFFREASON_CPU_CLONES
float exp_shifted_sum(float* row, int64_t size) {
  const float top = cpu::row_max(row, size);
  float partial_sum[kLanes] = {};
  int64_t t = 0;
  for (; t + kLanes <= size; t += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      row[t + lane] = cpu::exp_approx(row[t + lane] - top);
      partial_sum[lane] += row[t + lane];
    }
  }
  float total = 0.f;
  for (; t < size; ++t) {
    row[t] = cpu::exp_approx(row[t] - top);
    total += row[t];
  }
  for (int lane = 0; lane < kLanes; ++lane) total += partial_sum[lane];
  return total;
}

// acc[g] += sum_t probs[g * stride + t] * values[t] over the rows of one block tile (rows, dim). With
// kDim > 0 each head's accumulator row stays in registers across the tile; else rows update memory.
template <int kDim>
__attribute__((always_inline)) inline void accumulate_rows(const float* probs, const float* values, int64_t rows,
                                                           int64_t group, int64_t dim, float* acc, int64_t stride) {
  if constexpr (kDim > 0) {
    for (int64_t g = 0; g < group; ++g) {
      float local[kDim];
      std::memcpy(local, acc + g * kDim, sizeof(local));
      for (int64_t t = 0; t < rows; ++t) {
        const float weight = probs[g * stride + t];
        for (int d = 0; d < kDim; ++d) local[d] += weight * values[t * kDim + d];
      }
      std::memcpy(acc + g * kDim, local, sizeof(local));
    }
  } else {
    for (int64_t t = 0; t < rows; ++t) {
      const float* value = values + t * dim;
      for (int64_t g = 0; g < group; ++g) {
        const float weight = probs[g * stride + t];
        float* out = acc + g * dim;
        for (int64_t d = 0; d < dim; ++d) out[d] += weight * value[d];
      }
    }
  }
}

EFFREASON_CPU_CLONES
void block_accumulate(const float* probs, const float* values, int64_t rows, int64_t group, int64_t dim,
                      float* acc, int64_t stride) {
#define EFFREASON_ACCUMULATE(kDim) accumulate_rows<kDim>(probs, values, rows, group, dim, acc, stride)
  EFFREASON_DISPATCH_HEAD_DIM(dim, EFFREASON_ACCUMULATE)
#undef EFFREASON_ACCUMULATE
}

// One KV head's block tile as contiguous float rows: the cache itself when it is float with
// contiguous rows, else converted into `buffer` (rows, dim).
template <typename scalar_t>
const float* tile_as_float(const scalar_t* tile, int64_t rows, int64_t stride_row, int64_t dim, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stride_row == dim) return tile;
  }
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t d = 0; d < dim; ++d) buffer[t * dim + d] = static_cast<float>(tile[t * stride_row + d]);
  }
  return buffer;
}

struct Shapes {
  int64_t num_seqs, num_heads, num_kv_heads, group, head_dim, block_size;
};

template <typename scalar_t>
void decode_cpu(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                const at::Tensor& tables, const at::Tensor& lens, at::Tensor& out, const Shapes& s, float scale) {
  const scalar_t* q_ptr = query.data_ptr<scalar_t>();
  const scalar_t* k_ptr = k_cache.data_ptr<scalar_t>();
  const scalar_t* v_ptr = v_cache.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const int32_t* table_ptr = tables.data_ptr<int32_t>();
  const int32_t* len_ptr = lens.data_ptr<int32_t>();
  const int64_t dim = s.head_dim, group = s.group, block_size = s.block_size;
  at::parallel_for(0, s.num_seqs * s.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * dim), acc(group * dim), scores, tile(block_size * dim), inverse_sum(group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seq = task / s.num_kv_heads, kv_head = task % s.num_kv_heads;
      const int64_t context = len_ptr[seq];
      const int32_t* table = table_ptr + seq * tables.stride(0);
      const scalar_t* k_head = k_ptr + kv_head * k_cache.stride(1);
      const scalar_t* v_head = v_ptr + kv_head * v_cache.stride(1);
      for (int64_t g = 0; g < group; ++g) {
        const scalar_t* q_row = q_ptr + seq * query.stride(0) + (kv_head * group + g) * query.stride(1);
        for (int64_t d = 0; d < dim; ++d) q[g * dim + d] = static_cast<float>(q_row[d]) * scale;
      }
      scores.resize(group * context);  // (G, L)
      for (int64_t start = 0; start < context; start += block_size) {
        const int64_t rows = std::min(block_size, context - start);
        const scalar_t* keys = k_head + static_cast<int64_t>(table[start / block_size]) * k_cache.stride(0);
        tile_scores(q.data(), tile_as_float(keys, rows, k_cache.stride(2), dim, tile.data()), rows, group, dim,
                    scores.data() + start, context);
      }
      for (int64_t g = 0; g < group; ++g) {
        inverse_sum[g] = 1.f / exp_shifted_sum(scores.data() + g * context, context);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < context; start += block_size) {
        const int64_t rows = std::min(block_size, context - start);
        const scalar_t* values = v_head + static_cast<int64_t>(table[start / block_size]) * v_cache.stride(0);
        block_accumulate(scores.data() + start, tile_as_float(values, rows, v_cache.stride(2), dim, tile.data()),
                         rows, group, dim, acc.data(), context);
      }
      for (int64_t g = 0; g < group; ++g) {
        scalar_t* o_row = o_ptr + seq * out.stride(0) + (kv_head * group + g) * out.stride(1);
        for (int64_t d = 0; d < dim; ++d) o_row[d] = static_cast<scalar_t>(acc[g * dim + d] * inverse_sum[g]);
      }
    }
  });
}

Shapes check_inputs(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& block_tables, const at::Tensor& context_lens) {
  TORCH_CHECK_VALUE(query.dim() == 3, "query must be (num_seqs, num_heads, head_dim)");
  for (const auto* cache : {&k_cache, &v_cache}) {
    TORCH_CHECK_VALUE(cache->dim() == 4 && cache->size(3) == query.size(2) && cache->stride(3) == 1,
                      "k_cache and v_cache must be (num_blocks, num_kv_heads, block_size, head_dim) with a "
                      "contiguous last dim");
    TORCH_CHECK_VALUE(cache->scalar_type() == query.scalar_type() && cache->device() == query.device(),
                      "k_cache and v_cache must have query's dtype and device");
  }
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), "v_cache must have k_cache's shape");
  const int64_t num_seqs = query.size(0);
  TORCH_CHECK_VALUE(k_cache.size(1) > 0 && query.size(1) % k_cache.size(1) == 0,
                    "query's heads must be a multiple of the KV heads");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && block_tables.size(0) == num_seqs,
                    "block_tables must be (num_seqs, max_blocks)");
  TORCH_CHECK_VALUE(context_lens.dim() == 1 && context_lens.size(0) == num_seqs, "context_lens must be (num_seqs,)");
  return {num_seqs, query.size(1), k_cache.size(1), query.size(1) / k_cache.size(1), query.size(2), k_cache.size(2)};
}

// Every context length in [1, max_blocks * block_size], and every block a sequence reads in
// [0, num_blocks): one serial pass over the int32 tables (a few hundred entries at decode).
void check_ranges(const at::Tensor& tables, const at::Tensor& lens, int64_t block_size, int64_t num_blocks) {
  const int32_t* table_ptr = tables.data_ptr<int32_t>();
  const int32_t* len_ptr = lens.data_ptr<int32_t>();
  const int64_t max_blocks = tables.size(1);
  for (int64_t seq = 0; seq < lens.size(0); ++seq) {
    TORCH_CHECK_VALUE(len_ptr[seq] >= 1 && len_ptr[seq] <= max_blocks * block_size,
                      "context_lens must be in [1, max_blocks * block_size]");
    const int32_t* table = table_ptr + seq * max_blocks;
    for (int64_t index = 0; index * block_size < len_ptr[seq]; ++index) {
      TORCH_CHECK_VALUE(table[index] >= 0 && table[index] < num_blocks,
                        "block_tables entries must be in [0, num_blocks)");
    }
  }
}

at::Tensor paged_attention_decode_cpu(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  const Shapes shapes = check_inputs(query, k_cache, v_cache, block_tables, context_lens);
  const at::Tensor tables = block_tables.to(at::kInt).contiguous();
  const at::Tensor lens = context_lens.to(at::kInt).contiguous();
  check_ranges(tables, lens, shapes.block_size, k_cache.size(0));
  const at::Tensor q = query.stride(2) == 1 ? query : query.contiguous();
  at::Tensor out = at::empty(query.sizes(), query.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "paged_attention_decode_cpu", [&] {
    decode_cpu<scalar_t>(q, k_cache, v_cache, tables, lens, out, shapes, static_cast<float>(scale));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("paged_attention_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("paged_attention_decode", &paged_attention_decode_cpu);
}

}  // namespace effreason
