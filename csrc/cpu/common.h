// Helpers shared by the CPU kernels of cascade_rt.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

// Hot fp32 loops are compiled for AVX-512 and AVX2 too and picked at load time (GCC/clang on
// x86-64 Linux, through ifunc); elsewhere they build for the baseline ISA only.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define CASCADE_RT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CASCADE_RT_VECTOR_CLONES
#endif

namespace cascade_rt::cpu {

// Checks cu_seqlens: (B+1,), int32, on the CPU, cu[0] == 0, non-decreasing, cu[B] <= num_tokens.
// `op` names the caller in the error message. Returns a contiguous int32 view.
at::Tensor check_cu_seqlens(const at::Tensor& cu_seqlens, int64_t num_tokens, const char* op);

// C = op(A) * op(B), column-major (BLAS convention), fp32, alpha = 1, beta = 0.
// op(A): m x k, op(B): k x n, C: m x n with leading dimension ldc.
void gemm_f32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
              int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);

// Which GEMM gemm_f32 uses at run time ("BLAS sgemm" or "ATen mm").
const char* gemm_backend();

// The op kernels the fused encoder (encoder_layers.cpp) calls directly; see their files.
at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                std::optional<double> softmax_scale);
at::Tensor first_token_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                     std::optional<double> softmax_scale);
at::Tensor add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                              const at::Tensor& weight, const at::Tensor& bias, double eps);

// Few-row fp32 dense layers on panel-packed weights (panel_linear.cpp): the panel width on
// this CPU (0: not offered), whether a tensor is such a weight, and act(x @ W^T + b).
int64_t panel_width();
bool is_panel_weight(const at::Tensor& w);
at::Tensor panel_linear_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                            int64_t out_features, c10::string_view activation);

// Bytes of one token row of a (T, ...) tensor.
inline int64_t row_bytes(const at::Tensor& t) {
  int64_t n = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace cascade_rt::cpu
