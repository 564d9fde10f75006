"""Dense layers of the exact-shape path: ``act(x @ weight^T + bias)`` on every row.

On the exact-shape path (every row live) a tier's four dense layers per encoder layer are most
of its time on a CPU. ATen's ``F.linear`` runs them through the BLAS torch was built with
(MKL in the PyPI wheels), whose sgemm reaches about half of what oneDNN's matmul does on the
AMD EPYC machines this project is measured on (``bench/dense_cpu.py`` prints both). So on the
CPU, for float32 (and bfloat16 where the CPU has native bf16 dot products), :func:`dense` runs
oneDNN's matmul with the bias and the activation fused in its epilogue
(``torch.ops.mkldnn._linear_pointwise``) for three rows or more; elsewhere (CUDA: cuBLAS; other dtypes) it is
``F.linear`` followed by the activation. :func:`dense_ref` is the oracle.

The choice is made once per (device type, dtype) and cached; ``CASCADE_RT_ONEDNN=0`` turns the
oneDNN path off (read at import, or call :func:`set_onednn`).

:func:`prepack` gives a weight in oneDNN's own blocked layout (``mkldnn::_reorder_linear_weight``),
packed once at load. With it the GEMM streams the weight in the order its micro-kernel reads
and skips the per-call layout work: for the MiniLM's dense layers at 10 rows, 197-250 GFLOP/s
packed against 143-166 plain and 68-84 through ATen, and packed stays ahead from two rows up
to thousands (``bench/dense_cpu.py``, ``bench/results/dense_cpu.json``; at one row the three
are within noise of each other). A packed copy costs the weight's size in memory again (the
plain parameter stays: state dicts, training, other paths read it).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .reference import _linear_activation

__all__ = ["dense", "dense_ref", "dense_impl", "set_onednn", "prepack", "ONEDNN_ACTIVATIONS"]

#: activation name (as :func:`cascade_rt.ops.linear` names them) -> oneDNN post-op and algorithm
ONEDNN_ACTIVATIONS = {
    "none": ("none", ""),
    "relu": ("relu", ""),
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
}

#: below this many rows ATen's GEMV-like path beats oneDNN on a plain weight (a packed one wins
#: from two rows up; ``bench/dense_cpu.py``)
ONEDNN_MIN_ROWS = 3

_enabled = os.environ.get("CASCADE_RT_ONEDNN", "1") != "0"
_choice: dict[tuple[str, torch.dtype], str] = {}


def set_onednn(enabled: bool) -> None:
    """Allow (the default) or forbid the oneDNN path of :func:`dense`."""
    global _enabled
    _enabled = bool(enabled)
    _choice.clear()


def dense_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              activation: str = "none") -> torch.Tensor:
    """``act(x @ weight^T + bias)`` computed in fp32 (fp64 for fp64 input) and cast to x's dtype.

    x: (M, K).  weight: (N, K) (``nn.Linear`` layout; a :func:`prepack`-ed weight is read back
    to that layout).  bias: (N,) or None.
    Returns (M, N) in x's dtype, newly allocated.
    """
    if weight.is_mkldnn:
        weight = weight.to_dense()
    acc = torch.promote_types(x.dtype, torch.float32)
    y = F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    return _linear_activation(y, activation).to(x.dtype)


def _onednn_usable(device_type: str, dtype: torch.dtype) -> bool:
    if not _enabled or device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.float32:
        return True
    # bf16 through oneDNN only where the CPU has native bf16 dot products (else it is emulated)
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def dense_impl(device_type: str, dtype: torch.dtype) -> str:
    """``"onednn"`` or ``"aten"``: what :func:`dense` runs for this device type and dtype."""
    key = (device_type, dtype)
    got = _choice.get(key)
    if got is None:
        got = _choice[key] = "onednn" if _onednn_usable(device_type, dtype) else "aten"
    return got


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) in oneDNN's packed layout where :func:`dense` runs oneDNN for its
    device and dtype, else ``weight`` itself. The result is a new tensor (``is_mkldnn``, sizes
    (N, K)), detached: it does not follow later in-place updates of ``weight``, so whoever
    keeps it must repack when the weight changes (see ``Tier.encoder_weights``)."""
    if weight.dim() != 2 or dense_impl(weight.device.type, weight.dtype) != "onednn":
        return weight
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          activation: str = "none") -> torch.Tensor:
    """``act(x @ weight^T + bias)`` on every row (inference; no autograd through oneDNN).

    Args:
        x: (M, K), float (any strides).  weight: (N, K), x's dtype, plain or :func:`prepack`-ed
            (a packed weight runs oneDNN at any row count).  bias: (N,) or None.
        activation: ``"none"``, ``"relu"``, ``"gelu"`` (erf) or ``"gelu_tanh"``.

    Returns:
        (M, N) in x's dtype, newly allocated. fp32 accumulation on every path.
    """
    if weight.is_mkldnn:
        attr, algo = ONEDNN_ACTIVATIONS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algo)
    if (x.dim() == 2 and x.shape[0] >= ONEDNN_MIN_ROWS and weight.dtype == x.dtype
            and dense_impl(x.device.type, x.dtype) == "onednn"):
        attr, algo = ONEDNN_ACTIVATIONS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algo)
    y = F.linear(x, weight, bias)
    return y if activation == "none" else _linear_activation(y, activation)
