"""The native backend: the C++/CUDA extension ``cascade_rt._C`` built from ``csrc/``.

Its ops are registered with ``TORCH_LIBRARY(cascade_rt, ...)`` and reached as
``torch.ops.cascade_rt.<op>``; this module adds their fake (meta) implementations so
``torch.compile`` and ``torch.library.opcheck`` can trace them, maps the public op names to
them (``OPS``) and says which inputs it refuses (:func:`why_not`).

Importing it raises ``ImportError`` with the reason when the extension is missing (installed
with ``CASCADE_RT_NO_NATIVE=1``, or the build failed) or was built against another torch;
:mod:`cascade_rt.backends` records that and falls back.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.cascade_rt.*)
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    import importlib.util

    if importlib.util.find_spec("cascade_rt._C") is None:
        msg = (
            "the extension cascade_rt._C is not built (installed with CASCADE_RT_NO_NATIVE=1, or "
            "its build failed); rebuild with `pip install --no-build-isolation -e .`"
        )
    else:
        msg = f"cascade_rt._C does not load ({exc}); it was probably built against another torch, rebuild it"
    raise ImportError(msg) from exc

__all__ = ["OPS", "why_not", "describe"]

_ops = torch.ops.cascade_rt
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_WITH_CUDA = bool(_C.with_cuda())


# -- fake (meta) implementations: shapes and dtypes only ------------------------------------
if hasattr(_ops, "embed_layer_norm"):
    @torch.library.register_fake("cascade_rt::embed_layer_norm")
    def _(input_ids, position_ids, token_type_ids, word_w, pos_w, type_w, weight, bias, eps, cu_seqlens=None):
        return word_w.new_empty((input_ids.shape[0], word_w.shape[1]))


if hasattr(_ops, "encoder_layers"):
    @torch.library.register_fake("cascade_rt::encoder_layers")
    def _(x, cu_seqlens, max_seqlen, weights, num_heads, eps, activation, first_tokens=False):
        if first_tokens:
            return x.new_empty((cu_seqlens.shape[0] - 1, x.shape[1]))
        return torch.empty_like(x, memory_format=torch.contiguous_format)


if hasattr(_ops, "first_token_attention"):
    @torch.library.register_fake("cascade_rt::first_token_attention")
    def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
        return torch.empty_like(q, memory_format=torch.contiguous_format)


if hasattr(_ops, "panel_linear"):
    @torch.library.register_fake("cascade_rt::panel_pack")
    def _(weight):
        width = int(_C.panel_width())
        return weight.new_empty(((weight.shape[0] + width - 1) // max(width, 1), weight.shape[1], width))

    @torch.library.register_fake("cascade_rt::panel_linear")
    def _(x, weight, bias, out_features, activation="none"):
        return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("cascade_rt::varlen_attention")
def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.register_fake("cascade_rt::add_layer_norm")
def _(x, residual, weight, bias, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("cascade_rt::exit_head")
def _(cls_hidden, pooler_w, pooler_b, cls_w, cls_b, threshold, activation="tanh"):
    B, C = cls_hidden.shape[0], cls_w.shape[0]
    f = cls_hidden.new_empty((B, C), dtype=torch.float32)
    return f, cls_hidden.new_empty((B,), dtype=torch.float32), cls_hidden.new_empty((B,), dtype=torch.bool)


@torch.library.register_fake("cascade_rt::compact")
def _(exit_mask, tokens, cu_seqlens):
    B = exit_mask.shape[0]
    return (
        tokens.new_empty(tokens.shape),
        cu_seqlens.new_empty((B + 1,), dtype=torch.int32),
        cu_seqlens.new_empty((B,), dtype=torch.int64),
        cu_seqlens.new_empty((), dtype=torch.int32),
    )


@torch.library.register_fake("cascade_rt::scatter_exits")
def _(exit_mask, row_index, logits, confidence, tier, out_logits, out_confidence, out_tier):
    return None


@torch.library.register_fake("cascade_rt::pack")
def _(padded, attention_mask):
    B, S = attention_mask.shape
    return (
        padded.new_empty((B * S,) + tuple(padded.shape[2:])),
        attention_mask.new_empty((B + 1,), dtype=torch.int32),
    )


@torch.library.register_fake("cascade_rt::unpack")
def _(tokens, cu_seqlens, max_seqlen):
    B = cu_seqlens.shape[0] - 1
    return tokens.new_empty((B, max_seqlen) + tuple(tokens.shape[1:]))


# -- the public op names ---------------------------------------------------------------------
def _varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, zero_dead=True):
    # the kernel always zeroes the dead slots (allowed whatever zero_dead says)
    return _ops.varlen_attention(q, k, v, cu_seqlens, int(max_seqlen), softmax_scale)


def _add_layer_norm(x, residual, weight, bias, eps, cu_seqlens=None):
    # the kernel normalises every row (dead rows are unspecified, so that is allowed)
    return _ops.add_layer_norm(x, residual, weight, bias, eps)


def _scatter_exits(exit_mask, row_index, logits, confidence, tier, out_logits, out_confidence, out_tier):
    _ops.scatter_exits(exit_mask, row_index, logits, confidence, int(tier), out_logits, out_confidence, out_tier)


# linear has no kernel in csrc/: on CPU it is ATen's (the reference: F.linear + activation +
# a device-side zero fill of the dead rows), so that a cascade forced onto this backend still
# runs sync-free. Skipping the dead rows' work needs the Triton kernel (CUDA). embed_layer_norm
# has a CPU kernel (csrc/cpu/embed_layer_norm.cpp); an extension built before it falls back to
# the reference.
from .reference import EXIT_HEAD_ACTIVATIONS as _EXIT_HEAD_ACTIVATIONS  # noqa: E402
from .reference import LINEAR_ACTIVATIONS as _LINEAR_ACTIVATIONS  # noqa: E402
from .reference import embed_layer_norm_ref as _embed_layer_norm  # noqa: E402
from .reference import linear_ref as _linear  # noqa: E402

OPS = {
    "varlen_attention": _varlen_attention,
    "add_layer_norm": _add_layer_norm,
    "exit_head": _ops.exit_head,
    "compact": _ops.compact,
    "scatter_exits": _scatter_exits,
    "pack": _ops.pack,
    "unpack": _ops.unpack,
    "linear": _linear,
    "embed_layer_norm": _embed_layer_norm,
}
if hasattr(_ops, "encoder_layers"):  # an extension built before the op existed lacks it
    OPS["encoder_layers"] = _ops.encoder_layers
if hasattr(_ops, "first_token_attention"):
    OPS["first_token_attention"] = _ops.first_token_attention
if hasattr(_ops, "embed_layer_norm"):
    OPS["embed_layer_norm"] = _ops.embed_layer_norm

# ops with a CUDA kernel in csrc/cuda (the others are CPU only)
_CUDA_OPS = frozenset({"add_layer_norm", "exit_head", "compact", "scatter_exits", "pack", "unpack"})


def missing_ops(device: torch.device) -> tuple[str, ...]:
    """The ops of ``OPS`` this backend cannot run on ``device`` (whatever the arguments)."""
    if device.type == "cpu":
        return ()
    if device.type == "cuda":
        return tuple(op for op in OPS if not (_WITH_CUDA and op in _CUDA_OPS))
    return tuple(OPS)


def _tensors(args):
    return [a for a in args if isinstance(a, torch.Tensor)]


def _float(name, t):
    if t.dtype not in _FLOATS:
        return f"{name} dtype {t.dtype} is not float32/float16/bfloat16"
    return None


def why_not(op: str, *args) -> str | None:
    """``None`` when the native backend takes ``op(*args)``, else one line saying why not."""
    if op not in OPS:
        return f"no native {op}"
    ts = _tensors(args)
    devs = {t.device for t in ts}
    if len(devs) > 1:
        return f"tensors on several devices ({', '.join(sorted(map(str, devs)))})"
    dev = next(iter(devs)) if devs else torch.device("cpu")
    if dev.type == "cuda":
        if not _WITH_CUDA:
            return "cascade_rt._C was built without CUDA kernels"
        if op not in _CUDA_OPS:
            return f"no native CUDA {op} (the Triton kernel covers it)"
    elif dev.type != "cpu":
        return f"device {dev.type} is not supported (cpu, cuda)"

    if op == "varlen_attention":
        q, k, v, cu = args[:4]
        if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
            return f"q, k, v must be one (T, H, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        if not (q.dtype == k.dtype == v.dtype):
            return "q, k, v dtypes differ"
        return _float("q", q) or (None if cu.dtype == torch.int32 else "cu_seqlens must be int32")
    if op == "first_token_attention":
        q, k, v, cu = args[:4]
        if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
            return (f"q must be (B, H, D) and k, v one (T, H, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                    f"{tuple(v.shape)}")
        if not (q.dtype == k.dtype == v.dtype):
            return "q, k, v dtypes differ"
        return _float("q", q) or (None if cu.dtype == torch.int32 else "cu_seqlens must be int32")
    if op == "add_layer_norm":
        x, r, w, b = args[:4]
        if x.dim() != 2 or r.shape != x.shape or r.dtype != x.dtype:
            return "x and residual must be (N, H) of one dtype"
        if len(args) > 5 and args[5] is not None and args[5].dtype != torch.int32:
            return "cu_seqlens must be int32"
        return _float("x", x) or _float("weight", w) or _float("bias", b)
    if op == "exit_head":
        for name, t in zip(("cls_hidden", "pooler_w", "pooler_b", "cls_w", "cls_b"), args[:5]):
            why = _float(name, t)
            if why:
                return why
        if len(args) > 6 and args[6] not in _EXIT_HEAD_ACTIVATIONS:
            return f"activation {args[6]!r} is not one of {', '.join(_EXIT_HEAD_ACTIVATIONS)}"
        return None
    if op == "compact":
        mask, tokens, cu = args[:3]
        if mask.dtype != torch.bool or cu.dtype != torch.int32:
            return "exit_mask must be bool and cu_seqlens int32"
        return None
    if op == "scatter_exits":
        mask, ri, logits, conf = args[:4]
        outs = args[5:8]
        if mask.dtype != torch.bool or ri.dtype != torch.int64:
            return "exit_mask must be bool and row_index int64"
        if logits.dtype != torch.float32 or conf.dtype != torch.float32:
            return "logits and confidence must be float32"
        if (outs[0].dtype, outs[1].dtype, outs[2].dtype) != (torch.float32, torch.float32, torch.int64):
            return "outputs must be float32 logits, float32 confidence, int64 tier"
        return None
    if op == "unpack":
        if args[1].dtype != torch.int32:
            return "cu_seqlens must be int32"
    if op == "linear":
        x, w, b, cu, act = args[:5]
        if x.dim() != 2 or w.dim() != 2 or w.shape[1] != x.shape[1]:
            return f"x must be (T, K) and weight (N, K), got {tuple(x.shape)} and {tuple(w.shape)}"
        if b is not None and tuple(b.shape) != (w.shape[0],):
            return f"bias must be ({w.shape[0]},), got {tuple(b.shape)}"
        if cu.dtype != torch.int32:
            return "cu_seqlens must be int32"
        if act not in _LINEAR_ACTIVATIONS:
            return f"activation {act!r} is not one of {', '.join(_LINEAR_ACTIVATIONS)}"
        return _float("x", x)
    if op == "embed_layer_norm":
        ids, pos, types, word_w, pos_w, type_w = args[:6]
        if ids.dim() != 1 or pos.shape != ids.shape:
            return "input_ids and position_ids must be one (N,) shape"
        if pos_w.dtype != word_w.dtype or (type_w is not None and type_w.dtype != word_w.dtype):
            return "the embedding tables must share one dtype"
        if len(args) > 9 and args[9] is not None and args[9].dtype != torch.int32:
            return "cu_seqlens must be int32"
        return _float("word_w", word_w)
    if op == "encoder_layers":
        x, cu, _, weights, heads, _, act = args[:7]
        if x.dim() != 2 or heads <= 0 or x.shape[1] % heads:
            return f"x must be (T, hidden) with hidden a multiple of num_heads, got {tuple(x.shape)}, {heads} heads"
        if cu.dtype != torch.int32:
            return "cu_seqlens must be int32"
        if act not in _LINEAR_ACTIVATIONS:
            return f"activation {act!r} is not one of {', '.join(_LINEAR_ACTIVATIONS)}"
        # each weight's dtype is checked by the kernel (one error naming it); a list from
        # Tier.encoder_weights is x's dtype, and checking 72 tensors here costs a forward's worth
        if not weights or weights[0].dtype != x.dtype:
            return "the weights must be in x's dtype"
        return _float("x", x)
    return None


def describe() -> str:
    """One line on how the extension was built."""
    return _C.build_info()
