"""The cascade really skips work: later tiers see only the rows that did not exit."""
import pytest
import torch

from cascade_rt import CascadeBert, flops


def _enc(tokenizer, sentences):
    return tokenizer(sentences, padding=True, return_tensors="pt")


def _record_encode_calls(model):
    seen = []
    for i, tier in enumerate(model.tiers):
        orig = tier.encode

        def wrapped(ids, types, cu, max_seqlen, _orig=orig, _i=i, **kwargs):
            seen.append((_i, ids.shape[0], cu.shape[0] - 1, (cu[1:] - cu[:-1]).tolist()))
            return _orig(ids, types, cu, max_seqlen, **kwargs)

        tier.encode = wrapped
    return seen


def test_exited_rows_never_reach_the_next_tier(tier_dirs, tokenizer, sentences):
    enc = _enc(tokenizer, sentences)
    lens = enc["attention_mask"].sum(1)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2], tier_dirs[6]], thresholds=[0.6, 0.6])
    with torch.no_grad():
        conf0 = model.tiers[0](**enc).softmax(-1).amax(-1)
    model.set_thresholds([float(conf0.median()), 0.6])
    seen = _record_encode_calls(model)
    out = model(**enc)
    B = len(sentences)
    reached = [(out.exit_tier >= i) for i in range(3)]
    assert 0 < int(reached[1].sum()) < B, "the threshold must split the batch"
    for tier_i, n_tokens, n_rows, row_lens in seen:
        # exactly the live rows and tokens, in input order, nothing padded
        assert n_rows == int(reached[tier_i].sum())
        assert n_tokens == int(lens[reached[tier_i]].sum())
        assert row_lens == lens[reached[tier_i]].tolist()
    assert [s[0] for s in seen] == [i for i in range(3) if reached[i].any()]
    assert out.rows_per_tier.tolist() == [int(r.sum()) for r in reached]
    assert out.tokens_per_tier.tolist() == [int(lens[r].sum()) for r in reached]


def test_rows_come_back_in_input_order(tier_dirs, tokenizer, sentences):
    enc = _enc(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[6]], thresholds=[0.0])
    alone0 = model.tiers[0](**enc)
    model.set_thresholds([0.9])
    perm = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(3))
    a = model(**enc)
    b = model(**{k: v[perm] for k, v in enc.items()})
    assert torch.equal(a.exit_tier[perm], b.exit_tier)
    torch.testing.assert_close(a.logits[perm], b.logits, rtol=0, atol=1e-5)
    early = a.exit_tier == 0
    torch.testing.assert_close(a.logits[early], alone0[early], rtol=0, atol=1e-5)


def test_all_rows_exit_at_first_tier_skips_the_rest(tier_dirs, tokenizer, sentences):
    enc = _enc(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[6]], thresholds=[0.0])
    seen = _record_encode_calls(model)
    out = model(**enc)
    assert [s[0] for s in seen] == [0]
    assert out.rows_per_tier.tolist() == [len(sentences), 0]


@pytest.mark.parametrize("threshold", [0.0, 0.55, 1.0])
def test_sync_free_path_matches(tier_dirs, tokenizer, sentences, threshold):
    """Upper-bound shapes between tiers (no host reads) give the same rows as exact shapes."""
    enc = _enc(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[threshold])
    exact = model(**enc)
    model.sync_free = True
    bounded = model(**enc)
    assert torch.equal(exact.exit_tier, bounded.exit_tier)
    torch.testing.assert_close(exact.logits, bounded.logits, rtol=0, atol=1e-5)
    assert torch.equal(exact.rows_per_tier, bounded.rows_per_tier)
    assert torch.equal(exact.tokens_per_tier, bounded.tokens_per_tier)


def test_flops_model_counts_what_ran(tier_dirs, tokenizer, sentences):
    """The analytic cost of a cascade forward equals the cost of what the tiers really ran on
    (the row lengths each tier's encoder was handed), and tokens_per_tier matches them."""
    enc = _enc(tokenizer, sentences)
    model = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2], tier_dirs[6]], thresholds=[0.6, 0.6])
    with torch.no_grad():
        conf0 = model.tiers[0](**enc).softmax(-1).amax(-1)
    model.set_thresholds([float(conf0.median()), 0.6])
    seen = _record_encode_calls(model)
    out = model(**enc)
    lens = enc["attention_mask"].sum(1).tolist()
    cfgs = [t.config for t in model.tiers]
    ran = [[] for _ in cfgs]
    for tier_i, _, _, row_lens in seen:
        ran[tier_i].extend(row_lens)
    assert 0 < len(ran[1]) < len(lens), "the threshold must split the batch"
    assert out.tokens_per_tier.tolist() == [sum(r) for r in ran]
    assert out.rows_per_tier.tolist() == [len(r) for r in ran]
    spent = sum(flops.tier_flops(c, r) for c, r in zip(cfgs, ran))
    assert flops.cascade_flops(cfgs, ran) == spent
    sp = flops.analytic_speedup(cfgs, lens, out.exit_tier.tolist())
    assert sp == pytest.approx(flops.tier_flops(cfgs[-1], lens) / spent, rel=1e-12)
    # nobody exits early: the cascade costs more than the last tier alone
    assert flops.analytic_speedup(cfgs, lens, [2] * len(lens)) < 1
    # everybody exits at a 1-layer tier: more than 6x cheaper than 6 layers (its only layer, like
    # the 6-layer tier's last, runs for the first token alone)
    everybody = flops.analytic_speedup(cfgs, lens, [0] * len(lens))
    assert everybody == pytest.approx(flops.tier_flops(cfgs[-1], lens) / flops.tier_flops(cfgs[0], lens))
    assert 6 < everybody


def test_tier_flops_by_hand():
    from cascade_rt import TierConfig

    cfg = TierConfig(vocab_size=10, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=8, num_labels=3)
    # first layer, per token: 2*(4*16 + 2*4*8) = 256; attention for n tokens: 4*n*n*4 = 16 n^2;
    # rows of 1 and 3 tokens: 4*256 + 16*(1+9) = 1184
    # last layer, first token only: QKV on every token 2*3*16 = 96 per token, one query's
    # attention 4*n*4 = 16 n, output dense + FFN on one token 2*(16 + 2*4*8) = 160:
    # (96 + 16 + 160) + (288 + 48 + 160) = 768; head 2 rows * 2*(16+12) = 112
    assert flops.tier_flops(cfg, [1, 3]) == 1184 + 768 + 112
    assert flops.padded_tier_flops(cfg, [1, 3]) == flops.tier_flops(cfg, [3, 3])
    # early exit after layer 0 runs it in full and one head; after layer 1 (the last), as the tier
    assert flops.early_exit_flops(cfg, [1, 3], [0, 0]) == 1184 + 112
    assert flops.early_exit_flops(cfg, [1, 3], [1, 1]) == 1184 + 768 + 2 * 112
