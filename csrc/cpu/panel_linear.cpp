// CPU fp32 dense layer act(x @ W^T + b) on a weight packed once into panels: the fp32 CPU
// tiers' dense layers at every row count.
//
// With a few rows (batch-1 serving: one sequence of 10-128 tokens) a dense layer is a stream
// over its weight: each weight element is used by M rows only, so the time is the time to read
// the weight, and a library GEMM spends it on per-call packing and tiling that pays off only
// at large M. Here the weight (N, K) is stored once as panels of NR output columns, each panel
// K x NR contiguous (zero past N), so a pass streams every weight byte once, in order, and the
// tile working on a block of it prefetches the next block; each thread takes whole panels. A
// register tile holds MR rows x NR columns of accumulators: per k, NR weight floats are loaded
// once and used by MR rows. With many rows, x is cut into chunks that stay in L2 while a
// thread's panels go by, and k into blocks that stay in L1/L2 while a chunk's row tiles go by;
// a partial sum is stored and reloaded exactly (fp32) between k blocks.
//
// Each output row depends only on its own input row and the weight, with the same order of
// operations (bias, then k = 0, 1, ... by FMA) whatever M, the chunking or the thread count,
// so a row's result does not depend on the batch it came in.
//
// NR is 32 (two zmm) with AVX-512, 16 (two ymm) with AVX2 and FMA (opt-in, see panel_width);
// where the layout is not offered (panel_width() == 0) callers keep oneDNN.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CASCADE_RT_PANEL_X86 1
#ifndef CASCADE_RT_PANEL_HINT
#define CASCADE_RT_PANEL_HINT _MM_HINT_T0
#endif
#endif

namespace cascade_rt::cpu {
namespace {

#ifdef CASCADE_RT_PANEL_X86

// Activations applied in registers before the store. GELU (erf) uses the Abramowitz-Stegun
// 7.1.26 form of erfc(z) = q(t) exp(-z^2), t = 1 / (1 + p z), absolute error <= 1.5e-7, as
// 1 + erf(x / sqrt 2) = 2 - q for x >= 0 and q for x < 0 (no cancellation for negative x);
// the tanh forms use tanh(u) = 1 - 2 / (1 + exp(2u)). exp is 2^n * poly(r), |r| <= ln2 / 2,
// degree 6 (about 1 ulp), on arguments clamped to [-87, 88].
enum Act : int { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3, kTanh = 4 };

constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kE2 = 0.5f, kE3 = 1.0f / 6, kE4 = 1.0f / 24, kE5 = 1.0f / 120, kE6 = 1.0f / 720;
constexpr float kErfP = 0.3275911f, kA1 = 0.254829592f, kA2 = -0.284496736f, kA3 = 1.421413741f,
                kA4 = -1.453152027f, kA5 = 1.061405429f, kRsqrt2 = 0.70710678118654752f,
                kGeluC = 0.7978845608028654f, kGeluK = 0.044715f;

__attribute__((target("avx512f"))) inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kE6), r, _mm512_set1_ps(kE5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kE4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kE3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kE2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <int ACT>
__attribute__((target("avx512f"))) inline __m512 act512(__m512 x) {
  if constexpr (ACT == kRelu) return _mm512_max_ps(x, _mm512_setzero_ps());
  if constexpr (ACT == kGelu) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 ax = _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
    const __m512 z = _mm512_mul_ps(ax, _mm512_set1_ps(kRsqrt2));
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(kErfP), z, one));
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kA5), t, _mm512_set1_ps(kA4));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kA3));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kA2));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kA1));
    q = _mm512_mul_ps(_mm512_mul_ps(q, t), exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 f = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(2.0f), q), q);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), f);
  }
  if constexpr (ACT == kGeluTanh) {  // x / (1 + exp(-2u))
    const __m512 x2 = _mm512_mul_ps(x, x);
    const __m512 u = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kGeluC), x),
                                   _mm512_fmadd_ps(_mm512_set1_ps(kGeluK), x2, _mm512_set1_ps(1.0f)));
    const __m512 e = exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  }
  if constexpr (ACT == kTanh) {  // 1 - 2 / (1 + exp(2x))
    const __m512 e = exp512(_mm512_add_ps(x, x));
    return _mm512_sub_ps(_mm512_set1_ps(1.0f),
                         _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
  }
  return x;
}

__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kE6), r, _mm256_set1_ps(kE5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kE4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kE3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kE2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // 2^n: n in [-126, 127] after the clamp, added to the exponent bits
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

template <int ACT>
__attribute__((target("avx2,fma"))) inline __m256 act256(__m256 x) {
  if constexpr (ACT == kRelu) return _mm256_max_ps(x, _mm256_setzero_ps());
  if constexpr (ACT == kGelu) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(kRsqrt2));
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(kErfP), z, one));
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kA5), t, _mm256_set1_ps(kA4));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kA3));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kA2));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kA1));
    q = _mm256_mul_ps(_mm256_mul_ps(q, t), exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z)));
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 f = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), q), q, neg);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), f);
  }
  if constexpr (ACT == kGeluTanh) {
    const __m256 x2 = _mm256_mul_ps(x, x);
    const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kGeluC), x),
                                   _mm256_fmadd_ps(_mm256_set1_ps(kGeluK), x2, _mm256_set1_ps(1.0f)));
    const __m256 e = exp256(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  }
  if constexpr (ACT == kTanh) {
    const __m256 e = exp256(_mm256_add_ps(x, x));
    return _mm256_sub_ps(_mm256_set1_ps(1.0f),
                         _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
  }
  return x;
}

// One register tile over k in [0, K) of a panel slice. first: start from the bias (or 0), else
// from what c holds (the previous k block's sums, stored exactly in fp32, so a row's sum runs
// in the same order as without blocking); last: apply the activation before the store.
// MR rows x 32 columns: 2*MR accumulators + 2 weight registers + 1 broadcast <= 32 zmm.
template <int MR, int ACT>
__attribute__((target("avx512f"))) void tile_avx512(const float* a, int64_t lda, const float* bp,
                                                    int64_t K, const float* bias, float* c,
                                                    int64_t ldc, int ncols, bool first, bool last,
                                                    const float* pf) {
  const __mmask16 m0 = ncols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << ncols) - 1u);
  const __mmask16 m1 =
      ncols >= 32 ? (__mmask16)0xFFFF : (ncols <= 16 ? (__mmask16)0 : (__mmask16)((1u << (ncols - 16)) - 1u));
  __m512 acc0[MR], acc1[MR];
  if (first) {
    const __m512 z0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 z1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      acc0[r] = z0;
      acc1[r] = z1;
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
      acc1[r] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    if (pf) {
      _mm_prefetch((const char*)(pf + k * 32), CASCADE_RT_PANEL_HINT);
      _mm_prefetch((const char*)(pf + k * 32 + 16), CASCADE_RT_PANEL_HINT);
    }
    const __m512 b0 = _mm512_loadu_ps(bp + k * 32);
    const __m512 b1 = _mm512_loadu_ps(bp + k * 32 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
  }
  if (last && ACT != kNone) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      acc0[r] = act512<ACT>(acc0[r]);
      acc1[r] = act512<ACT>(acc1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

// MR rows x 16 columns: 2*MR accumulators + 2 weight registers + 1 broadcast <= 16 ymm.
template <int MR, int ACT>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* a, int64_t lda, const float* bp,
                                                   int64_t K, const float* bias, float* c,
                                                   int64_t ldc, int ncols, bool first, bool last,
                                                   const float* pf) {
  // lanes below ncols (masked loads and stores never touch memory past the last column)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols - 8), lane);
  __m256 acc0[MR], acc1[MR];
  if (first) {
    const __m256 z0 = bias ? _mm256_maskload_ps(bias, m0) : _mm256_setzero_ps();
    const __m256 z1 = bias ? _mm256_maskload_ps(bias + 8, m1) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      acc0[r] = z0;
      acc1[r] = z1;
    }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      acc0[r] = _mm256_maskload_ps(c + r * ldc, m0);
      acc1[r] = _mm256_maskload_ps(c + r * ldc + 8, m1);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    if (pf) _mm_prefetch((const char*)(pf + k * 16), CASCADE_RT_PANEL_HINT);
    const __m256 b0 = _mm256_loadu_ps(bp + k * 16);
    const __m256 b1 = _mm256_loadu_ps(bp + k * 16 + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
  }
  if (last && ACT != kNone) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      acc0[r] = act256<ACT>(acc0[r]);
      acc1[r] = act256<ACT>(acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_maskstore_ps(c + r * ldc, m0, acc0[r]);
    _mm256_maskstore_ps(c + r * ldc + 8, m1, acc1[r]);
  }
}

constexpr int kMrAvx512 = 12;
constexpr int kMrAvx2 = 6;
// k per block: a block of the panel (kKc x 32 floats, 32 KiB) stays in L1/L2 while the row
// tiles of a chunk go by
constexpr int64_t kKc = 256;
// chunks of up to this many rows prefetch the weight stream in software
constexpr int64_t kPrefetchRows = 128;
// rows of x per chunk: 512 KiB of x at most, in L2 while the panels go by
constexpr int64_t kChunkFloats = 128 * 1024;

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t,
                        int, bool, bool, const float*);

template <int ACT, int... I>
constexpr auto avx512_tiles(std::integer_sequence<int, I...>) {
  return std::array<TileFn, sizeof...(I)>{&tile_avx512<I + 1, ACT>...};
}
template <int ACT, int... I>
constexpr auto avx2_tiles(std::integer_sequence<int, I...>) {
  return std::array<TileFn, sizeof...(I)>{&tile_avx2<I + 1, ACT>...};
}

// tiles[activation][rows - 1]
template <int ACT>
const TileFn* tiles_for(bool avx512) {
  static const auto t512 = avx512_tiles<ACT>(std::make_integer_sequence<int, kMrAvx512>{});
  static const auto t2 = avx2_tiles<ACT>(std::make_integer_sequence<int, kMrAvx2>{});
  return avx512 ? t512.data() : t2.data();
}

const TileFn* tiles_for(int act, bool avx512) {
  switch (act) {
    case kRelu: return tiles_for<kRelu>(avx512);
    case kGelu: return tiles_for<kGelu>(avx512);
    case kGeluTanh: return tiles_for<kGeluTanh>(avx512);
    case kTanh: return tiles_for<kTanh>(avx512);
    default: return tiles_for<kNone>(avx512);
  }
}

// rows [0, M) of one panel, k block by k block (each block over every row tile of the chunk)
void panel_rows(const TileFn* tiles, int mr, const float* x, int64_t M, int64_t K, const float* bp,
                int64_t nr, const float* bias, float* y, int64_t N, int ncols) {
  const bool prefetch = M <= kPrefetchRows;
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kn = std::min<int64_t>(kKc, K - k0);
    for (int64_t r0 = 0; r0 < M; r0 += mr) {
      const int rows = (int)std::min<int64_t>(mr, M - r0);
      // with few rows the weight stream is the time: the first tile of a block fetches the
      // weight block after it (the next panel's first block after the last: a thread's
      // panels are consecutive) while it computes; with many rows the block is reused by
      // enough tiles for the hardware prefetchers
      tiles[rows - 1](x + r0 * K + k0, K, bp + k0 * nr, kn, bias, y + r0 * N, N, ncols, k0 == 0,
                      k0 + kn == K, r0 == 0 && prefetch ? bp + (k0 + kKc) * nr : nullptr);
    }
  }
}

#endif  // CASCADE_RT_PANEL_X86

}  // namespace

int64_t panel_width() {
#ifdef CASCADE_RT_PANEL_X86
  // AVX-512: offered. AVX2 only: not by default; its 6 x 16 tile ran at about half of oneDNN's
  // AVX2 GEMM from 32 rows up on an AMD EPYC (ONEDNN_MAX_CPU_ISA=AVX2; ahead at 1-10 rows),
  // while on a Xeon held to AVX2 it ran ahead from 1 to 32 rows, level above
  // (bench/panel_layout.py --isa avx2): a CPU without AVX-512 decides.
  // CASCADE_RT_PANEL_ISA=avx2 selects the AVX2 kernels wherever the CPU has AVX2 and FMA (on an
  // AVX-512 CPU too: the tests run both).
  static const int64_t nr = [] {
    __builtin_cpu_init();
    const char* isa = std::getenv("CASCADE_RT_PANEL_ISA");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa != nullptr && std::string(isa) == "avx2") return avx2 ? (int64_t)16 : (int64_t)0;
    return __builtin_cpu_supports("avx512f") ? (int64_t)32 : (int64_t)0;
  }();
  return nr;
#else
  return 0;
#endif
}

bool is_panel_weight(const at::Tensor& w) {
  return w.dim() == 3 && !w.is_mkldnn() && w.device().is_cpu();
}

at::Tensor panel_pack_cpu(const at::Tensor& weight) {
  const int64_t nr = panel_width();
  TORCH_CHECK(nr > 0, "panel_pack: panel kernels are not offered on this CPU (AVX-512, or AVX2 and FMA with "
              "CASCADE_RT_PANEL_ISA=avx2)");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "panel_pack: weight must be a (N, K) float32 CPU tensor, got ", weight.scalar_type(),
              " of shape ", weight.sizes());
  const int64_t N = weight.size(0), K = weight.size(1), P = (N + nr - 1) / nr;
  at::Tensor w = weight.contiguous();
  at::Tensor out = at::zeros({P, K, nr}, weight.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t j = 0; j < nr && p * nr + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) dst[(p * K + k) * nr + j] = src[(p * nr + j) * K + k];
  });
  return out;
}

at::Tensor panel_linear_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                            int64_t out_features, c10::string_view activation) {
#ifdef CASCADE_RT_PANEL_X86
  const int64_t nr = panel_width();
  TORCH_CHECK(is_panel_weight(w) && w.scalar_type() == at::kFloat && w.size(2) == nr && nr > 0,
              "panel_linear: the weight must come from panel_pack on this CPU ((P, K, ", nr,
              ") float32), got ", w.scalar_type(), " of shape ", w.sizes());
  const int64_t P = w.size(0), K = w.size(1), N = out_features;
  TORCH_CHECK(N > (P - 1) * nr && N <= P * nr, "panel_linear: out_features ", N,
              " does not match a packed weight of ", P, " panels of ", nr);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "panel_linear: x must be (M, ", K, ") float32 on the CPU, got ", x.scalar_type(),
              " of shape ", x.sizes());
  const float* b = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == N && bias->scalar_type() == at::kFloat,
                "panel_linear: bias must be (", N, ",) float32, got ", bias->scalar_type(), " of shape ",
                bias->sizes());
    bc = bias->contiguous();
    b = bc.data_ptr<float>();
  }
  const std::string name(activation);
  const int act = name == "none" ? kNone : name == "relu" ? kRelu : name == "gelu" ? kGelu
                  : name == "gelu_tanh" ? kGeluTanh : name == "tanh" ? kTanh : -1;
  TORCH_CHECK(act >= 0, "panel_linear: activation '", name,
              "' is not one of none, relu, gelu, gelu_tanh, tanh");
  at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const TileFn* tiles = tiles_for(act, nr == 32);
  const int mr = nr == 32 ? kMrAvx512 : kMrAvx2;
  // work items: (chunk of rows, panel), chunk-major, so a thread's items reuse one chunk of x
  // (sized to stay in L2) over consecutive panels; chunks of equal size (whole row tiles) keep
  // the threads' shares equal. At few rows one chunk holds them all and the items are the
  // panels, unless there are too few panels for the threads.
  const int64_t row_tiles = (M + mr - 1) / mr;
  const int64_t threads = at::get_num_threads();
  int64_t chunks = (row_tiles + std::max<int64_t>(1, (kChunkFloats / K) / mr) - 1) /
                   std::max<int64_t>(1, (kChunkFloats / K) / mr);
  if (chunks * P < 2 * threads) chunks = std::min<int64_t>(row_tiles, (2 * threads + P - 1) / P);
  const int64_t chunk_rows = ((row_tiles + chunks - 1) / chunks) * mr;
  chunks = (M + chunk_rows - 1) / chunk_rows;
  at::parallel_for(0, chunks * P, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = i % P, r0 = (i / P) * chunk_rows;
      const int64_t rows = std::min<int64_t>(M - r0, chunk_rows);
      const int ncols = (int)std::min<int64_t>(nr, N - p * nr);
      panel_rows(tiles, mr, xp + r0 * K, rows, K, wp + p * K * nr, nr, b ? b + p * nr : nullptr,
                 yp + r0 * N + p * nr, N, ncols);
    }
  });
  return y;
#else
  TORCH_CHECK(false, "panel_linear: not built for this CPU architecture");
#endif
}

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) {
  m.impl("panel_pack", &panel_pack_cpu);
  m.impl("panel_linear", &panel_linear_cpu);
}

}  // namespace cascade_rt::cpu
