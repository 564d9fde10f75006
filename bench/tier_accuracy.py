"""How far apart are the models a cascade is compared with? Dev and test accuracy of models
``cascade-rt demo`` cached, per seed, and each model's paired difference from a reference
(the final tier) on the same rows.

The single-model goal of the demo (a cascade between 1.5x and 2.5x at least a point above the
best single model at least as fast) can only be met where the final tier is well ahead of the
3- and 4-layer models alone, since a cascade ending in that tier gains on it only what its
small tier adds. This prints how far ahead it is, on dev and on test, with the standard error
of each paired difference over the rows (the per-row right/wrong differences' standard
deviation over sqrt(rows)), so a reader can tell a gap from a split's luck. It reports and
chooses nothing (the test figures are the demo's own test models). Made the committed
``bench/results/tier_accuracy.{jsonl,txt}`` (models of ``cascade-rt demo --seeds 0 1 2`` and,
for ``stage2``, of ``bench/tier_recipe.py`` as below)::

    C=~/.cache/cascade_rt/demo
    for S in 0 1 2; do R=$C/movies_s${S}_len64_e2_fw_t2_bf16_ms500
      .venv/bin/python bench/tier_recipe.py --layers 6 --epochs 2 --lr 3e-4 --bf16 --train-word-embeddings \\
        --init-from $R/large_l6_lr0.0001 --seed $S --split-seed 0 --min-steps 500 \\
        --out $R/stage2_l6_lr0.0003_e2_we --log /dev/null
    done
    .venv/bin/python bench/tier_accuracy.py --data movies --runs $C/movies_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
      --model final=large_l6_lr0.0001 --model 2=small_l2_lr0.0003_e2_we_final_ce \\
      --model 3=small_l3_lr0.0003_e2_we_final_ce --model 4=small_l4_lr0.0003_e2_we_final_ce \\
      --model stage2=stage2_l6_lr0.0003_e2_we --out bench/results/tier_accuracy.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Accuracy difference a - b in points of two right/wrong vectors over the same rows, and its
    standard error over the rows."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return 100 * float(d.mean()), 100 * float(d.std(ddof=1) / np.sqrt(len(d)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="demo cache run directories (one per seed)")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a model of each run directory (repeatable); the first is the reference")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--out", default=None, help="append one JSON line per run here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cached_tier, demo_dev_split, name_dir
    from cascade_rt.info import cpu_name, source_commit
    from cascade_rt.train import predict_probs

    models = [name_dir(m, "--model", ap.error) for m in args.model]
    splits = {s: demo_dev_split(args.data, args.max_len, s) for s in ("dev", "test")}
    labels = {s: np.array(x.labels) for s, x in splits.items()}
    ref = models[0][0]
    rows = []
    for run in args.runs:
        right = {}
        for name, d in models:
            tier, dev_probs, _ = cached_tier(Path(run) / d, splits["dev"])
            right[name] = {"dev": dev_probs.argmax(-1).numpy() == labels["dev"],
                           "test": predict_probs(tier, splits["test"]).argmax(-1).numpy() == labels["test"]}
        rec = {"data": args.data, "run": Path(run).name, "commit": source_commit(), "cpu": cpu_name(),
               "rows": {s: len(v) for s, v in labels.items()}, "models": dict(models), "reference": ref,
               "accuracy": {n: {s: 100 * float(r[s].mean()) for s in r} for n, r in right.items()},
               "vs_reference": {n: {s: paired(right[n][s], right[ref][s]) for s in labels}
                                for n in right if n != ref}}
        rows.append(rec)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")

    print(f"{args.data}: {len(rows)} runs, dev {rows[0]['rows']['dev']} / test {rows[0]['rows']['test']} rows; "
          f"accuracy (%) mean +- std over runs; minus {ref}: mean over runs (mean standard error over rows)")
    print(f"{'model':10s} {'dev':>12s} {'test':>12s}   {'dev - ' + ref:>18s} {'test - ' + ref:>18s}")
    for name, _ in models:
        acc = {s: np.array([r["accuracy"][name][s] for r in rows]) for s in labels}
        line = f"{name:10s} " + " ".join(f"{acc[s].mean():6.2f}+-{acc[s].std():4.2f}" for s in ("dev", "test"))
        if name != ref:
            line += "   " + " ".join(
                f"{np.mean([r['vs_reference'][name][s][0] for r in rows]):+9.2f} ({np.mean([r['vs_reference'][name][s][1] for r in rows]):4.2f})  "
                for s in ("dev", "test"))
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
