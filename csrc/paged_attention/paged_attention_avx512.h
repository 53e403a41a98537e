// AVX-512 fast path of the float32 CPU paged decode attention (paged_attention.cpp): one (sequence,
// KV head) task, same contract and oracle (effreason/sampler/attention.py::paged_decode_attention_reference).
#pragma once

#include <cstdint>

namespace effreason::avx512 {

// One task: the group of query heads sharing one KV head, over one sequence's blocks. Strides in floats;
// each cache tile is (block_size, head_dim) with rows head_dim apart.
struct HeadTask {
  const float* query;        // the group's first query row; rows q_stride apart
  int64_t q_stride;
  float scale;
  const float* k_head;       // k_cache + kv_head * its head stride; block b starts at k_head + b * k_stride
  const float* v_head;
  int64_t k_stride, v_stride;
  const int32_t* table;      // the sequence's block table
  int64_t block_size, context, group, head_dim;
  float* out;                // the group's first output row; rows out_stride apart
  int64_t out_stride;
};

// Whether this CPU has AVX-512 (F, VL, DQ) and attend_head supports `group` query heads of `head_dim`.
bool attend_head_takes(int64_t group, int64_t head_dim);

// Floats of scratch attend_head needs for a task's context and block size.
int64_t attend_head_scratch(int64_t context, int64_t block_size);

// out[h] = softmax_t(scale q[h] . K[t]) V for the task's heads h < group.
void attend_head(const HeadTask& task, float* scratch);

}  // namespace effreason::avx512
