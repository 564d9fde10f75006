"""Public ops of cascade_rt.

Every op here has a plain-PyTorch reference in :mod:`cascade_rt.reference` (``<op>_ref``)
that defines its result; the wrappers below dispatch to the best backend that accepts the
arguments (see :mod:`cascade_rt.backends`). Fast backends register their kernels with
``torch.library`` under their own namespaces (``torch.ops.cascade_rt.*`` for the native
extension, ``torch.ops.cascade_rt_triton.*`` for Triton) together with fake
implementations, so ``torch.compile`` and ``torch.library.opcheck`` see them.

Layout conventions are those of :mod:`cascade_rt.reference`: packed tokens ``(T, ...)``
with ``T`` an upper bound, ``cu_seqlens: (B+1,), int32``, ``row_index: (B,), int64`` with
-1 for dead rows, live counts in device tensors (no host sync).
"""
from __future__ import annotations

import torch

from .backends import dispatch

__all__ = [
    "varlen_attention",
    "first_token_attention",
    "add_layer_norm",
    "exit_head",
    "compact",
    "scatter_exits",
    "pack",
    "unpack",
    "linear",
    "embed_layer_norm",
    "encoder_layers",
]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
    zero_dead: bool = True,
) -> torch.Tensor:
    """Bidirectional multi-head attention within each packed sequence, no padding.

    Args:
        q, k, v: (T, H, D), float32/float16/bfloat16, same dtype and device.
        cu_seqlens: (B+1,), int32: sequence ``b`` is tokens ``cu_seqlens[b]:cu_seqlens[b+1]``.
        max_seqlen: host int, an upper bound of every sequence length (never read back
            from the device).
        softmax_scale: defaults to ``1/sqrt(D)``.
        zero_dead: token slots past ``cu_seqlens[-1]`` are written as 0 (default); with
            False a backend may leave them unwritten (the sync-free tier never reads them).

    Returns:
        (T, H, D) in q's dtype, newly allocated; token slots past ``cu_seqlens[-1]`` are 0
        (unspecified with ``zero_dead=False``).
    """
    if zero_dead:
        return dispatch("varlen_attention", q, k, v, cu_seqlens, max_seqlen, softmax_scale)
    return dispatch("varlen_attention", q, k, v, cu_seqlens, max_seqlen, softmax_scale, False)


def first_token_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention of each packed sequence's first token over all of its tokens: what a
    classifier's last layer needs (:func:`varlen_attention` at tokens ``cu_seqlens[:-1]``, the
    other queries never computed).

    Args:
        q: (B, H, D): the first tokens' queries.  k, v: (T, H, D), packed; one float dtype.
        cu_seqlens: (B+1,), int32.  max_seqlen: host upper bound of a row's length.
        softmax_scale: defaults to ``1/sqrt(D)``.

    Returns:
        (B, H, D) in q's dtype, newly allocated; zeros for an empty sequence.
    """
    return dispatch("first_token_attention", q, k, v, cu_seqlens, int(max_seqlen), softmax_scale)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """``LayerNorm(x + residual) * weight + bias`` over the last dim, fp32 statistics.

    Args:
        x, residual: (N, H), same float dtype.
        weight, bias: (H,).
        eps: LayerNorm epsilon.
        cu_seqlens: optional (B+1,), int32, on x's device: only rows ``< cu_seqlens[-1]``
            (a count read on the device) are live; a backend may leave the others unwritten
            (the sync-free tier's upper-bound shapes).

    Returns:
        (N, H) in x's dtype, newly allocated; rows ``>= cu_seqlens[-1]`` unspecified.
    """
    if cu_seqlens is None:
        return dispatch("add_layer_norm", x, residual, weight, bias, eps)
    return dispatch("add_layer_norm", x, residual, weight, bias, eps, cu_seqlens)


def exit_head(
    cls_hidden: torch.Tensor,
    pooler_w: torch.Tensor,
    pooler_b: torch.Tensor,
    cls_w: torch.Tensor,
    cls_b: torch.Tensor,
    threshold: float,
    activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused exit decision of one tier: ``act(dense) -> classifier -> softmax -> max -> >=``.

    Args:
        cls_hidden: (B, H), float32/float16/bfloat16: each row's first-token hidden state.
        pooler_w: (H, H), pooler_b: (H,): the head's first dense layer (BERT pooler,
            RoBERTa / XLM-R / ELECTRA ``classifier.dense``, DistilBERT ``pre_classifier``).
        cls_w: (C, H), cls_b: (C,): classifier (``classifier`` or ``classifier.out_proj``).
        threshold: a row exits when its max softmax probability (fp32) is ``>= threshold``.
        activation: applied in fp32 after the dense layer: ``"tanh"`` (BERT, RoBERTa),
            ``"relu"`` (DistilBERT), ``"gelu"`` (erf; ELECTRA) or ``"gelu_tanh"``.

    Returns:
        logits (B, C) float32, confidence (B,) float32, exit_mask (B,) bool.
    """
    from .reference import EXIT_HEAD_ACTIVATIONS

    if activation not in EXIT_HEAD_ACTIVATIONS:
        raise ValueError(f"exit_head activation {activation!r} is not one of {EXIT_HEAD_ACTIVATIONS}")
    return dispatch("exit_head", cls_hidden, pooler_w, pooler_b, cls_w, cls_b, float(threshold), activation)


def compact(
    exit_mask: torch.Tensor,
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove exiting rows and keep the survivors' tokens packed, in order, on the device.

    Args:
        exit_mask: (B,), bool: True for rows that leave (dead rows should be True).
        tokens: (T, ...), any dtype: per-token data to carry (ids and token types, say).
        cu_seqlens: (B+1,), int32.

    Returns (all newly allocated, sized by the inputs, no host sync):
        tokens_kept: (T, ...): survivors' tokens first, zeros after.
        cu_seqlens_kept: (B+1,), int32: survivors first, then zero-length rows.
        row_index: (B,), int64: position in *this* batch of each kept row, -1 past n_kept.
        n_kept: (), int32: number of surviving rows.
    """
    return dispatch("compact", exit_mask, tokens, cu_seqlens)


def scatter_exits(
    exit_mask: torch.Tensor,
    row_index: torch.Tensor,
    logits: torch.Tensor,
    confidence: torch.Tensor,
    tier: int,
    out_logits: torch.Tensor,
    out_confidence: torch.Tensor,
    out_tier: torch.Tensor,
) -> None:
    """Write exiting rows' logits, confidence and tier to their input rows, in place.

    Args:
        exit_mask: (B,), bool.  row_index: (B,), int64, input row of each row (-1: dead row,
            never written).
        logits: (B, C) float32.  confidence: (B,) float32.  tier: int.
        out_logits: (N, C) float32, out_confidence: (N,) float32, out_tier: (N,) int64:
            owned by the caller, mutated in place.
    """
    dispatch(
        "scatter_exits", exit_mask, row_index, logits, confidence, int(tier),
        out_logits, out_confidence, out_tier,
    )


def pack(padded: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows to the packed layout, on the device.

    Args:
        padded: (B, S, ...), any dtype.
        attention_mask: (B, S), ones then zeros in each row (right padding).

    Returns:
        tokens (B*S, ...) with live tokens first and zeros after; cu_seqlens (B+1,) int32.
    """
    return dispatch("pack", padded, attention_mask)


def unpack(tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Packed ``(T, ...)`` to padded ``(B, max_seqlen, ...)`` with zeros in the padding."""
    return dispatch("unpack", tokens, cu_seqlens, max_seqlen)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    activation: str = "none",
    zero_dead: bool = True,
) -> torch.Tensor:
    """``act(x @ weight^T + bias)`` on the live rows of a packed batch; dead rows are 0.

    For upper-bound shapes (the sync-free cascade): of the ``T`` rows only the first
    ``cu_seqlens[-1]`` are live, a count read on the device, never by the host. The Triton
    kernel skips the matmul of row blocks past it, so the cost follows the live rows; on
    exact shapes ``F.linear`` (cuBLAS) is the better choice.

    Args:
        x: (T, K), float32/float16/bfloat16 (any strides).
        weight: (N, K), x's dtype: the ``nn.Linear`` layout.
        bias: (N,), x's dtype, or None.
        cu_seqlens: (B+1,), int32: rows ``>= cu_seqlens[-1]`` are dead.
        activation: ``"none"``, ``"gelu"`` (erf), ``"gelu_tanh"`` (tanh approximation) or
            ``"relu"``, applied in fp32 before the cast to x's dtype.
        zero_dead: rows ``>= cu_seqlens[-1]`` are written as exact zeros (default); with
            False a backend may leave them unwritten (no memory traffic for dead rows).

    Returns:
        (T, N) in x's dtype, newly allocated; accumulation in fp32; rows
        ``>= cu_seqlens[-1]`` exactly 0 (unspecified with ``zero_dead=False``).
    """
    if zero_dead:
        return dispatch("linear", x, weight, bias, cu_seqlens, activation)
    return dispatch("linear", x, weight, bias, cu_seqlens, activation, False)


def embed_layer_norm(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_w: torch.Tensor,
    pos_w: torch.Tensor,
    type_w: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """A tier's embeddings: ``LayerNorm(word_w[ids] + pos_w[pos] (+ type_w[types]))`` with fp32
    statistics, in one pass over each gathered row (word + position summed in the tables' dtype
    when there are token types, as the exact path does; the rest in fp32).

    Args:
        input_ids, position_ids: (N,) int64, packed; token_type_ids: (N,) int64 or None.
        word_w: (V, H), pos_w: (P, H), type_w: (Y, H) or None (a family without token types):
            the embedding tables, one float dtype.
        weight, bias: (H,): the embeddings' LayerNorm.  eps: its epsilon.
        cu_seqlens: optional (B+1,), int32: only rows ``< cu_seqlens[-1]`` (a count read on the
            device) are live; a backend may leave the others ungathered and unwritten (the
            sync-free tier's upper-bound shapes).

    Returns:
        (N, H) in the tables' dtype, newly allocated; rows ``>= cu_seqlens[-1]`` unspecified.
    """
    return dispatch("embed_layer_norm", input_ids, position_ids, token_type_ids, word_w, pos_w, type_w,
                    weight, bias, eps, cu_seqlens)


def encoder_layers(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    weights: list[torch.Tensor],
    num_heads: int,
    eps: float,
    activation: str = "gelu",
    first_tokens: bool = False,
) -> torch.Tensor:
    """Every encoder layer of a tier in one call, on packed tokens of exact shape (the CPU path).

    Per layer: fused QKV dense, attention within each sequence, output dense, add+LayerNorm,
    intermediate dense + activation, output dense, add+LayerNorm (BERT's post-LN layer; see
    :func:`cascade_rt.reference.encoder_layers_ref`). The native CPU kernel runs all of it in
    C++ with no return to Python between ops, and its dense layers read weights packed once:
    fp32 panels for few rows (:func:`cascade_rt.dense.panel_pack`), oneDNN's layout
    (:func:`cascade_rt.dense.prepack`, bias and activation fused) for more.

    Args:
        x: (T, hidden), float32/float16/bfloat16: embeddings of the packed tokens.
        cu_seqlens: (B+1,), int32.  max_seqlen: host upper bound of a row's length.
        weights: 12 tensors per layer (``w_qkv, b_qkv, w_o, b_o, ln1_w, ln1_b, w_i, b_i, w_out,
            b_out, ln2_w, ln2_b``; see the reference), x's dtype; dense weights plain (N, K),
            packed by :func:`cascade_rt.dense.prepack` or by :func:`cascade_rt.dense.panel_pack`.
        num_heads: attention heads.  eps: LayerNorm epsilon.
        activation: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"relu"`` or ``"none"``.

        first_tokens: return only each row's first token ([CLS]), ``(B, hidden)``: the last
            layer then runs for those tokens alone (its keys and values still from every
            token), which a classifier's exit head is all that reads. Every row must hold a
            token.

    Returns:
        (T, hidden) in x's dtype, newly allocated; token slots past ``cu_seqlens[-1]`` are
        unspecified. With ``first_tokens``: (B, hidden).
    """
    return dispatch("encoder_layers", x, cu_seqlens, int(max_seqlen), list(weights), int(num_heads),
                    float(eps), activation, bool(first_tokens))
