"""CPU speed of the native extension against the fastest plain-PyTorch equivalent, one run.

Each case times the native op against plain-PyTorch code that computes the same result the
way a user would write it for speed on CPU (ATen kernels, host reads allowed), never against
the per-row reference in ``cascade_rt.reference`` (the test oracle, written for clarity and
no host sync). Every baseline is checked against the native result first, then all are timed
in this process on the same inputs: one warm-up call each, passes interleaved in alternating
order; a ratio is the median over passes of baseline / native time. The headline ratio of a
case is against its fastest plain-PyTorch equivalent (the lowest median).

  * tier boundary: exit head + scatter_exits + compact, native vs ``F.linear``/``tanh``/
    ``softmax`` + boolean-mask indexing and ``repeat_interleave`` (eager, host-synchronising);
  * varlen_attention on MiniLM-shaped heads (12 x 32), native vs SDPA per row (a loop over
    rows, no padding) and vs SDPA on the rows padded to the longest (pad, masked SDPA, unpad);
    the SDPA call alone on pre-padded input is printed too, as a bound (it skips the padding
    work, so it is not an equivalent);
  * add_layer_norm, native vs ``F.layer_norm(x + residual)``;
  * one MiniLM-shaped tier (6 layers, 384 wide, random weights) encode, native vs the same
    tier on the reference backend with the two ops above swapped for their fastest
    plain-PyTorch equivalents.
Prints median times and ratios, appends a JSON record to bench/results/native_cpu.jsonl.

    .venv/bin/python bench/native_cpu.py [--rows 32] [--min-len 8] [--max-len 128] [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import platform
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import cascade_rt
from cascade_rt import backends, reference_backend
from cascade_rt import native_backend as N
from cascade_rt import reference as R
from cascade_rt.config import TierConfig
from cascade_rt.info import source_commit
from cascade_rt.timing import interleaved, paired_ratio


def _time(fns: dict, runs: int) -> dict:
    """``interleaved`` timings (one warm-up call each, alternating order)."""
    return interleaved(fns, warmup=1, runs=runs)


def _report(name: str, t: dict, base: list[str], records: list, bounds: tuple[str, ...] = ()) -> str:
    """Print and record native's speed-up over each baseline; returns the fastest baseline."""
    med = {k: v["median"] for k, v in t.items()}
    ratios = {b: paired_ratio(t, b, "native") for b in list(base) + list(bounds)}
    fastest = min(base, key=lambda b: med[b])
    parts = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items())
    print(f"{name}: {parts}")
    others = ", ".join(f"{b} {r['median']:.2f}x" for b, r in ratios.items() if b != fastest)
    print(f"    native {ratios[fastest]['median']:.2f}x faster than the fastest plain-PyTorch "
          f"equivalent ({fastest}; passes {ratios[fastest]['min']:.2f}-{ratios[fastest]['max']:.2f})"
          + (f"; {others}" if others else ""))
    records.append({"case": name, "ms": {k: v * 1e3 for k, v in med.items()},
                    "baseline": fastest, "speedup": ratios[fastest]["median"],
                    "speedup_min": ratios[fastest]["min"], "speedup_max": ratios[fastest]["max"],
                    "speedup_vs": {b: r["median"] for b, r in ratios.items()},
                    "bounds_not_equivalent": list(bounds)})
    return fastest


# -- the plain-PyTorch equivalents ------------------------------------------------------------
def eager_boundary(cls, pw, pb, cw, cb, threshold, row_index, outs, tokens, cu):
    """Exit head, scatter and compaction as eager PyTorch (boolean indexing, host reads)."""
    logits = F.linear(torch.tanh(F.linear(cls, pw, pb)), cw, cb)
    conf = logits.softmax(-1).amax(-1)
    mask = conf >= threshold
    dest = row_index[mask]
    outs[0][dest], outs[1][dest], outs[2][dest] = logits[mask], conf[mask], 0
    keep = ~mask
    lens = (cu[1:] - cu[:-1]).to(torch.int64)
    tok_keep = torch.repeat_interleave(keep, lens)
    kept = tokens[: int(cu[-1])][tok_keep]
    cu_kept = torch.zeros(int(keep.sum()) + 1, dtype=torch.int32)
    cu_kept[1:] = lens[keep].cumsum(0)
    return kept, cu_kept, keep.nonzero().squeeze(1)


def sdpa_per_row(q, k, v, cu, max_seqlen, scale=None):
    """Varlen attention as one SDPA call per row on views of the packed tensors."""
    out = torch.zeros_like(q)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            o = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                               v[s:e].transpose(0, 1), scale=scale)
            out[s:e] = o.transpose(0, 1)
    return out


def sdpa_padded(q, k, v, cu, max_seqlen, scale=None):
    """Varlen attention as pad to the longest row, one masked SDPA call, unpad."""
    T, H, D = q.shape
    lens = (cu[1:] - cu[:-1]).to(torch.int64)
    S = int(lens.max()) if lens.numel() else 0
    live = torch.arange(S)[None, :] < lens[:, None]  # (B, S)

    def pad(x):
        xp = x.new_zeros(lens.shape[0], S, H, D)
        xp[live] = x[: int(cu[-1])]
        return xp.transpose(1, 2)

    o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=live[:, None, None, :], scale=scale)
    out = torch.zeros_like(q)
    out[: int(cu[-1])] = o.transpose(1, 2)[live]
    return out


def eager_add_layer_norm(x, residual, weight, bias, eps):
    return F.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


@contextmanager
def eager_ops(attention):
    """The reference backend with its attention and add+LayerNorm swapped for eager PyTorch."""
    saved = dict(reference_backend.OPS)
    reference_backend.OPS.update(varlen_attention=attention, add_layer_norm=eager_add_layer_norm)
    try:
        with backends.use_backend("reference"):
            yield
    finally:
        reference_backend.OPS.clear()
        reference_backend.OPS.update(saved)


def _lengths(rows, lo, hi, g):
    return torch.randint(lo, hi + 1, (rows,), generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "native_cpu.jsonl"))
    a = p.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    records: list = []
    lens = _lengths(a.rows, a.min_len, a.max_len, g)
    cu = torch.zeros(a.rows + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    T, S = int(cu[-1]), int(lens.max())
    print(f"cascade_rt native CPU bench: {a.rows} rows, lengths {a.min_len}..{a.max_len} "
          f"({T} tokens, padded {a.rows * S}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"  {N.describe()}")

    # 1. tier boundary: exit head + scatter + compact
    Hd, C = 384, 2
    cls = torch.randn(a.rows, Hd)
    pw, pb = torch.randn(Hd, Hd) / Hd**0.5, torch.randn(Hd)
    cw, cb = torch.randn(C, Hd), torch.randn(C)
    tokens = torch.randint(0, 30000, (T, 2))
    row_index = torch.arange(a.rows)
    outs = (torch.zeros(a.rows, C), torch.zeros(a.rows), torch.zeros(a.rows, dtype=torch.int64))
    eager_outs = tuple(torch.zeros_like(o) for o in outs)

    def native_boundary():
        logits, conf, mask = N.OPS["exit_head"](cls, pw, pb, cw, cb, 0.8)
        N.OPS["scatter_exits"](mask, row_index, logits, conf, 0, *outs)
        return N.OPS["compact"](mask, tokens, cu)

    def eager():
        return eager_boundary(cls, pw, pb, cw, cb, 0.8, row_index, eager_outs, tokens, cu)

    kept, cu_kept, rows_kept = native_boundary()[:3]
    e_kept, e_cu, e_rows = eager()
    n = e_rows.numel()
    assert torch.equal(kept[: int(e_cu[-1])], e_kept) and torch.equal(cu_kept[: n + 1], e_cu)
    assert torch.equal(rows_kept[:n], e_rows)
    assert all(torch.allclose(a_, b_, atol=1e-5) for a_, b_ in zip(outs, eager_outs))
    t = _time({"native": native_boundary, "eager_pytorch": eager}, a.runs * 5)
    _report("exit_head+scatter+compact", t, ["eager_pytorch"], records)

    # 2. varlen attention, MiniLM heads
    H, D = 12, 32
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    pad = lambda x: R.unpack_ref(x, cu, S).transpose(1, 2).contiguous()  # (B, H, S, D)
    qp, kp, vp = pad(q), pad(k), pad(v)
    key_mask = (torch.arange(S)[None, :] < lens[:, None])[:, None, None, :]  # (B, 1, 1, S)
    want = N.OPS["varlen_attention"](q, k, v, cu, S, None)
    for fn in (sdpa_per_row, sdpa_padded):
        torch.testing.assert_close(fn(q, k, v, cu, S), want, atol=1e-5, rtol=1e-5)
    t = _time({
        "native": lambda: N.OPS["varlen_attention"](q, k, v, cu, S, None),
        "sdpa_per_row": lambda: sdpa_per_row(q, k, v, cu, S),
        "sdpa_padded": lambda: sdpa_padded(q, k, v, cu, S),
        "sdpa_call_on_prepadded": lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=key_mask),
    }, a.runs)
    attn_base = _report("varlen_attention", t, ["sdpa_per_row", "sdpa_padded"], records,
                        bounds=("sdpa_call_on_prepadded",))
    attention = {"sdpa_per_row": sdpa_per_row, "sdpa_padded": sdpa_padded}[attn_base]

    # 3. add + LayerNorm
    x, r = torch.randn(T, Hd), torch.randn(T, Hd)
    w, b = torch.randn(Hd), torch.randn(Hd)
    torch.testing.assert_close(N.OPS["add_layer_norm"](x, r, w, b, 1e-12), eager_add_layer_norm(x, r, w, b, 1e-12),
                               atol=2e-5, rtol=2e-5)
    t = _time({"native": lambda: N.OPS["add_layer_norm"](x, r, w, b, 1e-12),
               "eager_pytorch": lambda: eager_add_layer_norm(x, r, w, b, 1e-12)}, a.runs * 5)
    _report("add_layer_norm", t, ["eager_pytorch"], records)

    # 4. one MiniLM-shaped tier, whole encode
    cfg = TierConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=2)
    tier = cascade_rt.Tier(cfg).eval()
    with torch.no_grad():
        for prm in tier.parameters():
            prm.normal_(0, 0.05)
    ids, types = tokens[:, 0].contiguous(), torch.zeros(T, dtype=torch.int64)

    def encode_native():
        with torch.no_grad(), backends.use_backend("native"):
            return tier.encode(ids, types, cu, S)

    def encode_eager():
        with torch.no_grad(), eager_ops(attention):
            return tier.encode(ids, types, cu, S)

    torch.testing.assert_close(encode_native(), encode_eager(), atol=1e-4, rtol=1e-4)
    t = _time({"native": encode_native, "eager_pytorch": encode_eager}, max(a.runs // 4, 3))
    _report(f"tier_encode (6x384, eager attention: {attn_base})", t, ["eager_pytorch"], records)

    rec = {
        "bench": "native_cpu", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit() or "unknown", "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "build": N.describe(),
        "rows": a.rows, "lengths": [a.min_len, a.max_len], "tokens": T, "padded_tokens": a.rows * S,
        "baselines": "fastest plain-PyTorch equivalent per case (eager ATen, host reads allowed)",
        "timing": "one warm-up each, interleaved passes in alternating order; speedup = median per-pass ratio",
        "results": records,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
