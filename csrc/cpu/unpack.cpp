// CPU scatter of packed (T, ...) tokens back to padded (B, max_seqlen, ...) rows.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

at::Tensor unpack_cpu(const at::Tensor& tokens, const at::Tensor& cu_seqlens, int64_t max_seqlen) {
  TORCH_CHECK(tokens.dim() >= 1, "unpack: tokens must be (T, ...), got a 0-d tensor");
  TORCH_CHECK(max_seqlen >= 0, "unpack: max_seqlen must be >= 0, got ", max_seqlen);
  const int64_t T = tokens.size(0);
  at::Tensor cu = check_cu_seqlens(cu_seqlens, T, "unpack");
  const int32_t* cup = cu.data_ptr<int32_t>();
  const int64_t B = cu.size(0) - 1, M = max_seqlen;
  std::vector<int64_t> shape = tokens.sizes().vec();
  shape[0] = M;
  shape.insert(shape.begin(), B);
  at::Tensor src = tokens.contiguous();
  at::Tensor out = at::empty(shape, src.options());
  const int64_t rb = row_bytes(src);
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* dp = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(M * rb, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t b = begin; b < end; ++b) {
                       const int64_t n = std::min<int64_t>(cup[b + 1] - cup[b], M);
                       char* row = dp + b * M * rb;
                       if (n > 0) std::memcpy(row, sp + (int64_t)cup[b] * rb, n * rb);
                       if (n < M) std::memset(row + n * rb, 0, (M - n) * rb);
                     }
                   });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("unpack", &unpack_cpu); }

}  // namespace cascade_rt::cpu
