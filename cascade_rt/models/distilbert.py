"""DistilBERT (``DistilBertForSequenceClassification``).

``config.json`` names the sizes ``dim``, ``n_layers``, ``n_heads``, ``hidden_dim`` and the FFN
activation ``activation``; LayerNorm epsilon is 1e-12. Embeddings are word + position (no token
types). Layers are BERT's under other names: ``attention.{q,k,v,out}_lin``, ``sa_layer_norm``,
``ffn.lin1`` / ``ffn.lin2``, ``output_layer_norm``. No pooler: the head is ``pre_classifier`` +
ReLU + ``classifier`` on the first token.
"""
from __future__ import annotations

from typing import Any

from ..config import CheckpointError
from .base import Family, KeyMap

__all__ = ["FAMILY"]

_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
          "hidden_dim": "intermediate_size"}


def _fields(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    missing = [k for k in ("vocab_size", *_NAMES) if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: config.json lacks {', '.join(missing)}")
    out = {ours: int(cfg[theirs]) for theirs, ours in _NAMES.items()}
    out.update(hidden_act=cfg.get("activation", "gelu"), layer_norm_eps=1e-12, type_vocab_size=0,
               max_position_embeddings=int(cfg.get("max_position_embeddings", 512)))
    return out


def _to_hf(c) -> dict[str, Any]:
    return dict(vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers,
                n_heads=c.num_attention_heads, hidden_dim=c.intermediate_size,
                max_position_embeddings=c.max_position_embeddings, activation=c.hidden_act,
                pad_token_id=c.pad_token_id)


FAMILY = Family(
    name="distilbert",
    model_types=("distilbert",),
    architectures={"distilbert": "DistilBertForSequenceClassification"},
    keys=KeyMap(
        top=(("bert.pooler.dense.", "pre_classifier."), ("classifier.", "classifier."),
             ("bert.embeddings.", "distilbert.embeddings.")),
        hf_layers="distilbert.transformer.layer.",
        layer=(("attention.self.query.", "attention.q_lin."), ("attention.self.key.", "attention.k_lin."),
               ("attention.self.value.", "attention.v_lin."), ("attention.output.dense.", "attention.out_lin."),
               ("attention.output.LayerNorm.", "sa_layer_norm."), ("intermediate.dense.", "ffn.lin1."),
               ("output.dense.", "ffn.lin2."), ("output.LayerNorm.", "output_layer_norm.")),
    ),
    ignored_keys=("distilbert.embeddings.position_ids",),
    config_fields=_fields,
    config_to_hf=_to_hf,
    token_types=False,
    head_activation=lambda cfg: "relu",
)
