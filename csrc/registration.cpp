// Schemas of every cascade_rt native op, and the one pybind11 entry (build information).
//
// Python sees the ops as torch.ops.cascade_rt.<name>; their CPU and CUDA kernels register
// themselves in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu. Fake (meta) implementations are
// registered from Python (cascade_rt/native_backend.py) with torch.library.register_fake.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>

#include "cpu/common.h"

TORCH_LIBRARY(cascade_rt, m) {
  m.def(
      "varlen_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, "
      "float? softmax_scale=None) -> Tensor");
  m.def(
      "first_token_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, "
      "float? softmax_scale=None) -> Tensor");
  m.def(
      "add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def(
      "exit_head(Tensor cls_hidden, Tensor pooler_w, Tensor pooler_b, Tensor cls_w, Tensor cls_b, "
      "float threshold, str activation=\"tanh\") -> (Tensor logits, Tensor confidence, Tensor exit_mask)");
  m.def(
      "compact(Tensor exit_mask, Tensor tokens, Tensor cu_seqlens) -> "
      "(Tensor tokens_kept, Tensor cu_seqlens_kept, Tensor row_index, Tensor n_kept)");
  m.def(
      "scatter_exits(Tensor exit_mask, Tensor row_index, Tensor logits, Tensor confidence, int tier, "
      "Tensor(a!) out_logits, Tensor(b!) out_confidence, Tensor(c!) out_tier) -> ()");
  m.def("pack(Tensor padded, Tensor attention_mask) -> (Tensor tokens, Tensor cu_seqlens)");
  m.def("unpack(Tensor tokens, Tensor cu_seqlens, int max_seqlen) -> Tensor");
  m.def(
      "embed_layer_norm(Tensor input_ids, Tensor position_ids, Tensor? token_type_ids, Tensor word_w, "
      "Tensor pos_w, Tensor? type_w, Tensor weight, Tensor bias, float eps, Tensor? cu_seqlens=None) -> "
      "Tensor");
  m.def(
      "encoder_layers(Tensor x, Tensor cu_seqlens, int max_seqlen, Tensor[] weights, int num_heads, "
      "float eps, str activation, bool first_tokens=False) -> Tensor");
  m.def("panel_pack(Tensor weight) -> Tensor");
  m.def(
      "panel_linear(Tensor x, Tensor weight, Tensor? bias, int out_features, str activation=\"none\") "
      "-> Tensor");
}

namespace {

std::string build_info() {
  std::ostringstream s;
  s << "torch " << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
#ifdef CASCADE_RT_WITH_CUDA
  s << ", CUDA kernels built";
#ifdef CASCADE_RT_CUDA_ARCHS
#define CASCADE_RT_STR2(x) #x
#define CASCADE_RT_STR(x) CASCADE_RT_STR2(x)
  s << " for " << CASCADE_RT_STR(CASCADE_RT_CUDA_ARCHS);
#endif
#else
  s << ", CPU only (no CUDA kernels)";
#endif
#ifdef _OPENMP
  s << ", OpenMP " << _OPENMP;
#else
  s << ", no OpenMP (CPU kernels single-threaded)";
#endif
#if defined(__clang__)
  s << ", clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
  s << ", gcc " << __GNUC__ << "." << __GNUC_MINOR__;
#endif
  s << ", CPU attention GEMM: " << cascade_rt::cpu::gemm_backend();
  return s.str();
}

bool with_cuda() {
#ifdef CASCADE_RT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cascade_rt native ops (registered as torch.ops.cascade_rt.*) and build information";
  m.def("build_info", &build_info, "how this extension was built");
  m.def("with_cuda", &with_cuda, "whether CUDA kernels were compiled in");
  m.def("panel_width", &cascade_rt::cpu::panel_width,
        "output columns per panel of panel_pack on this CPU (32: AVX-512, 16: AVX2, 0: not offered)");
}
