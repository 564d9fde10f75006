"""A cascade captured for a fixed maximum shape and replayed on new batches; torch.compile.

On CPU the captured object runs eagerly on the same fixed-shape buffers (checks the input
staging, the dummy rows, the per-tier counts and the errors); on CUDA it is a real graph.
"""
from __future__ import annotations

import pytest
import torch

from cascade_rt import CascadeBert, InputError, backends, reference_backend
from cascade_rt.graphs import CapturedCascade, capture

from test_sync_free import LENGTHS, _padded, _padded_varlen_attention, _thresholds_for, _tier


@pytest.fixture(scope="module")
def model():
    m = CascadeBert([_tier(1, 16, 2, 1), _tier(2, 24, 3, 2), _tier(2, 32, 4, 3)], [0.5, 0.5])
    ids, mask, types = _padded(LENGTHS, seed=1)
    m.set_thresholds(_thresholds_for(m, ids, mask, types, "half_exit"))
    return m


@pytest.fixture(scope="module")
def default_path(model):
    """A second cascade on the same tiers and thresholds that stays on the default (exact-shape,
    host-reading) path: ``capture()`` switches the shared ``model`` to the sync-free path, so
    comparing a replay with ``model(...)`` would hold the sync-free path against itself."""
    ref = CascadeBert(model.tiers, model.thresholds)
    assert not ref.sync_free
    return ref


def _same(a, b, atol=1e-5):
    assert torch.equal(a.exit_tier, b.exit_tier)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=atol)
    torch.testing.assert_close(a.confidence, b.confidence, rtol=0, atol=atol)
    assert torch.equal(a.rows_per_tier.cpu(), b.rows_per_tier.cpu())
    assert torch.equal(a.tokens_per_tier.cpu(), b.tokens_per_tier.cpu())


def test_replays_match_eager_on_new_batches(model, default_path):
    g = capture(model, max_batch=16, max_seqlen=40)
    assert g.graph is None  # CPU: nothing to capture, same buffers
    assert model.sync_free and not default_path.sync_free
    for seed, lengths in enumerate([LENGTHS, [1], [40, 3, 1, 17], LENGTHS[::-1] + [2, 2, 9, 40, 1]]):
        ids, mask, types = _padded(lengths, seed=seed + 20)
        want = default_path(ids, mask, types)
        got = g(ids, mask, types)
        _same(got, want)
        assert got.exit_tier.shape == (len(lengths),)


def test_mask_and_types_optional(model, default_path):
    g = capture(model, max_batch=4, max_seqlen=8)
    ids, _, _ = _padded([8, 8, 8], seed=3)
    _same(g(ids), default_path(ids))


def test_bool_mask_accepted(model, default_path):
    g = capture(model, max_batch=12, max_seqlen=33)
    ids, mask, types = _padded(LENGTHS, seed=4)
    _same(g(ids, mask.bool(), types), default_path(ids, mask, types))


def _static_outputs(g):
    """Make the CPU capture behave like a CUDA graph replay: every forward writes into the same
    output buffers (a graph's outputs live in its pool and each replay overwrites them)."""
    forward = g._forward
    static = {}

    def replay():
        out = forward()
        if not static:
            static.update({k: torch.empty_like(v) for k, v in vars(out).items()})
        for k, v in vars(out).items():
            static[k].copy_(v)
        return type(out)(**static)

    g._forward = replay
    return static


@pytest.mark.parametrize("static", [False, True], ids=["fresh", "static_buffers"])
def test_outputs_not_overwritten_unless_asked(model, default_path, static):
    g = capture(model, max_batch=12, max_seqlen=33)
    if static and g.graph is None:
        _static_outputs(g)
    a_in, b_in = _padded(LENGTHS, seed=5), _padded(LENGTHS[::-1], seed=6)
    a = g(*a_in)
    a_want = default_path(*a_in)
    g(*b_in)
    _same(a, a_want)  # clone=True (the default): the next call leaves a alone


def test_clone_false_returns_the_replay_buffers(model, default_path):
    """``clone=False``: correct rows, and views of the output buffers that the next call
    overwrites (as the docstring says), on CPU emulated with static buffers."""
    g = capture(model, max_batch=12, max_seqlen=33)
    static = _static_outputs(g) if g.graph is None else None
    a_in, b_in = _padded(LENGTHS, seed=5), _padded(LENGTHS[::-1], seed=6)
    a = g(*a_in, clone=False)
    _same(a, default_path(*a_in))
    if static is not None:
        assert a.logits.data_ptr() == static["logits"].data_ptr()
    b = g(*b_in, clone=False)
    _same(b, default_path(*b_in))
    # a's tensors alias the buffers: they now hold b's rows
    assert torch.equal(a.exit_tier, b.exit_tier)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    c = g(*a_in)  # clone=True: fresh tensors
    assert c.logits.data_ptr() != a.logits.data_ptr()


def test_errors_name_the_problem(model):
    g = capture(model, max_batch=4, max_seqlen=8)
    ids, mask, _ = _padded([8, 2, 3, 1, 5], seed=7)
    with pytest.raises(InputError, match=r"\(5, 8\).*at most \(4, 8\)"):
        g(ids, mask)
    ids, mask, _ = _padded([9, 2], seed=7)
    with pytest.raises(InputError, match=r"at most \(4, 8\)"):
        g(ids, mask)
    with pytest.raises(InputError, match="integer"):
        g(ids.float(), mask)
    with pytest.raises(InputError, match="shape"):
        g(ids[:, :4], mask)
    with pytest.raises(InputError, match=r"\(batch, seq_len\)"):
        g(ids[0])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        capture(model, max_batch=2, max_seqlen=65)
    with pytest.raises(ValueError, match="CUDA"):
        CapturedCascade(model, 2, 8, use_graph=True)
    old = list(model.thresholds)
    try:
        model.set_thresholds([0.9, 0.9])
        with pytest.raises(RuntimeError, match="capture the cascade again"):
            g(ids[:, :8][:2], mask[:, :8][:2])
    finally:
        model.set_thresholds(old)


def test_capture_method_on_the_model(model):
    g = model.capture(max_batch=3, max_seqlen=9)
    assert isinstance(g, CapturedCascade) and model.sync_free


@pytest.mark.parametrize("pool", [0.0, 1.0])
def test_cascade_traces_as_one_graph(model, monkeypatch, pool):
    """torch.compile (dynamo) sees the whole sync-free forward as one graph on CPU, given ops
    that do not read back (the reference attention walks rows on the host, so a sync-free
    test attention stands in for the fast backends' op); a pooling cascade too."""
    monkeypatch.setitem(reference_backend.OPS, "varlen_attention", _padded_varlen_attention)
    torch._dynamo.reset()
    ids, mask, types = _padded(LENGTHS, seed=8)
    prev = model.sync_free, model.check_inputs, model.pool_weight
    model.sync_free, model.check_inputs, model.pool_weight = True, False, pool
    try:
        with backends.use_backend("reference"):
            want = model(ids, mask, types)
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            got = compiled(ids, mask, types)
    finally:
        model.sync_free, model.check_inputs, model.pool_weight = prev
        torch._dynamo.reset()
    _same(got, want)


# -- CUDA -------------------------------------------------------------------------------------

def _cuda_model(dtype):
    from test_sync_free import _fresh_tiers

    dev = torch.device("cuda")
    m = CascadeBert([t.to(dev, dtype) for t in _fresh_tiers()], [0.5, 0.5])
    ids, mask, types = (x.to(dev) for x in _padded(LENGTHS, seed=1))
    m.set_thresholds(_thresholds_for(m, ids, mask, types, "half_exit"))
    return m


def _need_fast_backend():
    if not (backends.available("triton") or backends.available("native")):
        pytest.skip("no fast CUDA backend loaded (the reference attention walks rows on the host)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,pool", [(torch.float16, 0.0), (torch.float32, 0.0), (torch.float16, 1.0)])
def test_cuda_graph_replays_match_eager(dtype, pool):
    _need_fast_backend()
    model = _cuda_model(dtype).set_pool_weight(pool)
    g = capture(model, max_batch=16, max_seqlen=40)
    assert g.graph is not None
    atol = 2e-2 if dtype == torch.float16 else 1e-4
    for seed, lengths in enumerate([LENGTHS, [1], [40, 3, 1, 17]]):
        ids, mask, types = (x.cuda() for x in _padded(lengths, seed=seed + 30))
        want = model(ids, mask, types)
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = g(ids, mask, types)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        _same(got, want, atol=atol)


@pytest.mark.gpu
def test_cuda_torch_compile_fullgraph_matches_eager():
    _need_fast_backend()
    model = _cuda_model(torch.float16)
    model.sync_free = True
    ids, mask, types = (x.cuda() for x in _padded(LENGTHS, seed=9))
    want = model(ids, mask, types)
    torch._dynamo.reset()
    try:
        got = torch.compile(model, fullgraph=True)(ids, mask, types)
    finally:
        torch._dynamo.reset()
    _same(got, want, atol=2e-2)
