"""bench/augment_text.py: noisy copies come from the training split only, a seeded, readable
file that cascade_rt.data.unlabeled_texts accepts."""
import json
import random

import pytest
from conftest import load_bench

from cascade_rt.data import load_shipped, unlabeled_texts


def test_noisy_copy_keeps_order_and_words():
    aug = load_bench("augment_text")
    text = "one two three four five six seven eight nine ten eleven twelve"
    words = text.split()
    for seed in range(50):
        out = aug.noisy_copy(text, random.Random(seed)).split()
        assert 1 <= len(out) <= len(words)
        assert set(out) <= set(words)
        # a window with words dropped and neighbours swapped: each word moves at most a little
        pos = [words.index(w) for w in out]
        assert all(b > a - 3 for a, b in zip(pos, pos[1:]))
    assert aug.noisy_copy("short", random.Random(0)) == "short"


def test_file_holds_copies_of_training_rows_only(tmp_path):
    aug = load_bench("augment_text")
    out = tmp_path / "aug.jsonl"
    assert aug.main(["--data", "tweets", "--variants", "2", "--out", str(out)]) == 0
    rows = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    splits = load_shipped("tweets", 0)
    assert len(rows) == 2 * len(splits.train)
    # copy k of training row i: its words are all that row's words
    for i, e in enumerate(splits.train[:200]):
        for t in rows[2 * i: 2 * i + 2]:
            assert set(t.split()) <= set(e.text.split())
    again = tmp_path / "again.jsonl"
    aug.main(["--data", "tweets", "--variants", "2", "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()
    kept = unlabeled_texts(str(out), splits)
    assert 0 < len(kept) <= len(rows)


def test_refuses_no_variants(tmp_path):
    with pytest.raises(SystemExit, match="--variants"):
        load_bench("augment_text").main(["--data", "tweets", "--variants", "0", "--out", str(tmp_path / "x")])
