"""The sync-free cascade path (``model.sync_free = True``).

Between tiers nothing is read back to the host: later tiers run on upper-bound shapes (the
padded batch's ``B * S`` token slots, ``B`` rows, dead rows zero-length at the end) and the
live counts stay on the device. On CPU these tests check that it gives the same per-row
results as the default (exact-shape) path and that the forward really reads nothing back
(no ``.item()``, ``.tolist()``, ``bool(tensor)``, data-dependent shapes); on CUDA,
``torch.cuda.set_sync_debug_mode("error")`` proves it.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cascade_rt import CascadeBert, Tier, TierConfig, backends, reference_backend

VOCAB = 97


def _tier(layers: int, hidden: int, heads: int, seed: int, num_labels: int = 3) -> Tier:
    cfg = TierConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden + 3,
                     max_position_embeddings=64, num_labels=num_labels)
    g = torch.Generator().manual_seed(seed)
    tier = Tier(cfg)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("classifier.weight"):
                p.copy_(torch.randn(p.shape, generator=g))  # spread confidences over (1/3, 1)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return tier.eval()


@pytest.fixture(scope="module")
def tiers():
    return [_tier(1, 16, 2, 1), _tier(2, 24, 3, 2), _tier(2, 32, 4, 3)]


def _padded(lengths, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    S = width or max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), S), generator=g)
    types = torch.randint(0, 2, (len(lengths), S), generator=g)
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    return ids * mask, mask, types * mask


LENGTHS = [1, 7, 33, 2, 19, 5, 33, 12, 3, 28, 9]


def _confidences(tier, ids, mask, types):
    with torch.no_grad():
        return tier(ids, mask, types).softmax(-1).amax(-1)


def _thresholds_for(model, ids, mask, types, mode):
    """Thresholds making no row, every row, or about half the rows exit at each tier."""
    n = len(model.tiers) - 1
    if mode == "none_exit":
        return [1.0] * n
    if mode == "all_exit":
        return [0.0] * n
    return [_gap_threshold(_confidences(t, ids, mask, types)) for t in model.tiers[:-1]]


def _gap_threshold(conf):
    """Half-way across the widest gap between sorted confidences near the middle, so that
    no row sits within rounding of the threshold (paths may differ in the last bits)."""
    s = torch.sort(conf).values
    n = len(s)
    lo, hi = max(1, n // 4), max(2, min(n, 3 * n // 4 + 1))
    gaps = s[lo:hi] - s[lo - 1:hi - 1]
    j = int(torch.argmax(gaps)) + lo
    return float((s[j - 1] + s[j]) / 2)


def _run_both(model, *args, **kwargs):
    model.sync_free = False
    exact = model(*args, **kwargs)
    model.sync_free = True
    try:
        bounded = model(*args, **kwargs)
    finally:
        model.sync_free = False
    return exact, bounded


def _assert_same_rows(exact, bounded):
    assert torch.equal(exact.exit_tier, bounded.exit_tier)
    torch.testing.assert_close(bounded.logits, exact.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(bounded.confidence, exact.confidence, rtol=0, atol=1e-6)
    assert torch.equal(exact.rows_per_tier, bounded.rows_per_tier)
    assert torch.equal(exact.tokens_per_tier, bounded.tokens_per_tier)


@pytest.mark.parametrize("n_tiers", [2, 3])
@pytest.mark.parametrize("mode", ["none_exit", "all_exit", "half_exit"])
def test_padded_input_same_rows_as_exact_path(tiers, n_tiers, mode):
    ids, mask, types = _padded(LENGTHS, seed=n_tiers)
    model = CascadeBert(tiers[-n_tiers:], [0.5] * (n_tiers - 1))
    model.set_thresholds(_thresholds_for(model, ids, mask, types, mode))
    exact, bounded = _run_both(model, ids, mask, types)
    _assert_same_rows(exact, bounded)
    if mode == "all_exit":
        assert exact.exit_tier.eq(0).all()
    elif mode == "none_exit":
        assert exact.exit_tier.eq(n_tiers - 1).all()
    else:
        assert 0 < int(exact.exit_tier.eq(0).sum()) < len(LENGTHS)


def test_packed_input_with_dead_tail_same_rows(tiers):
    """Packed input whose token buffer is longer than ``cu_seqlens[-1]`` (dead slots)."""
    ids, mask, types = _padded(LENGTHS, seed=5)
    lens = mask.sum(1)
    cu = torch.zeros(len(LENGTHS) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    flat_ids, flat_types = ids[mask.bool()], types[mask.bool()]
    dead = 13
    flat_ids = torch.cat([flat_ids, torch.randint(0, VOCAB, (dead,))])
    flat_types = torch.cat([flat_types, torch.zeros(dead, dtype=torch.int64)])
    model = CascadeBert(tiers[:2], [0.5])
    model.set_thresholds(_thresholds_for(model, ids, mask, types, "half_exit"))
    exact, bounded = _run_both(model, flat_ids, token_type_ids=flat_types, cu_seqlens=cu, max_seqlen=33)
    _assert_same_rows(exact, bounded)
    # and the packed path agrees with the padded one
    padded = model(ids, mask, types)
    assert torch.equal(padded.exit_tier, exact.exit_tier)
    torch.testing.assert_close(padded.logits, exact.logits, rtol=0, atol=1e-5)


def test_rows_come_back_in_input_order(tiers):
    ids, mask, types = _padded(LENGTHS, seed=11)
    model = CascadeBert(tiers, [0.5, 0.5])
    model.set_thresholds(_thresholds_for(model, ids, mask, types, "half_exit"))
    model.sync_free = True
    perm = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(2))
    a = model(ids, mask, types)
    b = model(ids[perm], mask[perm], types[perm])
    assert torch.equal(a.exit_tier[perm], b.exit_tier)
    torch.testing.assert_close(b.logits, a.logits[perm], rtol=0, atol=1e-5)
    # every row got a result, from the tier it says
    assert a.exit_tier.ge(0).all() and a.exit_tier.lt(3).all()
    for t in range(3):
        rows = a.exit_tier == t
        if rows.any():
            alone = model.tiers[t](ids[rows], mask[rows], types[rows])
            torch.testing.assert_close(a.logits[rows], alone, rtol=0, atol=1e-5)


def test_single_row_and_length_one_rows(tiers):
    model = CascadeBert(tiers[:2], [0.5])
    for lengths in ([1], [1, 1, 1], [33]):
        ids, mask, types = _padded(lengths, seed=len(lengths))
        model.set_thresholds([0.5])
        exact, bounded = _run_both(model, ids, mask, types)
        _assert_same_rows(exact, bounded)


def test_later_tiers_run_on_upper_bound_shapes(tiers):
    """Sync-free: every tier sees B*S token slots and B rows; survivors first, in order,
    dead rows zero-length at the end, dead slots after the live tokens."""
    ids, mask, types = _padded(LENGTHS, seed=3, width=40)  # wider than the longest row
    B, S = ids.shape
    model = CascadeBert(tiers, [0.5, 0.5])
    model.set_thresholds(_thresholds_for(model, ids, mask, types, "half_exit"))
    seen = []
    for i, tier in enumerate(model.tiers):
        orig = tier.encode

        def spy(t_ids, t_types, cu, max_seqlen, _orig=orig, _i=i, **kwargs):
            seen.append((_i, t_ids.clone(), cu.clone(), max_seqlen, kwargs))
            return _orig(t_ids, t_types, cu, max_seqlen, **kwargs)

        tier.encode = spy
    try:
        model.sync_free = True
        out = model(ids, mask, types)
    finally:
        for tier in model.tiers:
            del tier.encode
    lens = mask.sum(1)
    assert [s[0] for s in seen] == [0, 1, 2]
    for i, t_ids, cu, max_seqlen, kwargs in seen:
        assert t_ids.shape == (B * S,) and cu.shape == (B + 1,) and max_seqlen == S
        assert kwargs == {"sync_free": True, "first_tokens": True}  # dense layers skip dead rows
        reached = out.exit_tier >= i
        n = int(reached.sum())
        row_lens = (cu[1:] - cu[:-1]).to(torch.int64)
        assert torch.equal(row_lens[:n], lens[reached])
        assert row_lens[n:].eq(0).all()
        live_ids = ids[reached][mask[reached].bool()]
        assert torch.equal(t_ids[: int(cu[-1])], live_ids)


# -- no host reads on the sync-free path -----------------------------------------------------

_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
          "argwhere", "masked_select", "unique", "unique_consecutive", "numpy",
          "_local_scalar_dense"}


class _HostReads(TorchFunctionMode):
    """Records every tensor op that reads data back to the host or has a data-dependent shape."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _READS:
            self.reads.append(name)
        elif name in ("__getitem__", "__setitem__") and len(args) > 1:
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx):
                self.reads.append(f"{name}[bool mask]")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.reads.append(name)
        elif name == "where" and len(args) + len(kwargs) == 1:  # torch.where(cond) is nonzero
            self.reads.append("where(condition)")
        return func(*args, **kwargs)


def test_host_read_detector_sees_each_kind_of_read():
    """Each way to read back or make a data-dependent shape is recorded (else the sync-free
    test below could pass on a forward that reads back)."""
    t = torch.tensor([0.0, 2.0, -1.0, 3.0])
    m = t > 0
    reads = {
        "item": lambda: t[1].item(), "tolist": lambda: t.tolist(), "__bool__": lambda: bool(m[1]),
        "__int__": lambda: int(t[1]), "__float__": lambda: float(t[1]),
        "nonzero": lambda: torch.nonzero(m), "argwhere": lambda: torch.argwhere(m),
        "where(condition)": lambda: torch.where(m), "masked_select": lambda: t.masked_select(m),
        "unique": lambda: torch.unique(t), "__getitem__[bool mask]": lambda: t[m],
        "__setitem__[bool mask]": lambda: t.clone().__setitem__(m, 0.0),
        "repeat_interleave": lambda: torch.repeat_interleave(t, torch.tensor([1, 2, 0, 1])),
    }
    for want, fn in reads.items():
        spy = _HostReads()
        with spy:
            fn()
        assert any(want in r for r in spy.reads), (want, spy.reads)
    # and nothing for ops that stay on the device
    spy = _HostReads()
    with spy:
        torch.where(m, t, 0.0)
        torch.repeat_interleave(t, torch.tensor([1, 2, 0, 1]), output_size=4)
        t[torch.tensor([0, 2])]
    assert spy.reads == [], spy.reads


def _padded_varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, zero_dead=True):
    """Sync-free varlen attention for this test: gather to (B, max_seqlen), masked SDPA,
    scatter back. (The reference op walks rows on the host; the fast backends do not.)"""
    T, H, D = q.shape
    B = cu_seqlens.shape[0] - 1
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    col = torch.arange(max_seqlen)
    live = col[None, :] < lens[:, None]
    src = (cu[:-1, None] + col[None, :]).clamp(max=max(T - 1, 0))

    def gather(x):
        return x[src.reshape(-1)].reshape(B, max_seqlen, H, D).transpose(1, 2).float()

    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    keep = live[:, None, None, :] | ~live.any(1)[:, None, None, None]  # no all-masked rows (NaN)
    o = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), attn_mask=keep, scale=scale)
    o = o.transpose(1, 2).reshape(B * max_seqlen, H, D)
    dest = torch.where(live, cu[:-1, None] + col[None, :], torch.full_like(src, T)).reshape(-1)
    out = torch.zeros((T + 1, H, D), dtype=torch.float32)
    out.index_copy_(0, dest, o)
    return out[:T].to(q.dtype)


@pytest.fixture
def sync_free_attention(monkeypatch):
    monkeypatch.setitem(reference_backend.OPS, "varlen_attention", _padded_varlen_attention)
    with backends.use_backend("reference"):
        yield


@pytest.mark.parametrize("mode", ["none_exit", "half_exit", "all_exit"])
def test_sync_free_forward_reads_nothing_back(tiers, sync_free_attention, mode):
    ids, mask, types = _padded(LENGTHS, seed=8)
    model = CascadeBert(tiers, [0.5, 0.5])
    model.set_thresholds(_thresholds_for(model, ids, mask, types, mode))
    # input checks read back on CPU; on CUDA they are async device asserts
    model.check_inputs = False
    model.sync_free = False
    spy = _HostReads()
    with spy:
        exact = model(ids, mask, types)
    # the detector sees the default path's one read per tier boundary (so it can fail)
    if mode != "all_exit":
        assert spy.reads, "the default path reads live counts back; the detector must see it"
    model.sync_free = True
    spy = _HostReads()
    with spy:
        bounded = model(ids, mask, types)
    assert spy.reads == [], f"host reads on the sync-free path: {spy.reads}"
    _assert_same_rows(exact, bounded)


def test_test_attention_matches_reference():
    """The helper attention above computes the reference op (else the test above proves nothing)."""
    from cascade_rt.reference import varlen_attention_ref

    g = torch.Generator().manual_seed(0)
    lens = [1, 7, 33, 2]
    T = sum(lens) + 5
    q, k, v = (torch.randn(T, 3, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 1, 8, 41, 43, 43], dtype=torch.int32)
    torch.testing.assert_close(_padded_varlen_attention(q, k, v, cu, 40),
                               varlen_attention_ref(q, k, v, cu, 40), rtol=1e-5, atol=1e-5)


# -- CUDA: no synchronisation at all ---------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_forward_makes_no_host_sync(dtype):
    if not (backends.available("triton") or backends.available("native")):
        pytest.skip("no fast CUDA backend loaded (the reference attention walks rows on the host)")
    dev = torch.device("cuda")
    model = CascadeBert([t.to(dev, dtype) for t in _fresh_tiers()], [0.5, 0.5])
    ids, mask, types = (x.to(dev) for x in _padded(LENGTHS, seed=4))
    model.set_thresholds(_thresholds_for(model, ids, mask, types, "half_exit"))
    model.sync_free = True
    model(ids, mask, types)  # warm up: kernel compilation and caches may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(ids, mask, types)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    exact = CascadeBert(model.tiers, model.thresholds)(ids, mask, types)
    assert torch.equal(out.exit_tier, exact.exit_tier)
    torch.testing.assert_close(out.logits, exact.logits, rtol=0, atol=2e-2 if dtype == torch.float16 else 1e-4)


def _fresh_tiers():
    """GPU-friendly shapes (head dim 32) so that the fast backends take every op."""
    return [_tier(1, 64, 2, 1), _tier(2, 96, 3, 2), _tier(2, 128, 4, 3)]


def test_reference_exit_threshold_compares_in_fp32():
    """The reference exit head compares against a Python scalar (no host-to-device tensor copy,
    which syncs on CUDA); the comparison must still round the threshold to fp32."""
    from cascade_rt.reference import exit_head_ref

    H = 4
    cls = torch.zeros(1, H)
    pw, pb = torch.zeros(H, H), torch.zeros(H)
    cw, cb = torch.zeros(2, H), torch.tensor([0.0, math.log(9.0)])  # softmax -> [0.1, 0.9]
    _, conf, _ = exit_head_ref(cls, pw, pb, cw, cb, 0.5)
    c = float(conf[0])  # exactly representable in fp32
    above = float(torch.nextafter(torch.tensor(c, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)))
    assert above > c and float(torch.tensor(above, dtype=torch.float32)) == c  # rounds to c in fp32
    assert bool(exit_head_ref(cls, pw, pb, cw, cb, above)[2][0])
    next32 = float(torch.nextafter(conf[0], torch.tensor(2.0)))
    assert not bool(exit_head_ref(cls, pw, pb, cw, cb, next32)[2][0])
