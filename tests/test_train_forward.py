"""The training forward with the last layer for [CLS] only (cascade_rt.train.forward) against
transformers' own forward: logits and gradients per row, on random odd-sized BERTs, with a
tolerance tied to transformers' own float32 error (both measured against a float64 run)."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertForSequenceClassification

from cascade_rt.train import TrainConfig, encode, finetune
from cascade_rt.train.forward import classifier_logits, cls_only_supported


def _model(seed, layers, heads, head_dim, labels, attn="sdpa"):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=101, hidden_size=heads * head_dim, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=3 * heads * head_dim + 5, num_labels=labels,
                     max_position_embeddings=48, type_vocab_size=2)
    cfg._attn_implementation = attn
    m = BertForSequenceClassification(cfg)
    with torch.no_grad():  # a trained-looking model: non-zero biases and LayerNorm affine terms
        for n, p in m.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _inputs(seed, lengths, vocab=101):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, vocab, (len(lengths), S), generator=g) * mask
    types = torch.randint(0, 2, (len(lengths), S), generator=g) * mask
    return ids, types, mask


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 3), heads=st.integers(1, 4),
       head_dim=st.sampled_from([4, 7, 16]), labels=st.integers(2, 5),
       lengths=st.lists(st.integers(1, 23), min_size=1, max_size=6), attn=st.sampled_from(["sdpa", "eager"]))
def test_logits_and_gradients_match_transformers(seed, layers, heads, head_dim, labels, lengths, attn):
    m = _model(seed, layers, heads, head_dim, labels, attn)
    assert cls_only_supported(m)
    ids, types, mask = _inputs(seed, lengths)
    m64 = _model(seed, layers, heads, head_dim, labels, attn).double()
    params, params64 = list(m.parameters()), list(m64.parameters())

    def run(model, fn, ps):
        out = fn(model)
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * w).sum(), ps, allow_unused=True)
        return out.detach(), grads

    hf = lambda mm: mm(input_ids=ids, token_type_ids=types, attention_mask=mask).logits  # noqa: E731
    ours = lambda mm: classifier_logits(mm, ids, types, mask)  # noqa: E731
    ref, g_ref = run(m64, hf, params64)
    got, g_got = run(m, ours, params)
    out_hf, g_hf = run(m, hf, params)
    # per row: our error against float64 within a small multiple of transformers' own
    err_hf = (out_hf.double() - ref).abs().amax(-1)
    err = (got.double() - ref).abs().amax(-1)
    assert bool((err <= 4 * err_hf + 1e-6).all()), (err, err_hf)
    # a floor of fp32 rounding at the scale of the model's gradients: a gradient that is exactly
    # zero in float64 (the query weights when every row is one token) is only that close to zero
    grad_scale = max(float(r.abs().max()) for r in g_ref if r is not None)
    for name, a, b, r in zip([n for n, _ in m.named_parameters()], g_got, g_hf, g_ref):
        if r is None:  # unused by transformers' forward too (none for a classifier)
            assert a is None or float(a.abs().max()) == 0.0, name
            continue
        scale = max(float(r.abs().max()), grad_scale * 1e-3)
        e_ours = float((a.double() - r).abs().max()) if a is not None else float(r.abs().max())
        e_hf = float((b.double() - r).abs().max())
        assert e_ours <= 4 * e_hf + 1e-6 * scale, name


def test_dropout_follows_training_mode():
    m = _model(0, 2, 2, 8, 3)
    ids, types, mask = _inputs(1, [9, 4, 7])
    a, b = classifier_logits(m, ids, types, mask), classifier_logits(m, ids, types, mask)
    assert torch.equal(a, b)  # eval: deterministic
    m.train()
    torch.manual_seed(0)
    c = classifier_logits(m, ids, types, mask)
    d = classifier_logits(m, ids, types, mask)
    assert not torch.equal(c, d) and not torch.equal(c, a)


def test_unsupported_models_are_refused():
    m = _model(0, 1, 2, 8, 2)
    m.config.position_embedding_type = "relative_key"
    assert not cls_only_supported(m)
    m = _model(0, 1, 2, 8, 2)
    m.config.is_decoder = True
    assert not cls_only_supported(m)
    assert not cls_only_supported(torch.nn.Linear(2, 2))


def test_finetune_without_dropout_trains_the_same_model(minilm_dir, tmp_path, tokenizer):
    """With dropout off, training through the [CLS]-only forward gives transformers' forward's
    model (same batches, same steps) up to float rounding."""
    from cascade_rt import make_classifier_checkpoint
    from cascade_rt.data import Example

    init = make_classifier_checkpoint(minilm_dir, tmp_path / "init", num_labels=2, num_layers=2, seed=0)
    cfg_file = init / "config.json"
    c = json.loads(cfg_file.read_text())
    c["hidden_dropout_prob"] = c["attention_probs_dropout_prob"] = 0.0
    cfg_file.write_text(json.dumps(c))
    words = ["great", "awful", "superb film", "boring", "lovely", "dreadful", "fine film", "a mess of a plot"]
    data = encode(tokenizer, [Example(w, int(i % 2 == 0)) for i, w in enumerate(words * 3)], 16)
    cfg = TrainConfig(epochs=2, lr=5e-4, batch_size=8, seed=3)
    a = finetune(init, data, None, cfg, quiet=True, save=False).state_dict()
    b = finetune(init, data, None, TrainConfig(**{**vars(cfg), "cls_only": False}), quiet=True, save=False).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=5e-5, rtol=0, msg=k)
    w0 = make_classifier_checkpoint(minilm_dir, tmp_path / "init2", num_labels=2, num_layers=2, seed=0)
    from safetensors.torch import load_file
    sd0 = load_file(str(w0 / "model.safetensors"))
    moved = sum(not torch.allclose(a[k], sd0[k], atol=1e-4) for k in sd0 if k in a)
    assert moved > 10  # it trained


@pytest.mark.parametrize("layers", [1, 2])
def test_cut_from_a_trained_classifier_keeps_its_head(minilm_dir, tmp_path, layers):
    from safetensors.torch import load_file

    from cascade_rt import make_classifier_checkpoint
    from cascade_rt.checkpoint import CheckpointError

    big = make_classifier_checkpoint(minilm_dir, tmp_path / "big", num_labels=3, seed=5)
    cut = make_classifier_checkpoint(big, tmp_path / "cut", num_labels=3, num_layers=layers, keep_classifier=True)
    a, b = load_file(str(big / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert json.loads((cut / "config.json").read_text())["num_hidden_layers"] == layers
    for k, v in b.items():
        assert torch.equal(v, a[k]), k  # every kept tensor, the classifier included, is the source's
    assert not any(k.startswith(f"bert.encoder.layer.{layers}.") for k in b)
    with pytest.raises(CheckpointError, match="keep_classifier needs a \\(2, 384\\) classifier"):
        make_classifier_checkpoint(big, tmp_path / "bad", num_labels=2, num_layers=1, keep_classifier=True)
    with pytest.raises(CheckpointError, match="keep_classifier needs"):
        make_classifier_checkpoint(minilm_dir, tmp_path / "bad2", num_labels=2, num_layers=1, keep_classifier=True)
