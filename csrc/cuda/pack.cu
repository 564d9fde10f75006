// CUDA gather of right-padded (B, S, ...) rows into the packed (T, ...) layout, no host sync:
// row lengths from the mask (summed on the device), one block scans them into cu_seqlens, a
// grid copies the live slots. A row sum outside [0, S] is clamped (the CPU kernel rejects it).
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>
#include <tuple>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

constexpr int kScanThreads = 1024;

__global__ void lengths_to_cu_kernel(const int64_t* __restrict__ lens, int64_t B, int64_t S,
                                     int32_t* __restrict__ cu) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int carry;
  if (threadIdx.x == 0) {
    carry = 0;
    cu[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < B; base += kScanThreads) {
    const int64_t b = base + threadIdx.x;
    const int len = b < B ? (int)min(max(lens[b], (int64_t)0), S) : 0;
    int incl, total;
    Scan(tmp).InclusiveSum(len, incl, total);
    if (b < B) cu[b + 1] = carry + incl;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
}

template <typename U>
__global__ void pack_tokens_kernel(const U* __restrict__ src, U* __restrict__ dst,
                                   const int32_t* __restrict__ cu, int64_t B, int64_t S,
                                   int64_t units) {
  const int64_t n = B * S * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / (S * units), col = (i / units) % S, u = i % units;
    const int64_t start = cu[b];
    if (col < cu[b + 1] - start) dst[(start + col) * units + u] = src[i];
  }
}

std::tuple<at::Tensor, at::Tensor> pack_cuda(const at::Tensor& padded, const at::Tensor& attention_mask) {
  TORCH_CHECK(attention_mask.dim() == 2, "pack: attention_mask must be (B, S), got shape ",
              attention_mask.sizes());
  const int64_t B = attention_mask.size(0), S = attention_mask.size(1);
  TORCH_CHECK(padded.dim() >= 2 && padded.size(0) == B && padded.size(1) == S,
              "pack: padded must be (B, S, ...) = (", B, ", ", S, ", ...), got shape ", padded.sizes());
  c10::cuda::CUDAGuard guard(padded.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<int64_t> shape = padded.sizes().vec();
  shape.erase(shape.begin());
  shape[0] = B * S;
  at::Tensor src = padded.contiguous();
  at::Tensor out = at::zeros(shape, src.options());
  at::Tensor cu = at::empty({B + 1}, attention_mask.options().dtype(at::kInt));
  at::Tensor lens = at::sum(attention_mask.to(at::kLong), {1}).contiguous();
  lengths_to_cu_kernel<<<1, kScanThreads, 0, stream>>>(lens.data_ptr<int64_t>(), B, S,
                                                        cu.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t rb = row_bytes(out);
  if (B * S > 0 && rb > 0) {
    with_unit(copy_unit(rb, {src.data_ptr(), out.data_ptr()}), [&](auto tag) {
      using U = decltype(tag);
      const int64_t units = rb / (int64_t)sizeof(U);
      pack_tokens_kernel<U><<<grid_for(B * S * units, 256), 256, 0, stream>>>(
          static_cast<const U*>(src.data_ptr()), static_cast<U*>(out.data_ptr()),
          cu.data_ptr<int32_t>(), B, S, units);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, cu};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("pack", &pack_cuda); }

}  // namespace cascade_rt::cuda
