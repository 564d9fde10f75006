#include "common.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstdlib>

// The BLAS that ships inside libtorch_cpu (MKL or OpenBLAS) exports the Fortran sgemm_. It is
// looked up weakly: where this torch build has none (or CASCADE_RT_CPU_GEMM is set, read once
// per process; the tests use it to cover the fallback), gemm_f32 falls back to at::mm on views.
#if defined(__GNUC__) && !defined(_WIN32)
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc) __attribute__((weak));
#define CASCADE_RT_HAVE_WEAK_SGEMM 1
#endif

namespace cascade_rt::cpu {

at::Tensor check_cu_seqlens(const at::Tensor& cu_seqlens, int64_t num_tokens, const char* op) {
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
              ": cu_seqlens must be 1-D of shape (B+1,), got shape ", cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, op, ": cu_seqlens must be int32, got ",
              cu_seqlens.scalar_type());
  TORCH_CHECK(cu_seqlens.device().is_cpu(), op, ": cu_seqlens must be on the CPU here, got ",
              cu_seqlens.device());
  at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* p = cu.data_ptr<int32_t>();
  const int64_t n = cu.size(0);
  TORCH_CHECK(p[0] == 0, op, ": cu_seqlens[0] must be 0, got ", p[0]);
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK(p[i] >= p[i - 1], op, ": cu_seqlens must be non-decreasing, but cu_seqlens[", i,
                "] = ", p[i], " < cu_seqlens[", i - 1, "] = ", p[i - 1]);
  }
  TORCH_CHECK(p[n - 1] <= num_tokens, op, ": cu_seqlens[-1] = ", p[n - 1],
              " exceeds the number of token slots (", num_tokens, ")");
  return cu;
}

namespace {

void gemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
               int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  auto opt = at::TensorOptions().dtype(at::kFloat);
  // A column-major matrix (r x s, leading dim ld) is a row-major view with strides (1, ld).
  auto view = [&](const float* p, int64_t r, int64_t s, int64_t ld, bool trans) {
    void* q = const_cast<float*>(p);
    return trans ? at::from_blob(q, {r, s}, {ld, 1}, opt) : at::from_blob(q, {r, s}, {1, ld}, opt);
  };
  at::Tensor out = at::from_blob(c, {m, n}, {1, ldc}, opt);
  out.copy_(at::mm(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b)));
}

}  // namespace

void gemm_f32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
              int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
#ifdef CASCADE_RT_HAVE_WEAK_SGEMM
  static const bool use_blas = std::getenv("CASCADE_RT_CPU_GEMM") == nullptr;
  if (use_blas && sgemm_ != nullptr && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX &&
      ldb <= INT_MAX && ldc <= INT_MAX) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int mi = (int)m, ni = (int)n, ki = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
    const float one = 1.0f, zero = 0.0f;
    sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &zero, c, &lc);
    return;
  }
#endif
  gemm_aten(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
}

const char* gemm_backend() {
#ifdef CASCADE_RT_HAVE_WEAK_SGEMM
  if (std::getenv("CASCADE_RT_CPU_GEMM") == nullptr && sgemm_ != nullptr) return "BLAS sgemm from libtorch";
#endif
  return "ATen mm";
}

}  // namespace cascade_rt::cpu
