// CPU LayerNorm(x + residual): one pass over each row into an fp32 buffer, two-pass fp32
// statistics, one write in x's dtype. Rows run in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

// One row: y = LayerNorm(x + r) * w + b with fp32 statistics; h: H floats of scratch.
template <typename scalar_t>
inline void add_layer_norm_row(const scalar_t* xr, const scalar_t* rr, const float* w,
                               const float* b, scalar_t* yr, float* h, int64_t H, float eps) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < H; ++j) {
    h[j] = (float)xr[j] + (float)rr[j];
    sum += h[j];
  }
  const float mean = sum / (float)H;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < H; ++j) {
    const float d = h[j] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / std::sqrt(sq / (float)H + eps);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) yr[j] = (scalar_t)((h[j] - mean) * rstd * w[j] + b[j]);
}

// fp32 rows get the vector clones (AVX-512 / AVX2); half and bfloat16 use the generic build
CASCADE_RT_VECTOR_CLONES void add_layer_norm_rows_f32(const float* x, const float* r,
                                                      const float* w, const float* b, float* y,
                                                      float* h, int64_t n, int64_t H, float eps) {
  for (int64_t i = 0; i < n; ++i) add_layer_norm_row(x + i * H, r + i * H, w, b, y + i * H, h, H, eps);
}

template <typename scalar_t>
void add_layer_norm_rows(const scalar_t* x, const scalar_t* r, const float* w, const float* b,
                         scalar_t* y, int64_t N, int64_t H, float eps) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(H);
    if constexpr (std::is_same_v<scalar_t, float>) {
      add_layer_norm_rows_f32(x + begin * H, r + begin * H, w, b, y + begin * H, buf.data(),
                              end - begin, H, eps);
    } else {
      for (int64_t n = begin; n < end; ++n)
        add_layer_norm_row(x + n * H, r + n * H, w, b, y + n * H, buf.data(), H, eps);
    }
  });
}

}  // namespace

at::Tensor add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                              const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.dim() == 2, "add_layer_norm: x must be (N, H), got shape ", x.sizes());
  TORCH_CHECK(residual.sizes() == x.sizes(), "add_layer_norm: residual shape ", residual.sizes(),
              " differs from x shape ", x.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "add_layer_norm: residual dtype ",
              residual.scalar_type(), " differs from x dtype ", x.scalar_type());
  const int64_t N = x.size(0), H = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == H && bias.dim() == 1 && bias.size(0) == H,
              "add_layer_norm: weight and bias must be (", H, ",), got ", weight.sizes(), " and ",
              bias.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "add_layer_norm: x must be float32, float16 or bfloat16, got ", dt);
  at::Tensor out = at::empty({N, H}, x.options());
  if (N == 0 || H == 0) return out;
  at::Tensor xc = x.contiguous(), rc = residual.contiguous();
  at::Tensor w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "add_layer_norm_cpu", [&] {
    add_layer_norm_rows<scalar_t>(xc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(),
                                  w.data_ptr<float>(), b.data_ptr<float>(),
                                  out.data_ptr<scalar_t>(), N, H, (float)eps);
  });
  return out;
}

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) { m.impl("add_layer_norm", &add_layer_norm_cpu); }

}  // namespace cascade_rt::cpu
