// CUDA exit head: the head's dense GEMM through cuBLAS (fp32), then one block per row fusing the
// head activation (tanh, relu, gelu, gelu_tanh), the classifier, softmax, max probability and the
// threshold test.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

enum HeadActivation : int { kTanh = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3 };

__device__ __forceinline__ float head_activation(float x, int act) {
  switch (act) {
    case kRelu:
      return fmaxf(x, 0.0f);
    case kGelu:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case kGeluTanh:
      return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default:
      return tanhf(x);
  }
}

__global__ void exit_head_kernel(const float* __restrict__ pre, const float* __restrict__ cw,
                                 const float* __restrict__ cb, float* __restrict__ logits,
                                 float* __restrict__ confidence, bool* __restrict__ exit_mask,
                                 int64_t H, int64_t C, float threshold, int act) {
  extern __shared__ float pooled[];  // H floats: activation(head pre-activation) of this row
  __shared__ float shared[kWarp];
  const int64_t row = blockIdx.x;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) pooled[j] = head_activation(pre[row * H + j], act);
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t c = 0; c < C; ++c) {
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) s += pooled[j] * cw[c * H + j];
    const float l = block_sum(s, shared) + cb[c];
    if (threadIdx.x == 0) logits[row * C + c] = l;
    mx = fmaxf(mx, l);
  }
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int64_t c = 0; c < C; ++c) sum += expf(logits[row * C + c] - mx);
    const float conf = 1.0f / sum;  // softmax probability of the largest logit
    confidence[row] = conf;
    exit_mask[row] = conf >= threshold;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_head_cuda(
    const at::Tensor& cls_hidden, const at::Tensor& pooler_w, const at::Tensor& pooler_b,
    const at::Tensor& cls_w, const at::Tensor& cls_b, double threshold,
    c10::string_view activation) {
  int act;
  if (activation == "tanh") {
    act = kTanh;
  } else if (activation == "relu") {
    act = kRelu;
  } else if (activation == "gelu") {
    act = kGelu;
  } else if (activation == "gelu_tanh") {
    act = kGeluTanh;
  } else {
    TORCH_CHECK(false, "exit_head: activation '", activation,
                "' is not one of tanh, relu, gelu, gelu_tanh");
  }
  TORCH_CHECK(cls_hidden.dim() == 2, "exit_head: cls_hidden must be (B, H), got shape ",
              cls_hidden.sizes());
  const int64_t B = cls_hidden.size(0), H = cls_hidden.size(1);
  TORCH_CHECK(pooler_w.dim() == 2 && pooler_w.size(0) == H && pooler_w.size(1) == H,
              "exit_head: pooler_w must be (", H, ", ", H, "), got ", pooler_w.sizes());
  TORCH_CHECK(pooler_b.dim() == 1 && pooler_b.size(0) == H, "exit_head: pooler_b must be (", H,
              ",), got ", pooler_b.sizes());
  TORCH_CHECK(cls_w.dim() == 2 && cls_w.size(1) == H && cls_w.size(0) >= 1,
              "exit_head: cls_w must be (C, ", H, ") with C >= 1, got ", cls_w.sizes());
  const int64_t C = cls_w.size(0);
  TORCH_CHECK(cls_b.dim() == 1 && cls_b.size(0) == C, "exit_head: cls_b must be (", C,
              ",), got ", cls_b.sizes());
  // dynamic shared memory (H floats) plus the kernel's static reduction buffer (kWarp floats)
  // must fit the 48 KiB a block gets without opting in
  TORCH_CHECK((uint64_t)(H + kWarp) * sizeof(float) <= 48 * 1024, "exit_head: hidden size ", H,
              " is too large for the CUDA exit head (at most ", 48 * 1024 / sizeof(float) - kWarp, ")");
  c10::cuda::CUDAGuard guard(cls_hidden.device());
  auto fopt = cls_hidden.options().dtype(at::kFloat);
  at::Tensor logits = at::empty({B, C}, fopt);
  at::Tensor confidence = at::empty({B}, fopt);
  at::Tensor exit_mask = at::empty({B}, cls_hidden.options().dtype(at::kBool));
  if (B == 0) return {logits, confidence, exit_mask};
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  at::Tensor pre = at::addmm(f32(pooler_b), f32(cls_hidden), f32(pooler_w).t()).contiguous();
  at::Tensor cw = f32(cls_w).contiguous(), cb = f32(cls_b).contiguous();
  const int threads = H >= 512 ? 256 : 128;
  exit_head_kernel<<<(unsigned)B, threads, H * sizeof(float), c10::cuda::getCurrentCUDAStream()>>>(
      pre.data_ptr<float>(), cw.data_ptr<float>(), cb.data_ptr<float>(), logits.data_ptr<float>(),
      confidence.data_ptr<float>(), exit_mask.data_ptr<bool>(), H, C, (float)threshold, act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {logits, confidence, exit_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("exit_head", &exit_head_cuda); }

}  // namespace cascade_rt::cuda
