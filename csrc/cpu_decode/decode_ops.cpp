// Fused CPU ops of the sampler's decode step (effreason/sampler/cpu_decode.py), float32. Each replaces
// a chain of small torch ops whose per-op overhead and (N, C) temporaries dominate at decode sizes; the
// torch versions they replace are the reference (effreason/sampler/models/layers.py, sampling.py).
//
//   rms_norm(x, w, eps)[n]      = w * (x[n] * rsqrt(mean_c x[n, c]^2 + eps))       (HF's RMSNorm)
//   rope_write_kv(q, k, v, ...)  : q, k rotated in place (half-split RoPE at each token's position),
//                                  then k, v stored at each token's cache slot (slots distinct)
//   gumbel_argmax(lp, keys, steps)[b] = argmax_v lp[b, v] - log(-log U[b, v])   (U: sampling.uniform_noise)
//   gumbel_sample(x, keys, steps)      = (gumbel_argmax(lp, keys, steps), lp[b, token])  with lp = log_softmax(x)
//
// The Gumbel noise uses the same 64-bit counter hash as the torch version, so the uniforms are bit
// for bit the same; the two logs are vectorised (vector_math.h) and agree to about 1 ulp.
// Work is split over rows / tokens with at::parallel_for (OpenMP: setup.py compiles with -fopenmp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_decode/vector_math.h"

namespace effreason {
namespace {

using cpu::kLanes;

void check_float_cpu(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat, name,
                    " must be a float32 CPU tensor");
}

// ------------------------------------------------------------------ RMSNorm
EFFREASON_CPU_CLONES
void rms_norm_row(const float* x, const float* weight, int64_t size, float eps, float* out) {
  float partial[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= size; c += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) partial[lane] += x[c + lane] * x[c + lane];
  }
  float sum_squares = 0.f;
  for (; c < size; ++c) sum_squares += x[c] * x[c];
  for (int lane = 0; lane < kLanes; ++lane) sum_squares += partial[lane];
  const float inverse_rms = 1.f / std::sqrt(sum_squares / static_cast<float>(size) + eps);
  for (c = 0; c < size; ++c) out[c] = weight[c] * (x[c] * inverse_rms);
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float_cpu(x, "x");
  check_float_cpu(weight, "weight");
  TORCH_CHECK_VALUE(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1),
                    "x must be (N, C) and weight (C,)");
  const at::Tensor input = x.contiguous(), w = weight.contiguous();
  at::Tensor out = at::empty_like(input);
  const int64_t size = input.size(1);
  const float* x_ptr = input.data_ptr<float>();
  const float* w_ptr = w.data_ptr<float>();
  float* o_ptr = out.data_ptr<float>();
  at::parallel_for(0, input.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      rms_norm_row(x_ptr + n * size, w_ptr, size, static_cast<float>(eps), o_ptr + n * size);
    }
  });
  return out;
}

// ------------------------------------------------------------------ RoPE + KV-cache write
// x (dim,) <- [x1 cos1 - x2 sin1, x2 cos2 + x1 sin2] with x = [x1, x2] (HF rotate_half convention).
inline void rotate_half_split(float* x, const float* cos, const float* sin, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t d = 0; d < half; ++d) {
    const float first = x[d], second = x[d + half];
    x[d] = first * cos[d] - second * sin[d];
    x[d + half] = second * cos[d + half] + first * sin[d + half];
  }
}

void rope_write_kv_cpu(at::Tensor& query, at::Tensor& key, const at::Tensor& value, const at::Tensor& cos_table,
                       const at::Tensor& sin_table, const at::Tensor& positions, at::Tensor& k_cache,
                       at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  using TensorList = std::initializer_list<const at::Tensor*>;
  for (const at::Tensor* t : TensorList{&query, &key, &value, &cos_table, &sin_table, &k_cache, &v_cache}) {
    check_float_cpu(*t, "query, key, value, the cos/sin tables and the caches");
  }
  TORCH_CHECK_VALUE(query.dim() == 3 && key.dim() == 3 && value.sizes() == key.sizes() &&
                    query.size(0) == key.size(0) && query.size(2) == key.size(2) && query.size(2) % 2 == 0,
                    "query must be (N, H, D) and key, value (N, Hkv, D) with an even D");
  for (const at::Tensor* t : TensorList{&query, &key, &value}) {
    TORCH_CHECK_VALUE(t->stride(2) == 1, "query, key and value need a contiguous last dim");
  }
  const int64_t num_tokens = query.size(0), num_heads = query.size(1), num_kv_heads = key.size(1), dim = query.size(2);
  TORCH_CHECK_VALUE(cos_table.dim() == 2 && cos_table.size(1) == dim && cos_table.sizes() == sin_table.sizes() &&
                    cos_table.is_contiguous() && sin_table.is_contiguous(),
                    "cos_table and sin_table must be contiguous (P, D)");
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.size(1) == num_kv_heads &&
                    k_cache.size(3) == dim && k_cache.is_contiguous() && v_cache.is_contiguous(),
                    "k_cache and v_cache must be contiguous (num_blocks, Hkv, block_size, D)");
  for (const auto* t : {&positions, &slot_mapping}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == num_tokens && t->scalar_type() == at::kLong,
                      "positions and slot_mapping must be int64 (N,)");
  }
  const int64_t block_size = k_cache.size(2), num_positions = cos_table.size(0);
  const int64_t num_slots = k_cache.size(0) * block_size;
  const at::Tensor position = positions.contiguous(), slot = slot_mapping.contiguous();
  const int64_t* position_ptr = position.data_ptr<int64_t>();
  const int64_t* slot_ptr = slot.data_ptr<int64_t>();
  const float* cos_ptr = cos_table.data_ptr<float>();
  const float* sin_ptr = sin_table.data_ptr<float>();
  float* q_ptr = query.data_ptr<float>();
  float* k_ptr = key.data_ptr<float>();
  const float* v_ptr = value.data_ptr<float>();
  float* k_cache_ptr = k_cache.data_ptr<float>();
  float* v_cache_ptr = v_cache.data_ptr<float>();
  const int64_t q_token = query.stride(0), q_head = query.stride(1), k_token = key.stride(0), k_head = key.stride(1);
  const int64_t v_token = value.stride(0), v_head = value.stride(1);
  for (int64_t n = 0; n < num_tokens; ++n) {  // before any write: bad input leaves the caches untouched
    TORCH_CHECK_VALUE(position_ptr[n] >= 0 && position_ptr[n] < num_positions && slot_ptr[n] >= 0 &&
                      slot_ptr[n] < num_slots,
                      "positions must be in [0, P) and slot_mapping in [0, num_blocks * block_size)");
  }
  at::parallel_for(0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t pos = position_ptr[n], target = slot_ptr[n];
      const float* cos = cos_ptr + pos * dim;
      const float* sin = sin_ptr + pos * dim;
      for (int64_t h = 0; h < num_heads; ++h) {
        rotate_half_split(q_ptr + n * q_token + h * q_head, cos, sin, dim);
      }
      const int64_t block = target / block_size, row = target % block_size;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        float* k_row = k_ptr + n * k_token + h * k_head;
        rotate_half_split(k_row, cos, sin, dim);
        const int64_t cache_row = ((block * num_kv_heads + h) * block_size + row) * dim;
        std::memcpy(k_cache_ptr + cache_row, k_row, dim * sizeof(float));
        std::memcpy(v_cache_ptr + cache_row, v_ptr + n * v_token + h * v_head, dim * sizeof(float));
      }
    }
  });
}

// ------------------------------------------------------------------ Gumbel-max sampling
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// SplitMix64 finaliser (Steele et al. 2014), the same hash as effreason.sampler.sampling.mix64.
__attribute__((always_inline)) inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// score[v] = (values[v] - shift) - log(-log U_v), U_v = (top 23 bits of mix64(row + G (first + v)) + 0.5) / 2^23.
EFFREASON_CPU_CLONES
void gumbel_scores(const float* values, float shift, uint64_t row, int64_t first, int64_t size, float* score) {
  for (int64_t v = 0; v < size; ++v) {
    const uint64_t bits = mix64(row + kGolden * static_cast<uint64_t>(first + v));
    const float uniform = (static_cast<float>(static_cast<int32_t>(bits >> 41)) + 0.5f) * (1.f / 8388608.f);
    score[v] = (values[v] - shift) - cpu::log_approx(-cpu::log_approx(uniform));
  }
}

// argmax_v (values[v] - shift) - log(-log U_v) over one row of `vocab_size` values (the row's stream
// `row`): torch.argmax's first maximum, a NaN counting as the maximum.
int64_t gumbel_row(const float* values, float shift, uint64_t row, int64_t vocab_size) {
  constexpr int64_t kChunk = 512;
  float score[kChunk];
  float best = -std::numeric_limits<float>::infinity();
  int64_t best_index = 0;
  for (int64_t first = 0; first < vocab_size; first += kChunk) {
    const int64_t size = std::min(kChunk, vocab_size - first);
    gumbel_scores(values + first, shift, row, first, size, score);
    for (int64_t v = 0; v < size; ++v) {
      if (std::isnan(score[v])) return first + v;
      if (score[v] > best) {
        best = score[v];
        best_index = first + v;
      }
    }
  }
  return best_index;
}

// log sum_v e^{x_v}, as max + log sum_v e^{x_v - max} (kLanes partial maxima and sums, so it vectorises).
EFFREASON_CPU_CLONES
float log_sum_exp(const float* x, int64_t size) {
  const float top = cpu::row_max(x, size);
  float partial_sum[kLanes] = {};
  int64_t v = 0;
  for (; v + kLanes <= size; v += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) partial_sum[lane] += cpu::exp_approx(x[v + lane] - top);
  }
  float total = 0.f;
  for (; v < size; ++v) total += cpu::exp_approx(x[v] - top);
  for (int lane = 0; lane < kLanes; ++lane) total += partial_sum[lane];
  return top + std::log(total);
}

// The (B,) int64 keys and steps of a Gumbel op's rows, checked.
void check_streams(const at::Tensor& keys, const at::Tensor& steps, int64_t num_rows) {
  for (const auto* t : {&keys, &steps}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == num_rows && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "keys and steps must be int64 CPU tensors of shape (B,)");
  }
}

// The stream of row b: mix64(key G + step), as sampling.row_streams.
inline uint64_t row_stream(int64_t key, int64_t step) {
  return mix64(static_cast<uint64_t>(key) * kGolden + static_cast<uint64_t>(step));
}

at::Tensor gumbel_argmax_cpu(const at::Tensor& log_probs, const at::Tensor& keys, const at::Tensor& steps) {
  check_float_cpu(log_probs, "log_probs");
  TORCH_CHECK_VALUE(log_probs.dim() == 2 && log_probs.stride(1) == 1, "log_probs must be (B, V) with contiguous rows");
  check_streams(keys, steps, log_probs.size(0));
  const at::Tensor key = keys.contiguous(), step = steps.contiguous();
  at::Tensor tokens = at::empty({log_probs.size(0)}, keys.options());
  const int64_t* key_ptr = key.data_ptr<int64_t>();
  const int64_t* step_ptr = step.data_ptr<int64_t>();
  int64_t* token_ptr = tokens.data_ptr<int64_t>();
  at::parallel_for(0, log_probs.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      token_ptr[b] = gumbel_row(log_probs.data_ptr<float>() + b * log_probs.stride(0), 0.f,
                                row_stream(key_ptr[b], step_ptr[b]), log_probs.size(1));
    }
  });
  return tokens;
}

std::tuple<at::Tensor, at::Tensor> gumbel_sample_cpu(const at::Tensor& logits, const at::Tensor& keys,
                                                     const at::Tensor& steps) {
  check_float_cpu(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0 && logits.stride(1) == 1,
                    "logits must be (B, V) with V > 0 and contiguous rows");
  check_streams(keys, steps, logits.size(0));
  const at::Tensor key = keys.contiguous(), step = steps.contiguous();
  at::Tensor tokens = at::empty({logits.size(0)}, keys.options());
  at::Tensor log_probs = at::empty({logits.size(0)}, logits.options());
  const int64_t* key_ptr = key.data_ptr<int64_t>();
  const int64_t* step_ptr = step.data_ptr<int64_t>();
  int64_t* token_ptr = tokens.data_ptr<int64_t>();
  float* log_prob_ptr = log_probs.data_ptr<float>();
  at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* row = logits.data_ptr<float>() + b * logits.stride(0);
      const float shift = log_sum_exp(row, logits.size(1));  // log_softmax(x) = x - shift
      token_ptr[b] = gumbel_row(row, shift, row_stream(key_ptr[b], step_ptr[b]), logits.size(1));
      log_prob_ptr[b] = row[token_ptr[b]] - shift;
    }
  });
  return {tokens, log_probs};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope_write_kv(Tensor(a!) query, Tensor(b!) key, Tensor value, Tensor cos_table, Tensor sin_table, "
        "Tensor positions, Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor slot_mapping) -> ()");
  m.def("gumbel_argmax(Tensor log_probs, Tensor keys, Tensor steps) -> Tensor");
  m.def("gumbel_sample(Tensor logits, Tensor keys, Tensor steps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("rope_write_kv", &rope_write_kv_cpu);
  m.impl("gumbel_argmax", &gumbel_argmax_cpu);
  m.impl("gumbel_sample", &gumbel_sample_cpu);
}

}  // namespace effreason
