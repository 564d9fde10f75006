// CPU exit head: head dense GEMM (+bias) and classifier GEMM in fp32, then one pass per row
// fusing softmax, max probability and the threshold test. The GEMMs run on weights packed in
// panels (panel_linear.cpp, the head activation in its epilogue) when both come so packed,
// else through ATen's BLAS with the activation (tanh, relu, gelu, gelu_tanh) in place.
// Either way one path serves every batch size, so a row's scores do not depend on its batch.
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/tanh.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_scores(const at::Tensor& logits, double threshold);

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_head_cpu(
    const at::Tensor& cls_hidden, const at::Tensor& pooler_w, const at::Tensor& pooler_b,
    const at::Tensor& cls_w, const at::Tensor& cls_b, double threshold,
    c10::string_view activation) {
  TORCH_CHECK(activation == "tanh" || activation == "relu" || activation == "gelu" ||
                  activation == "gelu_tanh",
              "exit_head: activation '", activation,
              "' is not one of tanh, relu, gelu, gelu_tanh");
  TORCH_CHECK(cls_hidden.dim() == 2, "exit_head: cls_hidden must be (B, H), got shape ",
              cls_hidden.sizes());
  const int64_t B = cls_hidden.size(0), H = cls_hidden.size(1);
  if (is_panel_weight(pooler_w) || is_panel_weight(cls_w)) {
    TORCH_CHECK(is_panel_weight(pooler_w) && is_panel_weight(cls_w) && pooler_w.size(1) == H &&
                    cls_w.size(1) == H && pooler_b.dim() == 1 && pooler_b.size(0) == H &&
                    cls_b.dim() == 1 && cls_b.size(0) >= 1,
                "exit_head: panel-packed head weights must both be panels over H = ", H,
                " with biases (", H, ",) and (C,); got ", pooler_w.sizes(), ", ", pooler_b.sizes(),
                ", ", cls_w.sizes(), ", ", cls_b.sizes());
    at::Tensor pooled = panel_linear_cpu(cls_hidden, pooler_w, pooler_b, H, activation);
    return head_scores(panel_linear_cpu(pooled, cls_w, cls_b, cls_b.size(0), "none"), threshold);
  }
  TORCH_CHECK(pooler_w.dim() == 2 && pooler_w.size(0) == H && pooler_w.size(1) == H,
              "exit_head: pooler_w must be (", H, ", ", H, "), got ", pooler_w.sizes());
  TORCH_CHECK(pooler_b.dim() == 1 && pooler_b.size(0) == H, "exit_head: pooler_b must be (", H,
              ",), got ", pooler_b.sizes());
  TORCH_CHECK(cls_w.dim() == 2 && cls_w.size(1) == H, "exit_head: cls_w must be (C, ", H,
              "), got ", cls_w.sizes());
  const int64_t C = cls_w.size(0);
  TORCH_CHECK(C >= 1, "exit_head: the classifier needs at least one class");
  TORCH_CHECK(cls_b.dim() == 1 && cls_b.size(0) == C, "exit_head: cls_b must be (", C,
              ",), got ", cls_b.sizes());
  for (const at::Tensor* t : {&cls_hidden, &pooler_w, &pooler_b, &cls_w, &cls_b}) {
    TORCH_CHECK(at::isFloatingType(t->scalar_type()),
                "exit_head: every input must be floating point, got ", t->scalar_type());
  }
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  if (B == 0) return head_scores(at::empty({0, C}, cls_hidden.options().dtype(at::kFloat)), threshold);

  at::Tensor pooled = at::addmm(f32(pooler_b), f32(cls_hidden), f32(pooler_w).t());
  if (activation == "tanh") {
    pooled.tanh_();
  } else if (activation == "relu") {
    pooled.relu_();
  } else {
    at::gelu_(pooled, activation == "gelu" ? "none" : "tanh");
  }
  return head_scores(at::addmm(f32(cls_b), pooled, f32(cls_w).t()).contiguous(), threshold);
}

// softmax, max probability and the threshold test of (B, C) fp32 logits
std::tuple<at::Tensor, at::Tensor, at::Tensor> head_scores(const at::Tensor& logits, double threshold) {
  const int64_t B = logits.size(0), C = logits.size(1);
  at::Tensor confidence = at::empty({B}, logits.options());
  at::Tensor exit_mask = at::empty({B}, logits.options().dtype(at::kBool));
  const float thr = (float)threshold;  // the test is done in fp32, as in the reference
  const float* lp = logits.data_ptr<float>();
  float* cp = confidence.data_ptr<float>();
  bool* mp = exit_mask.data_ptr<bool>();
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / C), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* l = lp + i * C;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, l[c]);
      float sum = 0.0f;
      for (int64_t c = 0; c < C; ++c) sum += std::exp(l[c] - mx);
      const float conf = 1.0f / sum;  // softmax probability of the largest logit
      cp[i] = conf;
      mp[i] = conf >= thr;
    }
  });
  return {logits, confidence, exit_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("exit_head", &exit_head_cpu); }

}  // namespace cascade_rt::cpu
