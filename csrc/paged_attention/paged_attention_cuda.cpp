// torch glue of the CUDA paged decode attention: checks, dtype dispatch, stream, CUDA registration.
// The schema and the CPU implementation are in paged_attention.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "paged_attention/paged_attention.h"

namespace effreason {
namespace {

int dtype_code(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return kPagedFloat32;
    case at::kHalf: return kPagedFloat16;
    case at::kBFloat16: return kPagedBFloat16;
    default: TORCH_CHECK_VALUE(false, "query must be float32, float16 or bfloat16, got ", type);
  }
  return -1;
}

void check_cache(const char* name, const at::Tensor& cache, const at::Tensor& query) {
  TORCH_CHECK_VALUE(cache.dim() == 4 && cache.size(3) == query.size(2) && cache.stride(3) == 1, name,
                    " must be (num_blocks, num_kv_heads, block_size, head_dim) with a contiguous last dim");
  TORCH_CHECK_VALUE(cache.scalar_type() == query.scalar_type() && cache.device() == query.device(), name,
                    " must have query's dtype and device");
}

at::Tensor paged_attention_decode_cuda(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                       const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  TORCH_CHECK_VALUE(query.is_cuda() && query.dim() == 3 && query.stride(2) == 1,
                    "query must be a CUDA (num_seqs, num_heads, head_dim) tensor with a contiguous last dim");
  check_cache("k_cache", k_cache, query);
  check_cache("v_cache", v_cache, query);
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), "v_cache must have k_cache's shape");
  const int64_t num_seqs = query.size(0);
  TORCH_CHECK_VALUE(query.size(1) % k_cache.size(1) == 0, "query's heads must be a multiple of the KV heads");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && block_tables.size(0) == num_seqs, "block_tables must be (num_seqs, max_blocks)");
  TORCH_CHECK_VALUE(context_lens.dim() == 1 && context_lens.size(0) == num_seqs, "context_lens must be (num_seqs,)");
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor tables = block_tables.to(at::kInt).contiguous();
  const at::Tensor lens = context_lens.to(at::kInt).contiguous();
  at::Tensor out = at::empty_like(query, query.options().memory_format(at::MemoryFormat::Contiguous));

  PagedAttentionArgs args{};
  args.query = query.data_ptr();
  args.k_cache = k_cache.data_ptr();
  args.v_cache = v_cache.data_ptr();
  args.out = out.data_ptr();
  args.block_tables = tables.data_ptr<int32_t>();
  args.context_lens = lens.data_ptr<int32_t>();
  args.dtype = dtype_code(query.scalar_type());
  args.num_seqs = static_cast<int>(num_seqs);
  args.num_heads = static_cast<int>(query.size(1));
  args.num_kv_heads = static_cast<int>(k_cache.size(1));
  args.head_dim = static_cast<int>(query.size(2));
  args.block_size = static_cast<int>(k_cache.size(2));
  args.q_stride_seq = query.stride(0);
  args.q_stride_head = query.stride(1);
  args.k_stride_block = k_cache.stride(0);
  args.k_stride_head = k_cache.stride(1);
  args.k_stride_row = k_cache.stride(2);
  args.v_stride_block = v_cache.stride(0);
  args.v_stride_head = v_cache.stride(1);
  args.v_stride_row = v_cache.stride(2);
  args.o_stride_seq = out.stride(0);
  args.o_stride_head = out.stride(1);
  args.table_stride = tables.stride(0);
  args.scale = static_cast<float>(scale);
  const cudaError_t status = paged_attention_decode_launch(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "paged_attention_decode launch failed: ", cudaGetErrorString(status));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(effreason, CUDA, m) {
  m.impl("paged_attention_decode", &paged_attention_decode_cuda);
}

}  // namespace effreason
