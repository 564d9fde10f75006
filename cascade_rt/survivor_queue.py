"""The survivor queue behind :meth:`cascade_rt.CascadeBert.stream`.

Over a stream of input batches, tier 0 runs on each batch as it comes. The rows that do not
exit at tier ``i`` join tier ``i+1``'s queue: their packed token ids and token types (on the
device), their lengths and their global row ids (on the host). Tier ``i+1`` runs when its queue
holds a full batch (``max_batch_tokens`` tokens, or ``max_batch_rows`` rows) or when the input
has ended, on the oldest rows first; its own survivors join the next queue. Each input batch
owns a slice of one output buffer indexed by global row id; ``ops.scatter_exits`` writes exits
there, and a batch's :class:`CascadeOutput` is handed back, in input order, once all its rows
have exited.

Every tier runs through the same pieces as :meth:`CascadeBert.forward_packed` (``Tier.encode``,
``Tier.exit_head``, the pooling step when the model pools, ``ops.scatter_exits``,
``ops.compact``); only the grouping of rows into tier runs differs. A pooling cascade's
waiting rows keep their log-probabilities so far in a buffer beside the outputs, indexed by
global row id as those are (the pool weight is the model's when the stream starts). The host
learns each tier run's exit mask (one device read per tier run, as the exact-shape forward
reads one count per tier boundary).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from . import ops
from .cascade import _pool_step
from .inputs import InputError

__all__ = ["SurvivorQueue", "BATCH_KEYS"]

#: keys an input batch of :meth:`CascadeBert.stream` may hold (the arguments of ``forward``)
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "cu_seqlens", "max_seqlen")


@dataclass
class _Segment:
    """Rows waiting for a tier: ``tokens: (T, 2) int64`` on the device (ids, token types),
    ``lens: (R,) int64`` and ``gids: (R,) int64`` on the host, T == lens.sum()."""

    tokens: torch.Tensor
    lens: np.ndarray
    gids: np.ndarray


@dataclass
class _Pending:
    """An input batch whose rows have not all exited yet."""

    start: int  # global id of its first row
    num_rows: int
    remaining: int
    rows_per_tier: np.ndarray
    tokens_per_tier: np.ndarray


@dataclass
class _Queue:
    segments: deque = field(default_factory=deque)
    rows: int = 0
    tokens: int = 0

    def push(self, seg: _Segment) -> None:
        if len(seg.lens):
            self.segments.append(seg)
            self.rows += len(seg.lens)
            self.tokens += int(seg.lens.sum())

    def full(self, max_tokens: int, max_rows: int | None) -> bool:
        return self.tokens >= max_tokens or (max_rows is not None and self.rows >= max_rows)

    def pop(self, max_tokens: int, max_rows: int | None) -> _Segment:
        """The oldest rows that fit ``max_tokens`` / ``max_rows`` (at least one row)."""
        parts: list[_Segment] = []
        rows = tokens = 0
        while self.segments:
            seg = self.segments[0]
            csum = np.cumsum(seg.lens)
            fit = int(np.searchsorted(csum, max_tokens - tokens, side="right"))
            if max_rows is not None:
                fit = min(fit, max_rows - rows)
            if not parts and fit == 0:
                fit = 1  # a row longer than the budget still runs, alone
            if fit == 0:
                break
            if fit >= len(seg.lens):
                parts.append(self.segments.popleft())
            else:
                t = int(csum[fit - 1])
                parts.append(_Segment(seg.tokens[:t], seg.lens[:fit], seg.gids[:fit]))
                self.segments[0] = _Segment(seg.tokens[t:], seg.lens[fit:], seg.gids[fit:])
            rows += len(parts[-1].lens)
            tokens += int(parts[-1].lens.sum())
            if fit < len(seg.lens) or (max_rows is not None and rows >= max_rows):
                break
        self.rows -= rows
        self.tokens -= tokens
        if len(parts) == 1:
            return parts[0]
        return _Segment(torch.cat([p.tokens for p in parts]), np.concatenate([p.lens for p in parts]),
                        np.concatenate([p.gids for p in parts]))


class SurvivorQueue:
    """One pass of :meth:`CascadeBert.stream` over an iterable of input batches."""

    def __init__(self, model, max_batch_tokens: int | None = None, max_batch_rows: int | None = None):
        for name, v in (("max_batch_tokens", max_batch_tokens), ("max_batch_rows", max_batch_rows)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        self.model = model
        self.n_tiers = len(model.tiers)
        self.device = model.device
        self.fixed_tokens = max_batch_tokens
        self.max_rows = max_batch_rows
        self.budget = max_batch_tokens or 1  # without a fixed budget: the largest input batch so far
        self.queues = [_Queue() for _ in range(self.n_tiers)]  # queues[0] stays empty
        self.pending: deque[_Pending] = deque()
        self.next_gid = 0
        self.base = 0  # global id of row 0 of the output buffers
        C = model.num_labels
        self.buf_logits = torch.zeros((0, C), dtype=torch.float32, device=self.device)
        self.buf_conf = torch.zeros(0, dtype=torch.float32, device=self.device)
        self.buf_tier = torch.zeros(0, dtype=torch.int64, device=self.device)
        # a pooling cascade's log-probabilities so far, per row (only rows still waiting are read)
        self.pool_weight = model.pool_weight
        self.buf_pool = torch.zeros((0, C), dtype=torch.float32, device=self.device)

    # -- input -------------------------------------------------------------------------------
    def _pack(self, k: int, batch):
        if not isinstance(batch, Mapping):
            raise InputError(
                f"stream: batch {k} is a {type(batch).__name__}; each batch must be a dict (tokenizer "
                f"output) with input_ids and attention_mask (or cu_seqlens), token_type_ids optional"
            )
        unknown = [key for key in batch if key not in BATCH_KEYS]
        if unknown:
            raise InputError(f"stream: batch {k} has unexpected key(s) {unknown}; accepted keys: {list(BATCH_KEYS)}")
        if "input_ids" not in batch:
            raise InputError(f"stream: batch {k} has no input_ids")
        args = {}
        for key in BATCH_KEYS:
            v = batch.get(key)
            if isinstance(v, torch.Tensor) and v.device != self.device:
                v = v.to(self.device)
            args[key] = v
        try:
            return self.model.pack(**args)
        except InputError as exc:
            raise InputError(f"stream: batch {k}: {exc}") from None

    def _admit(self, packed) -> _Segment:
        """Register an input batch: its pending record, output rows, and its rows as a segment."""
        B = packed.num_rows
        start = self.next_gid
        self.next_gid += B
        self.pending.append(_Pending(start, B, B, np.zeros(self.n_tiers, np.int64), np.zeros(self.n_tiers, np.int64)))
        if B:
            C = self.model.num_labels
            self.buf_logits = torch.cat([self.buf_logits, self.buf_logits.new_zeros((B, C))])
            self.buf_conf = torch.cat([self.buf_conf, self.buf_conf.new_zeros(B)])
            self.buf_tier = torch.cat([self.buf_tier, self.buf_tier.new_full((B,), -1)])
            if self.pool_weight:
                self.buf_pool = torch.cat([self.buf_pool, self.buf_pool.new_zeros((B, C))])
        cu = packed.cu_seqlens.to("cpu", torch.int64).numpy()
        lens = np.diff(cu)
        T = int(cu[-1])
        tokens = torch.stack([packed.input_ids[:T], packed.token_type_ids[:T]], dim=1)
        if not self.fixed_tokens:
            self.budget = max(self.budget, T)
        return _Segment(tokens, lens, np.arange(start, start + B, dtype=np.int64))

    # -- one tier run ------------------------------------------------------------------------
    def _run_tier(self, i: int, seg: _Segment, max_seqlen: int | None = None) -> None:
        model, dev = self.model, self.device
        tier = model.tiers[i]
        last = i == self.n_tiers - 1
        n = len(seg.lens)
        cu_host = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(seg.lens, out=cu_host[1:])
        cu = torch.from_numpy(cu_host).to(dev)
        with torch.profiler.record_function(f"cascade_rt.tier{i}"):
            msl = int(seg.lens.max()) if max_seqlen is None else max_seqlen
            cls_hidden = tier.encode(seg.tokens[:, 0], seg.tokens[:, 1], cu, msl, first_tokens=True)
            threshold = 0.0 if last else model.thresholds[i]
            logits, conf, exit_mask = tier.exit_head(cls_hidden, threshold)
            row_index = torch.from_numpy(seg.gids - self.base).to(dev)
            w = self.pool_weight
            if w:
                logits, conf, exit_mask, pool = _pool_step(
                    i, w, logits, conf, exit_mask, self.buf_pool[row_index] if i else None, threshold)
            if last:
                exit_mask = torch.ones_like(exit_mask)
            ops.scatter_exits(exit_mask, row_index, logits, conf, i, self.buf_logits, self.buf_conf, self.buf_tier)
            exits = np.ones(n, dtype=bool) if last else exit_mask.cpu().numpy()
            if not exits.all():
                if w:
                    stay = ~exit_mask  # on the device already
                    self.buf_pool[row_index[stay]] = pool[stay]
                kept, _, _, _ = ops.compact(exit_mask, seg.tokens, cu)
                keep = ~exits
                lens = seg.lens[keep]
                self.queues[i + 1].push(_Segment(kept[: int(lens.sum())], lens, seg.gids[keep]))
        self._account(i, seg, exits)

    def _account(self, i: int, seg: _Segment, exits: np.ndarray) -> None:
        starts = np.fromiter((p.start for p in self.pending), dtype=np.int64, count=len(self.pending))
        which = np.searchsorted(starts, seg.gids, side="right") - 1
        k = len(starts)
        rows = np.bincount(which, minlength=k)
        toks = np.bincount(which, weights=seg.lens, minlength=k).astype(np.int64)
        done = np.bincount(which, weights=exits, minlength=k).astype(np.int64)
        for j in np.nonzero(rows)[0]:
            p = self.pending[j]
            p.rows_per_tier[i] += rows[j]
            p.tokens_per_tier[i] += toks[j]
            p.remaining -= int(done[j])

    # -- output ------------------------------------------------------------------------------
    def _ready(self) -> Iterator:
        from .cascade import CascadeOutput

        while self.pending and self.pending[0].remaining == 0:
            p = self.pending.popleft()
            lo, hi = p.start - self.base, p.start - self.base + p.num_rows
            out = CascadeOutput(
                self.buf_logits[lo:hi].clone(), self.buf_tier[lo:hi].clone(), self.buf_conf[lo:hi].clone(),
                torch.from_numpy(p.rows_per_tier).to(self.device), torch.from_numpy(p.tokens_per_tier).to(self.device),
            )
            if p.num_rows:
                self.buf_logits, self.buf_conf, self.buf_tier = (
                    self.buf_logits[hi:], self.buf_conf[hi:], self.buf_tier[hi:])
                if self.pool_weight:
                    self.buf_pool = self.buf_pool[hi:]
                self.base = p.start + p.num_rows
            yield out

    def run(self, batches: Iterable) -> Iterator:
        for k, batch in enumerate(batches):
            packed = self._pack(k, batch)
            seg = self._admit(packed)
            if packed.num_rows:
                self._run_tier(0, seg, packed.max_seqlen)
            for i in range(1, self.n_tiers):
                q = self.queues[i]
                while q.rows and q.full(self.budget, self.max_rows):
                    self._run_tier(i, q.pop(self.budget, self.max_rows))
            yield from self._ready()
        for i in range(1, self.n_tiers):  # the input has ended: flush every queue, in tier order
            q = self.queues[i]
            while q.rows:
                self._run_tier(i, q.pop(self.budget, self.max_rows))
        yield from self._ready()
        assert not self.pending, "survivor queue: a batch still has rows that never exited"
