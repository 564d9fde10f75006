// CPU scatter of the exiting rows' results to their input rows, in place.
#include <torch/library.h>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

void scatter_exits_cpu(const at::Tensor& exit_mask, const at::Tensor& row_index,
                       const at::Tensor& logits, const at::Tensor& confidence, int64_t tier,
                       at::Tensor out_logits, at::Tensor out_confidence, at::Tensor out_tier) {
  TORCH_CHECK(exit_mask.dim() == 1 && exit_mask.scalar_type() == at::kBool,
              "scatter_exits: exit_mask must be (B,) bool, got shape ", exit_mask.sizes(),
              " dtype ", exit_mask.scalar_type());
  const int64_t B = exit_mask.size(0);
  TORCH_CHECK(row_index.dim() == 1 && row_index.size(0) == B &&
                  row_index.scalar_type() == at::kLong,
              "scatter_exits: row_index must be (", B, ",) int64, got shape ", row_index.sizes(),
              " dtype ", row_index.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == B && logits.scalar_type() == at::kFloat,
              "scatter_exits: logits must be (", B, ", C) float32, got shape ", logits.sizes(),
              " dtype ", logits.scalar_type());
  const int64_t C = logits.size(1);
  TORCH_CHECK(confidence.dim() == 1 && confidence.size(0) == B &&
                  confidence.scalar_type() == at::kFloat,
              "scatter_exits: confidence must be (", B, ",) float32, got shape ",
              confidence.sizes(), " dtype ", confidence.scalar_type());
  TORCH_CHECK(out_logits.dim() == 2 && out_logits.size(1) == C &&
                  out_logits.scalar_type() == at::kFloat,
              "scatter_exits: out_logits must be (N, ", C, ") float32, got shape ",
              out_logits.sizes(), " dtype ", out_logits.scalar_type());
  const int64_t N = out_logits.size(0);
  TORCH_CHECK(out_confidence.dim() == 1 && out_confidence.size(0) == N &&
                  out_confidence.scalar_type() == at::kFloat,
              "scatter_exits: out_confidence must be (", N, ",) float32, got shape ",
              out_confidence.sizes(), " dtype ", out_confidence.scalar_type());
  TORCH_CHECK(out_tier.dim() == 1 && out_tier.size(0) == N && out_tier.scalar_type() == at::kLong,
              "scatter_exits: out_tier must be (", N, ",) int64, got shape ", out_tier.sizes(),
              " dtype ", out_tier.scalar_type());
  auto ex = exit_mask.accessor<bool, 1>();
  auto ri = row_index.accessor<int64_t, 1>();
  auto lg = logits.accessor<float, 2>();
  auto cf = confidence.accessor<float, 1>();
  auto ol = out_logits.accessor<float, 2>();
  auto oc = out_confidence.accessor<float, 1>();
  auto ot = out_tier.accessor<int64_t, 1>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = ri[b];
    TORCH_CHECK(r < N, "scatter_exits: row_index[", b, "] = ", r, " is out of range for ", N,
                " output rows");
    if (!ex[b] || r < 0) continue;
    for (int64_t c = 0; c < C; ++c) ol[r][c] = lg[b][c];
    oc[r] = cf[b];
    ot[r] = tier;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("scatter_exits", &scatter_exits_cpu); }

}  // namespace cascade_rt::cpu
