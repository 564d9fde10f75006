"""Every refused input gets one clear error that names the problem."""
import json
import math

import pytest
import torch

from cascade_rt import CascadeBert, CheckpointError, InputError, Tier, TierConfig, make_classifier_checkpoint


@pytest.fixture(scope="module")
def model(tier_dirs):
    return CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.6])


def _ids(B=3, S=6, vocab=5000):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (B, S), generator=g)
    ids[:, 0] = 101
    return ids


def test_token_id_out_of_vocab(model):
    ids = _ids()
    ids[1, 3] = 30522
    with pytest.raises(InputError, match=r"token id out of range \[0, 30522\).*30522"):
        model(ids)
    ids[1, 3] = -1
    with pytest.raises(InputError, match="token id out of range"):
        model(ids)


def test_padding_positions_are_not_checked_against_vocab(model):
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    ids[0, 5] = 10**6  # garbage under the mask is ignored, like HF
    model(ids, attention_mask=mask)


def test_token_type_out_of_range(model):
    ids = _ids()
    with pytest.raises(InputError, match="token_type_ids out of range"):
        model(ids, token_type_ids=torch.full_like(ids, 2))


def test_tiers_with_different_vocab_or_labels(tier_dirs, minilm_dir, tmp_path):
    a = Tier.from_pretrained(tier_dirs[1])
    four = make_classifier_checkpoint(minilm_dir, tmp_path / "four", num_labels=4, num_layers=1)
    with pytest.raises(ValueError, match="num_labels 4 but tier 0 has 3"):
        CascadeBert([a, Tier.from_pretrained(four)], [0.5])
    cfg = dict(a.config.raw, vocab_size=100, num_labels=3)
    with torch.device("meta"):
        small = Tier(TierConfig.from_hf_dict(cfg))
    with pytest.raises(ValueError, match="vocab_size 100 but tier 0 has 30522"):
        CascadeBert([a, small], [0.5])


@pytest.mark.parametrize("thresholds,match", [
    ([], r"expected 1 threshold\(s\).*got 0"),
    ([0.5, 0.6], r"expected 1 threshold\(s\).*got 2"),
    ([1.5], r"threshold 0 is 1.5"),
    ([-0.1], r"threshold 0 is -0.1"),
    ([math.nan], r"threshold 0 is nan"),
])
def test_bad_thresholds(tier_dirs, thresholds, match):
    with pytest.raises(ValueError, match=match):
        CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=thresholds)
    m = CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.5])
    with pytest.raises(ValueError, match=match):
        m.set_thresholds(thresholds)
    assert m.thresholds == [0.5]


def test_empty_batch_returns_empty_outputs(model):
    out = model(torch.zeros((0, 7), dtype=torch.int64))
    assert out.logits.shape == (0, 3) and out.exit_tier.shape == (0,) and out.confidence.shape == (0,)
    out = model(torch.zeros(0, dtype=torch.int64), cu_seqlens=torch.zeros(1, dtype=torch.int32), max_seqlen=0)
    assert out.logits.shape == (0, 3)
    assert model.tiers[0](torch.zeros((0, 5), dtype=torch.int64)).shape == (0, 3)


def test_rows_of_width_zero(model):
    for mask in (None, torch.zeros((2, 0), dtype=torch.int64)):
        with pytest.raises(InputError, match="rows of width 0"):
            model(torch.zeros((2, 0), dtype=torch.int64), attention_mask=mask)


def test_sequence_longer_than_max_positions(model):
    ids = torch.full((2, 513), 1000)
    with pytest.raises(InputError, match="513 tokens, more than max_position_embeddings 512"):
        model(ids)
    # wide padding is fine as long as no row is too long
    mask = torch.zeros_like(ids)
    mask[:, :10] = 1
    assert model(ids, attention_mask=mask).logits.shape == (2, 3)
    with pytest.raises(InputError, match="max_seqlen 600 exceeds max_position_embeddings 512"):
        model(torch.full((600,), 1000), cu_seqlens=torch.tensor([0, 600], dtype=torch.int32), max_seqlen=600)


def test_mask_shape_and_content(model):
    ids = _ids()
    with pytest.raises(InputError, match=r"attention_mask shape \(3, 5\) does not match input_ids shape \(3, 6\)"):
        model(ids, attention_mask=torch.ones(3, 5, dtype=torch.int64))
    mask = torch.ones_like(ids)
    mask[1, 2] = 0
    with pytest.raises(InputError, match="right-padded"):
        model(ids, attention_mask=mask)
    mask = torch.ones_like(ids)
    mask[2] = 0
    with pytest.raises(InputError, match="at least one token"):
        model(ids, attention_mask=mask)
    with pytest.raises(InputError, match="only 0 and 1"):
        model(ids, attention_mask=torch.full_like(ids, 2))
    with pytest.raises(InputError, match=r"token_type_ids shape \(3, 2\)"):
        model(ids, token_type_ids=torch.zeros(3, 2, dtype=torch.int64))


def test_bad_input_types_and_ranks(model):
    with pytest.raises(InputError, match="integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(InputError, match=r"must be \(batch, seq_len\)"):
        model(torch.zeros(2, 3, 4, dtype=torch.int64))
    with pytest.raises(InputError, match=r"must be \(batch, seq_len\)"):
        model(torch.zeros(5, dtype=torch.int64))


def test_bad_packed_input(model):
    ids = torch.full((10,), 1000)
    with pytest.raises(InputError, match="every row needs at least one token"):
        model(ids, cu_seqlens=torch.tensor([0, 4, 4, 10], dtype=torch.int32), max_seqlen=6)
    with pytest.raises(InputError, match="exceeds the number of tokens"):
        model(ids, cu_seqlens=torch.tensor([0, 4, 12], dtype=torch.int32), max_seqlen=8)
    with pytest.raises(InputError, match="longer than max_seqlen=3"):
        model(ids, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=3)
    with pytest.raises(InputError, match="cu_seqlens must be int32"):
        model(ids, cu_seqlens=torch.tensor([0.0, 10.0]), max_seqlen=10)
    with pytest.raises(InputError, match="attention_mask must be None for packed"):
        model(ids, attention_mask=torch.ones(10), cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))


def test_input_on_another_device_than_model(model):
    ids = _ids().to("meta")
    with pytest.raises(InputError, match="input_ids is on meta but the model is on cpu"):
        model(ids)


def test_not_a_bert_checkpoint(tmp_path, tier_dirs, minilm_dir):
    with pytest.raises(CheckpointError, match="not a directory"):
        CascadeBert.from_pretrained([tmp_path / "nope"], thresholds=[])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Tier.from_pretrained(tmp_path / "empty")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'"):
        Tier.from_pretrained(gpt)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((tier_dirs[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights found"):
        Tier.from_pretrained(noweights)
    # the bare encoder (BertModel keys, no classifier) lists what is missing
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): bert\.embeddings.*classifier\.bias.*make_classifier_checkpoint"):
        Tier.from_pretrained(minilm_dir)


def test_checkpoint_with_extra_or_missing_key(tmp_path, tier_dirs):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tier_dirs[1] / "model.safetensors"))
    for name, edit, match in [
        ("extra", lambda d: d.update({"bert.encoder.layer.1.output.dense.weight": torch.zeros(1)}),
         r"unexpected keys \(1\): bert.encoder.layer.1.output.dense.weight"),
        ("missing", lambda d: d.pop("bert.pooler.dense.bias"), r"missing keys \(1\): bert.pooler.dense.bias"),
        ("shape", lambda d: d.update({"classifier.bias": torch.zeros(5)}), r"classifier.bias: checkpoint \(5,\) vs config \(3,\)"),
    ]:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((tier_dirs[1] / "config.json").read_text())
        sd2 = dict(sd)
        edit(sd2)
        save_file(sd2, str(d / "model.safetensors"))
        with pytest.raises(CheckpointError, match=match):
            Tier.from_pretrained(d)


def test_unknown_backend_name():
    from cascade_rt import backends

    with pytest.raises(ValueError, match="unknown cascade_rt backend 'fast'"):
        backends.set_backend("fast")
