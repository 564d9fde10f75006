// CPU varlen attention: one task per (sequence, head), no padding, fp32 throughout.
//
// Scores S = Q K^T and the output P V go through an fp32 GEMM on strided views of the packed
// (T, H, D) tensors (no copies for fp32 input), or, for short sequences, through direct loops
// vectorised along D; the row softmax between them runs in place in a per-thread (L x L)
// scratch with a vectorisable exp.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace cascade_rt::cpu {
namespace {

// exp(x) for x <= 0 (softmax inputs after subtracting the row max), to about 2 ulp.
// Range reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for e^r
// (the classic Cephes expf coefficients) and 2^n assembled in the exponent bits.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.44269504088896341f;
  const int n = -(int)(0.5f - t);  // floor(t + 0.5) for t <= 0.5
  const float nf = (float)n;
  const float r = (x - nf * 0.693359375f) + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// In place: row <- softmax(row * scale), fp32.
CASCADE_RT_VECTOR_CLONES void softmax_row(float* row, int64_t n, float scale) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j] * scale);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_nonpositive(row[j] * scale - mx);
    row[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
}

// o (D floats) = sum over j < L of p[j] * V row j (row stride vs).
CASCADE_RT_VECTOR_CLONES void weighted_values(const float* p, const float* V, int64_t vs, float* o,
                                              int64_t L, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
  for (int64_t j = 0; j < L; ++j) {
    const float pj = p[j];
    const float* v = V + j * vs;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += pj * v[d];
  }
}

// Sequences up to this length skip the BLAS calls: at a few tokens per row, two sgemm calls per
// (sequence, head) cost more in call overhead than the arithmetic (a 10-token row at batch 1
// spent ~50 us per layer in them); the direct loops below vectorise along D instead.
constexpr int64_t kDirectMaxLen = 48;

// One (sequence, head) for short sequences: S = softmax(scale Q K^T) row by row, then O = S V.
// Q, K, V, O: L rows of D floats with row strides qs, ks, vs, os; S: L x L scratch, KT: D x L
// scratch. K is transposed first so that each score row is built with unit-stride vector FMAs
// along the keys (a dot product per key would end in a horizontal sum per score).
CASCADE_RT_VECTOR_CLONES void attend_direct(const float* Q, int64_t qs, const float* K, int64_t ks,
                                            const float* V, int64_t vs, float* O, int64_t os,
                                            int64_t L, int64_t D, float scale, float* S, float* KT) {
  for (int64_t j = 0; j < L; ++j) {
    const float* k = K + j * ks;
    for (int64_t d = 0; d < D; ++d) KT[d * L + j] = k[d];
  }
  for (int64_t i = 0; i < L; ++i) {
    float* srow = S + i * L;
    // the scores: row i of Q times K^T, a q-weighted sum of K^T's D rows of L keys
    weighted_values(Q + i * qs, KT, L, srow, D, L);
    softmax_row(srow, L, scale);
    weighted_values(srow, V, vs, O + i * os, L, D);
  }
}

// One query q over L keys and values (row strides ks, vs): o = softmax(scale q K^T) V; s: L floats
// of scratch.
CASCADE_RT_VECTOR_CLONES void first_token_attend(const float* q, const float* K, int64_t ks,
                                                 const float* V, int64_t vs, float* o, int64_t L,
                                                 int64_t D, float scale, float* s) {
  for (int64_t j = 0; j < L; ++j) {
    const float* k = K + j * ks;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += q[d] * k[d];
    s[j] = acc;
  }
  softmax_row(s, L, scale);
  weighted_values(s, V, vs, o, L, D);
}

// One float dtype for q, k and v, and max_seqlen >= 0; returns the dtype. `op` names the caller.
at::ScalarType check_qkv_dtypes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                int64_t max_seqlen, const char* op) {
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": q must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(max_seqlen >= 0, op, ": max_seqlen must be >= 0, got ", max_seqlen);
  return dt;
}

at::Tensor as_f32_rows(const at::Tensor& t) {
  at::Tensor f = t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  // the GEMMs read (L x D) blocks: unit stride along D, token stride >= D (a BLAS rule)
  if (f.stride(2) != 1 || f.stride(0) < f.size(2)) f = f.contiguous();
  return f;
}

}  // namespace

at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                std::optional<double> softmax_scale) {
  TORCH_CHECK(q.dim() == 3, "varlen_attention: q must be (T, H, D), got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "varlen_attention: q, k, v must have one shape, got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  const auto dt = check_qkv_dtypes(q, k, v, max_seqlen, "varlen_attention");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  at::Tensor cu = check_cu_seqlens(cu_seqlens, T, "varlen_attention");
  const int32_t* cup = cu.data_ptr<int32_t>();
  const int64_t B = cu.size(0) - 1;
  const float scale =
      (float)(softmax_scale.has_value() ? *softmax_scale : 1.0 / std::sqrt((double)D));

  at::Tensor out = at::empty({T, H, D}, q.options().dtype(at::kFloat));
  const int64_t total = cup[B];
  if (total < T) out.narrow(0, total, T - total).zero_();
  if (total == 0 || H == 0 || D == 0) {
    if (total > 0) out.narrow(0, 0, total).zero_();
    return dt == at::kFloat ? out : out.to(dt);
  }

  at::Tensor qf = as_f32_rows(q), kf = as_f32_rows(k), vf = as_f32_rows(v);
  const float *qp = qf.data_ptr<float>(), *kp = kf.data_ptr<float>(), *vp = vf.data_ptr<float>();
  const int64_t qs0 = qf.stride(0), qs1 = qf.stride(1);
  const int64_t ks0 = kf.stride(0), ks1 = kf.stride(1);
  const int64_t vs0 = vf.stride(0), vs1 = vf.stride(1);
  float* op = out.data_ptr<float>();
  const int64_t os0 = H * D;

  std::vector<int64_t> seqs;  // live sequences, longest first for load balance
  int64_t lmax = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = cup[b + 1] - cup[b];
    if (len > 0) seqs.push_back(b);
    lmax = std::max(lmax, len);
  }
  std::stable_sort(seqs.begin(), seqs.end(), [&](int64_t a, int64_t b) {
    return cup[a + 1] - cup[a] > cup[b + 1] - cup[b];
  });
  const int64_t ntasks = (int64_t)seqs.size() * H;

  // Tasks are taken from a shared counter, longest sequences first: at::parallel_for splits a
  // range statically, which would leave one thread all the long sequences.
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), ntasks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    // S (lmax x lmax), then K^T (D x L) for the direct path (L <= kDirectMaxLen)
    std::vector<float> scratch(lmax * lmax + D * std::min(lmax, kDirectMaxLen));
    float* S = scratch.data();
    float* KT = S + lmax * lmax;
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t b = seqs[t / H], h = t % H;
      const int64_t s = cup[b], L = cup[b + 1] - cup[b];
      const float* Q = qp + s * qs0 + h * qs1;
      const float* K = kp + s * ks0 + h * ks1;
      const float* V = vp + s * vs0 + h * vs1;
      float* O = op + s * os0 + h * D;
      if (L <= kDirectMaxLen) {
        attend_direct(Q, qs0, K, ks0, V, vs0, O, os0, L, D, scale, S, KT);
        continue;
      }
      // column-major: S^T (L x L) = K Q^T, i.e. row-major S[i][j] = q_i . k_j
      gemm_f32(true, false, L, L, D, K, ks0, Q, qs0, S, L);
      for (int64_t i = 0; i < L; ++i) softmax_row(S + i * L, L, scale);
      // column-major: O^T (D x L) = V^T P^T, i.e. row-major O = P V
      gemm_f32(false, false, D, L, L, V, vs0, S, L, O, os0);
    }
  });
  return dt == at::kFloat ? out : out.to(dt);
}

// One query per sequence (its first token's) over all of that sequence's keys: what a
// classifier's last layer needs, as only the first token's state is read after it. q: (B, H, D),
// the queries already gathered; k, v: (T, H, D) packed. Each (sequence, head) is a dot product
// per key, a softmax over at most max_seqlen scores and a weighted sum of the values; an empty
// sequence gives zeros.
at::Tensor first_token_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                     std::optional<double> softmax_scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && k.sizes() == v.sizes() &&
                  q.size(1) == k.size(1) && q.size(2) == k.size(2),
              "first_token_attention: q must be (B, H, D) and k, v one (T, H, D) shape, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const auto dt = check_qkv_dtypes(q, k, v, max_seqlen, "first_token_attention");
  const int64_t T = k.size(0), H = k.size(1), D = k.size(2), B = q.size(0);
  at::Tensor cu = check_cu_seqlens(cu_seqlens, T, "first_token_attention");
  TORCH_CHECK(cu.size(0) - 1 == B, "first_token_attention: q holds ", B, " rows but cu_seqlens ",
              cu.size(0) - 1);
  const int32_t* cup = cu.data_ptr<int32_t>();
  const float scale =
      (float)(softmax_scale.has_value() ? *softmax_scale : 1.0 / std::sqrt((double)D));
  at::Tensor out = at::zeros({B, H, D}, q.options().dtype(at::kFloat));
  int64_t lmax = 0;
  for (int64_t b = 0; b < B; ++b) lmax = std::max<int64_t>(lmax, cup[b + 1] - cup[b]);
  if (B == 0 || H == 0 || D == 0 || lmax == 0) return dt == at::kFloat ? out : out.to(dt);

  at::Tensor qf = as_f32_rows(q), kf = as_f32_rows(k), vf = as_f32_rows(v);
  const float *qp = qf.data_ptr<float>(), *kp = kf.data_ptr<float>(), *vp = vf.data_ptr<float>();
  const int64_t qs0 = qf.stride(0), qs1 = qf.stride(1);
  const int64_t ks0 = kf.stride(0), ks1 = kf.stride(1);
  const int64_t vs0 = vf.stride(0), vs1 = vf.stride(1);
  float* op = out.data_ptr<float>();
  // a task is one (sequence, head): ~4 L D flops; batch them so that a thread gets real work
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * lmax * D));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> s(lmax);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / H, h = t % H;
      const int64_t start = cup[b], L = cup[b + 1] - cup[b];
      if (L == 0) continue;
      first_token_attend(qp + b * qs0 + h * qs1, kp + start * ks0 + h * ks1, ks0,
                         vp + start * vs0 + h * vs1, vs0, op + (b * H + h) * D, L, D, scale, s.data());
    }
  });
  return dt == at::kFloat ? out : out.to(dt);
}

TORCH_LIBRARY_IMPL(cascade_rt, CPU, m) {
  m.impl("varlen_attention", &varlen_attention_cpu);
  m.impl("first_token_attention", &first_token_attention_cpu);
}

}  // namespace cascade_rt::cpu
