"""The reference backend: plain PyTorch, every op, every device and dtype."""
from __future__ import annotations

from . import reference as _ref

OPS = {
    "varlen_attention": _ref.varlen_attention_ref,
    "first_token_attention": _ref.first_token_attention_ref,
    "add_layer_norm": _ref.add_layer_norm_ref,
    "exit_head": _ref.exit_head_ref,
    "compact": _ref.compact_ref,
    "scatter_exits": _ref.scatter_exits_ref,
    "pack": _ref.pack_ref,
    "unpack": _ref.unpack_ref,
    "linear": _ref.linear_ref,
    "embed_layer_norm": _ref.embed_layer_norm_ref,
    "encoder_layers": _ref.encoder_layers_ref,
}


def why_not(op: str, *args) -> str | None:
    return None
