"""Cascade vs its last tier alone on a batch where about half the rows exit early (CPU or GPU).

Two tiers from the shipped MiniLM (2 and 6 layers, seeded heads); the threshold is the median
tier-0 confidence of the batch, so about half the rows leave after tier 0. Both runs happen in
this process on the same batch; prints the measured ratio beside the analytic one and appends a
JSON record to bench/results/cascade_half_exit.jsonl.

    .venv/bin/python bench/cascade_half_exit.py [--rows 64] [--device cpu] [--dtype float32]
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch

import cascade_rt
from cascade_rt import CascadeBert, flops
from cascade_rt.info import cpu_name, source_commit
from cascade_rt.infer_demo import SENTENCES, build_cascade
from cascade_rt.timing import interleaved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a loaded machine)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cascade_half_exit.jsonl"))
    args = p.parse_args()
    from transformers import BertTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, src = build_cascade()
    model = model.to(dev, dtype)
    tok = BertTokenizer(vocab=str(src / "vocab.txt"))
    # vary the rows: each sentence, then pairs of sentences glued together
    pool = SENTENCES + [a + " " + b for a, b in zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3])]
    sentences = [pool[i % len(pool)] for i in range(args.rows)]
    enc = {k: v.to(dev) for k, v in tok(sentences, padding=True, return_tensors="pt").items()}
    with torch.no_grad():
        conf0 = model.tiers[0](**enc).softmax(-1).amax(-1)
    model.set_thresholds([float(conf0.median())])
    out = model(**enc)
    lens = enc["attention_mask"].sum(1).tolist()
    exit_tier = out.exit_tier.tolist()
    analytic = flops.analytic_speedup([t.config for t in model.tiers], lens, exit_tier)
    alone = CascadeBert([model.tiers[-1]], []).eval()
    t = interleaved({"cascade": lambda: model(**enc), "alone": lambda: alone(**enc)}, dev, runs=args.runs)
    med_c, med_a = t["cascade"]["median"], t["alone"]["median"]
    rec = {
        "bench": "cascade_half_exit",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit() or "unknown",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cascade_rt": cascade_rt.__version__,
        "backend": {op: cascade_rt.backends.implementation(op, *args)[0] for op, args in {
            "varlen_attention": (torch.zeros(1, 1, 32, device=dev, dtype=dtype),) * 3
            + (torch.zeros(2, dtype=torch.int32, device=dev), 1, None),
            "exit_head": (torch.zeros(1, 4, device=dev, dtype=dtype), torch.zeros(4, 4, device=dev, dtype=dtype),
                          torch.zeros(4, device=dev, dtype=dtype), torch.zeros(2, 4, device=dev, dtype=dtype),
                          torch.zeros(2, device=dev, dtype=dtype), 0.5),
        }.items()},
        "loadavg": list(__import__("os").getloadavg()),
        "dtype": args.dtype, "rows": args.rows, "mean_tokens": sum(lens) / len(lens),
        "threshold": model.thresholds[0], "rows_per_tier": out.rows_per_tier.tolist(),
        "exit_rate_tier0": exit_tier.count(0) / len(exit_tier),
        "last_tier_ms": med_a * 1e3, "cascade_ms": med_c * 1e3,
        "speedup_measured": med_a / med_c, "speedup_analytic": analytic,
        "measured_over_analytic": (med_a / med_c) / analytic,
    }
    print(f"rows {args.rows}, mean {rec['mean_tokens']:.1f} tokens, {rec['exit_rate_tier0']:.0%} exit at tier 0; "
          f"backend {rec['backend']}, {rec['threads']} threads")
    print(f"6-layer tier alone {rec['last_tier_ms']:.1f} ms | cascade {rec['cascade_ms']:.1f} ms (median of {args.runs}, interleaved)")
    print(f"speed-up measured {rec['speedup_measured']:.2f}x  analytic {analytic:.2f}x  "
          f"measured/analytic {rec['measured_over_analytic']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
