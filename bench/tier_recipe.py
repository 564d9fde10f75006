"""Training recipes for one tier, judged by what the tier does in a cascade.

Fine-tunes a tier cut from the shipped MiniLM (``--layers``) on the movie snippets with one
recipe (epochs, learning rate, frozen or trained word embeddings, bf16 autocast) and prints
one JSON line: training seconds, the tier's dev accuracy and, when ``--large`` names a
trained final tier, the two-tier cascade's dev accuracy and analytic speed-up at thresholds
chosen on dev for each ``--targets`` value (simulated from the two tiers' probabilities, as
``cascade_rt.evaluate.search_thresholds`` sees them). Recipes are compared on dev only: the
test split is the demo's final report and must not choose anything. ``--final`` adds the
test figures, for the one recipe already chosen. The demo's defaults
(``cascade_rt.demo.EPOCHS``, small tiers training their word embeddings, bf16 where native)
were chosen with this script, e.g.::

    .venv/bin/python bench/tier_recipe.py --layers 6 --epochs 2 --lr 1e-4 --bf16 --out /tmp/r/l6
    .venv/bin/python bench/tier_recipe.py --layers 2 --epochs 2 --bf16 --large /tmp/r/l6
    .venv/bin/python bench/tier_recipe.py --layers 2 --epochs 2 --bf16 --train-word-embeddings --large /tmp/r/l6

With difficulty labels (``--dao``, or ``--difficulty-cache`` alone for a no-DAO tier) the line
also gives ``dev_dis``, the tier's difficulty inversion score on dev (share of (easy, hard)
dev pairs whose max-probabilities are inverted; lower is better), so DAO and no-DAO tiers of
one seed are compared on the same labels; the cascade's dev accuracy at 2x is the
``cascade`` point with ``target`` 2.0.

Results append to ``--log`` (default ``bench/results/tier_recipe.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-word-embeddings", action="store_true")
    p.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    p.add_argument("--large", default=None, help="a trained final tier: also report the cascade")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5])
    p.add_argument("--data", default="movies")
    p.add_argument("--dao", action="store_true",
                   help="train with the difficulty-aware objective (difficulty labels: --folds-fold held-out "
                        "predictions of the same recipe without DAO, cached in --difficulty-cache)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--lam", type=float, default=None, help="DAO's ranking weight (default: cascade_rt.train.DAO_LAM)")
    p.add_argument("--pairs", choices=("sampled", "all"), default="sampled", help="DAO ranking pairs (see dao_loss)")
    p.add_argument("--difficulty-cache", default=None,
                   help="JSON file for the difficulty labels (reused when there); given without --dao, the "
                        "labels are computed (or read) too and the no-DAO tier's dev DIS is reported against them")
    p.add_argument("--min-steps", type=int, default=0, help="train at least this many optimizer steps")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of distillation from --teacher (default: --large) in the cross-entropy term")
    p.add_argument("--teacher", default=None, help="a trained tier to distill from (default: --large)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    p.add_argument("--feature-distill", type=float, default=0.0,
                   help="weight of feature distillation from --teacher (default: --large): the mean squared "
                        "difference of the pooler outputs, on every training row")
    p.add_argument("--unlabeled", default=None,
                   help="text without labels the tier also learns from, by distillation from --teacher (default: "
                        "--large) alone: 'shipped' (the other shipped sets' training rows) or a CSV/JSONL/Parquet "
                        "file with a text column; epochs count those rows too")
    p.add_argument("--init-from", default=None,
                   help="start from this trained classifier's first --layers layers, pooler and head "
                        "(e.g. the trained final tier) instead of the shipped MiniLM's")
    p.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="keep the trained tier here (default: a temporary dir)")
    p.add_argument("--final", action="store_true",
                   help="also report test figures (for the recipe already chosen on dev; never to choose one)")
    p.add_argument("--log", default=str(Path(__file__).parent / "results" / "tier_recipe.jsonl"))
    args = p.parse_args(argv)

    from transformers import BertTokenizer

    from cascade_rt import Tier, make_classifier_checkpoint
    from cascade_rt.data import load_dataset
    from cascade_rt.evaluate import dis, search_thresholds, simulate_exits, tier_row_costs
    from cascade_rt.info import cpu_name, source_commit
    from cascade_rt.paths import shipped_minilm_dir
    from cascade_rt.data import unlabeled_texts
    from cascade_rt.train import (DAO_LAM, TrainConfig, difficulty_labels, encode, finetune, predict_probs, teacher_features,
                                  teacher_logits)

    if args.threads:
        torch.set_num_threads(args.threads)
    src = shipped_minilm_dir()
    tok = BertTokenizer(vocab=str(src / "vocab.txt"))
    if args.lam is None:
        args.lam = DAO_LAM
    splits_seed = args.seed if args.split_seed is None else args.split_seed
    splits = load_dataset(args.data, seed=splits_seed)
    tr, dv, te = (encode(tok, getattr(splits, s), 64) for s in ("train", "dev", "test"))
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                      freeze_word_embeddings=not args.train_word_embeddings, bf16=args.bf16,
                      margin=args.margin, lam=args.lam, dao_pairs=args.pairs, min_steps=args.min_steps,
                      distill=args.distill, distill_temperature=args.temperature,
                      feature_distill=args.feature_distill)
    if (args.distill > 0 or args.unlabeled or args.feature_distill > 0) and not (args.teacher or args.large):
        raise SystemExit("--distill, --feature-distill and --unlabeled need --teacher or --large")
    teacher = teacher_fit = None
    fit = tr  # the rows the tier trains on: the labelled ones, then any unlabelled text
    if args.unlabeled:
        pool = encode(tok, unlabeled_texts(args.unlabeled, splits, seed=splits_seed), 64)
        fit = tr + pool
    if args.distill > 0 or args.unlabeled:
        teacher_fit = teacher_logits(Tier.from_pretrained(args.teacher or args.large), fit)
        teacher = teacher_fit[: len(tr)] if args.distill > 0 else None  # the fold models distill only with --distill
    feats = teacher_features(args.teacher or args.large, fit) if args.feature_distill > 0 else None
    diff = None
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        make_classifier_checkpoint(args.init_from or src, init, num_labels=splits.num_labels, num_layers=args.layers,
                                   seed=args.seed, keep_classifier=bool(args.init_from))
        out = Path(args.out) if args.out else Path(tmp) / "tier"
        if args.dao or args.difficulty_cache:
            # the same labels serve a DAO tier's training and, for DAO or not, its dev DIS
            t0 = time.perf_counter()
            diff = difficulty_labels(init, tr, cfg, folds=args.folds, extra={"dev": dv}, quiet=True,
                                     cache=Path(args.difficulty_cache) if args.difficulty_cache else None,
                                     teacher_logits=teacher)
            label_s = time.perf_counter() - t0
            cfg.dao = args.dao
        t0 = time.perf_counter()
        easy = diff["easy"] + [False] * (len(fit) - len(tr)) if args.dao else None  # unlabelled: not ranked
        finetune(init, fit, out, cfg, easy=easy, quiet=True, teacher_logits=teacher_fit, teacher_features=feats)
        train_s = time.perf_counter() - t0
        tier = Tier.from_pretrained(out)
    p_dv = predict_probs(tier, dv)
    y_dv, y_te = np.array(dv.labels), np.array(te.labels)
    rec = {"recipe": {k: v for k, v in vars(args).items() if k not in ("log", "out", "threads", "final")},
           "splits_reported": ["dev", "test"] if args.final else ["dev"],
           "train_rows": len(tr), "unlabeled_rows": len(fit) - len(tr),
           "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(), "cpu": cpu_name(),
           "commit": source_commit(),
           "dev_accuracy": float((p_dv.argmax(-1).numpy() == y_dv).mean())}
    if diff is not None:
        easy_dv = diff["extra"]["dev"]["easy"]
        rec["difficulty"] = {"easy_train": int(sum(diff["easy"])), "train_rows": len(tr),
                             "label_seconds": round(label_s, 1)}
        rec["dev_dis"] = dis(p_dv.amax(-1).numpy(), easy_dv)
    if args.final:
        p_te = predict_probs(tier, te)
        rec["test_accuracy"] = float((p_te.argmax(-1).numpy() == y_te).mean())
    if args.large:
        large = Tier.from_pretrained(args.large)
        l_dv = predict_probs(large, dv)
        cfgs = [tier.config, large.config]
        cum_dv = tier_row_costs(cfgs, dv.lengths)
        full_dv = cum_dv[1].sum() - cum_dv[0].sum()
        rec["large_dev_accuracy"] = float((l_dv.argmax(-1).numpy() == y_dv).mean())
        if args.final:
            l_te = predict_probs(large, te)
            cum_te = tier_row_costs(cfgs, te.lengths)
            full_te = cum_te[1].sum() - cum_te[0].sum()
            rec["large_test_accuracy"] = float((l_te.argmax(-1).numpy() == y_te).mean())
        rec["cascade"] = []
        for target in args.targets:
            # thresholds chosen on dev; the dev figures are in-sample (the same rows chose them),
            # alike for every recipe, which is what a comparison of recipes needs
            ths, acc_dv, sp_dv = search_thresholds([p_dv, l_dv], y_dv, cum_dv, full_dv, target_speedup=target)
            point = {"target": target, "threshold": ths[0], "dev_accuracy": float(acc_dv),
                     "dev_speedup_analytic": float(sp_dv)}
            if args.final:
                stage, pred, _ = simulate_exits([p_te, l_te], ths)
                point["test_accuracy"] = float((pred == y_te).mean())
                point["speedup_analytic"] = float(full_te / cum_te[stage, np.arange(len(stage))].sum())
            rec["cascade"].append(point)
    line = json.dumps(rec)
    print(line)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
