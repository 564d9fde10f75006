"""Exit head: head dense + activation (tanh, relu, gelu, gelu_tanh), classifier, softmax,
max probability, threshold.

Two steps, as the CUDA exit head does: the head's dense layer is one fp32 GEMM over all rows
(cuBLAS through ``torch.addmm``: every program re-reading the H x H matrix was the slow part of
a one-kernel head), then one Triton kernel per block of rows applies the activation as it
loads the pre-activations, computes the logits one ``BLOCK_C`` chunk of labels at a time with
``tl.dot`` (fp32, IEEE), stores them, and keeps a running max and sum of exponentials across
chunks, so any number of labels fits in registers; the confidence (the largest softmax
probability) is ``1 / sum(exp(logit - max))``. All arithmetic is fp32 whatever the input dtype
(the reference computes in fp32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["exit_head", "exit_head_kernel", "MAX_CLASSES", "ACTIVATIONS"]

#: the head activations the kernel fuses (BERT/RoBERTa tanh, DistilBERT relu, ELECTRA gelu).
ACTIVATIONS = ("tanh", "relu", "gelu", "gelu_tanh")

#: the classifier widths tested; the kernel loops over labels in chunks, so this is no limit of
#: its registers, only of what the triton backend has been checked on.
MAX_CLASSES = 4096


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf (exp overflows to inf or 0).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _head_activation(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "tanh":
        x = _tanh(x)
    elif ACTIVATION == "relu":
        x = tl.maximum(x, 0.0)
    elif ACTIVATION == "gelu":
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:  # gelu_tanh; 2z capped at 80 so exp never overflows (tanh is 1 long before)
        z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (2.0 - 2.0 / (tl.exp(tl.minimum(2.0 * z, 80.0)) + 1.0))
    return x


@triton.jit
def exit_head_kernel(
    pre_ptr, cw_ptr, cb_ptr,
    logits_ptr, conf_ptr, mask_ptr,
    B, H, C,
    stride_pre, stride_cw,
    threshold,
    ACTIVATION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    run_max = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        cls_ok = cls < C
        acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_ok = ks < H
            pre = tl.load(pre_ptr + rows[:, None] * stride_pre + ks[None, :],
                          mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            pooled = tl.where(k_ok[None, :], _head_activation(pre, ACTIVATION), 0.0)
            w = tl.load(cw_ptr + cls[:, None] * stride_cw + ks[None, :],
                        mask=cls_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(pooled, tl.trans(w), input_precision="ieee")
        cb = tl.load(cb_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)
        logits = acc + cb[None, :]
        tl.store(logits_ptr + rows[:, None] * C + cls[None, :], logits,
                 mask=row_ok[:, None] & cls_ok[None, :])
        z = tl.where(cls_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        e = tl.where(cls_ok[None, :], tl.exp(z - new_max[:, None]), 0.0)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(e, axis=1)
        run_max = new_max
    conf = 1.0 / run_sum
    tl.store(conf_ptr + rows, conf, mask=row_ok)
    tl.store(mask_ptr + rows, (conf >= threshold).to(tl.uint8), mask=row_ok)


def _config(B: int, H: int, C: int) -> dict:
    # tl.dot needs every block dimension >= 16
    block_c = min(max(next_pow2(C), 16), 64)
    if INTERPRET:
        # few, large program instances: the interpreter pays per instance
        return dict(BLOCK_B=max(16, next_pow2(min(B, 64))), BLOCK_K=max(16, next_pow2(min(H, 128))),
                    BLOCK_C=block_c)
    return dict(BLOCK_B=16, BLOCK_K=64, BLOCK_C=block_c, num_warps=4)


def exit_head(
    cls_hidden: torch.Tensor,
    pooler_w: torch.Tensor,
    pooler_b: torch.Tensor,
    cls_w: torch.Tensor,
    cls_b: torch.Tensor,
    threshold: float,
    activation: str = "tanh",
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    launch=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton exit head; see :func:`cascade_rt.ops.exit_head`.

    cls_hidden: (B, H).  pooler_w: (H, H), pooler_b: (H,).  cls_w: (C, H), cls_b: (C,).
    activation: one of :data:`ACTIVATIONS`, applied after the head's dense layer.
    out: optional preallocated (logits (B, C) float32, confidence (B,) float32, exit_mask
    (B,) bool), all contiguous; written in full.  launch: wraps the kernel for launching
    (``torch.library.wrap_triton`` inside a registered op).
    Returns logits (B, C) float32, confidence (B,) float32, exit_mask (B,) bool.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"exit_head activation {activation!r} is not one of {ACTIVATIONS}")
    B, H = cls_hidden.shape
    C = cls_w.shape[0]
    dev = cls_hidden.device
    if out is None:
        out = (torch.empty((B, C), dtype=torch.float32, device=dev),
               torch.empty((B,), dtype=torch.float32, device=dev),
               torch.empty((B,), dtype=torch.bool, device=dev))
    logits, conf, mask = out
    if B == 0:
        return logits, conf, mask
    # the head's dense layer for every row at once, in fp32 (cuBLAS on CUDA)
    pre = torch.addmm(pooler_b.float(), cls_hidden.float(), pooler_w.float().t())
    cw = cls_w if cls_w.stride(-1) == 1 else cls_w.contiguous()
    cb = cls_b.contiguous()
    cfg = _config(B, H, C)
    kernel = exit_head_kernel if launch is None else launch(exit_head_kernel)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    kernel[grid](
        pre, cw, cb, logits, conf, mask.view(torch.uint8),
        B, H, C, pre.stride(0), cw.stride(0), float(threshold), ACTIVATION=activation, **cfg,
    )
    return logits, conf, mask
