"""RoBERTa, XLM-RoBERTa and CamemBERT (``*ForSequenceClassification``, all under ``roberta.``).

Positions start at ``pad_token_id + 1`` and skip pad tokens, as Hugging Face numbers them
(``pad + cumsum(id != pad)`` within each row, ``pad`` on pad tokens); ``type_vocab_size`` is
usually 1. No pooler: the head is ``classifier.dense`` + tanh + ``classifier.out_proj`` on the
first token.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Family, KeyMap
from .bert import bert_config_to_hf

__all__ = ["FAMILY", "roberta_position_ids"]


def roberta_position_ids(input_ids: torch.Tensor, pos_in_row: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Position ids of packed tokens: ``pad + (non-pad tokens up to and including this one in
    its row)``, and ``pad`` for pad tokens. input_ids, pos_in_row: (T,) int64. No host sync."""
    if input_ids.numel() == 0:
        return pos_in_row
    keep = input_ids != pad_token_id
    upto = torch.cumsum(keep, 0)  # inclusive count over the whole packed buffer
    before = upto - keep.to(upto.dtype)
    row_start = torch.arange(input_ids.shape[0], device=input_ids.device) - pos_in_row
    in_row = upto - before.index_select(0, row_start.clamp(0, input_ids.shape[0] - 1))
    return torch.where(keep, in_row + pad_token_id, torch.full_like(in_row, pad_token_id))


def _fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    pad = int(cfg.get("pad_token_id", 1) if cfg.get("pad_token_id") is not None else 1)
    return dict(pad_token_id=pad, position_offset=pad + 1, layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 514)),
                type_vocab_size=int(cfg.get("type_vocab_size", 1)))


FAMILY = Family(
    name="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    architectures={"roberta": "RobertaForSequenceClassification",
                   "xlm-roberta": "XLMRobertaForSequenceClassification",
                   "camembert": "CamembertForSequenceClassification"},
    keys=KeyMap(top=(("classifier.", "classifier.out_proj."), ("bert.pooler.dense.", "classifier.dense."),
                     ("bert.", "roberta.")),
                hf_layers="roberta.encoder.layer."),
    ignored_keys=("roberta.embeddings.position_ids", "roberta.embeddings.token_type_ids"),
    config_fields=_fields,
    config_to_hf=bert_config_to_hf,
    position_ids=roberta_position_ids,
)
