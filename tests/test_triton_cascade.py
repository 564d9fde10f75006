"""A whole cascade on the Triton backend: the sync-free path (upper-bound shapes, dense layers
through the live-rows ``ops.linear``) gives every row the same result as the exact path
(trimmed shapes, ``F.linear``).

Tiny random-weight tiers (hidden 32, 2 heads, 1-2 layers) keep this fast under Triton's CPU
interpreter; on a GPU the same tests run on CUDA.
"""
import os

import pytest
import torch

pytest.importorskip("triton")

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from cascade_rt import CascadeBert, Tier, TierConfig, backends  # noqa: E402
from cascade_rt import triton_backend as tb  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
VOCAB = 97
LENGTHS = [1, 7, 19, 2, 12, 5, 16, 9]


def _tier(layers, seed, hidden=32, heads=2, inter=67, act="gelu"):
    cfg = TierConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=inter, num_labels=3,
                     max_position_embeddings=64, hidden_act=act)
    tier = Tier(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("classifier"):
                p.copy_(torch.randn(p.shape, generator=g))  # spread confidences over (1/3, 1)
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:  # dense weights: activations O(1) through the layers
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return tier.to(DEVICE).eval()


def _batch(lens, seed, width=None):
    g = torch.Generator().manual_seed(seed)
    S = width or max(lens)
    ids = torch.randint(1, VOCAB, (len(lens), S), generator=g)
    mask = (torch.arange(S)[None, :] < torch.tensor(lens)[:, None]).to(torch.int64)
    types = torch.randint(0, 2, (len(lens), S), generator=g) * mask
    return ids.to(DEVICE), mask.to(DEVICE), types.to(DEVICE)


def _gap_threshold(conf):
    """Midpoint of the widest gap between sorted confidences (no row near the threshold)."""
    s = torch.sort(conf.float().cpu()).values
    gaps = s[1:] - s[:-1]
    i = int(torch.argmax(gaps))
    return float((s[i] + s[i + 1]) / 2), float(gaps[i])


@pytest.fixture
def linear_calls(monkeypatch):
    """Records each Triton linear call (dispatch looks the op up in ``OPS`` at each call) as
    (rows, live rows); checks that the sync-free tier asks it to leave dead rows unwritten."""
    calls = []
    orig = tb.OPS["linear"]

    def spy(x, weight, bias, cu_seqlens, activation, zero_dead=True):
        y = orig(x, weight, bias, cu_seqlens, activation, zero_dead)
        n_live = int(cu_seqlens[-1])
        assert not zero_dead, "the sync-free tier has no use for zeros in the dead rows"
        calls.append((x.shape[0], n_live))
        return y

    monkeypatch.setitem(tb.OPS, "linear", spy)
    return calls


def _run(model, ids, mask, types, sync_free):
    model.sync_free = sync_free
    try:
        with backends.use_backend("triton"):
            return model(ids, attention_mask=mask, token_type_ids=types)
    finally:
        model.sync_free = False


def _model(tiers, ids, mask, types, mode):
    model = CascadeBert(tiers, [0.5] * (len(tiers) - 1))
    if mode == "half_exit":
        with torch.no_grad(), backends.use_backend("triton"):
            conf0 = torch.softmax(tiers[0](ids, attention_mask=mask, token_type_ids=types), -1).amax(-1)
        thr, gap = _gap_threshold(conf0)
        assert gap > 1e-3, "seeded inputs must leave a clear gap at the threshold"
        model.set_thresholds([thr] * (len(tiers) - 1))
    else:
        model.set_thresholds([1.0 if mode == "none_exit" else 0.0] * (len(tiers) - 1))
    return model


@pytest.mark.parametrize("mode", ["half_exit", "none_exit", "all_exit"])
def test_sync_free_matches_exact_path_fp32(linear_calls, mode):
    tiers = [_tier(1, seed=1), _tier(2, seed=2, act="gelu_new")]
    ids, mask, types = _batch(LENGTHS, seed=3, width=21)  # wider than the longest row
    model = _model(tiers, ids, mask, types, mode)
    exact = _run(model, ids, mask, types, sync_free=False)
    assert linear_calls == [], "the exact path keeps F.linear"
    bounded = _run(model, ids, mask, types, sync_free=True)
    B, S = ids.shape
    # four dense layers per encoder layer, every tier (even one no row reaches: nothing is
    # read back to stop early) on the B*S upper bound, live rows = the tier's live tokens
    live = exact.tokens_per_tier.tolist()
    assert linear_calls == [(B * S, live[0])] * 4 + [(B * S, live[1])] * 8
    if mode == "half_exit":
        assert 0 < int((exact.exit_tier == 0).sum()) < B, "both tiers must take rows"
    assert torch.equal(bounded.exit_tier, exact.exit_tier)
    torch.testing.assert_close(bounded.logits, exact.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(bounded.confidence, exact.confidence, rtol=0, atol=1e-6)
    assert torch.equal(bounded.rows_per_tier, exact.rows_per_tier)
    assert torch.equal(bounded.tokens_per_tier, exact.tokens_per_tier)


def test_sync_free_fp16_error_within_the_exact_paths(linear_calls):
    """fp16: the sync-free path's error against the fp32 model is within twice the exact
    (F.linear) path's own fp16 error, row by row, and every row exits at the same tier."""
    tiers32 = [_tier(1, seed=4), _tier(2, seed=5, act="relu")]
    ids, mask, types = _batch(LENGTHS, seed=6, width=20)
    model32 = _model(tiers32, ids, mask, types, "half_exit")
    want = _run(model32, ids, mask, types, sync_free=False)
    tiers16 = [_tier(1, seed=4).half(), _tier(2, seed=5, act="relu").half()]
    model16 = CascadeBert(tiers16, model32.thresholds)
    exact = _run(model16, ids, mask, types, sync_free=False)
    bounded = _run(model16, ids, mask, types, sync_free=True)
    assert len(linear_calls) == 4 * 3
    assert torch.equal(exact.exit_tier, want.exit_tier)
    assert torch.equal(bounded.exit_tier, want.exit_tier)
    err_exact = (exact.logits - want.logits).abs().amax(1)
    err_bounded = (bounded.logits - want.logits).abs().amax(1)
    assert (err_exact > 0).all(), "fp16 must differ from fp32 somewhere, else the bound is void"
    assert (err_bounded <= 2 * err_exact + 1e-4).all(), (err_bounded, err_exact)


def test_sync_free_all_rows_dead_after_tier0(linear_calls):
    """Every row exits at tier 0: tier 1 still runs in sync-free mode on zero live tokens
    (all of its linears write zeros) and changes nothing."""
    tiers = [_tier(1, seed=7), _tier(1, seed=8)]
    ids, mask, types = _batch([3, 1, 9, 4], seed=9)
    model = _model(tiers, ids, mask, types, "all_exit")
    exact = _run(model, ids, mask, types, sync_free=False)
    bounded = _run(model, ids, mask, types, sync_free=True)
    assert linear_calls == [(4 * 9, 17)] * 4 + [(4 * 9, 0)] * 4  # tier 0, then the empty tier 1
    assert bool((bounded.exit_tier == 0).all())
    assert torch.equal(bounded.exit_tier, exact.exit_tier)
    torch.testing.assert_close(bounded.logits, exact.logits, rtol=0, atol=1e-5)
    assert bounded.rows_per_tier.tolist() == [4, 0]
