"""The main job end to end on a few rows (real data, real weights, tiny training)."""
import json
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "cascade_rt.cli", "demo", "--limit", "32", "--large-layers", "2",
           "--folds", "2", "--targets", "2", "--quiet", "--out", str(tmp_path / "out"),
           "--cache", str(tmp_path / "cache")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    points = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert {p["method"] for p in points} == {"full", "cascade", "cascade_no_dao", "early_exit"}
    keys = {"method", "thresholds", "accuracy", "ece", "dis", "speedup_analytic", "speedup_measured", "rows_per_tier"}
    for p in points:
        assert keys <= set(p)
        assert 0 <= p["accuracy"] <= 1 and p["speedup_measured"] > 0
        assert p["rows_per_tier"][0] == 32
        if p["method"] != "full":  # median of 3 warm, alternating passes, with the spread
            assert len(p["speedup_measured_all"]) == 3
            assert p["speedup_measured_min"] <= p["speedup_measured"] <= p["speedup_measured_max"]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000
    assert "rows per tier" in res.stdout
