// CUDA batch compaction between tiers, with no host sync: one block scans the rows (kept
// count and kept-token offsets, carried across chunks of 1024 rows), then a grid copies the
// kept rows' token slots to their new offsets. Sizes stay the input's upper bounds; the true
// row count is left on the device in n_kept.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>
#include <tuple>

#include "common.cuh"

namespace cascade_rt::cuda {
namespace {

constexpr int kScanThreads = 1024;

__global__ void compact_rows_kernel(const bool* __restrict__ exit_mask, const int32_t* __restrict__ cu,
                                    int64_t B, int32_t* __restrict__ cu_kept,
                                    int64_t* __restrict__ row_index, int32_t* __restrict__ n_kept,
                                    int32_t* __restrict__ dst_start) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int carry_rows, carry_tokens;
  const int tid = threadIdx.x;
  if (tid == 0) {
    carry_rows = 0;
    carry_tokens = 0;
    cu_kept[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < B; base += kScanThreads) {
    const int64_t b = base + tid;
    const int keep = b < B && !exit_mask[b];
    const int len = b < B ? cu[b + 1] - cu[b] : 0;
    int rank, start, rows_here, tokens_here;
    Scan(tmp).ExclusiveSum(keep, rank, rows_here);
    __syncthreads();
    Scan(tmp).ExclusiveSum(keep ? len : 0, start, tokens_here);
    rank += carry_rows;
    start += carry_tokens;
    if (b < B) dst_start[b] = keep ? start : -1;
    if (keep) {
      row_index[rank] = b;
      cu_kept[rank + 1] = start + len;
    }
    __syncthreads();  // every thread has read the carries
    if (tid == 0) {
      carry_rows += rows_here;
      carry_tokens += tokens_here;
    }
    __syncthreads();
  }
  const int kept = carry_rows, total = carry_tokens;
  for (int64_t j = kept + tid; j < B; j += kScanThreads) {
    row_index[j] = -1;
    cu_kept[j + 1] = total;
  }
  if (tid == 0) *n_kept = kept;
}

template <typename U>
__global__ void compact_tokens_kernel(const U* __restrict__ src, U* __restrict__ dst,
                                      const int32_t* __restrict__ cu,
                                      const int32_t* __restrict__ dst_start, int64_t B, int64_t T,
                                      int64_t units) {
  const int64_t live = cu[B];
  const int64_t n = T * units;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / units, u = i % units;
    if (p >= live) continue;
    const int64_t b = row_of(cu, B, p);
    const int64_t d = dst_start[b];
    if (d < 0) continue;
    dst[(d + p - cu[b]) * units + u] = src[i];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact_cuda(
    const at::Tensor& exit_mask, const at::Tensor& tokens, const at::Tensor& cu_seqlens) {
  TORCH_CHECK(exit_mask.dim() == 1 && exit_mask.scalar_type() == at::kBool,
              "compact: exit_mask must be (B,) bool, got shape ", exit_mask.sizes(), " dtype ",
              exit_mask.scalar_type());
  TORCH_CHECK(tokens.dim() >= 1, "compact: tokens must be (T, ...), got a 0-d tensor");
  const int64_t B = exit_mask.size(0), T = tokens.size(0);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) == B + 1 &&
                  cu_seqlens.scalar_type() == at::kInt,
              "compact: cu_seqlens must be (B+1,) = (", B + 1, ",) int32, got shape ",
              cu_seqlens.sizes(), " dtype ", cu_seqlens.scalar_type());
  c10::cuda::CUDAGuard guard(tokens.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor src = tokens.contiguous(), cu = cu_seqlens.contiguous(), mask = exit_mask.contiguous();
  at::Tensor out = at::zeros(src.sizes(), src.options());
  auto iopt = cu.options();
  at::Tensor cu_kept = at::empty({B + 1}, iopt);
  at::Tensor row_index = at::empty({B}, iopt.dtype(at::kLong));
  at::Tensor n_kept = at::empty({}, iopt);
  at::Tensor dst_start = at::empty({B}, iopt);
  compact_rows_kernel<<<1, kScanThreads, 0, stream>>>(
      mask.data_ptr<bool>(), cu.data_ptr<int32_t>(), B, cu_kept.data_ptr<int32_t>(),
      row_index.data_ptr<int64_t>(), n_kept.data_ptr<int32_t>(), dst_start.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t rb = row_bytes(src);
  if (T > 0 && rb > 0) {
    const int unit = copy_unit(rb, {src.data_ptr(), out.data_ptr()});
    with_unit(unit, [&](auto tag) {
      using U = decltype(tag);
      const int64_t units = rb / (int64_t)sizeof(U);
      compact_tokens_kernel<U><<<grid_for(T * units, 256), 256, 0, stream>>>(
          static_cast<const U*>(src.data_ptr()), static_cast<U*>(out.data_ptr()),
          cu.data_ptr<int32_t>(), dst_start.data_ptr<int32_t>(), B, T, units);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, cu_kept, row_index, n_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(cascade_rt, CUDA, m) { m.impl("compact", &compact_cuda); }

}  // namespace cascade_rt::cuda
