"""Summarise a DAO sweep of ``bench/tier_recipe.py`` runs (dev split only): margins, weights, pairs.

Reads the JSON lines that ``tier_recipe.py`` wrote for one small-tier recipe over several
training seeds, each seed once without DAO and once per DAO margin (all runs with
``--difficulty-cache``, so every line has the tier's dev DIS on that seed's labels, and
``--large`` with the same final tier, so every line has the two-tier cascade). For each
margin it prints the mean and std over seeds of the paired differences against no-DAO on the
same seed (a variant: margin, ``--lam`` and ``--pairs``): the small tier's dev accuracy, the cascade's dev accuracy at ``--target``
(thresholds chosen on dev, ``search_thresholds``) and the dev DIS (lower is better), then how
many seeds each difference favours DAO in. Accuracies in points, DIS in points of share.
Made the committed ``bench/results/dao_margin_movies.txt``::

    .venv/bin/python bench/dao_margin.py bench/results/dao_margin_movies.jsonl

and ``bench/results/dao_variants_movies.txt`` (the demo's recipe: small tier cut from the
trained final tier, ``--init-from``; the demo's cached final tiers and difficulty labels)::

    .venv/bin/python bench/dao_margin.py bench/results/dao_variants_movies.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _variant(rec: dict):
    """None for no DAO, else (margin, lam, pairs)."""
    if not rec.get("dao"):
        return None
    return float(rec["margin"]), float(rec.get("lam", 0.5)), rec.get("pairs", "sampled")


def _label(v) -> str:
    if v is None:
        return "no DAO"
    m, lam, pairs = v
    return f"{m:g}" + (f" lam {lam:g}" if lam != 0.5 else "") + (" all pairs" if pairs != "sampled" else "")


def load(path) -> dict:
    """``{seed: {variant or None (no DAO): record}}``, a variant being (margin, lam, pairs); a
    (seed, variant) run twice keeps the last line."""
    runs: dict = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        rec = r["recipe"]
        key = _variant(rec)
        runs.setdefault(int(rec["seed"]), {})[key] = r
    return runs


# settings that may differ between seeds (each seed its own trained final tier) but not between
# the runs of one seed
PER_SEED = ("large", "init_from", "teacher")


def _recipe_key(r: dict) -> tuple:
    skip = {"seed", "dao", "margin", "lam", "pairs", "difficulty_cache", *PER_SEED}
    return tuple(sorted((k, json.dumps(v)) for k, v in r["recipe"].items() if k not in skip))


def cascade_accuracy(r: dict, target: float) -> float:
    for p in r.get("cascade", []):
        if abs(p["target"] - target) < 1e-9:
            return p["dev_accuracy"]
    raise ValueError(f"seed {r['recipe']['seed']}: no cascade point at target {target} "
                     "(run with --large and --targets)")


def summarise(runs: dict, target: float = 2.0) -> tuple[list[dict], str]:
    """Rows of paired differences per margin and the table as text."""
    recipes = {_recipe_key(r) for by in runs.values() for r in by.values()}
    if len(recipes) > 1:
        raise ValueError(f"the runs mix {len(recipes)} recipes (beyond seed and DAO settings); summarise one at a time")
    for s, by in runs.items():
        for k in PER_SEED:
            seen = {json.dumps(r["recipe"].get(k)) for r in by.values()}
            if len(seen) > 1:
                raise ValueError(f"seed {s}: its runs differ in {k} ({', '.join(sorted(seen))}); they must share it")
    missing = [s for s, by in runs.items() if None not in by]
    if missing:
        raise ValueError(f"seeds {missing} have no no-DAO run to pair with")
    for s, by in runs.items():
        for m, r in by.items():
            if r.get("dev_dis") is None:
                raise ValueError(f"seed {s} {_label(m)}: no dev_dis (run tier_recipe.py with --difficulty-cache)")
    variants = sorted({m for by in runs.values() for m in by if m is not None},
                      key=lambda v: (-v[0], -v[1], v[2] != "sampled", v[2]))
    rows = []

    def metrics(r):
        return (100 * r["dev_accuracy"], 100 * cascade_accuracy(r, target), 100 * r["dev_dis"])

    base = {s: metrics(by[None]) for s, by in runs.items()}
    rows.append({"margin": None, "label": _label(None), "seeds": sorted(runs), "abs": np.array(list(base.values()))})
    for v in variants:
        seeds = sorted(s for s, by in runs.items() if v in by)
        vals = np.array([metrics(runs[s][v]) for s in seeds])
        diff = vals - np.array([base[s] for s in seeds])
        rows.append({"margin": v[0], "lam": v[1], "pairs": v[2], "label": _label(v), "seeds": seeds, "abs": vals,
                     "diff": diff})

    def ms(x):
        return f"{x.mean():6.2f} ± {x.std(ddof=1):4.2f}" if len(x) > 1 else f"{x.mean():6.2f}       "

    head = (f"{'DAO margin':>22} | {'seeds':>5} | {'small acc':>14} | {'cascade @' + format(target, 'g') + 'x':>14} | "
            f"{'DIS':>14} || {'d small acc':>14} | {'d cascade':>14} | {'d DIS':>14} | wins (acc>=, casc>, DIS<)")
    lines = [f"dev split; mean ± std over seeds (std with n-1); d = paired difference against no-DAO on the same "
             f"seed, in points (DIS: points of share, lower is better)", head, "-" * len(head)]
    for row in rows:
        a = row["abs"]
        cells = f"{row['label']:>22} | {len(row['seeds']):>5} | {ms(a[:, 0])} | {ms(a[:, 1])} | {ms(a[:, 2])}"
        if row["margin"] is not None:
            d = row["diff"]
            n = len(row["seeds"])
            wins = (f"{int((d[:, 0] >= 0).sum())}/{n}, {int((d[:, 1] > 0).sum())}/{n}, "
                    f"{int((d[:, 2] < 0).sum())}/{n}")
            cells += f" || {ms(d[:, 0])} | {ms(d[:, 1])} | {ms(d[:, 2])} | {wins}"
        lines.append(cells)
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", nargs="?", default=str(Path(__file__).parent / "results" / "dao_margin_movies.jsonl"))
    p.add_argument("--target", type=float, default=2.0, help="the cascade's target speed-up to compare at")
    args = p.parse_args(argv)
    try:
        _, text = summarise(load(args.log), args.target)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
