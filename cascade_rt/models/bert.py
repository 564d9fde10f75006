"""BERT (``BertForSequenceClassification``): the encoder's own names; pooler (dense + tanh) on
the first token, then ``classifier``."""
from __future__ import annotations

from typing import Any

from .base import Family, KeyMap

__all__ = ["FAMILY", "bert_config_to_hf"]


def _fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    return {}


def bert_config_to_hf(c) -> dict[str, Any]:
    """The BERT-named ``config.json`` fields of a tier config (RoBERTa and ELECTRA share them)."""
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act, pad_token_id=c.pad_token_id,
        position_embedding_type="absolute",
    )


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    architectures={"bert": "BertForSequenceClassification"},
    keys=KeyMap(top=(("", ""),), hf_layers="bert.encoder.layer."),
    ignored_keys=("bert.embeddings.position_ids", "bert.embeddings.token_type_ids"),
    config_fields=_fields,
    config_to_hf=bert_config_to_hf,
)
