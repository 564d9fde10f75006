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
packed once at load: the layout of the bf16 CPU path (fp32 takes panels, below). With it the
GEMM streams the weight in the order its micro-kernel reads and skips the per-call layout
work; it is ahead of oneDNN on the plain weight from two rows up (``bench/dense_cpu.py``,
``bench/results/dense_cpu.json``). A packed copy costs the weight's size in memory again (the
plain parameter stays: state dicts, training, other paths read it).

:func:`panel_pack` gives an fp32 weight in this project's panel layout (the native
``panel_linear`` kernel, ``csrc/cpu/panel_linear.cpp``). At batch 1 a dense layer is a stream
over its weight: the panel kernel reads each weight byte once, in order, prefetched ahead, with
no per-call packing or tiling: at 10 rows, 1.6-2.2x oneDNN on its own packed weights and
3-4.3x ATen; at thousands of rows, 0.8-1.0x oneDNN packed (``bench/dense_cpu.py``,
``bench/results/dense_cpu.json``; two AMD EPYC cores).
Each output row depends on its own input row only, with the same order of operations for
every row count, so fp32 CPU tiers use panels at every row count (:func:`packing`): a row's
result never depends on the batch it came in, which a layout switched by row count would break.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .reference import _linear_activation, _panel_to_dense, _plain_weight

__all__ = ["dense", "dense_ref", "dense_impl", "set_onednn", "prepack", "panel_pack", "panel_unpack", "packing",
           "pack", "set_panel", "panel_enabled", "panel_width", "ONEDNN_ACTIVATIONS"]

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
_panel_enabled = os.environ.get("CASCADE_RT_PANEL", "1") != "0"
_choice: dict[tuple[str, torch.dtype], str] = {}


def set_onednn(enabled: bool) -> None:
    """Allow (the default) or forbid the oneDNN path of :func:`dense`."""
    global _enabled
    _enabled = bool(enabled)
    _choice.clear()


def set_panel(enabled: bool) -> None:
    """Allow (the default) or forbid panel-packed weights for fp32 CPU dense layers
    (:func:`packing`; oneDNN's packing takes their place); ``CASCADE_RT_PANEL=0`` forbids them
    from import. Tiers pick the change up on their next forward."""
    global _panel_enabled
    _panel_enabled = bool(enabled)


def panel_enabled() -> bool:
    """Whether :func:`packing` may answer ``"panel"`` (:func:`set_panel`)."""
    return _panel_enabled


def panel_width() -> int:
    """Output columns per panel of :func:`panel_pack` in this process: 32 with AVX-512; 16 with
    ``CASCADE_RT_PANEL_ISA=avx2`` on a CPU with AVX2 and FMA (opt-in: measured on one AMD EPYC
    behind oneDNN's AVX2 GEMM from 32 rows up, on a Xeon held to AVX2 ahead of it; ``bench/panel_layout.py
    --isa avx2``); 0 where the panel kernel is not offered (no native build)."""
    global _panel_width
    if _panel_width is None:
        try:
            from . import _C

            _panel_width = int(_C.panel_width()) if hasattr(_C, "panel_width") else 0
        except ImportError:
            _panel_width = 0
    return _panel_width


_panel_width: int | None = None


def packing(device_type: str, dtype: torch.dtype) -> str:
    """The dense-weight layout for this device type and dtype, the same for every row count:
    ``"panel"`` (:func:`panel_pack`: fp32 where :func:`panel_width` offers panels, not
    turned off by :func:`set_panel`), else ``"onednn"`` (:func:`prepack`) or ``"plain"``."""
    if device_type == "cpu" and dtype == torch.float32 and _panel_enabled and panel_width() > 0:
        return "panel"
    return "onednn" if dense_impl(device_type, dtype) == "onednn" else "plain"


def panel_pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K), float32 on the CPU, as panels of :func:`panel_width` output columns:
    a new (P, K, width) tensor, ``P = ceil(N / width)``, zero past N, detached (repack when the
    weight changes). Raises ``ValueError`` where the panel kernel is not offered."""
    width = panel_width()
    if width == 0 or weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError(f"panel_pack: needs a (N, K) float32 CPU weight where the panel kernel is offered "
                         f"(panel width {width}); got {weight.dtype} {tuple(weight.shape)} on "
                         f"{weight.device}")
    with torch.no_grad():
        return torch.ops.cascade_rt.panel_pack(weight.detach())


def panel_unpack(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The (out_features, K) weight a :func:`panel_pack`-ed ``packed`` holds (a new tensor)."""
    return _panel_to_dense(packed, out_features).contiguous()


def pack(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """``weight`` in ``layout`` (one of :func:`packing`'s answers)."""
    if layout == "panel":
        return panel_pack(weight)
    if layout == "onednn":
        return prepack(weight)
    if layout == "plain":
        return weight
    raise ValueError(f"pack: layout {layout!r} is not one of panel, onednn, plain")


def dense_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              activation: str = "none") -> torch.Tensor:
    """``act(x @ weight^T + bias)`` computed in fp32 (fp64 for fp64 input) and cast to x's dtype.

    x: (M, K).  weight: (N, K) (``nn.Linear`` layout; a :func:`prepack`-ed or
    :func:`panel_pack`-ed weight is read back to that layout, the latter needs the bias for N).
    bias: (N,) or None.
    Returns (M, N) in x's dtype, newly allocated.
    """
    weight = _plain_weight(weight, bias)
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
            (a packed weight runs oneDNN at any row count) or :func:`panel_pack`-ed (runs the
            panel kernel at any row count; needs the bias).  bias: (N,) or None.
        activation: ``"none"``, ``"relu"``, ``"gelu"`` (erf) or ``"gelu_tanh"``.

    Returns:
        (M, N) in x's dtype, newly allocated. fp32 accumulation on every path.
    """
    if weight.is_mkldnn:
        attr, algo = ONEDNN_ACTIVATIONS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algo)
    if weight.dim() == 3:
        if bias is None:
            raise ValueError("dense: a panel-packed weight needs its bias to know the output features")
        return torch.ops.cascade_rt.panel_linear(x, weight, bias, bias.shape[0], activation)
    if (x.dim() == 2 and x.shape[0] >= ONEDNN_MIN_ROWS and weight.dtype == x.dtype
            and dense_impl(x.device.type, x.dtype) == "onednn"):
        attr, algo = ONEDNN_ACTIVATIONS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algo)
    y = F.linear(x, weight, bias)
    return y if activation == "none" else _linear_activation(y, activation)
