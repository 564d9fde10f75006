"""The native extension (``cascade_rt._C``, backend ``native``) against the references.

Every op runs on random odd shapes, every supported dtype, empty inputs, all-exit and
none-exit masks. Outputs are poisoned: the ops are called under
``torch.use_deterministic_algorithms(True)``, which makes every ``at::empty`` inside the
extension return NaN (floats), INT_MAX (ints) or True (bools), so an element a kernel
forgets to write fails the comparison. CUDA tests are marked ``gpu`` and skipped without one.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cascade_rt
from cascade_rt import backends, reference as R
from cascade_rt.config import TierConfig

if os.environ.get("CASCADE_RT_NO_NATIVE") == "1":
    pytest.skip("built with CASCADE_RT_NO_NATIVE=1", allow_module_level=True)

from cascade_rt import native_backend as N  # noqa: E402  (a failed build must fail here)

HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=GPU)]
LENGTHS = [[1, 7, 33, 2], [5], [0], [], [3, 0, 0], [64, 1, 17], [48, 49, 12]]
# (dtype, atol, rtol): about one unit in the last place of the output dtype
FLOAT_TOLS = [
    (torch.float32, 2e-5, 2e-5),
    (torch.float16, 2e-3, 2e-3),
    (torch.bfloat16, 1.6e-2, 1.6e-2),
]


@contextlib.contextmanager
def poisoned():
    """Uninitialised outputs inside the block are NaN / INT_MAX / True."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def test_poisoning_is_active():
    with poisoned():
        assert torch.empty(4).isnan().all()
        assert (torch.empty(4, dtype=torch.int64) != 0).all()


def cu_of(lengths, device, extra=0):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu.to(device), int(cu[-1]) + extra


def native(op, *args):
    assert N.why_not(op, *args) is None, N.why_not(op, *args)
    with poisoned():
        return N.OPS[op](*args)


# -- varlen attention ------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("dtype,atol,rtol", FLOAT_TOLS)
def test_varlen_attention(lengths, dtype, atol, rtol):
    torch.manual_seed(len(lengths))
    cu, T = cu_of(lengths, "cpu", extra=3)  # 3 dead slots past cu[-1]
    H, D = 3, 24
    qkv = torch.randn(T, 3, H, D).to(dtype)
    qkv[int(cu[-1]):] = float("nan")  # dead slots must not leak into anything
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # strided views, as the tier passes them
    out = native("varlen_attention", q, k, v, cu, max(lengths, default=0), None)
    ref = R.varlen_attention_ref(q, k, v, cu, 0)
    assert out.dtype == dtype and out.shape == (T, H, D)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    assert (out[int(cu[-1]):] == 0).all()


def test_varlen_attention_scale_and_contiguous():
    torch.manual_seed(1)
    cu, T = cu_of([9, 1, 30], "cpu")
    q, k, v = (torch.randn(T, 2, 40) for _ in range(3))
    out = native("varlen_attention", q, k, v, cu, 30, 0.3)
    torch.testing.assert_close(out, R.varlen_attention_ref(q, k, v, cu, 30, 0.3), atol=2e-5, rtol=2e-5)


def test_varlen_attention_large_logits():
    # scores far apart: the softmax must stay finite and match (exp range reduction)
    torch.manual_seed(2)
    cu, T = cu_of([13, 50], "cpu")
    q, k, v = (torch.randn(T, 2, 16) * 12 for _ in range(3))
    out = native("varlen_attention", q, k, v, cu, 50, None)
    torch.testing.assert_close(out, R.varlen_attention_ref(q, k, v, cu, 50), atol=1e-4, rtol=1e-4)


# -- add + LayerNorm -------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", FLOAT_TOLS)
@pytest.mark.parametrize("N_,H", [(0, 37), (1, 1), (7, 37), (33, 384), (5, 1023)])
def test_add_layer_norm(device, dtype, atol, rtol, N_, H):
    torch.manual_seed(N_ + H)
    x = (torch.randn(N_, H) * 3 + 1).to(device, dtype)
    r = torch.randn(N_, H).to(device, dtype)
    w = torch.randn(H, device=device)
    b = torch.randn(H, device=device)
    out = native("add_layer_norm", x, r, w, b, 1e-5)
    assert out.dtype == dtype and out.shape == (N_, H)
    assert_one_rounding(out, x, r, w, b, 1e-5)


def assert_one_rounding(out, x, r, w, b, eps):
    """``out`` is the exact (fp64) add+LayerNorm of its inputs rounded once to the output dtype:
    within half a unit in the last place, plus fp32-arithmetic slack (statistics, the affine).
    A kernel that rounds the sum or keeps its statistics in fp16/bf16 is off by several ulps."""
    exact = R.add_layer_norm_ref(x.double(), r.double(), w.double(), b.double(), eps)
    err = (out.double() - exact).abs()
    fi = torch.finfo(out.dtype)
    mag = exact.abs().clamp(min=fi.tiny)
    half_ulp = 0.5 * fi.eps * torch.exp2(torch.floor(torch.log2(mag)))
    # fp32 statistics and affine: 16 fp32 units of |w| + |b| + 1 (native needs 3.8e-7 here)
    slack = 2e-6 * (w.double().abs() + b.double().abs() + 1)
    bad = err > half_ulp + slack
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} elements off by more than one final rounding to "
        f"{out.dtype}; worst {float((err / (half_ulp + slack)).max()):.2f}x the bound"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_rounding_bound_catches_low_precision_statistics(dtype):
    """The bound above fails an add+LayerNorm that keeps its statistics in the output dtype."""
    torch.manual_seed(5)
    x = (torch.randn(33, 384) * 3 + 1).to(dtype)
    r = torch.randn(33, 384).to(dtype)
    w, b = torch.randn(384), torch.randn(384)
    h = x + r  # sum rounded to dtype
    mean = h.mean(-1, keepdim=True, dtype=dtype)
    var = ((h - mean) * (h - mean)).mean(-1, keepdim=True, dtype=dtype)
    low = ((h - mean) * torch.rsqrt(var + 1e-5) * w.to(dtype) + b.to(dtype)).to(dtype)
    with pytest.raises(AssertionError, match="one final rounding"):
        assert_one_rounding(low, x, r, w, b, 1e-5)


def test_add_layer_norm_strided_and_half_weights():
    torch.manual_seed(3)
    big = torch.randn(11, 80)
    x, r = big[:, :40], big[:, 40:]  # non-contiguous rows
    w, b = torch.randn(40).half(), torch.randn(40).half()
    torch.testing.assert_close(native("add_layer_norm", x, r, w, b, 1e-12),
                               R.add_layer_norm_ref(x, r, w, b, 1e-12), atol=1e-5, rtol=1e-5)


# -- exit head -------------------------------------------------------------------------------
def _head(B, H, C, device, dtype, scale=1.0):
    x = torch.randn(B, H).to(device, dtype)
    pw = (torch.randn(H, H) / H**0.5).to(device, dtype)
    pb = torch.randn(H).to(device, dtype)
    cw = (torch.randn(C, H) * scale).to(device, dtype)
    cb = torch.randn(C).to(device, dtype)
    return x, pw, pb, cw, cb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,C", [(0, 32, 2), (1, 7, 1), (7, 33, 3), (64, 384, 2), (13, 100, 7)])
def test_exit_head(device, dtype, B, H, C):
    torch.manual_seed(B * 7 + C)
    args = _head(B, H, C, device, dtype)
    thr = 0.6
    logits, conf, mask = native("exit_head", *args, thr)
    rl, rc, rm = R.exit_head_ref(*args, thr)
    assert logits.dtype == conf.dtype == torch.float32 and mask.dtype == torch.bool
    assert logits.shape == (B, C) and conf.shape == (B,) and mask.shape == (B,)
    torch.testing.assert_close(logits, rl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf, rc, atol=1e-5, rtol=1e-5)
    # the decision follows this op's own confidence exactly, and the reference's away from the edge
    assert torch.equal(mask, conf >= torch.tensor(thr, dtype=torch.float32))
    clear = (rc - thr).abs() > 1e-5
    assert torch.equal(mask[clear], rm[clear])


@pytest.mark.parametrize("device", DEVICES)
def test_exit_head_all_and_none_exit(device):
    torch.manual_seed(5)
    args = _head(9, 48, 3, device, torch.float32, scale=0.01)
    _, conf, mask = native("exit_head", *args, 0.0)
    assert mask.all()
    _, conf2, mask2 = native("exit_head", *args, 1.0)  # confidences of near-uniform logits < 1
    assert (conf2 < 1).all() and not mask2.any()
    torch.testing.assert_close(conf, conf2)


# -- compact ---------------------------------------------------------------------------------
def _exit_masks(B, g):
    yield torch.zeros(B, dtype=torch.bool)  # none exit
    yield torch.ones(B, dtype=torch.bool)  # all exit
    yield torch.rand(B, generator=g) < 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("tail", [(2,), (), (3, 5)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.bfloat16, torch.bool])
def test_compact(device, lengths, tail, dtype):
    g = torch.Generator().manual_seed(len(lengths) * 31 + len(tail))
    cu, T = cu_of(lengths, device, extra=4)
    tokens = (torch.randn((T,) + tail, generator=g) * 100).to(dtype).to(device)
    for mask in _exit_masks(len(lengths), g):
        mask = mask.to(device)
        got = native("compact", mask, tokens, cu)
        ref = R.compact_ref(mask, tokens, cu)
        for a, b, name in zip(got, ref, ("tokens_kept", "cu_seqlens_kept", "row_index", "n_kept")):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), name


# -- scatter_exits ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,N_,C", [(0, 3, 2), (1, 1, 1), (7, 11, 3), (33, 40, 2)])
def test_scatter_exits(device, B, N_, C):
    g = torch.Generator().manual_seed(B + N_)
    for mask in _exit_masks(B, g):
        perm = torch.randperm(N_, generator=g)[:B]
        row_index = torch.full((B,), -1, dtype=torch.int64)
        row_index[: len(perm)] = perm
        if B > 2:
            row_index[-1] = -1  # a dead row: never written even when it "exits"
        logits = torch.randn(B, C, generator=g)
        conf = torch.rand(B, generator=g)
        outs = (torch.full((N_, C), float("nan")), torch.full((N_,), float("nan")),
                torch.full((N_,), -7, dtype=torch.int64))
        args = [t.to(device) for t in (mask, row_index, logits, conf)]
        mine = [t.clone().to(device) for t in outs]
        theirs = [t.clone().to(device) for t in outs]
        native("scatter_exits", *args, 4, *mine)
        R.scatter_exits_ref(*args, 4, *theirs)
        for a, b in zip(mine, theirs):
            assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))


# -- pack / unpack ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths,S", [([1, 7, 0, 2], 7), ([5], 5), ([], 4), ([0, 0], 3), ([3, 9, 1], 11)])
@pytest.mark.parametrize("tail", [(), (3,)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float32])
def test_pack_unpack(device, lengths, S, tail, dtype):
    g = torch.Generator().manual_seed(S + len(lengths))
    B = len(lengths)
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths, dtype=torch.int64).reshape(B, 1)).long()
    padded = (torch.randn((B, S) + tail, generator=g) * 50).to(dtype)
    mask, padded = mask.to(device), padded.to(device)
    tokens, cu = native("pack", padded, mask)
    rt, rcu = R.pack_ref(padded, mask)
    assert tokens.dtype == dtype and cu.dtype == torch.int32
    assert torch.equal(tokens, rt) and torch.equal(cu, rcu)
    for M in (S, max(S - 2, 0), S + 3):  # exact, cutting, wider
        got = native("unpack", tokens, cu, M)
        assert torch.equal(got, R.unpack_ref(tokens, cu, M))


def test_pack_bool_mask():
    padded = torch.randn(2, 4)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    tokens, cu = native("pack", padded, mask)
    rt, rcu = R.pack_ref(padded, mask)
    assert torch.equal(tokens, rt) and torch.equal(cu, rcu)


# -- bad input: one clear error naming the problem --------------------------------------------
@pytest.mark.parametrize("op,args,match", [
    ("compact", lambda: (torch.zeros(2, dtype=torch.bool), torch.zeros(5), torch.tensor([0, 3, 9], dtype=torch.int32)),
     r"cu_seqlens\[-1\] = 9 exceeds"),
    ("compact", lambda: (torch.zeros(2, dtype=torch.bool), torch.zeros(5), torch.tensor([0, 3, 2], dtype=torch.int32)),
     "non-decreasing"),
    ("compact", lambda: (torch.zeros(3, dtype=torch.bool), torch.zeros(5), torch.tensor([0, 3, 5], dtype=torch.int32)),
     r"cu_seqlens must be \(B\+1,\)"),
    ("unpack", lambda: (torch.zeros(5), torch.tensor([1, 3], dtype=torch.int32), 4), r"cu_seqlens\[0\] must be 0"),
    ("pack", lambda: (torch.zeros(2, 3), torch.full((2, 3), 2)), "sums to 6"),
    ("scatter_exits", lambda: (torch.ones(1, dtype=torch.bool), torch.tensor([5]), torch.zeros(1, 2),
                               torch.zeros(1), 0, torch.zeros(3, 2), torch.zeros(3),
                               torch.zeros(3, dtype=torch.int64)), r"row_index\[0\] = 5 is out of range"),
    ("add_layer_norm", lambda: (torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3), torch.zeros(4), 1e-5),
     r"weight and bias must be \(4,\)"),
    ("exit_head", lambda: (torch.zeros(2, 4), torch.zeros(4, 5), torch.zeros(4), torch.zeros(2, 4), torch.zeros(2), 0.5),
     r"pooler_w must be \(4, 4\)"),
    ("varlen_attention", lambda: (torch.zeros(4, 2, 8), torch.zeros(4, 2, 8), torch.zeros(4, 2, 4),
                                  torch.tensor([0, 4], dtype=torch.int32), 4, None), "must have one shape"),
])
def test_bad_input_errors(op, args, match):
    with pytest.raises(RuntimeError, match=match):
        N.OPS[op](*args())


def test_why_not_declines_with_reasons():
    assert "int32" in N.why_not("compact", torch.zeros(2, dtype=torch.bool), torch.zeros(4), torch.zeros(3))
    q = torch.zeros(4, 2, 8, dtype=torch.float64)
    assert "float64" in N.why_not("varlen_attention", q, q, q, torch.zeros(2, dtype=torch.int32), 4, None)
    with backends.use_backend("native"):
        with pytest.raises(NotImplementedError, match="float64"):
            cascade_rt.ops.varlen_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4)


def test_linear_is_atens_on_cpu():
    """No C++ linear: the native backend's CPU linear is the reference (ATen), so a cascade
    forced onto it runs sync-free; on CUDA it declines (the Triton kernel covers it)."""
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(9, 12, generator=g), torch.randn(7, 12, generator=g), torch.randn(7, generator=g)
    cu = torch.tensor([0, 4, 6], dtype=torch.int32)
    assert backends.implementation("linear", x, w, b, cu, "gelu")[0] == "native"
    got = native("linear", x, w, b, cu, "gelu")
    assert torch.equal(got, R.linear_ref(x, w, b, cu, "gelu")) and (got[6:] == 0).all()
    assert "int32" in N.why_not("linear", x, w, b, cu.long(), "none")
    assert "weight (N, K)" in N.why_not("linear", x, w[:, :5], b, cu, "none")
    assert "bias must be (7,)" in N.why_not("linear", x, w, b[:3], cu, "none")
    assert "activation 'tanh'" in N.why_not("linear", x, w, b, cu, "tanh")
    assert "float64" in N.why_not("linear", x.double(), w.double(), b.double(), cu, "none")
    if HAS_CUDA:
        assert "no native CUDA linear" in N.why_not("linear", x.cuda(), w.cuda(), b.cuda(), cu.cuda(), "none")


# -- first-token attention (a classifier's last layer) ----------------------------------------
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("dtype,atol,rtol", FLOAT_TOLS)
def test_first_token_attention(lengths, dtype, atol, rtol):
    torch.manual_seed(len(lengths) + 11)
    cu, T = cu_of(lengths, "cpu", extra=3)
    H, D = 3, 24
    qkv = torch.randn(T, 3, H, D).to(dtype)
    qkv[int(cu[-1]):] = float("nan")  # dead slots must not leak into anything
    k, v = qkv[:, 1], qkv[:, 2]  # strided views, as the tier passes them
    first = cu[:-1].to(torch.int64).clamp(max=max(T - 1, 0))
    q = qkv[:, 0].index_select(0, first) if T else qkv.new_zeros((len(lengths), H, D))
    out = native("first_token_attention", q, k, v, cu, max(lengths, default=0), None)
    ref = R.first_token_attention_ref(q, k, v, cu, 0)
    assert out.dtype == dtype and out.shape == (len(lengths), H, D)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    # the reference is the full attention's first token of each row; empty rows are zeros
    full = R.varlen_attention_ref(qkv[:, 0], k, v, cu, 0)
    for b, n in enumerate(lengths):
        want = full[int(cu[b])] if n else torch.zeros(H, D, dtype=dtype)
        torch.testing.assert_close(ref[b], want, atol=atol, rtol=rtol)


@given(lengths=st.lists(st.integers(0, 70), max_size=6), heads=st.integers(1, 4), head_dim=st.integers(1, 19),
       scale=st.one_of(st.none(), st.floats(0.05, 3.0)))
@settings(max_examples=40, deadline=None)
def test_first_token_attention_matches_full_attention_rows(lengths, heads, head_dim, scale):
    g = torch.Generator().manual_seed(sum(lengths) + heads + head_dim)
    cu, T = cu_of(lengths, "cpu")
    q_all, k, v = (torch.randn(T, heads, head_dim, generator=g) for _ in range(3))
    first = cu[:-1].to(torch.int64).clamp(max=max(T - 1, 0))
    q = q_all.index_select(0, first) if T else torch.zeros(len(lengths), heads, head_dim)
    out = native("first_token_attention", q, k, v, cu, max(lengths, default=0), scale)
    assert out.shape == (len(lengths), heads, head_dim)
    if not lengths:
        return

    def rows(full):  # the full attention's first token of each row, zeros for an empty row
        return torch.stack([full[int(cu[b])] if n else full.new_zeros(heads, head_dim)
                            for b, n in enumerate(lengths)])

    # against the full attention computed in float64, to fp32 rounding (the varlen kernel's tolerance)
    truth = rows(R.varlen_attention_ref(q_all.double(), k.double(), v.double(), cu, 0, scale)).float()
    torch.testing.assert_close(out, truth, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(R.first_token_attention_ref(q, k, v, cu, 0, scale), truth, atol=2e-5, rtol=2e-5)


def test_first_token_attention_rejects_bad_shapes():
    cu, T = cu_of([3, 2], "cpu")
    k = v = torch.randn(T, 2, 8)
    with pytest.raises(RuntimeError, match="holds 3 rows but cu_seqlens 2"):
        torch.ops.cascade_rt.first_token_attention(torch.randn(3, 2, 8), k, v, cu, 3)
    with pytest.raises(RuntimeError, match=r"q must be \(B, H, D\)"):
        torch.ops.cascade_rt.first_token_attention(torch.randn(2, 4, 4), k, v, cu, 3)
    assert "q must be (B, H, D)" in N.why_not("first_token_attention", torch.randn(2, 4, 4), k, v, cu, 3, None)


# -- opcheck: schema, fake impl, tracing -----------------------------------------------------
def _opcheck_cases(device):
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 8, 8], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(10, 2, 8, generator=g).to(device) for _ in range(3))
    mask = torch.tensor([True, False, True], device=device)
    row_index = torch.tensor([2, 0, -1], device=device)
    head = _head(3, 16, 2, device, torch.float32)
    cases = {
        "add_layer_norm": (torch.randn(5, 16, device=device), torch.randn(5, 16, device=device),
                           torch.randn(16, device=device), torch.randn(16, device=device), 1e-5),
        "exit_head": (*head, 0.5),
        "compact": (mask, torch.randint(0, 100, (10, 2), device=device), cu),
        "scatter_exits": (mask, row_index, torch.randn(3, 2, device=device), torch.rand(3, device=device), 1,
                          torch.zeros(4, 2, device=device), torch.zeros(4, device=device),
                          torch.zeros(4, dtype=torch.int64, device=device)),
        "pack": (torch.randn(3, 4, 5, device=device),
                 torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], device=device)),
        "unpack": (q, cu, 6),
    }
    if device == "cpu":
        cases["varlen_attention"] = (q, k, v, cu, 5, None)
        cases["first_token_attention"] = (q[:3], k, v, cu, 5, None)
    return cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["varlen_attention", "first_token_attention", "add_layer_norm", "exit_head",
                                "compact", "scatter_exits", "pack", "unpack"])
def test_opcheck(device, op):
    cases = _opcheck_cases(device)
    if op not in cases:
        pytest.skip(f"no native {device} {op}")
    torch.library.opcheck(getattr(torch.ops.cascade_rt, op), cases[op])


# -- the whole cascade on the native backend -------------------------------------------------
def _tier(hidden, layers, heads, seed, device):
    cfg = TierConfig(vocab_size=97, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden + 3,
                     max_position_embeddings=64, num_labels=3)
    torch.manual_seed(seed)
    tier = cascade_rt.Tier(cfg)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            p.copy_(torch.randn_like(p) * (0.05 if "weight" in name and p.dim() == 2 else 0.5))
            if "LayerNorm.weight" in name:
                p.add_(1.0)
    return tier.to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sync_free", [False, True])
def test_cascade_native_matches_reference(device, sync_free):
    tiers = [_tier(24, 1, 3, 1, device), _tier(40, 2, 5, 2, device), _tier(48, 2, 4, 3, device)]
    model = cascade_rt.CascadeBert(tiers, thresholds=[0.0, 0.0])
    model.sync_free = sync_free
    g = torch.Generator().manual_seed(9)
    lengths = [1, 7, 33, 2, 19, 5, 40, 11, 3, 26, 8]
    S = max(lengths)
    ids = torch.randint(1, 97, (len(lengths), S), generator=g)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids, mask = (ids * mask).to(device), mask.to(device)

    def split(conf):  # a threshold halfway between two middle confidences: no row on the edge
        c = conf.sort().values
        i = len(c) // 2
        return float(c[i - 1] + c[i]) / 2

    with backends.use_backend("reference"):
        t0 = split(model(ids, mask).confidence)
        model.set_thresholds([t0, 0.0])
        out = model(ids, mask)
        t1 = split(out.confidence[out.exit_tier == 1])
        model.set_thresholds([t0, t1])
        ref = model(ids, mask)
    with backends.use_backend("native"):
        got = model(ids, mask)
    # rows leave at every tier, so scatter and compaction are really exercised
    assert set(ref.exit_tier.tolist()) == {0, 1, 2}
    assert torch.equal(got.exit_tier, ref.exit_tier)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.confidence, ref.confidence, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.rows_per_tier, ref.rows_per_tier)
    assert torch.equal(got.tokens_per_tier, ref.tokens_per_tier)


def test_native_is_the_cpu_default():
    x = torch.randn(3, 8)
    name, _ = backends.implementation("add_layer_norm", x, x, torch.ones(8), torch.zeros(8), 1e-5)
    assert name == "native"
    assert "torch" in N.describe()


def test_varlen_attention_aten_gemm_fallback():
    """The GEMM fallback (used where libtorch exports no sgemm_) computes the same attention."""
    import subprocess
    import sys

    code = (
        "import torch; from cascade_rt import native_backend as N, reference as R\n"
        "assert 'ATen mm' in N.describe(), N.describe()\n"
        "torch.manual_seed(0); cu = torch.tensor([0, 1, 8, 41, 43], dtype=torch.int32)\n"
        "q, k, v = (torch.randn(45, 3, 24) for _ in range(3))\n"
        "torch.testing.assert_close(N.OPS['varlen_attention'](q, k, v, cu, 33, None),"
        " R.varlen_attention_ref(q, k, v, cu, 33), atol=2e-5, rtol=2e-5)\n"
    )
    env = dict(os.environ, CASCADE_RT_CPU_GEMM="aten")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
