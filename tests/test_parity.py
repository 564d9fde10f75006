"""The runtime against Hugging Face transformers on the shipped real MiniLM weights."""
import pytest
import torch
from transformers import BertForSequenceClassification

import cascade_rt
from cascade_rt import CascadeBert, Tier


def _hf(path, dtype=torch.float32):
    return BertForSequenceClassification.from_pretrained(
        str(path), attn_implementation="eager", dtype=dtype).eval()


def _hf_logits(path, enc, dtype=torch.float32):
    with torch.no_grad():
        return _hf(path, dtype)(**enc).logits.float()


def _batch(tokenizer, sentences):
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    # a length-1 row ([CLS] only) and a row with token type 1 on its second half
    ids = enc["input_ids"]
    mask = enc["attention_mask"]
    tt = enc["token_type_ids"]
    one = torch.zeros(1, ids.shape[1], dtype=ids.dtype)
    one[0, 0] = tokenizer.cls_token_id
    one_mask = torch.zeros_like(one)
    one_mask[0, 0] = 1
    ids = torch.cat([ids, one])
    mask = torch.cat([mask, one_mask])
    tt = torch.cat([tt, torch.zeros_like(one)])
    L = int(mask[2].sum())
    tt[2, L // 2: L] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def test_lengths_are_mixed(tokenizer, sentences):
    enc = _batch(tokenizer, sentences)
    lens = enc["attention_mask"].sum(1)
    assert 1 in lens.tolist() and len(set(lens.tolist())) >= 6 and any(n % 2 for n in lens.tolist())


@pytest.mark.parametrize("layers", [1, 2, 6])
def test_tier_matches_hf_fp32(tier_dirs, tokenizer, sentences, layers):
    enc = _batch(tokenizer, sentences)
    ref = _hf_logits(tier_dirs[layers], enc)
    tier = Tier.from_pretrained(tier_dirs[layers])
    with torch.no_grad():
        got = tier(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert ref.abs().max() > 0.5  # heads are not trivially small, so the comparison means something
    err = (got - ref).abs().amax(dim=1)
    assert err.max() < 2e-5, err


def test_tier_packed_equals_padded(tier_dirs, tokenizer, sentences):
    enc = _batch(tokenizer, sentences)
    mask = enc["attention_mask"].bool()
    lens = mask.sum(1)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    packed = enc["input_ids"][mask]
    types = enc["token_type_ids"][mask]
    tier = Tier.from_pretrained(tier_dirs[2])
    with torch.no_grad():
        a = tier(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        b = tier(packed, token_type_ids=types, cu_seqlens=cu, max_seqlen=int(lens.max()))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _threshold_in_gap(conf: torch.Tensor) -> float:
    """A threshold half-way in the widest gap between sorted confidences near the median, so
    that tiny float differences cannot move a row across it."""
    s = torch.sort(conf).values
    n = len(s)
    lo, hi = max(1, n // 4), min(n - 1, 3 * n // 4 + 1)
    gaps = s[lo:hi] - s[lo - 1:hi - 1]
    j = int(torch.argmax(gaps)) + lo
    assert gaps.max() > 1e-4
    return float((s[j - 1] + s[j]) / 2)


def test_cascade_rows_match_hf_tier_they_exit_at(tier_dirs, tokenizer, sentences):
    enc = _batch(tokenizer, sentences)
    dirs = [tier_dirs[1], tier_dirs[2], tier_dirs[6]]
    refs = [_hf_logits(d, enc) for d in dirs]
    conf0 = torch.softmax(refs[0], -1).amax(-1)
    t0 = _threshold_in_gap(conf0)
    conf1 = torch.softmax(refs[1], -1).amax(-1)
    t1 = _threshold_in_gap(conf1[conf0 < t0]) if (conf0 < t0).sum() > 3 else 0.5
    model = CascadeBert.from_pretrained(dirs, thresholds=[t0, t1]).eval()
    out = model(**enc)
    B = enc["input_ids"].shape[0]
    assert out.logits.shape == (B, 3) and out.exit_tier.shape == (B,) and out.confidence.shape == (B,)
    assert out.exit_tier.dtype == torch.int64 and out.confidence.dtype == torch.float32
    expect = torch.where(conf0 >= t0, 0, torch.where(conf1 >= t1, 1, 2))
    assert out.exit_tier.tolist() == expect.tolist()
    assert set(expect.tolist()) >= {0, 2}, "the test batch must exercise early and late exits"
    for r in range(B):
        ref = refs[int(out.exit_tier[r])][r]
        assert (out.logits[r] - ref).abs().max() < 2e-5, r
        torch.testing.assert_close(out.confidence[r], torch.softmax(ref, -1).max(), atol=1e-6, rtol=0)


def test_one_tier_cascade_is_the_baseline(tier_dirs, tokenizer, sentences):
    enc = _batch(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[6]], thresholds=[])
    out = model(**enc)
    assert (out.exit_tier == 0).all()
    assert (out.logits - _hf_logits(tier_dirs[6], enc)).abs().max() < 2e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_is_within_hf_error(tier_dirs, tokenizer, sentences, dtype):
    enc = _batch(tokenizer, sentences)
    ref = _hf_logits(tier_dirs[6], enc)
    hf_low = _hf_logits(tier_dirs[6], enc, dtype)
    tier = Tier.from_pretrained(tier_dirs[6], dtype=dtype)
    with torch.no_grad():
        got = tier(**enc)
    hf_err = (hf_low - ref).abs().max().item()
    our_err = (got - ref).abs().max().item()
    assert our_err <= 3 * hf_err + 1e-3, (our_err, hf_err)


def test_save_pretrained_roundtrip_and_transformers_loads_tiers(tier_dirs, tokenizer, sentences, tmp_path):
    enc = _batch(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[2], tier_dirs[6]], thresholds=[0.7])
    model.save_pretrained(tmp_path / "saved")
    again = CascadeBert.from_pretrained(tmp_path / "saved")
    assert again.thresholds == [0.7]
    a, b = model(**enc), again(**enc)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_tier, b.exit_tier)
    for i, d in enumerate(["tier_0", "tier_1"]):
        assert (tmp_path / "saved" / d / "vocab.txt").is_file()
        hf = _hf_logits(tmp_path / "saved" / d, enc)
        ref = _hf_logits([tier_dirs[2], tier_dirs[6]][i], enc)
        assert torch.equal(hf, ref)


def test_tiers_state_dict_is_hf_state_dict(tier_dirs):
    tier = Tier.from_pretrained(tier_dirs[2])
    hf = _hf(tier_dirs[2])
    assert set(tier.state_dict()) == set(k for k in hf.state_dict() if k != "bert.embeddings.position_ids" and k != "bert.embeddings.token_type_ids")
    for k, v in tier.state_dict().items():
        assert torch.equal(v, hf.state_dict()[k]), k


def test_thresholds_zero_and_one(tier_dirs, tokenizer, sentences):
    enc = _batch(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[6]], thresholds=[0.0])
    assert (model(**enc).exit_tier == 0).all()
    model.set_thresholds([1.0])
    out = model(**enc)
    # a float32 max probability reaches exactly 1.0 only for saturated logits
    conf0 = torch.softmax(_hf_logits(tier_dirs[1], enc), -1).amax(-1)
    assert out.exit_tier.tolist() == [0 if c >= 1.0 else 1 for c in conf0.tolist()]


def test_version_and_public_names():
    assert cascade_rt.__version__
    for name in ("CascadeBert", "CascadeOutput", "ops", "Tier", "flops"):
        assert hasattr(cascade_rt, name)
