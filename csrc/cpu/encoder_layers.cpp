// CPU encoder: every layer of a tier in one call, on packed tokens of exact shape.
//
// Per layer: fused QKV dense -> varlen attention -> output dense -> add+LayerNorm ->
// intermediate dense with its activation -> output dense -> add+LayerNorm. The dense layers
// take their weights as fp32 panels for few rows (panel_linear.cpp; a stream over the weight),
// as oneDNN tensors packed once at load (the library's blocked layout) with the bias and the
// activation fused in the GEMM's epilogue, or as plain (N, K) tensors through ATen's linear;
// Python packs them (cascade_rt/dense.py) and picks the layout by row count. Attention and
// add+LayerNorm are this extension's own CPU kernels, called directly. Nothing here returns
// to Python between ops, which at batch 1 is most of what a per-op forward spends outside
// its GEMMs. With first_tokens the last layer runs for each row's first token only (a
// classifier reads nothing else): keys and values for every token, everything else for the
// first tokens, which saves most of that layer.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

// weights per layer: w_qkv, b_qkv, w_o, b_o, ln1_w, ln1_b, w_i, b_i, w_out, b_out, ln2_w, ln2_b
constexpr int64_t kPerLayer = 12;

using LinearPointwiseFn = at::Tensor(const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, c10::string_view,
                                     c10::List<std::optional<at::Scalar>>,
                                     std::optional<c10::string_view>);

// oneDNN's matmul with a fused post-op (ATen's mkldnn::_linear_pointwise), looked up once.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         c10::string_view attr, c10::string_view algo) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                             .typed<LinearPointwiseFn>();
  return op.call(x, w, b, attr, c10::List<std::optional<at::Scalar>>(),
                 std::optional<c10::string_view>(algo));
}

// act(x @ w^T + b): the packed (oneDNN) path fuses the activation, the plain path is ATen's
// linear followed by the activation (as cascade_rt.dense.dense does).
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                 const std::string& act) {
  if (is_panel_weight(w)) return panel_linear_cpu(x, w, b, b.numel(), act);
  if (w.is_mkldnn()) {
    if (act == "none") return onednn_linear(x, w, b, "none", "");
    if (act == "relu") return onednn_linear(x, w, b, "relu", "");
    return onednn_linear(x, w, b, "gelu", act == "gelu" ? "none" : "tanh");
  }
  at::Tensor y = at::linear(x, w, b);
  if (act == "relu") return at::relu(y);
  if (act == "gelu") return at::gelu(y, "none");
  if (act == "gelu_tanh") return at::gelu(y, "tanh");
  return y;
}

// whether a dense weight holds (n, k): plain and oneDNN-packed ones keep the logical (N, K)
// sizes, panels are (ceil(N / width), K, width)
bool weight_is(const at::Tensor& w, int64_t n, int64_t k) {
  if (is_panel_weight(w)) return w.size(1) == k && w.size(0) == (n + w.size(2) - 1) / w.size(2);
  return w.dim() == 2 && w.size(0) == n && w.size(1) == k;
}

// output rows [start, start + n) of a dense weight, as a weight of its own (a view): plain
// (N, K) tensors at any rows, panels where the cut falls between panels; none for oneDNN's
// packed layout
std::optional<at::Tensor> weight_rows(const at::Tensor& w, int64_t start, int64_t n) {
  if (is_panel_weight(w)) {
    const int64_t width = w.size(2);
    if (start % width != 0 || n % width != 0) return std::nullopt;
    return w.narrow(0, start / width, n / width);
  }
  if (w.is_mkldnn() || w.dim() != 2) return std::nullopt;
  return w.narrow(0, start, n);
}

at::Tensor encoder_layers_cpu(const at::Tensor& x, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                              at::TensorList weights, int64_t num_heads, double eps,
                              c10::string_view activation, bool first_tokens) {
  const std::string act(activation);
  TORCH_CHECK(act == "none" || act == "relu" || act == "gelu" || act == "gelu_tanh",
              "encoder_layers: activation '", act, "' is not one of none, relu, gelu, gelu_tanh");
  TORCH_CHECK(x.dim() == 2, "encoder_layers: x must be (T, hidden), got shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "encoder_layers: x must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK((int64_t)weights.size() % kPerLayer == 0, "encoder_layers: weights must hold ",
              kPerLayer, " tensors per layer, got ", weights.size());
  const int64_t T = x.size(0), hidden = x.size(1);
  TORCH_CHECK(num_heads > 0 && hidden % num_heads == 0, "encoder_layers: hidden size ", hidden,
              " is not a multiple of num_heads = ", num_heads);
  const int64_t D = hidden / num_heads;
  const at::Tensor cu = check_cu_seqlens(cu_seqlens, T, "encoder_layers");
  const int64_t B = cu.size(0) - 1;
  if (first_tokens) {
    const int32_t* cup = cu.data_ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(cup[b + 1] > cup[b], "encoder_layers: with first_tokens every row needs a token, row ", b,
                  " is empty");
    }
  }
  const int64_t layers = (int64_t)weights.size() / kPerLayer;
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + l * kPerLayer;
    const int64_t inter = w[7].numel();
    TORCH_CHECK(weight_is(w[0], 3 * hidden, hidden) && w[1].numel() == 3 * hidden &&
                    weight_is(w[2], hidden, hidden) && w[3].numel() == hidden &&
                    weight_is(w[6], inter, hidden) && weight_is(w[8], hidden, inter) &&
                    w[9].numel() == hidden,
                "encoder_layers: layer ", l, ": the dense weights must be QKV (", 3 * hidden, ", ",
                hidden, "), output (", hidden, ", ", hidden, "), intermediate (I, ", hidden,
                ") and its output (", hidden, ", I), with biases to match; got ", w[0].sizes(), ", ",
                w[2].sizes(), ", ", w[6].sizes(), ", ", w[8].sizes());
    for (int64_t i : {1, 3, 4, 5, 7, 9, 10, 11}) {
      TORCH_CHECK(w[i].dim() == 1, "encoder_layers: layer ", l, ": tensor ", i, " must be 1-D, got ",
                  w[i].sizes());
    }
  }

  // inference only: the ops inside must not see autograd (oneDNN's linear takes another path,
  // with other rounding, when its bias requires grad), whatever the caller's grad mode
  c10::AutoGradMode no_grad(false);
  const double scale = 1.0 / std::sqrt((double)D);
  at::Tensor h = x.contiguous();
  // first_tokens: the last layer computes the first token of each row only (its keys and values
  // still come from every token); the rows' other tokens are never read after it
  const at::Tensor first = first_tokens ? cu.narrow(0, 0, B).to(at::kLong) : at::Tensor();
  if (T == 0) return first_tokens ? h.new_empty({0, hidden}) : h.clone();
  if (first_tokens && layers == 0) return h.index_select(0, first);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + l * kPerLayer;
    if (first_tokens && l == layers - 1) {
      at::Tensor hf = h.index_select(0, first);
      at::Tensor q, k, v;
      const std::optional<at::Tensor> w_q = weight_rows(w[0], 0, hidden), w_kv = weight_rows(w[0], hidden, 2 * hidden);
      if (w_q && w_kv) {  // keys and values for every token, the query for the first tokens only
        at::Tensor kv = dense(h, *w_kv, w[1].narrow(0, hidden, 2 * hidden), "none").view({T, 2, num_heads, D});
        q = dense(hf, *w_q, w[1].narrow(0, 0, hidden), "none").view({B, num_heads, D});
        k = kv.select(1, 0);
        v = kv.select(1, 1);
      } else {  // a weight that cannot be cut (oneDNN's packed layout, panels across the cut)
        at::Tensor qkv = dense(h, w[0], w[1], "none").view({T, 3, num_heads, D});
        q = qkv.select(1, 0).index_select(0, first);
        k = qkv.select(1, 1);
        v = qkv.select(1, 2);
      }
      at::Tensor ctx = first_token_attention_cpu(q, k, v, cu, max_seqlen, scale);
      at::Tensor attn = dense(ctx.view({B, hidden}), w[2], w[3], "none");
      hf = add_layer_norm_cpu(attn, hf, w[4], w[5], eps);
      at::Tensor inter = dense(hf, w[6], w[7], act);
      at::Tensor out = dense(inter, w[8], w[9], "none");
      return add_layer_norm_cpu(out, hf, w[10], w[11], eps);
    }
    at::Tensor qkv = dense(h, w[0], w[1], "none").view({T, 3, num_heads, D});
    at::Tensor ctx = varlen_attention_cpu(qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2),
                                          cu_seqlens, max_seqlen, scale);
    at::Tensor attn = dense(ctx.view({T, hidden}), w[2], w[3], "none");
    h = add_layer_norm_cpu(attn, h, w[4], w[5], eps);
    at::Tensor inter = dense(h, w[6], w[7], act);
    at::Tensor out = dense(inter, w[8], w[9], "none");
    h = add_layer_norm_cpu(out, h, w[10], w[11], eps);
  }
  return h;
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("encoder_layers", &encoder_layers_cpu); }
// packed oneDNN weights carry the MkldnnCPU dispatch key, which outranks CPU
TORCH_LIBRARY_IMPL(cascade_rt, MkldnnCPU, m) { m.impl("encoder_layers", &encoder_layers_cpu); }

}  // namespace cascade_rt::cpu
