"""Edges of the cascade on the shipped MiniLM weights: a row as long as the position table,
a confidence exactly at the threshold, saved thresholds overridden at load, and fp16/bf16
cascades end to end on CPU with save/load."""
import pytest
import torch
from transformers import BertForSequenceClassification

from cascade_rt import CascadeBert, InputError, Tier, backends


def _hf_logits(path, enc, dtype=torch.float32):
    hf = BertForSequenceClassification.from_pretrained(str(path), attn_implementation="eager",
                                                       dtype=dtype).eval()
    with torch.no_grad():
        return hf(**enc).logits.double()


def test_row_of_max_position_embeddings_tokens_matches_hf(tier_dirs, tokenizer, sentences):
    """A row that fills the position table exactly (every position embedding used), beside a
    short row, against transformers in fp32; the bound is tied to transformers' own fp32 error
    (against its fp64 run)."""
    tier = Tier.from_pretrained(tier_dirs[1])
    P = tier.config.max_position_embeddings
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1000, tier.config.vocab_size, (2, P), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    ids[0, P - 1] = tokenizer.sep_token_id
    mask = torch.ones(2, P, dtype=torch.int64)
    mask[1, 9:] = 0
    ids[1, 8] = tokenizer.sep_token_id
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[0, P // 2:] = 1
    enc = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    exact = _hf_logits(tier_dirs[1], enc, torch.float64)
    hf32 = _hf_logits(tier_dirs[1], enc)
    with torch.no_grad():
        got = tier(**enc).double()
    assert exact.abs().max() > 0.5
    bound = max(4 * float((hf32 - exact).abs().max()), 2e-5)
    err = (got - exact).abs().amax(1)
    assert err.max() <= bound, (err, bound)
    # one token more is refused with an error that names the limit
    longer = torch.cat([ids[:1], ids[:1, :1]], 1)
    with pytest.raises(InputError, match="max_position_embeddings"):
        tier(longer)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_confidence_equal_to_threshold_exits(tier_dirs, tokenizer, sentences, backend):
    """A row whose confidence equals the threshold exactly leaves at that tier (``>=``)."""
    if not backends.available(backend):
        pytest.skip(f"{backend} backend not loaded")
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    with backends.use_backend(backend):
        model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.0])
        conf0 = model(**enc).confidence  # every row exits at tier 0: its tier-0 confidence
        order = torch.argsort(conf0)
        r = int(order[len(order) // 2])
        t = float(conf0[r])  # an fp32 value, exactly representable as a Python float
        assert (conf0 < t).any() and ((conf0 == t).sum() == 1)
        model.set_thresholds([t])
        out = model(**enc)
    assert int(out.exit_tier[r]) == 0
    assert out.exit_tier.tolist() == [0 if c >= t else 1 for c in conf0.tolist()]
    assert float(out.confidence[r]) == t


def test_from_pretrained_thresholds_override_saved(tier_dirs, tokenizer, sentences, tmp_path):
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.0])
    model.save_pretrained(tmp_path / "c")
    assert CascadeBert.from_pretrained(tmp_path / "c").thresholds == [0.0]
    over = CascadeBert.from_pretrained(tmp_path / "c", thresholds=[1.0])
    assert over.thresholds == [1.0]
    assert (model(**enc).exit_tier == 0).all()
    conf0 = model(**enc).confidence
    assert over(**enc).exit_tier.tolist() == [0 if c >= 1.0 else 1 for c in conf0.tolist()]
    with pytest.raises(ValueError, match="threshold"):
        CascadeBert.from_pretrained(tmp_path / "c", thresholds=[0.5, 0.5])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cascade_end_to_end_with_save_load(tier_dirs, tokenizer, sentences, tmp_path, dtype):
    """An fp16 / bf16 two-tier cascade on CPU: each row's logits are those of the tier it exited
    at, within 3x transformers' own error in that dtype (both against transformers fp32), the
    exits follow the cascade's own confidences, and a save/load round trip keeps the dtype and
    gives identical outputs."""
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    dirs = [tier_dirs[1], tier_dirs[2]]
    ref = [_hf_logits(d, enc) for d in dirs]
    hf_err = [float((_hf_logits(d, enc, dtype) - r).abs().max()) for d, r in zip(dirs, ref)]
    model = CascadeBert.from_pretrained(dirs, thresholds=[0.0], dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    conf0 = model(**enc).confidence
    t = float(conf0.median())
    model.set_thresholds([t])
    out = model(**enc)
    assert out.logits.dtype == torch.float32 and out.logits.isfinite().all()
    assert out.exit_tier.tolist() == [0 if c >= t else 1 for c in conf0.tolist()]
    assert set(out.exit_tier.tolist()) == {0, 1}
    for r, i in enumerate(out.exit_tier.tolist()):
        err = float((out.logits[r].double() - ref[i][r]).abs().max())
        assert err <= 3 * hf_err[i] + 1e-3, (r, i, err, hf_err[i])
    model.save_pretrained(tmp_path / "low")
    again = CascadeBert.from_pretrained(tmp_path / "low", dtype=dtype)
    assert again.thresholds == [t]
    assert all(p.dtype == dtype for p in again.parameters())
    b = again(**enc)
    assert torch.equal(out.exit_tier, b.exit_tier) and torch.equal(out.logits, b.logits)
    assert torch.equal(out.confidence, b.confidence)
