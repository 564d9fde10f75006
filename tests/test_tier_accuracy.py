"""bench/tier_accuracy.py: paired accuracy differences and their standard error over rows."""
import numpy as np
import pytest
from conftest import load_bench


def test_paired_difference_and_standard_error():
    m = load_bench("tier_accuracy")
    rng = np.random.default_rng(0)
    a, b = rng.random(1000) < 0.86, rng.random(1000) < 0.84
    diff, se = m.paired(a, b)
    d = a.astype(float) - b.astype(float)
    assert diff == pytest.approx(100 * (a.mean() - b.mean()))
    # sqrt of the per-row variance of the difference over n, by hand
    assert se == pytest.approx(100 * np.sqrt(((d - d.mean()) ** 2).sum() / (len(d) - 1) / len(d)))
    # identical models differ by nothing, with no spread; the same rows flipped give a larger error
    assert m.paired(a, a) == (0.0, 0.0)
    assert m.paired(a, ~a)[1] > se


def test_model_argument_must_name_a_directory(capsys):
    m = load_bench("tier_accuracy")
    with pytest.raises(SystemExit):
        m.main(["--data", "movies", "--runs", "/nonexistent", "--model", "final"])
    assert "--model takes NAME=DIR, got 'final'" in capsys.readouterr().err
