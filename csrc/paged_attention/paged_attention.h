// Paged decode attention, CUDA launcher (see paged_attention_kernel.cu). Toolkit headers only.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace effreason {

enum PagedAttentionDtype : int { kPagedFloat32 = 0, kPagedFloat16 = 1, kPagedBFloat16 = 2 };

// Strides are in elements. The caches are (num_blocks, num_kv_heads, block_size, head_dim) with a
// contiguous last dim; block_tables (num_seqs, table_stride) and context_lens (num_seqs) are int32.
struct PagedAttentionArgs {
  const void* query;        // (num_seqs, num_heads, head_dim)
  const void* k_cache;
  const void* v_cache;
  void* out;                // (num_seqs, num_heads, head_dim)
  const int32_t* block_tables;
  const int32_t* context_lens;
  int dtype;                // PagedAttentionDtype
  int num_seqs, num_heads, num_kv_heads, head_dim, block_size;
  int64_t q_stride_seq, q_stride_head;
  int64_t k_stride_block, k_stride_head, k_stride_row;
  int64_t v_stride_block, v_stride_head, v_stride_row;
  int64_t o_stride_seq, o_stride_head;
  int64_t table_stride;
  float scale;
};

// Launches one thread block per (sequence, KV head). Returns cudaErrorInvalidValue for shapes the
// kernel does not support (shared memory over 48 KiB) and the launch error otherwise.
cudaError_t paged_attention_decode_launch(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace effreason
