"""Text in, labels out: a saved cascade with its tokenizer, batched by a token budget.

    clf = cascade_rt.pipeline("my_cascade")
    clf(["a fine film", "two hours I will never get back"])
    # [{'label': 'positive', 'score': 0.97, 'exit_tier': 0}, {'label': 'negative', ...}]

Texts are tokenized with the tokenizer saved beside the first tier (``transformers.AutoTokenizer``,
local files only), truncated to the longest input every tier takes, packed without padding,
cut into batches of at most ``max_batch_tokens`` tokens in input order and run through
:meth:`CascadeBert.stream`, so the later tiers run on full batches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .cascade import CASCADE_FILE, CascadeBert
from .config import CheckpointError

__all__ = ["pipeline", "Pipeline", "Classified", "TOKENIZER_MARKERS"]

#: files of which at least one marks a directory that holds a saved tokenizer
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                     "sentencepiece.bpe.model", "spiece.model")


@dataclass
class Classified:
    """Per-row results of :meth:`Pipeline.classify`, in input order (N rows).

    label_id: (N,) int64.  score: (N,) float32: max softmax probability at the exit tier.
    exit_tier: (N,) int64.  truncated: (N,) bool: the row was cut to ``max_length`` tokens.
    num_tokens: (N,) int64: tokens the cascade ran on (after truncation).
    """

    label_id: np.ndarray
    score: np.ndarray
    exit_tier: np.ndarray
    truncated: np.ndarray
    num_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.label_id)


def _first_tier_dir(path: Path) -> Path:
    spec = path / CASCADE_FILE
    if spec.is_file():
        tiers = json.loads(spec.read_text()).get("tiers") or []
        if not tiers:
            raise CheckpointError(f"{spec}: lists no tiers")
        return path / tiers[0]
    return path


def load_tokenizer(tier_dir):
    """The tokenizer saved in ``tier_dir`` (``AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer

    tier_dir = Path(tier_dir)
    if not any((tier_dir / f).is_file() for f in TOKENIZER_MARKERS):
        raise CheckpointError(
            f"{tier_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_MARKERS)}); save the "
            f"cascade from tier directories that hold their tokenizer, or copy the tokenizer files there"
        )
    try:
        return AutoTokenizer.from_pretrained(str(tier_dir), local_files_only=True)
    except Exception as exc:  # one clear error whatever the tokenizer class raised
        raise CheckpointError(f"{tier_dir}: the tokenizer there does not load ({type(exc).__name__}: {exc})") from exc


class Pipeline:
    """A cascade with its tokenizer and labels; ``clf(texts, text_pairs=None)`` classifies.

    Attributes: ``model`` (:class:`CascadeBert`), ``tokenizer``, ``id2label`` (list of label
    names by class id), ``max_length`` (tokens a row is truncated to), ``max_batch_tokens``,
    ``truncated`` (rows truncated so far, all calls together).
    """

    def __init__(self, model: CascadeBert, tokenizer, id2label: Sequence[str] | None = None,
                 max_length: int | None = None, max_batch_tokens: int = 4096, max_batch_rows: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        C = model.num_labels
        self.id2label = list(id2label) if id2label is not None else [f"LABEL_{i}" for i in range(C)]
        if len(self.id2label) != C:
            raise ValueError(f"id2label has {len(self.id2label)} names but the cascade has {C} labels")
        limit = min(t.config.max_position_embeddings for t in model.tiers)
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < limit:
            limit = tok_max
        if max_length is not None:
            if max_length < 2 or max_length > limit:
                raise ValueError(f"max_length must be in [2, {limit}] for this cascade, got {max_length}")
            limit = max_length
        self.max_length = int(limit)
        if max_batch_tokens < 1 or max_batch_rows < 1:
            raise ValueError(f"max_batch_tokens and max_batch_rows must be >= 1, got {max_batch_tokens}, "
                             f"{max_batch_rows}")
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_rows = int(max_batch_rows)
        self.truncated = 0

    # -- text -> token ids --------------------------------------------------------------------
    @staticmethod
    def _check_texts(texts, what: str) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"{what} must be a str or a list of str, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{what}[{i}] is {type(t).__name__} ({t!r:.40}), not a str")
        return list(texts)

    def encode(self, texts: list[str], text_pairs: list[str] | None = None):
        """Token ids and types of each row, truncated to ``max_length``.

        Returns (ids, types, truncated): lists of N int lists, and (N,) bool.
        """
        tok = self.tokenizer
        L = self.max_length
        kw = dict(truncation=True, max_length=L, padding=False, return_attention_mask=False)
        enc = tok(texts, text_pairs, **kw) if text_pairs is not None else tok(texts, **kw)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids") or [[0] * len(r) for r in ids]
        truncated = np.zeros(len(ids), dtype=bool)
        full = [i for i, r in enumerate(ids) if len(r) >= L]
        if full:  # a row of exactly max_length tokens may or may not have been cut: look again
            sub = [texts[i] for i in full]
            kw_full = dict(truncation=False, padding=False, return_attention_mask=False, verbose=False)
            again = (tok(sub, [text_pairs[i] for i in full], **kw_full) if text_pairs is not None
                     else tok(sub, **kw_full))["input_ids"]
            for i, r in zip(full, again):
                truncated[i] = len(r) > L
        return ids, types, truncated

    def _batches(self, ids, types) -> Iterator[dict]:
        dev = self.model.device
        start = 0
        n = len(ids)
        while start < n:
            end, tokens = start, 0
            while end < n and end - start < self.max_batch_rows and (
                    end == start or tokens + len(ids[end]) <= self.max_batch_tokens):
                tokens += len(ids[end])  # a row longer than the budget goes alone
                end += 1
            lens = torch.tensor([len(r) for r in ids[start:end]], dtype=torch.int64)
            cu = torch.zeros(end - start + 1, dtype=torch.int32)
            cu[1:] = lens.cumsum(0)
            flat_ids = torch.tensor([t for r in ids[start:end] for t in r], dtype=torch.int64)
            flat_types = torch.tensor([t for r in types[start:end] for t in r], dtype=torch.int64)
            yield {"input_ids": flat_ids.to(dev), "token_type_ids": flat_types.to(dev),
                   "cu_seqlens": cu.to(dev), "max_seqlen": int(lens.max())}
            start = end

    # -- classification -----------------------------------------------------------------------
    def classify(self, texts, text_pairs=None) -> Classified:
        """Classify ``texts`` (list of str; ``text_pairs`` an equally long list of str, or None)."""
        texts = self._check_texts(texts, "texts")
        if text_pairs is not None:
            text_pairs = self._check_texts(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs; give one pair per text")
        n = len(texts)
        if n == 0:
            z = np.zeros(0, dtype=np.int64)
            return Classified(z, np.zeros(0, dtype=np.float32), z.copy(), np.zeros(0, dtype=bool), z.copy())
        ids, types, truncated = self.encode(texts, text_pairs)
        label, score, tier = [], [], []
        with torch.inference_mode():
            for out in self.model.stream(self._batches(ids, types), self.max_batch_tokens,
                                         max_batch_rows=self.max_batch_rows):
                label.append(out.logits.argmax(-1).cpu())
                score.append(out.confidence.cpu())
                tier.append(out.exit_tier.cpu())
        self.truncated += int(truncated.sum())
        return Classified(torch.cat(label).numpy(), torch.cat(score).numpy(), torch.cat(tier).numpy(),
                          truncated, np.array([len(r) for r in ids], dtype=np.int64))

    def __call__(self, texts, text_pairs=None) -> list[dict]:
        """One ``{"label": name, "score": float, "exit_tier": int}`` per text, in input order."""
        r = self.classify(texts, text_pairs)
        return [{"label": self.id2label[int(c)], "score": float(s), "exit_tier": int(t)}
                for c, s, t in zip(r.label_id, r.score, r.exit_tier)]


def _id2label(tier_dir: Path, num_labels: int) -> list[str]:
    cfg = json.loads((tier_dir / "config.json").read_text())
    raw = cfg.get("id2label") or {}
    try:
        names = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise CheckpointError(f"{tier_dir / 'config.json'}: id2label keys must be class ids") from None
    return [names.get(i, f"LABEL_{i}") for i in range(num_labels)]


def pipeline(path, device=None, dtype=None, *, thresholds=None, pool_weight: float | None = None,
             max_batch_tokens: int = 4096, max_batch_rows: int = 512, max_length: int | None = None) -> Pipeline:
    """Load a saved cascade (a ``save_pretrained`` directory, or one HF tier directory) with its
    tokenizer; returns a :class:`Pipeline`, called as ``clf(texts, text_pairs=None)``.

    ``device``/``dtype``: where and in what precision the tiers run (default CPU, as saved).
    ``thresholds``, ``pool_weight``: override the saved ones (see :class:`CascadeBert`).
    ``max_batch_tokens``: the token budget of a batch (and of a later tier's run).
    ``max_length``: truncate rows to fewer tokens than the tiers take.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a saved cascade or a tier directory)")
    model = CascadeBert.from_pretrained(path, thresholds=thresholds, dtype=dtype, device=device,
                                        pool_weight=pool_weight)
    tier_dir = _first_tier_dir(path)
    tokenizer = load_tokenizer(tier_dir)
    return Pipeline(model, tokenizer, _id2label(tier_dir, model.num_labels), max_length=max_length,
                    max_batch_tokens=max_batch_tokens, max_batch_rows=max_batch_rows)
