"""What a model family is to cascade_rt: its Hugging Face names and its embedding and head rules.

Every family runs on the one padding-free encoder of :mod:`cascade_rt.tier` (post-LayerNorm
layers: attention, add + LayerNorm, FFN, add + LayerNorm). A :class:`Family` says only what
differs: how its ``config.json`` reads, how its state-dict keys map onto the encoder's internal
(BERT-shaped) names, how positions are numbered, whether tokens carry types, whether the
embeddings are projected to the hidden size, and which activation its classification head uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Family", "KeyMap", "positions_from_zero"]


def positions_from_zero(input_ids: torch.Tensor, pos_in_row: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """BERT, DistilBERT, ELECTRA: a token's position is its index in its row."""
    return pos_in_row


@dataclass(frozen=True)
class KeyMap:
    """Internal (BERT-shaped) state-dict keys <-> a family's Hugging Face keys.

    ``top``: ``(internal prefix, HF prefix)`` pairs, the first matching prefix wins, for every
    key outside the encoder layers. ``layer``: the same inside one encoder layer (keys under
    ``bert.encoder.layer.<i>.``, which become ``hf_layers<i>.``).
    """

    top: tuple[tuple[str, str], ...]
    hf_layers: str
    layer: tuple[tuple[str, str], ...] = ()

    _INTERNAL_LAYERS = "bert.encoder.layer."

    @staticmethod
    def _swap(key: str, rules, src: int) -> str | None:
        for pair in rules:
            if key.startswith(pair[src]):
                return pair[1 - src] + key[len(pair[src]):]
        return None

    def _map(self, key: str, to_hf: bool) -> str | None:
        src = 0 if to_hf else 1
        layers = (self._INTERNAL_LAYERS, self.hf_layers)
        if key.startswith(layers[src]):
            idx, _, rest = key[len(layers[src]):].partition(".")
            if not idx.isdigit():
                return None
            rest = self._swap(rest, self.layer, src) if self.layer else rest
            return None if rest is None else f"{layers[1 - src]}{idx}.{rest}"
        return self._swap(key, self.top, src)

    def to_hf(self, key: str) -> str:
        out = self._map(key, True)
        if out is None:
            raise KeyError(f"internal key {key!r} has no Hugging Face name")
        return out

    def from_hf(self, key: str) -> str | None:
        """The internal name of an HF key, or ``None`` when the key is not one of this family's
        (then it stays as it is and strict loading reports it)."""
        out = self._map(key, False)
        if out is None or self._map(out, True) != key:
            return None
        return out


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring).

    name: short name (``"bert"``).  model_types: the ``config.json`` ``model_type`` values it
    loads.  architectures: ``model_type`` -> the ``*ForSequenceClassification`` class that
    ``save_pretrained`` names.  keys: the state-dict name map.  ignored_keys: HF buffers that
    hold no weights (dropped on load).  config_fields: ``config.json`` dict -> the keyword
    arguments of :class:`cascade_rt.config.TierConfig` that differ from BERT's reading.
    config_to_hf: writes a config back in the family's own names.  position_ids:
    ``(input_ids (T,) int64, index in row (T,) int64, pad_token_id) -> position ids (T,)``.
    token_types: whether the embeddings add token-type embeddings.  head_activation: config ->
    the :func:`cascade_rt.ops.exit_head` activation.
    """

    name: str
    model_types: tuple[str, ...]
    architectures: dict[str, str]
    keys: KeyMap
    ignored_keys: tuple[str, ...]
    config_fields: Callable[[dict[str, Any], str], dict[str, Any]]
    config_to_hf: Callable[[Any], dict[str, Any]]
    position_ids: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = positions_from_zero
    token_types: bool = True
    head_activation: Callable[[Any], str] = field(default=lambda cfg: "tanh")
