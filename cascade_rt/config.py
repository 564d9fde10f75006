"""The subset of a Hugging Face BERT-family config that a tier needs, validated.

The family (:mod:`cascade_rt.models`) is chosen by ``model_type``; it says how its
``config.json`` names the sizes and how positions, token types and embeddings work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
BERT_MODEL_TYPES = ("bert",)
#: every ``model_type`` a tier loads (see :mod:`cascade_rt.models`).
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")


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
    #: Hugging Face ``model_type``; picks the family (:mod:`cascade_rt.models`).
    model_type: str = "bert"
    #: width of the embeddings when they are projected to ``hidden_size`` (ELECTRA); None: hidden.
    embedding_size: int | None = None
    #: first position id (RoBERTa family: ``pad_token_id + 1``); the longest row is
    #: ``max_position_embeddings - position_offset`` tokens.
    position_offset: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def family(self):
        """The :class:`cascade_rt.models.Family` of ``model_type``."""
        from .models import family_of

        return family_of(self.model_type)

    @property
    def max_seq_len(self) -> int:
        """The longest row the position table holds."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config") -> "TierConfig":
        """Build from a ``config.json`` dict; raise :class:`CheckpointError` naming the problem."""
        from .models import MODEL_TYPES

        model_type = cfg.get("model_type")
        fam = MODEL_TYPES.get(model_type)
        if fam is None:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, cascade_rt loads BERT-family sequence "
                f"classifiers (model_type in {SUPPORTED_MODEL_TYPES})"
            )
        own = fam.config_fields(cfg, source)  # the fields this family reads its own way

        def get(key, default=None):
            return own[key] if key in own else cfg.get(key, default)

        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if get(k) is None]
        if missing:
            raise CheckpointError(f"{source}: config.json lacks {', '.join(missing)}")
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type {pet!r} is not supported (only 'absolute')"
            )
        act = get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise CheckpointError(
                f"{source}: hidden_act {act!r} is not supported ({', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise CheckpointError(f"{source}: decoder / cross-attention models are not supported")
        if get("hidden_size") % get("num_attention_heads"):
            raise CheckpointError(
                f"{source}: hidden_size {get('hidden_size')} is not a multiple of "
                f"num_attention_heads {get('num_attention_heads')}"
            )
        num_labels = cfg.get("num_labels")
        if num_labels is None:
            id2label = cfg.get("id2label")
            num_labels = len(id2label) if id2label else 2
        emb = own.get("embedding_size")
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=int(get("num_attention_heads")),
            intermediate_size=int(get("intermediate_size")),
            max_position_embeddings=int(get("max_position_embeddings", 512)),
            type_vocab_size=int(get("type_vocab_size", 2)),
            layer_norm_eps=float(get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            num_labels=int(num_labels),
            pad_token_id=int(get("pad_token_id") or 0),
            raw=dict(cfg),
            model_type=model_type,
            embedding_size=None if emb is None or emb == int(get("hidden_size")) else int(emb),
            position_offset=int(own.get("position_offset", 0)),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` for the family's ``*ForSequenceClassification`` (keeps unknown keys)."""
        fam = self.family
        cfg = dict(self.raw)
        cfg.update(model_type=self.model_type,
                   architectures=[fam.architectures[self.model_type]])
        cfg.update(fam.config_to_hf(self))
        id2label = cfg.get("id2label")
        if not id2label or len(id2label) != self.num_labels:
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            cfg["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        cfg.pop("num_labels", None)
        cfg.pop("_name_or_path", None)
        return cfg
