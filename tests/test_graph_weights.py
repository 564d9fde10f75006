"""The fused query/key/value weight of a layer is the parameters' own storage.

A CUDA graph records the addresses of the tensors it reads. The layer's fused QKV weight
must therefore be the storage the three parameters view: an in-place weight update then
changes what a replay computes, and no eager call frees or replaces what a graph reads.
"""
from __future__ import annotations

import pytest
import torch

from cascade_rt import CascadeBert, Tier, backends
from cascade_rt.graphs import capture

from test_sync_free import LENGTHS, _padded, _thresholds_for, _tier


def _qkv_params(layer):
    sa = getattr(layer.attention, "self")
    return (sa.query.weight, sa.key.weight, sa.value.weight), (sa.query.bias, sa.key.bias, sa.value.bias)


def _check_fused(layer, w, b):
    ws, bs = _qkv_params(layer)
    assert torch.equal(w, torch.cat([p.detach() for p in ws], 0))
    assert torch.equal(b, torch.cat([p.detach() for p in bs], 0))


def test_in_place_updates_reach_the_fused_storage():
    tier = _tier(2, 24, 3, 5)
    layer = tier.bert.encoder.layer[1]
    w0, b0 = layer.qkv_weights()
    ptr_w, ptr_b = w0.data_ptr(), b0.data_ptr()
    ws, bs = _qkv_params(layer)
    with torch.no_grad():
        ws[1].mul_(2.0)                 # in place under no_grad
    bs[2].data.add_(1.0)                # through .data (no version bump)
    other = _tier(2, 24, 3, 6)
    tier.load_state_dict(other.state_dict())  # copies into the existing parameters
    w1, b1 = layer.qkv_weights()
    assert (w1.data_ptr(), b1.data_ptr()) == (ptr_w, ptr_b), "the fused storage moved"
    assert w1 is w0 and b1 is b0
    _check_fused(layer, w1, b1)
    _, want_b = other.bert.encoder.layer[1].qkv_weights()
    assert torch.equal(b1, want_b)
    # the layer computes with the updated weights
    ids, mask, types = _padded([5, 3, 7], seed=2)
    torch.testing.assert_close(tier(ids, mask, types), other(ids, mask, types), rtol=0, atol=0)


def test_reassigned_or_moved_parameters_fuse_again():
    tier = _tier(1, 16, 2, 7)
    layer = tier.bert.encoder.layer[0]
    w0, _ = layer.qkv_weights()
    ws, _ = _qkv_params(layer)
    sa = getattr(layer.attention, "self")
    sa.key.weight = torch.nn.Parameter(torch.randn_like(ws[1]))
    w1, b1 = layer.qkv_weights()
    assert w1.data_ptr() != w0.data_ptr()
    _check_fused(layer, w1, b1)
    tier.to(torch.float64)
    assert layer._qkv_fused is None  # the old storage is released on a move
    w2, b2 = layer.qkv_weights()
    assert w2.dtype == torch.float64
    _check_fused(layer, w2, b2)


def test_first_call_under_inference_mode_leaves_normal_parameters():
    tier = _tier(1, 16, 2, 9)
    ids, mask, types = _padded([3, 4], seed=4)
    with torch.inference_mode():
        want = tier(ids, mask, types)
    ws, bs = _qkv_params(tier.bert.encoder.layer[0])
    assert not any(p.is_inference() for p in ws + bs)
    with torch.no_grad():
        ws[0].mul_(1.0)  # in place outside inference mode: refused for inference tensors
    x = torch.randn(2, 16, requires_grad=True)
    (x @ ws[0].t()).sum().backward()  # autograd may save them
    torch.testing.assert_close(tier(ids, mask, types), want, rtol=0, atol=0)


def test_save_and_reload_with_fused_views(tmp_path):
    tier = _tier(2, 24, 3, 8)
    ids, mask, types = _padded([4, 9, 1], seed=3)
    want = tier(ids, mask, types)  # fuses
    tier.save_pretrained(tmp_path / "t")
    again = Tier.from_pretrained(tmp_path / "t")
    torch.testing.assert_close(again(ids, mask, types), want, rtol=0, atol=0)


def test_captured_cascade_sees_weight_updates():
    """CPU: the captured object runs eagerly; it must follow in-place updates too."""
    m = CascadeBert([_tier(1, 16, 2, 1), _tier(2, 24, 3, 2)], [0.5])
    ids, mask, types = _padded(LENGTHS, seed=11)
    m.set_thresholds(_thresholds_for(m, ids, mask, types, "half_exit"))
    g = capture(m, max_batch=16, max_seqlen=40)
    before = g(ids, mask, types)
    with torch.no_grad():
        for t in m.tiers:
            getattr(t.bert.encoder.layer[0].attention, "self").value.weight.mul_(-1.5)
    after = g(ids, mask, types)
    m.sync_free = False
    want = m(ids, mask, types)
    assert not torch.equal(before.logits, after.logits)
    torch.testing.assert_close(after.logits, want.logits, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_graph_replays_updated_weights(dtype):
    if not backends.available("triton"):
        pytest.skip("Triton is not available")
    dev = torch.device("cuda")
    tiers = [_tier(1, 64, 2, 1).to(dev, dtype), _tier(2, 96, 3, 2).to(dev, dtype)]
    m = CascadeBert(tiers, [0.5])
    ids, mask, types = (x.to(dev) for x in _padded(LENGTHS, seed=12))
    m.set_thresholds(_thresholds_for(m, ids, mask, types, "half_exit"))
    g = capture(m, max_batch=16, max_seqlen=40)
    assert g.graph is not None
    before = g(ids, mask, types)
    new = [_tier(1, 64, 2, 21), _tier(2, 96, 3, 22)]
    for t, n in zip(m.tiers, new):
        t.load_state_dict(n.state_dict())  # in place: the graph's addresses stay valid
    m.sync_free = True
    want = m(ids, mask, types)  # an eager call between: must not free what the graph reads
    got = g(ids, mask, types)
    assert not torch.equal(before.logits, got.logits)
    atol = 2e-2 if dtype == torch.float16 else 1e-4
    assert torch.equal(got.exit_tier, want.exit_tier)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=atol)
