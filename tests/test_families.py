"""Every model family against transformers, per row: BERT, DistilBERT, RoBERTa, XLM-RoBERTa,
CamemBERT and ELECTRA, random-init at odd sizes (hidden 96, 3 heads, intermediate 200,
vocabulary 1,000); a mixed DistilBERT -> BERT cascade; the tier-compatibility errors; the
exit head's activations on every backend."""
import json
import math

import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rt import CascadeBert, backends, flops, ops
from cascade_rt import reference as ref
from cascade_rt.checkpoint import load_tier
from cascade_rt.models import FAMILIES, MODEL_TYPES
from cascade_rt.models.roberta import roberta_position_ids

VOCAB, HIDDEN, HEADS, INTER, LAYERS, LABELS = 1000, 96, 3, 200, 2, 3
MAX_LEN = 40  # longest row: BERT-style tables hold 40 positions, RoBERTa-style 42 (pad 1 + 1)

_COMMON = dict(vocab_size=VOCAB, num_labels=LABELS, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, intermediate_size=INTER)
_ROBERTA = dict(max_position_embeddings=MAX_LEN + 2, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2)
SPECS = {
    "bert": (tf.BertConfig, tf.BertForSequenceClassification,
             dict(_COMMON, max_position_embeddings=MAX_LEN, type_vocab_size=2)),
    "distilbert": (tf.DistilBertConfig, tf.DistilBertForSequenceClassification,
                   dict(vocab_size=VOCAB, num_labels=LABELS, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                        hidden_dim=INTER, max_position_embeddings=MAX_LEN)),
    "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification, dict(_COMMON, **_ROBERTA)),
    "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification, dict(_COMMON, **_ROBERTA)),
    "camembert": (tf.CamembertConfig, tf.CamembertForSequenceClassification, dict(_COMMON, **_ROBERTA)),
    "electra": (tf.ElectraConfig, tf.ElectraForSequenceClassification,
                dict(_COMMON, embedding_size=64, max_position_embeddings=MAX_LEN, type_vocab_size=2)),
}


def _vocab_lines():
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(VOCAB - 5)]


def build_hf(model_type, seed=0, vocab_lines=None, labels=None):
    """A random-init HF classifier whose outputs are far from trivial: weights normal(0, 0.08),
    LayerNorm weights around 1, head out layer std 0.5."""
    cfg_cls, model_cls, kw = SPECS[model_type]
    kw = dict(kw)
    if labels is not None:
        kw.update(id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("classifier") and p.dim() == 2 and p.shape[0] == LABELS:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model


def save_hf(model, path, vocab_lines=None):
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab_lines or _vocab_lines()) + "\n")
    return path


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {t: (save_hf(build_hf(t, seed=i), root / t.replace("-", "_")))
            for i, t in enumerate(SPECS)}


def _batch(model_type, seed=0):
    """Rows of length 1 .. MAX_LEN (right-padded with the family's pad id); RoBERTa-family
    rows also hold pad ids inside a row (positions then skip them, as HF numbers them)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([1, MAX_LEN, 17, 2, 33, 9, MAX_LEN - 1])
    B = lens.numel()
    pad = SPECS[model_type][2].get("pad_token_id", 0)
    ids = torch.randint(5, VOCAB, (B, MAX_LEN), generator=g)
    mask = (torch.arange(MAX_LEN)[None] < lens[:, None]).long()
    if pad == 1:
        ids[1, 5] = ids[4, 20] = pad
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    types = None
    if SPECS[model_type][2].get("type_vocab_size", 0) > 1:
        types = (torch.arange(MAX_LEN)[None] >= lens[:, None] // 2).long() * mask
    return ids, mask, types


def _hf_logits(model, ids, mask, types, dtype):
    m = model.to(dtype)
    kw = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask, **kw).logits.double()
    model.to(torch.float32)
    return out


@pytest.mark.parametrize("model_type", list(SPECS))
def test_family_matches_transformers_per_row(family_dirs, model_type):
    """fp32 within max(4x transformers' fp32-vs-fp64 error, 2e-5) per row; fp16 / bf16 within 3x
    transformers' own fp16 / bf16 error against fp64."""
    d = family_dirs[model_type]
    hf = tf.AutoModelForSequenceClassification.from_pretrained(d, attn_implementation="eager").eval()
    ids, mask, types = _batch(model_type)
    want = _hf_logits(hf, ids, mask, types, torch.float64)
    assert want.abs().max() > 0.5  # a comparison of near-zero logits would mean nothing
    hf32 = _hf_logits(hf, ids, mask, types, torch.float32)
    with backends.use_backend("native"):
        tier = load_tier(d)
        got = tier(ids, mask, types).double()
    bound = torch.clamp(4 * (hf32 - want).abs().amax(1), min=2e-5)
    err = (got - want).abs().amax(1)
    assert (err <= bound).all(), (err, bound)
    for dtype in (torch.float16, torch.bfloat16):
        hf_lp = _hf_logits(hf, ids, mask, types, dtype)
        with backends.use_backend("native"):
            got_lp = load_tier(d, dtype=dtype)(ids, mask, types).double()
        hf_err = (hf_lp - want).abs().max()
        assert (got_lp - want).abs().max() <= 3 * hf_err, (dtype, (got_lp - want).abs().max(), hf_err)


@pytest.mark.parametrize("model_type", list(SPECS))
def test_family_state_dict_and_save_round_trip(family_dirs, model_type, tmp_path):
    """Strict keys: the tier's state dict is the HF one; save_pretrained writes a directory that
    transformers loads back as the same class, with the tokenizer file."""
    d = family_dirs[model_type]
    hf = tf.AutoModelForSequenceClassification.from_pretrained(d).eval()
    tier = load_tier(d)
    sd = tier.state_dict()
    assert set(sd) == set(hf.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in hf.state_dict().items())
    tier.save_pretrained(tmp_path / "out")
    back = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["architectures"] == [type(hf).__name__] and written["model_type"] == model_type
    assert (tmp_path / "out" / "vocab.txt").read_text() == (d / "vocab.txt").read_text()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in hf.state_dict().items())


def test_mixed_distilbert_then_bert_cascade(family_dirs):
    """Each row gets the logits of the tier it exited at; rows leave at the first confident tier."""
    dirs = [family_dirs["distilbert"], family_dirs["bert"]]
    ids, mask, _ = _batch("distilbert", seed=3)
    hf_small = tf.AutoModelForSequenceClassification.from_pretrained(dirs[0], attn_implementation="eager")
    hf_large = tf.AutoModelForSequenceClassification.from_pretrained(dirs[1], attn_implementation="eager")
    small = _hf_logits(hf_small.eval(), ids, mask, None, torch.float64)
    large = _hf_logits(hf_large.eval(), ids, mask, None, torch.float64)
    conf = torch.softmax(small, -1).amax(-1)
    thr = float(conf.median())
    cascade = CascadeBert.from_pretrained(dirs, thresholds=[thr])
    assert [t.config.model_type for t in cascade.tiers] == ["distilbert", "bert"]
    out = cascade(ids, mask)
    exits = conf >= thr
    clear = (conf - thr).abs() > 1e-4
    assert torch.equal(out.exit_tier[clear], (~exits[clear]).long())
    assert 0 < int((out.exit_tier == 0).sum()) < ids.shape[0]
    want = torch.where((out.exit_tier == 0)[:, None], small, large)
    assert (out.logits.double() - want).abs().max() < 1e-4
    assert out.rows_per_tier.tolist() == [ids.shape[0], int((out.exit_tier == 1).sum())]


def test_incompatible_tiers_say_what_differs(tmp_path):
    a = save_hf(build_hf("distilbert", seed=1), tmp_path / "a")
    other = _vocab_lines()
    other[700] = "changed"
    b = save_hf(build_hf("bert", seed=2), tmp_path / "b", vocab_lines=other)
    with pytest.raises(ValueError, match=r"different tokenizer vocabularies: token id 700 is 'tok695' vs 'changed'"):
        CascadeBert.from_pretrained([a, b], thresholds=[0.5])
    c = save_hf(build_hf("bert", seed=3, labels=["neg", "mid", "pos"]), tmp_path / "c")
    d = save_hf(build_hf("bert", seed=4, labels=["neg", "pos", "mid"]), tmp_path / "d")
    with pytest.raises(ValueError, match="id2label"):
        CascadeBert.from_pretrained([c, d], thresholds=[0.5])
    CascadeBert.from_pretrained([a, c], thresholds=[0.5])  # default names vs named: compatible


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta", "electra"])
def test_family_through_triton_interpreter(family_dirs, model_type):
    """The family's tier with every op forced onto the Triton kernels (interpreter on CPU)."""
    d = family_dirs[model_type]
    ids, mask, types = _batch(model_type)
    rows = [0, 3, 5]  # lengths 1, 2, 9: few program instances
    ids, mask = ids[rows, :9], mask[rows, :9]
    types = None if types is None else types[rows, :9]
    want = load_tier(d)(ids, mask, types)
    with backends.use_backend("triton"):
        tier = load_tier(d)
        assert backends.implementation("exit_head", *_head_args(tier), 0.5, tier._head_act)[0] == "triton"
        got = tier(ids, mask, types)
    assert (got - want).abs().max() < 1e-4


def _head_args(tier):
    return (torch.zeros(1, HIDDEN), tier.bert.pooler.dense.weight, tier.bert.pooler.dense.bias,
            tier.classifier.weight, tier.classifier.bias)


@pytest.mark.parametrize("activation", ref.EXIT_HEAD_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_exit_head_activation_every_backend(activation, dtype):
    from cascade_rt.kernels.exit_head import exit_head as k_exit_head

    torch.manual_seed(len(activation))
    B, H, C = 13, 37, 5
    x = torch.randn(B, H).to(dtype)
    pw = (torch.randn(H, H) / math.sqrt(H)).to(dtype)
    pb, cw, cb = torch.randn(H).to(dtype), torch.randn(C, H).to(dtype), torch.randn(C).to(dtype)
    want = ref.exit_head_ref(x, pw, pb, cw, cb, 0.5, activation)
    other = ref.exit_head_ref(x, pw, pb, cw, cb, 0.5, "relu" if activation != "relu" else "tanh")
    assert (want[0] - other[0]).abs().max() > 1e-2  # the activation matters on these inputs
    with backends.use_backend("native"):
        nat = ops.exit_head(x, pw, pb, cw, cb, 0.5, activation)
    out = (torch.full((B, C), float("nan")), torch.full((B,), float("nan")), torch.ones(B, dtype=torch.bool))
    tri = k_exit_head(x, pw, pb, cw, cb, 0.5, activation, out=out)
    for got in (nat, tri):
        torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        assert torch.equal(got[2], got[1] >= 0.5)


def test_exit_head_unknown_activation_is_one_clear_error():
    args = (torch.randn(2, 4), torch.randn(4, 4), torch.randn(4), torch.randn(3, 4), torch.randn(3))
    with pytest.raises(ValueError, match="activation 'silu' is not one of"):
        ops.exit_head(*args, 0.5, "silu")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=9), min_size=1, max_size=5),
       st.integers(0, 2))
def test_roberta_positions_match_transformers(rows, pad):
    """Packed positions equal HF's (pad + cumsum of non-pad ids in each row, pad on pad ids)."""
    S = max(len(r) for r in rows)
    padded = torch.tensor([r + [pad] * (S - len(r)) for r in rows])
    want = tf.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(padded, pad)
    packed = torch.tensor([t for r in rows for t in r])
    pos_in_row = torch.tensor([i for r in rows for i in range(len(r))])
    got = roberta_position_ids(packed, pos_in_row, pad)
    assert got.tolist() == [int(want[b, i]) for b, r in enumerate(rows) for i in range(len(r))]


def test_families_cover_model_types_and_flops():
    assert set(MODEL_TYPES) == {"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra"}
    assert set(FAMILIES) == {"bert", "distilbert", "roberta", "electra"}
    from cascade_rt.config import TierConfig

    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, intermediate_size=INTER, num_labels=LABELS)
    lens = [3, 7, 40]
    plain = flops.tier_flops(TierConfig(**base, model_type="electra"), lens)
    projected = flops.tier_flops(TierConfig(**base, model_type="electra", embedding_size=64), lens)
    assert projected - plain == sum(lens) * 2 * 64 * HIDDEN


def _meta_tier(source_dir, model_type="roberta"):
    from cascade_rt import Tier, TierConfig

    cfg = TierConfig(vocab_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, model_type=model_type)
    with torch.device("meta"):
        t = Tier(cfg)
    t.source_dir = str(source_dir)
    return t


def test_vocabulary_files_compare_by_content(tmp_path):
    """BPE vocab.json + merges.txt, tokenizer.json's model and SentencePiece files are compared by
    content, across file kinds where the token lists can be read from both."""
    tokens = {"<s>": 0, "<pad>": 1, "</s>": 2, "a": 3}
    for name, merges in (("a", "#version: 0.2\na b\n"), ("b", "#version: 0.2\na b\n"), ("c", "#version: 0.2\nb a\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vocab.json").write_text(json.dumps(tokens))
        (tmp_path / name / "merges.txt").write_text(merges)
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": tokens, "merges": ["a b"]}, "truncation": None}))
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "sentencepiece.bpe.model").write_bytes(b"\x00\x01")
    tier = {n: _meta_tier(tmp_path / n) for n in ("a", "b", "c", "fast", "spm")}
    CascadeBert([tier["a"], tier["b"]], [0.5])
    CascadeBert([tier["a"], tier["fast"]], [0.5])  # same tokens and merges, other file kinds
    with pytest.raises(ValueError, match="the BPE merges differ"):
        CascadeBert([tier["a"], tier["c"]], [0.5])
    with pytest.raises(ValueError, match="no common kind of vocabulary file"):
        CascadeBert([tier["fast"], tier["spm"]], [0.5])


def test_roberta_rows_are_limited_by_positions_past_pad(family_dirs):
    """RoBERTa's table holds max_position_embeddings - (pad + 1) tokens per row: one more is an
    error, not a silently clamped position."""
    from cascade_rt.inputs import InputError

    tier = load_tier(family_dirs["roberta"])
    assert tier.config.max_seq_len == MAX_LEN
    ids = torch.randint(5, VOCAB, (1, MAX_LEN + 1))
    with pytest.raises(InputError, match=f"{MAX_LEN + 1} tokens, more than max_position_embeddings {MAX_LEN}"):
        tier(ids)


@pytest.mark.parametrize("sync_free", [False, True])
def test_three_family_cascade_rows_get_their_exit_tier_logits(family_dirs, sync_free):
    """DistilBERT -> RoBERTa -> ELECTRA (one vocabulary file): every row gets the logits of the
    tier it exited at, alone on that row, also on the sync-free path (upper-bound shapes, dead
    slots in every tier past the first)."""
    names = ["distilbert", "roberta", "electra"]
    ids, mask, _ = _batch("bert", seed=5)
    alone = [load_tier(family_dirs[n])(ids, mask) for n in names]
    conf = [torch.softmax(a, -1).amax(-1) for a in alone]
    thr = [float(conf[0].quantile(0.4)), float(conf[1].quantile(0.5))]
    cascade = CascadeBert.from_pretrained([family_dirs[n] for n in names], thresholds=thr)
    cascade.sync_free = sync_free
    out = cascade(ids, mask)
    want_tier = torch.where(conf[0] >= thr[0], 0, torch.where(conf[1] >= thr[1], 1, 2))
    assert torch.equal(out.exit_tier, want_tier)
    assert set(want_tier.tolist()) == {0, 1, 2}
    want = torch.stack(alone)[want_tier, torch.arange(ids.shape[0])]
    assert (out.logits - want).abs().max() < 1e-5
