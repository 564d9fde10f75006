"""Fine-tuning tiers, difficulty labels and the difficulty-aware objective (DAO).

Tiers train as ``transformers.BertForSequenceClassification`` (dropout, autograd) and are
saved with ``save_pretrained``, so every trained tier loads in ``transformers`` and in
:class:`cascade_rt.CascadeBert` alike.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .forward import classifier_logits, cls_only_supported

__all__ = ["Encoded", "encode", "batches", "DAO_LAM", "dao_loss", "distill_loss", "batch_loss", "UNLABELED",
           "TrainConfig", "train_steps", "teacher_logits", "teacher_features", "finetune", "predict_probs",
           "difficulty_labels", "native_bf16"]


@dataclass
class Encoded:
    """Tokenised examples: ``ids[i]``/``types[i]`` lists of ints, ``labels[i]`` int."""

    ids: list[list[int]]
    types: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int]) -> "Encoded":
        return Encoded([self.ids[i] for i in idx], [self.types[i] for i in idx], [self.labels[i] for i in idx])

    def __add__(self, other: "Encoded") -> "Encoded":
        """The rows of ``self``, then those of ``other`` (e.g. labelled rows, then unlabelled text)."""
        return Encoded(self.ids + other.ids, self.types + other.types, self.labels + other.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(tokenizer, examples, max_len: int = 64) -> Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    kw = dict(truncation=True, max_length=max_len)
    enc = tokenizer(texts, pairs, **kw) if any(p is not None for p in pairs) else tokenizer(texts, **kw)
    return Encoded(enc["input_ids"], enc["token_type_ids"], [e.label for e in examples])


def collate(data: Encoded, idx: Sequence[int]) -> dict[str, torch.Tensor]:
    """Right-padded tensors for rows ``idx`` (padding to the longest row of the batch)."""
    S = max(len(data.ids[i]) for i in idx)
    ids = torch.zeros(len(idx), S, dtype=torch.int64)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(idx):
        n = len(data.ids[i])
        ids[r, :n] = torch.tensor(data.ids[i])
        types[r, :n] = torch.tensor(data.types[i])
        mask[r, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def batches(lengths: Sequence[int], batch_size: int, seed: int | None) -> list[list[int]]:
    """Length-bucketed batches (little padding); shuffled with ``seed`` (None: in order)."""
    order = list(range(len(lengths)))
    if seed is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * 50
    out = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: lengths[i])
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


#: Weight of DAO's ranking term (``TrainConfig.lam``, ``--lam``). The paper uses 0.5; with two
#: labels and its margin of 0.5 the hinge never closes (a max-probability lies in [0.5, 1]), so
#: the term pulls every hard row towards 0.5 and 0.5 costs the small tier accuracy. Chosen on
#: dev (``bench/dao_variants.py``, ``bench/results/dao_lam_<set>.txt``; the demo's recipe,
#: three seeds per shipped set, paired against no DAO): 0.1 keeps the small tier's accuracy
#: (-0.1 to +0.7 points; 0.5: -2.0 to +0.1), gains 0.24-0.54 points on the cascade at 2x on
#: every set (0.5: -0.5 to +0.8), and gives a lower DIS on movies and amazon (on all three seeds)
#: where 0.5 gives a higher one on every set.
DAO_LAM = 0.1


def dao_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    easy: torch.Tensor,
    margin: float = 0.5,
    lam: float = DAO_LAM,
    generator: torch.Generator | None = None,
    pairs: str = "sampled",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy plus ``lam`` times a margin ranking loss on max-softmax confidence.

    ``pairs="sampled"``: each easy row of the batch is paired with a hard row drawn uniformly
    (with replacement) from the batch's hard rows; ``pairs="all"``: every (easy, hard) pair of
    the batch. The ranking term is ``mean(max(0, margin - (conf_easy - conf_hard)))`` over
    those pairs (0 when the batch has no easy or no hard row).

    Args:
        logits: (B, C) float.  labels: (B,) int64.  easy: (B,) bool.
    Returns:
        (total, cross_entropy, ranking) scalar tensors.
    """
    ce = F.cross_entropy(logits, labels)
    conf = torch.softmax(logits.float(), -1).amax(-1)
    easy_idx = torch.nonzero(easy, as_tuple=True)[0]
    hard_idx = torch.nonzero(~easy, as_tuple=True)[0]
    if len(easy_idx) == 0 or len(hard_idx) == 0:
        rank = logits.new_zeros(())
    elif pairs == "all":
        rank = F.relu(margin - (conf[easy_idx][:, None] - conf[hard_idx][None, :])).mean()
    elif pairs == "sampled":
        pick = torch.randint(len(hard_idx), (len(easy_idx),), generator=generator)
        rank = F.relu(margin - (conf[easy_idx] - conf[hard_idx[pick]])).mean()
    else:
        raise ValueError(f"pairs must be 'sampled' or 'all', got {pairs!r}")
    return ce + lam * rank, ce, rank


@dataclass
class TrainConfig:
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup: float = 0.06
    seed: int = 0
    dao: bool = False
    margin: float = 0.5
    lam: float = DAO_LAM
    #: DAO ranking pairs per batch: "sampled" (one random hard row per easy row) or "all"
    dao_pairs: str = "sampled"
    #: keep the (vocab x hidden) word embeddings fixed: most of a small tier's parameters and
    #: much of the optimizer's time on a CPU. A 2-layer tier on the movie snippets gained about
    #: 1.5 points of dev accuracy from training them (0.795 -> 0.810, ``bench/tier_recipe.py``);
    #: the 6-layer tier was not compared.
    freeze_word_embeddings: bool = True
    #: when the word embeddings train, make only the rows of tokens that occur in the training
    #: data a parameter (see :class:`_UsedRowsEmbedding`): the same AdamW result up to float
    #: rounding, without a pass over the whole (vocab x hidden) table's gradient, moments and
    #: norm every step (about a third of a 2-layer tier's step on a CPU)
    used_rows_only: bool = True
    #: run the forward pass under bfloat16 autocast; the loss, weights and optimizer stay fp32
    bf16: bool = False
    #: knowledge distillation from a trained teacher (``finetune(teacher_logits=...)``): the
    #: loss's cross-entropy term becomes ``(1 - distill) * CE(labels) + distill * T^2 *
    #: KL(softmax(teacher / T) || softmax(student / T))`` with ``T = distill_temperature``
    distill: float = 0.0
    distill_temperature: float = 2.0
    #: weight of feature distillation (``finetune(teacher_features=...)``): every row, labelled
    #: or not, adds ``feature_distill * mean((pooled - teacher_pooled) ** 2)`` over the pooler
    #: output the classifier reads (the student keeps the teacher's width)
    feature_distill: float = 0.0
    #: compute the last layer for the [CLS] token only (:mod:`cascade_rt.train.forward`): the
    #: same logits and gradients for fewer FLOPs; models it does not cover use their own forward
    cls_only: bool = True
    #: train at least this many optimizer steps: on a small data set ``epochs`` is raised to
    #: reach it (0: ``epochs`` alone decides)
    min_steps: int = 0


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 matmuls run natively (and so faster than fp32) on ``device``.

    CUDA: compute capability 8.0 or newer. CPU: the AVX512-BF16 or AMX-BF16 instructions
    (read from ``/proc/cpuinfo``); elsewhere bf16 is emulated and slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _UsedRowsEmbedding(torch.nn.Module):
    """Stands in for a word-embedding table while it trains: only the rows of ``used`` token ids
    form the parameter ``weight``; ids are mapped to those rows.

    Rows of tokens absent from the training data get a zero gradient in the full table, so
    AdamW leaves their moments at zero and changes them only by weight decay, ``row *= 1 - lr *
    weight_decay`` per step; :meth:`restore` applies that product once and writes the trained
    rows back. The padding row (``padding_idx``) keeps its zero gradient here too.
    """

    def __init__(self, emb: torch.nn.Embedding, used: torch.Tensor):
        super().__init__()
        self.full = emb
        emb.weight.requires_grad_(False)  # the table itself is not trained while this stands in
        self.used = used
        index = torch.full((emb.num_embeddings,), -1, dtype=torch.int64)
        index[used] = torch.arange(len(used))
        self.register_buffer("index", index, persistent=False)
        # the caller includes the padding id in ``used``
        self.pad = None if emb.padding_idx is None else int(index[emb.padding_idx])
        self.weight = torch.nn.Parameter(emb.weight.detach()[used].clone())
        self.decay = 1.0  # product of the weight-decay factors of the absent rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.index[ids]
        if bool((rows < 0).any()):
            raise ValueError("a token id outside the training data reached the training embedding")
        return F.embedding(rows, self.weight, padding_idx=self.pad)

    @torch.no_grad()
    def restore(self) -> torch.nn.Embedding:
        w = self.full.weight
        absent = torch.ones(w.shape[0], dtype=torch.bool)
        absent[self.used] = False
        w[absent] *= self.decay
        w[self.used] = self.weight.detach()
        w.requires_grad_(True)
        return self.full


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches_per_epoch(rows: int, batch_size: int) -> int:
    return max(1, -(-rows // batch_size))


def train_steps(rows: int, cfg: TrainConfig) -> int:
    """Optimizer steps of :func:`finetune` on ``rows`` training rows: ``cfg.epochs`` epochs of
    batches of ``cfg.batch_size``, at least ``cfg.min_steps``."""
    return max(1, int(math.ceil(cfg.epochs * _batches_per_epoch(rows, cfg.batch_size))), int(cfg.min_steps))


@torch.no_grad()
def teacher_features(model_dir, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """A trained ``BertForSequenceClassification``'s pooler outputs (rows, hidden) on ``data``:
    the features its classifier reads, targets of feature distillation."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    if not cls_only_supported(model):
        raise ValueError(f"{model_dir}: feature distillation needs a BERT classifier with the standard layout")
    return _by_rows(data, batch_size, lambda b: classifier_logits(model, **b, return_pooled=True)[1],
                    model.config.hidden_size)


def teacher_logits(model, data: Encoded) -> torch.Tensor:
    """A trained classifier's log-probabilities on ``data``: its logits for distillation up to a
    per-row shift, which softmax ignores."""
    return predict_probs(model, data).clamp_min(1e-12).log()


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 reduction: str = "mean") -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over rows (the T^2
    keeps its gradient's scale independent of T); ``reduction="none"``: one value per row."""
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    target = torch.log_softmax(teacher_logits.float() / t, -1)
    student = torch.log_softmax(logits.float() / t, -1)
    if reduction == "none":
        return F.kl_div(student, target, log_target=True, reduction="none").sum(-1) * t * t
    return F.kl_div(student, target, log_target=True, reduction="batchmean") * t * t


#: the label of a training row without one: it learns only from the teacher (distillation)
UNLABELED = -1


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: "TrainConfig", easy: torch.Tensor | None = None,
               teacher: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One batch's training loss: the mean over its rows of each row's loss, plus ``cfg.lam``
    times the DAO ranking term with ``cfg.dao``.

    A labelled row's loss is ``(1 - d) * CE + d * KD`` with ``d = cfg.distill`` (``KD``:
    :func:`distill_loss` against ``teacher``); a row labelled :data:`UNLABELED` learns from the
    teacher alone: ``KD``. The ranking term (:func:`dao_loss`) pairs the labelled rows' easy and
    hard ones. With every row labelled this is :func:`dao_loss` / cross-entropy as before,
    mixed with distillation by ``d``.
    """
    if cfg.dao and easy is None:
        raise ValueError("DAO training needs difficulty labels (easy=...)")
    lab = labels >= 0
    n_lab = int(lab.sum())
    if n_lab == len(labels):
        if cfg.dao:
            loss, ce, _ = dao_loss(logits, labels, easy, cfg.margin, cfg.lam, generator, cfg.dao_pairs)
        else:
            loss = ce = F.cross_entropy(logits, labels)
        if cfg.distill > 0:
            if teacher is None:
                raise ValueError("distillation (distill > 0) needs the teacher's logits")
            loss = loss + cfg.distill * (distill_loss(logits, teacher, cfg.distill_temperature) - ce)
        return loss
    if teacher is None:
        raise ValueError("rows without a label learn from the teacher alone: give the teacher's logits")
    kd = distill_loss(logits, teacher, cfg.distill_temperature, reduction="none")
    d = torch.where(lab, torch.as_tensor(cfg.distill, dtype=kd.dtype), torch.ones_like(kd))
    per_row = d * kd
    rank = logits.new_zeros(())
    if n_lab:
        lg, y = logits[lab], labels[lab]
        per_row = per_row.index_add(0, torch.nonzero(lab, as_tuple=True)[0],
                                    (1.0 - cfg.distill) * F.cross_entropy(lg, y, reduction="none"))
        if cfg.dao:
            _, _, rank = dao_loss(lg, y, easy[lab], cfg.margin, cfg.lam, generator, cfg.dao_pairs)
    return per_row.mean() + cfg.lam * rank


def finetune(init_dir, data: Encoded, out_dir, cfg: TrainConfig, easy: Sequence[bool] | None = None,
             desc: str = "train", quiet: bool = False, save: bool = True,
             teacher_logits: torch.Tensor | None = None, teacher_features: torch.Tensor | None = None):
    """Fine-tune a BERT sequence classifier on ``data``; returns the trained HF model.

    ``init_dir``: a ``BertForSequenceClassification`` directory. With ``cfg.dao`` the loss is
    :func:`dao_loss` and ``easy`` (one bool per training row) is required. With
    ``cfg.distill > 0``, ``teacher_logits`` ((rows, labels) float: a trained model's logits, or
    log-probabilities, on ``data``) is required and mixes :func:`distill_loss` into the
    cross-entropy term. Rows labelled :data:`UNLABELED` (text without a label, e.g. from
    :func:`cascade_rt.data.unlabeled_texts`) learn from the teacher alone and need
    ``teacher_logits`` whatever ``cfg.distill``; see :func:`batch_loss`. Epochs and steps count
    every row (:func:`train_steps`).
    """
    from tqdm.auto import tqdm
    from transformers import BertForSequenceClassification

    if cfg.dao and easy is None:
        raise ValueError("DAO training needs difficulty labels (easy=...)")
    if easy is not None and len(easy) != len(data):
        raise ValueError(f"easy must give one bool per training row ({len(data)}), got {len(easy)}")
    unlabeled = sum(1 for y in data.labels if y == UNLABELED)
    if unlabeled and teacher_logits is None:
        raise ValueError(f"{unlabeled} training rows have no label ({UNLABELED}): they learn from a teacher alone, "
                         f"so give teacher_logits")
    bad = next((y for y in data.labels if y < 0 and y != UNLABELED), None)
    if bad is not None:
        raise ValueError(f"label {bad} is negative; only {UNLABELED} (no label) is allowed")
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distill must be in [0, 1], got {cfg.distill}")
    if cfg.distill > 0 and teacher_logits is None:
        raise ValueError("distillation (distill > 0) needs the teacher's logits on the training rows")
    if teacher_logits is not None:
        teacher_logits = torch.as_tensor(teacher_logits, dtype=torch.float32)
        if teacher_logits.dim() != 2 or teacher_logits.shape[0] != len(data):
            raise ValueError(f"teacher_logits must be (rows, labels) = ({len(data)}, C), "
                             f"got {tuple(teacher_logits.shape)}")
    if cfg.feature_distill < 0:
        raise ValueError(f"feature_distill must be >= 0, got {cfg.feature_distill}")
    if cfg.feature_distill > 0:
        if teacher_features is None:
            raise ValueError("feature distillation (feature_distill > 0) needs teacher_features")
        teacher_features = torch.as_tensor(teacher_features, dtype=torch.float32)
        if teacher_features.dim() != 2 or teacher_features.shape[0] != len(data):
            raise ValueError(f"teacher_features must be (rows, hidden) = ({len(data)}, H), "
                             f"got {tuple(teacher_features.shape)}")
    _seed_all(cfg.seed)
    model = BertForSequenceClassification.from_pretrained(str(init_dir), attn_implementation="sdpa")
    model.train()
    sub = None
    if cfg.freeze_word_embeddings:
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    elif cfg.used_rows_only:
        emb = model.bert.embeddings.word_embeddings
        used = sorted({i for row in data.ids for i in row} | ({emb.padding_idx} if emb.padding_idx is not None else set()))
        sub = model.bert.embeddings.word_embeddings = _UsedRowsEmbedding(emb, torch.tensor(used, dtype=torch.int64))
    # the [CLS]-only forward; feature distillation needs it for the pooler output
    fast = cls_only_supported(model) and (cfg.cls_only or cfg.feature_distill > 0)
    if cfg.feature_distill > 0:
        if not fast:
            raise ValueError(f"{init_dir}: feature distillation needs a BERT classifier with the standard layout")
        if teacher_features.shape[1] != model.config.hidden_size:
            raise ValueError(f"teacher_features are {teacher_features.shape[1]} wide, the model's pooler "
                             f"{model.config.hidden_size}")
    steps = train_steps(len(data), cfg)
    no_decay = ("bias", "LayerNorm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    try:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # no fused AdamW for this device / torch
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    easy_t = torch.tensor(list(easy), dtype=torch.bool) if easy is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    step, epoch = 0, 0
    bar = tqdm(total=steps, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)
    run_loss = run_acc = None
    while step < steps:
        for idx in batches(data.lengths, cfg.batch_size, cfg.seed + epoch):
            if step >= steps:
                break
            b = collate(data, idx)
            labels = torch.tensor([data.labels[i] for i in idx])
            with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                if fast:
                    logits, pooled = classifier_logits(model, **b, return_pooled=True)
                else:
                    logits = model(**b).logits
                logits = logits.float()
            loss = batch_loss(logits, labels, cfg, easy=easy_t[idx] if easy_t is not None else None,
                              teacher=teacher_logits[idx] if teacher_logits is not None else None, generator=gen)
            if cfg.feature_distill > 0:
                loss = loss + cfg.feature_distill * F.mse_loss(pooled.float(), teacher_features[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            if sub is not None:  # AdamW's weight decay on the rows no step touches
                sub.decay *= 1.0 - opt.param_groups[0]["lr"] * cfg.weight_decay
            opt.step()
            sched.step()
            step += 1
            lab = labels >= 0
            acc = (logits[lab].argmax(-1) == labels[lab]).float().mean().item() if bool(lab.any()) else run_acc or 0.0
            run_loss = loss.item() if run_loss is None else 0.95 * run_loss + 0.05 * loss.item()
            run_acc = acc if run_acc is None else 0.95 * run_acc + 0.05 * acc
            bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}")
            bar.update(1)
        epoch += 1
    bar.close()
    if sub is not None:
        model.bert.embeddings.word_embeddings = sub.restore()
    model.eval()
    if save:
        out_dir = Path(out_dir)
        model.save_pretrained(str(out_dir))
        src = Path(init_dir)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / name).is_file():
                (out_dir / name).write_bytes((src / name).read_bytes())
        (out_dir / "cascade_rt_train.json").write_text(json.dumps(vars(cfg), indent=2))
    return model


@torch.no_grad()
def predict_probs(model, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Softmax probabilities (N, C) float32 of a classifier (HF model or cascade_rt Tier)."""
    def probs(b):
        logits = model(**b)
        logits = logits.logits if hasattr(logits, "logits") else logits
        return torch.softmax(logits.float(), -1)

    return _by_rows(data, batch_size, probs, 2)


def _by_rows(data: Encoded, batch_size: int, fn, empty_width: int) -> torch.Tensor:
    """(rows, width) float32: ``fn`` (a collated batch -> (batch, width)) on the length-sorted
    batches of ``data``, each row put back in its place; (0, ``empty_width``) for no rows."""
    out = None
    for idx in batches(data.lengths, batch_size, None):
        y = fn(collate(data, idx)).float()
        if out is None:
            out = torch.zeros(len(data), y.shape[1])
        out[torch.tensor(idx)] = y
    return out if out is not None else torch.zeros(0, empty_width)


def difficulty_labels(init_dir, data: Encoded, cfg: TrainConfig, folds: int = 5,
                      seeds: Sequence[int] = (0,), extra: dict[str, Encoded] | None = None,
                      cache: Path | None = None, quiet: bool = False,
                      teacher_logits: torch.Tensor | None = None) -> dict:
    """Easy/hard labels from held-out predictions of the smallest tier.

    The training rows are cut into ``folds`` folds (per seed); a model trained on the other
    folds predicts each fold. A row's score is the fraction of its held-out predictions that
    are correct (one per seed); it is easy when that is >= 0.5. The fold models also predict
    every set in ``extra`` (never trained on), whose difficulty comes from the same models.
    A fold model trains as many epochs as ``cfg`` gives the tier on all of ``data`` (with
    ``cfg.min_steps``, more than ``cfg.epochs`` on small data). Cached as JSON at ``cache``.
    With ``cfg.distill > 0`` the fold models distill from
    ``teacher_logits`` (on ``data``) like the tier they stand for.

    Returns ``{"score": [...], "easy": [...], "extra": {name: {"score", "easy"}}}``.
    """
    if cache is not None and Path(cache).is_file():
        return json.loads(Path(cache).read_text())
    n = len(data)
    labels = torch.tensor(data.labels)
    correct = torch.zeros(n)
    extra = extra or {}
    extra_correct = {k: torch.zeros(len(v)) for k, v in extra.items()}
    runs = 0
    epochs = train_steps(n, cfg) / _batches_per_epoch(n, cfg.batch_size)
    for seed in seeds:
        order = list(range(n))
        random.Random(1000 + seed).shuffle(order)
        for f in range(folds):
            held = order[f::folds]
            held_set = set(held)
            train_idx = [i for i in order if i not in held_set]
            # a fold model makes as many passes over its rows as the tier over all rows
            fold_cfg = TrainConfig(**{**vars(cfg), "seed": seed * 100 + f, "dao": False, "feature_distill": 0.0,
                                      "epochs": epochs, "min_steps": 0})
            model = finetune(init_dir, data.subset(train_idx), None, fold_cfg,
                             desc=f"difficulty seed {seed} fold {f + 1}/{folds}", quiet=quiet, save=False,
                             teacher_logits=None if teacher_logits is None else teacher_logits[train_idx])
            p = predict_probs(model, data.subset(held))
            correct[torch.tensor(held)] += (p.argmax(-1) == labels[held]).float()
            for k, v in extra.items():
                extra_correct[k] += (predict_probs(model, v).argmax(-1) == torch.tensor(v.labels)).float()
            runs += 1
    score = correct / len(seeds)
    result = {
        "score": score.tolist(), "easy": (score >= 0.5).tolist(),
        "extra": {k: {"score": (c / runs).tolist(), "easy": (c / runs >= 0.5).tolist()}
                  for k, c in extra_correct.items()},
        "folds": folds, "seeds": list(seeds),
    }
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(result))
    return result
