// The whole decoder stack of a CPU float32 decode step in one op, split over rows (effreason/sampler/
// fused_cpu.py::decode_layers). The torch path of effreason/sampler/model.py is the reference.
//
// At decode every row (one sequence's newest token) is independent of the others through all layers:
// it reads only its own KV-cache blocks and writes only its own slot. So each thread takes a contiguous
// range of rows and runs every layer on it alone, with no synchronisation between layers:
//
//   per layer:  x = RMSNorm(h);  q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv
//               q, k = RoPE(q, k); K/V cache[slot] = k, v;  a = PagedAttention(q, cache)
//               h += a Wo^T + bo;  x = RMSNorm(h);  h += (silu(x Wg^T + bg) * (x Wu^T + bu)) Wd^T + bd
//   out = RMSNorm_final(h), or with an LM head W_lm the next-token logits RMSNorm_final(h) W_lm^T
//
// Against the torch path (one multithreaded op at a time), this removes the ~60 fork/joins per step
// and the Python dispatch of every op, and each thread's matrix products run single-threaded on its
// rows, which on the 2-core CI machine beats splitting every small GEMM in two (bench/RESULTS.md).
// The products are csrc/linear's (AVX-512, the next weight tile prefetched while one computes), which
// beat MKL here because at decode the weights come from L3 or DRAM, not L2. Each thread reads all the
// weights, so effreason/sampler/model.py calls this op only while they fit the cache or every thread
// has enough rows (PagedModel.fused_decode).
// The small ops are the registered ones (rms_norm, silu_mul_, rope_write_kv, paged_attention_decode,
// gumbel_sample), called through the dispatcher; inside a parallel region their own at::parallel_for runs
// inline.
//
// decode_round runs a whole decode round the same way: each thread takes its rows through `steps` steps
// (embedding, every layer, LM head, the draw of the next token, which is the next step's input) with no
// synchronisation at all until the round ends. Against one decode_layers call and one sampling op per step
// from Python (effreason/sampler/engine.py), this removes per step two fork/joins, the Python dispatch and
// the host's step bookkeeping, and evens out the threads' imbalance over the round.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "linear/linear.h"

namespace effreason {
namespace {

// Weights of one layer in the order of the op's ``weights`` list (biases may be None).
enum LayerWeight : int64_t {
  kInputNorm, kQWeight, kQBias, kKWeight, kKBias, kVWeight, kVBias, kOWeight, kOBias,
  kPostNorm, kGateWeight, kGateBias, kUpWeight, kUpBias, kDownWeight, kDownBias, kWeightsPerLayer
};

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

struct SmallOps {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double)> rms_norm =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("effreason::rms_norm");
  c10::TypedOperatorHandle<void(at::Tensor&, const at::Tensor&)> silu_mul =
      op<void(at::Tensor&, const at::Tensor&)>("effreason::silu_mul_");
  c10::TypedOperatorHandle<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&)>
      rope_write_kv = op<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&)>("effreason::rope_write_kv");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, double)>
      attention = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, double)>("effreason::paged_attention_decode");
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>
      gumbel_sample = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
          "effreason::gumbel_sample");
};

// x W^T + b (b optional), as torch.nn.functional.linear.
at::Tensor linear(const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  at::Tensor out = at::empty({x.size(0), weight->size(0)}, x.options());
  linear_into(x, *weight, bias, out, false);
  return out;
}

// residual += x W^T + b in place.
void add_linear_(at::Tensor& residual, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                 const std::optional<at::Tensor>& bias) {
  linear_into(x, *weight, bias, residual, true);
}

struct Step {
  const std::vector<std::optional<at::Tensor>>& weights;
  const at::Tensor& cos_table;
  const at::Tensor& sin_table;
  const at::Tensor& positions;
  at::Tensor& kv_cache;
  const at::Tensor& slot_mapping;
  const at::Tensor& block_tables;
  const at::Tensor& context_lens;
  int64_t num_heads, num_kv_heads, head_dim;
  double eps, scale;
};

// Every layer, the final norm and the LM head when given, for rows [begin, end) of the step: `h` (those
// rows' hidden states) updated in place, `out` (those rows' outputs) written.
void run_rows(const SmallOps& ops, const Step& s, at::Tensor& h, at::Tensor& out, int64_t begin, int64_t end) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: the weights require grad
  const int64_t rows = end - begin;
  const at::Tensor positions = s.positions.slice(0, begin, end), slots = s.slot_mapping.slice(0, begin, end);
  const at::Tensor tables = s.block_tables.slice(0, begin, end), lens = s.context_lens.slice(0, begin, end);
  const int64_t num_layers = s.kv_cache.size(0);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const auto* w = s.weights.data() + layer * kWeightsPerLayer;
    at::Tensor k_cache = s.kv_cache[layer][0], v_cache = s.kv_cache[layer][1];
    at::Tensor x = ops.rms_norm.call(h, *w[kInputNorm], s.eps);
    at::Tensor query = linear(x, w[kQWeight], w[kQBias]).view({rows, s.num_heads, s.head_dim});
    at::Tensor key = linear(x, w[kKWeight], w[kKBias]).view({rows, s.num_kv_heads, s.head_dim});
    const at::Tensor value = linear(x, w[kVWeight], w[kVBias]).view({rows, s.num_kv_heads, s.head_dim});
    ops.rope_write_kv.call(query, key, value, s.cos_table, s.sin_table, positions, k_cache, v_cache, slots);
    const at::Tensor attended = ops.attention.call(query, k_cache, v_cache, tables, lens, s.scale);
    add_linear_(h, attended.view({rows, s.num_heads * s.head_dim}), w[kOWeight], w[kOBias]);
    x = ops.rms_norm.call(h, *w[kPostNorm], s.eps);
    at::Tensor gate = linear(x, w[kGateWeight], w[kGateBias]);
    ops.silu_mul.call(gate, linear(x, w[kUpWeight], w[kUpBias]));
    add_linear_(h, gate, w[kDownWeight], w[kDownBias]);
  }
  const at::Tensor normed = ops.rms_norm.call(h, *s.weights[num_layers * kWeightsPerLayer], s.eps);
  const auto& lm_head = s.weights.back();
  if (lm_head.has_value()) {
    linear_into(normed, *lm_head, std::nullopt, out, false);
  } else {
    out.copy_(normed);
  }
}

// The op's checks of the cache and weight list (shared by decode_layers and decode_round).
void check_step(const at::Tensor& kv_cache, const std::vector<std::optional<at::Tensor>>& weights, int64_t hidden_size) {
  TORCH_CHECK_VALUE(kv_cache.dim() == 6 && kv_cache.size(1) == 2 && kv_cache.is_contiguous() &&
                        kv_cache.device().is_cpu() && kv_cache.scalar_type() == at::kFloat,
                    "kv_cache must be a contiguous float32 CPU tensor (layers, 2, num_blocks, Hkv, block_size, D)");
  const int64_t num_layers = kv_cache.size(0);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) == num_layers * kWeightsPerLayer + 2,
                    "weights must hold ", kWeightsPerLayer, " entries per layer, the final norm and the LM head");
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int64_t index : {kInputNorm, kQWeight, kKWeight, kVWeight, kOWeight, kPostNorm, kGateWeight, kUpWeight,
                          kDownWeight}) {
      const auto& weight = weights[layer * kWeightsPerLayer + index];
      TORCH_CHECK_VALUE(weight.has_value() && weight->device().is_cpu() && weight->scalar_type() == at::kFloat,
                        "norm and projection weights must be float32 CPU tensors");
    }
  }
  TORCH_CHECK_VALUE(weights[num_layers * kWeightsPerLayer].has_value(), "the final norm weight is required");
  const auto& lm_head = weights.back();
  TORCH_CHECK_VALUE(!lm_head.has_value() || (lm_head->dim() == 2 && lm_head->size(1) == hidden_size &&
                                             lm_head->device().is_cpu() && lm_head->scalar_type() == at::kFloat),
                    "the LM head must be None or a float32 CPU tensor (vocab, C)");
}

at::Tensor decode_layers_cpu(const at::Tensor& hidden, const std::vector<std::optional<at::Tensor>>& weights,
                             const at::Tensor& cos_table, const at::Tensor& sin_table, const at::Tensor& positions,
                             at::Tensor& kv_cache, const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                             const at::Tensor& context_lens, int64_t num_heads, double eps, double scale) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 && hidden.device().is_cpu() && hidden.scalar_type() == at::kFloat,
                    "hidden must be a float32 CPU tensor (N, C)");
  check_step(kv_cache, weights, hidden.size(1));
  static const SmallOps ops;
  const Step step{weights, cos_table, sin_table, positions, kv_cache, slot_mapping, block_tables, context_lens,
                  num_heads, kv_cache.size(3), kv_cache.size(5), eps, scale};
  at::Tensor residual = hidden.contiguous().clone();
  const auto& lm_head = weights.back();
  at::Tensor out = lm_head.has_value() ? at::empty({residual.size(0), lm_head->size(0)}, residual.options())
                                       : at::empty_like(residual);
  // one contiguous range of rows per thread (grain: at least 8 rows each)
  at::parallel_for(0, residual.size(0), 8, [&](int64_t begin, int64_t end) {
    at::Tensor h = residual.slice(0, begin, end), out_rows = out.slice(0, begin, end);
    run_rows(ops, step, h, out_rows, begin, end);
  });
  return out;
}

// The next token of each of the rows' logits (rows, V), written at column `step` of tokens / logprobs /
// trainer_logprobs (B, steps) from row `begin` on; returns the tokens. As sampling.sample untruncated:
// temperature 0 is greedy (log-prob 0, trainer log-prob log_softmax(logits)[token]), otherwise the
// Gumbel-max draw from softmax(logits / T) (both log-probs log_softmax(logits / T)[token]).
at::Tensor draw(const SmallOps& ops, at::Tensor& logits, const at::Tensor& keys, const at::Tensor& stream_steps,
                double temperature, at::Tensor& tokens, at::Tensor& logprobs, at::Tensor& trainer_logprobs,
                int64_t begin, int64_t step) {
  const int64_t end = begin + logits.size(0);
  at::Tensor next, drawn_logprob, trainer;
  if (temperature == 0.0) {
    next = logits.argmax(1);
    trainer = logits.gather(1, next.unsqueeze(1)).squeeze(1) - logits.logsumexp({1});
    drawn_logprob = at::zeros_like(trainer);
  } else {
    if (temperature != 1.0) logits.div_(temperature);
    std::tie(next, drawn_logprob) = ops.gumbel_sample.call(logits, keys, stream_steps);
    trainer = drawn_logprob;
  }
  tokens.slice(0, begin, end).select(1, step).copy_(next);
  logprobs.slice(0, begin, end).select(1, step).copy_(drawn_logprob);
  trainer_logprobs.slice(0, begin, end).select(1, step).copy_(trainer);
  return next;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_round_cpu(
    const at::Tensor& input_ids, const at::Tensor& embedding, const std::vector<std::optional<at::Tensor>>& weights,
    const at::Tensor& cos_table, const at::Tensor& sin_table, const at::Tensor& positions, at::Tensor& kv_cache,
    const at::Tensor& slot_mapping, const at::Tensor& block_tables, const at::Tensor& context_lens,
    const at::Tensor& keys, const at::Tensor& steps, int64_t num_heads, double eps, double scale, double temperature) {
  TORCH_CHECK_VALUE(input_ids.dim() == 1 && input_ids.scalar_type() == at::kLong && input_ids.device().is_cpu(),
                    "input_ids must be an int64 CPU tensor (B,)");
  const int64_t batch = input_ids.size(0);
  TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(1) == batch && positions.size(0) >= 1,
                    "positions must be (steps, B) with steps >= 1");
  const int64_t num_steps = positions.size(0);
  for (const auto* t : {&slot_mapping, &context_lens}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == num_steps && t->size(1) == batch,
                      "slot_mapping and context_lens must be (steps, B) like positions");
  }
  TORCH_CHECK_VALUE(embedding.dim() == 2 && embedding.device().is_cpu() && embedding.scalar_type() == at::kFloat,
                    "embedding must be a float32 CPU tensor (vocab, C)");
  check_step(kv_cache, weights, embedding.size(1));
  TORCH_CHECK_VALUE(weights.back().has_value(), "decode_round needs the LM head");
  TORCH_CHECK_VALUE(temperature >= 0.0 && std::isfinite(temperature), "temperature must be finite and >= 0");
  for (const auto* t : {&keys, &steps}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == batch && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "keys and steps must be int64 CPU tensors of shape (B,)");
  }
  static const SmallOps ops;
  at::Tensor tokens = at::empty({batch, num_steps}, input_ids.options());
  at::Tensor logprobs = at::empty({batch, num_steps}, embedding.options());
  at::Tensor trainer_logprobs = at::empty_like(logprobs);
  const int64_t num_kv_heads = kv_cache.size(3), head_dim = kv_cache.size(5);
  at::parallel_for(0, batch, 8, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor current = input_ids.slice(0, begin, end);
    const at::Tensor row_keys = keys.slice(0, begin, end), row_steps = steps.slice(0, begin, end);
    at::Tensor logits = at::empty({end - begin, weights.back()->size(0)}, embedding.options());
    for (int64_t s = 0; s < num_steps; ++s) {
      const at::Tensor step_positions = positions[s], step_slots = slot_mapping[s], step_lens = context_lens[s];
      const Step step{weights, cos_table, sin_table, step_positions, kv_cache, step_slots, block_tables, step_lens,
                      num_heads, num_kv_heads, head_dim, eps, scale};
      at::Tensor h = embedding.index_select(0, current);
      run_rows(ops, step, h, logits, begin, end);
      current = draw(ops, logits, row_keys, row_steps + s, temperature, tokens, logprobs, trainer_logprobs, begin, s);
    }
  });
  return {tokens, logprobs, trainer_logprobs};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(effreason, m) {
  m.def("decode_layers(Tensor hidden, Tensor?[] weights, Tensor cos_table, Tensor sin_table, Tensor positions, "
        "Tensor(a!) kv_cache, Tensor slot_mapping, Tensor block_tables, Tensor context_lens, int num_heads, "
        "float eps, float scale) -> Tensor");
  m.def("decode_round(Tensor input_ids, Tensor embedding, Tensor?[] weights, Tensor cos_table, Tensor sin_table, "
        "Tensor positions, Tensor(a!) kv_cache, Tensor slot_mapping, Tensor block_tables, Tensor context_lens, "
        "Tensor keys, Tensor steps, int num_heads, float eps, float scale, float temperature) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(effreason, CPU, m) {
  m.impl("decode_layers", &decode_layers_cpu);
  m.impl("decode_round", &decode_round_cpu);
}

}  // namespace effreason
