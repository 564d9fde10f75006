"""Row compaction between cascade tiers, and the scatter of exiting rows' results.

``compact`` runs in two launches, with no host sync:

1. ``compact_rows_kernel`` (one program): a running prefix sum over the exit mask gives
   each kept row its new position and its new token offset; it writes ``row_index``,
   ``cu_seqlens_kept``, ``n_kept`` and, per input row, the destination of its first token
   (-1 for rows that leave).
2. ``compact_tokens_kernel`` (one program per ``BLOCK_T`` token slots): each input slot finds
   its row by binary search over ``cu_seqlens`` and, if the row is kept, copies itself to
   its destination; slots past the kept total are zeroed. Kept writes land below the kept
   total and zero writes at or above it, so programs never race.

Tokens of any dtype are moved as raw bits (viewed as an integer type of the same width).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["compact", "scatter_exits", "compact_rows_kernel", "compact_tokens_kernel",
           "scatter_exits_kernel"]

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@triton.jit
def compact_rows_kernel(
    exit_ptr, cu_ptr, row_index_ptr, cu_out_ptr, n_kept_ptr, dst_ptr,
    B,
    BLOCK_B: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_B).to(tl.int64)
    kept_rows = tl.zeros((), dtype=tl.int64)
    kept_toks = tl.zeros((), dtype=tl.int64)
    tl.store(cu_out_ptr, 0)
    # pass 1: kept rows, in order
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + offs
        ok = rows < B
        gone = tl.load(exit_ptr + rows, mask=ok, other=1)
        keep = (gone == 0) & ok
        start = tl.load(cu_ptr + rows, mask=ok, other=0).to(tl.int64)
        end = tl.load(cu_ptr + rows + 1, mask=ok, other=0).to(tl.int64)
        klen = tl.where(keep, end - start, 0)
        k64 = keep.to(tl.int64)
        rank = kept_rows + tl.cumsum(k64, axis=0) - 1
        tok_end = kept_toks + tl.cumsum(klen, axis=0)
        tl.store(row_index_ptr + rank, rows, mask=keep)
        tl.store(cu_out_ptr + rank + 1, tok_end.to(tl.int32), mask=keep)
        tl.store(dst_ptr + rows, tl.where(keep, tok_end - klen, -1), mask=ok)
        kept_rows += tl.sum(k64, axis=0)
        kept_toks += tl.sum(klen, axis=0)
    tl.store(dst_ptr + B, -1)  # the row id of dead token slots
    tl.store(n_kept_ptr, kept_rows.to(tl.int32))
    # pass 2: the positions past the kept count
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + offs
        tail = (rows < B) & (rows >= kept_rows)
        tl.store(row_index_ptr + rows, tl.full((BLOCK_B,), -1, tl.int64), mask=tail)
        tl.store(cu_out_ptr + rows + 1, tl.zeros((BLOCK_B,), tl.int64).to(tl.int32) + kept_toks.to(tl.int32),
                 mask=tail)


@triton.jit
def _row_of(cu_ptr, pos, B, SEARCH_STEPS: tl.constexpr):
    """Row of each token slot: #rows b with cu[b+1] <= pos (B for dead slots)."""
    lo = tl.zeros_like(pos)
    hi = tl.zeros_like(pos) + B
    for _ in tl.static_range(SEARCH_STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(cu_ptr + mid + 1, mask=active, other=0).to(tl.int64)
        right = v <= pos
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return lo


@triton.jit
def compact_tokens_kernel(
    tok_ptr, out_ptr, cu_ptr, cu_out_ptr, dst_ptr,
    T, K, B,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, SEARCH_STEPS: tl.constexpr,
):
    pid = tl.program_id(0)
    pos = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    pos_ok = pos < T
    k_ok = ks < K
    row = _row_of(cu_ptr, pos, B, SEARCH_STEPS)
    dst0 = tl.load(dst_ptr + row, mask=pos_ok, other=-1)
    start = tl.load(cu_ptr + row, mask=pos_ok & (row < B), other=0).to(tl.int64)
    kept = pos_ok & (dst0 >= 0)
    dst = dst0 + (pos - start)
    m = kept[:, None] & k_ok[None, :]
    vals = tl.load(tok_ptr + pos[:, None] * K + ks[None, :], mask=m)
    tl.store(out_ptr + dst[:, None] * K + ks[None, :], vals, mask=m)
    total = tl.load(cu_out_ptr + B).to(tl.int64)
    zm = (pos_ok & (pos >= total))[:, None] & k_ok[None, :]
    tl.store(out_ptr + pos[:, None] * K + ks[None, :],
             tl.zeros((BLOCK_T, BLOCK_K), dtype=out_ptr.dtype.element_ty), mask=zm)


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()])


def compact(
    exit_mask: torch.Tensor,
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    launch=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton row compaction; see :func:`cascade_rt.ops.compact`.

    exit_mask: (B,), bool.  tokens: (T, ...), any dtype of 1, 2, 4 or 8 bytes.
    cu_seqlens: (B+1,), int32.  out: optional contiguous (tokens_kept (T, ...) tokens' dtype,
    cu_seqlens_kept (B+1,) int32, row_index (B,) int64, n_kept () int32), written in full.
    launch: wraps the kernels for launching (``torch.library.wrap_triton``).
    Returns (tokens_kept, cu_seqlens_kept, row_index, n_kept).
    """
    B = exit_mask.shape[0]
    T = tokens.shape[0]
    dev = tokens.device
    if out is None:
        out = (torch.empty(tokens.shape, dtype=tokens.dtype, device=dev),
               torch.empty((B + 1,), dtype=torch.int32, device=dev),
               torch.empty((B,), dtype=torch.int64, device=dev),
               torch.empty((), dtype=torch.int32, device=dev))
    tok_out, cu_out, row_index, n_kept = out
    wrap = (lambda k: k) if launch is None else launch
    cu = cu_seqlens.contiguous()
    dst = torch.empty((B + 1,), dtype=torch.int64, device=dev)
    block_b = next_pow2(min(max(B, 1), 1024 if not INTERPRET else 4096), lo=16)
    wrap(compact_rows_kernel)[(1,)](
        exit_mask.contiguous().view(torch.uint8), cu, row_index, cu_out, n_kept, dst, B,
        BLOCK_B=block_b,
    )
    K = 1
    for s in tokens.shape[1:]:
        K *= int(s)
    if T == 0 or K == 0:
        return tok_out, cu_out, row_index, n_kept
    src = _as_bits(tokens.contiguous().reshape(T, K))
    dst_tok = _as_bits(tok_out.view(T, K))
    block_k = next_pow2(K)
    if INTERPRET:
        block_t = next_pow2(min(T, max(1, 16384 // block_k)))
        extra = {}
    else:
        block_t = max(1, min(256, 8192 // block_k))
        extra = dict(num_warps=4)
    wrap(compact_tokens_kernel)[(triton.cdiv(T, block_t),)](
        src, dst_tok, cu, cu_out, dst, T, K, B,
        BLOCK_T=block_t, BLOCK_K=block_k, SEARCH_STEPS=max(1, (B + 1).bit_length()), **extra,
    )
    return tok_out, cu_out, row_index, n_kept


@triton.jit
def scatter_exits_kernel(
    exit_ptr, ri_ptr, logits_ptr, conf_ptr,
    out_logits_ptr, out_conf_ptr, out_tier_ptr,
    B, C, N, tier,
    stride_l, stride_ol,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cls = tl.arange(0, BLOCK_C).to(tl.int64)
    ok = rows < B
    gone = tl.load(exit_ptr + rows, mask=ok, other=0) != 0
    dest = tl.load(ri_ptr + rows, mask=ok, other=-1)
    write = ok & gone & (dest >= 0) & (dest < N)
    m = write[:, None] & (cls < C)[None, :]
    lg = tl.load(logits_ptr + rows[:, None] * stride_l + cls[None, :], mask=m)
    tl.store(out_logits_ptr + dest[:, None] * stride_ol + cls[None, :], lg, mask=m)
    cf = tl.load(conf_ptr + rows, mask=write)
    tl.store(out_conf_ptr + dest, cf, mask=write)
    tl.store(out_tier_ptr + dest, tl.zeros((BLOCK_B,), tl.int64) + tier, mask=write)


def scatter_exits(
    exit_mask: torch.Tensor,
    row_index: torch.Tensor,
    logits: torch.Tensor,
    confidence: torch.Tensor,
    tier: int,
    out_logits: torch.Tensor,
    out_confidence: torch.Tensor,
    out_tier: torch.Tensor,
    launch=None,
) -> None:
    """Triton scatter of exiting rows, in place; see :func:`cascade_rt.ops.scatter_exits`.

    exit_mask: (B,), bool.  row_index: (B,), int64.  logits: (B, C) float32.
    confidence: (B,) float32.  out_logits: (N, C) float32 with unit column stride,
    out_confidence: (N,) float32, out_tier: (N,) int64, both contiguous; mutated in place.
    Rows whose row_index is -1 (or >= N) are never written.
    """
    B = exit_mask.shape[0]
    N, C = out_logits.shape
    if B == 0 or N == 0:
        return
    lg = logits if logits.stride(-1) == 1 else logits.contiguous()
    if INTERPRET:
        block_b, extra = next_pow2(min(B, 1024)), {}
    else:
        block_b, extra = 128, dict(num_warps=4)
    kernel = scatter_exits_kernel if launch is None else launch(scatter_exits_kernel)
    kernel[(triton.cdiv(B, block_b),)](
        exit_mask.contiguous().view(torch.uint8), row_index.contiguous(), lg, confidence.contiguous(),
        out_logits, out_confidence, out_tier,
        B, C, N, int(tier), lg.stride(0), out_logits.stride(0),
        BLOCK_B=block_b, BLOCK_C=next_pow2(C), **extra,
    )
