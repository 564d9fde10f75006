"""CascadeBert.stream: the survivor queue across batches equals forward on each batch."""
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cascade_rt import CascadeBert, InputError, Tier, TierConfig

VOCAB = 97


def _tier(layers: int, seed: int) -> Tier:
    cfg = TierConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=layers, num_attention_heads=3,
                     intermediate_size=40, max_position_embeddings=40, num_labels=3)
    g = torch.Generator().manual_seed(seed)
    tier = Tier(cfg)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if name.startswith("classifier") else 0.3))
    return tier.eval()


@pytest.fixture(scope="module")
def model():
    return CascadeBert([_tier(1, 1), _tier(2, 2), _tier(3, 3)], [0.5, 0.5]).eval()


def _batch(g: torch.Generator, rows: int, max_len: int, pairs: bool = False) -> dict:
    lens = torch.randint(1, max_len + 1, (rows,), generator=g)
    S = int(lens.max()) if rows else 1
    ids = torch.randint(1, VOCAB, (rows, S), generator=g)
    mask = (torch.arange(S)[None, :] < lens[:, None]).long()
    out = {"input_ids": ids * mask, "attention_mask": mask}
    if pairs:
        out["token_type_ids"] = (torch.arange(S)[None, :] >= (lens[:, None] // 2)).long() * mask
    return out


def _tier_confidences(model, batch) -> list[torch.Tensor]:
    return [t(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).softmax(-1).amax(-1)
            for t in model.tiers[:-1]]


def _check_equal(model, batches, outs, atol=2e-5):
    assert len(outs) == len(batches)
    for b, o in zip(batches, outs):
        ref = model(**b)
        assert torch.equal(o.exit_tier, ref.exit_tier)
        assert torch.equal(o.rows_per_tier, ref.rows_per_tier)
        assert torch.equal(o.tokens_per_tier, ref.tokens_per_tier)
        torch.testing.assert_close(o.logits, ref.logits, rtol=0, atol=atol)
        torch.testing.assert_close(o.confidence, ref.confidence, rtol=0, atol=atol)
        first = o.exit_tier == 0  # tier 0 runs on exactly the input batch: bitwise equal
        assert torch.equal(o.logits[first], ref.logits[first])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1),
       sizes=st.lists(st.integers(0, 9), min_size=1, max_size=8),
       max_len=st.integers(1, 33),
       thresholds=st.lists(st.floats(0.3, 1.0), min_size=2, max_size=2),
       budget=st.one_of(st.none(), st.integers(1, 200)),
       max_rows=st.one_of(st.none(), st.integers(1, 12)),
       pairs=st.booleans())
def test_stream_equals_forward_per_batch(model, seed, sizes, max_len, thresholds, budget, max_rows, pairs):
    g = torch.Generator().manual_seed(seed)
    batches = [_batch(g, n, max_len, pairs) for n in sizes]
    model.set_thresholds(thresholds)
    # a confidence within rounding of a threshold may exit on either side (see stream's docstring)
    for b in batches:
        if b["input_ids"].shape[0]:
            for conf, thr in zip(_tier_confidences(model, b), thresholds):
                assume(bool(((conf - thr).abs() > 1e-4).all()))
    outs = list(model.stream(iter(batches), budget, max_batch_rows=max_rows))
    _check_equal(model, batches, outs)


def _record_runs(model):
    runs = []
    for i, tier in enumerate(model.tiers):
        orig = tier.encode

        def wrapped(ids, types, cu, max_seqlen, _orig=orig, _i=i, **kw):
            runs.append((_i, int(cu.shape[0] - 1), int(cu[-1])))
            return _orig(ids, types, cu, max_seqlen, **kw)

        tier.encode = wrapped
    return runs


def test_later_tiers_run_on_full_batches():
    model = CascadeBert([_tier(1, 1), _tier(2, 2), _tier(3, 3)], [0.5, 0.5]).eval()
    g = torch.Generator().manual_seed(5)
    batches = [_batch(g, 16, 20) for _ in range(12)]
    conf0 = torch.cat([_tier_confidences(model, b)[0] for b in batches])
    conf1 = torch.cat([_tier_confidences(model, b)[1] for b in batches])
    # about 60% leave at tier 0, 60% of the rest at tier 1
    model.set_thresholds([float(conf0.quantile(0.4)), float(conf1[conf0 < conf0.quantile(0.4)].quantile(0.4))])
    budget = 150
    runs = _record_runs(model)
    outs = list(model.stream(batches, budget))
    later = [r for r in runs if r[0] > 0]
    _check_equal(model, batches, outs)
    total = {i: sum(o.tokens_per_tier[i].item() for o in outs) for i in (1, 2)}
    for i in (1, 2):
        mine = [r for r in later if r[0] == i]
        # every run but the flush at the end fills the budget to within one row's length
        assert all(budget - 20 < tok <= budget for _, _, tok in mine[:-1]), mine
        assert len(mine) == math.ceil(total[i] / budget) or len(mine) == math.ceil(total[i] / budget) + 1
        assert sum(tok for _, _, tok in mine) == total[i]
    # per-batch forward would have run each later tier once per batch
    assert len([r for r in later if r[0] == 2]) < len(batches) // 2


def test_outputs_come_as_soon_as_their_rows_exit():
    model = CascadeBert([_tier(1, 1), _tier(2, 2)], [0.0]).eval()  # every row exits at tier 0
    g = torch.Generator().manual_seed(1)
    first = _batch(g, 3, 5)

    def source():
        yield first
        raise RuntimeError("the second batch was read before the first was answered")

    it = model.stream(source())
    out = next(it)
    assert out.exit_tier.tolist() == [0, 0, 0]
    with pytest.raises(RuntimeError, match="second batch"):
        next(it)


def test_empty_batches_and_single_row_budget(model):
    g = torch.Generator().manual_seed(2)
    model.set_thresholds([0.6, 0.6])
    batches = [_batch(g, 0, 4), _batch(g, 5, 9), _batch(g, 0, 4), _batch(g, 7, 30, pairs=True), _batch(g, 0, 3)]
    outs = list(model.stream(batches, 1))  # every later-tier run holds one row
    _check_equal(model, batches, outs)
    assert [o.logits.shape for o in outs] == [(0, 3), (5, 3), (0, 3), (7, 3), (0, 3)]
    assert list(model.stream([])) == []


def test_packed_batches(model):
    g = torch.Generator().manual_seed(4)
    model.set_thresholds([0.6, 0.6])
    padded = [_batch(g, 6, 12) for _ in range(3)]
    packed = []
    for b in padded:
        m = b["attention_mask"].bool()
        lens = m.sum(1)
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        packed.append({"input_ids": b["input_ids"][m], "cu_seqlens": cu})
    for a, b in zip(model.stream(padded), model.stream(packed)):
        assert torch.equal(a.exit_tier, b.exit_tier)
        assert torch.equal(a.logits, b.logits)


def test_bad_batches_name_the_batch(model):
    g = torch.Generator().manual_seed(3)
    good = _batch(g, 2, 4)
    bad_ids = {"input_ids": good["input_ids"].clone() + VOCAB, "attention_mask": good["attention_mask"]}
    with pytest.raises(InputError, match=r"batch 1: token id out of range"):
        list(model.stream([good, bad_ids]))
    with pytest.raises(InputError, match=r"batch 0 has unexpected key\(s\) \['labels'\]"):
        list(model.stream([{**good, "labels": torch.zeros(2)}]))
    with pytest.raises(InputError, match=r"batch 0 is a list"):
        list(model.stream([[1, 2, 3]]))
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive int"):
        list(model.stream([good], 0))
