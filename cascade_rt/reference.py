"""Plain-PyTorch reference of every cascade_rt op.

Each ``*_ref`` function here is the oracle the fast paths (Triton kernels, the native
extension) are tested against, and the fallback on devices no fast path supports. They
compute in fp32 whatever the input dtype and cast back at the end.

Shared conventions (the "packed layout"):

* ``tokens``: ``(T, ...)``: per-token data of all rows packed back to back, no padding.
  ``T`` is an *upper bound*: tokens at positions ``>= cu_seqlens[-1]`` are dead (their
  value is unspecified on input and zero on output of the ops that produce them).
* ``cu_seqlens``: ``(B + 1,), int32``: row ``b`` owns tokens ``cu_seqlens[b]:cu_seqlens[b+1]``.
  Rows past the live row count are zero-length (trailing entries repeat the total).
* ``row_index``: ``(B,), int64``: the original input row of each packed row, ``-1`` for a dead
  (padding) row.

None of the references synchronise with the host except ``varlen_attention_ref``, which
walks the sequences on the host (it is an oracle, not a fast path).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "varlen_attention_ref",
    "first_token_attention_ref",
    "add_layer_norm_ref",
    "exit_head_ref",
    "compact_ref",
    "scatter_exits_ref",
    "pack_ref",
    "unpack_ref",
    "linear_ref",
    "encoder_layers_ref",
    "ENCODER_WEIGHTS_PER_LAYER",
    "LINEAR_ACTIVATIONS",
    "EXIT_HEAD_ACTIVATIONS",
    "token_row_ids_ref",
]


def token_row_ids_ref(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Row id of every token slot ``0..num_tokens-1``; ``B`` (one past the last row) for dead slots.

    cu_seqlens: (B+1,), int32.  Returns (num_tokens,), int64.  No host sync.
    """
    pos = torch.arange(num_tokens, device=cu_seqlens.device, dtype=torch.int64)
    cu = cu_seqlens.to(torch.int64)
    # row b holds positions cu[b] <= p < cu[b+1]; searchsorted over cu[1:] with right=True
    # gives that b; dead slots (p >= cu[-1]) land at B.
    return torch.searchsorted(cu[1:].contiguous(), pos, right=True)


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
    zero_dead: bool = True,
) -> torch.Tensor:
    """Bidirectional attention inside each packed sequence.

    q, k, v: (T, H, D), same float dtype (computed in fp32, or fp64 for fp64 input).
    cu_seqlens: (B+1,), int32.  max_seqlen: upper
    bound of any sequence length (unused here; kept for the shared signature).
    zero_dead: accepted for the op's signature; dead slots are always zero here.
    Returns (T, H, D) in q's dtype; dead token slots are zero.
    """
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        qi = q[s:e].transpose(0, 1).to(acc)  # (H, L, D)
        ki = k[s:e].transpose(0, 1).to(acc)
        vi = v[s:e].transpose(0, 1).to(acc)
        scores = torch.matmul(qi, ki.transpose(-1, -2)) * softmax_scale
        probs = torch.softmax(scores, dim=-1)
        out[s:e] = torch.matmul(probs, vi).transpose(0, 1)
    return out.to(q.dtype)


def first_token_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention of each sequence's first token over all of that sequence's tokens: row ``b``
    of :func:`varlen_attention_ref`'s output at token ``cu_seqlens[b]``, computed for that token
    only (what a classifier's last layer needs).

    q: (B, H, D), the first tokens' queries.  k, v: (T, H, D), packed, q's dtype.
    cu_seqlens: (B+1,), int32.  max_seqlen: unused here (the op's signature).
    Returns (B, H, D) in q's dtype, computed in fp32 (fp64 for fp64 input); an empty
    sequence gives zeros. No host sync (a softmax per row through scatter and index adds).
    """
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    acc = torch.promote_types(q.dtype, torch.float32)
    B, H, D = q.shape
    T = k.shape[0]
    if B == 0 or T == 0:
        return q.new_zeros((B, H, D))
    row = token_row_ids_ref(cu_seqlens, T)  # B for dead slots
    live = row < B
    row = row.clamp(max=B - 1)
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    scores = (kf * qf[row]).sum(-1) * softmax_scale  # (T, H)
    scores = scores.masked_fill(~live[:, None], -math.inf)
    top = torch.full((B, H), -math.inf, dtype=acc, device=q.device)
    top = top.scatter_reduce(0, row[:, None].expand(T, H), scores, "amax")
    p = torch.exp(scores - top[row].nan_to_num(neginf=0.0)).masked_fill(~live[:, None], 0.0)
    den = torch.zeros((B, H), dtype=acc, device=q.device).index_add_(0, row, p)
    weighted = torch.where(live[:, None, None], p[..., None] * vf, 0.0)  # dead slots may hold NaN
    out = torch.zeros((B, H, D), dtype=acc, device=q.device).index_add_(0, row, weighted)
    out = out / den.clamp(min=torch.finfo(acc).tiny)[..., None]
    return out.to(q.dtype)


def add_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """``LayerNorm(x + residual)`` over the last dim with fp32 statistics.

    x, residual: (N, H), same dtype.  weight, bias: (H,).  Returns (N, H) in x's dtype.
    cu_seqlens: optional (B+1,) int32 marking rows ``>= cu_seqlens[-1]`` dead; the
    reference computes every row anyway (dead rows are unspecified by the op).
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    h = x.to(acc) + residual.to(acc)
    y = F.layer_norm(h, (h.shape[-1],), weight.to(acc), bias.to(acc), eps)
    return y.to(x.dtype)


def embed_layer_norm_ref(
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
    """``LayerNorm(word_w[ids] + pos_w[pos] (+ type_w[types]))`` with fp32 statistics; with token
    types, word + position is summed in the tables' dtype and the type added in fp32 (the exact
    path's arithmetic), else both in fp32.

    input_ids, position_ids, token_type_ids: (N,) int (token types None: no token-type table).
    word_w: (V, H), pos_w: (P, H), type_w: (Y, H) or None.  weight, bias: (H,).
    cu_seqlens: optional (B+1,) int32 marking rows ``>= cu_seqlens[-1]`` dead; the reference
    computes every row anyway (dead rows are unspecified by the op).
    Returns (N, H) in the tables' dtype.
    """
    acc = torch.promote_types(word_w.dtype, torch.float32)
    if type_w is not None and token_type_ids is not None:
        # as the exact path: word + position in the tables' dtype, then + type in fp32
        h = (word_w[input_ids] + pos_w[position_ids]).to(acc) + type_w[token_type_ids].to(acc)
    else:
        h = word_w[input_ids].to(acc) + pos_w[position_ids].to(acc)
    y = F.layer_norm(h, (h.shape[-1],), weight.to(acc), bias.to(acc), eps)
    return y.to(word_w.dtype)


#: activations the exit head applies after its first dense layer: tanh (BERT pooler, RoBERTa /
#: XLM-R head), ReLU (DistilBERT ``pre_classifier``), GELU erf (ELECTRA), GELU tanh approximation.
EXIT_HEAD_ACTIVATIONS = ("tanh", "relu", "gelu", "gelu_tanh")


def _exit_head_activation(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "tanh":
        return torch.tanh(x)
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"exit_head activation {activation!r} is not one of {EXIT_HEAD_ACTIVATIONS}")


def exit_head_ref(
    cls_hidden: torch.Tensor,
    pooler_w: torch.Tensor,
    pooler_b: torch.Tensor,
    cls_w: torch.Tensor,
    cls_b: torch.Tensor,
    threshold: float,
    activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head dense layer + activation, classifier, softmax, max probability and threshold test.

    cls_hidden: (B, H).  pooler_w: (H, H), pooler_b: (H,): the head's first dense layer (BERT
    pooler, RoBERTa ``classifier.dense``, DistilBERT ``pre_classifier``).  cls_w: (C, H),
    cls_b: (C,): classifier (either weight may come panel-packed, :func:`cascade_rt.dense.panel_pack`).
    threshold: confidence needed to exit, compared in fp32.
    activation: one of :data:`EXIT_HEAD_ACTIVATIONS`, applied in fp32 after the dense layer.
    Returns logits (B, C) float32, confidence (B,) float32, exit_mask (B,) bool
    (``confidence >= threshold``).
    """
    pooler_w, cls_w = _plain_weight(pooler_w, pooler_b), _plain_weight(cls_w, cls_b)
    pooled = _exit_head_activation(F.linear(cls_hidden.float(), pooler_w.float(), pooler_b.float()),
                                   activation)
    logits = F.linear(pooled, cls_w.float(), cls_b.float())
    confidence = torch.softmax(logits, dim=-1).amax(dim=-1)
    # a Python scalar against the fp32 tensor compares in fp32, with no host-to-device copy
    # (which would synchronise on CUDA and break graph capture)
    exit_mask = confidence >= float(threshold)
    return logits, confidence, exit_mask


def compact_ref(
    exit_mask: torch.Tensor,
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the rows that exit and keep the others' tokens packed, in order.

    exit_mask: (B,), bool: True for rows that leave.  tokens: (T, ...), any dtype: per-token
    data (token ids, token types, hidden states).  cu_seqlens: (B+1,), int32.

    Returns, all sized by the input (upper bounds), with no host sync:
      tokens_kept: (T, ...): the surviving rows' tokens first, zeros after.
      cu_seqlens_kept: (B+1,), int32: kept rows first, then zero-length rows.
      row_index: (B,), int64: the input row of each kept row, -1 past the kept count.
      n_kept: (), int32: number of kept rows.
    """
    B = exit_mask.shape[0]
    T = tokens.shape[0]
    dev = tokens.device
    keep = ~exit_mask.to(torch.bool)
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]

    rank = torch.cumsum(keep.to(torch.int64), 0) - 1
    dest = torch.where(keep, rank, torch.full_like(rank, B))  # B = scratch slot
    row_index = torch.full((B + 1,), -1, dtype=torch.int64, device=dev)
    row_index.index_copy_(0, dest, torch.arange(B, device=dev, dtype=torch.int64))
    new_lens = torch.zeros(B + 1, dtype=torch.int64, device=dev)
    new_lens.index_copy_(0, dest, lens)
    cu_kept = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu_kept[1:] = torch.cumsum(new_lens[:B], 0).to(torch.int32)

    row_of_tok = token_row_ids_ref(cu_seqlens, T)  # B for dead slots
    keep_ext = torch.cat([keep, keep.new_zeros(1)])
    keep_tok = keep_ext[row_of_tok]
    tok_rank = torch.cumsum(keep_tok.to(torch.int64), 0) - 1
    tok_dest = torch.where(keep_tok, tok_rank, torch.full_like(tok_rank, T))
    out = torch.zeros((T + 1,) + tuple(tokens.shape[1:]), dtype=tokens.dtype, device=dev)
    out.index_copy_(0, tok_dest, tokens)
    n_kept = keep.sum().to(torch.int32)
    return out[:T], cu_kept, row_index[:B], n_kept


def scatter_exits_ref(
    exit_mask: torch.Tensor,
    row_index: torch.Tensor,
    logits: torch.Tensor,
    confidence: torch.Tensor,
    tier: int,
    out_logits: torch.Tensor,
    out_confidence: torch.Tensor,
    out_tier: torch.Tensor,
) -> None:
    """Write the exiting rows' results to their input rows, in place.

    exit_mask: (B,), bool.  row_index: (B,), int64 (-1: dead row, never written).
    logits: (B, C) float32.  confidence: (B,) float32.  tier: this tier's index.
    out_logits: (N, C) float32, out_confidence: (N,) float32, out_tier: (N,) int64: the
    cascade's outputs in input order (N >= every valid row_index), mutated in place.
    """
    N = out_logits.shape[0]
    write = exit_mask.to(torch.bool) & (row_index >= 0)
    dest = torch.where(write, row_index, torch.full_like(row_index, N))
    ext_l = torch.cat([out_logits, out_logits.new_zeros((1,) + tuple(out_logits.shape[1:]))])
    ext_c = torch.cat([out_confidence, out_confidence.new_zeros(1)])
    ext_t = torch.cat([out_tier, out_tier.new_zeros(1)])
    ext_l.index_copy_(0, dest, logits.to(out_logits.dtype))
    ext_c.index_copy_(0, dest, confidence.to(out_confidence.dtype))
    ext_t.index_copy_(0, dest, torch.full_like(dest, tier).to(out_tier.dtype))
    out_logits.copy_(ext_l[:N])
    out_confidence.copy_(ext_c[:N])
    out_tier.copy_(ext_t[:N])


def pack_ref(
    padded: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(B, S, ...)`` rows with a right-padding mask to the packed layout.

    padded: (B, S, ...), any dtype.  attention_mask: (B, S), ones then zeros in every row.
    Returns tokens (B*S, ...) (live tokens first, zeros after) and cu_seqlens (B+1,) int32.
    No host sync.
    """
    B, S = attention_mask.shape
    dev = padded.device
    lens = attention_mask.to(torch.int64).sum(1)
    cu = torch.zeros(B + 1, dtype=torch.int64, device=dev)
    cu[1:] = torch.cumsum(lens, 0)
    col = torch.arange(S, device=dev, dtype=torch.int64)
    live = col[None, :] < lens[:, None]
    dest = torch.where(live, cu[:-1, None] + col[None, :], torch.full_like(live, B * S, dtype=torch.int64))
    out = torch.zeros((B * S + 1,) + tuple(padded.shape[2:]), dtype=padded.dtype, device=dev)
    out.index_copy_(0, dest.reshape(-1), padded.reshape((B * S,) + tuple(padded.shape[2:])))
    return out[: B * S], cu.to(torch.int32)


def unpack_ref(tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Packed ``(T, ...)`` back to padded ``(B, max_seqlen, ...)``, zeros in the padding.

    Rows longer than ``max_seqlen`` are cut; a slot past the ``T`` tokens (malformed
    ``cu_seqlens``) reads as zero.  No host sync.
    """
    B = cu_seqlens.shape[0] - 1
    dev = tokens.device
    cu = cu_seqlens.to(torch.int64)
    col = torch.arange(max_seqlen, device=dev, dtype=torch.int64)
    lens = cu[1:] - cu[:-1]
    live = col[None, :] < lens[:, None]
    src = torch.where(live, cu[:-1, None] + col[None, :], torch.zeros_like(col)[None, :])
    live = live & (src < tokens.shape[0])
    src = src.clamp(max=max(tokens.shape[0] - 1, 0))
    if tokens.shape[0] == 0:
        return tokens.new_zeros((B, max_seqlen) + tuple(tokens.shape[1:]))
    out = tokens[src.reshape(-1)].reshape((B, max_seqlen) + tuple(tokens.shape[1:]))
    mask = live.reshape((B, max_seqlen) + (1,) * (tokens.dim() - 1))
    return torch.where(mask, out, torch.zeros_like(out))


#: activations :func:`linear_ref` can fuse: identity, GELU (erf), GELU (tanh approximation), ReLU.
LINEAR_ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu")


def _linear_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":
        return y
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if activation == "relu":
        return F.relu(y)
    raise ValueError(f"activation {activation!r} is not one of {LINEAR_ACTIVATIONS}")


def linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    activation: str = "none",
    zero_dead: bool = True,
) -> torch.Tensor:
    """``act(x @ weight^T + bias)`` on the live rows, zeros on the dead ones.

    x: (T, K).  weight: (N, K) (``nn.Linear`` layout).  bias: (N,) or None.
    cu_seqlens: (B+1,), int32: rows ``>= cu_seqlens[-1]`` are dead.  activation: one of
    :data:`LINEAR_ACTIVATIONS`.  zero_dead: accepted for the op's signature; the reference
    always writes the dead rows as zeros (allowed either way). Computed in fp32 (fp64 for fp64 input) and cast back.
    Returns (T, N) in x's dtype. No host sync (the live count is compared on the device).
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    y = F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    y = _linear_activation(y, activation)
    dead = (torch.arange(x.shape[0], device=x.device) >= cu_seqlens[-1])[:, None]
    # in place unless autograd may need y (relu's backward reads its output)
    y = y.masked_fill(dead, 0) if y.requires_grad else y.masked_fill_(dead, 0)
    return y.to(x.dtype)


#: tensors per layer in :func:`encoder_layers_ref`'s ``weights`` list, in this order
ENCODER_WEIGHTS_PER_LAYER = 12


def _panel_to_dense(w: torch.Tensor, out_features: int) -> torch.Tensor:
    """(P, K, width) panels (zero past N; :func:`cascade_rt.dense.panel_pack`) -> (N, K)."""
    P, K, width = w.shape
    if not (P - 1) * width < out_features <= P * width:
        raise ValueError(f"{out_features} output features do not fit {P} panels of {width}")
    return w.permute(0, 2, 1).reshape(P * width, K)[:out_features]


def _plain_weight(w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A dense weight read back to (N, K) from oneDNN's layout or from panels (N: the bias's)."""
    if w.is_mkldnn:
        return w.to_dense()
    if w.dim() == 3:
        if bias is None:
            raise ValueError("a panel-packed weight needs its bias to know the output features")
        return _panel_to_dense(w, bias.shape[0])
    return w


def encoder_layers_ref(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    weights: list[torch.Tensor],
    num_heads: int,
    eps: float,
    activation: str,
    first_tokens: bool = False,
) -> torch.Tensor:
    """Every encoder layer of a tier, one after another, on packed tokens (post-LayerNorm BERT).

    Per layer: ``qkv = x Wqkv^T + bqkv`` split into heads, attention within each sequence
    (:func:`varlen_attention_ref`), ``x = LN1(ctx Wo^T + bo + x)``,
    ``x = LN2(act(x Wi^T + bi) Wout^T + bout + x)``.

    x: (T, hidden), float.  cu_seqlens: (B+1,), int32.  max_seqlen: host upper bound of a row.
    weights: 12 tensors per layer: ``w_qkv (3*hidden, hidden), b_qkv (3*hidden,), w_o (hidden,
    hidden), b_o, ln1_w, ln1_b (hidden,), w_i (inter, hidden), b_i (inter,), w_out (hidden,
    inter), b_out, ln2_w, ln2_b (hidden,)``, x's dtype; a dense weight may be given in oneDNN's
    packed layout (:func:`cascade_rt.dense.prepack`) or in panels
    (:func:`cascade_rt.dense.panel_pack`), read back to (N, K) here.
    num_heads: attention heads (``hidden % num_heads == 0``).  eps: both LayerNorms' epsilon.
    activation: the intermediate activation, one of :data:`LINEAR_ACTIVATIONS`.
    Returns (T, hidden) in x's dtype; token slots past ``cu_seqlens[-1]`` are unspecified.
    first_tokens: return each row's first token only, (B, hidden): the full result at
    ``cu_seqlens[:-1]`` (every row must hold a token).
    """
    if len(weights) % ENCODER_WEIGHTS_PER_LAYER:
        raise ValueError(f"encoder_layers: weights must hold {ENCODER_WEIGHTS_PER_LAYER} tensors per layer, "
                         f"got {len(weights)}")
    if first_tokens:
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        if bool((lens <= 0).any()):
            row = int(torch.nonzero(lens <= 0)[0, 0])
            raise ValueError(f"encoder_layers: with first_tokens every row needs a token, row {row} is empty")
        full = encoder_layers_ref(x, cu_seqlens, max_seqlen, weights, num_heads, eps, activation)
        return full.index_select(0, cu_seqlens[:-1].to(torch.int64))
    T, hidden = x.shape
    D = hidden // num_heads
    for i in range(0, len(weights), ENCODER_WEIGHTS_PER_LAYER):
        w = list(weights[i:i + ENCODER_WEIGHTS_PER_LAYER])
        for j in (0, 2, 6, 8):  # dense weights, each followed by its bias
            w[j] = _plain_weight(w[j], w[j + 1])
        w_qkv, b_qkv, w_o, b_o, ln1_w, ln1_b, w_i, b_i, w_out, b_out, ln2_w, ln2_b = w
        qkv = linear_ref(x, w_qkv, b_qkv, cu_seqlens).view(T, 3, num_heads, D)
        ctx = varlen_attention_ref(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, max_seqlen,
                                   1.0 / math.sqrt(D))
        x = add_layer_norm_ref(linear_ref(ctx.reshape(T, hidden), w_o, b_o, cu_seqlens), x, ln1_w, ln1_b, eps)
        h = linear_ref(x, w_i, b_i, cu_seqlens, activation)
        x = add_layer_norm_ref(linear_ref(h, w_out, b_out, cu_seqlens), x, ln2_w, ln2_b, eps)
    return x
