"""What the difficulty-aware objective (DAO) does to a trained demo's small tier, on dev.

Reads one demo cache directory (``<cache>/demo/<data>_s<seed>_...``: the final tier, the small
tier with DAO and without, and the difficulty labels) and prints one JSON line, all on the dev
split (test is never consulted):

- label noise: how often the k-fold difficulty label of a dev row ("easy": the fold models,
  each trained on part of the training rows, got it right) agrees with whether the no-DAO small
  tier, trained on all of them, gets it right;
- per small tier: accuracy, mean confidence of easy and of hard rows, DIS, the share of rows
  whose confidence is below 0.6 (where DAO's ranking pushes the hard rows: with two labels the
  max probability lies in [0.5, 1], so a margin of 0.5 is never met and the ranking term
  always pulls each hard row towards 0.5 and each easy row towards 1), and the two-tier
  cascade's dev accuracy at dev-chosen thresholds for each target::

    .venv/bin/python bench/dao_analysis.py ~/.cache/cascade_rt/demo/movies_s0_len64_e2_fw_bf16
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a demo cache directory of one data set and seed")
    p.add_argument("--data", default=None, help="data set (default: the directory name's prefix)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    args = p.parse_args(argv)

    from transformers import BertTokenizer

    from cascade_rt import Tier
    from cascade_rt.data import load_dataset
    from cascade_rt.evaluate import dis, search_thresholds, tier_row_costs
    from cascade_rt.paths import shipped_minilm_dir
    from cascade_rt.train import encode, predict_probs

    root = Path(args.root)
    data = args.data or root.name.split("_s")[0]
    splits = load_dataset(data, seed=args.split_seed)
    tok = BertTokenizer(vocab=str(shipped_minilm_dir() / "vocab.txt"))
    dv = encode(tok, splits.dev, args.max_len)
    y = np.array(dv.labels)
    diff_file = sorted(root.glob("difficulty_*.json"))[0]
    diff = json.loads(diff_file.read_text())
    easy_dv = np.array(diff["extra"]["dev"]["easy"])
    large_dir = sorted(root.glob("large_l*"))[0]
    ce_dir = next(d for d in sorted(root.glob("small_l2_*_ce")))
    dao_dir = next(d for d in sorted(root.glob("small_l2_*_dao_*")))
    large = Tier.from_pretrained(large_dir)
    l_dv = predict_probs(large, dv)
    rec = {"root": str(root), "difficulty": diff_file.name, "dev_rows": len(y),
           "easy_share_train": float(np.mean(diff["easy"])), "easy_share_dev": float(easy_dv.mean()),
           "large_dev_accuracy": float((l_dv.argmax(-1).numpy() == y).mean())}
    out = {}
    for name, d in (("no_dao", ce_dir), ("dao", dao_dir)):
        tier = Tier.from_pretrained(d)
        pr = predict_probs(tier, dv)
        conf = pr.amax(-1).numpy()
        right = pr.argmax(-1).numpy() == y
        cum = tier_row_costs([tier.config, large.config], dv.lengths)
        full = cum[1].sum() - cum[0].sum()
        casc = {}
        for t in args.targets:
            ths, acc, sp = search_thresholds([pr, l_dv], y, cum, full, target_speedup=t)
            casc[str(t)] = {"threshold": ths[0], "accuracy": acc, "speedup_analytic": sp}
        out[name] = {"dir": d.name, "accuracy": float(right.mean()),
                     "conf_easy": float(conf[easy_dv].mean()), "conf_hard": float(conf[~easy_dv].mean()),
                     "share_conf_below_0.6": float((conf < 0.6).mean()),
                     "accuracy_conf_below_0.6": float(right[conf < 0.6].mean()) if (conf < 0.6).any() else None,
                     "dis": dis(conf, easy_dv), "cascade": casc}
        if name == "no_dao":
            rec["label_agreement_with_no_dao_tier"] = float((right == easy_dv).mean())
            rec["no_dao_right_but_labelled_hard"] = float((right & ~easy_dv).mean())
            rec["no_dao_wrong_but_labelled_easy"] = float((~right & easy_dv).mean())
    rec["tiers"] = out
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
