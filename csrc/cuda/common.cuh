// Helpers shared by the CUDA kernels of cascade_rt.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace cascade_rt::cuda {

constexpr int kWarp = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a 1-D grid-stride launch over n items (capped; kernels loop).
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t g = ceil_div(n, threads);
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>(g, 65535 * 8));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. `shared` holds >= 32 floats.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : 0.0f;
  return warp_sum(v);
}

// Last index b in [0, B) with cu[b] <= p (the row owning token slot p when p < cu[B]).
__device__ __forceinline__ int64_t row_of(const int32_t* cu, int64_t B, int64_t p) {
  int64_t lo = 0, hi = B;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= p) lo = mid; else hi = mid;
  }
  return lo;
}

// Widest unit (16, 8, 4, 2 or 1 bytes) that divides a token row of `row_bytes` and the
// alignment of every pointer; token copies move rows in these units.
inline int copy_unit(int64_t row_bytes, std::initializer_list<const void*> ptrs) {
  for (int u : {16, 8, 4, 2}) {
    bool ok = row_bytes % u == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % u == 0;
    if (ok) return u;
  }
  return 1;
}

// Calls f.template operator()<U>() with U an integer/vector type of `unit` bytes.
template <typename F>
void with_unit(int unit, F&& f) {
  switch (unit) {
    case 16: f(uint4{}); break;
    case 8: f(uint2{}); break;
    case 4: f(uint32_t{}); break;
    case 2: f(uint16_t{}); break;
    default: f(uint8_t{}); break;
  }
}

inline int64_t row_bytes(const at::Tensor& t) {
  int64_t n = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace cascade_rt::cuda
