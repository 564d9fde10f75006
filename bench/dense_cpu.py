"""The exact-path dense layer on the CPU: this project's panel kernel and oneDNN against ATen.

For the four dense layers of a BERT encoder layer (QKV, attention output, intermediate with
GELU, output) at MiniLM (384 wide) and BERT-base (768 wide) shapes, and row counts from one
token to a large packed batch, times ``cascade_rt.dense.dense`` four ways, interleaved: ATen
(``F.linear`` then the activation: what a tier ran first), oneDNN on the plain (N, K) weight,
oneDNN on the weight packed once in its blocked layout (``cascade_rt.dense.prepack``: what the
fused CPU encoder runs in bf16), and the panel kernel on the weight packed once in panels
(``cascade_rt.dense.panel_pack``: what the fused CPU encoder runs in fp32). Prints GFLOP/s and
each way's speed-up over ATen. One weight at a time stays in the caches here; in a tier's
forward at batch 1 the weights stream from memory (``bench/e2e_vs_ort.py`` times that). Writes
``bench/results/dense_cpu.json``.

``--isa avx2`` holds every path to AVX2 on an AVX-512 CPU, a stand-in for a CPU without AVX-512:
the bench runs itself again with ATen, MKL and oneDNN capped (``ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``) and the panel kernel on its AVX2 tiles
(``CASCADE_RT_PANEL_ISA=avx2``, which such a CPU only gets on request), and writes
``bench/results/dense_avx2_cpu.json``. The panel column's ``/packed`` ratio is the one that
decides whether AVX2 CPUs should get panels by default.

    .venv/bin/python bench/dense_cpu.py --threads 2
    .venv/bin/python bench/dense_cpu.py --threads 2 --isa avx2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt.dense import dense, panel_pack, panel_width, prepack, set_onednn  # noqa: E402

WIDTHS = {"minilm": 384, "bert-base": 768}
ROWS = (1, 2, 4, 10, 32, 128, 512, 2000, 6000)


def layers(h: int) -> list[tuple[str, int, int, str]]:
    return [("qkv", h, 3 * h, "none"), ("attn_out", h, h, "none"), ("intermediate", h, 4 * h, "gelu"),
            ("output", 4 * h, h, "none")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    p.add_argument("--models", nargs="+", choices=tuple(WIDTHS), default=list(WIDTHS))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    common.add_isa_flag(p)
    args = p.parse_args(argv)
    isa = common.start_cpu_bench(p, args, argv, __file__)
    device = torch.device("cpu")

    def run(onednn: bool, x, w, b, act):
        set_onednn(onednn)
        return dense(x, w, b, act)

    results = []
    print(f"{common.device_name(device)}, {torch.get_num_threads()} thread(s), fp32, ISA {isa}")
    print(f"{'model':<10}{'layer':<14}{'rows':>6}{'aten GF/s':>11}{'oneDNN GF/s':>13}{'ratio':>8}"
          f"{'packed GF/s':>13}{'ratio':>8}{'panel GF/s':>12}{'ratio':>8}{'/packed':>9}")
    try:
        for model in args.models:
            for name, k, n, act in layers(WIDTHS[model]):
                g = torch.Generator().manual_seed(k * n)
                w = torch.randn(n, k, generator=g) / k ** 0.5
                b = torch.randn(n, generator=g)
                set_onednn(True)
                wp = prepack(w)
                wq = panel_pack(w) if panel_width() else None
                for m in args.rows:
                    x = torch.randn(m, k, generator=g)
                    ways = {"aten": lambda: run(False, x, w, b, act), "onednn": lambda: run(True, x, w, b, act),
                            "packed": lambda: run(True, x, wp, b, act)}
                    if wq is not None:
                        ways["panel"] = lambda: dense(x, wq, b, act)
                    t = common.interleaved(ways, warmup=2, runs=args.runs)
                    fl = 2 * m * k * n
                    r = {"model": model, "layer": name, "rows": m, "k": k, "n": n, "activation": act,
                         "aten_ms": t["aten"]["median"] * 1e3, "onednn_ms": t["onednn"]["median"] * 1e3,
                         "aten_gflops": fl / t["aten"]["median"] / 1e9,
                         "onednn_gflops": fl / t["onednn"]["median"] / 1e9,
                         "speedup": t["aten"]["median"] / t["onednn"]["median"],
                         "packed_ms": t["packed"]["median"] * 1e3,
                         "packed_gflops": fl / t["packed"]["median"] / 1e9,
                         "packed_speedup": t["aten"]["median"] / t["packed"]["median"]}
                    if wq is not None:
                        r.update(panel_ms=t["panel"]["median"] * 1e3, panel_gflops=fl / t["panel"]["median"] / 1e9,
                                 panel_speedup=t["aten"]["median"] / t["panel"]["median"],
                                 panel_over_packed=t["packed"]["median"] / t["panel"]["median"])
                    results.append(r)
                    panel = (f"{r['panel_gflops']:>12.1f}{r['panel_speedup']:>7.2f}x{r['panel_over_packed']:>8.2f}x"
                             if wq is not None else f"{'-':>12}{'-':>8}{'-':>9}")
                    print(f"{model:<10}{name:<14}{m:>6}{r['aten_gflops']:>11.1f}{r['onednn_gflops']:>13.1f}"
                          f"{r['speedup']:>7.2f}x{r['packed_gflops']:>13.1f}{r['packed_speedup']:>7.2f}x{panel}",
                          flush=True)
    finally:
        set_onednn(True)
    cfg = {"rows": args.rows, "models": args.models, "runs": args.runs, "dtype": "float32",
           "timing": "median of interleaved runs", "baseline": "F.linear + activation (ATen, MKL sgemm)",
           "isa": args.isa, "isa_env": common.AVX2_ENV if args.isa == "avx2" else {}}
    name = "dense" if args.isa == "native" else "dense_avx2"
    path = common.write_result(name, device, cfg, results, Path(args.out_dir))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
