"""An fp32 CPU tier end to end with its dense weights in panels against oneDNN's packed layout.

Which layout an fp32 CPU tier packs its dense weights in (``cascade_rt.dense.packing``) is
decided once per process, for every row count: panels (``cascade_rt.dense.panel_pack``, this
project's kernel) where the CPU has AVX-512, oneDNN's blocked layout (``prepack``) elsewhere.
``bench/dense_cpu.py`` compares the two one dense layer at a time; this compares them where the
choice shows, a whole tier's forward: MiniLM (the shipped 6-layer, 384-wide weights) and
BERT-base shapes (random weights), batch 1 at 10, 32 and 128 tokens, and a batch of 48 rows of
mean length 0.6 x 128. One tier holds both layouts (``set_panel`` picks one per call without
repacking). Each case first checks that both give the same logits (to 1e-4), then times blocks of
consecutive calls, the two layouts interleaved in alternating order (median over blocks of the
per-call time); the ratio is oneDNN time / panel time per round (> 1: panels are faster).

``--isa avx2`` runs it with every path held to AVX2 (as ``bench/dense_cpu.py --isa avx2``), a
stand-in for a CPU without AVX-512, where panels are opt-in (``CASCADE_RT_PANEL_ISA=avx2``):
this is the figure that decides that default. Writes ``bench/results/panel_layout_cpu.json``
(``panel_layout_avx2_cpu.json``).

    .venv/bin/python bench/panel_layout.py --threads 2
    .venv/bin/python bench/panel_layout.py --threads 2 --isa avx2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt.dense import panel_enabled, panel_width, set_panel  # noqa: E402
from cascade_rt.timing import paired_ratio  # noqa: E402

MODELS = ("minilm", "bert-base")
#: (rows, mean length as a fraction of 128; batch 1 rows have exactly that many tokens)
CASES = ((1, 10), (1, 32), (1, 128), (48, 0.6))


def build(model: str):
    if model == "minilm":
        return common.minilm_tier(6, dtype=torch.float32)
    return common.random_tier(768, 12, 12, 3072, dtype=torch.float32, seed=1)


def make_batch(rows: int, size, vocab: int):
    if rows == 1:
        g = torch.Generator().manual_seed(size)
        return torch.randint(1000, vocab, (1, size), generator=g), torch.ones(1, size, dtype=torch.long)
    ids, mask, lens = common.random_padded_batch(rows, 128, size, vocab=vocab, seed=rows)
    return ids[:, :max(lens)].contiguous(), mask[:, :max(lens)].contiguous()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--rounds", type=int, default=9, help="timed blocks per layout and case")
    p.add_argument("--block-s", type=float, default=0.25, help="about this long per block")
    common.add_isa_flag(p)
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    args = p.parse_args(argv)
    isa = common.start_cpu_bench(p, args, argv, __file__)
    device = torch.device("cpu")
    if panel_width() == 0:
        p.error("the panel kernel is not offered on this CPU (no AVX-512; try --isa avx2 on an AVX2 CPU)")
    print(f"{common.device_name(device)}, {torch.get_num_threads()} thread(s), fp32, ISA {isa}")
    print(f"{'model':<10}{'rows':>5}{'tokens':>8}{'calls':>7}{'oneDNN ms':>11}{'panel ms':>10}"
          f"{'oneDNN/panel':>14}{'  [min, max]':<16}")
    was = panel_enabled()
    results = []
    try:
        for model in args.models:
            tier = build(model).eval()
            vocab = tier.config.vocab_size
            for rows, size in CASES:
                ids, mask = make_batch(rows, size, vocab)

                def call(panel: bool):
                    set_panel(panel)
                    return tier(ids, mask)

                with torch.inference_mode():
                    diff = (call(True) - call(False)).abs().max().item()
                    if diff > 1e-4:
                        raise SystemExit(f"{model} rows={rows}: panel and oneDNN logits differ by {diff:.2e}")
                    t0 = time.perf_counter()
                    call(True)
                    calls = max(1, round(args.block_s / (time.perf_counter() - t0)))

                    def block(panel: bool):
                        for _ in range(calls):
                            call(panel)

                    t = common.interleaved({"onednn": lambda: block(False), "panel": lambda: block(True)},
                                           device, warmup=1, runs=args.rounds)
                ratio = paired_ratio(t, "onednn", "panel")
                r = {"model": model, "rows": rows, "tokens": int(mask.sum()), "calls_per_block": calls,
                     "onednn_ms": t["onednn"]["median"] / calls * 1e3, "panel_ms": t["panel"]["median"] / calls * 1e3,
                     "onednn_over_panel": ratio, "max_abs_logit_diff": diff}
                results.append(r)
                print(f"{model:<10}{rows:>5}{r['tokens']:>8}{calls:>7}{r['onednn_ms']:>11.2f}{r['panel_ms']:>10.2f}"
                      f"{ratio['median']:>13.2f}x  [{ratio['min']:.2f}, {ratio['max']:.2f}]", flush=True)
    finally:
        set_panel(was)
    cfg = {"models": args.models, "cases": [list(c) for c in CASES], "rounds": args.rounds,
           "block_s": args.block_s, "dtype": "float32", "isa": args.isa,
           "isa_env": common.AVX2_ENV if args.isa == "avx2" else {},
           "timing": "blocks of consecutive calls, layouts interleaved; ratio per round"}
    name = "panel_layout" if args.isa == "native" else "panel_layout_avx2"
    path = common.write_result(name, device, cfg, results, Path(args.out_dir))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
