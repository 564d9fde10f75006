"""Triton kernels against their references.

Without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set by
conftest or on the command line) on small odd shapes; bfloat16 and realistic shapes are
GPU-only (``@pytest.mark.gpu``). Outputs are poisoned before each launch so that an element
the kernel fails to write fails the test.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from cascade_rt import backends, ops  # noqa: E402
from cascade_rt import reference as ref  # noqa: E402
from cascade_rt import triton_backend as tb  # noqa: E402
from cascade_rt.kernels import _common  # noqa: E402
from cascade_rt.kernels.add_layer_norm import add_layer_norm as k_add_layer_norm  # noqa: E402
from cascade_rt.kernels.compact import compact as k_compact  # noqa: E402
from cascade_rt.kernels.compact import scatter_exits as k_scatter_exits  # noqa: E402
from cascade_rt.kernels import linear as k_linear_mod  # noqa: E402
from cascade_rt.kernels.exit_head import exit_head as k_exit_head  # noqa: E402
from cascade_rt.kernels.linear import linear as k_linear  # noqa: E402
from cascade_rt.kernels.pack import pack as k_pack  # noqa: E402
from cascade_rt.kernels.pack import unpack as k_unpack  # noqa: E402
from cascade_rt.kernels.varlen_attention import varlen_attention as k_varlen_attention  # noqa: E402

DEV = "cuda" if HAS_CUDA else "cpu"
CPU_DTYPES = [torch.float32, torch.float16]
bf16_gpu = pytest.param(torch.bfloat16, marks=pytest.mark.gpu)
DTYPES = CPU_DTYPES + [bf16_gpu]


def _cu(lens, device=DEV):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _poison(shape, dtype, device=DEV):
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.full(shape, 77, dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- varlen_attention ---------------------------------------------------------------------------
def _attention_fp16_baseline(q, k, v, cu, scale):
    """PyTorch attention in low precision (matmuls in q's dtype, softmax in fp32): the error
    budget of a low-precision kernel is measured against it, as flash-attention does."""
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    b = cu.tolist()
    for s, e in zip(b[:-1], b[1:]):
        if e <= s:
            continue
        qi, ki, vi = (t[s:e].transpose(0, 1) for t in (q, k, v))
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            qi, ki, vi = qi.float(), ki.float(), vi.float()
        p = torch.softmax((qi @ ki.transpose(-1, -2)).float() * scale, -1).to(vi.dtype)
        out[s:e] = (p @ vi).transpose(0, 1).to(q.dtype)
    return out


def _check_attention(lens, H, D, dtype, dead_slots=3, scale=None, device=DEV):
    cu = _cu(lens, device)
    T = int(sum(lens)) + dead_slots
    qkv = torch.randn(T, 3, H, D, device=device).to(dtype)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # strided views, as the tier passes them
    out = _poison((T, H, D), dtype, device)
    max_seqlen = max(lens) if lens else 0
    got = k_varlen_attention(q, k, v, cu, max_seqlen, scale, out=out)
    assert got.data_ptr() == out.data_ptr()
    s = scale if scale is not None else 1.0 / math.sqrt(D)
    want = ref.varlen_attention_ref(q.double(), k.double(), v.double(), cu, max_seqlen, s)
    assert not torch.isnan(got).any()
    assert (got[int(sum(lens)):] == 0).all()
    err = (got.double() - want).abs().max().item() if T else 0.0
    if dtype == torch.float32:
        assert err <= 2e-5, err
    else:
        base = _attention_fp16_baseline(q, k, v, cu, s)
        base_err = (base.double() - want).abs().max().item()
        assert err <= 2 * base_err + 1e-5, (err, base_err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,D", [(12, 64), (1, 48), (4, 96), (2, 128), (3, 32)])
def test_varlen_attention(H, D, dtype):
    _check_attention([1, 7, 33, 2], H, D, dtype)


def test_varlen_attention_dead_rows_and_scale():
    _check_attention([5, 1, 0, 0], 2, 16, torch.float32, dead_slots=6, scale=0.3)
    _check_attention([0, 0], 2, 32, torch.float16, dead_slots=4)


def test_varlen_attention_empty():
    for lens, dead in (([], 0), ([0, 0], 0), ([], 5)):
        _check_attention(lens, 2, 32, torch.float32, dead_slots=dead)


def test_varlen_attention_public_op_matches_reference():
    lens = [3, 9, 1]
    cu = _cu(lens)
    qkv = torch.randn(sum(lens), 3, 2, 24, device=DEV)
    args = (qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 9, None)
    with backends.use_backend("triton"):
        assert backends.implementation("varlen_attention", *args)[0] == "triton"
        got = ops.varlen_attention(*args)
    torch.testing.assert_close(got, ref.varlen_attention_ref(*args), atol=2e-5, rtol=2e-5)


# -- add_layer_norm -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,H", [(1, 17), (7, 64), (33, 384), (2, 1000)])
def test_add_layer_norm(N, H, dtype):
    x = torch.randn(N, H, device=DEV).to(dtype)
    r = (2 * torch.randn(N, H, device=DEV) + 1).to(dtype)
    w = torch.randn(H, device=DEV).to(dtype)
    b = torch.randn(H, device=DEV).to(dtype)
    out = _poison((N, H), dtype)
    got = k_add_layer_norm(x, r, w, b, 1e-12, out=out)
    want = ref.add_layer_norm_ref(x, r, w, b, 1e-12)
    tol = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
           torch.bfloat16: dict(atol=1e-2, rtol=8e-3)}[dtype]
    torch.testing.assert_close(got, want, **tol)


def test_add_layer_norm_strided_rows_and_empty():
    base = torch.randn(9, 40, device=DEV)
    x, r = base[:, :33], torch.randn(9, 33, device=DEV)
    w, b = torch.randn(33, device=DEV), torch.randn(33, device=DEV)
    with backends.use_backend("triton"):
        got = ops.add_layer_norm(x, r, w, b, 1e-5)
        empty = ops.add_layer_norm(x[:0], r[:0], w, b, 1e-5)
    torch.testing.assert_close(got, ref.add_layer_norm_ref(x, r, w, b, 1e-5), atol=1e-5, rtol=1e-5)
    assert empty.shape == (0, 33)


# -- exit_head ----------------------------------------------------------------------------------
def _head(B, H, C, dtype):
    x = torch.randn(B, H, device=DEV).to(dtype)
    pw = (torch.randn(H, H, device=DEV) / math.sqrt(H)).to(dtype)
    pb = torch.randn(H, device=DEV).to(dtype)
    cw = torch.randn(C, H, device=DEV).to(dtype)
    cb = torch.randn(C, device=DEV).to(dtype)
    return x, pw, pb, cw, cb


def _check_head(args, threshold):
    B, C = args[0].shape[0], args[3].shape[0]
    out = (_poison((B, C), torch.float32), _poison((B,), torch.float32), _poison((B,), torch.bool))
    logits, conf, mask = k_exit_head(*args, threshold, out=out)
    r_logits, r_conf, r_mask = ref.exit_head_ref(*args, threshold)
    torch.testing.assert_close(logits, r_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf, r_conf, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, conf >= torch.tensor(threshold, dtype=torch.float32))
    clear = (r_conf - threshold).abs() > 1e-5  # rows whose decision rounding cannot flip
    assert torch.equal(mask[clear], r_mask[clear])
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,C", [(1, 16, 2), (7, 33, 3), (13, 64, 5), (5, 24, 300)])
def test_exit_head(B, H, C, dtype):
    args = _head(B, H, C, dtype)
    conf = ref.exit_head_ref(*args, 0.5)[1]
    mid = float(conf.median())
    _check_head(args, mid)
    assert _check_head(args, 0.0).all()  # every row exits
    assert not _check_head(args, 1.0 + 1e-3).any()  # none does


def test_exit_head_empty_and_public_op():
    args = _head(0, 16, 3, torch.float32)
    with backends.use_backend("triton"):
        logits, conf, mask = ops.exit_head(*args, 0.5)
        assert logits.shape == (0, 3) and conf.shape == (0,) and mask.dtype == torch.bool
        args = _head(6, 24, 4, torch.float32)
        got = ops.exit_head(*args, 0.4)
    want = ref.exit_head_ref(*args, 0.4)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)


# -- embed_layer_norm -----------------------------------------------------------------------------
def _embed_args(N, V, H, Y, dtype, types=True):
    g = torch.Generator().manual_seed(N * 100 + H)
    ids = torch.randint(0, V, (N,), generator=g).to(DEV)
    pos = torch.randint(0, 12, (N,), generator=g).to(DEV)
    tys = torch.randint(0, Y, (N,), generator=g).to(DEV) if types else None
    word = torch.randn(V, H, generator=g).to(DEV, dtype)
    posw = torch.randn(12, H, generator=g).to(DEV, dtype)
    typew = torch.randn(Y, H, generator=g).to(DEV, dtype) if types else None
    w = (1 + 0.1 * torch.randn(H, generator=g)).to(DEV, dtype)
    b = (0.1 * torch.randn(H, generator=g)).to(DEV, dtype)
    return ids, pos, tys, word, posw, typew, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,H,types", [(1, 16, True), (13, 33, True), (40, 96, False)])
def test_embed_layer_norm(N, H, types, dtype):
    from cascade_rt.kernels.embed_layer_norm import embed_layer_norm as k_embed

    args = _embed_args(N, 50, H, 3, dtype, types)
    got = k_embed(*args, 1e-5)
    want = ref.embed_layer_norm_ref(*args, 1e-5)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got, want, **tol)


def test_embed_layer_norm_skips_dead_slots():
    """With cu_seqlens, rows past the live count are neither gathered nor written (the output
    keeps what the allocator gave: poison it through the allocation by patching empty)."""
    from cascade_rt.kernels import embed_layer_norm as ke

    N, live = 23, 9
    args = _embed_args(N, 50, 33, 2, torch.float32)
    cu = torch.tensor([0, 4, live], dtype=torch.int32, device=DEV)
    real_empty = torch.empty

    def poisoned(*a, **k):
        return real_empty(*a, **k).fill_(float("nan"))

    torch.empty = poisoned
    try:
        got = ke.embed_layer_norm(*args, 1e-5, cu)
    finally:
        torch.empty = real_empty
    want = ref.embed_layer_norm_ref(*args, 1e-5)
    torch.testing.assert_close(got[:live], want[:live], atol=1e-5, rtol=1e-5)
    assert torch.isnan(got[live:]).all(), "dead slots were written"
    # without a live count every row is computed
    torch.testing.assert_close(ke.embed_layer_norm(*args, 1e-5), want, atol=1e-5, rtol=1e-5)


# -- compact / scatter_exits --------------------------------------------------------------------
MASKS = {
    "mixed": [False, True, False, True, True, True],
    "all_exit": [True] * 6,
    "none_exit": [False] * 6,
    "alternate": [True, False, True, False, True, True],
}
TOKEN_KINDS = {
    "ids_types": lambda T: torch.randint(0, 30000, (T, 2), device=DEV),
    "int32": lambda T: torch.randint(-9, 9, (T,), device=DEV, dtype=torch.int32),
    "fp16_hidden": lambda T: torch.randn(T, 3, device=DEV).half(),
    "bool": lambda T: torch.rand(T, device=DEV) > 0.5,
    "fp32_3d": lambda T: torch.randn(T, 2, 5, device=DEV),
}


def _check_compact(mask, tokens, cu):
    B = mask.shape[0]
    out = (_poison(tokens.shape, tokens.dtype), _poison((B + 1,), torch.int32),
           _poison((B,), torch.int64), _poison((), torch.int32))
    got = k_compact(mask, tokens, cu, out=out)
    want = ref.compact_ref(mask, tokens, cu)
    for name, g, w in zip(("tokens_kept", "cu_seqlens_kept", "row_index", "n_kept"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), name


@pytest.mark.parametrize("kind", sorted(TOKEN_KINDS))
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_compact(mask, kind):
    lens = [1, 7, 33, 2, 0, 0]  # two dead rows at the end
    cu = _cu(lens)
    tokens = TOKEN_KINDS[kind](sum(lens) + 4)  # and four dead token slots
    _check_compact(torch.tensor(MASKS[mask], device=DEV), tokens, cu)


def test_compact_random_and_empty():
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        B = int(torch.randint(1, 40, (1,), generator=g))
        lens = torch.randint(0, 9, (B,), generator=g).tolist()
        mask = (torch.rand(B, generator=g) > 0.5).to(DEV)
        _check_compact(mask, torch.randint(0, 99, (sum(lens) + 2, 2), device=DEV), _cu(lens))
    _check_compact(torch.zeros(0, dtype=torch.bool, device=DEV), torch.zeros(0, 2, dtype=torch.int64, device=DEV),
                   _cu([]))
    _check_compact(torch.ones(2, dtype=torch.bool, device=DEV), torch.zeros(0, dtype=torch.int64, device=DEV),
                   _cu([0, 0]))


def _check_scatter(mask, row_index, C=3, N=9, tier=2):
    B = mask.shape[0]
    logits, conf = torch.randn(B, C, device=DEV), torch.rand(B, device=DEV)
    outs = [torch.randn(N, C, device=DEV), torch.randn(N, device=DEV),
            torch.randint(-1, 4, (N,), device=DEV)]
    want = [o.clone() for o in outs]
    k_scatter_exits(mask, row_index, logits, conf, tier, *outs)
    ref.scatter_exits_ref(mask, row_index, logits, conf, tier, *want)
    for g, w in zip(outs, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_scatter_exits(mask):
    m = torch.tensor(MASKS[mask], device=DEV)
    row_index = torch.tensor([4, 0, 8, 2, -1, -1], device=DEV)  # dead rows never written
    _check_scatter(m, row_index)


def test_scatter_exits_public_op_and_empty():
    m = torch.tensor([True, True, False, True], device=DEV)
    ri = torch.tensor([1, 3, 0, -1], device=DEV)
    logits, conf = torch.randn(4, 2, device=DEV), torch.rand(4, device=DEV)
    outs = [torch.zeros(5, 2, device=DEV), torch.zeros(5, device=DEV),
            torch.full((5,), -1, dtype=torch.int64, device=DEV)]
    want = [o.clone() for o in outs]
    with backends.use_backend("triton"):
        ops.scatter_exits(m, ri, logits, conf, 1, *outs)
    ref.scatter_exits_ref(m, ri, logits, conf, 1, *want)
    assert all(torch.equal(g, w) for g, w in zip(outs, want))
    _check_scatter(torch.zeros(0, dtype=torch.bool, device=DEV), torch.zeros(0, dtype=torch.int64, device=DEV))


# -- pack / unpack -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(TOKEN_KINDS))
def test_pack_unpack(kind):
    lens, S = [1, 7, 5, 2, 9], 9
    B = len(lens)
    mask = (torch.arange(S, device=DEV)[None] < torch.tensor(lens, device=DEV)[:, None]).long()
    flat = TOKEN_KINDS[kind](B * S)
    padded = flat.reshape((B, S) + tuple(flat.shape[1:]))
    out = (_poison(flat.shape, flat.dtype), _poison((B + 1,), torch.int32))
    got = k_pack(padded, mask, out=out)
    want = ref.pack_ref(padded, mask)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    tokens, cu = want
    for L in (S, 4, 12):
        o = _poison((B, L) + tuple(flat.shape[1:]), flat.dtype)
        assert torch.equal(k_unpack(tokens, cu, L, out=o), ref.unpack_ref(tokens, cu, L))


def test_pack_unpack_empty():
    mask = torch.ones(0, 4, dtype=torch.int64, device=DEV)
    tokens, cu = k_pack(torch.zeros(0, 4, 2, dtype=torch.int64, device=DEV), mask)
    assert tokens.shape == (0, 2) and cu.tolist() == [0]
    got = k_unpack(torch.zeros(0, 3, device=DEV), _cu([0, 0]), 5, out=_poison((2, 5, 3), torch.float32))
    assert torch.equal(got, torch.zeros(2, 5, 3, device=DEV))


# -- linear (live rows only) ---------------------------------------------------------------------
LINEAR_ACTS = {
    "none": lambda y: y,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "relu": F.relu,
}


def _linear_args(T, K, N, dtype, bias=True, device=DEV):
    x = torch.randn(T, K, device=device).to(dtype)
    w = (torch.randn(N, K, device=device) / math.sqrt(K)).to(dtype)
    b = torch.randn(N, device=device).to(dtype) if bias else None
    return x, w, b


def _live_cu(n_live, device=DEV):
    """cu_seqlens of three rows holding n_live tokens, then a zero-length dead row."""
    a = n_live // 3
    return _cu([a, n_live - 2 * a, a, 0], device)


def _linear_lowp_baseline(x, w, b, act):
    """PyTorch's own low-precision linear + activation: the error budget of a fp16/bf16 kernel."""
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return LINEAR_ACTS[act](F.linear(x.float(), w.float(), None if b is None else b.float())).to(x.dtype)
    return LINEAR_ACTS[act](F.linear(x, w, b))


def _check_linear(x, w, b, n_live, act, poison_dead_x=True):
    T, N = x.shape[0], w.shape[0]
    cu = _live_cu(n_live, x.device)
    if poison_dead_x and n_live < T:
        x = x.clone()
        x[n_live:] = float("nan")  # dead slots may hold anything; they must not leak
    out = _poison((T, N), x.dtype, x.device)
    got = k_linear(x, w, b, cu, act, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert not torch.isnan(got).any()
    assert (got[n_live:] == 0).all()  # dead rows are exactly zero
    want = ref.linear_ref(x.double(), w.double(), None if b is None else b.double(), cu, act)
    live_got, live_want = got[:n_live].double(), want[:n_live]
    if x.dtype == torch.float32:
        torch.testing.assert_close(live_got, live_want, atol=1e-5, rtol=1e-5)
    elif n_live:
        err = (live_got - live_want).abs().max().item()
        base = _linear_lowp_baseline(x[:n_live], w, b, act).double()
        base_err = (base - live_want).abs().max().item()
        assert err <= 2 * base_err + 1e-5, (err, base_err)
    return got


LINEAR_SHAPES = [(1, 33, 48), (7, 100, 33), (37, 48, 100), (37, 64, 16)]  # (T, K, N)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(LINEAR_ACTS))
@pytest.mark.parametrize("live", ["none", "partial", "all"])
@pytest.mark.parametrize("T,K,N", LINEAR_SHAPES)
def test_linear(T, K, N, live, act, dtype):
    n_live = {"none": 0, "partial": (T * 2) // 3, "all": T}[live]
    _check_linear(*_linear_args(T, K, N, dtype), n_live, act)


@pytest.mark.parametrize("n_live", [0, 1, 31, 45, 100])
@pytest.mark.parametrize("K", [40, 48])
def test_linear_many_tiles_grouped_order(monkeypatch, K, n_live):
    """GPU-like tiling under the interpreter: 16x16x16 tiles, grouped program order with a
    ragged last group (7 row blocks in groups of 3), several K steps (even and not), whole
    dead row blocks and a partly live one."""
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=3)
    monkeypatch.setattr(k_linear_mod, "_config", lambda M, N, K, dtype, *sms: dict(cfg))
    _check_linear(*_linear_args(100, K, 50, torch.float32), n_live, "gelu")


def test_linear_no_bias_and_odd_strides():
    x, w, b = _linear_args(37, 33, 48, torch.float32, bias=False)
    _check_linear(x, w, None, 20, "relu")
    # x with a column stride of 2 and a transposed weight: taken with their strides, no copy
    xs = torch.randn(37, 66, device=DEV)[:, ::2]
    wt = (torch.randn(33, 48, device=DEV) / math.sqrt(33)).t()
    assert xs.stride(1) == 2 and wt.stride(0) == 1
    got = _check_linear(xs, wt, torch.randn(48, device=DEV), 25, "gelu", poison_dead_x=False)
    with backends.use_backend("triton"):
        cu = _live_cu(25)
        torch.testing.assert_close(ops.linear(xs, wt, None, cu, "none"),
                                   ref.linear_ref(xs, wt, None, cu, "none"), atol=1e-5, rtol=1e-5)
    assert got.is_contiguous()


def test_linear_empty_and_public_op():
    cu0 = _cu([0])
    for T, K, N in ((0, 16, 8), (5, 16, 0), (5, 0, 8)):
        x, w, b = _linear_args(T, K, N, torch.float32)
        with backends.use_backend("triton"):
            got = ops.linear(x, w, b, cu0 if T == 0 else _live_cu(3), "gelu")
        assert got.shape == (T, N)
        if T and N:  # K = 0: the live rows are act(bias)
            torch.testing.assert_close(got, ref.linear_ref(x, w, b, _live_cu(3), "gelu"))
    args = (*_linear_args(11, 24, 20, torch.float32), _live_cu(8), "gelu_tanh")
    with backends.use_backend("triton"):
        assert backends.implementation("linear", *args)[0] == "triton"
        got = ops.linear(*args)
    torch.testing.assert_close(got, ref.linear_ref(*args), atol=1e-5, rtol=1e-5)


# -- the backend module -------------------------------------------------------------------------
def _op_samples():
    lens = [1, 7, 5, 0]
    cu = _cu(lens)
    T = sum(lens) + 2
    qkv = torch.randn(T, 3, 2, 16, device=DEV)
    em = torch.tensor([False, True, False, True], device=DEV)
    return {
        "varlen_attention": (qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 7, None),
        "add_layer_norm": (torch.randn(5, 33, device=DEV), torch.randn(5, 33, device=DEV),
                           torch.randn(33, device=DEV), torch.randn(33, device=DEV), 1e-5),
        "exit_head": (*_head(5, 16, 3, torch.float32), 0.5),
        "compact": (em, torch.randint(0, 9, (T, 2), device=DEV), cu),
        "scatter_exits": (em, torch.tensor([2, 0, -1, 1], device=DEV), torch.randn(4, 3, device=DEV),
                          torch.rand(4, device=DEV), 1, torch.randn(6, 3, device=DEV),
                          torch.randn(6, device=DEV), torch.zeros(6, dtype=torch.int64, device=DEV)),
        "pack": (torch.randint(0, 9, (3, 4, 2), device=DEV),
                 torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], device=DEV)),
        "unpack": (torch.randn(T, 3, device=DEV), cu, 7),
        "linear": (*_linear_args(T, 24, 20, torch.float32), cu, "gelu"),
        "embed_layer_norm": _embed_args(T, 19, 33, 2, torch.float32) + (1e-5, None),
    }


@pytest.mark.parametrize("op", sorted(tb.OPS))
def test_opcheck(op):
    args = _op_samples()[op]
    torch.library.opcheck(getattr(torch.ops.cascade_rt_triton, op), args)


def test_opcheck_linear_without_bias():
    x, w, _ = _linear_args(9, 24, 20, torch.float32)
    torch.library.opcheck(torch.ops.cascade_rt_triton.linear, (x, w, None, _live_cu(5), "none"))


def test_why_not_linear():
    x, w, b = _linear_args(7, 16, 12, torch.float32)
    cu = _live_cu(5)
    assert tb.why_not("linear", x, w, b, cu, "gelu") is None
    assert tb.why_not("linear", x, w, None, cu, "none") is None
    assert "dtype torch.float64" in tb.why_not("linear", x.double(), w.double(), b.double(), cu, "none")
    assert "weight is torch.float16" in tb.why_not("linear", x, w.half(), b, cu, "none")
    assert "bias is torch.float16" in tb.why_not("linear", x, w, b.half(), cu, "none")
    assert "weight has shape (12, 15)" in tb.why_not("linear", x, w[:, :15], b, cu, "none")
    assert "bias has shape (11,)" in tb.why_not("linear", x, w, b[:11], cu, "none")
    assert "x must be (T, K)" in tb.why_not("linear", x[None], w, b, cu, "none")
    assert "int32" in tb.why_not("linear", x, w, b, cu.long(), "none")
    assert "activation 'silu'" in tb.why_not("linear", x, w, b, cu, "silu")
    if HAS_CUDA:
        assert "several devices" in tb.why_not("linear", x, w.cpu(), b, cu, "none")
    with backends.use_backend("triton"), pytest.raises(NotImplementedError, match="activation 'tanh'"):
        ops.linear(x, w, b, cu, "tanh")


def test_why_not_reasons(monkeypatch):
    x = torch.randn(3, 8, device=DEV)
    w = torch.randn(8, device=DEV)
    assert tb.why_not("add_layer_norm", x, x, w, w, 1e-5) is None
    assert "dtype torch.float64" in tb.why_not("add_layer_norm", x.double(), x.double(), w, w, 1e-5)
    q = torch.randn(4, 2, 160, device=DEV)
    assert "head_dim 160" in tb.why_not("varlen_attention", q, q, q, _cu([4]), 4, None)
    assert "int32" in tb.why_not("compact", torch.ones(1, dtype=torch.bool, device=DEV),
                                 torch.zeros(1, device=DEV), torch.tensor([0, 1], device=DEV))
    assert "no softmax" in tb.why_not("softmax", x)
    assert tb.why_not("pack", x.long(), (x > 0).long()) is None
    assert "expected (B, S, ...)" in tb.why_not("pack", x[:, :2], (x > 0).long())
    assert "complex" in tb.why_not("unpack", x.to(torch.complex64), _cu([3]), 3)
    monkeypatch.setattr(_common, "INTERPRET", False)
    assert "TRITON_INTERPRET=1" in tb.why_not("add_layer_norm", *(t.cpu() for t in (x, x, w, w)), 1e-5)


def test_forced_backend_names_the_problem():
    x = torch.randn(3, 8, device=DEV, dtype=torch.float64)
    w = torch.randn(8, device=DEV, dtype=torch.float64)
    with backends.use_backend("triton"), pytest.raises(NotImplementedError, match="float64"):
        ops.add_layer_norm(x, x, w, w, 1e-5)


def test_import_does_not_initialise_cuda():
    import subprocess
    import sys

    code = ("import torch, cascade_rt.triton_backend as tb; "
            "assert not torch.cuda.is_initialized(); print(sorted(tb.OPS))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "varlen_attention" in res.stdout


# -- GPU: realistic shapes ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_bert_base_attention(dtype):
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(1, 513, (24,), generator=g).tolist() + [512, 1, 0, 0]
    _check_attention(lens, 12, 64, dtype, dead_slots=17)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [32, 48, 80, 96, 128])
def test_gpu_head_dims(D):
    _check_attention([1, 7, 33, 2, 300, 129], 8, D, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_bert_base_rows(dtype):
    test_add_layer_norm(4099, 768, dtype)
    args = _head(1031, 768, 3, dtype)
    _check_head(args, float(ref.exit_head_ref(*args, 0.5)[1].median()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("frac", [0.0, 0.37, 1.0])
def test_gpu_linear_bert_base(dtype, frac):
    T = 4099
    n_live = int(T * frac)
    for K, N, act in ((768, 2304, "none"), (768, 3072, "gelu"), (3072, 768, "none")):
        _check_linear(*_linear_args(T, K, N, dtype), n_live, act)


@pytest.mark.gpu
def test_gpu_compact_large():
    g = torch.Generator().manual_seed(2)
    lens = torch.randint(0, 513, (997,), generator=g).tolist()
    mask = (torch.rand(997, generator=g) > 0.3).to(DEV)
    _check_compact(mask, torch.randint(0, 30000, (sum(lens) + 11, 2), device=DEV), _cu(lens))
    _check_compact(mask, torch.randn(sum(lens) + 11, 768, device=DEV).half(), _cu(lens))


@pytest.mark.gpu
def test_gpu_torch_compile_sees_ops():
    lens = [3, 70, 1]
    cu = _cu(lens)
    qkv = torch.randn(sum(lens), 3, 12, 64, device=DEV, dtype=torch.float16)

    def f(qkv, cu):
        return tb.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 70, None)

    got = torch.compile(f, fullgraph=True)(qkv, cu)
    torch.testing.assert_close(got, f(qkv, cu))
