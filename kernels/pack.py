"""Padded rows to the packed layout and back, on the device.

``pack``: the row lengths (a sum over the right-padded mask) and their prefix sum are two
PyTorch ops; one program per (row, ``BLOCK_S`` columns) then copies the live tokens to their
packed slots, and slots past the live total are zeroed. ``unpack``: one program per (row,
``BLOCK_S`` columns) of the padded output reads its packed token or writes zero (also for a
slot past the ``T`` tokens there are, which malformed ``cu_seqlens`` would point to: never
read out of bounds). Values of
any dtype move as raw bits (an integer type of the same width).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["pack", "unpack", "pack_kernel", "unpack_kernel"]

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@triton.jit
def pack_kernel(src_ptr, out_ptr, cu_ptr, S, K, NT, B,
                BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = ks < K
    start = tl.load(cu_ptr + b).to(tl.int64)
    n = tl.load(cu_ptr + b + 1).to(tl.int64) - start
    m = (cols < n)[:, None] & k_ok[None, :]
    vals = tl.load(src_ptr + (b * S + cols)[:, None] * K + ks[None, :], mask=m)
    tl.store(out_ptr + (start + cols)[:, None] * K + ks[None, :], vals, mask=m)
    # this program also zeroes the same-numbered slots of the packed output past the total
    total = tl.load(cu_ptr + B).to(tl.int64)
    slots = b * S + cols
    zm = ((slots < NT) & (cols < S) & (slots >= total))[:, None] & k_ok[None, :]
    tl.store(out_ptr + slots[:, None] * K + ks[None, :],
             tl.zeros((BLOCK_S, BLOCK_K), dtype=out_ptr.dtype.element_ty), mask=zm)


@triton.jit
def unpack_kernel(tok_ptr, out_ptr, cu_ptr, L, K, T,
                  BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = ks < K
    start = tl.load(cu_ptr + b).to(tl.int64)
    n = tl.load(cu_ptr + b + 1).to(tl.int64) - start
    col_ok = cols < L
    live = ((cols < n) & (start + cols < T))[:, None] & k_ok[None, :]
    vals = tl.load(tok_ptr + (start + cols)[:, None] * K + ks[None, :], mask=live, other=0)
    tl.store(out_ptr + (b * L + cols)[:, None] * K + ks[None, :], vals,
             mask=col_ok[:, None] & k_ok[None, :])


def _cfg(width: int, K: int):
    block_k = next_pow2(K)
    budget = 16384 if INTERPRET else 4096
    block_s = next_pow2(min(max(width, 1), max(1, budget // block_k)))
    return block_s, block_k


def pack(
    padded: torch.Tensor,
    attention_mask: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    launch=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton pack; see :func:`cascade_rt.ops.pack`.

    padded: (B, S, ...), any dtype of 1, 2, 4 or 8 bytes.  attention_mask: (B, S), right padded.
    out: optional contiguous (tokens (B*S, ...), cu_seqlens (B+1,) int32); tokens written in full.
    Returns tokens (B*S, ...) live first then zeros, cu_seqlens (B+1,) int32.
    """
    B, S = attention_mask.shape
    rest = tuple(padded.shape[2:])
    dev = padded.device
    if out is None:
        out = (torch.empty((B * S,) + rest, dtype=padded.dtype, device=dev),
               torch.empty((B + 1,), dtype=torch.int32, device=dev))
    tokens, cu = out
    lens = attention_mask.to(torch.int64).sum(1)
    cu.zero_()
    cu[1:] = torch.cumsum(lens, 0).to(torch.int32)
    K = 1
    for s in rest:
        K *= int(s)
    if B * S == 0 or K == 0:
        return tokens, cu
    src = padded.contiguous().reshape(B * S, K)
    bits = _BITS[padded.element_size()]
    block_s, block_k = _cfg(S, K)
    kernel = pack_kernel if launch is None else launch(pack_kernel)
    kernel[(B, triton.cdiv(S, block_s))](
        src.view(bits), tokens.view(B * S, K).view(bits), cu, S, K, B * S, B,
        BLOCK_S=block_s, BLOCK_K=block_k,
    )
    return tokens, cu


def unpack(
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    out: torch.Tensor | None = None,
    launch=None,
) -> torch.Tensor:
    """Triton unpack; see :func:`cascade_rt.ops.unpack`.

    tokens: (T, ...), any dtype of 1, 2, 4 or 8 bytes.  cu_seqlens: (B+1,), int32.
    out: optional contiguous (B, max_seqlen, ...), written in full.
    Returns (B, max_seqlen, ...), zeros in the padding; rows longer than max_seqlen are cut.
    """
    B = cu_seqlens.shape[0] - 1
    L = int(max_seqlen)
    rest = tuple(tokens.shape[1:])
    if out is None:
        out = torch.empty((B, L) + rest, dtype=tokens.dtype, device=tokens.device)
    K = 1
    for s in rest:
        K *= int(s)
    if B * L == 0 or K == 0:
        return out
    if tokens.shape[0] == 0:
        out.zero_()
        return out
    bits = _BITS[tokens.element_size()]
    src = tokens.contiguous().reshape(tokens.shape[0], K)
    block_s, block_k = _cfg(L, K)
    kernel = unpack_kernel if launch is None else launch(unpack_kernel)
    kernel[(B, triton.cdiv(L, block_s))](
        src.view(bits), out.view(B * L, K).view(bits), cu_seqlens.contiguous(), L, K, src.shape[0],
        BLOCK_S=block_s, BLOCK_K=block_k,
    )
    return out
