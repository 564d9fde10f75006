// CUDA scatter of the exiting rows' results to their input rows, in place, no host sync.
// A row_index past the outputs trips a device-side assert (reported asynchronously).
#include <torch/library.h>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

__global__ void scatter_exits_kernel(const bool* __restrict__ exit_mask,
                                     const int64_t* __restrict__ row_index,
                                     const float* __restrict__ logits,
                                     const float* __restrict__ confidence, int64_t tier,
                                     float* out_logits, int64_t ol0, int64_t ol1,
                                     float* out_confidence, int64_t oc0, int64_t* out_tier,
                                     int64_t ot0, int64_t B, int64_t C, int64_t N) {
  const int64_t width = C > 0 ? C : 1;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B * width;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / width, c = i % width;
    const int64_t r = row_index[b];
    if (!exit_mask[b] || r < 0) continue;
    CUDA_KERNEL_ASSERT(r < N && "scatter_exits: row_index out of range");
    if (c < C) out_logits[r * ol0 + c * ol1] = logits[b * C + c];
    if (c == 0) {
      out_confidence[r * oc0] = confidence[b];
      out_tier[r * ot0] = tier;
    }
  }
}

void scatter_exits_cuda(const at::Tensor& exit_mask, const at::Tensor& row_index,
                        const at::Tensor& logits, const at::Tensor& confidence, int64_t tier,
                        at::Tensor out_logits, at::Tensor out_confidence, at::Tensor out_tier) {
  TORCH_CHECK(exit_mask.dim() == 1 && exit_mask.scalar_type() == at::kBool,
              "scatter_exits: exit_mask must be (B,) bool, got ", exit_mask.sizes(), " ",
              exit_mask.scalar_type());
  const int64_t B = exit_mask.size(0);
  TORCH_CHECK(row_index.dim() == 1 && row_index.size(0) == B && row_index.scalar_type() == at::kLong,
              "scatter_exits: row_index must be (", B, ",) int64, got ", row_index.sizes(), " ",
              row_index.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == B && logits.scalar_type() == at::kFloat,
              "scatter_exits: logits must be (", B, ", C) float32, got ", logits.sizes(), " ",
              logits.scalar_type());
  const int64_t C = logits.size(1);
  TORCH_CHECK(confidence.dim() == 1 && confidence.size(0) == B && confidence.scalar_type() == at::kFloat,
              "scatter_exits: confidence must be (", B, ",) float32, got ", confidence.sizes(), " ",
              confidence.scalar_type());
  TORCH_CHECK(out_logits.dim() == 2 && out_logits.size(1) == C && out_logits.scalar_type() == at::kFloat,
              "scatter_exits: out_logits must be (N, ", C, ") float32, got ", out_logits.sizes(), " ",
              out_logits.scalar_type());
  const int64_t N = out_logits.size(0);
  TORCH_CHECK(out_confidence.dim() == 1 && out_confidence.size(0) == N &&
                  out_confidence.scalar_type() == at::kFloat,
              "scatter_exits: out_confidence must be (", N, ",) float32, got ",
              out_confidence.sizes(), " ", out_confidence.scalar_type());
  TORCH_CHECK(out_tier.dim() == 1 && out_tier.size(0) == N && out_tier.scalar_type() == at::kLong,
              "scatter_exits: out_tier must be (", N, ",) int64, got ", out_tier.sizes(), " ",
              out_tier.scalar_type());
  if (B == 0) return;
  c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor m = exit_mask.contiguous(), ri = row_index.contiguous();
  at::Tensor lg = logits.contiguous(), cf = confidence.contiguous();
  const int64_t n = B * std::max<int64_t>(C, 1);
  scatter_exits_kernel<<<grid_for(n, 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      m.data_ptr<bool>(), ri.data_ptr<int64_t>(), lg.data_ptr<float>(), cf.data_ptr<float>(), tier,
      out_logits.data_ptr<float>(), out_logits.stride(0), out_logits.stride(1),
      out_confidence.data_ptr<float>(), out_confidence.stride(0), out_tier.data_ptr<int64_t>(),
      out_tier.stride(0), B, C, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("scatter_exits", &scatter_exits_cuda); }

}  // namespace cascade_rt::cuda
