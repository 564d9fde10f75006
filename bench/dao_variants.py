"""Dev figures of small tiers the demo trained, as ``bench/tier_recipe.py`` reports them.

For DAO settings tried through the demo itself (e.g. ``cascade-rt demo --lam 0.5 --train-only``
trains only the new DAO tier; every other model comes from the cache), this writes one
JSON line per model in ``tier_recipe.py``'s format: the tier's dev accuracy, its dev DIS
against the run's difficulty labels, and the two-tier cascade's in-sample dev accuracy at
thresholds chosen on dev per target. ``bench/dao_margin.py`` then pairs each DAO tier with
the no-DAO tier of its seed. Dev only: the test split is not read. Made the committed
``bench/results/dao_lam_<set>.jsonl`` (after ``cascade-rt demo --data <set> --seeds 0 1 2``
with ``--lam 0.5``, the default until 221aeb3, and with the default weight 0.1)::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon tweets nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      .venv/bin/python bench/dao_variants.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
        --no-dao small_l2_lr0.0003_e2_we_final${tag}_ce \\
        --dao small_l2_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam{0.5,0.1} \\
        --log bench/results/dao_lam_$s.jsonl
      .venv/bin/python bench/dao_margin.py bench/results/dao_lam_$s.jsonl
    done
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="demo cache run directories (one per seed)")
    ap.add_argument("--no-dao", required=True, help="directory name of the no-DAO small tier")
    ap.add_argument("--dao", nargs="+", required=True,
                    help="directory names of DAO small tiers (their margin and lam are read from the name)")
    ap.add_argument("--large", default="large_l6_lr0.0001")
    ap.add_argument("--difficulty", default="difficulty_l2_k2_lr0.0003_e2_we_final.json")
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5])
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--log", required=True)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cached_tier, demo_dev_split
    from cascade_rt.evaluate import dis, search_thresholds, tier_row_costs
    from cascade_rt.info import cpu_name, source_commit

    dv = demo_dev_split(args.data, args.max_len)
    y = np.array(dv.labels)
    for run in map(Path, args.runs):
        seed = int(re.search(r"_s(\d+)_", run.name).group(1))
        if not (run / args.difficulty).is_file():
            raise SystemExit(f"no difficulty labels {run / args.difficulty} (run cascade-rt demo first)")
        diff = json.loads((run / args.difficulty).read_text())
        easy_dv = diff["extra"]["dev"]["easy"]
        large, l_dv, _ = cached_tier(run / args.large, dv)
        for name in [args.no_dao, *args.dao]:
            dao = name != args.no_dao
            m = re.search(r"_m([0-9.e-]+)_lam([0-9.e-]+)", name) if dao else None
            if dao and m is None:
                raise SystemExit(f"--dao {name}: no _m<margin>_lam<weight> in the name")
            tier, p, _ = cached_tier(run / name, dv)
            cum = tier_row_costs([tier.config, large.config], dv.lengths)
            full = cum[1].sum() - cum[0].sum()
            rec = {"recipe": {"data": args.data, "seed": seed, "dao": dao,
                              "margin": float(m.group(1)) if dao else 0.5, "lam": float(m.group(2)) if dao else 0.5,
                              "pairs": "sampled", "large": str(run / args.large),
                              "difficulty_cache": str(run / args.difficulty)},
                   "splits_reported": ["dev"], "cpu": cpu_name(), "commit": source_commit(),
                   "dev_accuracy": float((p.argmax(-1).numpy() == y).mean()),
                   "dev_dis": dis(p.amax(-1).numpy(), easy_dv),
                   "large_dev_accuracy": float((l_dv.argmax(-1).numpy() == y).mean()), "cascade": []}
            for t in args.targets:
                ths, acc, sp = search_thresholds([p, l_dv], y, cum, full, target_speedup=t)
                rec["cascade"].append({"target": t, "threshold": ths[0], "dev_accuracy": float(acc),
                                       "dev_speedup_analytic": float(sp)})
            with open(args.log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{run.name} {name}: small {rec['dev_accuracy']:.4f}, DIS {rec['dev_dis']:.4f}, cascade "
                  + ", ".join(f"{c['target']:g}x {c['dev_accuracy']:.4f}" for c in rec["cascade"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
