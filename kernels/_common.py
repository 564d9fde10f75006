"""Helpers shared by the Triton kernels of cascade_rt."""
from __future__ import annotations

import os

import triton
import triton.language as tl

#: whether the kernels run under the Triton interpreter (CPU tensors). Triton reads the
#: variable when a kernel is decorated, so it is read once, at import.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def layer_norm_rows(h, m, cols, col_ok, w_ptr, b_ptr, H, eps):
    """LayerNorm of the fp32 rows ``h`` (BLOCK_N, BLOCK_H) over their first ``H`` columns
    (``m``: the valid elements), fp32 statistics, then ``* weight + bias``; returns fp32."""
    mean = tl.sum(h, axis=1) / H
    d = tl.where(m, h - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return d * rstd[:, None] * w[None, :] + b[None, :]
