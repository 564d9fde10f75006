"""ELECTRA (``ElectraForSequenceClassification``).

Embeddings are ``embedding_size`` wide and, when that differs from ``hidden_size``, projected by
``electra.embeddings_project`` after their LayerNorm. The head is ``classifier.dense`` +
GELU + ``classifier.out_proj`` on the first token: transformers' ``ElectraClassificationHead``
applies the erf GELU whatever ``hidden_act`` says, so the exit head does the same.
"""
from __future__ import annotations

from typing import Any

from .base import Family, KeyMap
from .bert import bert_config_to_hf

__all__ = ["FAMILY"]


def _fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    return dict(embedding_size=int(cfg.get("embedding_size", cfg["hidden_size"])))


def _to_hf(c) -> dict[str, Any]:
    out = bert_config_to_hf(c)
    out["embedding_size"] = c.embedding_size or c.hidden_size
    return out


FAMILY = Family(
    name="electra",
    model_types=("electra",),
    architectures={"electra": "ElectraForSequenceClassification"},
    keys=KeyMap(top=(("classifier.", "classifier.out_proj."), ("bert.pooler.dense.", "classifier.dense."),
                     ("bert.embeddings_project.", "electra.embeddings_project."), ("bert.", "electra.")),
                hf_layers="electra.encoder.layer."),
    ignored_keys=("electra.embeddings.position_ids", "electra.embeddings.token_type_ids"),
    config_fields=_fields,
    config_to_hf=_to_hf,
    head_activation=lambda cfg: "gelu",
)
