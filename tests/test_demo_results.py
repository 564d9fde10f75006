"""bench/demo_merge.py (seeds run apart joined into one result) and bench/demo_summary.py (the
README tables), on demo outputs built by hand with per-row correctness."""
import json

import numpy as np
import pytest
from conftest import load_bench

from cascade_rt.demo import pack_correct


def _run(tmp_path, name, seeds, rng):
    """A demo output directory (sweep.json, meta.json) of random per-row answers on 300 rows."""
    pts = []
    for s in seeds:
        full = rng.random(300) < 0.85
        for method, sp, target, layers, acc in (("full", 1.0, None, None, None), ("cascade", 2.1, 2.0, None, 0.84),
                                                ("cascade_no_dao", 2.3, 2.0, None, 0.86),
                                                ("early_exit", 1.5, 1.5, None, 0.8), ("early_exit", 2.6, 2.5, None, 0.7),
                                                ("single", 2.4, None, 3, 0.83)):
            c = full if acc is None else rng.random(300) < acc
            pts.append({"method": method, "accuracy": float(c.mean()), "speedup_measured": sp, "speedup_analytic": sp,
                        "ece": 0.1, "dis": None, "seed": s, "target_speedup": target, "layers": layers,
                        "thresholds": [], "rows_per_tier": [300] if layers or acc is None else [300, 120, 40],
                        "correct": pack_correct(c)})
    d = tmp_path / name
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps(pts))
    (d / "meta.json").write_text(json.dumps({"data": "toy", "large_layers": 6, "seeds": seeds, "train_rows": 1234,
                                             "commit": name}))
    return pts


def test_merge_then_summary_show_intervals(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    a = _run(tmp_path, "a", [0], rng)
    b = _run(tmp_path, "b", [1, 2], rng)
    merge = load_bench("demo_merge")
    assert merge.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    summary = json.loads((tmp_path / "m" / "aggregate.json").read_text())
    g = summary["goals"]["cascade"]["drop_vs_full"]
    drops = [100 * (next(p for p in pts if p["method"] == "full" and p["seed"] == s)["accuracy"]
                    - next(p for p in pts if p["method"] == "cascade" and p["seed"] == s)["accuracy"])
             for pts, seeds in ((a, [0]), (b, [1, 2])) for s in seeds]
    assert g["mean"] == pytest.approx(np.mean(drops)) and g["seeds"] == 3
    assert g["ci95"][0] < g["mean"] < g["ci95"][1]
    assert set(summary["goals_per_seed"]) == {"0", "1", "2"}
    assert all("ci95" in summary["goals_per_seed"][s]["cascade"] for s in ("0", "1", "2"))
    assert "95% CI" in (tmp_path / "m" / "table.txt").read_text()

    res = tmp_path / "results"
    res.mkdir()
    (res / "demo_toy_aggregate.json").write_text((tmp_path / "m" / "aggregate.json").read_text())
    (res / "demo_toy_meta.json").write_text((tmp_path / "m" / "meta.json").read_text())
    summ = load_bench("demo_summary")
    monkeypatch.setattr(summ, "RESULTS", res)
    capsys.readouterr()
    assert summ.main(["toy"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "cascade, DAO" in x)
    lo, hi = g["ci95"]
    assert f"{g['mean']:.1f} pt ± {g['std']:.1f} [{lo:.1f}, {hi:.1f}]" in row
    assert row.startswith("| toy (1,234, 3) |")
