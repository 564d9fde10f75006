"""Analytic cost (floating-point operations) of tiers and cascades.

Counts multiply-adds as 2 FLOPs in every matrix product: the QKV, output and FFN
projections, attention scores and weighted values, ELECTRA's embedding projection (when
``embedding_size != hidden_size``), and the head: its first dense layer (BERT's pooler,
RoBERTa's / ELECTRA's ``classifier.dense``, DistilBERT's ``pre_classifier``, all ``H x H``)
and the classifier.
Element-wise work (LayerNorm, softmax, GELU, embeddings) is left out: it is O(tokens x
hidden), a few percent of a layer.

A classifier reads only the first token after its last layer, so that layer runs for the first
token alone (``Tier.encode(first_tokens=True)``): keys and values cover every token, attention
has one query per row, and the output projection and FFN one row. The count takes the whole
QKV projection on every token, as the paths with one fused QKV weight that cannot be cut
compute it (oneDNN-packed, GPU); the fp32 CPU path with panel or plain weights computes the
query for the first tokens alone, about 7% less for a 2-layer MiniLM tier on short rows.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from .config import TierConfig

__all__ = ["tier_flops", "padded_tier_flops", "cascade_flops", "analytic_speedup"]


def _cfg(c) -> TierConfig:
    return c.config if hasattr(c, "config") else c


def tier_flops(config, lengths: Iterable[int], first_tokens: bool = True) -> int:
    """FLOPs of one tier on rows of the given token lengths (padding-free).

    Args:
        config: a :class:`TierConfig` or a tier.
        lengths: token count of each row.
        first_tokens: the last layer for each row's first token only, as the runtime runs it
            (default); False counts it in full (every layer on every token, as a stock encoder
            followed by a classifier does).
    """
    cfg = _cfg(config)
    lengths = [int(n) for n in lengths]
    L = cfg.num_hidden_layers
    tokens = sum(lengths)
    project = tokens * 2 * cfg.embedding_size * cfg.hidden_size if getattr(cfg, "embedding_size", None) else 0
    cut = first_tokens and L > 0  # the last layer for the first tokens only
    body = sum(_layer_flops(cfg, n) for n in lengths) * (L - 1 if cut else L)
    last = sum(_last_layer_flops(cfg, n) for n in lengths) if cut else 0
    return body + last + len(lengths) * _head_flops(cfg) + project


def _layer_flops(cfg, n: int) -> int:
    """One full encoder layer on a row of ``n`` tokens: the four projections on every token,
    QK^T and PV over all heads."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    return n * 2 * (4 * H * H + 2 * H * I) + 2 * 2 * n * n * H


def _last_layer_flops(cfg, n: int) -> int:
    """The last layer for the first token of a row of ``n`` tokens: QKV on every token, one
    query's attention, the output projection and FFN on one token."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    return n * 2 * 3 * H * H + 2 * 2 * n * H + 2 * (H * H + 2 * H * I)


def _head_flops(cfg) -> int:
    H, C = cfg.hidden_size, cfg.num_labels
    return 2 * (H * H + H * C)


def padded_tier_flops(config, lengths: Sequence[int], padded_len: int | None = None,
                      first_tokens: bool = True) -> int:
    """FLOPs of the same tier when every row is padded to ``padded_len`` (default: the longest)."""
    lengths = list(lengths)
    if not lengths:
        return 0
    S = max(lengths) if padded_len is None else int(padded_len)
    return tier_flops(config, [S] * len(lengths), first_tokens)


def cascade_flops(configs: Sequence, lengths_per_tier: Sequence[Iterable[int]]) -> int:
    """FLOPs of a cascade given the lengths of the rows that reached each tier."""
    if len(lengths_per_tier) > len(configs):
        raise ValueError("more tiers of lengths than tiers")
    return sum(tier_flops(c, ls) for c, ls in zip(configs, lengths_per_tier))


def analytic_speedup(configs: Sequence, lengths: Sequence[int], exit_tier: Sequence[int]) -> float:
    """Cost of the last tier on every row divided by the cascade's cost.

    Args:
        configs: the tiers (or their configs), smallest first.
        lengths: each row's token count.  exit_tier: each row's exit tier.
    """
    lengths, exit_tier = [int(n) for n in lengths], [int(t) for t in exit_tier]
    if len(lengths) != len(exit_tier):
        raise ValueError("lengths and exit_tier must have one entry per row")
    per_tier = [[n for n, t in zip(lengths, exit_tier) if t >= i] for i in range(len(configs))]
    cost = cascade_flops(configs, per_tier)
    return tier_flops(configs[-1], lengths) / cost if cost else float("nan")


def early_exit_flops(config, lengths: Sequence[int], exit_layer: Sequence[int]) -> int:
    """FLOPs of dynamic early exit on one backbone: row ``r`` runs layers ``0..exit_layer[r]``
    and the exit head after each of them (the backbone's last layer for the first token only)."""
    cfg = _cfg(config)
    L = cfg.num_hidden_layers
    total = 0
    for n, e in zip(lengths, exit_layer):
        layers = int(e) + 1
        full = layers - 1 if layers == L else layers  # the last layer runs for the first token only
        total += full * _layer_flops(cfg, n) + (layers - full) * _last_layer_flops(cfg, n)
        total += layers * _head_flops(cfg)
    return total
