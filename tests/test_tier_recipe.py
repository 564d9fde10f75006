"""bench/tier_recipe.py on a tiny CSV: a no-DAO tier reports its dev DIS on the difficulty
labels it was given, and those labels do not change how it trains."""
import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from conftest import load_bench



def _recipe():
    return load_bench("tier_recipe")


def _tiny_csv(path: Path) -> Path:
    good = ["a good film", "great acting and a fine story", "i loved it", "warm and funny", "a gem"]
    bad = ["a bad film", "dull and far too long", "i hated it", "cold and flat", "a mess"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow([f"{good[i % 5]} {i}", 1] if i % 2 else [f"{bad[i % 5]} {i}", 0])
    return path


def test_no_dao_tier_reports_dis_on_cached_labels(tmp_path):
    main = _recipe().main
    data = _tiny_csv(tmp_path / "tiny.csv")
    common = ["--data", str(data), "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1",
              "--seed", "0", "--split-seed", "0", "--log", str(tmp_path / "log.jsonl")]
    cache = tmp_path / "diff.json"
    assert main(common + ["--difficulty-cache", str(cache), "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    with_labels, plain = (json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines())
    labels = json.loads(cache.read_text())
    easy_dv = labels["extra"]["dev"]["easy"]
    assert 0 < sum(easy_dv) < len(easy_dv), "the tiny dev split needs easy and hard rows"
    assert with_labels["difficulty"]["train_rows"] == len(labels["easy"])
    assert with_labels["dev_dis"] is not None and 0.0 <= with_labels["dev_dis"] <= 1.0
    assert "dev_dis" not in plain
    # the labels only measure a no-DAO tier: it trains exactly as without them (same weights)
    wa, wb = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert with_labels["dev_accuracy"] == plain["dev_accuracy"]
    assert with_labels["recipe"]["dao"] is False


def test_dao_run_reads_the_cached_labels(tmp_path):
    main = _recipe().main
    data = _tiny_csv(tmp_path / "tiny.csv")
    cache = tmp_path / "diff.json"
    common = ["--data", str(data), "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1",
              "--difficulty-cache", str(cache), "--log", str(tmp_path / "log.jsonl")]
    assert main(common) == 0
    # a DAO run with a very different margin reuses the same labels (so the same easy count)
    assert main(common + ["--dao", "--margin", "0.05"]) == 0
    a, b = (json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines())
    assert a["difficulty"]["easy_train"] == b["difficulty"]["easy_train"]
    assert b["recipe"]["dao"] is True and b["recipe"]["margin"] == pytest.approx(0.05)
    assert b["dev_dis"] is not None


def test_distilled_run_with_a_step_floor(tmp_path):
    """--distill trains from a teacher's probabilities on the training rows (here a tier of the
    same recipe), --min-steps raises the steps; both are recorded; --distill needs a teacher."""
    main = _recipe().main
    data = _tiny_csv(tmp_path / "tiny.csv")
    common = ["--data", str(data), "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1",
              "--log", str(tmp_path / "log.jsonl")]
    assert main(common + ["--out", str(tmp_path / "teacher")]) == 0
    assert main(common + ["--out", str(tmp_path / "kd"), "--teacher", str(tmp_path / "teacher"),
                          "--distill", "0.5", "--min-steps", "12"]) == 0
    plain, kd = (json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines())
    assert kd["recipe"]["distill"] == 0.5 and kd["recipe"]["min_steps"] == 12
    saved = json.loads((tmp_path / "kd" / "cascade_rt_train.json").read_text())
    assert saved["distill"] == 0.5 and saved["min_steps"] == 12
    wa, wb = (load_file(tmp_path / d / "model.safetensors") for d in ("teacher", "kd"))
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)
    for flag in (["--distill", "0.5"], ["--unlabeled", "shipped"], ["--feature-distill", "1"]):
        with pytest.raises(SystemExit, match="--distill, --feature-distill and --unlabeled need --teacher"):
            main(common + flag)
    # --feature-distill: the tier also learns the teacher's pooler outputs (recorded, and trains
    # otherwise than without)
    assert main(common + ["--out", str(tmp_path / "fd"), "--teacher", str(tmp_path / "teacher"),
                          "--feature-distill", "4"]) == 0
    fd = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert fd["recipe"]["feature_distill"] == 4.0
    assert json.loads((tmp_path / "fd" / "cascade_rt_train.json").read_text())["feature_distill"] == 4.0
    wf = load_file(tmp_path / "fd" / "model.safetensors")
    assert not all(torch.equal(wf[k], wa[k]) for k in wa)
    # --unlabeled: the tier also trains on text without labels, learning the teacher's predictions
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nnot bad at all\nhardly worth it\nquite a ride\n")
    assert main(common + ["--out", str(tmp_path / "pool"), "--teacher", str(tmp_path / "teacher"),
                          "--unlabeled", str(texts)]) == 0
    pool = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert pool["unlabeled_rows"] == 3 and pool["train_rows"] == plain["train_rows"]
    assert pool["recipe"]["unlabeled"] == str(texts) and pool["recipe"]["distill"] == 0.0
    # --init-from: the tier starts from the trained teacher's layer, pooler and head
    # (at learning rate 0 the saved tier is its start: the teacher's tensors, not the MiniLM's)
    for name, extra in (("cut", ["--init-from", str(tmp_path / "teacher")]), ("uncut", [])):
        assert main(common + ["--out", str(tmp_path / name), "--lr", "0", "--epochs", "0.01"] + extra) == 0
    cut = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-2])
    assert cut["recipe"]["init_from"] == str(tmp_path / "teacher")
    wc, wu = (load_file(tmp_path / d / "model.safetensors") for d in ("cut", "uncut"))
    for k in ("classifier.weight", "bert.pooler.dense.weight", "bert.encoder.layer.0.output.dense.weight"):
        assert torch.equal(wc[k], wa[k]) and not torch.equal(wu[k], wa[k]), k
