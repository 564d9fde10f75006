"""``act(x @ W^T + b)`` over the live rows of a packed batch; dead rows zeroed or skipped.

In the sync-free cascade a tier runs on upper-bound shapes: ``T`` token slots of which only
``n_live = cu_seqlens[-1]`` are live, a count that stays on the device. ``F.linear`` would
multiply all ``T`` rows. Here every program reads ``n_live`` itself: a program whose row
block starts at or past it does no matmul work, so the GEMM's cost follows the live rows.
With ``zero_dead`` (the default) the dead rows are written as zeros (the same zeros as varlen
attention's dead slots); without it they are not written at all (no memory traffic: the
sync-free tier never reads them).

Tiles: ``BLOCK_M x BLOCK_N`` of the output per program, ``BLOCK_K`` of the reduction per
step, fp32 accumulation. Programs are ordered in groups of ``GROUP_M`` row blocks that sweep
the column blocks together, so a group's ``x`` tiles and ``W`` tiles stay in L2. fp32 inputs
use ``tl.dot(..., input_precision="ieee")`` (as ``varlen_attention`` does): the result keeps
fp32 accuracy, not TF32's 10-bit mantissa, at the cost of tensor-core speed; fp16/bf16 use
tensor cores with fp32 accumulation, on the largest tile of :data:`TENSOR_CORE_TILES` whose
grid still fills every SM once (small outputs get smaller tiles rather than a partial wave).

Where every row is live the tier does not come here: its exact-shape path runs ``F.linear``
(cuBLAS). The sync-free path takes this kernel from tier 0 on, because there tier 0 has dead
slots too (the padding of the ``B x S`` batch, packed to the front on the device).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["linear", "linear_kernel", "ACTIVATIONS", "TENSOR_CORE_TILES", "num_sms"]

#: activations fused into the epilogue: identity, GELU (erf), GELU (tanh approximation), ReLU.
ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu")


@triton.jit
def _apply_activation(y, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        # tanh(z) = 1 - 2 / (exp(2z) + 1); 2z capped at 80 (tanh is 1 in fp32 long before),
        # so exp never overflows
        y = 0.5 * y * (2.0 - 2.0 / (tl.exp(tl.minimum(2.0 * z, 80.0)) + 1.0))
    elif ACTIVATION == "relu":
        y = tl.maximum(y, 0.0)
    return y


@triton.jit
def linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, cu_ptr,
    M, N, K, B,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE_FP32: tl.constexpr, ZERO_DEAD: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row blocks walk the column blocks together (L2 reuse of W)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    n_live = tl.minimum(tl.load(cu_ptr + B).to(tl.int64), M)
    m0 = pid_m.to(tl.int64) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < M
    col_ok = cols < N
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
    out_mask = row_ok[:, None] & col_ok[None, :]
    if m0 >= n_live:
        # a dead row block: no loads, no matmul; zeros only when asked for
        if ZERO_DEAD:
            tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=out_ptr.dtype.element_ty),
                     mask=out_mask)
        return

    live = rows < n_live
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk
    w_ptrs = w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn  # W^T tile (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=live[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = ks < K - k0
            a = tl.load(x_ptrs, mask=live[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    acc = _apply_activation(acc, ACTIVATION)
    if ZERO_DEAD:
        acc = tl.where(live[:, None], acc, 0.0)  # dead rows of a partly live block
    else:
        out_mask = live[:, None] & col_ok[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


#: fp16/bf16 tiles, largest first: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). 128x128
#: with 64-deep K steps and a 4-stage pipeline (4 x 32 KiB of shared memory, within an A100's
#: 163 KiB too) is the H100 GEMM tile; the smaller ones keep the grid at one wave or more when
#: the output is small (BERT-base at a few thousand tokens gives 6 column blocks of 128).
TENSOR_CORE_TILES = (
    (128, 128, 64, 8, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
)
#: SMs assumed when the device is not a CUDA device (the compile-only check): an H100 SXM's.
DEFAULT_SMS = 132
_SMS: dict[int, int] = {}


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached; :data:`DEFAULT_SMS` off CUDA)."""
    if device.type != "cuda":
        return DEFAULT_SMS
    idx = device.index if device.index is not None else torch.cuda.current_device()
    n = _SMS.get(idx)
    if n is None:
        n = _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return n


def _config(M: int, N: int, K: int, dtype: torch.dtype, sms: int = DEFAULT_SMS) -> dict:
    """Tiles by shape: the largest tensor-core tile whose grid still fills every SM once
    (``M`` is the upper bound of rows: dead row blocks return at once, so the count is
    optimistic in the sync-free path), else the smallest."""
    if INTERPRET:
        # few, large program instances: the interpreter pays per instance
        return dict(BLOCK_M=next_pow2(min(M, 64), lo=16), BLOCK_N=next_pow2(min(N, 128), lo=16),
                    BLOCK_K=next_pow2(min(K, 128), lo=16), GROUP_M=1)
    if dtype == torch.float32:
        # IEEE fp32 runs on the FMA units, not tensor cores: smaller tiles, fewer registers
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    for bm, bn, bk, warps, stages in TENSOR_CORE_TILES:
        if triton.cdiv(M, bm) * triton.cdiv(N, bn) >= sms:
            break
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    activation: str = "none",
    zero_dead: bool = True,
    out: torch.Tensor | None = None,
    launch=None,
) -> torch.Tensor:
    """Triton live-rows linear; see :func:`cascade_rt.ops.linear`.

    x: (T, K), float32/float16/bfloat16, any strides.  weight: (N, K) (``nn.Linear``
    layout), x's dtype, any strides.  bias: (N,) or None.  cu_seqlens: (B+1,), int32; rows
    ``>= cu_seqlens[-1]`` are dead.  activation: one of :data:`ACTIVATIONS`.
    zero_dead: write the dead rows as zeros (True) or leave them unwritten (False).
    out: optional (T, N) in x's dtype with unit column stride, written in full.
    launch: wraps the kernel for launching (``torch.library.wrap_triton``).
    Returns (T, N) in x's dtype; dead rows zero, or as ``out`` held them without ``zero_dead``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
    T, K = x.shape
    N = weight.shape[0]
    if out is None:
        out = torch.empty((T, N), dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    cu = cu_seqlens.contiguous()
    B = cu.shape[0] - 1
    cfg = _config(T, N, K, x.dtype, num_sms(x.device))
    kernel = linear_kernel if launch is None else launch(linear_kernel)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    kernel[grid](
        x, weight, x if bias is None else bias.contiguous(), out, cu,
        T, N, K, B,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0),
        ACTIVATION=activation, HAS_BIAS=bias is not None, EVEN_K=K % cfg["BLOCK_K"] == 0,
        IEEE_FP32=x.dtype == torch.float32, ZERO_DEAD=bool(zero_dead), **cfg,
    )
    return out
