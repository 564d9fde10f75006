"""``cascade-rt train`` and ``cascade-rt evaluate`` end to end on a user's CSV (tiny data, real
weights): the trained tiers load in transformers and cascade_rt, the report has its fields and
the saved cascade keeps the chosen thresholds."""
import csv
import json
import subprocess
import sys

import pytest


def _cli(*args):
    res = subprocess.run([sys.executable, "-m", "cascade_rt.cli", *map(str, args)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    good = ["a wonderful, moving film", "sharp and funny", "the cast is superb", "i loved every minute"]
    bad = ["a dull, lifeless mess", "painfully slow", "the plot makes no sense", "i want my money back"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(30):
            w.writerow([good[i % 4] + f" ({i})", "pos"])
            w.writerow([bad[i % 4] + f" ({i})", "neg"])
    return path


def test_train_then_evaluate(csv_data, tmp_path):
    from transformers import BertForSequenceClassification

    from cascade_rt import CascadeBert

    dirs = []
    for layers in (1, 2):
        out = tmp_path / f"tier_l{layers}"
        _cli("train", "--data", csv_data, "--layers", layers, "--out", out, "--epochs", 1, "--lr", 3e-4,
             "--quiet")
        assert BertForSequenceClassification.from_pretrained(out).config.num_hidden_layers == layers
        dirs.append(out)
    report_path, saved = tmp_path / "report.json", tmp_path / "cascade"
    stdout = _cli("evaluate", *dirs, "--data", csv_data, "--target-speedup", 1.2, "--json", report_path,
                  "--save", saved, "--timing-runs", 2, "--pool-weight", 1)
    assert "test:" in stdout
    report = json.loads(report_path.read_text())
    assert {"thresholds", "accuracy", "accuracy_last_tier", "f1", "ece", "speedup_analytic",
            "speedup_measured", "rows_per_tier"} <= set(report)
    assert report["rows_per_tier"][0] == 6  # the test split: 10% of 60 rows
    assert 0.0 <= report["accuracy"] <= 1.0 and report["speedup_measured"] > 0
    assert len(report["speedup_measured_all"]) == 2 == report["timing_runs"] and report["timing_warmup"] == 1
    assert report["speedup_measured_min"] <= report["speedup_measured"] <= report["speedup_measured_max"]
    loaded = CascadeBert.from_pretrained(saved)
    assert loaded.thresholds == pytest.approx(report["thresholds"])
    assert loaded.pool_weight == report["pool_weight"] == 1.0  # chosen for, and saved with, pooling


def test_train_learns_from_a_teacher_and_unlabelled_text(csv_data, tmp_path):
    """--teacher with --unlabeled: the tier trains on the labelled rows and the file's texts
    (its own left out), learning the teacher's predictions on the latter; without a teacher,
    or with a bad file, one error that says so."""
    teacher = tmp_path / "teacher"
    _cli("train", "--data", csv_data, "--layers", 1, "--out", teacher, "--epochs", 1, "--lr", 3e-4, "--quiet")
    texts = tmp_path / "texts.csv"
    texts.write_text('text\nan uneven but likeable film\na waste of a good cast\n"a wonderful, moving film (0)"\n')
    out = tmp_path / "student"
    stdout = _cli("train", "--data", csv_data, "--layers", 1, "--out", out, "--epochs", 1, "--lr", 3e-4,
                  "--teacher", teacher, "--distill", 0.5, "--unlabeled", texts, "--quiet")
    assert "unlabeled text: 2 rows" in stdout  # the data set's own text left out
    saved = json.loads((out / "cascade_rt_train.json").read_text())
    assert saved["distill"] == 0.5
    for extra, msg in ((["--unlabeled", texts], "give --teacher"),
                       (["--teacher", teacher, "--unlabeled", tmp_path / "none.csv"], "neither 'shipped' nor a file"),
                       (["--distill", "2", "--teacher", teacher], "--distill must be in")):
        res = subprocess.run([sys.executable, "-m", "cascade_rt.cli", "train", "--data", str(csv_data), "--out",
                              str(tmp_path / "x"), *map(str, extra)], capture_output=True, text=True, timeout=600)
        assert res.returncode != 0 and msg in res.stderr, res.stderr[-2000:]
