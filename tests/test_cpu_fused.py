"""The CPU exact path: the fused encoder (``ops.encoder_layers``), dense weights packed once in
oneDNN's layout (``dense.prepack``) and the native embeddings kernel, against their references.

The native ops run with outputs poisoned (see ``test_native_ops.poisoned``: every ``at::empty``
inside the extension is NaN), on odd sizes (hidden 40, 5 heads of 8, intermediate 72) and row
lengths on both sides of the attention kernel's switch from direct loops to BLAS (48 tokens).
The tier tests hold the packed copies to the weights they were made from: after an in-place
update, a re-assigned parameter, a load_state_dict or a dtype round trip, a forward must equal
the per-op path on the current weights.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rt import backends, ops, reference as R
from cascade_rt import dense as D
from cascade_rt.dense import dense, dense_impl, prepack

if os.environ.get("CASCADE_RT_NO_NATIVE") == "1":
    pytest.skip("built with CASCADE_RT_NO_NATIVE=1", allow_module_level=True)

from test_native_ops import cu_of, poisoned  # noqa: E402
from test_sync_free import _padded, _tier  # noqa: E402

HIDDEN, HEADS, INTER, LAYERS, EPS = 40, 5, 72, 2, 1e-12
# (dtype, atol): the fused op and the reference round at the same points (each op's output in
# x's dtype) but sum in other orders, so low-precision outputs may differ by a few units in the
# last place of values of order one (LayerNorm outputs); fp32 by accumulation order only
TOLS = [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 6e-3)]
LENGTHS = [[1, 7, 33, 2], [5], [60, 3], [49, 48, 47], []]


def _weights(dtype, g, layers=LAYERS, hidden=HIDDEN, inter=INTER):
    HIDDEN, INTER = hidden, inter  # noqa: N806

    def rnd(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(shape, generator=g)).to(dtype)

    ws = []
    for _ in range(layers):
        ws += [rnd(3 * HIDDEN, HIDDEN, scale=HIDDEN ** -0.5), rnd(3 * HIDDEN, scale=0.1),
               rnd(HIDDEN, HIDDEN, scale=HIDDEN ** -0.5), rnd(HIDDEN, scale=0.1),
               rnd(HIDDEN, scale=0.1, shift=1.0), rnd(HIDDEN, scale=0.1),
               rnd(INTER, HIDDEN, scale=HIDDEN ** -0.5), rnd(INTER, scale=0.1),
               rnd(HIDDEN, INTER, scale=INTER ** -0.5), rnd(HIDDEN, scale=0.1),
               rnd(HIDDEN, scale=0.1, shift=1.0), rnd(HIDDEN, scale=0.1)]
    return ws


def _packed(ws, layout="onednn"):
    dense_at = {0, 2, 6, 8}
    return [D.pack(w, layout) if i % R.ENCODER_WEIGHTS_PER_LAYER in dense_at else w for i, w in enumerate(ws)]


#: the dense-weight layouts a CPU tier can run its encoder on here
LAYOUTS = ["onednn"] + (["panel"] if D.panel_width() else [])


@pytest.fixture(params=LAYOUTS)
def layout(request):
    """Tiers in the test run their fp32 dense layers on this layout."""
    D.set_panel(request.param == "panel")
    yield request.param
    D.set_panel(True)


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("dtype,atol,packed", [(d, a, p) for d, a in TOLS for p in LAYOUTS + ["plain"]
                                               if p != "panel" or d == torch.float32],  # panels: fp32 only
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_encoder_layers_native_matches_reference(lengths, dtype, atol, packed, activation):
    g = torch.Generator().manual_seed(len(lengths) * 7 + len(activation))
    cu, T = cu_of(lengths, "cpu")
    x = torch.randn(T, HIDDEN, generator=g).to(dtype)
    ws = _weights(dtype, g)
    args = (cu, max(lengths, default=0))
    with poisoned():
        got = torch.ops.cascade_rt.encoder_layers(x, *args, _packed(ws, packed), HEADS, EPS, activation)
    want = R.encoder_layers_ref(x, *args, ws, HEADS, EPS, activation)
    assert got.shape == (T, HIDDEN) and got.dtype == dtype
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("packed", LAYOUTS)
def test_encoder_layers_dispatch_and_reference_take_packed_weights(packed):
    g = torch.Generator().manual_seed(3)
    cu, T = cu_of([9, 4], "cpu")
    x = torch.randn(T, HIDDEN, generator=g)
    ws = _weights(torch.float32, g)
    assert backends.implementation("encoder_layers", x, cu, 9, ws, HEADS, EPS, "gelu")[0] == "native"
    want = R.encoder_layers_ref(x, cu, 9, ws, HEADS, EPS, "gelu")
    torch.testing.assert_close(R.encoder_layers_ref(x, cu, 9, _packed(ws, packed), HEADS, EPS, "gelu"), want,
                               atol=0, rtol=0)
    torch.testing.assert_close(ops.encoder_layers(x, cu, 9, _packed(ws, packed), HEADS, EPS, "gelu"), want,
                               atol=2e-5, rtol=0)


FIRST_LENGTHS = [[1, 7, 33, 2], [5], [60, 3], [49, 48, 47], [1]]


@pytest.mark.parametrize("lengths", FIRST_LENGTHS, ids=str)
@pytest.mark.parametrize("dtype,atol,packed", [(d, a, p) for d, a in TOLS for p in LAYOUTS + ["plain"]
                                               if p != "panel" or d == torch.float32],
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("layers", [1, 2])
# hidden 40: the fused QKV weight's panels straddle the query/key cut, so the last layer takes
# every token's query; hidden 64 (a multiple of every panel width): the query weight's panels
# are cut off and the query is computed for the first tokens alone (plain weights: always)
@pytest.mark.parametrize("hidden,heads,inter", [(HIDDEN, HEADS, INTER), (64, 4, 100)])
def test_encoder_layers_first_tokens_match_the_full_result(lengths, dtype, atol, packed, layers, hidden, heads,
                                                           inter):
    """first_tokens: the last layer runs for each row's first token only; the result is the full
    encoder's output at cu_seqlens[:-1] (the reference defines it so)."""
    g = torch.Generator().manual_seed(sum(lengths) + layers + hidden)
    cu, T = cu_of(lengths, "cpu")
    x = torch.randn(T, hidden, generator=g).to(dtype)
    ws = _weights(dtype, g, layers=layers, hidden=hidden, inter=inter)
    args = (cu, max(lengths))
    with poisoned():
        got = torch.ops.cascade_rt.encoder_layers(x, *args, _packed(ws, packed), heads, EPS, "gelu", True)
    want = R.encoder_layers_ref(x, *args, ws, heads, EPS, "gelu", True)
    full = R.encoder_layers_ref(x, *args, ws, heads, EPS, "gelu")
    assert got.shape == (len(lengths), hidden) and got.dtype == dtype
    assert torch.equal(want, full.index_select(0, cu[:-1].long()))
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    torch.testing.assert_close(ops.encoder_layers(x, *args, _packed(ws, packed), heads, EPS, "gelu",
                                                  first_tokens=True), want, atol=atol, rtol=0)


def test_encoder_layers_first_tokens_edges():
    g = torch.Generator().manual_seed(5)
    ws = _weights(torch.float32, g, layers=1)
    cu, T = cu_of([3, 0, 2], "cpu")
    x = torch.randn(T, HIDDEN, generator=g)
    with pytest.raises(RuntimeError, match="row 1 is empty"):
        torch.ops.cascade_rt.encoder_layers(x, cu, 3, ws, HEADS, EPS, "gelu", True)
    with pytest.raises(ValueError, match="row 1 is empty"):
        R.encoder_layers_ref(x, cu, 3, ws, HEADS, EPS, "gelu", True)
    cu, T = cu_of([3, 2], "cpu")
    x = torch.randn(T, HIDDEN, generator=g)
    # no layers: the embeddings' first tokens; no rows: an empty (0, hidden)
    assert torch.equal(torch.ops.cascade_rt.encoder_layers(x, cu, 3, [], HEADS, EPS, "gelu", True), x[[0, 3]])
    none = torch.ops.cascade_rt.encoder_layers(x[:0], cu[:1], 0, ws, HEADS, EPS, "gelu", True)
    assert none.shape == (0, HIDDEN)


def test_encoder_layers_rejects_bad_weights():
    g = torch.Generator().manual_seed(4)
    cu, T = cu_of([3], "cpu")
    x = torch.randn(T, HIDDEN, generator=g)
    ws = _weights(torch.float32, g, layers=1)
    with pytest.raises(RuntimeError, match="12 tensors per layer"):
        torch.ops.cascade_rt.encoder_layers(x, cu, 3, ws[:-1], HEADS, EPS, "gelu")
    with pytest.raises(RuntimeError, match="multiple of num_heads"):
        torch.ops.cascade_rt.encoder_layers(x, cu, 3, ws, 7, EPS, "gelu")
    with pytest.raises(RuntimeError, match="dense weights must be QKV"):
        torch.ops.cascade_rt.encoder_layers(x, cu, 3, [ws[2]] + ws[1:], HEADS, EPS, "gelu")
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.cascade_rt.encoder_layers(x, cu, 3, ws, HEADS, EPS, "swish")


@pytest.mark.parametrize("M", [0, 1, 2, 3, 17])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh", "relu"])
def test_dense_with_packed_weight_matches_plain(M, activation):
    g = torch.Generator().manual_seed(M + 11)
    x = torch.randn(M, 33, generator=g)
    w = torch.randn(29, 33, generator=g) / 6
    b = torch.randn(29, generator=g)
    p = prepack(w)
    if dense_impl("cpu", torch.float32) == "onednn":
        assert p.is_mkldnn and tuple(p.shape) == (29, 33)
    want = R.linear_ref(x, w, b, torch.tensor([0, M], dtype=torch.int32), activation)
    torch.testing.assert_close(dense(x, p, b, activation), want, atol=2e-5, rtol=2e-5)


# -- the native embeddings kernel ----------------------------------------------------------------
@pytest.mark.parametrize("dtype,atol", TOLS[:2] + [(torch.float16, 2e-3)], ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("typed", [True, False], ids=["types", "no_types"])
def test_embed_layer_norm_native_skips_dead_slots(dtype, atol, typed):
    g = torch.Generator().manual_seed(21)
    V, P, Y, N, live = 50, 16, 3, 13, 9
    word, pos_w = torch.randn(V, HIDDEN, generator=g).to(dtype), torch.randn(P, HIDDEN, generator=g).to(dtype)
    type_w = torch.randn(Y, HIDDEN, generator=g).to(dtype) if typed else None
    ids = torch.randint(0, V, (N,), generator=g)
    pos = torch.randint(0, P, (N,), generator=g)
    types = torch.randint(0, Y, (N,), generator=g) if typed else None
    ln_w, ln_b = 1 + 0.1 * torch.randn(HIDDEN, generator=g), 0.1 * torch.randn(HIDDEN, generator=g)
    ids[live:] = -7  # dead slots hold ids out of range: never gathered
    cu = torch.tensor([0, 4, live], dtype=torch.int32)
    with poisoned():
        got = torch.ops.cascade_rt.embed_layer_norm(ids, pos, types, word, pos_w, type_w, ln_w, ln_b, 1e-5, cu)
    want = R.embed_layer_norm_ref(ids[:live], pos[:live], None if types is None else types[:live], word, pos_w,
                                  type_w, ln_w, ln_b, 1e-5)
    torch.testing.assert_close(got[:live], want, atol=atol, rtol=0)
    assert got[live:].isnan().all()  # left unwritten (poisoned)
    with pytest.raises(RuntimeError, match=r"input_ids\[9\] = -7 is out of range \[0, 50\)"):
        torch.ops.cascade_rt.embed_layer_norm(ids, pos, types, word, pos_w, type_w, ln_w, ln_b, 1e-5, None)


# -- the tier's CPU path ------------------------------------------------------------------------
def _per_op(tier, ids, mask, types):
    """The tier's forward with every layer through run_layer (no fused encoder)."""
    from cascade_rt.inputs import prepare_inputs

    b = prepare_inputs(ids, mask, types, None, None, limits=[tier.config], device=tier.device)
    with torch.no_grad():
        x = tier.embed(b.input_ids, b.token_type_ids, b.cu_seqlens)
        for i in range(tier.config.num_hidden_layers):
            x = tier.run_layer(i, x, b.cu_seqlens, b.max_seqlen)
        return tier.exit_head(tier.first_tokens(x, b.cu_seqlens), 1.0)[0]


def test_tier_runs_one_fused_call_and_matches_the_per_op_path(monkeypatch, layout):
    tier = _tier(3, 40, 5, 7)
    ids, mask, types = _padded([1, 7, 60, 2, 33], seed=2, width=64)
    calls = []
    real = torch.ops.cascade_rt.encoder_layers
    monkeypatch.setattr(torch.ops.cascade_rt, "encoder_layers", lambda *a: calls.append(a) or real(*a),
                        raising=False)
    from cascade_rt import native_backend as N

    monkeypatch.setitem(N.OPS, "encoder_layers", torch.ops.cascade_rt.encoder_layers)
    got = tier(ids, mask, types)
    assert len(calls) == 1 and len(calls[0][3]) == 12 * 3
    if layout == "panel":
        assert calls[0][3][0].dim() == 3  # the QKV weight in panels
    elif dense_impl("cpu", torch.float32) == "onednn":
        assert calls[0][3][0].is_mkldnn  # the packed QKV weight
    torch.testing.assert_close(got, _per_op(tier, ids, mask, types), atol=2e-5, rtol=0)
    # grad mode changes nothing (inside, oneDNN would take another path for a grad-requiring bias)
    from cascade_rt.inputs import prepare_inputs

    b = prepare_inputs(ids, mask, types, None, None, limits=[tier.config], device=tier.device)
    args = (b.input_ids, b.token_type_ids, b.cu_seqlens, b.max_seqlen)
    with torch.no_grad():
        want = tier.encode(*args)
    assert torch.equal(tier.encode(*args), want)


def test_tier_first_tokens_on_every_path(monkeypatch, layout):
    """encode(first_tokens=True) and run_layer(first_tokens=True) give the full encoder's [CLS]
    states on the fused native path, the forced reference, the per-layer path, and a forced
    backend that lacks first_token_attention (which falls back to the full attention)."""
    from cascade_rt import native_backend as N
    from cascade_rt.inputs import prepare_inputs

    tier = _tier(3, 40, 5, 7)
    ids, mask, types = _padded([1, 7, 60, 2, 33], seed=2, width=64)
    b = prepare_inputs(ids, mask, types, None, None, limits=[tier.config], device=tier.device)
    args = (b.input_ids, b.token_type_ids, b.cu_seqlens, b.max_seqlen)
    with torch.no_grad():
        want = tier.first_tokens(tier.encode(*args), b.cu_seqlens)
        torch.testing.assert_close(tier.encode(*args, first_tokens=True), want, atol=2e-5, rtol=0)
        with backends.use_backend("reference"):
            torch.testing.assert_close(tier.encode(*args, first_tokens=True), want, atol=2e-5, rtol=0)
        x = tier.embed(b.input_ids, b.token_type_ids, b.cu_seqlens)
        for i in range(2):
            x = tier.run_layer(i, x, b.cu_seqlens, b.max_seqlen)
        got = tier.run_layer(2, x, b.cu_seqlens, b.max_seqlen, first_tokens=True)
        assert got.shape == (5, 40)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
        with pytest.raises(ValueError, match="exact shapes"):
            tier.run_layer(2, x, b.cu_seqlens, b.max_seqlen, first_tokens=True, sync_free=True)
        monkeypatch.delitem(N.OPS, "first_token_attention")
        with backends.use_backend("native"):
            got = tier.run_layer(2, x, b.cu_seqlens, b.max_seqlen, first_tokens=True)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_run_layers_is_a_slice_of_the_fused_encoder(monkeypatch, layout):
    """run_layers(start, stop) runs that slice of the layers in one fused call (the early-exit
    baseline's path) and equals run_layer per layer, with first_tokens on its last layer; under
    a forced reference backend, and with a bad range, it says so or falls back."""
    from cascade_rt import native_backend as N
    from cascade_rt.inputs import prepare_inputs

    tier = _tier(4, 40, 5, 8)
    ids, mask, types = _padded([1, 7, 60, 2, 33, 49], seed=3, width=64)
    b = prepare_inputs(ids, mask, types, None, None, limits=[tier.config], device=tier.device)
    calls = []
    real = torch.ops.cascade_rt.encoder_layers
    monkeypatch.setitem(N.OPS, "encoder_layers", lambda *a: calls.append(a) or real(*a))
    with torch.no_grad():
        x0 = tier.embed(b.input_ids, b.token_type_ids, b.cu_seqlens)
        per_layer = [x0]
        for i in range(4):
            per_layer.append(tier.run_layer(i, per_layer[-1], b.cu_seqlens, b.max_seqlen))
        for start, stop in [(0, 1), (1, 3), (3, 4), (0, 4)]:
            calls.clear()
            got = tier.run_layers(start, stop, per_layer[start], b.cu_seqlens, b.max_seqlen)
            assert len(calls) == 1 and len(calls[0][3]) == 12 * (stop - start)
            torch.testing.assert_close(got, per_layer[stop], atol=2e-5, rtol=0)
            cls = tier.run_layers(start, stop, per_layer[start], b.cu_seqlens, b.max_seqlen, first_tokens=True)
            assert cls.shape == (6, 40)
            torch.testing.assert_close(cls, tier.first_tokens(per_layer[stop], b.cu_seqlens), atol=2e-5, rtol=0)
        with backends.use_backend("reference"):
            got = tier.run_layers(1, 3, per_layer[1], b.cu_seqlens, b.max_seqlen)
        torch.testing.assert_close(got, per_layer[3], atol=2e-5, rtol=0)
        for bad in [(2, 2), (-1, 2), (3, 5)]:
            with pytest.raises(ValueError, match="run_layers: need 0 <= start < stop <= 4"):
                tier.run_layers(*bad, x0, b.cu_seqlens, b.max_seqlen)


def test_packed_weights_follow_every_kind_of_update(layout):
    tier = _tier(2, 40, 5, 9)
    ids, mask, types = _padded([5, 17, 3], seed=4)

    def check():
        torch.testing.assert_close(tier(ids, mask, types), _per_op(tier, ids, mask, types), atol=2e-5, rtol=0)

    check()
    layer = tier.bert.encoder.layer[1]
    with torch.no_grad():
        layer.intermediate.dense.weight.mul_(-1.5)  # in place: bumps the version
        getattr(layer.attention, "self").key.weight.add_(0.3)  # lands in the fused QKV storage
    check()
    layer.output.dense.weight = torch.nn.Parameter(torch.randn_like(layer.output.dense.weight) * 0.2)
    check()
    tier.load_state_dict(_tier(2, 40, 5, 10).state_dict())
    check()
    before = tier(ids, mask, types)
    tier.double().float()  # new storages, possibly at the old addresses
    check()
    torch.testing.assert_close(tier(ids, mask, types), before, atol=2e-5, rtol=0)


def test_forced_reference_runs_the_reference_encoder(layout):
    tier = _tier(2, 40, 5, 12)
    ids, mask, types = _padded([4, 9], seed=6)
    want = tier(ids, mask, types)
    with backends.use_backend("reference"):
        got = tier(ids, mask, types)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert math.isfinite(float(got.abs().max()))


def test_a_tier_with_packed_weights_deep_copies(layout):
    """The packed oneDNN copies cannot be copied; a deep copy leaves them behind and rebuilds."""
    import copy

    tier = _tier(2, 40, 5, 13)
    ids, mask, types = _padded([6, 11], seed=7)
    want = tier(ids, mask, types)  # builds the packed weights and the plan
    twin = copy.deepcopy(tier)
    torch.testing.assert_close(twin(ids, mask, types), want, atol=0, rtol=0)
    with torch.no_grad():
        getattr(twin.bert.encoder.layer[0].attention, "self").query.weight.mul_(-1)
    assert not torch.allclose(twin(ids, mask, types), want)  # its own weights, not the original's
    torch.testing.assert_close(tier(ids, mask, types), want, atol=0, rtol=0)


# -- batch invariance ---------------------------------------------------------------------------
_INVARIANT_TIERS: dict = {}


@pytest.mark.skipif(not D.panel_width(), reason="the panel kernel is not offered on this CPU")
@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=2, max_size=7), pick=st.integers(0, 6),
       threads=st.sampled_from([1, 2]))
def test_a_rows_result_does_not_depend_on_its_batch(lengths, pick, threads):
    """fp32 CPU tiers run every dense layer on panels, whose per-row arithmetic is the same for
    any row count, chunking and thread count; attention, LayerNorm and embeddings are per row.
    So a row alone and the same row in any batch give the same bits, through a cascade too
    (its tier-1 batch is whatever survived)."""
    from cascade_rt import CascadeBert

    if not _INVARIANT_TIERS:
        _INVARIANT_TIERS["cascade"] = CascadeBert([_tier(1, 40, 5, 31), _tier(2, 40, 5, 32)], [0.6]).eval()
    model = _INVARIANT_TIERS["cascade"]
    i = pick % len(lengths)
    ids, mask, types = _padded(lengths, seed=sum(lengths))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            full = model(ids, mask, types)
            alone = model(ids[i:i + 1, :lengths[i]], mask[i:i + 1, :lengths[i]], types[i:i + 1, :lengths[i]])
            tier_full = model.tiers[1](ids, mask, types)
            tier_alone = model.tiers[1](ids[i:i + 1], mask[i:i + 1], types[i:i + 1])
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(full.logits[i], alone.logits[0])
    assert torch.equal(full.confidence[i], alone.confidence[0])
    assert int(full.exit_tier[i]) == int(alone.exit_tier[0])
    assert torch.equal(tier_full[i], tier_alone[0])
