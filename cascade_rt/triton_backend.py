"""The Triton backend: the kernels of ``cascade_rt.kernels`` as ``torch.ops.cascade_rt_triton.*``.

Each op is registered with :func:`torch.library.triton_op` and launches its kernels through
:func:`torch.library.wrap_triton`, so ``torch.compile`` traces into the kernels and
``torch.library.opcheck`` can check the ops; each has a fake implementation that only
allocates its outputs. Under the interpreter they are plain ``custom_op`` s instead (torch
cannot trace interpreted kernels).

Runs on CUDA tensors, and on CPU tensors only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before this module is imported). Importing this module fails
(and the backend loader records why) when Triton is missing; it never initialises CUDA.
"""
import contextlib
import math
from typing import Optional

import torch
import triton  # noqa: F401  (a missing Triton must fail the import, not the first call)
from torch.library import custom_op, triton_op, wrap_triton

from .kernels import _common
from .kernels import add_layer_norm as _aln
from .kernels import compact as _cp
from .kernels import embed_layer_norm as _eln
from .kernels import exit_head as _eh
from .kernels import linear as _ln
from .kernels import pack as _pk
from .kernels import varlen_attention as _va

__all__ = ["OPS", "why_not", "describe"]

NAMESPACE = "cascade_rt_triton"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# torch can trace into Triton kernels (``wrap_triton``) only when they are compiled; kernels
# run by the interpreter cannot be traced, so there the ops are registered as opaque custom
# ops (same schemas, same fake implementations) and tracing stops at the op boundary.
_register = custom_op if _common.INTERPRET else triton_op


def _on_device(t: torch.Tensor):
    """A Triton launch goes to the *current* CUDA device and its current stream: make that the
    tensors' device (a model on ``cuda:1`` while ``cuda:0`` is current, a capture on a side
    stream of ``cuda:1``). A no-op context for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# -- registered ops -----------------------------------------------------------------------------
@_register(f"{NAMESPACE}::varlen_attention", mutates_args=())
def _varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
    max_seqlen: int, softmax_scale: Optional[float] = None, zero_dead: bool = True,
) -> torch.Tensor:
    with _on_device(q):
        return _va.varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale, zero_dead,
                                    launch=wrap_triton)


@_register(f"{NAMESPACE}::add_layer_norm", mutates_args=())
def _add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    with _on_device(x):
        return _aln.add_layer_norm(x, residual, weight, bias, eps, cu_seqlens, launch=wrap_triton)


@_register(f"{NAMESPACE}::embed_layer_norm", mutates_args=())
def _embed_layer_norm(
    input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor],
    word_w: torch.Tensor, pos_w: torch.Tensor, type_w: Optional[torch.Tensor],
    weight: torch.Tensor, bias: torch.Tensor, eps: float, cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    with _on_device(word_w):
        return _eln.embed_layer_norm(input_ids, position_ids, token_type_ids, word_w, pos_w, type_w,
                                     weight, bias, eps, cu_seqlens, launch=wrap_triton)


@_register(f"{NAMESPACE}::exit_head", mutates_args=())
def _exit_head(
    cls_hidden: torch.Tensor, pooler_w: torch.Tensor, pooler_b: torch.Tensor,
    cls_w: torch.Tensor, cls_b: torch.Tensor, threshold: float, activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with _on_device(cls_hidden):
        return _eh.exit_head(cls_hidden, pooler_w, pooler_b, cls_w, cls_b, threshold, activation,
                             launch=wrap_triton)


@_register(f"{NAMESPACE}::compact", mutates_args=())
def _compact(
    exit_mask: torch.Tensor, tokens: torch.Tensor, cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _on_device(tokens):
        return _cp.compact(exit_mask, tokens, cu_seqlens, launch=wrap_triton)


@_register(f"{NAMESPACE}::scatter_exits",
           mutates_args=("out_logits", "out_confidence", "out_tier"))
def _scatter_exits(
    exit_mask: torch.Tensor, row_index: torch.Tensor, logits: torch.Tensor,
    confidence: torch.Tensor, tier: int, out_logits: torch.Tensor,
    out_confidence: torch.Tensor, out_tier: torch.Tensor,
) -> None:
    with _on_device(out_logits):
        _cp.scatter_exits(exit_mask, row_index, logits, confidence, tier, out_logits,
                          out_confidence, out_tier, launch=wrap_triton)


@_register(f"{NAMESPACE}::pack", mutates_args=())
def _pack(padded: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with _on_device(padded):
        return _pk.pack(padded, attention_mask, launch=wrap_triton)


@_register(f"{NAMESPACE}::unpack", mutates_args=())
def _unpack(tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    with _on_device(tokens):
        return _pk.unpack(tokens, cu_seqlens, max_seqlen, launch=wrap_triton)


@_register(f"{NAMESPACE}::linear", mutates_args=())
def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
    activation: str = "none", zero_dead: bool = True,
) -> torch.Tensor:
    with _on_device(x):
        return _ln.linear(x, weight, bias, cu_seqlens, activation, zero_dead, launch=wrap_triton)


# Fake (meta) implementations: outputs' shapes and dtypes only, no launch (under the Triton
# interpreter a launch would try to run the kernel on fake tensors).
@_varlen_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, zero_dead=True):
    return q.new_empty(q.shape)


@_add_layer_norm.register_fake
def _(x, residual, weight, bias, eps, cu_seqlens=None):
    return x.new_empty(x.shape)


@_embed_layer_norm.register_fake
def _(input_ids, position_ids, token_type_ids, word_w, pos_w, type_w, weight, bias, eps, cu_seqlens=None):
    return word_w.new_empty((input_ids.shape[0], word_w.shape[1]))


@_exit_head.register_fake
def _(cls_hidden, pooler_w, pooler_b, cls_w, cls_b, threshold, activation="tanh"):
    B, C = cls_hidden.shape[0], cls_w.shape[0]
    return (cls_hidden.new_empty((B, C), dtype=torch.float32),
            cls_hidden.new_empty((B,), dtype=torch.float32),
            cls_hidden.new_empty((B,), dtype=torch.bool))


@_compact.register_fake
def _(exit_mask, tokens, cu_seqlens):
    B = exit_mask.shape[0]
    return (tokens.new_empty(tokens.shape), cu_seqlens.new_empty((B + 1,), dtype=torch.int32),
            cu_seqlens.new_empty((B,), dtype=torch.int64), cu_seqlens.new_empty((), dtype=torch.int32))


@_scatter_exits.register_fake
def _(exit_mask, row_index, logits, confidence, tier, out_logits, out_confidence, out_tier):
    return None


@_pack.register_fake
def _(padded, attention_mask):
    B, S = attention_mask.shape
    return (padded.new_empty((B * S,) + tuple(padded.shape[2:])),
            padded.new_empty((B + 1,), dtype=torch.int32))


@_unpack.register_fake
def _(tokens, cu_seqlens, max_seqlen):
    return tokens.new_empty((cu_seqlens.shape[0] - 1, max_seqlen) + tuple(tokens.shape[1:]))


@_linear.register_fake
def _(x, weight, bias, cu_seqlens, activation="none", zero_dead=True):
    return x.new_empty((x.shape[0], weight.shape[0]))


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, zero_dead=True):
    return torch.ops.cascade_rt_triton.varlen_attention(
        q, k, v, cu_seqlens, int(max_seqlen), None if softmax_scale is None else float(softmax_scale),
        bool(zero_dead))


def add_layer_norm(x, residual, weight, bias, eps, cu_seqlens=None):
    return torch.ops.cascade_rt_triton.add_layer_norm(x, residual, weight, bias, float(eps), cu_seqlens)


def embed_layer_norm(input_ids, position_ids, token_type_ids, word_w, pos_w, type_w, weight, bias, eps,
                     cu_seqlens=None):
    return torch.ops.cascade_rt_triton.embed_layer_norm(input_ids, position_ids, token_type_ids, word_w,
                                                        pos_w, type_w, weight, bias, float(eps), cu_seqlens)


def exit_head(cls_hidden, pooler_w, pooler_b, cls_w, cls_b, threshold, activation="tanh"):
    return torch.ops.cascade_rt_triton.exit_head(cls_hidden, pooler_w, pooler_b, cls_w, cls_b,
                                                 float(threshold), str(activation))


def compact(exit_mask, tokens, cu_seqlens):
    return torch.ops.cascade_rt_triton.compact(exit_mask, tokens, cu_seqlens)


def scatter_exits(exit_mask, row_index, logits, confidence, tier, out_logits, out_confidence,
                  out_tier):
    torch.ops.cascade_rt_triton.scatter_exits(exit_mask, row_index, logits, confidence, int(tier),
                                              out_logits, out_confidence, out_tier)


def pack(padded, attention_mask):
    return torch.ops.cascade_rt_triton.pack(padded, attention_mask)


def unpack(tokens, cu_seqlens, max_seqlen):
    return torch.ops.cascade_rt_triton.unpack(tokens, cu_seqlens, int(max_seqlen))


def linear(x, weight, bias, cu_seqlens, activation="none", zero_dead=True):
    return torch.ops.cascade_rt_triton.linear(x, weight, bias, cu_seqlens, str(activation),
                                              bool(zero_dead))


OPS = {
    "varlen_attention": varlen_attention,
    "add_layer_norm": add_layer_norm,
    "exit_head": exit_head,
    "compact": compact,
    "scatter_exits": scatter_exits,
    "pack": pack,
    "unpack": unpack,
    "linear": linear,
    "embed_layer_norm": embed_layer_norm,
}


# -- what the backend accepts -------------------------------------------------------------------
def _device_reason(tensors) -> Optional[str]:
    devs = {t.device for t in tensors}
    if len(devs) != 1:
        return f"tensors on several devices ({', '.join(sorted(map(str, devs)))})"
    dev = next(iter(devs))
    if dev.type == "cuda":
        return None
    if dev.type == "cpu":
        if _common.INTERPRET:
            return None
        return "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 before import)"
    return f"device {dev} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)"


def _float_reason(name: str, t: torch.Tensor) -> Optional[str]:
    if t.dtype not in FLOAT_DTYPES:
        return f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16"
    if t.dtype == torch.bfloat16 and t.device.type == "cpu":
        return f"{name} is bfloat16, which the Triton interpreter computes wrongly (CUDA only)"
    return None


def _shape_reason(name: str, t: torch.Tensor, shape: tuple) -> Optional[str]:
    if tuple(t.shape) != tuple(shape):
        return f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}"
    return None


def _cu_reason(cu: torch.Tensor, B: Optional[int] = None) -> Optional[str]:
    if cu.dim() != 1 or cu.dtype != torch.int32 or cu.shape[0] < 1:
        return f"cu_seqlens must be (B+1,) int32, got {tuple(cu.shape)} {cu.dtype}"
    if B is not None and cu.shape[0] != B + 1:
        return f"cu_seqlens has {cu.shape[0]} entries for {B} rows (expected {B + 1})"
    return None


def _first(*reasons) -> Optional[str]:
    for r in reasons:
        if r:
            return r
    return None


def _why_varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, zero_dead=True):
    r = _device_reason((q, k, v, cu_seqlens))
    if r:
        return r
    if q.dim() != 3:
        return f"q must be (T, H, D), got shape {tuple(q.shape)}"
    r = _first(_shape_reason("k", k, q.shape), _shape_reason("v", v, q.shape), _float_reason("q", q),
               _cu_reason(cu_seqlens))
    if r:
        return r
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[2] > _va.MAX_HEAD_DIM:
        return f"head_dim {q.shape[2]} > {_va.MAX_HEAD_DIM}"
    if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
        return f"max_seqlen must be a host int >= 0, got {max_seqlen!r}"
    if softmax_scale is not None and not math.isfinite(float(softmax_scale)):
        return f"softmax_scale {softmax_scale!r} is not finite"
    return None


def _why_add_layer_norm(x, residual, weight, bias, eps, cu_seqlens=None):
    r = _device_reason((x, residual, weight, bias) + (() if cu_seqlens is None else (cu_seqlens,)))
    if r:
        return r
    if x.dim() != 2:
        return f"x must be (N, H), got shape {tuple(x.shape)}"
    H = x.shape[1]
    r = _first(_shape_reason("residual", residual, x.shape), _shape_reason("weight", weight, (H,)),
               _shape_reason("bias", bias, (H,)), _float_reason("x", x))
    if r:
        return r
    if residual.dtype != x.dtype:
        return f"x is {x.dtype} but residual is {residual.dtype}"
    for name, t in (("weight", weight), ("bias", bias)):
        r = _float_reason(name, t)
        if r:
            return r
    if H > _aln.MAX_HIDDEN:
        return f"hidden size {H} > {_aln.MAX_HIDDEN}"
    return None if cu_seqlens is None else _cu_reason(cu_seqlens)


def _why_exit_head(cls_hidden, pooler_w, pooler_b, cls_w, cls_b, threshold, activation="tanh"):
    if activation not in _eh.ACTIVATIONS:
        return f"activation {activation!r} is not one of {', '.join(_eh.ACTIVATIONS)}"
    r = _device_reason((cls_hidden, pooler_w, pooler_b, cls_w, cls_b))
    if r:
        return r
    if cls_hidden.dim() != 2:
        return f"cls_hidden must be (B, H), got shape {tuple(cls_hidden.shape)}"
    H = cls_hidden.shape[1]
    if cls_w.dim() != 2:
        return f"cls_w must be (C, H), got shape {tuple(cls_w.shape)}"
    C = cls_w.shape[0]
    r = _first(_shape_reason("pooler_w", pooler_w, (H, H)), _shape_reason("pooler_b", pooler_b, (H,)),
               _shape_reason("cls_w", cls_w, (C, H)), _shape_reason("cls_b", cls_b, (C,)))
    if r:
        return r
    for name, t in (("cls_hidden", cls_hidden), ("pooler_w", pooler_w), ("pooler_b", pooler_b),
                    ("cls_w", cls_w), ("cls_b", cls_b)):
        r = _float_reason(name, t)
        if r:
            return r
    if C == 0 or C > _eh.MAX_CLASSES:
        return f"{C} classes; the Triton exit head takes 1..{_eh.MAX_CLASSES}"
    return None


def _why_compact(exit_mask, tokens, cu_seqlens):
    r = _device_reason((exit_mask, tokens, cu_seqlens))
    if r:
        return r
    if exit_mask.dim() != 1 or exit_mask.dtype != torch.bool:
        return f"exit_mask must be (B,) bool, got {tuple(exit_mask.shape)} {exit_mask.dtype}"
    r = _cu_reason(cu_seqlens, exit_mask.shape[0])
    if r:
        return r
    if tokens.dim() < 1:
        return "tokens must be (T, ...), got a 0-d tensor"
    if tokens.is_complex() or tokens.element_size() not in _cp._BITS:
        return f"tokens dtype {tokens.dtype} is not supported (1, 2, 4 or 8-byte real types)"
    return None


def _why_scatter_exits(exit_mask, row_index, logits, confidence, tier, out_logits, out_confidence,
                       out_tier):
    r = _device_reason((exit_mask, row_index, logits, confidence, out_logits, out_confidence, out_tier))
    if r:
        return r
    if exit_mask.dim() != 1 or exit_mask.dtype != torch.bool:
        return f"exit_mask must be (B,) bool, got {tuple(exit_mask.shape)} {exit_mask.dtype}"
    B = exit_mask.shape[0]
    if out_logits.dim() != 2:
        return f"out_logits must be (N, C), got shape {tuple(out_logits.shape)}"
    N, C = out_logits.shape
    r = _first(_shape_reason("row_index", row_index, (B,)), _shape_reason("logits", logits, (B, C)),
               _shape_reason("confidence", confidence, (B,)),
               _shape_reason("out_confidence", out_confidence, (N,)),
               _shape_reason("out_tier", out_tier, (N,)))
    if r:
        return r
    for name, t, dt in (("row_index", row_index, torch.int64), ("logits", logits, torch.float32),
                        ("confidence", confidence, torch.float32),
                        ("out_logits", out_logits, torch.float32),
                        ("out_confidence", out_confidence, torch.float32),
                        ("out_tier", out_tier, torch.int64)):
        if t.dtype != dt:
            return f"{name} has dtype {t.dtype}, expected {dt}"
    if out_logits.stride(-1) != 1 and C > 1:
        return "out_logits needs a unit column stride (it is written in place)"
    if not out_confidence.is_contiguous() or not out_tier.is_contiguous():
        return "out_confidence and out_tier must be contiguous (they are written in place)"
    return None


def _bits_reason(name: str, t: torch.Tensor) -> Optional[str]:
    if t.is_complex() or t.element_size() not in _pk._BITS:
        return f"{name} dtype {t.dtype} is not supported (1, 2, 4 or 8-byte real types)"
    return None


def _why_pack(padded, attention_mask):
    r = _device_reason((padded, attention_mask))
    if r:
        return r
    if attention_mask.dim() != 2:
        return f"attention_mask must be (B, S), got shape {tuple(attention_mask.shape)}"
    if padded.dim() < 2 or tuple(padded.shape[:2]) != tuple(attention_mask.shape):
        return (f"padded has shape {tuple(padded.shape)}; expected (B, S, ...) with (B, S) = "
                f"{tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        return f"attention_mask must be an integer or bool tensor, got {attention_mask.dtype}"
    return _bits_reason("padded", padded)


def _why_unpack(tokens, cu_seqlens, max_seqlen):
    r = _device_reason((tokens, cu_seqlens))
    if r:
        return r
    if tokens.dim() < 1:
        return "tokens must be (T, ...), got a 0-d tensor"
    r = _cu_reason(cu_seqlens)
    if r:
        return r
    if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
        return f"max_seqlen must be a host int >= 0, got {max_seqlen!r}"
    return _bits_reason("tokens", tokens)


def _why_linear(x, weight, bias, cu_seqlens, activation="none", zero_dead=True):
    r = _device_reason((x, weight, cu_seqlens) + (() if bias is None else (bias,)))
    if r:
        return r
    if x.dim() != 2:
        return f"x must be (T, K), got shape {tuple(x.shape)}"
    if weight.dim() != 2:
        return f"weight must be (N, K), got shape {tuple(weight.shape)}"
    N, K = weight.shape
    r = _first(_shape_reason("weight", weight, (N, x.shape[1])), _float_reason("x", x),
               None if bias is None else _shape_reason("bias", bias, (N,)), _cu_reason(cu_seqlens))
    if r:
        return r
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            return f"x is {x.dtype} but {name} is {t.dtype}"
    if activation not in _ln.ACTIVATIONS:
        return f"activation {activation!r} is not one of {', '.join(_ln.ACTIVATIONS)}"
    return None


def _why_embed_layer_norm(input_ids, position_ids, token_type_ids, word_w, pos_w, type_w, weight, bias,
                          eps, cu_seqlens=None):
    ids = [t for t in (input_ids, position_ids, token_type_ids) if t is not None]
    tables = [t for t in (word_w, pos_w, type_w) if t is not None]
    r = _device_reason(ids + tables + [weight, bias] + ([] if cu_seqlens is None else [cu_seqlens]))
    if r:
        return r
    N = input_ids.shape[0]
    for name, t in (("input_ids", input_ids), ("position_ids", position_ids), ("token_type_ids", token_type_ids)):
        if t is not None and (t.dim() != 1 or t.shape[0] != N or t.dtype not in (torch.int32, torch.int64)):
            return f"{name} must be ({N},) int32/int64, got {tuple(t.shape)} {t.dtype}"
    if (token_type_ids is None) != (type_w is None):
        return "token_type_ids and type_w must both be given or both be None"
    H = word_w.shape[1] if word_w.dim() == 2 else -1
    for name, t in (("word_w", word_w), ("pos_w", pos_w), ("type_w", type_w)):
        if t is None:
            continue
        if t.dim() != 2 or t.shape[1] != H:
            return f"{name} must be (rows, {H}), got {tuple(t.shape)}"
        if t.dtype != word_w.dtype:
            return f"word_w is {word_w.dtype} but {name} is {t.dtype}"
    r = _first(_float_reason("word_w", word_w), _shape_reason("weight", weight, (H,)),
               _shape_reason("bias", bias, (H,)), _float_reason("weight", weight), _float_reason("bias", bias))
    if r:
        return r
    if H > _eln.MAX_HIDDEN:
        return f"hidden size {H} > {_eln.MAX_HIDDEN}"
    if cu_seqlens is not None:
        return _cu_reason(cu_seqlens)
    return None


_WHY = {
    "varlen_attention": _why_varlen_attention,
    "add_layer_norm": _why_add_layer_norm,
    "exit_head": _why_exit_head,
    "compact": _why_compact,
    "scatter_exits": _why_scatter_exits,
    "pack": _why_pack,
    "unpack": _why_unpack,
    "linear": _why_linear,
    "embed_layer_norm": _why_embed_layer_norm,
}


def why_not(op: str, *args) -> Optional[str]:
    """``None`` when the Triton backend can run ``op`` on ``args``, else one line saying why not."""
    fn = _WHY.get(op)
    if fn is None:
        return f"the Triton backend has no {op}"
    try:
        return fn(*args)
    except (TypeError, AttributeError) as exc:
        return f"bad arguments for {op}: {exc}"


def describe() -> str:
    mode = "interpreter (CPU tensors)" if _common.INTERPRET else "CUDA tensors"
    return (f"triton {triton.__version__}, {mode}; varlen_attention head_dim <= {_va.MAX_HEAD_DIM}, "
            f"linear activations {'/'.join(_ln.ACTIVATIONS)}, "
            "float32/float16/bfloat16 (bfloat16 on CUDA only)")
