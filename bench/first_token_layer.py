"""A tier with its last layer for [CLS] only, against the same tier with every layer in full.

A classifier reads one vector per row after its last layer, the first token's, so
``Tier.encode(first_tokens=True)`` (what the cascade, ``Tier.forward`` and the survivor queue
run) gives that layer one query per row: keys and values from every token, attention, output
projection and FFN for the first token alone. This times, on the same packed batch, the tier
returning every token's state and reading the first tokens (``encode()`` + ``first_tokens``,
what the runtime ran before) against ``encode(first_tokens=True)``: one warm-up call each, then
``--runs`` rounds interleaved in alternating order; a case's ratio is the median over rounds of
full / first-token time (min and max beside it), next to the FLOPs ratio
(``cascade_rt.flops.tier_flops(first_tokens=False) / tier_flops()``). The outputs are checked
equal (to fp32 rounding) first.

Shapes: MiniLM (384 wide, 12 heads, 1536 FFN) at 2 and 6 layers, BERT-base (768, 12, 3072) at
2 and 12 layers, random weights; batches of 1 row (32 tokens) and 32 rows (mean length 0.5 x
128). Prints a table, writes ``bench/results/first_token_layer[_bf16]_<device>.json``.

    .venv/bin/python bench/first_token_layer.py [--runs 15] [--dtype float32|bfloat16] [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt import flops  # noqa: E402
from cascade_rt.inputs import prepare_inputs  # noqa: E402
from cascade_rt.timing import interleaved, paired_ratio  # noqa: E402

SHAPES = {"minilm": (384, 12, 1536), "bert-base": (768, 12, 3072)}
CASES = [("minilm", 2), ("minilm", 6), ("bert-base", 2), ("bert-base", 12)]
BATCHES = [(1, 32, 1.0), (32, 128, 0.5)]  # (rows, max_len, mean length / max_len)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="one small case, 3 rounds (a smoke run)")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    dev = torch.device("cpu")
    cases, batches, runs = CASES, BATCHES, args.runs
    if args.quick:
        cases, batches, runs = [("minilm", 2)], [(4, 32, 0.5)], 3
    results = []
    print(f"{common.device_name(dev)}, {torch.get_num_threads()} threads, {args.dtype}")
    print(f"{'model':>10} {'layers':>6} {'rows':>5} {'tokens':>6} {'full ms':>9} {'[CLS] ms':>9} "
          f"{'speed-up':>18} {'FLOPs ratio':>11}")
    for model, layers in cases:
        hidden, heads, inter = SHAPES[model]
        tier = common.random_tier(hidden, layers, heads, inter, dtype=dtype)
        for rows, max_len, frac in batches:
            ids, mask, lens = common.random_padded_batch(rows, max_len, frac, vocab=tier.config.vocab_size, seed=rows)
            b = prepare_inputs(ids, mask, None, None, None, limits=[tier.config], device=dev)
            a = (b.input_ids, b.token_type_ids, b.cu_seqlens, b.max_seqlen)
            with torch.inference_mode():
                def full():
                    return tier.first_tokens(tier.encode(*a), b.cu_seqlens)

                def first():
                    return tier.encode(*a, first_tokens=True)

                diff = float((full().float() - first().float()).abs().max())
                t = interleaved({"full": full, "first": first}, warmup=1, runs=runs)
            r = paired_ratio(t, "full", "first")
            an = flops.tier_flops(tier.config, lens, first_tokens=False) / flops.tier_flops(tier.config, lens)
            rec = {"model": model, "layers": layers, "rows": rows, "tokens": sum(lens), "max_abs_diff": diff,
                   "full_ms": t["full"]["median"] * 1e3, "first_tokens_ms": t["first"]["median"] * 1e3,
                   "speedup": r["median"], "speedup_min": r["min"], "speedup_max": r["max"],
                   "flops_ratio": an}
            results.append(rec)
            print(f"{model:>10} {layers:>6} {rows:>5} {sum(lens):>6} {rec['full_ms']:>9.2f} "
                  f"{rec['first_tokens_ms']:>9.2f} {r['median']:>6.2f}x ({r['min']:.2f}-{r['max']:.2f}) "
                  f"{an:>10.2f}x")
            if diff > (1e-4 if dtype == torch.float32 else 5e-2):
                raise SystemExit(f"outputs differ by {diff:g}")
    if not args.quick or args.out_dir:
        name = "first_token_layer" + ("" if dtype == torch.float32 else "_bf16")
        path = common.write_result(name, dev, {"runs": runs, "dtype": args.dtype, "cases": cases,
                                                              "batches": batches}, results, args.out_dir)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
