"""Fused exit head: head dense + activation (tanh, relu, gelu, gelu_tanh), classifier, softmax,
max probability, threshold.

One program handles ``BLOCK_B`` rows end to end: the pooled vector of each row is built one
``BLOCK_J`` slice at a time and folded straight into the logits, so it never goes to memory.
All arithmetic is fp32 whatever the input dtype (the reference computes in fp32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, next_pow2

__all__ = ["exit_head", "exit_head_kernel", "MAX_CLASSES", "ACTIVATIONS"]

#: the head activations the kernel fuses (BERT/RoBERTa tanh, DistilBERT relu, ELECTRA gelu).
ACTIVATIONS = ("tanh", "relu", "gelu", "gelu_tanh")

#: the classifier width the kernel holds in registers.
MAX_CLASSES = 256


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
    x_ptr, pw_ptr, pb_ptr, cw_ptr, cb_ptr,
    logits_ptr, conf_ptr, mask_ptr,
    B, H, C,
    stride_xb, stride_pw, stride_cw,
    threshold,
    ACTIVATION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    cls = tl.arange(0, BLOCK_C).to(tl.int64)
    cls_ok = cls < C
    logits = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for j0 in range(0, H, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        j_ok = js < H
        acc = tl.zeros((BLOCK_B, BLOCK_J), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_ok = ks < H
            x = tl.load(x_ptr + rows[:, None] * stride_xb + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            w = tl.load(pw_ptr + js[:, None] * stride_pw + ks[None, :],
                        mask=j_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
        pb = tl.load(pb_ptr + js, mask=j_ok, other=0.0).to(tl.float32)
        pooled = _head_activation(acc + pb[None, :], ACTIVATION)
        pooled = tl.where(j_ok[None, :], pooled, 0.0)
        cw = tl.load(cw_ptr + cls[:, None] * stride_cw + js[None, :],
                     mask=cls_ok[:, None] & j_ok[None, :], other=0.0).to(tl.float32)
        logits += tl.sum(pooled[:, None, :] * cw[None, :, :], axis=2)
    cb = tl.load(cb_ptr + cls, mask=cls_ok, other=0.0).to(tl.float32)
    logits = logits + cb[None, :]
    tl.store(logits_ptr + rows[:, None] * C + cls[None, :], logits,
             mask=row_ok[:, None] & cls_ok[None, :])
    z = tl.where(cls_ok[None, :], logits, float("-inf"))
    m = tl.max(z, axis=1)
    e = tl.where(cls_ok[None, :], tl.exp(z - m[:, None]), 0.0)
    s = tl.sum(e, axis=1)
    conf = tl.max(e / s[:, None], axis=1)
    tl.store(conf_ptr + rows, conf, mask=row_ok)
    tl.store(mask_ptr + rows, (conf >= threshold).to(tl.uint8), mask=row_ok)


def _config(B: int, H: int, C: int) -> dict:
    block_c = next_pow2(C)
    if INTERPRET:
        # few, large program instances: the interpreter pays per instance
        return dict(BLOCK_B=next_pow2(min(B, 64)), BLOCK_J=next_pow2(min(H, 64)),
                    BLOCK_K=next_pow2(min(H, 128)), BLOCK_C=block_c)
    return dict(BLOCK_B=16, BLOCK_J=32, BLOCK_K=32 if block_c <= 8 else 16, BLOCK_C=block_c,
                num_warps=4)


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
    x = cls_hidden if cls_hidden.stride(-1) == 1 else cls_hidden.contiguous()
    pw = pooler_w if pooler_w.stride(-1) == 1 else pooler_w.contiguous()
    cw = cls_w if cls_w.stride(-1) == 1 else cls_w.contiguous()
    pb, cb = pooler_b.contiguous(), cls_b.contiguous()
    cfg = _config(B, H, C)
    kernel = exit_head_kernel if launch is None else launch(exit_head_kernel)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    kernel[grid](
        x, pw, pb, cw, cb, logits, conf, mask.view(torch.uint8),
        B, H, C, x.stride(0), pw.stride(0), cw.stride(0), float(threshold), ACTIVATION=activation, **cfg,
    )
    return logits, conf, mask
