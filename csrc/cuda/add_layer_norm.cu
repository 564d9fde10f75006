// CUDA LayerNorm(x + residual): one block per row, fp32 two-pass statistics.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

template <typename scalar_t>
__global__ void add_layer_norm_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r,
                                      const float* __restrict__ w, const float* __restrict__ b,
                                      scalar_t* __restrict__ y, int64_t H, float eps) {
  __shared__ float shared[kWarp];
  const int64_t row = blockIdx.x;
  const scalar_t* xr = x + row * H;
  const scalar_t* rr = r + row * H;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) s += (float)xr[j] + (float)rr[j];
  const float mean = block_sum(s, shared) / (float)H;
  float q = 0.0f;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const float d = (float)xr[j] + (float)rr[j] - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, shared) / (float)H + eps);
  scalar_t* yr = y + row * H;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const float h = (float)xr[j] + (float)rr[j];
    yr[j] = (scalar_t)((h - mean) * rstd * w[j] + b[j]);
  }
}

at::Tensor add_layer_norm_cuda(const at::Tensor& x, const at::Tensor& residual,
                               const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.dim() == 2, "add_layer_norm: x must be (N, H), got shape ", x.sizes());
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "add_layer_norm: residual must match x in shape and dtype, got ", residual.sizes(),
              " ", residual.scalar_type(), " vs ", x.sizes(), " ", x.scalar_type());
  const int64_t N = x.size(0), H = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == H && bias.dim() == 1 && bias.size(0) == H,
              "add_layer_norm: weight and bias must be (", H, ",), got ", weight.sizes(), " and ",
              bias.sizes());
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({N, H}, x.options());
  if (N == 0 || H == 0) return out;
  at::Tensor xc = x.contiguous(), rc = residual.contiguous();
  at::Tensor w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  const int threads = H >= 1024 ? 256 : (H >= 256 ? 128 : 64);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "add_layer_norm_cuda", [&] {
    add_layer_norm_kernel<scalar_t><<<(unsigned)N, threads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(), w.data_ptr<float>(), b.data_ptr<float>(),
        out.data_ptr<scalar_t>(), H, (float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("add_layer_norm", &add_layer_norm_cuda); }

}  // namespace cascade_rt::cuda
