"""CascadeBert: tiers of growing size; each row leaves at the first tier confident enough."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from . import ops
from .checkpoint import load_tier, save_tier
from .inputs import PackedBatch, prepare_inputs
from .tier import Tier

__all__ = ["CascadeBert", "CascadeOutput", "CASCADE_FILE", "pool_log_probs"]

CASCADE_FILE = "cascade.json"


@dataclass
class CascadeOutput:
    """Result of a cascade forward, every tensor in input row order.

    logits: (B, num_labels) float32: logits of the tier each row exited at (with
    ``pool_weight > 0``, a row that exits after tier 0 gets its pooled log-probabilities,
    :func:`pool_log_probs`; either way their softmax is the row's probabilities).
    exit_tier: (B,) int64.  confidence: (B,) float32: max softmax probability at that tier.
    rows_per_tier: (num_tiers,) int64: rows each tier ran on.
    tokens_per_tier: (num_tiers,) int64: tokens each tier ran on.
    """

    logits: torch.Tensor
    exit_tier: torch.Tensor
    confidence: torch.Tensor
    rows_per_tier: torch.Tensor
    tokens_per_tier: torch.Tensor

    @classmethod
    def empty(cls, num_rows: int, num_labels: int, num_stages: int, device) -> "CascadeOutput":
        """Buffers a forward scatters into: zero logits/confidence, exit stage -1, zero counts."""
        return cls(
            torch.zeros((num_rows, num_labels), dtype=torch.float32, device=device),
            torch.full((num_rows,), -1, dtype=torch.int64, device=device),
            torch.zeros(num_rows, dtype=torch.float32, device=device),
            torch.zeros(num_stages, dtype=torch.int64, device=device),
            torch.zeros(num_stages, dtype=torch.int64, device=device),
        )


def _check_thresholds(thresholds: Sequence[float], num_tiers: int) -> list[float]:
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != num_tiers - 1:
        raise ValueError(
            f"expected {num_tiers - 1} threshold(s), one per tier but the last, for {num_tiers} "
            f"tier(s); got {len(thresholds)}"
        )
    for i, t in enumerate(thresholds):
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {i} is {t}; each threshold must be a number in [0, 1]")
    return thresholds


def _check_pool_weight(weight) -> float:
    w = float(weight)
    if not (w >= 0 and math.isfinite(w)):
        raise ValueError(f"pool_weight is {weight}; it must be a finite number >= 0 (0: no pooling)")
    return w


def pool_log_probs(logits: torch.Tensor, previous: torch.Tensor, weight: float):
    """Log-linear pooling of a tier's probabilities with the earlier tiers' for the rows that
    reached it: ``(log_softmax(logits) + weight * previous) / (1 + weight)``, normalised.

    logits: (B, C) the tier's logits.  previous: (B, C) float32 log-probabilities the rows had
    after the earlier tiers (tier 0's log_softmax, then each pooled result).  Returns the pooled
    log-probabilities (B, C) float32 and their max probability (B,) float32, the confidence a
    pooling cascade tests against the tier's threshold. ``weight`` 1: the normalised geometric
    mean of this tier's probabilities and the earlier pool's; 0: this tier's own.
    """
    z = (torch.log_softmax(logits.float(), dim=-1) + weight * previous) / (1.0 + weight)
    z = z - torch.logsumexp(z, dim=-1, keepdim=True)
    return z, z.amax(dim=-1).exp()


def _pool_step(i: int, weight: float, logits, conf, exit_mask, previous, threshold: float):
    """One tier's exit decision in a cascade with ``pool_weight=weight`` (the forward and the
    survivor queue both call it): tier 0 decides on its own logits; a later tier on its
    probabilities pooled with ``previous``. Returns (logits, conf, exit_mask, the log-probabilities
    the rows carry to the next tier)."""
    if i > 0:
        logits, conf = pool_log_probs(logits, previous, weight)
        return logits, conf, conf >= threshold, logits
    return logits, conf, exit_mask, torch.log_softmax(logits, -1)


def _named_labels(config) -> dict[int, str] | None:
    """``id2label`` when the config names its labels (not transformers' ``LABEL_<i>`` defaults)."""
    id2label = config.raw.get("id2label")
    if not id2label:
        return None
    labels = {int(k): str(v) for k, v in id2label.items()}
    if all(v == f"LABEL_{k}" for k, v in labels.items()):
        return None
    return labels


def _vocab_difference(a: dict, b: dict) -> str | None:
    """How two :func:`cascade_rt.checkpoint.vocabulary` results differ, or None when every
    kind of vocabulary data both hold is equal (an error too when they hold no common kind)."""
    compared = False
    ta, tb = a.get("tokens"), b.get("tokens")
    if ta is not None and tb is not None:
        compared = True
        if len(ta) != len(tb):
            return f"{len(ta)} vs {len(tb)} tokens"
        for i, (x, y) in enumerate(zip(ta, tb)):
            if x != y:
                return f"token id {i} is {x!r} vs {y!r}"
    ma, mb = a.get("merges"), b.get("merges")
    if ma is not None and mb is not None:
        compared = True
        if ma != mb:
            return "the BPE merges differ"
    sa, sb = a.get("sentencepiece"), b.get("sentencepiece")
    if sa is not None and sb is not None and not (ta is not None and tb is not None):
        compared = True
        if sa != sb:
            return "the SentencePiece models differ"
    if not compared:
        return (f"they hold no common kind of vocabulary file to compare ({', '.join(a['files'])} "
                f"vs {', '.join(b['files'])})")
    return None


def _check_compatible(tiers: Sequence[Tier]) -> None:
    """Tiers must share one tokenizer (vocabulary file contents, where the tiers came from a
    directory that holds them, else the vocabulary size) and one label set (``num_labels``, and
    ``id2label`` where both name their labels); raise one ValueError saying what differs."""
    from .checkpoint import vocabulary

    first = tiers[0].config
    src0 = tiers[0].source_dir
    vocab0 = vocabulary(src0) if src0 else None

    def origin(i, t):
        return f" (tier {i}: {t.config.model_type}{', ' + t.source_dir if t.source_dir else ''})"

    for i, t in enumerate(tiers[1:], 1):
        cfg = t.config
        where = origin(i, t) + origin(0, tiers[0])
        if cfg.vocab_size != first.vocab_size:
            raise ValueError(
                f"tier {i} has vocab_size {cfg.vocab_size} but tier 0 has {first.vocab_size}; "
                f"tiers must share one vocabulary{where}"
            )
        vocab = vocabulary(t.source_dir) if t.source_dir else None
        if vocab0 is not None and vocab is not None:
            why = _vocab_difference(vocab0, vocab)
            if why:
                raise ValueError(f"tier {i} and tier 0 have different tokenizer vocabularies: {why}; "
                                 f"tiers must share one tokenizer{where}")
        if cfg.num_labels != first.num_labels:
            raise ValueError(
                f"tier {i} has num_labels {cfg.num_labels} but tier 0 has {first.num_labels}; "
                f"tiers must classify into the same labels{where}"
            )
        la, lb = _named_labels(first), _named_labels(cfg)
        if la is not None and lb is not None and la != lb:
            raise ValueError(f"tier {i} has id2label {lb} but tier 0 has {la}; "
                             f"tiers must classify into the same labels{where}")


class CascadeBert(nn.Module):
    """A cascade of complete BERT-family classifiers, smallest first (families may mix when
    they share the tokenizer and the labels: DistilBERT -> BERT, DistilRoBERTa -> RoBERTa, ...).

    A row exits at tier ``i`` when its confidence (max softmax probability) is
    ``>= thresholds[i]``; the last tier takes every row left. Tier ``i+1`` runs only on the
    rows that did not exit: their token ids are compacted on the device between tiers.

    Args:
        tiers: the tiers, smallest first; they must share the tokenizer (vocabulary file
            contents) and the labels (``num_labels``, ``id2label`` where both name them).
        thresholds: one per tier but the last, each in [0, 1].
        pool_weight: 0 (default): each tier decides alone. ``w > 0``: a row that reaches tier
            ``i > 0`` is classified, and tested against tier ``i``'s threshold, by tier ``i``'s
            probabilities pooled with those it had after tier ``i - 1`` (weight ``w`` for the
            earlier pool, 1 for the tier; :func:`pool_log_probs`). The earlier tiers already
            ran on those rows, so pooling costs a few elementwise ops on ``(rows, num_labels)``.
    """

    def __init__(self, tiers: Sequence[Tier], thresholds: Sequence[float] = (), pool_weight: float = 0.0):
        super().__init__()
        if len(tiers) == 0:
            raise ValueError("a cascade needs at least one tier")
        _check_compatible(tiers)
        self.tiers = nn.ModuleList(tiers)
        self.thresholds = _check_thresholds(thresholds, len(tiers))
        self.pool_weight = _check_pool_weight(pool_weight)
        #: when True, never read counts back to the host between tiers: later tiers run on
        #: upper-bound shapes (dead rows are zero-length) and kernels skip dead work. When
        #: False, one count is read per tier boundary and later tiers run on exact shapes.
        self.sync_free = False
        #: validate inputs (ids in range, mask right-padded, ...); async device asserts on GPU.
        self.check_inputs = True

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        paths,
        thresholds: Sequence[float] | None = None,
        dtype: torch.dtype | None = None,
        device=None,
        pool_weight: float | None = None,
    ) -> "CascadeBert":
        """Load from HF tier directories (smallest first) or a directory saved by :meth:`save_pretrained`.

        ``paths``: a list of ``*ForSequenceClassification`` directories of any supported family
        (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA), or one directory
        with a ``cascade.json`` (its thresholds and ``pool_weight`` are used unless given here),
        or one HF directory (a one-tier cascade). ``pool_weight``: see the class; default 0
        where no ``cascade.json`` says otherwise.
        """
        if isinstance(paths, (str, Path)):
            root = Path(paths)
            spec = root / CASCADE_FILE
            if spec.is_file():
                meta = json.loads(spec.read_text())
                dirs = [root / d for d in meta["tiers"]]
                if thresholds is None:
                    thresholds = meta.get("thresholds", [])
                if pool_weight is None:
                    pool_weight = meta.get("pool_weight", 0.0)
            else:
                dirs = [root]
        else:
            dirs = [Path(p) for p in paths]
        if not dirs:
            raise ValueError("from_pretrained needs at least one tier directory")
        if thresholds is None:
            if len(dirs) > 1:
                raise ValueError(f"{len(dirs)} tiers need {len(dirs) - 1} threshold(s); pass thresholds=[...]")
            thresholds = []
        tiers = [load_tier(d, dtype=dtype, device=device) for d in dirs]
        return cls(tiers, thresholds, 0.0 if pool_weight is None else pool_weight)

    def save_pretrained(self, path) -> None:
        """Write ``tier_<i>/`` (each loadable by ``transformers``) and ``cascade.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = []
        for i, tier in enumerate(self.tiers):
            name = f"tier_{i}"
            save_tier(tier, path / name)
            names.append(name)
        meta = {"format": "cascade_rt", "version": 1, "tiers": names, "thresholds": self.thresholds,
                "pool_weight": self.pool_weight}
        (path / CASCADE_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def set_thresholds(self, thresholds: Sequence[float]) -> "CascadeBert":
        self.thresholds = _check_thresholds(thresholds, len(self.tiers))
        return self

    def set_pool_weight(self, weight: float) -> "CascadeBert":
        self.pool_weight = _check_pool_weight(weight)
        return self

    @property
    def num_labels(self) -> int:
        return self.tiers[0].config.num_labels

    @property
    def device(self) -> torch.device:
        return self.tiers[0].device

    # -- forward -----------------------------------------------------------------------------
    def pack(self, input_ids, attention_mask=None, token_type_ids=None, cu_seqlens=None,
             max_seqlen=None) -> PackedBatch:
        """Validate and pack input as :meth:`forward` does."""
        return prepare_inputs(
            input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen,
            limits=[t.config for t in self.tiers], device=self.device,
            check=self.check_inputs, trim=not self._sync_free_active(),
        )

    def capture(self, max_batch: int, max_seqlen: int, **kwargs):
        """This cascade's forward for padded input up to ``(max_batch, max_seqlen)`` captured in
        a CUDA graph (switches ``sync_free`` on); see :class:`cascade_rt.graphs.CapturedCascade`."""
        from .graphs import capture

        return capture(self, max_batch, max_seqlen, **kwargs)

    def _sync_free_active(self) -> bool:
        return self.sync_free

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> CascadeOutput:
        """Classify a batch.

        Args:
            input_ids: (B, S) int, right-padded with ``attention_mask`` (B, S) (HF tokenizer
                output works), or packed (T,) int with ``cu_seqlens`` (B+1,) int32 and
                ``max_seqlen`` (host int upper bound).
            token_type_ids: same shape as input_ids, optional.

        Returns:
            :class:`CascadeOutput` in input row order.
        """
        batch = self.pack(input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen)
        return self.forward_packed(batch)

    def forward_packed(self, batch: PackedBatch) -> CascadeOutput:
        B, dev, n_tiers = batch.num_rows, self.device, len(self.tiers)
        out = CascadeOutput.empty(B, self.num_labels, n_tiers, dev)
        if B == 0:
            return out
        out_logits, out_tier, out_conf, rows_seen, tokens_seen = (
            out.logits, out.exit_tier, out.confidence, out.rows_per_tier, out.tokens_per_tier)

        trim = not self._sync_free_active()
        tokens = torch.stack([batch.input_ids, batch.token_type_ids], dim=1)  # (T, 2)
        cu = batch.cu_seqlens
        row_index = torch.arange(B, device=dev, dtype=torch.int64)
        w = self.pool_weight
        pool = None  # with pooling: the live rows' log-probabilities so far (rows, C) float32
        for i, tier in enumerate(self.tiers):
            last = i == n_tiers - 1
            # a named range per tier, so profiles (torch.profiler, nsys) show each tier's time
            with torch.profiler.record_function(f"cascade_rt.tier{i}"):
                rows_seen[i] = (row_index >= 0).sum()
                tokens_seen[i] = cu[-1]
                # sync-free: upper-bound shapes, so the dense layers skip the dead rows on the device
                cls_hidden = tier.encode(tokens[:, 0], tokens[:, 1], cu, batch.max_seqlen, sync_free=not trim,
                                         first_tokens=True)
                threshold = 0.0 if last else self.thresholds[i]
                logits, conf, exit_mask = tier.exit_head(cls_hidden, threshold)
                if w:
                    logits, conf, exit_mask, pool = _pool_step(i, w, logits, conf, exit_mask, pool, threshold)
                if last:
                    exit_mask = torch.ones_like(exit_mask)
                ops.scatter_exits(exit_mask, row_index, logits, conf, i, out_logits, out_conf, out_tier)
                if last:
                    break
                tokens, cu, local, n_kept = ops.compact(exit_mask | (row_index < 0), tokens, cu)
                row_index = torch.where(local >= 0, row_index[local.clamp(min=0)], local)
                if w:
                    pool = pool[local.clamp(min=0)]
                if trim:
                    n_rows, n_tok = torch.stack([n_kept.to(torch.int64), cu[-1].to(torch.int64)]).tolist()
                    if n_rows == 0:
                        break
                    tokens, cu, row_index = tokens[:n_tok], cu[: n_rows + 1], row_index[:n_rows]
                    if w:
                        pool = pool[:n_rows]
        return out

    # -- streams of batches ------------------------------------------------------------------
    @torch.no_grad()
    def stream(
        self,
        batches: Iterable,
        max_batch_tokens: int | None = None,
        *,
        max_batch_rows: int | None = None,
    ) -> Iterator[CascadeOutput]:
        """Classify a stream of batches; survivors wait across batches so later tiers run full.

        Tier 0 runs on each input batch as it comes. Rows that do not exit at tier ``i`` wait
        in tier ``i+1``'s queue until it holds ``max_batch_tokens`` tokens (default: the most
        tokens of any input batch so far) or ``max_batch_rows`` rows; at the end of the input
        every queue is flushed. One :class:`CascadeOutput` is yielded per input batch, in input
        order, once all its rows have exited; its ``rows_per_tier`` / ``tokens_per_tier``
        count that batch's rows and tokens at each tier.

        Args:
            batches: iterable of dicts with the arguments of :meth:`forward`: ``input_ids:
                (B, S) int`` with ``attention_mask: (B, S)`` (HF tokenizer output), or
                packed ``input_ids: (T,) int`` with ``cu_seqlens: (B+1,) int32``;
                ``token_type_ids`` (same shape as ``input_ids``) optional. Tensors on
                another device are moved to the model's.
            max_batch_tokens: token budget of a later tier's run (a row longer than it runs alone).
            max_batch_rows: optional row limit of a later tier's run.

        Each output equals :meth:`forward` on that batch: tier 0 runs on the same rows, so its
        results are bitwise equal; a later tier runs the same ops on a different group of rows,
        so its logits agree to rounding (a GEMM's rounding depends on how many rows it holds,
        on CPU too: about 1e-6 in fp32) and a row's exit tier can differ only when its
        confidence lies within that rounding of a threshold. Runs with exact shapes (one
        device read per tier run), whatever ``sync_free`` says.
        """
        from .survivor_queue import SurvivorQueue

        return SurvivorQueue(self, max_batch_tokens, max_batch_rows).run(batches)
