"""CPU speed of the native extension against the reference ops (and padded SDPA), one run.

Cases (every baseline is timed in this process, on the same inputs, interleaved):
  * tier boundary: exit head + scatter_exits + compact, native vs reference backend;
  * varlen_attention on MiniLM-shaped heads (12 x 32), native vs the reference's per-row
    loop vs torch's SDPA on the same rows padded to the longest (the padded baseline HF runs;
    only the SDPA call is timed, not the padding);
  * add_layer_norm, native vs reference;
  * one MiniLM-shaped tier (6 layers, 384 wide, random weights) encode, native vs reference.
Prints median times and ratios, appends a JSON record to bench/results/native_cpu.jsonl.

    .venv/bin/python bench/native_cpu.py [--rows 32] [--min-len 8] [--max-len 128] [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import cascade_rt
from cascade_rt import backends
from cascade_rt import native_backend as N
from cascade_rt import reference as R
from cascade_rt.config import TierConfig
from cascade_rt.info import source_commit
from cascade_rt.timing import interleaved


def _median_times(fns: dict, runs: int) -> dict[str, float]:
    """Median seconds per call of each fn; calls interleaved so drift hits all alike."""
    return {k: v["median"] for k, v in interleaved(fns, runs=runs).items()}


def _report(name: str, t: dict[str, float], base: list[str], records: list) -> None:
    parts = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items())
    ratios = {b: t[b] / t["native"] for b in base}
    print(f"{name}: {parts}; " + ", ".join(f"native {r:.2f}x faster than {b}" for b, r in ratios.items()))
    records.append({"case": name, "ms": {k: v * 1e3 for k, v in t.items()},
                    "speedup": {b: r for b, r in ratios.items()}})


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

    def boundary(ops):
        def run():
            logits, conf, mask = ops["exit_head"](cls, pw, pb, cw, cb, 0.8)
            ops["scatter_exits"](mask, row_index, logits, conf, 0, *outs)
            return ops["compact"](mask, tokens, cu)
        return run

    ref_ops = {k: getattr(R, f"{k}_ref") for k in ("exit_head", "scatter_exits", "compact")}
    t = _median_times({"native": boundary(N.OPS), "reference": boundary(ref_ops)}, a.runs * 5)
    _report("exit_head+scatter+compact", t, ["reference"], records)

    # 2. varlen attention, MiniLM heads
    H, D = 12, 32
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    pad = lambda x: R.unpack_ref(x, cu, S).transpose(1, 2).contiguous()  # (B, H, S, D)
    qp, kp, vp = pad(q), pad(k), pad(v)
    key_mask = (torch.arange(S)[None, :] < lens[:, None])[:, None, None, :]  # (B, 1, 1, S)
    t = _median_times({
        "native": lambda: N.OPS["varlen_attention"](q, k, v, cu, S, None),
        "reference": lambda: R.varlen_attention_ref(q, k, v, cu, S),
        "padded_sdpa": lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=key_mask),
    }, a.runs)
    _report("varlen_attention", t, ["reference", "padded_sdpa"], records)

    # 3. add + LayerNorm
    x, r = torch.randn(T, Hd), torch.randn(T, Hd)
    w, b = torch.randn(Hd), torch.randn(Hd)
    t = _median_times({"native": lambda: N.OPS["add_layer_norm"](x, r, w, b, 1e-12),
                       "reference": lambda: R.add_layer_norm_ref(x, r, w, b, 1e-12)}, a.runs * 5)
    _report("add_layer_norm", t, ["reference"], records)

    # 4. one MiniLM-shaped tier, whole encode
    cfg = TierConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=2)
    tier = cascade_rt.Tier(cfg).eval()
    with torch.no_grad():
        for prm in tier.parameters():
            prm.normal_(0, 0.05)
    ids, types = tokens[:, 0].contiguous(), torch.zeros(T, dtype=torch.int64)

    def encode(backend):
        def run():
            with torch.no_grad(), backends.use_backend(backend):
                return tier.encode(ids, types, cu, S)
        return run

    t = _median_times({"native": encode("native"), "reference": encode("reference")}, max(a.runs // 4, 3))
    _report("tier_encode (6x384)", t, ["reference"], records)

    rec = {
        "bench": "native_cpu", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit() or "unknown", "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "build": N.describe(),
        "rows": a.rows, "lengths": [a.min_len, a.max_len], "tokens": T, "padded_tokens": a.rows * S,
        "results": records,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
