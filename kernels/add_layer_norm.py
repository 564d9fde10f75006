"""Residual add + LayerNorm in one pass: ``LayerNorm(x + residual) * weight + bias``.

Each program normalises ``BLOCK_N`` whole rows held in registers (the hidden size of a BERT
fits): one read of ``x`` and ``residual``, one write of the output, fp32 statistics.
Given ``cu_seqlens`` (the sync-free tier's upper-bound shapes), only the rows before the live
count ``cu_seqlens[-1]`` (read on the device) are read and written; programs past it return.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, layer_norm_rows, next_pow2

__all__ = ["add_layer_norm", "add_layer_norm_kernel", "MAX_HIDDEN"]

#: widest row the kernel keeps in registers.
MAX_HIDDEN = 16384


@triton.jit
def add_layer_norm_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, cu_ptr,
    N, H, B,
    stride_x, stride_r, stride_out,
    eps,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, HAS_LIVE: tl.constexpr,
):
    pid = tl.program_id(0)
    row0 = pid.to(tl.int64) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N).to(tl.int64)
    if HAS_LIVE:
        n_live = tl.minimum(tl.load(cu_ptr + B).to(tl.int64), N)
        if row0 >= n_live:
            return  # dead rows: nothing read, nothing written
        row_ok = rows < n_live
    else:
        row_ok = rows < N
    cols = tl.arange(0, BLOCK_H).to(tl.int64)
    col_ok = cols < H
    m = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + rows[:, None] * stride_r + cols[None, :], mask=m, other=0.0).to(tl.float32)
    h = x + r
    y = layer_norm_rows(h, m, cols, col_ok, w_ptr, b_ptr, H, eps)
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :],
             y.to(out_ptr.dtype.element_ty), mask=m)


def _config(N: int, H: int) -> dict:
    block_h = next_pow2(H)
    if INTERPRET:
        return dict(BLOCK_N=next_pow2(min(N, max(1, 8192 // block_h))), BLOCK_H=block_h)
    block_n = max(1, min(16, 4096 // block_h))
    return dict(BLOCK_N=block_n, BLOCK_H=block_h, num_warps=4 if block_h <= 1024 else 8)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    cu_seqlens: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    launch=None,
) -> torch.Tensor:
    """Triton add + LayerNorm; see :func:`cascade_rt.ops.add_layer_norm`.

    x, residual: (N, H), same float dtype (row stride free, unit column stride preferred).
    weight, bias: (H,).  cu_seqlens: optional (B+1,) int32: rows ``>= cu_seqlens[-1]`` are
    dead and left unwritten.  out: optional (N, H) in x's dtype with unit column stride, written
    in full.  launch: wraps the kernel for launching (``torch.library.wrap_triton``).
    Returns (N, H) in x's dtype (dead rows, with ``cu_seqlens``, as ``out`` held them).
    """
    N, H = x.shape
    if out is None:
        out = torch.empty((N, H), dtype=x.dtype, device=x.device)
    if N == 0 or H == 0:
        return out
    x, residual = _rows(x), _rows(residual)
    cfg = _config(N, H)
    kernel = add_layer_norm_kernel if launch is None else launch(add_layer_norm_kernel)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
    kernel[grid](
        x, residual, weight.contiguous(), bias.contiguous(), out,
        x if cu_seqlens is None else cu_seqlens.contiguous(),
        N, H, 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1,
        x.stride(0), residual.stride(0), out.stride(0), float(eps),
        HAS_LIVE=cu_seqlens is not None, **cfg,
    )
    return out
