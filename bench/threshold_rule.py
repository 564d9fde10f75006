"""How the threshold search's choice among near-equal points holds up on rows it did not see.

``cascade_rt.evaluate.search_thresholds`` picks, for a target speed-up, thresholds on a dev
split. With ``equal_within=0`` the most accurate point that meets the target wins outright
(the fastest of equals); with ``"se"`` (the default) accuracies within one standard error of
the best count as equal and the slowest of them wins. On a few hundred dev rows a faster
point that is one or two rows "more accurate" is mostly noise.

This compares the two on the dev split alone (the test split is not read): for each trained
two-tier cascade it splits dev rows at random into halves, chooses thresholds on one half
with each rule and scores them on the other, ``--halvings`` times. Per rule and target it
reports the held-out accuracy below the final tier (points), the held-out analytic speed-up
over the target and how often it fell below 0.97x the target; and, as the demo's goal reads
its sweep, the most accurate held-out point at >= 2x over all targets.

The models come from ``cascade-rt demo``'s cache (each run directory it prints as
``cached: <dir>``). Made the committed ``bench/results/threshold_rule.jsonl`` (after
``cascade-rt demo --data <set> --seeds 0 1 2`` with the defaults of 7db4ebe, when DAO's
weight was 0.5)::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon tweets nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      .venv/bin/python bench/threshold_rule.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
        --small small_l2_lr0.0003_e2_we_final${tag}_ce small_l2_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.5 \\
        --out bench/results/threshold_rule.jsonl
    done
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RULES = {"most accurate (equal_within=0)": 0, "slowest within 1 SE (default)": "se"}


def study(probs_small, probs_large, labels, cost_small, cost_large, targets, halvings, seed):
    """Per rule: per target a list of (drop, speed / target) on the held-out halves, and the
    list of (drop, speed) of the most accurate held-out point at >= 2x."""
    import torch

    from cascade_rt.evaluate import row_costs, search_thresholds, simulate_exits

    rng = np.random.default_rng(seed)
    n = len(labels)
    out = {r: {"per_target": {t: [] for t in targets}, "at_2x": []} for r in RULES}
    for _ in range(halvings):
        perm = rng.permutation(n)
        A, B = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])

        def part(ix):
            return ([torch.as_tensor(probs_small[ix]), torch.as_tensor(probs_large[ix])], labels[ix],
                    row_costs([cost_small[ix], cost_large[ix]]), float(cost_large[ix].sum()))

        pa, ya, cum_a, full_a = part(A)
        pb, yb, cum_b, full_b = part(B)
        final_b = float((pb[1].argmax(-1).numpy() == yb).mean())
        for name, rule in RULES.items():
            best = None
            for t in targets:
                ths, _, _ = search_thresholds(pa, ya, cum_a, full_a, target_speedup=t, equal_within=rule)
                stage, pred, _ = simulate_exits(pb, ths)
                acc = float((pred == yb).mean())
                sp = full_b / cum_b[stage, np.arange(len(yb))].sum()
                out[name]["per_target"][t].append((100 * (final_b - acc), sp / t))
                if sp >= 2.0 and (best is None or (acc, sp) > best):
                    best = (acc, sp)
            if best is not None:
                out[name]["at_2x"].append((100 * (final_b - best[0]), best[1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the shipped set the runs were trained on")
    ap.add_argument("--runs", nargs="+", required=True, help="demo cache run directories (one per seed)")
    ap.add_argument("--small", nargs="+", required=True, help="small-tier directory names inside each run")
    ap.add_argument("--large", default="large_l6_lr0.0001", help="final-tier directory name inside each run")
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5, 3.0])
    ap.add_argument("--halvings", type=int, default=60)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--out", help="append one JSON line per run and small tier here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cached_tier, demo_dev_split
    from cascade_rt.info import source_commit

    dv = demo_dev_split(args.data, args.max_len)
    labels = np.array(dv.labels)
    pooled = {r: {"per_target": {t: [] for t in args.targets}, "at_2x": []} for r in RULES}
    for run in map(Path, args.runs):
        _, p_large, c_large = cached_tier(run / args.large, dv)
        for s in args.small:
            _, p_small, c_small = cached_tier(run / s, dv)
            res = study(p_small.numpy(), p_large.numpy(), labels, c_small, c_large, args.targets, args.halvings, seed=0)
            rec = {"data": args.data, "run": run.name, "small": s, "dev_rows": len(labels),
                   "halvings": args.halvings, "commit": source_commit(), "rules": {}}
            for name, r in res.items():
                pt = {str(t): {"drop": float(np.mean([x[0] for x in v])),
                               "speed_over_target": float(np.mean([x[1] for x in v])),
                               "below_0.97_target": float(np.mean([x[1] < 0.97 for x in v]))}
                      for t, v in r["per_target"].items()}
                a2 = r["at_2x"]
                rec["rules"][name] = {"per_target": pt,
                                      "at_2x": {"drop": float(np.mean([x[0] for x in a2])) if a2 else None,
                                                "speedup": float(np.mean([x[1] for x in a2])) if a2 else None,
                                                "halvings_with_a_point": len(a2)}}
                for t, v in r["per_target"].items():
                    pooled[name]["per_target"][t] += v
                pooled[name]["at_2x"] += a2
            print(f"{run.name} {s}: " + "; ".join(
                f"{n.split(' (')[0]}: at >= 2x {v['at_2x']['drop']:.2f} pt" for n, v in rec["rules"].items()
                if v["at_2x"]["drop"] is not None), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(f"\n{args.data}, dev halves ({len(labels) // 2} rows each), {args.halvings} halvings x "
          f"{len(args.runs)} runs x {len(args.small)} small tiers; drop below the final tier on the held-out half")
    print(f"{'rule':34s} " + " ".join(f"{t:>18g}x" for t in args.targets) + "   best at >= 2x")
    for name, r in pooled.items():
        cells = []
        for t in args.targets:
            v = np.array(r["per_target"][t])
            cells.append(f"{v[:, 0].mean():6.2f} pt @{v[:, 1].mean():.2f}t")
        a2 = np.array(r["at_2x"])
        print(f"{name:34s} " + " ".join(f"{c:>19s}" for c in cells)
              + f"   {a2[:, 0].mean():.2f} pt @{a2[:, 1].mean():.2f}x ({len(a2)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
