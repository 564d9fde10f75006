"""Pooling cascades (``pool_weight > 0``): a later tier decides on its probabilities pooled with
the earlier tiers'. Checked against a plain per-row reference built from each tier's logits on
the whole batch, on every path (exact shapes, sync-free, the survivor queue, save / load)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cascade_rt import CascadeBert, Tier, TierConfig
from cascade_rt.evaluate import pooled_stage_probs, simulate_exits
from cascade_rt.graphs import capture

VOCAB = 89


def _tier(layers: int, seed: int, labels: int = 3) -> Tier:
    cfg = TierConfig(vocab_size=VOCAB, hidden_size=20, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=36, max_position_embeddings=48, num_labels=labels)
    g = torch.Generator().manual_seed(seed)
    tier = Tier(cfg)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 if name.startswith("classifier") else 0.3))
    return tier.eval()


@pytest.fixture(scope="module")
def tiers():
    return [_tier(1, 11), _tier(2, 12), _tier(3, 13)]


def _batch(g, rows, max_len):
    lens = torch.randint(1, max_len + 1, (rows,), generator=g)
    S = int(lens.max())
    ids = torch.randint(1, VOCAB, (rows, S), generator=g)
    mask = (torch.arange(S)[None, :] < lens[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def _reference(tiers, batch, thresholds, w):
    """Per row, in float64: each tier's log-probabilities on the whole batch, pooled row by row
    as the docstring of ``CascadeBert`` says, the first tier whose (pooled) confidence reaches
    its threshold. Returns (exit tier, output log-probabilities, confidence, confidences per
    tier but the last)."""
    with torch.no_grad():
        lps = [torch.log_softmax(t(**batch).double(), -1) for t in tiers]
    B = lps[0].shape[0]
    tier_out = torch.full((B,), len(tiers) - 1)
    out = torch.zeros_like(lps[0])
    confs = []
    for r in range(B):
        pool, done = None, False
        for i, lp in enumerate(lps):
            pool = lp[r] if i == 0 else (lp[r] + w * pool) / (1 + w)
            pool = pool - torch.logsumexp(pool, -1)
            conf = float(pool.exp().max())
            if i < len(tiers) - 1:
                if r == len(confs):
                    confs.append([])
                confs[r].append(conf)
            if not done and (i == len(tiers) - 1 or conf >= thresholds[i]):
                tier_out[r], out[r], done = i, pool, True
    return tier_out, out, out.exp().amax(-1), torch.tensor(confs)


def _check(tiers, batch, thresholds, w, o):
    ref_tier, ref_lp, ref_conf, _ = _reference(tiers, batch, thresholds, w)
    assert torch.equal(o.exit_tier, ref_tier)
    # softmax of the output is the row's (pooled) probabilities, whatever the tier
    torch.testing.assert_close(torch.log_softmax(o.logits.double(), -1), ref_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(o.confidence.double(), ref_conf, rtol=0, atol=2e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 13), max_len=st.integers(1, 29),
       w=st.sampled_from([0.0, 0.37, 1.0, 2.5]), qs=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
       sync_free=st.booleans())
def test_forward_matches_per_row_reference(tiers, seed, rows, max_len, w, qs, sync_free):
    g = torch.Generator().manual_seed(seed)
    batch = _batch(g, rows, max_len)
    # thresholds at quantiles of the rows' own (pooled) confidences, so that tiers split the batch
    _, _, _, confs = _reference(tiers, batch, [1.0, 1.0], w)
    th = [float(torch.quantile(confs[:, i], q)) + 1e-3 for i, q in enumerate(qs)]
    # a confidence within rounding of its threshold may fall on either side
    assume(bool(((confs - torch.tensor(th, dtype=confs.dtype)).abs() > 1e-4).all()))
    model = CascadeBert(tiers, th, pool_weight=w).eval()
    model.sync_free = sync_free
    _check(tiers, batch, th, w, model(**batch))


def test_weight_zero_is_the_plain_cascade_bitwise(tiers):
    batch = _batch(torch.Generator().manual_seed(5), 11, 20)
    a = CascadeBert(tiers, [0.6, 0.6])(**batch)
    b = CascadeBert(tiers, [0.6, 0.6], pool_weight=0.0)(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_tier, b.exit_tier)
    assert torch.equal(a.confidence, b.confidence)


def test_pooling_changes_later_tiers_only(tiers):
    batch = _batch(torch.Generator().manual_seed(6), 16, 20)
    with torch.no_grad():
        th = float(torch.softmax(tiers[0](**batch), -1).amax(-1).median())
    plain = CascadeBert(tiers, [th, 0.7])(**batch)
    pooled = CascadeBert(tiers, [th, 0.7], pool_weight=1.0)(**batch)
    first = plain.exit_tier == 0
    assert 0 < int(first.sum()) < 16, "the threshold must split the batch"
    assert torch.equal(pooled.exit_tier[first], plain.exit_tier[first])
    assert torch.equal(pooled.logits[first], plain.logits[first])  # tier 0's own logits, untouched
    assert not torch.allclose(pooled.confidence[~first], plain.confidence[~first])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(0, 7), min_size=1, max_size=6),
       budget=st.one_of(st.none(), st.integers(1, 120)), w=st.sampled_from([0.5, 1.0]))
def test_stream_matches_reference(tiers, seed, sizes, budget, w):
    g = torch.Generator().manual_seed(seed)
    batches = [_batch(g, n, 17) if n else {"input_ids": torch.zeros((0, 1), dtype=torch.long),
                                             "attention_mask": torch.zeros((0, 1), dtype=torch.long)}
               for n in sizes]
    th = [0.767, 0.885]  # near the medians of these tiers' (pooled) confidences
    for b in batches:
        if b["input_ids"].shape[0]:
            _, _, _, confs = _reference(tiers, b, th, w)
            assume(bool(((confs - torch.tensor(th, dtype=confs.dtype)).abs() > 1e-4).all()))
    model = CascadeBert(tiers, th, pool_weight=w).eval()
    outs = list(model.stream(iter(batches), budget))
    assert len(outs) == len(batches)
    for b, o in zip(batches, outs):
        if b["input_ids"].shape[0]:
            _check(tiers, b, th, w, o)
        else:
            assert o.logits.shape[0] == 0


def test_simulation_matches_the_runtime(tiers):
    """``pooled_stage_probs`` + ``simulate_exits`` (what threshold searches read) make the
    runtime's decisions."""
    batch = _batch(torch.Generator().manual_seed(8), 40, 24)
    _, _, _, confs = _reference(tiers, batch, [1.0, 1.0], 0.8)
    th = [float(confs[:, 0].quantile(0.4)) + 1e-4, float(confs[:, 1].quantile(0.5)) + 1e-4]
    model = CascadeBert(tiers, th, pool_weight=0.8).eval()
    out = model(**batch)
    with torch.no_grad():
        probs = [torch.softmax(t(**batch), -1) for t in tiers]
    stage, pred, conf = simulate_exits(pooled_stage_probs(probs, 0.8), th)
    assert (stage == out.exit_tier.numpy()).all()
    assert (pred == out.logits.argmax(-1).numpy()).all()
    assert abs(conf - out.confidence.numpy()).max() < 1e-5
    assert len(set(stage.tolist())) == 3, "every tier should take some rows"


def test_save_and_load_keep_the_weight(tiers, tmp_path):
    model = CascadeBert(tiers[:2], [0.6], pool_weight=0.75)
    model.save_pretrained(tmp_path / "c")
    back = CascadeBert.from_pretrained(tmp_path / "c")
    assert back.pool_weight == 0.75 and back.thresholds == [0.6]
    assert CascadeBert.from_pretrained(tmp_path / "c", pool_weight=0).pool_weight == 0.0
    batch = _batch(torch.Generator().manual_seed(9), 9, 15)
    a, b = model(**batch), back(**batch)
    assert torch.equal(a.exit_tier, b.exit_tier)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_weight_is_one_clear_error(tiers, bad):
    with pytest.raises(ValueError, match="pool_weight"):
        CascadeBert(tiers, [0.5, 0.5], pool_weight=bad)
    with pytest.raises(ValueError, match="pool_weight"):
        CascadeBert(tiers, [0.5, 0.5]).set_pool_weight(bad)


def test_capture_fixes_the_weight(tiers):
    model = CascadeBert(tiers, [0.6, 0.6], pool_weight=1.0).eval()
    batch = _batch(torch.Generator().manual_seed(10), 7, 12)
    graph = capture(model, max_batch=8, max_seqlen=16)
    _check(tiers, batch, [0.6, 0.6], 1.0, graph(**batch))
    model.set_pool_weight(0.5)
    with pytest.raises(RuntimeError, match="pool_weight changed"):
        graph(**batch)
