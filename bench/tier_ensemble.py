"""Does a row that reaches a later tier gain from the earlier tiers' probabilities too?

A row that goes on past tier 0 has tier 0's probabilities already; the later tier's decision
can pool them with its own at no measurable cost: log-linear pooling, the later tier's
log-probabilities with weight 1 and the running pool of the earlier ones with weight ``w``
(``w = 0``: the plain cascade). This measures it on the dev split alone (the test split is not
read): dev rows split at random into halves; on one half the thresholds (and, for the
"chosen" variant, ``w`` from a grid) are chosen for each target, and the other half scores
them, ``--halvings`` times. Per variant and target: the held-out accuracy below the final
tier alone (points), the margin over the most accurate single model at least as fast
(analytic FLOPs, held-out rows), and the most accurate held-out point at >= 2x.

The models come from ``cascade-rt demo``'s cache (``cached: <dir>`` in its output). Made the
committed ``bench/results/tier_ensemble.jsonl`` and ``.txt`` (after ``cascade-rt demo --data
<set> --seeds 0 1 2 --train-only`` at c93bcac)::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      for m in dao_k2_m0.5_lam0.1 ce; do
        .venv/bin/python bench/tier_ensemble.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
          --small small_l2_lr0.0003_e2_we_final${tag}_$m --singles small_l{2,3,4}_lr0.0003_e2_we_final${tag}_ce \\
          --halvings 30 --variants 0 0.5 1 2 --out bench/results/tier_ensemble.jsonl
      done
    done

``--variants chosen`` picks the weight per target on the choosing half too (from 0 to 2); on
amazon and nyt seed 0 it was no better than a fixed weight.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


def pooled(probs: list[np.ndarray], w: float) -> list[np.ndarray]:
    """Each stage's probabilities as a cascade with ``pool_weight=w`` tests them."""
    import torch

    from cascade_rt.evaluate import pooled_stage_probs

    return [p.numpy().astype(np.float64) for p in pooled_stage_probs([torch.as_tensor(p) for p in probs], w)]


def study(stage_probs, labels, stage_costs, singles, targets, halvings, seed, variants):
    """Per variant: per target lists of (drop, speed/target, margin over singles); at_2x list."""
    import torch

    from cascade_rt.evaluate import row_costs, search_thresholds, simulate_exits

    rng = np.random.default_rng(seed)
    n = len(labels)
    cum = row_costs(stage_costs)
    full = np.asarray(stage_costs[-1])
    out = {v: {"per_target": {t: [] for t in targets}, "at_2x": [], "w": []} for v in variants}
    for _ in range(halvings):
        perm = rng.permutation(n)
        A, B = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
        yb = labels[B]
        final_b = float((stage_probs[-1][B].argmax(-1) == yb).mean())
        # singles on the held-out half: (analytic speed-up, accuracy)
        single_pts = [(full[B].sum() / c[B].sum(), float((p[B].argmax(-1) == yb).mean())) for p, c in singles]
        for v in variants:
            best = None
            for t in targets:
                cands = GRID if v == "chosen" else [float(v)]
                pick = None
                for w in cands:
                    pp = [torch.as_tensor(p[A]) for p in pooled(stage_probs, w)]
                    ths, acc, _ = search_thresholds(pp, labels[A], cum[:, A], float(full[A].sum()), target_speedup=t)
                    if pick is None or acc > pick[0] + 1e-12:
                        pick = (acc, w, ths)
                _, w, ths = pick
                stage, pred, _ = simulate_exits([torch.as_tensor(p[B]) for p in pooled(stage_probs, w)], ths)
                acc = float((pred == yb).mean())
                sp = full[B].sum() / cum[stage, B].sum()
                fast = [a for s, a in single_pts if s >= sp]
                margin = 100 * (acc - max(fast)) if fast else None
                out[v]["per_target"][t].append((100 * (final_b - acc), sp / t, margin))
                out[v]["w"].append(w)
                if sp >= 2.0 and (best is None or (acc, sp) > best):
                    best = (acc, sp)
            if best is not None:
                out[v]["at_2x"].append((100 * (final_b - best[0]), best[1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="demo cache run directories (one per seed)")
    ap.add_argument("--small", nargs="+", required=True, help="the cascade's earlier tiers, smallest first")
    ap.add_argument("--large", default="large_l6_lr0.0001")
    ap.add_argument("--singles", nargs="*", default=[], help="single-model directories to compare against")
    ap.add_argument("--variants", nargs="+", default=["0", "0.5", "1", "chosen"])
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    ap.add_argument("--halvings", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cached_tier, demo_dev_split
    from cascade_rt.info import source_commit

    dv = demo_dev_split(args.data, args.max_len)
    labels = np.array(dv.labels)
    total = {v: {"per_target": {t: [] for t in args.targets}, "at_2x": [], "w": []} for v in args.variants}
    for run in map(Path, args.runs):
        stages = [cached_tier(run / d, dv) for d in [*args.small, args.large]]
        probs = [s[1].numpy().astype(np.float64) for s in stages]
        costs = [s[2] for s in stages]
        singles = [(p.numpy().astype(np.float64), c) for _, p, c in (cached_tier(run / d, dv) for d in args.singles)]
        ens_all = {w: float((pooled(probs, w)[-1].argmax(-1) == labels).mean()) for w in GRID}
        res = study(probs, labels, costs, singles, args.targets, args.halvings, 0, args.variants)
        rec = {"data": args.data, "run": run.name, "small": args.small, "dev_rows": len(labels),
               "halvings": args.halvings, "commit": source_commit(), "pooled_final_on_all_rows": ens_all,
               "variants": {}}
        for v, r in res.items():
            rec["variants"][v] = {str(t): {"drop": float(np.mean([x[0] for x in xs])),
                                           "speed_over_target": float(np.mean([x[1] for x in xs])),
                                           "margin_over_singles": float(np.mean([x[2] for x in xs if x[2] is not None]))
                                           if any(x[2] is not None for x in xs) else None}
                                  for t, xs in r["per_target"].items()}
            rec["variants"][v]["at_2x_drop"] = float(np.mean([x[0] for x in r["at_2x"]])) if r["at_2x"] else None
            rec["variants"][v]["w_mean"] = float(np.mean(r["w"]))
            for t, xs in r["per_target"].items():
                total[v]["per_target"][t] += xs
            total[v]["at_2x"] += r["at_2x"]
            total[v]["w"] += r["w"]
        print(f"{run.name}: final tier pooled with the earlier ones on all dev rows: "
              + ", ".join(f"w={w:g} {a:.4f}" for w, a in ens_all.items()), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    print(f"\n{args.data}, dev halves ({len(labels) // 2} rows each), {args.halvings} halvings x {len(args.runs)} runs;"
          f" per target: drop below the final tier / margin over the best single at least as fast (points)")
    print(f"{'w':8s} " + " ".join(f"{t:>16g}x" for t in args.targets) + "   drop at >= 2x   mean w")
    for v, r in total.items():
        cells = []
        for t in args.targets:
            xs = r["per_target"][t]
            m = [x[2] for x in xs if x[2] is not None]
            cells.append(f"{np.mean([x[0] for x in xs]):6.2f} / {np.mean(m) if m else float('nan'):+5.2f}")
        a2 = [x[0] for x in r["at_2x"]]
        print(f"{v:8s} " + " ".join(f"{c:>17s}" for c in cells) + f"   {np.mean(a2):6.2f}        {np.mean(r['w']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
