"""Every op on every backend that takes it, against the torch baseline it replaces.

Baselines: padded SDPA for varlen attention (what HF runs on a padded batch), ``F.layer_norm``
after an add, the unfused pooler/classifier/softmax for the exit head, boolean-mask indexing
for compaction (which reads the kept count back to the host), ``masked_scatter``-free index
assignment for scatter_exits, and ``attention_mask.bool()`` indexing for pack.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cascade_rt import backends

LENGTHS_SEED = 0


def _backends_for(op, device, *args):
    """(name, fn) for each loaded backend that accepts args (Triton skipped on CPU)."""
    out = []
    for name in backends.BACKEND_NAMES:
        if name == "triton" and device.type == "cpu":
            continue
        if not backends.available(name):
            continue
        mod = backends._module(name)
        fn = getattr(mod, "OPS", {}).get(op)
        if fn is not None and mod.why_not(op, *args) is None:
            out.append((name, fn))
    return out


IMPLS = ["native", "triton", "reference", "torch"]


def _pick(op, impl, device, args, baseline):
    if impl == "torch":
        return baseline
    for name, fn in _backends_for(op, device, *args):
        if name == impl:
            return fn
    pytest.skip(f"backend {impl} not available for {op} on {device}")


def _dtype(device):
    return torch.float16 if device.type == "cuda" else torch.float32


def _lengths(rows, max_len, seed=LENGTHS_SEED):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(1, max_len // 5), max_len + 1, (rows,), generator=g)
    return lens


def _cu(lens, device):
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    return cu.to(device)


# -- varlen attention ------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ["minilm_12x32", "bertbase_12x64"])
def test_varlen_attention(run, benchmark, device, impl, shape):
    H, D = (12, 32) if shape.startswith("minilm") else (12, 64)
    rows, max_len = (32, 128) if device.type == "cpu" else (128, 256)
    benchmark.group = f"varlen_attention {shape} {rows}x<={max_len} {device.type}"
    lens = _lengths(rows, max_len)
    T = int(lens.sum())
    dt = _dtype(device)
    q, k, v = (torch.randn(T, H, D, device=device, dtype=dt) for _ in range(3))
    cu = _cu(lens, device)
    scale = 1.0 / math.sqrt(D)
    mask = (torch.arange(max_len)[None, :] < lens[:, None]).to(device)

    def padded_sdpa(q, k, v, cu, max_seqlen, scale):
        # the padded layout HF runs on (the padding itself is not timed)
        return F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None, None, :], scale=scale)

    qp, kp, vp = (torch.randn(rows, H, max_len, D, device=device, dtype=dt) for _ in range(3))
    fn = _pick("varlen_attention", impl, device, (q, k, v, cu, max_len, scale), padded_sdpa)
    benchmark.extra_info.update(tokens=T, padded_tokens=rows * max_len)
    run(fn, q, k, v, cu, max_len, scale)


# -- add + LayerNorm -------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hidden", [384, 768])
def test_add_layer_norm(run, benchmark, device, impl, hidden):
    N = 4099 if device.type == "cpu" else 32771
    benchmark.group = f"add_layer_norm {N}x{hidden} {device.type}"
    dt = _dtype(device)
    x, r = (torch.randn(N, hidden, device=device, dtype=dt) for _ in range(2))
    w, b = torch.randn(hidden, device=device, dtype=dt), torch.randn(hidden, device=device, dtype=dt)

    def torch_add_ln(x, r, w, b, eps):
        return F.layer_norm(x + r, (hidden,), w, b, eps)

    fn = _pick("add_layer_norm", impl, device, (x, r, w, b, 1e-12), torch_add_ln)
    run(fn, x, r, w, b, 1e-12)


# -- exit head -------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rows", [1, 61, 256])
def test_exit_head(run, benchmark, device, impl, rows):
    H, C = 768, 3
    benchmark.group = f"exit_head {rows}x{H}->{C} {device.type}"
    dt = _dtype(device)
    cls = torch.randn(rows, H, device=device, dtype=dt)
    pw, pb = torch.randn(H, H, device=device, dtype=dt) * 0.03, torch.randn(H, device=device, dtype=dt)
    cw, cb = torch.randn(C, H, device=device, dtype=dt), torch.randn(C, device=device, dtype=dt)

    def unfused(cls, pw, pb, cw, cb, thr):
        logits = F.linear(torch.tanh(F.linear(cls, pw, pb)), cw, cb).float()
        conf = logits.softmax(-1).amax(-1)
        return logits, conf, conf >= thr

    fn = _pick("exit_head", impl, device, (cls, pw, pb, cw, cb, 0.7), unfused)
    run(fn, cls, pw, pb, cw, cb, 0.7)


# -- compaction ------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("exit_frac", [0.0, 0.5, 1.0])
def test_compact(run, benchmark, device, impl, exit_frac):
    rows, max_len = (64, 128) if device.type == "cpu" else (256, 256)
    benchmark.group = f"compact {rows}x<={max_len} exit {exit_frac:g} {device.type}"
    lens = _lengths(rows, max_len, seed=1)
    T = int(lens.sum())
    cu = _cu(lens, device)
    tokens = torch.randint(0, 30000, (T, 2), device=device)
    g = torch.Generator().manual_seed(2)
    exit_mask = (torch.rand(rows, generator=g) < exit_frac).to(device)
    row_of_tok = torch.repeat_interleave(torch.arange(rows), lens).to(device)

    def bool_index(exit_mask, tokens, cu):
        # the obvious torch way: boolean indexing, which reads the kept count to the host
        keep = ~exit_mask
        kept = tokens[keep[row_of_tok]]
        kept_lens = (cu[1:] - cu[:-1])[keep]
        return kept, torch.cumsum(kept_lens, 0), keep.nonzero().squeeze(1)

    fn = _pick("compact", impl, device, (exit_mask, tokens, cu), bool_index)
    run(fn, exit_mask, tokens, cu)


# -- scatter exits ---------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_scatter_exits(run, benchmark, device, impl):
    rows, C = (257, 3)
    benchmark.group = f"scatter_exits {rows} rows {device.type}"
    g = torch.Generator().manual_seed(3)
    exit_mask = (torch.rand(rows, generator=g) < 0.5).to(device)
    row_index = torch.randperm(rows, generator=g).to(device)
    logits = torch.randn(rows, C, device=device)
    conf = torch.rand(rows, device=device)
    out_l = torch.zeros(rows, C, device=device)
    out_c = torch.zeros(rows, device=device)
    out_t = torch.full((rows,), -1, dtype=torch.int64, device=device)

    def masked_assign(exit_mask, row_index, logits, conf, tier, out_l, out_c, out_t):
        dest = row_index[exit_mask]
        out_l[dest] = logits[exit_mask]
        out_c[dest] = conf[exit_mask]
        out_t[dest] = tier

    args = (exit_mask, row_index, logits, conf, 1, out_l, out_c, out_t)
    fn = _pick("scatter_exits", impl, device, args, masked_assign)
    run(fn, *args)


# -- pack ------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_pack(run, benchmark, device, impl):
    rows, S = (64, 128) if device.type == "cpu" else (256, 512)
    benchmark.group = f"pack {rows}x{S} {device.type}"
    lens = _lengths(rows, S, seed=4).to(device)
    mask = (torch.arange(S, device=device)[None, :] < lens[:, None]).to(torch.int64)
    padded = torch.randint(0, 30000, (rows, S, 2), device=device)

    def bool_index(padded, mask):
        return padded[mask.bool()], torch.cumsum(mask.sum(1), 0)

    fn = _pick("pack", impl, device, (padded, mask), bool_index)
    run(fn, padded, mask)


# -- live-rows linear (sync-free dense layers) -------------------------------------------------

LINEAR_SHAPES = {  # name: (K, N, activation), BERT-base
    "qkv_768x2304": (768, 2304, "none"),
    "intermediate_768x3072_gelu": (768, 3072, "gelu"),
    "output_3072x768": (3072, 768, "none"),
}


@pytest.mark.parametrize("impl", ["triton", "reference", "torch_all_rows", "torch_live_rows"])
@pytest.mark.parametrize("shape", sorted(LINEAR_SHAPES))
def test_linear_half_live(run, benchmark, device, impl, shape):
    """``ops.linear`` with 50% live rows (the live count only on the device) against
    ``F.linear`` on all T rows (what the sync-free tier ran before) and on the live rows alone
    (the exact path, which needs the count on the host: the ideal)."""
    if device.type != "cuda":
        pytest.skip("GPU benchmark: on CPU the sync-free linear is F.linear on all rows")
    K, N, act = LINEAR_SHAPES[shape]
    T = 16384
    n_live = T // 2
    benchmark.group = f"linear {shape} {T} rows, {n_live} live {device.type}"
    dt = _dtype(device)
    x = torch.randn(T, K, device=device, dtype=dt)
    w = torch.randn(N, K, device=device, dtype=dt) / math.sqrt(K)
    b = torch.randn(N, device=device, dtype=dt)
    cu = torch.tensor([0, n_live // 3, n_live], dtype=torch.int32, device=device)
    torch_act = {"none": lambda y: y, "gelu": F.gelu}[act]

    def all_rows(x, w, b, cu, act):
        return torch_act(F.linear(x, w, b))

    def live_rows(x, w, b, cu, act):
        return torch_act(F.linear(x[:n_live], w, b))

    baseline = all_rows if impl == "torch_all_rows" else live_rows
    fn = _pick("linear", "torch" if impl.startswith("torch") else impl, device, (x, w, b, cu, act), baseline)
    benchmark.extra_info.update(rows=T, live_rows=n_live, K=K, N=N, activation=act,
                                live_flop=2 * n_live * K * N)
    run(fn, x, w, b, cu, act)
