// CPU batch compaction between tiers: one pass over the rows builds the kept rows' offsets,
// then their tokens move with memcpy (rows in parallel when there is enough to copy).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact_cpu(
    const at::Tensor& exit_mask, const at::Tensor& tokens, const at::Tensor& cu_seqlens) {
  TORCH_CHECK(exit_mask.dim() == 1 && exit_mask.scalar_type() == at::kBool,
              "compact: exit_mask must be (B,) bool, got shape ", exit_mask.sizes(), " dtype ",
              exit_mask.scalar_type());
  TORCH_CHECK(tokens.dim() >= 1, "compact: tokens must be (T, ...), got a 0-d tensor");
  const int64_t B = exit_mask.size(0), T = tokens.size(0);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) == B + 1,
              "compact: cu_seqlens must be (B+1,) = (", B + 1, ",) for exit_mask of ", B,
              " rows, got shape ", cu_seqlens.sizes());
  at::Tensor cu = check_cu_seqlens(cu_seqlens, T, "compact");
  const int32_t* cup = cu.data_ptr<int32_t>();
  at::Tensor mask = exit_mask.contiguous();
  const bool* ex = mask.data_ptr<bool>();

  at::Tensor src = tokens.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options());
  at::Tensor cu_kept = at::empty({B + 1}, cu.options());
  at::Tensor row_index = at::empty({B}, cu.options().dtype(at::kLong));
  at::Tensor n_kept = at::empty({}, cu.options());
  int32_t* ck = cu_kept.data_ptr<int32_t>();
  int64_t* ri = row_index.data_ptr<int64_t>();

  std::vector<int64_t> kept;  // input rows that stay, in order
  kept.reserve(B);
  ck[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (!ex[b]) {
      ck[kept.size() + 1] = ck[kept.size()] + (cup[b + 1] - cup[b]);
      ri[kept.size()] = b;
      kept.push_back(b);
    }
  }
  const int64_t nk = (int64_t)kept.size();
  for (int64_t j = nk; j < B; ++j) {
    ck[j + 1] = ck[nk];
    ri[j] = -1;
  }
  n_kept.fill_((int64_t)nk);

  const int64_t rb = row_bytes(src);
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* dp = static_cast<char*>(out.data_ptr());
  const int64_t total = ck[nk];
  const int64_t grain = std::max<int64_t>(1, (int64_t)(1 << 16) / std::max<int64_t>(rb * 16, 1));
  at::parallel_for(0, nk, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t b = kept[j];
      const int64_t n = (int64_t)(cup[b + 1] - cup[b]) * rb;
      if (n > 0) std::memcpy(dp + (int64_t)ck[j] * rb, sp + (int64_t)cup[b] * rb, n);
    }
  });
  if (total < T) std::memset(dp + total * rb, 0, (T - total) * rb);
  return {out, cu_kept, row_index, n_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("compact", &compact_cpu); }

}  // namespace cascade_rt::cpu
