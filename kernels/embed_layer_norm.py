"""Embeddings + LayerNorm in one pass: ``LayerNorm(word[ids] + position[pos] (+ type[types]))``.

Each program gathers ``BLOCK_N`` rows of the word, position and (optional) token-type tables,
sums them (word + position in the tables' dtype when there are token types, as the exact path
does, the rest in fp32) and normalises them in registers with fp32 statistics: one read of each gathered row, one write
of the output. Given ``cu_seqlens`` (the sync-free tier's upper-bound shapes), only the rows
before the live count ``cu_seqlens[-1]`` (read on the device) are gathered and written;
programs past it return, so dead slots cost no memory traffic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, layer_norm_rows, next_pow2

__all__ = ["embed_layer_norm", "embed_layer_norm_kernel", "MAX_HIDDEN"]

#: widest row the kernel keeps in registers.
MAX_HIDDEN = 16384


@triton.jit
def embed_layer_norm_kernel(
    ids_ptr, pos_ptr, types_ptr, word_ptr, posw_ptr, typew_ptr, w_ptr, b_ptr, out_ptr, cu_ptr,
    N, H, B,
    stride_word, stride_pos, stride_type, stride_out,
    eps,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, HAS_TYPES: tl.constexpr, HAS_LIVE: tl.constexpr,
):
    pid = tl.program_id(0)
    row0 = pid.to(tl.int64) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N).to(tl.int64)
    if HAS_LIVE:
        n_live = tl.minimum(tl.load(cu_ptr + B).to(tl.int64), N)
        if row0 >= n_live:
            return  # dead slots: nothing gathered, nothing written
        row_ok = rows < n_live
    else:
        row_ok = rows < N
    cols = tl.arange(0, BLOCK_H).to(tl.int64)
    col_ok = cols < H
    m = row_ok[:, None] & col_ok[None, :]
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    word = tl.load(word_ptr + ids[:, None] * stride_word + cols[None, :], mask=m, other=0.0)
    posv = tl.load(posw_ptr + pos[:, None] * stride_pos + cols[None, :], mask=m, other=0.0)
    if HAS_TYPES:
        # the exact path's arithmetic: word + position in the tables' dtype, then + type in fp32
        types = tl.load(types_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        h = (word + posv).to(tl.float32)
        h += tl.load(typew_ptr + types[:, None] * stride_type + cols[None, :], mask=m,
                     other=0.0).to(tl.float32)
    else:
        h = word.to(tl.float32) + posv.to(tl.float32)
    y = layer_norm_rows(h, m, cols, col_ok, w_ptr, b_ptr, H, eps)
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


def _config(N: int, H: int) -> dict:
    block_h = next_pow2(H)
    if INTERPRET:
        return dict(BLOCK_N=next_pow2(min(N, max(1, 8192 // block_h))), BLOCK_H=block_h)
    return dict(BLOCK_N=max(1, min(16, 4096 // block_h)), BLOCK_H=block_h,
                num_warps=4 if block_h <= 1024 else 8)


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
    launch=None,
) -> torch.Tensor:
    """Triton embeddings + LayerNorm; see :func:`cascade_rt.ops.embed_layer_norm`.

    input_ids, position_ids, token_type_ids: (N,) int.  word_w: (V, H), pos_w: (P, H),
    type_w: (Y, H) or None (no token types), all one float dtype.  weight, bias: (H,).
    cu_seqlens: (B+1,) int32 or None: rows ``>= cu_seqlens[-1]`` are left unwritten.
    Returns (N, H) in the tables' dtype, newly allocated.
    """
    N, H = input_ids.shape[0], word_w.shape[1]
    out = torch.empty((N, H), dtype=word_w.dtype, device=word_w.device)
    if N == 0:
        return out
    has_types = type_w is not None and token_type_ids is not None
    cfg = _config(N, H)
    kernel = embed_layer_norm_kernel if launch is None else launch(embed_layer_norm_kernel)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
    ids = input_ids.contiguous()
    pos = position_ids.contiguous()
    types = token_type_ids.contiguous() if has_types else ids
    tw = type_w if has_types else word_w
    word = word_w if word_w.stride(-1) == 1 else word_w.contiguous()
    posw = pos_w if pos_w.stride(-1) == 1 else pos_w.contiguous()
    tw = tw if tw.stride(-1) == 1 else tw.contiguous()
    cu = cu_seqlens if cu_seqlens is not None else ids
    kernel[grid](
        ids, pos, types, word, posw, tw, weight.contiguous(), bias.contiguous(), out, cu,
        N, H, 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1,
        word.stride(0), posw.stride(0), tw.stride(0), out.stride(0), float(eps),
        HAS_TYPES=has_types, HAS_LIVE=cu_seqlens is not None, **cfg,
    )
    return out
