"""Validation of user input and packing into the padding-free layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import ops
from .config import TierConfig

__all__ = ["InputError", "PackedBatch", "prepare_inputs"]


class InputError(ValueError):
    """Input that cascade_rt refuses, with a message that names the problem."""


@dataclass
class PackedBatch:
    """Packed rows. ``input_ids``/``token_type_ids``: (T,) int64 (T may be an upper bound),
    ``cu_seqlens``: (B+1,) int32, ``max_seqlen``: host upper bound, ``num_rows``: B."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    num_rows: int


def _require(cond: torch.Tensor, msg: str) -> None:
    """Raise InputError(msg) unless ``cond`` holds; on accelerators, an async device assert."""
    if cond.device.type == "cpu":
        if not bool(cond):
            raise InputError(msg)
    else:
        torch._assert_async(cond, msg)


def _first_bad(values: torch.Tensor, bad: torch.Tensor) -> str:
    if values.device.type != "cpu" or not bool(bad.any()):
        return ""
    idx = bad.nonzero()[0].tolist()
    return f" (first at index {tuple(idx) if len(idx) > 1 else idx[0]}: {values[tuple(idx)].item()})"


def prepare_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    *,
    limits: Sequence[TierConfig],
    device: torch.device,
    check: bool = True,
    trim: bool | None = None,
) -> PackedBatch:
    """Check user input against the tiers' limits and pack it.

    Accepts HF-style padded input ``input_ids: (B, S)`` with an optional right-padded
    ``attention_mask: (B, S)``, or packed ``input_ids: (T,)`` with ``cu_seqlens: (B+1,)``.
    ``trim`` (default: on CPU) cuts the packed tokens to their true count, which reads one
    number back from the device.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask),
                    ("token_type_ids", token_type_ids), ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != device:
            raise InputError(
                f"{name} is on {t.device} but the model is on {device}; move the input or the model"
            )
    vocab = min(c.vocab_size for c in limits)
    # tiers without token types (DistilBERT, type_vocab_size 0) take any; RoBERTa-family
    # positions start past pad_token_id, so their rows are shorter than the position table
    typed = [c.type_vocab_size for c in limits if c.type_vocab_size > 0]
    n_types = min(typed) if typed else 2**62
    max_pos = min(c.max_seq_len for c in limits)
    if trim is None:
        trim = device.type == "cpu"

    if cu_seqlens is not None:
        if input_ids.dim() != 1:
            raise InputError(
                f"packed input_ids must be 1-D (total_tokens,) when cu_seqlens is given, got shape "
                f"{tuple(input_ids.shape)}"
            )
        if attention_mask is not None:
            raise InputError("attention_mask must be None for packed input (cu_seqlens given)")
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
            raise InputError(f"cu_seqlens must be 1-D (batch+1,), got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise InputError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
        cu = cu_seqlens.to(torch.int32)
        B = cu.shape[0] - 1
        T = input_ids.shape[0]
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise InputError(
                f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input_ids "
                f"shape {tuple(input_ids.shape)}"
            )
        if check and B > 0:
            lens = cu[1:] - cu[:-1]
            _require(cu[0] == 0, "cu_seqlens[0] must be 0")
            _require((lens > 0).all(), "cu_seqlens must be increasing: every row needs at least one token")
            _require(cu[-1] <= T, f"cu_seqlens[-1] exceeds the number of tokens ({T})")
        if max_seqlen is None:
            max_seqlen = int((cu[1:] - cu[:-1]).max()) if B > 0 else 0  # one host read
        if max_seqlen > max_pos:
            raise InputError(
                f"max_seqlen {max_seqlen} exceeds max_position_embeddings {max_pos} of the model"
            )
        if check and B > 0:
            _require((cu[1:] - cu[:-1]).max() <= max_seqlen,
                     f"a row is longer than max_seqlen={max_seqlen}")
        ids = input_ids.to(torch.int64)
        types = (token_type_ids.to(torch.int64) if token_type_ids is not None
                 else torch.zeros_like(ids))
    else:
        if input_ids.dim() != 2:
            raise InputError(
                f"input_ids must be (batch, seq_len), or (total_tokens,) with cu_seqlens; got shape "
                f"{tuple(input_ids.shape)}"
            )
        B, S = input_ids.shape
        no_mask = attention_mask is None  # every token live: nothing to check in the mask
        if no_mask:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise InputError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                f"shape {tuple(input_ids.shape)}"
            )
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise InputError(
                f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input_ids "
                f"shape {tuple(input_ids.shape)}"
            )
        if B == 0:
            z = torch.zeros(0, dtype=torch.int64, device=device)
            return PackedBatch(z, z, torch.zeros(1, dtype=torch.int32, device=device), 0, 0)
        if S == 0:
            raise InputError("input_ids has rows of width 0: every row needs at least one token")
        mask = attention_mask.to(torch.int64)
        # exact shapes on the CPU (trim: reading back is free there), not traced
        eager_cpu = trim and device.type == "cpu" and not torch.compiler.is_compiling()
        if not no_mask and eager_cpu and S > 0:
            # a mask of ones (one row, or rows of one length) needs neither checks nor packing
            lo, hi = torch.aminmax(mask)
            no_mask = int(lo) == 1 and int(hi) == 1
        if check and not no_mask:
            _require(((mask == 0) | (mask == 1)).all(), "attention_mask must hold only 0 and 1")
            if S > 1:
                _require((mask[:, 1:] <= mask[:, :-1]).all(),
                         "attention_mask must be right-padded (ones, then zeros, in every row)")
            _require((mask[:, 0] == 1).all(), "every row needs at least one token (attention_mask row of zeros)")
        max_seqlen = S
        if S > max_pos:
            lens_max = mask.sum(1).max()
            if device.type == "cpu":
                longest = int(lens_max)
                if longest > max_pos:
                    raise InputError(
                        f"a sequence has {longest} tokens, more than max_position_embeddings "
                        f"{max_pos} of the model"
                    )
                max_seqlen = longest
            else:
                raise InputError(
                    f"input is {S} tokens wide, more than max_position_embeddings {max_pos}; "
                    f"cut the padding or the sequences"
                )
        if no_mask and eager_cpu:
            # no padding: the rows are already packed, back to back (no copy of the ids)
            ids = input_ids.reshape(-1).to(torch.int64)
            types = (token_type_ids.reshape(-1).to(torch.int64) if token_type_ids is not None
                     else torch.zeros_like(ids))
            cu = torch.arange(0, B * S + 1, S, dtype=torch.int32)
        else:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            both = torch.stack([input_ids.to(torch.int64), types.to(torch.int64)], dim=-1)
            packed, cu = ops.pack(both, mask)
            ids, types = packed[:, 0], packed[:, 1]
        T = ids.shape[0]

    if check and T > 0 and ids.device.type == "cpu" and not torch.compiler.is_compiling():
        # on the CPU reading the bounds back is free: one min/max pass per tensor, and the
        # masks that locate the first bad value only when there is one
        n = int(cu[-1])
        for values, hi, what in ((ids, vocab, f"token id out of range [0, {vocab}) of the vocabulary"),
                                 (types, n_types, f"token_type_ids out of range [0, {n_types})")):
            if n == 0:
                break
            lo_v, hi_v = torch.aminmax(values[:n])
            if int(lo_v) < 0 or int(hi_v) >= hi:
                live = values[:n]
                raise InputError(what + _first_bad(live, (live < 0) | (live >= hi)))
    elif check and T > 0:
        live = torch.arange(T, device=ids.device) < cu[-1]
        bad = live & ((ids < 0) | (ids >= vocab))
        if ids.device.type == "cpu":
            if bool(bad.any()):
                raise InputError(f"token id out of range [0, {vocab}) of the vocabulary{_first_bad(ids, bad)}")
        else:
            torch._assert_async(~bad.any(), f"token id out of range [0, {vocab}) of the vocabulary")
        badt = live & ((types < 0) | (types >= n_types))
        if types.device.type == "cpu":
            if bool(badt.any()):
                raise InputError(f"token_type_ids out of range [0, {n_types}){_first_bad(types, badt)}")
        else:
            torch._assert_async(~badt.any(), f"token_type_ids out of range [0, {n_types})")

    if trim and B > 0:
        total = int(cu[-1])
        ids, types = ids[:total], types[:total]
    return PackedBatch(ids.contiguous(), types.contiguous(), cu.contiguous(), int(max_seqlen), B)
