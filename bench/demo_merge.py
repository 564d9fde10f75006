"""Join ``cascade-rt demo`` runs of the same data and settings but different training seeds
(e.g. seeds trained and evaluated at different times) into one result, as ``--seeds`` would
write it: ``sweep.json`` (every point, with its seed), ``aggregate.json`` (mean and std per
method and target, the goals per seed and over seeds), ``table.txt``, ``meta.json`` (each
run's meta under ``runs``) and ``sweep.png`` (without the reliability panel)::

    .venv/bin/python bench/demo_merge.py out_seed0 out_seeds12 --out demo_out

Refuses runs whose settings differ (anything in meta.json but seeds, times, load and commit)
or that share a seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PER_RUN = {"seeds", "seconds_per_seed", "wall_seconds", "loadavg_at_start", "commit", "threads", "note"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="demo output directories (sweep.json and meta.json)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from cascade_rt.demo import _aggregate_table, _goals_text, _plot, aggregate, summarize_goals
    from cascade_rt.evaluate import reliability_bins

    metas = [json.loads((Path(r) / "meta.json").read_text()) for r in args.runs]
    points = [pt for r in args.runs for pt in json.loads((Path(r) / "sweep.json").read_text())]
    same = [{k: v for k, v in m.items() if k not in PER_RUN} for m in metas]
    for r, m in zip(args.runs[1:], same[1:]):
        diff = sorted(k for k in set(m) | set(same[0]) if m.get(k) != same[0].get(k))
        if diff:
            raise SystemExit(f"{r}: settings differ from {args.runs[0]}: {diff}")
    seeds = [s for m in metas for s in m["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"a seed appears in more than one run: {seeds}")
    per_seed, over_seeds = summarize_goals(points, seeds)
    summary = {"aggregate": aggregate(points), "goals_per_seed": per_seed, "goals": over_seeds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n")
    (out / "aggregate.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = (_aggregate_table(summary["aggregate"], len(seeds)) + "\n\n"
            + _goals_text(summary["goals"], over_seeds=len(seeds) > 1))
    (out / "table.txt").write_text(text + "\n")
    meta = {**same[0], "seeds": seeds, "runs": metas}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _plot(summary["aggregate"], {}, out / "sweep.png", reliability_bins, metas[0]["large_layers"])
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
