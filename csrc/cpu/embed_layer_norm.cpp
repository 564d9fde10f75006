// CPU embeddings: per token, gather the word, position and (optional) token-type rows, sum them
// and apply LayerNorm with fp32 statistics, in one pass into a per-thread fp32 row. The sum
// follows the reference's arithmetic: with token types, word + position is rounded to the
// tables' dtype before the type row is added in fp32 (what the per-op exact path computes).
// With cu_seqlens, tokens past cu_seqlens[-1] are neither gathered nor written.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

template <typename scalar_t>
void embed_rows(const int64_t* ids, const int64_t* pos, const int64_t* types, const scalar_t* word,
                const scalar_t* posw, const scalar_t* typew, const float* w, const float* b,
                scalar_t* out, int64_t N, int64_t H, float eps) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(H);
    float* h = buf.data();
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* wr = word + ids[n] * H;
      const scalar_t* pr = posw + pos[n] * H;
      if (typew != nullptr) {
        const scalar_t* tr = typew + types[n] * H;
        for (int64_t j = 0; j < H; ++j) h[j] = (float)(scalar_t)(wr[j] + pr[j]) + (float)tr[j];
      } else {
        for (int64_t j = 0; j < H; ++j) h[j] = (float)wr[j] + (float)pr[j];
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < H; ++j) sum += h[j];
      const float mean = sum / (float)H;
      float sq = 0.0f;
      for (int64_t j = 0; j < H; ++j) {
        const float d = h[j] - mean;
        sq += d * d;
      }
      const float rstd = 1.0f / std::sqrt(sq / (float)H + eps);
      scalar_t* o = out + n * H;
      for (int64_t j = 0; j < H; ++j) o[j] = (scalar_t)((h[j] - mean) * rstd * w[j] + b[j]);
    }
  });
}

// Every index of the first n entries of idx lies in [0, rows); else one error naming the first.
void check_indices(const at::Tensor& idx, int64_t n, int64_t rows, const char* what) {
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < rows, "embed_layer_norm: ", what, "[", i, "] = ", p[i],
                " is out of range [0, ", rows, ")");
  }
}

at::Tensor embed_layer_norm_cpu(const at::Tensor& input_ids, const at::Tensor& position_ids,
                                const std::optional<at::Tensor>& token_type_ids,
                                const at::Tensor& word_w, const at::Tensor& pos_w,
                                const std::optional<at::Tensor>& type_w, const at::Tensor& weight,
                                const at::Tensor& bias, double eps,
                                const std::optional<at::Tensor>& cu_seqlens) {
  TORCH_CHECK(input_ids.dim() == 1 && position_ids.sizes() == input_ids.sizes(),
              "embed_layer_norm: input_ids and position_ids must be one (N,) shape, got ",
              input_ids.sizes(), " and ", position_ids.sizes());
  TORCH_CHECK(word_w.dim() == 2 && pos_w.dim() == 2 && pos_w.size(1) == word_w.size(1),
              "embed_layer_norm: word_w and pos_w must be (V, H) and (P, H), got ", word_w.sizes(),
              " and ", pos_w.sizes());
  const auto dt = word_w.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "embed_layer_norm: the tables must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(pos_w.scalar_type() == dt, "embed_layer_norm: pos_w dtype ", pos_w.scalar_type(),
              " differs from word_w dtype ", dt);
  const bool typed = type_w.has_value() && token_type_ids.has_value();
  const int64_t N = input_ids.size(0), H = word_w.size(1);
  if (typed) {
    TORCH_CHECK(type_w->dim() == 2 && type_w->size(1) == H && type_w->scalar_type() == dt,
                "embed_layer_norm: type_w must be (Y, ", H, ") in the tables' dtype, got ",
                type_w->sizes(), " ", type_w->scalar_type());
    TORCH_CHECK(token_type_ids->sizes() == input_ids.sizes(),
                "embed_layer_norm: token_type_ids must be input_ids' shape, got ",
                token_type_ids->sizes());
  }
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == H && bias.dim() == 1 && bias.size(0) == H,
              "embed_layer_norm: weight and bias must be (", H, ",), got ", weight.sizes(), " and ",
              bias.sizes());
  int64_t live = N;
  if (cu_seqlens.has_value()) {
    at::Tensor cu = check_cu_seqlens(*cu_seqlens, N, "embed_layer_norm");
    live = cu.data_ptr<int32_t>()[cu.size(0) - 1];
  }
  at::Tensor out = at::empty({N, H}, word_w.options());
  if (live == 0 || H == 0) return out;
  at::Tensor ids = input_ids.to(at::kLong).contiguous();
  at::Tensor pos = position_ids.to(at::kLong).contiguous();
  at::Tensor types = typed ? token_type_ids->to(at::kLong).contiguous() : at::Tensor();
  check_indices(ids, live, word_w.size(0), "input_ids");
  check_indices(pos, live, pos_w.size(0), "position_ids");
  if (typed) check_indices(types, live, type_w->size(0), "token_type_ids");
  at::Tensor wc = word_w.contiguous(), pc = pos_w.contiguous();
  at::Tensor tc = typed ? type_w->contiguous() : at::Tensor();
  at::Tensor w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "embed_layer_norm_cpu", [&] {
    embed_rows<scalar_t>(ids.data_ptr<int64_t>(), pos.data_ptr<int64_t>(),
                         typed ? types.data_ptr<int64_t>() : nullptr, wc.data_ptr<scalar_t>(),
                         pc.data_ptr<scalar_t>(), typed ? tc.data_ptr<scalar_t>() : nullptr,
                         w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<scalar_t>(), live, H,
                         (float)eps);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("embed_layer_norm", &embed_layer_norm_cpu); }

}  // namespace cascade_rt::cpu
