"""bench/dao_margin.py: paired differences per DAO margin against no-DAO on the same seed."""
import json

import numpy as np
import pytest
from conftest import load_bench



def _mod():
    return load_bench("dao_margin")


def _line(seed, margin, acc, casc2, dis, lr=3e-4, lam=0.5, pairs="sampled"):
    recipe = {"layers": 2, "lr": lr, "seed": seed, "dao": margin is not None,
              "margin": 0.5 if margin is None else margin, "difficulty_cache": f"/tmp/d{seed}.json",
              "lam": lam, "pairs": pairs}
    return json.dumps({"recipe": recipe, "dev_accuracy": acc, "dev_dis": dis,
                       "cascade": [{"target": 1.5, "dev_accuracy": 0.0}, {"target": 2.0, "dev_accuracy": casc2}]})


def test_paired_differences(tmp_path):
    m = _mod()
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0.7, 0.9, 3) for s in (0, 1, 2)}
    shift = {0.2: np.array([0.01, -0.02, -0.03]), 0.1: np.array([-0.005, 0.004, 0.001])}
    lines = [_line(0, None, 0.1, 0.1, 0.9)]  # an earlier run of seed 0, no DAO: the last line counts
    for s in (2, 0, 1):  # order of the log does not matter
        for mg in (0.1, None, 0.2):
            v = base[s] + (0 if mg is None else shift[mg] + 0.001 * s)
            lines.append(_line(s, mg, *v))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    rows, text = m.summarise(m.load(log))
    assert [r["margin"] for r in rows] == [None, 0.2, 0.1]
    for r in rows[1:]:
        want = np.array([100 * (shift[r["margin"]] + 0.001 * s) for s in (0, 1, 2)])
        np.testing.assert_allclose(r["diff"], want, atol=1e-9)
    assert "0.2" in text and "no DAO" in text
    # wins for margin 0.2: acc >= in 3/3, cascade > in 0/3, DIS < in 3/3
    row02 = next(l for l in text.splitlines() if l.strip().startswith("0.2 "))
    assert row02.endswith("3/3, 0/3, 3/3")


def test_bad_logs_are_named(tmp_path):
    m = _mod()
    log = tmp_path / "log.jsonl"
    log.write_text(_line(0, 0.2, 0.8, 0.8, 0.2) + "\n")
    with pytest.raises(ValueError, match="no no-DAO run"):
        m.summarise(m.load(log))
    log.write_text(_line(0, None, 0.8, 0.8, 0.2) + "\n" + _line(0, 0.2, 0.8, 0.8, 0.2, lr=1e-4) + "\n")
    with pytest.raises(ValueError, match="mix 2 recipes"):
        m.summarise(m.load(log))
    log.write_text(_line(0, None, 0.8, 0.8, 0.2) + "\n")
    with pytest.raises(ValueError, match="no cascade point at target 3"):
        m.summarise(m.load(log), target=3.0)


def test_variants_of_weight_and_pairs(tmp_path):
    """Runs that differ in --lam or --pairs are variants of their own, each paired with no DAO."""
    m = _mod()
    lines = []
    for s in (0, 1):
        lines.append(_line(s, None, 0.80, 0.82, 0.30))
        lines.append(_line(s, 0.5, 0.79, 0.81, 0.29))
        lines.append(_line(s, 0.5, 0.81 + 0.01 * s, 0.83, 0.28, lam=0.1))
        lines.append(_line(s, 0.5, 0.78, 0.80, 0.31, pairs="all"))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    rows, text = m.summarise(m.load(log))
    by = {r["label"]: r for r in rows}
    assert list(by) == ["no DAO", "0.5", "0.5 all pairs", "0.5 lam 0.1"]
    np.testing.assert_allclose(by["0.5 lam 0.1"]["diff"][:, 0], [1.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(by["0.5 all pairs"]["diff"][:, 2], [1.0, 1.0], atol=1e-9)
    assert any(l.strip().startswith("0.5 lam 0.1 |") for l in text.splitlines())


def test_final_tier_per_seed(tmp_path):
    """Each seed may bring its own final tier (--large, --init-from), shared by its runs."""
    m = _mod()

    def line(seed, margin, large):
        r = json.loads(_line(seed, margin, 0.8, 0.8, 0.2))
        r["recipe"]["large"] = r["recipe"]["init_from"] = large
        return json.dumps(r)

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([line(0, None, "/c/s0/large"), line(0, 0.5, "/c/s0/large"),
                              line(1, None, "/c/s1/large"), line(1, 0.5, "/c/s1/large")]) + "\n")
    rows, _ = m.summarise(m.load(log))
    assert [r["seeds"] for r in rows] == [[0, 1], [0, 1]]
    log.write_text("\n".join([line(0, None, "/c/s0/large"), line(0, 0.5, "/c/other/large")]) + "\n")
    with pytest.raises(ValueError, match="seed 0: its runs differ in large"):
        m.summarise(m.load(log))
