"""EarlyExitBert (the per-layer early-exit baseline) against a reference built by hand from
transformers: each layer's hidden states from ``BertModel(output_hidden_states=True)`` in fp64,
the exit heads applied to them in plain PyTorch, and the first-confident-layer rule per row."""
import pytest
import torch
from transformers import BertForSequenceClassification

from cascade_rt.early_exit import EarlyExitBert, ExitHead

from test_sync_free import _gap_threshold, _padded, _tier

LENGTHS = [1, 7, 33, 2, 19, 5, 33, 12, 3, 28, 9, 64, 1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random 4-layer backbone with 3 random exit heads, saved; and its transformers twin."""
    torch.manual_seed(7)
    backbone = _tier(4, 40, 5, seed=21)
    heads = []
    for _ in range(3):
        h = ExitHead(40, 3)
        with torch.no_grad():
            h.classifier.weight.normal_(0, 1.0)  # spread confidences over (1/3, 1)
        heads.append(h.eval())
    path = tmp_path_factory.mktemp("ee") / "model"
    EarlyExitBert(backbone, heads).save_pretrained(path)
    hf = BertForSequenceClassification.from_pretrained(str(path / "backbone"), attn_implementation="eager",
                                                       dtype=torch.float64).eval()
    return path, hf, heads


def _hand_reference(hf, heads, ids, mask, types):
    """Per layer and row: logits (L, B, C) float64 of the exit head after that layer (the
    model's own classifier after the last), from transformers' hidden states."""
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        per_layer = []
        for i, h in enumerate(heads):
            cls = out.hidden_states[i + 1][:, 0]
            per_layer.append(h.double()(cls))
            h.float()
        per_layer.append(out.logits)
    return torch.stack(per_layer)


def _expected_exits(ref, thresholds):
    conf = ref.softmax(-1).amax(-1).float()  # (L, B), compared in fp32 as the runtime does
    L, B = conf.shape
    exits = torch.full((B,), L - 1)
    for i in reversed(range(L - 1)):
        exits = torch.where(conf[i] >= thresholds[i], i, exits)
    return exits


def test_logits_and_exits_match_hand_reference_and_save_load(saved):
    path, hf, heads = saved
    ids, mask, types = _padded(LENGTHS, seed=31)
    ref = _hand_reference(hf, heads, ids, mask, types)
    conf = ref.softmax(-1).amax(-1).float()
    thresholds = [_gap_threshold(conf[i]) for i in range(3)]
    model = EarlyExitBert.from_pretrained(path)
    model.threshold = thresholds
    out = model(ids, mask, types)
    want = _expected_exits(ref, thresholds)
    assert out.exit_tier.tolist() == want.tolist()
    assert len(set(want.tolist())) >= 3, "the thresholds must spread the exits over the layers"
    picked = ref[want, torch.arange(len(LENGTHS))]
    # fp32 runtime against fp64 transformers: a few fp32 roundings of O(1) logits
    err = (out.logits.double() - picked).abs().amax(1)
    assert err.max() < 2e-5, err
    torch.testing.assert_close(out.confidence.double(), picked.softmax(-1).amax(-1), rtol=0, atol=1e-6)
    lens = mask.sum(1)
    assert out.rows_per_tier.tolist() == [int((want >= i).sum()) for i in range(4)]
    assert out.tokens_per_tier.tolist() == [int(lens[want >= i].sum()) for i in range(4)]
    # save/load round trip: same weights, same outputs
    model.save_pretrained(path.parent / "again")
    again = EarlyExitBert.from_pretrained(path.parent / "again")
    again.threshold = thresholds
    b = again(ids, mask, types)
    assert torch.equal(out.exit_tier, b.exit_tier) and torch.equal(out.logits, b.logits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_all_rows_exit_at_layer_0(saved):
    path, hf, heads = saved
    ids, mask, types = _padded(LENGTHS, seed=32)
    ref = _hand_reference(hf, heads, ids, mask, types)
    model = EarlyExitBert.from_pretrained(path, threshold=0.0)
    out = model(ids, mask, types)
    assert (out.exit_tier == 0).all()
    assert out.rows_per_tier.tolist() == [len(LENGTHS), 0, 0, 0]
    assert out.tokens_per_tier.tolist() == [int(mask.sum()), 0, 0, 0]
    assert (out.logits.double() - ref[0]).abs().max() < 2e-5


def test_no_row_exits_early_at_threshold_one(saved):
    path, hf, heads = saved
    ids, mask, types = _padded(LENGTHS, seed=33)
    ref = _hand_reference(hf, heads, ids, mask, types)
    model = EarlyExitBert.from_pretrained(path, threshold=1.0)
    out = model(ids, mask, types)
    assert out.exit_tier.tolist() == _expected_exits(ref, [1.0] * 3).tolist()
    last = out.exit_tier == 3
    assert (out.logits[last].double() - ref[3][last]).abs().max() < 2e-5
