// CUDA scatter of packed (T, ...) tokens back to padded (B, max_seqlen, ...) rows, zeros in
// the padding, no host sync. Every output element is written once.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

template <typename U>
__global__ void unpack_tokens_kernel(const U* __restrict__ src, U* __restrict__ dst,
                                     const int32_t* __restrict__ cu, int64_t B, int64_t M,
                                     int64_t T, int64_t units) {
  const int64_t n = B * M * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / (M * units), col = (i / units) % M, u = i % units;
    const int64_t start = cu[b], p = start + col;
    dst[i] = (col < cu[b + 1] - start && p < T) ? src[p * units + u] : U{};
  }
}

at::Tensor unpack_cuda(const at::Tensor& tokens, const at::Tensor& cu_seqlens, int64_t max_seqlen) {
  TORCH_CHECK(tokens.dim() >= 1, "unpack: tokens must be (T, ...), got a 0-d tensor");
  TORCH_CHECK(max_seqlen >= 0, "unpack: max_seqlen must be >= 0, got ", max_seqlen);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 && cu_seqlens.scalar_type() == at::kInt,
              "unpack: cu_seqlens must be (B+1,) int32, got shape ", cu_seqlens.sizes(), " dtype ",
              cu_seqlens.scalar_type());
  c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t T = tokens.size(0), B = cu_seqlens.size(0) - 1, M = max_seqlen;
  std::vector<int64_t> shape = tokens.sizes().vec();
  shape[0] = M;
  shape.insert(shape.begin(), B);
  at::Tensor src = tokens.contiguous(), cu = cu_seqlens.contiguous();
  at::Tensor out = at::empty(shape, src.options());
  const int64_t rb = row_bytes(src);
  if (B * M > 0 && rb > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    with_unit(copy_unit(rb, {src.data_ptr(), out.data_ptr()}), [&](auto tag) {
      using U = decltype(tag);
      const int64_t units = rb / (int64_t)sizeof(U);
      unpack_tokens_kernel<U><<<grid_for(B * M * units, 256), 256, 0, stream>>>(
          static_cast<const U*>(src.data_ptr()), static_cast<U*>(out.data_ptr()),
          cu.data_ptr<int32_t>(), B, M, T, units);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("unpack", &unpack_cuda); }

}  // namespace cascade_rt::cuda
