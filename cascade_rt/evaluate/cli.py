"""``cascade-rt evaluate``: choose thresholds on dev for a target speed-up or a maximum accuracy
drop, then report accuracy, F1, ECE, analytic and measured speed-up and rows per tier on test.

    cascade-rt evaluate TIER_DIR [TIER_DIR ...] [--data movies] (--target-speedup 2 | --max-drop 0.01)
                        [--pool-weight W] [--save DIR]
"""
from __future__ import annotations

import argparse
import json
import os

from . import EQUAL_WITHIN_HELP, parse_equal_within, parse_pool_weight


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tiers", nargs="+", help="tier dirs, smallest first (or one saved cascade dir)")
    p.add_argument("--data", default="movies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=64)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-speedup", type=float, default=None)
    g.add_argument("--max-drop", type=float, default=None, help="accuracy drop allowed, as a fraction (0.01 = 1 point)")
    p.add_argument("--equal-within", type=parse_equal_within, default="se", help=EQUAL_WITHIN_HELP)
    p.add_argument("--pool-weight", type=parse_pool_weight, default=None,
                   help="a later tier decides on its probabilities pooled with the earlier tiers' (log-linear; "
                        "this weight for the earlier pool, 1 for the tier); default: a saved cascade's, else 0")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timing-runs", type=int, default=3, help="timed passes of each (after one warm-up), interleaved in alternating order; the speed-up is their median")
    p.add_argument("--save", default=None, help="save the cascade with the chosen thresholds here")
    p.add_argument("--json", default=None, help="write the report as JSON here")


def run(args) -> int:
    import numpy as np
    import torch
    from transformers import BertTokenizer

    from .. import CascadeBert, flops
    from ..data import load_dataset
    from ..train import collate, encode, predict_probs
    from . import ece, f1_binary, pooled_stage_probs, run_batches, search_thresholds, tier_row_costs, timed_speedup

    torch.set_num_threads(os.cpu_count() or 1)
    paths = args.tiers[0] if len(args.tiers) == 1 else args.tiers
    model = CascadeBert.from_pretrained(paths, thresholds=None if len(args.tiers) == 1 else [0.5] * (len(args.tiers) - 1),
                                        pool_weight=args.pool_weight)
    src = model.tiers[0].source_dir
    tok = BertTokenizer(vocab=os.path.join(src, "vocab.txt"))
    splits = load_dataset(args.data, seed=args.seed)
    dv, te = encode(tok, splits.dev, args.max_len), encode(tok, splits.test, args.max_len)
    cfgs = [t.config for t in model.tiers]
    probs_dv = [predict_probs(t, dv) for t in model.tiers]
    labels_dv, labels_te = np.array(dv.labels), np.array(te.labels)
    full_acc_dv = float((probs_dv[-1].argmax(-1).numpy() == labels_dv).mean())
    cum = tier_row_costs(cfgs, dv.lengths)
    full_cost = cum[-1].sum() - cum[-2].sum() if len(cfgs) > 1 else cum[-1].sum()
    if len(cfgs) > 1:
        target = args.target_speedup if (args.target_speedup or args.max_drop is not None) else 2.0
        ths, acc, sp = search_thresholds(pooled_stage_probs(probs_dv, model.pool_weight), labels_dv, cum, full_cost,
                                         target_speedup=None if args.max_drop is not None else target,
                                         max_drop=args.max_drop, full_accuracy=full_acc_dv,
                                         equal_within=args.equal_within)
        model.set_thresholds(ths)
        print(f"dev: thresholds {[round(t, 4) for t in ths]} -> accuracy {acc:.4f} "
              f"(last tier {full_acc_dv:.4f}), analytic speed-up {sp:.2f}x")
    enc = collate(te, range(len(te)))
    alone = CascadeBert([model.tiers[-1]], []).eval()
    o_full = run_batches(alone, enc, args.batch)
    timed = timed_speedup(model, alone, enc, args.batch, runs=args.timing_runs)
    o = timed.pop("out")
    pred = o["logits"].argmax(-1).numpy()
    report = {
        "thresholds": model.thresholds, "pool_weight": model.pool_weight, "accuracy": float((pred == labels_te).mean()),
        "accuracy_last_tier": float((o_full["logits"].argmax(-1).numpy() == labels_te).mean()),
        "f1": f1_binary(pred, labels_te) if splits.num_labels == 2 else None,
        "ece": ece(o["confidence"].numpy(), pred == labels_te),
        "speedup_analytic": flops.analytic_speedup(cfgs, te.lengths, o["exit_tier"].tolist()),
        "speedup_measured": timed["speedup"], "speedup_measured_min": timed["speedup_min"],
        "speedup_measured_max": timed["speedup_max"], "speedup_measured_all": timed["speedup_all"],
        "timing_runs": timed["runs"], "timing_warmup": timed["warmup"], "rows_per_tier": o["rows"].tolist(),
    }
    print("test: " + json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.save:
        model.save_pretrained(args.save)
        print(f"saved the cascade to {args.save}")
    return 0
