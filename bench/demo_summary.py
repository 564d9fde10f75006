"""README tables from the demo's committed results (``bench/results/demo_<data>_aggregate.json``
and ``demo_<data>_meta.json``, copies of a ``cascade-rt demo`` run's ``aggregate.json`` and
``meta.json``).

Prints, per data set, the issue's goals (mean +- std over the run's seeds, accuracies in
points, and in brackets the 95% bootstrap interval over test rows where the run recorded
per-row correctness): the cascade's drop against the final tier at >= 2x measured speed-up,
its margin over early exit at the same measured speed-up, and its worst margin between 1.5x
and 2.5x over the best single model at least as fast; then the headline sweep (mean +- std
per method and target)::

    .venv/bin/python bench/demo_summary.py movies amazon tweets nyt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
NAMES = {"cascade": "cascade, DAO", "cascade_no_dao": "cascade, no DAO"}


def _pm(st, unit="", digits=1, seeds=None):
    if st is None or st["mean"] is None:
        return "n/a"
    txt = f"{st['mean']:.{digits}f}{unit}"
    if seeds and seeds > 1:
        txt += f" ± {st['std']:.{digits}f}"
    if st.get("ci95"):
        lo, hi = st["ci95"]
        txt += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if seeds and st.get("seeds") not in (None, seeds):
        txt += f" ({st['seeds']} of {seeds} seeds)"
    return txt


def goals_table(datasets) -> str:
    lines = ["| data (train rows, seeds) | cascade | at >= 2x measured | drop vs final tier (goal <= 1) "
             "| above early exit (goal >= 3) | worst margin over single, 1.5-2.5x (goal >= 1) |",
             "|---|---|---|---|---|---|"]
    for d in datasets:
        agg = json.loads((RESULTS / f"demo_{d}_aggregate.json").read_text())
        meta = json.loads((RESULTS / f"demo_{d}_meta.json").read_text())
        n = len(meta["seeds"])
        for m, g in agg["goals"].items():
            met = {k: "n/a" if v is None else ("met" if v else "missed") for k, v in g["met"].items()}
            lines.append(
                f"| {d} ({meta['train_rows']:,}, {n}) | {NAMES[m]} | {_pm(g['speedup_measured_at_2x'], 'x', 2, n)} "
                f"| {_pm(g['drop_vs_full'], ' pt', 1, n)}: {met['within_1pt_of_full_at_2x']} "
                f"| {_pm(g['above_early_exit'], ' pt', 1, n)}: {met['3pt_above_early_exit']} "
                f"| {_pm(g['worst_margin_vs_single'], ' pt', 1, n)}: {met['1pt_above_single_1.5x-2.5x']} |")
    return "\n".join(lines)


def sweep_table(d) -> str:
    from cascade_rt.demo import single_label

    agg = json.loads((RESULTS / f"demo_{d}_aggregate.json").read_text())
    meta = json.loads((RESULTS / f"demo_{d}_meta.json").read_text())
    n = len(meta["seeds"])

    def f(r, k, scale, digits, unit=""):
        m, s = r[k + "_mean"], r[k + "_std"]
        if m is None:
            return ""
        return f"{m * scale:.{digits}f}{unit}" + (f" ± {s * scale:.{digits}f}" if n > 1 else "")

    names = {"full": f"{meta['large_layers']}-layer tier alone", "cascade": "cascade, DAO",
             "cascade_no_dao": "cascade, no DAO", "early_exit": "early exit", "single": "single model"}
    lines = ["| method | target / depth | test acc. (%) | drop (pt) | measured speed-up | analytic | ECE | DIS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in agg["aggregate"]:
        lab = (single_label(r) if r["method"] == "single"
               else "" if r["target_speedup"] is None else f"{r['target_speedup']:.1f}x")
        lines.append(f"| {names[r['method']]} | {lab} | {f(r, 'accuracy', 100, 1)} | {f(r, 'drop', 100, 1)} "
                     f"| {f(r, 'speedup_measured', 1, 2, 'x')} | {f(r, 'speedup_analytic', 1, 2, 'x')} "
                     f"| {f(r, 'ece', 1, 3)} | {f(r, 'dis', 1, 3)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+")
    p.add_argument("--sweep", default=None, help="also print this data set's sweep table")
    args = p.parse_args(argv)
    print(goals_table(args.datasets))
    if args.sweep:
        print()
        print(sweep_table(args.sweep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
