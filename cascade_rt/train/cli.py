"""``cascade-rt train``: fine-tune one tier (optionally with DAO) on a data set.

    cascade-rt train --init DIR --out DIR [--data movies|file.csv] [--layers K] [--dao]
                     [--teacher DIR [--distill A] [--unlabeled shipped|texts.csv]]

``--init`` is a ``BertForSequenceClassification`` dir or a bare BERT encoder (``BertModel``);
``--layers K`` keeps its first K layers. With ``--dao``, difficulty labels come from k-fold
held-out predictions of the same initial tier (cached beside the output). With ``--teacher``
(a trained classifier, e.g. the cascade's final tier) the tier also learns from the teacher's
predictions: on the labelled rows with weight ``--distill``, and on text without labels
(``--unlabeled``) alone.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import DAO_LAM


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", default=None, help="initial checkpoint dir (default: the shipped MiniLM)")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="movies")
    p.add_argument("--layers", type=int, default=None, help="keep the first K layers of --init")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dao", action="store_true", help="train with the difficulty-aware objective")
    p.add_argument("--no-dao", dest="dao", action="store_false", help="plain cross-entropy (default)")
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--lam", type=float, default=DAO_LAM,
                   help=f"weight of DAO's ranking term (default {DAO_LAM:g}; the paper's 0.5 costs the small tier "
                        "accuracy with two labels: cascade_rt.train.DAO_LAM)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--difficulty-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--bf16", action="store_true",
                   help="train under bfloat16 autocast (faster on CPUs with AVX512-BF16/AMX and on GPUs)")
    p.add_argument("--train-word-embeddings", action="store_true",
                   help="also train the word embeddings (frozen by default: most of the optimizer's time; "
                        "a 1-2 layer tier gains accuracy from training them)")
    p.add_argument("--teacher", default=None,
                   help="a trained classifier to learn from (distillation), e.g. the cascade's final tier; "
                        "needed by --distill and --unlabeled")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight in [0, 1] of the teacher's predictions in each labelled row's loss")
    p.add_argument("--distill-temperature", type=float, default=2.0)
    p.add_argument("--unlabeled", default=None,
                   help="text without labels this tier also learns the teacher's predictions on: 'shipped' (the "
                        "other shipped sets' training rows) or a CSV/JSONL/Parquet file with a 'text' column; "
                        "epochs count these rows too")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    import torch
    from transformers import BertTokenizer

    from .. import make_classifier_checkpoint
    from ..checkpoint import read_config
    from ..data import load_dataset, unlabeled_texts
    from ..paths import shipped_minilm_dir
    from . import TrainConfig, difficulty_labels, encode, finetune, teacher_logits

    torch.set_num_threads(os.cpu_count() or 1)
    if not 0.0 <= args.distill <= 1.0:
        raise SystemExit(f"--distill must be in [0, 1], got {args.distill}")
    if (args.distill > 0 or args.unlabeled) and not args.teacher:
        raise SystemExit("--distill and --unlabeled learn from a teacher: give --teacher DIR (a trained classifier)")
    splits = load_dataset(args.data, seed=args.seed)
    print(splits.describe())
    init = Path(args.init) if args.init else shipped_minilm_dir()
    out = Path(args.out)
    cfg = read_config(init)
    is_classifier = "BertForSequenceClassification" in (cfg.get("architectures") or [])
    if not is_classifier or args.layers is not None or cfg.get("num_labels", len(cfg.get("id2label") or {}) or 2) != splits.num_labels:
        base = out.parent / f"{out.name}_init"
        make_classifier_checkpoint(init, base, num_labels=splits.num_labels, num_layers=args.layers, seed=args.seed)
        init = base
    vocab = next((p / "vocab.txt" for p in (init, Path(args.init or shipped_minilm_dir())) if (p / "vocab.txt").is_file()), None)
    if vocab is None:
        raise SystemExit(f"no vocab.txt in {init}; copy the tokenizer's vocab.txt there")
    tok = BertTokenizer(vocab=str(vocab))
    train = encode(tok, splits.train, args.max_len)
    fit, teacher = train, None  # the rows the tier trains on: the labelled ones, then any unlabelled text
    if args.unlabeled:
        try:
            pool = encode(tok, unlabeled_texts(args.unlabeled, splits, seed=args.seed), args.max_len)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--unlabeled {args.unlabeled}: {e}") from None
        fit = train + pool
        print(f"unlabeled text: {len(pool)} rows from {args.unlabeled}")
    if args.teacher:
        from ..tier import Tier

        teacher = teacher_logits(Tier.from_pretrained(args.teacher), fit)
        if teacher.shape[1] != splits.num_labels:
            raise SystemExit(f"--teacher {args.teacher} has {teacher.shape[1]} labels, the data {splits.num_labels}")
    tc = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     dao=args.dao, margin=args.margin, lam=args.lam, bf16=args.bf16,
                     freeze_word_embeddings=not args.train_word_embeddings, distill=args.distill,
                     distill_temperature=args.distill_temperature)
    easy = None
    if args.dao:  # the fold models learn from the labelled rows alone
        diff = difficulty_labels(init, train, TrainConfig(**{**vars(tc), "dao": False}), folds=args.folds,
                                 seeds=args.difficulty_seeds, cache=out.parent / f"{out.name}_difficulty.json",
                                 quiet=args.quiet,
                                 teacher_logits=teacher[: len(train)] if args.distill > 0 else None)
        easy = diff["easy"]
        print(f"difficulty labels: {sum(easy)} easy / {len(easy) - sum(easy)} hard")
        easy = easy + [False] * (len(fit) - len(train))  # unlabelled rows are never ranked
    finetune(init, fit, out, tc, easy=easy, desc=out.name, quiet=args.quiet, teacher_logits=teacher)
    print(f"saved {out} (loadable by transformers and cascade_rt.CascadeBert.from_pretrained)")
    return 0
