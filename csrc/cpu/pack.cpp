// CPU gather of right-padded (B, S, ...) rows into the packed (T, ...) layout.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> pack_cpu(const at::Tensor& padded,
                                            const at::Tensor& attention_mask) {
  TORCH_CHECK(attention_mask.dim() == 2, "pack: attention_mask must be (B, S), got shape ",
              attention_mask.sizes());
  const int64_t B = attention_mask.size(0), S = attention_mask.size(1);
  TORCH_CHECK(padded.dim() >= 2 && padded.size(0) == B && padded.size(1) == S,
              "pack: padded must be (B, S, ...) = (", B, ", ", S, ", ...), got shape ",
              padded.sizes());
  std::vector<int64_t> shape = padded.sizes().vec();
  shape.erase(shape.begin());
  shape[0] = B * S;
  at::Tensor src = padded.contiguous();
  at::Tensor out = at::empty(shape, src.options());
  at::Tensor cu = at::empty({B + 1}, attention_mask.options().dtype(at::kInt));
  int32_t* cup = cu.data_ptr<int32_t>();
  at::Tensor lens = attention_mask.to(at::kLong).sum(1).contiguous();
  const int64_t* lp = lens.data_ptr<int64_t>();
  cup[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 0 && lp[b] <= S, "pack: attention_mask row ", b, " sums to ", lp[b],
                "; a mask holds ones then zeros, so each row sums to a value in [0, ", S, "]");
    cup[b + 1] = (int32_t)(cup[b] + lp[b]);
  }
  const int64_t rb = row_bytes(out);
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* dp = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(S * rb, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t b = begin; b < end; ++b) {
                       if (lp[b] > 0)
                         std::memcpy(dp + cup[b] * rb, sp + b * S * rb, lp[b] * rb);
                     }
                   });
  const int64_t total = cup[B];
  if (total < B * S) std::memset(dp + total * rb, 0, (B * S - total) * rb);
  return {out, cu};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("pack", &pack_cpu); }

}  // namespace cascade_rt::cpu
