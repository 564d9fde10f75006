"""Property tests: every op of every CPU backend against its plain-PyTorch reference.

Hypothesis draws the structure: row lengths (0 and 1 included), dead token slots past
``cu_seqlens[-1]``, heads, head dims, hidden sizes, classes, dtypes, exit masks, dead rows,
strided inputs. Backends: ``native`` (the C++ extension) and ``triton`` (under
``TRITON_INTERPRET=1`` on CPU: few examples, it is slow; no bfloat16, which the interpreter
computes wrongly). Outputs are poisoned: the calls run under deterministic mode, which fills
every ``torch.empty``/``at::empty`` with NaN (floats) or a sentinel (ints), so an element a
kernel forgets to write fails. Profiles ("ci", "slow") are registered in conftest.py.
"""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cascade_rt import backends  # noqa: E402
from cascade_rt import reference as R  # noqa: E402
from conftest import TRITON_EXAMPLES, hypothesis_profile  # noqa: E402

ALL_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# (atol, rtol) for outputs rounded to the dtype: about one unit in the last place
TOLS = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _backend_params():
    out = []
    if os.environ.get("CASCADE_RT_NO_NATIVE") != "1":
        out.append("native")
    out.append("triton")
    return out


def _load(name):
    if not backends.available(name):
        pytest.skip(f"{name} backend not loaded: {backends.load_error(name)}")
    if name == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton on CPU needs TRITON_INTERPRET=1")
    from importlib import import_module

    return import_module({"native": "cascade_rt.native_backend", "triton": "cascade_rt.triton_backend"}[name])


def _floats(backend):
    return ALL_FLOATS if backend == "native" else (torch.float32, torch.float16)


@contextlib.contextmanager
def _poisoned():
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _run(backend_mod, op, *args):
    why = backend_mod.why_not(op, *args)
    assert why is None, f"{op} declined: {why}"
    with _poisoned():
        return backend_mod.OPS[op](*args)


PROFILES = ["ci", pytest.param("slow", marks=pytest.mark.slow)]


def _check(prop, backend, profile):
    """Run ``prop(data, backend_module, backend_name)`` under the profile's example count."""
    mod = _load(backend)
    name = hypothesis_profile(profile == "slow")
    n = settings.get_profile(name).max_examples
    if backend == "triton":
        n = TRITON_EXAMPLES.get(name, 3)

    @settings(settings.get_profile(name), max_examples=n)
    @given(st.data())
    def inner(data):
        prop(data, mod, backend)

    inner()


def _lengths(data, max_rows, max_len):
    """Row lengths with 0 and 1 frequent; returns (lengths, cu_seqlens int32, T with dead slots)."""
    length = st.one_of(st.sampled_from([0, 1]), st.integers(0, max_len))
    lens = data.draw(st.lists(length, min_size=0, max_size=max_rows), label="lengths")
    dead = data.draw(st.integers(0, 3), label="dead slots")
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    if lens:
        cu[1:] = torch.tensor(lens).cumsum(0)
    return lens, cu, int(cu[-1]) + dead


def _gen(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


# -- varlen attention ------------------------------------------------------------------------
def _prop_varlen_attention(data, mod, backend):
    small = backend == "triton"
    lens, cu, T = _lengths(data, 4 if small else 9, 12 if small else 70)
    H = data.draw(st.integers(1, 3 if small else 6), label="heads")
    D = data.draw(st.sampled_from([1, 2, 8, 16, 24, 32, 64]) if not small else st.sampled_from([1, 8, 16, 24]), label="head_dim")
    dtype = data.draw(st.sampled_from(_floats(backend)), label="dtype")
    strided = data.draw(st.booleans(), label="strided")
    scale = data.draw(st.one_of(st.none(), st.floats(0.05, 2.0)), label="scale")
    g = _gen(data)
    qkv = (torch.randn(T, 3, H, D, generator=g) * 2).to(dtype)
    qkv[int(cu[-1]):] = float("nan")  # dead slots must not leak into any row
    if strided:
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    else:
        q, k, v = (qkv[:, i].contiguous() for i in range(3))
    max_seqlen = max(lens, default=0)
    out = _run(mod, "varlen_attention", q, k, v, cu, max_seqlen, scale)
    ref = R.varlen_attention_ref(q, k, v, cu, max_seqlen, scale)
    assert out.shape == (T, H, D) and out.dtype == dtype
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_varlen_attention_property(backend, profile):
    _check(_prop_varlen_attention, backend, profile)


# -- add + LayerNorm -------------------------------------------------------------------------
def _prop_add_layer_norm(data, mod, backend):
    from test_native_ops import assert_one_rounding

    small = backend == "triton"
    N = data.draw(st.one_of(st.sampled_from([0, 1]), st.integers(0, 8 if small else 40)), label="rows")
    H = data.draw(st.one_of(st.sampled_from([1, 2, 384]), st.integers(1, 64 if small else 1100)), label="hidden")
    dtype = data.draw(st.sampled_from(_floats(backend)), label="dtype")
    wdtype = data.draw(st.sampled_from([torch.float32, dtype]), label="weight dtype")
    eps = data.draw(st.sampled_from([1e-12, 1e-5]), label="eps")
    g = _gen(data)
    shift = data.draw(st.floats(-4, 4), label="shift")
    x = (torch.randn(N, H, generator=g) * 3 + shift).to(dtype)
    r = torch.randn(N, H, generator=g).to(dtype)
    if data.draw(st.booleans(), label="strided") and N > 0:
        x = torch.cat([x, x], 1)[:, H // 2:H // 2 + H]
    w = torch.randn(H, generator=g).to(wdtype)
    b = torch.randn(H, generator=g).to(wdtype)
    out = _run(mod, "add_layer_norm", x, r, w, b, eps)
    assert out.shape == (N, H) and out.dtype == dtype
    if H == 1:  # LayerNorm of one element: (0 / sqrt(eps)) * w + b = b exactly
        torch.testing.assert_close(out, R.add_layer_norm_ref(x, r, w, b, eps), atol=0, rtol=0)
    elif dtype == torch.float32:
        torch.testing.assert_close(out, R.add_layer_norm_ref(x, r, w, b, eps), atol=2e-5, rtol=2e-5)
    else:
        assert_one_rounding(out, x, r, w, b, eps)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_add_layer_norm_property(backend, profile):
    _check(_prop_add_layer_norm, backend, profile)


# -- exit head -------------------------------------------------------------------------------
def _prop_exit_head(data, mod, backend):
    small = backend == "triton"
    B = data.draw(st.one_of(st.sampled_from([0, 1]), st.integers(0, 6 if small else 40)), label="rows")
    H = data.draw(st.integers(1, 24 if small else 130), label="hidden")
    C = data.draw(st.integers(1, 5), label="classes")
    dtype = data.draw(st.sampled_from(_floats(backend)), label="dtype")
    g = _gen(data)
    x = torch.randn(B, H, generator=g).to(dtype)
    pw = (torch.randn(H, H, generator=g) / math.sqrt(H)).to(dtype)
    pb = (torch.randn(H, generator=g) * 0.1).to(dtype)
    cw = (torch.randn(C, H, generator=g) * data.draw(st.sampled_from([0.3, 1.0, 4.0]), label="logit scale")).to(dtype)
    cb = torch.randn(C, generator=g).to(dtype)
    rl, rc, _ = R.exit_head_ref(x, pw, pb, cw, cb, 0.0)
    # a threshold anywhere, or exactly at a row's confidence (that row must exit)
    if B and data.draw(st.booleans(), label="threshold at a confidence"):
        thr = float(rc[data.draw(st.integers(0, B - 1), label="row")])
    else:
        thr = data.draw(st.floats(0.0, 1.0), label="threshold")
    logits, conf, mask = _run(mod, "exit_head", x, pw, pb, cw, cb, thr)
    rl, rc, rm = R.exit_head_ref(x, pw, pb, cw, cb, thr)
    assert logits.shape == (B, C) and logits.dtype == torch.float32
    assert conf.shape == (B,) and conf.dtype == torch.float32 and mask.dtype == torch.bool
    torch.testing.assert_close(logits, rl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf, rc, atol=1e-5, rtol=1e-5)
    # the exit decision is the kernel's own confidence against the threshold, in fp32
    assert torch.equal(mask, conf >= thr)
    clear = (rc - thr).abs() > 1e-5
    assert torch.equal(mask[clear], rm[clear])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_exit_head_property(backend, profile):
    _check(_prop_exit_head, backend, profile)


# -- compact ---------------------------------------------------------------------------------
TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float16)


def _prop_compact(data, mod, backend):
    small = backend == "triton"
    lens, cu, T = _lengths(data, 6 if small else 14, 9 if small else 30)
    B = len(lens)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B, max_size=B), label="exit"),
                        dtype=torch.bool)
    dtype = data.draw(st.sampled_from(TOKEN_DTYPES), label="token dtype")
    trailing = data.draw(st.sampled_from([(), (2,), (3, 2)]), label="trailing dims")
    g = _gen(data)
    tokens = torch.randint(1, 100, (T,) + trailing, generator=g).to(dtype)
    got = _run(mod, "compact", mask, tokens, cu)
    want = R.compact_ref(mask, tokens, cu)
    for name, a, b in zip(("tokens", "cu_seqlens", "row_index", "n_kept"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
    # and the meaning: the kept rows, in order, with their tokens
    keep = [i for i in range(B) if not mask[i]]
    assert got[2][:len(keep)].tolist() == keep and int(got[3]) == len(keep)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_compact_property(backend, profile):
    _check(_prop_compact, backend, profile)


# -- scatter exits ---------------------------------------------------------------------------
def _prop_scatter_exits(data, mod, backend):
    small = backend == "triton"
    N = data.draw(st.integers(0, 8 if small else 40), label="output rows")
    B = data.draw(st.integers(0, N), label="rows")
    C = data.draw(st.integers(1, 5), label="classes")
    targets = data.draw(st.permutations(list(range(N))), label="row map")[:B]
    dead = data.draw(st.lists(st.booleans(), min_size=B, max_size=B), label="dead rows")
    row_index = torch.tensor([-1 if d else t for t, d in zip(targets, dead)], dtype=torch.int64)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B, max_size=B), label="exit"),
                        dtype=torch.bool)
    tier = data.draw(st.integers(0, 5), label="tier")
    g = _gen(data)
    logits, conf = torch.randn(B, C, generator=g), torch.rand(B, generator=g)
    outs = (torch.randn(N, C, generator=g), torch.rand(N, generator=g), torch.randint(-1, 3, (N,), generator=g))
    got = tuple(o.clone() for o in outs)
    want = tuple(o.clone() for o in outs)
    with _poisoned():
        assert mod.why_not("scatter_exits", mask, row_index, logits, conf, tier, *got) is None
        mod.OPS["scatter_exits"](mask, row_index, logits, conf, tier, *got)
    R.scatter_exits_ref(mask, row_index, logits, conf, tier, *want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_scatter_exits_property(backend, profile):
    _check(_prop_scatter_exits, backend, profile)


# -- pack / unpack ---------------------------------------------------------------------------
def _prop_pack_unpack(data, mod, backend):
    small = backend == "triton"
    B = data.draw(st.integers(0, 5 if small else 12), label="rows")
    S = data.draw(st.integers(0, 9 if small else 40), label="width")
    lens = data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B), label="lengths")
    mask_dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.bool]), label="mask dtype")
    mask = (torch.arange(S)[None, :] < torch.tensor(lens, dtype=torch.int64).reshape(B, 1)).to(mask_dtype)
    dtype = data.draw(st.sampled_from(TOKEN_DTYPES), label="dtype")
    trailing = data.draw(st.sampled_from([(), (3,)]), label="trailing dims")
    g = _gen(data)
    padded = torch.randint(1, 100, (B, S) + trailing, generator=g).to(dtype)
    tokens, cu = _run(mod, "pack", padded, mask)
    rt, rcu = R.pack_ref(padded, mask)
    assert torch.equal(tokens, rt) and torch.equal(cu, rcu) and cu.dtype == torch.int32
    max_seqlen = data.draw(st.integers(0, S + 2), label="max_seqlen")  # may cut rows
    back = _run(mod, "unpack", tokens, cu, max_seqlen)
    want = R.unpack_ref(tokens, cu, max_seqlen)
    assert back.shape == want.shape and torch.equal(back, want)
    if max_seqlen >= S:
        assert torch.equal(back[:, :S], padded * mask.reshape((B, S) + (1,) * len(trailing)).to(dtype))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_pack_unpack_property(backend, profile):
    _check(_prop_pack_unpack, backend, profile)


# -- linear ----------------------------------------------------------------------------------
def _prop_linear(data, mod, backend):
    small = backend == "triton"
    T = data.draw(st.integers(0, 12 if small else 50), label="token slots")
    live = data.draw(st.integers(0, T), label="live rows")
    K = data.draw(st.integers(1, 24 if small else 90), label="in features")
    Nf = data.draw(st.integers(1, 24 if small else 70), label="out features")
    dtype = data.draw(st.sampled_from(_floats(backend)), label="dtype")
    act = data.draw(st.sampled_from(R.LINEAR_ACTIVATIONS), label="activation")
    g = _gen(data)
    x = torch.randn(T, K, generator=g).to(dtype)
    x[live:] = float("nan")  # dead rows must come out exactly 0, not NaN
    if data.draw(st.booleans(), label="strided") and T > 0:
        x = torch.cat([x, x], 1)[:, 1:K + 1] if K > 1 else x.t().contiguous().t()
    w = (torch.randn(Nf, K, generator=g) / math.sqrt(K)).to(dtype)
    b = torch.randn(Nf, generator=g).to(dtype) if data.draw(st.booleans(), label="bias") else None
    cu = torch.tensor([0, live], dtype=torch.int32)
    out = _run(mod, "linear", x, w, b, cu, act)
    ref = R.linear_ref(x, w, b, cu, act)
    assert out.shape == (T, Nf) and out.dtype == dtype
    assert (out[live:] == 0).all()
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(out[:live], ref[:live], atol=atol, rtol=rtol)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_linear_property(backend, profile):
    _check(_prop_linear, backend, profile)


# -- embeddings + LayerNorm ------------------------------------------------------------------
def _prop_embed_layer_norm(data, mod, backend):
    small = backend == "triton"
    lens, cu, T = _lengths(data, 4 if small else 9, 12 if small else 40)
    H = data.draw(st.one_of(st.sampled_from([1, 2, 384]), st.integers(1, 64 if small else 300)), label="hidden")
    V, P = data.draw(st.integers(1, 50), label="vocab"), data.draw(st.integers(1, 20), label="positions")
    types = data.draw(st.booleans(), label="token types")
    live_only = data.draw(st.booleans(), label="cu_seqlens given")
    dtype = data.draw(st.sampled_from(_floats(backend)), label="dtype")
    g = _gen(data)
    ids = torch.randint(0, V, (T,), generator=g)
    pos = torch.randint(0, P, (T,), generator=g)
    tys = torch.randint(0, 2, (T,), generator=g) if types else None
    word = (torch.randn(V, H, generator=g) * 2).to(dtype)
    posw = torch.randn(P, H, generator=g).to(dtype)
    typew = torch.randn(2, H, generator=g).to(dtype) if types else None
    w = torch.randn(H, generator=g).to(dtype)
    b = torch.randn(H, generator=g).to(dtype)
    args = (ids, pos, tys, word, posw, typew, w, b, 1e-5, cu if live_only else None)
    out = _run(mod, "embed_layer_norm", *args)
    ref = R.embed_layer_norm_ref(*args)
    assert out.shape == (T, H) and out.dtype == dtype
    n = int(cu[-1]) if live_only else T  # rows past the live count are unspecified
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(out[:n], ref[:n], atol=atol, rtol=rtol)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", _backend_params())
def test_embed_layer_norm_property(backend, profile):
    _check(_prop_embed_layer_norm, backend, profile)
