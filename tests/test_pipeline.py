"""cascade_rt.pipeline: text in, labels out, equal to the cascade on the tokenizer's own output."""
import json
import shutil

import pytest
import torch

import cascade_rt
from cascade_rt import CascadeBert, CheckpointError

LABELS = ["negative", "neutral", "positive"]


def _save(model, path, labels=LABELS):
    model.save_pretrained(path)
    cfg_file = path / "tier_0" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["id2label"] = {str(i): name for i, name in enumerate(labels)}
    cfg["label2id"] = {name: i for i, name in enumerate(labels)}
    cfg_file.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def saved(tier_dirs, tokenizer, sentences, tmp_path_factory):
    """A two-tier cascade (1 and 2 MiniLM layers) whose threshold splits the sentences."""
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.5])
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    conf0 = model.tiers[0](**enc).softmax(-1).amax(-1).sort().values
    mid = len(sentences) // 2
    model.set_thresholds([float(conf0[mid - 1] + conf0[mid]) / 2])  # half the rows exit, none borderline
    return _save(model, tmp_path_factory.mktemp("cascade") / "c")


def _expected(model, tokenizer, texts, pairs=None, max_length=None):
    kw = dict(padding=True, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
    enc = tokenizer(texts, pairs, **kw) if pairs is not None else tokenizer(texts, **kw)
    out = model(**enc)
    return out.logits.argmax(-1).tolist(), out.confidence, out.exit_tier.tolist()


def test_pipeline_equals_the_cascade_on_tokenizer_output(saved, tokenizer, sentences):
    clf = cascade_rt.pipeline(saved)
    assert clf.id2label == LABELS  # names by class id, from tier_0/config.json
    res = clf(sentences)
    labels, conf, tiers = _expected(clf.model, tokenizer, sentences)
    assert [r["label"] for r in res] == [LABELS[i] for i in labels]
    assert [r["exit_tier"] for r in res] == tiers
    assert set(tiers) == {0, 1}
    torch.testing.assert_close(torch.tensor([r["score"] for r in res]), conf, rtol=0, atol=2e-5)
    assert all(isinstance(r["score"], float) and isinstance(r["exit_tier"], int) for r in res)
    assert clf.truncated == 0
    assert clf.max_length == 512


def test_small_token_budget_and_pairs(saved, tokenizer, sentences):
    big = cascade_rt.pipeline(saved)
    small = cascade_rt.pipeline(saved, max_batch_tokens=48, max_batch_rows=3)  # many batches
    pairs = sentences[::-1]
    a, b = big(sentences, pairs), small(sentences, pairs)
    labels, conf, tiers = _expected(big.model, tokenizer, sentences, pairs)
    for r in (a, b):
        assert [x["exit_tier"] for x in r] == tiers
        assert [x["label"] for x in r] == [LABELS[i] for i in labels]
        torch.testing.assert_close(torch.tensor([x["score"] for x in r]), conf, rtol=0, atol=2e-5)


def test_truncation_is_counted_not_an_error(saved, tokenizer):
    clf = cascade_rt.pipeline(saved, max_length=12)
    exact = "one two three four five six seven eight nine ten"  # [CLS] + 10 words + [SEP] = 12
    assert len(tokenizer(exact)["input_ids"]) == 12
    texts = [exact, exact + " eleven", "short", "word " * 700]
    res = clf.classify(texts)
    assert res.truncated.tolist() == [False, True, False, True]
    assert res.num_tokens.tolist() == [12, 12, 3, 12]
    assert clf.truncated == 2
    labels, conf, tiers = _expected(clf.model, tokenizer, texts, max_length=12)
    assert res.exit_tier.tolist() == tiers and res.label_id.tolist() == labels
    # without max_length, the 700-word text is cut to the model's 512 positions
    full = cascade_rt.pipeline(saved)
    assert full.classify(["word " * 700]).num_tokens.tolist() == [512]
    assert full.truncated == 1


def test_bad_input_names_the_problem(saved, tmp_path):
    clf = cascade_rt.pipeline(saved)
    assert clf([]) == []
    assert len(clf("just one")) == 1
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        clf(["ok", None])
    with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
        clf(["a", "b"], ["c"])
    bare = tmp_path / "bare"
    shutil.copytree(saved, bare)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / "tier_0" / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        cascade_rt.pipeline(bare)
    with pytest.raises(CheckpointError, match="not a directory"):
        cascade_rt.pipeline(tmp_path / "nowhere")
