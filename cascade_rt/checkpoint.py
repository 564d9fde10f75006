"""Hugging Face checkpoint directories <-> tier weights, with strict key matching.

A tier directory is what ``<Family>ForSequenceClassification.save_pretrained`` writes (BERT,
DistilBERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA; the family comes from ``model_type``):
``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, or a sharded index of
either). Keys must match a tier's state dict exactly: a missing or unexpected key is an error
that lists the keys. The only keys dropped silently are buffers that old checkpoints carry
and that hold no weights (``<prefix>.embeddings.position_ids``, ``.token_type_ids``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import torch

from .config import CheckpointError, TierConfig
from .tier import Tier

__all__ = [
    "CheckpointError",
    "read_config",
    "read_state_dict",
    "load_tier",
    "save_tier",
    "make_classifier_checkpoint",
    "TOKENIZER_FILES",
    "vocabulary",
]

IGNORED_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
#: the tokenizer files a tier directory may hold: WordPiece ``vocab.txt``, byte-level BPE
#: ``vocab.json`` + ``merges.txt`` (RoBERTa), SentencePiece models (XLM-R, CamemBERT), the fast
#: tokenizer's ``tokenizer.json`` and the settings files. ``save_pretrained`` copies those present.
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin",
                 "model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_config(path) -> dict:
    """The ``config.json`` of a checkpoint directory, or CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face BERT checkpoint directory)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json, so not a Hugging Face BERT checkpoint directory")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from None


def _load_file(f: Path) -> dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(f))
    return torch.load(str(f), map_location="cpu", weights_only=True)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (CPU), from safetensors, .bin or a sharded index."""
    path = Path(path)
    for name in _WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(f.read_text())
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                sd.update(_load_file(path / shard))
            return sd
        return _load_file(f)
    raise CheckpointError(f"{path}: no weights found (looked for {', '.join(_WEIGHT_FILES)})")


def vocabulary(path) -> dict | None:
    """What fixes the token ids of a checkpoint directory's tokenizer, for comparing tiers.

    Returns ``None`` when the directory holds no tokenizer file, else a dict with, where
    found: ``tokens`` (list of tokens in id order, from ``tokenizer.json``'s model, else
    ``vocab.txt`` or ``vocab.json``), ``merges`` (BPE merges, from ``tokenizer.json`` or
    ``merges.txt``), ``sentencepiece`` (the model file's bytes), and ``files`` (names read).
    """
    path = Path(path)
    out: dict = {"files": []}
    tj = path / "tokenizer.json"
    if tj.is_file():
        try:
            model = json.loads(tj.read_text()).get("model") or {}
        except json.JSONDecodeError:
            model = {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            out["tokens"] = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            out["tokens"] = [p[0] if isinstance(p, list) else p for p in vocab]
        if model.get("merges") is not None:
            out["merges"] = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        out["files"].append(tj.name)
    if "tokens" not in out and (path / "vocab.txt").is_file():
        out["tokens"] = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()
        out["files"].append("vocab.txt")
    if "tokens" not in out and (path / "vocab.json").is_file():
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        out["tokens"] = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        out["files"].append("vocab.json")
    if "merges" not in out and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
        out["merges"] = [ln for ln in lines if ln and not ln.startswith("#version")]
        out["files"].append("merges.txt")
    for name in ("sentencepiece.bpe.model", "spiece.model"):
        if (path / name).is_file():
            out["sentencepiece"] = (path / name).read_bytes()
            out["files"].append(name)
            break
    return out if out["files"] else None


def _check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], where: str,
                prefix: str = "bert") -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        hint = ""
        if missing and all(not k.startswith(f"{prefix}.") for k in got):
            hint = (f" (keys have no '{prefix}.' prefix: this looks like an encoder without a "
                    "classification head; see cascade_rt.checkpoint.make_classifier_checkpoint)")
        raise CheckpointError(f"{where}: state dict does not match a {prefix} sequence classifier: "
                              + "; ".join(parts) + hint)
    bad = [f"{k}: checkpoint {tuple(got[k].shape)} vs config {tuple(v.shape)}"
           for k, v in expected.items() if tuple(got[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{where}: tensor shapes do not match config.json: " + "; ".join(bad))


def load_tier(path, dtype: torch.dtype | None = None, device=None) -> Tier:
    """Load a BERT-family ``*ForSequenceClassification`` directory as a :class:`Tier`."""
    path = Path(path)
    config = TierConfig.from_hf_dict(read_config(path), source=str(path))
    fam = config.family
    sd = {k: v for k, v in read_state_dict(path).items() if k not in fam.ignored_keys}
    with torch.device("meta"):
        tier = Tier(config)
    _check_keys(tier.state_dict(), sd, str(path), fam.keys.hf_layers.split(".")[0])
    tier.load_state_dict(sd, strict=True, assign=True)
    tier.source_dir = str(path)
    if dtype is not None or device is not None:
        tier = tier.to(device=device, dtype=dtype)
    return tier.eval()


def save_tier(tier: Tier, path, copy_tokenizer: bool = True) -> None:
    """Write a tier as its family's Hugging Face ``*ForSequenceClassification`` directory
    (``architectures`` and ``model_type`` set, so ``AutoModelForSequenceClassification`` loads it
    as the same class), with the tokenizer files of the directory it was loaded from."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tier.config.to_hf_dict()
    cfg["torch_dtype"] = str(tier.dtype).replace("torch.", "")
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in tier.state_dict().items()}
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    src = Path(tier.source_dir) if tier.source_dir else None
    if copy_tokenizer and src is not None and src.resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, path / name)


def make_classifier_checkpoint(
    encoder_dir,
    out_dir,
    num_labels: int = 2,
    num_layers: int | None = None,
    seed: int = 0,
    init_std: float | None = None,
    keep_classifier: bool = False,
) -> Path:
    """Turn a BERT encoder checkpoint (``BertModel``) into a sequence-classifier directory.

    Keeps the first ``num_layers`` layers (all by default), keeps the encoder's pooler if it
    has one, and adds a classifier ``(num_labels, hidden)`` initialised like Hugging Face does
    (normal, std ``initializer_range`` unless ``init_std`` is given; zero bias) from ``seed``.
    With ``keep_classifier`` the source must be a sequence classifier with ``num_labels``
    labels (e.g. a trained tier) and its classifier is kept instead: a trained tier's first
    layers, pooler and head as the start of a smaller one.
    The tokenizer files are copied.
    Returns ``out_dir``.
    """
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    cfg = read_config(encoder_dir)
    TierConfig.from_hf_dict(cfg, source=str(encoder_dir))
    if cfg.get("model_type") != "bert":
        raise CheckpointError(f"{encoder_dir}: make_classifier_checkpoint turns BERT encoders into "
                              f"classifiers; model_type is {cfg.get('model_type')!r}")
    sd = read_state_dict(encoder_dir)
    sd = {(k if k.startswith(("bert.", "classifier.")) else f"bert.{k}"): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k not in IGNORED_BUFFERS}
    n_src = int(cfg["num_hidden_layers"])
    n = n_src if num_layers is None else int(num_layers)
    if not 1 <= n <= n_src:
        raise CheckpointError(f"num_layers must be in [1, {n_src}], got {num_layers}")
    keep = {}
    for k, v in sd.items():
        if k.startswith("bert.encoder.layer."):
            if int(k.split(".")[3]) >= n:
                continue
        if k.startswith("classifier.") and not keep_classifier:
            continue
        keep[k] = v
    hidden = int(cfg["hidden_size"])
    std = float(cfg.get("initializer_range", 0.02)) if init_std is None else float(init_std)
    g = torch.Generator().manual_seed(seed)
    if "bert.pooler.dense.weight" not in keep:
        keep["bert.pooler.dense.weight"] = torch.randn(hidden, hidden, generator=g) * std
        keep["bert.pooler.dense.bias"] = torch.zeros(hidden)
    dtype = keep["bert.pooler.dense.weight"].dtype
    if keep_classifier:
        w = keep.get("classifier.weight")
        if w is None or tuple(w.shape) != (num_labels, hidden):
            raise CheckpointError(f"{encoder_dir}: keep_classifier needs a ({num_labels}, {hidden}) classifier, "
                                  f"found {None if w is None else tuple(w.shape)}")
    else:
        keep["classifier.weight"] = (torch.randn(num_labels, hidden, generator=g) * std).to(dtype)
        keep["classifier.bias"] = torch.zeros(num_labels, dtype=dtype)
    cfg = dict(cfg)
    cfg["num_hidden_layers"] = n
    cfg["num_labels"] = num_labels
    cfg.pop("id2label", None)
    cfg.pop("label2id", None)
    config = TierConfig.from_hf_dict(cfg, source=str(encoder_dir))
    with torch.device("meta"):
        tier = Tier(config)
    _check_keys(tier.state_dict(), keep, str(encoder_dir))
    tier.load_state_dict(keep, strict=True, assign=True)
    tier.source_dir = str(encoder_dir)
    save_tier(tier, out_dir)
    return out_dir
