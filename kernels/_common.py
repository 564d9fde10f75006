"""Helpers shared by the Triton kernels of cascade_rt."""
from __future__ import annotations

import os

import triton

#: whether the kernels run under the Triton interpreter (CPU tensors). Triton reads the
#: variable when a kernel is decorated, so it is read once, at import.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))
