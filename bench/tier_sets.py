"""Which tiers should a cascade have? Two-tier against three-tier cascades, on held-out dev rows.

The demo's cascade is a 2-layer tier before the 6-layer final tier. This compares that with
other sets of the models the demo trains (the 2-, 3- and 4-layer models alone can serve as
tiers: ``cascade-rt demo --small-layers 2 4`` builds the 2+4+6 cascade from them), on the dev
split alone: dev rows are split at random into halves, thresholds are chosen on one half
(``search_thresholds``, default rule) for each target and scored on the other, ``--halvings``
times. Per tier set it reports, as the demo's goals read a sweep but with analytic
speed-ups: the most accurate held-out point at >= 2x (points below the final tier), and the
worst margin between 1.5x and 2.5x over the best single model at least as fast (the 2-, 3-
and 4-layer models, scored on the same half).

Other models of the same run directories join as named tiers (``--tier NAME=DIR``; ``--single
NAME`` also counts one as a single model), ``--sets`` picks the tier sets (default: those
below), and ``--pool-weight`` scores pooling cascades (``CascadeBert(pool_weight=)``). Small
tiers from the paraphrase MiniLM (``cascade-rt demo --small-init paraphrase --train-only``)
against the demo's, made ``bench/results/tier_sets_paraphrase.{jsonl,txt}``::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      for w in 0 1; do
        .venv/bin/python bench/tier_sets.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
          --model-pattern small_l{}_lr0.0003_e2_we_final${tag}_ce \\
          --dao small_l2_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.1 \\
          --tier 2p=small_l2_lr0.0003_e2_we_paraphrase${tag}_ce --single 2p \\
          --tier 2pd=small_l2_lr0.0003_e2_we_paraphrase${tag}_dao_k2_m0.5_lam0.1 \\
          --sets 2+6 2d+6 2p+6 2pd+6 --pool-weight $w --out bench/results/tier_sets_paraphrase.jsonl
      done
    done

A 1-layer first tier (``cascade-rt demo --data <set> --seeds 0 1 2 --small-layers 1
--train-only``; on movies ``--small-layers 1 4`` also trained the 4-layer DAO tier) made
``bench/results/tier_sets_l1.{jsonl,txt}`` (amazon and nyt without ``--tier 4d`` and its set)::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      .venv/bin/python bench/tier_sets.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
        --model-pattern small_l{}_lr0.0003_e2_we_final${tag}_ce \\
        --dao small_l2_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.1 \\
        --tier 1=small_l1_lr0.0003_e2_we_final${tag}_ce --tier 1d=small_l1_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.1 \\
        --tier 4d=small_l4_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.1 \\
        --sets 2+6 2d+6 1+6 1d+6 1+2+6 1+4+6 1d+4d+6 --out bench/results/tier_sets_l1.jsonl
    done

The demo's final tier against one trained two more epochs with the single models' recipe
(``stage2_l6_lr0.0003_e2_we``, trained as ``bench/tier_accuracy.py``'s docstring shows; the
small tiers and singles unchanged) made ``bench/results/tier_sets_stage2.{jsonl,txt}``::

    C=~/.cache/cascade_rt/demo
    for L in large_l6_lr0.0001 stage2_l6_lr0.0003_e2_we; do
      .venv/bin/python bench/tier_sets.py --data movies --runs $C/movies_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
        --model-pattern small_l{}_lr0.0003_e2_we_final_ce --dao small_l2_lr0.0003_e2_we_final_dao_k2_m0.5_lam0.1 \\
        --large $L --sets 2+6 2d+6 2+4+6 --out bench/results/tier_sets_stage2.jsonl
    done

Models come from ``cascade-rt demo``'s cache, as in ``bench/threshold_rule.py``. Made the
committed ``bench/results/tier_sets.jsonl`` (after ``cascade-rt demo --data <set> --seeds
0 1 2`` with the defaults of 7db4ebe, when DAO's weight was 0.5)::

    C=~/.cache/cascade_rt/demo
    for s in movies amazon tweets nyt; do
      if [ $s = movies ]; then tag=; else tag=_T2_ushipped_fd1; fi
      m=small_l{}_lr0.0003_e2_we_final${tag}_ce
      .venv/bin/python bench/tier_sets.py --data $s --runs $C/${s}_s{0,1,2}_len64_e2_fw_t2_bf16_ms500 \\
        --model-pattern $m --dao small_l2_lr0.0003_e2_we_final${tag}_dao_k2_m0.5_lam0.5 \\
        --out bench/results/tier_sets.jsonl
    done
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# tier sets by depth; "2d" is the 2-layer DAO tier; 6 is the final tier
SETS = [("2", "6"), ("2", "4", "6"), ("2", "3", "6"), ("3", "6"), ("2d", "6"), ("2d", "4", "6")]
SINGLES = ("2", "3", "4")
LARGE = "large_l6_lr0.0001"  # the demo's final tier


def evaluate(probs, cost, labels, targets, halvings, seed=0, sets=SETS, singles=SINGLES, pool_weight=0.0):
    """probs / cost: {tier name: (N, C) array / (N,) array}. Returns {set: [(drop at >= 2x or
    nan, worst single margin or nan), ...]} over halvings, in points (a set's later tiers
    decide on pooled probabilities where ``pool_weight`` > 0)."""
    import torch

    from cascade_rt.evaluate import pooled_stage_probs, row_costs, search_thresholds, simulate_exits

    rng = np.random.default_rng(seed)
    n = len(labels)
    out = {s: [] for s in sets if all(k in probs for k in s)}
    stage = {s: [p.numpy() for p in pooled_stage_probs([torch.as_tensor(probs[k]) for k in s], pool_weight)]
             for s in out}
    for _ in range(halvings):
        perm = rng.permutation(n)
        A, B = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
        full_a, full_b = cost["6"][A].sum(), cost["6"][B].sum()
        final_b = (probs["6"][B].argmax(1) == labels[B]).mean()
        singles_b = [((probs[k][B].argmax(1) == labels[B]).mean(), full_b / cost[k][B].sum()) for k in singles]
        for tiers in out:
            cum_a = row_costs([cost[k][A] for k in tiers])
            cum_b = row_costs([cost[k][B] for k in tiers])
            pts = []
            for t in targets:
                ths, _, _ = search_thresholds([torch.as_tensor(p[A]) for p in stage[tiers]], labels[A], cum_a,
                                              full_a, target_speedup=t, grid=40)
                st, pred, _ = simulate_exits([torch.as_tensor(p[B]) for p in stage[tiers]], ths)
                pts.append(((pred == labels[B]).mean(), full_b / cum_b[st, np.arange(len(B))].sum()))
            at2 = [a for a, s in pts if s >= 2.0]
            margins = [a - max(sa for sa, ss in singles_b if ss >= s) for a, s in pts
                       if 1.5 <= s <= 2.5 and any(ss >= s for _, ss in singles_b)]
            out[tiers].append((100 * (final_b - max(at2)) if at2 else np.nan,
                               100 * min(margins) if margins else np.nan))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="demo cache run directories (one per seed)")
    ap.add_argument("--model-pattern", required=True,
                    help="directory name of the k-layer no-DAO models, '{}' standing for k (2, 3, 4)")
    ap.add_argument("--dao", help="directory name of the 2-layer DAO tier")
    ap.add_argument("--large", default=LARGE, help="directory name of the final tier")
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5, 3.0])
    ap.add_argument("--halvings", type=int, default=20)
    ap.add_argument("--tier", action="append", default=[], metavar="NAME=DIR",
                    help="another model of each run directory, as tier NAME (repeatable)")
    ap.add_argument("--single", action="append", default=[], metavar="NAME",
                    help="count tier NAME as a single model too (repeatable)")
    ap.add_argument("--sets", nargs="+", default=None,
                    help="tier sets as NAME+NAME+... (default: " + " ".join("+".join(s) for s in SETS) + ")")
    ap.add_argument("--pool-weight", type=float, default=0.0, help="score pooling cascades with this weight")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cached_tier, demo_dev_split, name_dir
    from cascade_rt.info import source_commit

    named = dict(name_dir(t, "--tier", ap.error, reserved=(*SINGLES, "2d", "6")) for t in args.tier)
    sets = SETS if args.sets is None else [tuple(s.split("+")) for s in args.sets]
    known = {*SINGLES, "6", *named, *(["2d"] if args.dao else [])}
    bad = [n for s in sets for n in s if n not in known] + [n for n in args.single if n not in named]
    if bad:
        raise SystemExit(f"unknown tier name(s) {sorted(set(bad))}: known {sorted(known)}")
    singles = (*SINGLES, *args.single)
    dv = demo_dev_split(args.data, args.max_len)
    labels = np.array(dv.labels)
    pooled: dict = {}
    for run in map(Path, args.runs):
        dirs = {k: run / args.model_pattern.format(k) for k in SINGLES} | {"6": run / args.large}
        if args.dao:
            dirs["2d"] = run / args.dao
        dirs |= {k: run / d for k, d in named.items()}
        probs, cost = {}, {}
        for k, d in dirs.items():
            _, p, cost[k] = cached_tier(d, dv)
            probs[k] = p.numpy()
        res = evaluate(probs, cost, labels, args.targets, args.halvings, sets=sets, singles=singles,
                       pool_weight=args.pool_weight)
        rec = {"data": args.data, "run": run.name, "halvings": args.halvings, "dev_rows": len(labels),
               "commit": source_commit(), "sets": {}}
        if named or args.pool_weight:
            rec |= {"tiers": named, "singles": list(singles), "pool_weight": args.pool_weight}
        if args.large != LARGE:
            rec["large"] = args.large
        for tiers, v in res.items():
            v = np.array(v, dtype=float)
            name = "+".join(tiers)
            rec["sets"][name] = {"drop_at_2x": float(np.nanmean(v[:, 0])),
                                 "worst_single_margin": float(np.nanmean(v[:, 1])),
                                 "halvings_with_margin": int(np.isfinite(v[:, 1]).sum())}
            pooled.setdefault(name, []).append(v)
        print(run.name + ": " + "; ".join(f"{k} {x['drop_at_2x']:.2f} / {x['worst_single_margin']:.2f}"
                                          for k, x in rec["sets"].items()), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    print(f"\n{args.data}: dev halves ({len(labels) // 2} rows), {args.halvings} halvings x {len(args.runs)} runs; "
          "points ('2d': the 2-layer DAO tier" + "".join(f"; {k}: {d}" for k, d in named.items())
          + (f"; singles {', '.join(singles)}" if args.single else "")
          + (f"; pool weight {args.pool_weight:g}" if args.pool_weight else "")
          + (f"; final tier {args.large}" if args.large != LARGE else "") + ")")
    print(f"{'tiers (layers)':16s} {'below final at >= 2x':>22s} {'worst margin over a single, 1.5-2.5x':>38s}")
    for name, vs in pooled.items():
        v = np.concatenate(vs)
        print(f"{name:16s} {np.nanmean(v[:, 0]):22.2f} {np.nanmean(v[:, 1]):38.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
