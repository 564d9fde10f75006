"""The references themselves, against obvious (slow, padded, loop) formulations."""

import pytest
import torch
import torch.nn.functional as F

from cascade_rt import reference as R

LENGTHS = [[1, 7, 33, 2], [5], [3, 1, 1, 8, 13]]


def _cu(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("heads,dim", [(1, 32), (12, 48), (3, 64)])
def test_varlen_attention_ref_equals_masked_padded_sdpa(lengths, heads, dim):
    g = torch.Generator().manual_seed(sum(lengths) + dim)
    T, S = sum(lengths), max(lengths)
    q, k, v = (torch.randn(T + 3, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    cu = _cu(lengths)
    out = R.varlen_attention_ref(q, k, v, cu, S)
    assert out.dtype == torch.float64
    pad = lambda t: R.unpack_ref(t, cu, S).transpose(1, 2)  # (B, H, S, D)
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask)
    ref_packed, _ = R.pack_ref(ref.transpose(1, 2), mask[:, 0, 0, :].long())
    torch.testing.assert_close(out[:T], ref_packed[:T], rtol=1e-10, atol=1e-10)
    assert (out[T:] == 0).all()


def test_add_layer_norm_ref():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(7, 33, generator=g), torch.randn(7, 33, generator=g)
    w, b = torch.randn(33, generator=g), torch.randn(33, generator=g)
    torch.testing.assert_close(R.add_layer_norm_ref(x, r, w, b, 1e-5), F.layer_norm(x + r, (33,), w, b, 1e-5))
    assert R.add_layer_norm_ref(x.half(), r.half(), w, b, 1e-5).dtype == torch.float16


def test_exit_head_ref():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 16, generator=g)
    pw, pb = torch.randn(16, 16, generator=g), torch.randn(16, generator=g)
    cw, cb = torch.randn(5, 16, generator=g) * 3, torch.randn(5, generator=g)
    expect = torch.tanh(h @ pw.T + pb) @ cw.T + cb
    p = torch.softmax(expect, -1).max(-1).values
    thr = float(p.median())
    logits, conf, mask = R.exit_head_ref(h, pw, pb, cw, cb, thr)
    torch.testing.assert_close(logits, expect)
    torch.testing.assert_close(conf, p)
    assert mask.tolist() == [bool(c >= thr) for c in conf]
    assert 0 < int(mask.sum()) < 9


def _compact_loop(exit_mask, tokens, cu):
    keep = [b for b in range(len(exit_mask)) if not exit_mask[b]]
    parts = [tokens[cu[b]:cu[b + 1]] for b in keep]
    kept = torch.cat(parts) if parts else tokens[:0]
    out = torch.zeros_like(tokens)
    out[: kept.shape[0]] = kept
    lens = [int(cu[b + 1] - cu[b]) for b in keep]
    new_cu = [0]
    for n in lens:
        new_cu.append(new_cu[-1] + n)
    new_cu += [new_cu[-1]] * (len(exit_mask) - len(keep))
    idx = keep + [-1] * (len(exit_mask) - len(keep))
    return out, torch.tensor(new_cu, dtype=torch.int32), torch.tensor(idx), len(keep)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("pattern", ["random", "all", "none"])
@pytest.mark.parametrize("trailing", [0, 4])
def test_compact_ref_equals_loop(lengths, pattern, trailing):
    g = torch.Generator().manual_seed(len(lengths) * 7 + trailing)
    B = len(lengths)
    cu = _cu(lengths)
    T = sum(lengths) + trailing
    tokens = torch.randint(0, 1000, (T, 2), generator=g)
    tokens[sum(lengths):] = 0  # dead slots are zero in the loop formulation
    mask = {"random": torch.rand(B, generator=g) < 0.5, "all": torch.ones(B, dtype=torch.bool),
            "none": torch.zeros(B, dtype=torch.bool)}[pattern]
    got = R.compact_ref(mask, tokens, cu)
    exp = _compact_loop(mask.tolist(), tokens, cu.tolist())
    assert torch.equal(got[0], exp[0])
    assert torch.equal(got[1], exp[1]) and got[1].dtype == torch.int32
    assert torch.equal(got[2], exp[2]) and got[2].dtype == torch.int64
    assert int(got[3]) == exp[3] and got[3].dtype == torch.int32 and got[3].dim() == 0


def test_scatter_exits_ref():
    g = torch.Generator().manual_seed(2)
    N, B, C = 10, 6, 3
    out_l, out_c, out_t = torch.full((N, C), 7.0), torch.full((N,), 7.0), torch.full((N,), -1)
    row_index = torch.tensor([8, 2, 5, 0, -1, -1])
    mask = torch.tensor([True, False, True, True, True, False])
    logits, conf = torch.randn(B, C, generator=g), torch.rand(B, generator=g)
    R.scatter_exits_ref(mask, row_index, logits, conf, 2, out_l, out_c, out_t)
    for j, (m, r) in enumerate(zip(mask.tolist(), row_index.tolist())):
        if m and r >= 0:
            assert torch.equal(out_l[r], logits[j]) and out_c[r] == conf[j] and out_t[r] == 2
    untouched = [r for r in range(N) if r not in (8, 5, 0)]
    assert (out_l[untouched] == 7).all() and (out_t[untouched] == -1).all()


def test_pack_unpack_roundtrip():
    g = torch.Generator().manual_seed(4)
    lens = torch.tensor([3, 1, 6, 2])
    S = 7
    x = torch.randn(4, S, 5, generator=g)
    mask = (torch.arange(S)[None] < lens[:, None]).long()
    tok, cu = R.pack_ref(x, mask)
    assert cu.tolist() == [0, 3, 4, 10, 12] and tok.shape == (28, 5)
    assert torch.equal(tok[:12], x[mask.bool()]) and (tok[12:] == 0).all()
    back = R.unpack_ref(tok, cu, S)
    assert torch.equal(back, x * mask[..., None])


def test_token_row_ids_ref():
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    assert R.token_row_ids_ref(cu, 7).tolist() == [0, 0, 2, 2, 2, 3, 3]


@pytest.mark.parametrize("act,fn", [("none", lambda y: y), ("gelu", F.gelu),
                                    ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh")),
                                    ("relu", F.relu)])
def test_linear_ref_live_rows_and_zero_dead_rows(act, fn):
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(9, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    x[6:] = float("nan")  # dead slots may hold anything
    cu = _cu([2, 4, 0])
    got = R.linear_ref(x, w, b, cu, act)
    torch.testing.assert_close(got[:6], fn(x[:6] @ w.T + b))
    assert (got[6:] == 0).all()
    assert (R.linear_ref(x, w, None, _cu([0]), act) == 0).all()
    xh, wh, bh = x.half(), w.half(), b.half()
    h = R.linear_ref(xh, wh, bh, cu, act)  # fp32 inside, one rounding at the end
    assert h.dtype == torch.float16
    torch.testing.assert_close(h[:6], fn(F.linear(xh[:6].float(), wh.float(), bh.float())).half())


def test_linear_ref_autograd_through_relu():
    """The dead-row fill is in place only without autograd (relu's backward reads its output)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 8, generator=g, requires_grad=True)
    w, b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    R.linear_ref(x, w, b, _cu([2, 4]), "relu").sum().backward()
    assert (x.grad[6:] == 0).all()
    want = torch.autograd.grad(F.relu(F.linear(x[:6], w, b)).sum(), x)[0]
    torch.testing.assert_close(x.grad, want)
