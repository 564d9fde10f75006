"""The subset of a Hugging Face BERT config that a tier needs, validated."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
BERT_MODEL_TYPES = ("bert",)


class CheckpointError(ValueError):
    """A directory or state dict that cannot be loaded as a cascade tier."""


@dataclass
class TierConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    num_labels: int = 2
    pad_token_id: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config") -> "TierConfig":
        """Build from a ``config.json`` dict; raise :class:`CheckpointError` naming the problem."""
        model_type = cfg.get("model_type")
        if model_type not in BERT_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, cascade_rt loads BERT checkpoints "
                f"(model_type in {BERT_MODEL_TYPES})"
            )
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise CheckpointError(f"{source}: config.json lacks {', '.join(missing)}")
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type {pet!r} is not supported (only 'absolute')"
            )
        act = cfg.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise CheckpointError(
                f"{source}: hidden_act {act!r} is not supported ({', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise CheckpointError(f"{source}: decoder / cross-attention BERT is not supported")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise CheckpointError(
                f"{source}: hidden_size {cfg['hidden_size']} is not a multiple of "
                f"num_attention_heads {cfg['num_attention_heads']}"
            )
        num_labels = cfg.get("num_labels")
        if num_labels is None:
            id2label = cfg.get("id2label")
            num_labels = len(id2label) if id2label else 2
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            num_labels=int(num_labels),
            pad_token_id=int(cfg.get("pad_token_id") or 0),
            raw=dict(cfg),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` for ``BertForSequenceClassification`` (keeps unknown keys)."""
        cfg = dict(self.raw)
        cfg.update(
            model_type="bert",
            architectures=["BertForSequenceClassification"],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            layer_norm_eps=self.layer_norm_eps,
            hidden_act=self.hidden_act,
            pad_token_id=self.pad_token_id,
            position_embedding_type="absolute",
        )
        id2label = cfg.get("id2label")
        if not id2label or len(id2label) != self.num_labels:
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            cfg["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        cfg.pop("num_labels", None)
        cfg.pop("_name_or_path", None)
        return cfg
