"""Padding-free bidirectional attention over packed sequences (FlashAttention-style forward).

Grid: one program per (query block, sequence, head). A program streams its sequence's keys
and values in ``BLOCK_N`` tiles with an online softmax (running max and sum in fp32), so the
attention matrix is never stored. Programs of zero-length (dead) rows and of query blocks
past their sequence's end return at once. q, k and v are taken with their own strides, so
the strided views of one fused QKV projection ``(T, 3, H, D)`` need no copy. A second small
kernel zeroes the dead token slots past ``cu_seqlens[-1]`` (skipped with ``zero_dead=False``:
the sync-free tier never reads them).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["varlen_attention", "varlen_attention_kernel", "zero_tail_kernel", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 128


@triton.jit
def varlen_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_ptr,
    H, D, sm_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE_FP32: tl.constexpr,
):
    bh = tl.program_id(0)
    mb = tl.program_id(1)
    b = bh // H
    h = (bh % H).to(tl.int64)
    start = tl.load(cu_ptr + b).to(tl.int64)
    end = tl.load(cu_ptr + b + 1).to(tl.int64)
    L = end - start
    m0 = mb.to(tl.int64) * BLOCK_M
    if m0 >= L:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_ok = offs_m < L
    d_ok = offs_d < D
    q = tl.load(q_ptr + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    # the softmax scale and log2(e) as one factor on each score tile; exp2 below
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        cols = n0 + offs_n
        n_ok = cols < L
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + (start + cols)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + (start + cols)[:, None] * stride_vt + h * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        if IEEE_FP32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if IEEE_FP32:
            acc += tl.dot(p, v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + (start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def zero_tail_kernel(out_ptr, cu_ptr, B, T, W, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr):
    """Zero rows ``cu[B] <= t < T`` of a contiguous (T, W) tensor."""
    pid = tl.program_id(0)
    total = tl.load(cu_ptr + B).to(tl.int64)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    row_ok = (rows < T) & (rows >= total)
    for w0 in range(0, W, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W).to(tl.int64)
        m = row_ok[:, None] & (cols < W)[None, :]
        tl.store(out_ptr + rows[:, None] * W + cols[None, :],
                 tl.zeros((BLOCK_T, BLOCK_W), dtype=out_ptr.dtype.element_ty), mask=m)


def _config(D: int, max_seqlen: int, dtype: torch.dtype) -> dict:
    block_d = next_pow2(D, lo=16)
    if INTERPRET:
        blk = next_pow2(min(max(max_seqlen, 1), 64), lo=16)
        return dict(BLOCK_M=blk, BLOCK_N=blk, BLOCK_D=block_d)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=block_d, num_warps=4, num_stages=2)
    if block_d <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=block_d, num_warps=4, num_stages=3)


def _inner(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
    zero_dead: bool = True,
    out: torch.Tensor | None = None,
    launch=None,
) -> torch.Tensor:
    """Triton varlen attention; see :func:`cascade_rt.ops.varlen_attention`.

    q, k, v: (T, H, D), float32/float16/bfloat16, any token and head strides (unit last-dim
    stride avoids a copy).  cu_seqlens: (B+1,), int32.  max_seqlen: host upper bound of every
    sequence length.  zero_dead: zero the token slots past ``cu_seqlens[-1]`` (True) or leave
    them unwritten (False).  out: optional contiguous (T, H, D) in q's dtype.
    launch: wraps the kernels for launching (``torch.library.wrap_triton``).
    Returns (T, H, D) in q's dtype, zero past ``cu_seqlens[-1]`` with ``zero_dead``.
    """
    T, H, D = q.shape
    B = cu_seqlens.shape[0] - 1
    if out is None:
        out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    if T == 0 or H == 0 or D == 0:
        return out
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(D)
    q, k, v = _inner(q), _inner(k), _inner(v)
    cu = cu_seqlens.contiguous()
    wrap = (lambda kern: kern) if launch is None else launch
    cfg = _config(D, max_seqlen, q.dtype)
    if B > 0 and max_seqlen > 0:
        grid = (B * H, triton.cdiv(int(max_seqlen), cfg["BLOCK_M"]))
        wrap(varlen_attention_kernel)[grid](
            q, k, v, out, cu, H, D, float(softmax_scale),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1),
            IEEE_FP32=q.dtype == torch.float32, **cfg,
        )
    if not zero_dead:
        return out
    W = H * D
    block_w = next_pow2(min(W, 1024))
    block_t = next_pow2(min(T, max(1, (16384 if INTERPRET else 2048) // block_w)))
    wrap(zero_tail_kernel)[(triton.cdiv(T, block_t),)](
        out, cu, B, T, W, BLOCK_T=block_t, BLOCK_W=block_w,
    )
    return out
