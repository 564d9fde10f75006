"""The survivor queue across batches: ``CascadeBert.stream`` against the per-batch cascade.

Three MiniLM-shaped tiers (1, 3 and 6 layers of the shipped MiniLM, seeded heads) classify
``--rows`` rows (default 2,048) that arrive in batches of ``--batch`` (default 32). For each
target exit rate ``r`` the thresholds are set from the tiers' own confidences on these rows so
that a fraction ``r`` leaves at tier 0 and ``r`` of the rest at tier 1. Three ways to classify
every batch are timed interleaved in this process (min over runs):

* ``alone``: the last tier alone (a one-tier ``CascadeBert``) on each batch: the baseline;
* ``per_batch``: the cascade called on each batch (later tiers run on a batch's few survivors);
* ``stream``: ``model.stream(batches)`` (survivors queue across batches; later tiers run full).

Prints, per rate, each one's speed-up over ``alone``, the analytic speed-up
(``cascade_rt.flops.analytic_speedup`` on the rows' real exit tiers) and measured / analytic,
and how many rows a later tier ran on per run. Writes ``bench/results/e2e_stream_<device>.json``
and ``.png``.

    .venv/bin/python bench/e2e_stream.py                 # CPU, fp32
    .venv/bin/python bench/e2e_stream.py --device cuda   # fp16
    .venv/bin/python bench/e2e_stream.py --quick         # smoke run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt import CascadeBert, flops  # noqa: E402

RATES = (0.5, 0.9)
LAYERS = (1, 3, 6)


def threshold_for(conf: torch.Tensor, rate: float) -> float:
    """A threshold that lets ``rate`` of these confidences reach it (exit)."""
    if conf.numel() == 0:
        return 1.0
    k = round(rate * conf.numel())
    srt = torch.sort(conf.float(), descending=True).values
    if k == 0:
        return min(1.0, float(torch.nextafter(srt[0], torch.tensor(2.0, device=srt.device))))
    return float(srt[k - 1])


def make_batches(rows: int, batch: int, max_len: int, avg_frac: float, vocab: int, device):
    ids, mask, lens = common.random_padded_batch(rows, max_len, avg_frac, vocab=vocab, seed=11, device=device)
    batches = []
    for s in range(0, rows, batch):
        m = mask[s:s + batch]
        width = int(m.sum(1).max())  # each batch padded to its own longest row, as a tokenizer would
        batches.append({"input_ids": ids[s:s + batch, :width], "attention_mask": m[:, :width]})
    return batches, lens


def confidences(tier, batches, rows_mask=None) -> torch.Tensor:
    """Tier's confidence per row (rows not flagged in ``rows_mask`` get 1.0 and are not run)."""
    out, start = [], 0
    with torch.inference_mode():
        for b in batches:
            n = b["input_ids"].shape[0]
            c = torch.ones(n, device=b["input_ids"].device)
            sel = slice(None) if rows_mask is None else rows_mask[start:start + n]
            if rows_mask is None or bool(sel.any()):
                c[sel] = tier(b["input_ids"][sel], b["attention_mask"][sel]).softmax(-1).amax(-1).float()
            out.append(c)
            start += n
    return torch.cat(out)


def count_runs(model, fn) -> list[list[int]]:
    """Rows of every run of each tier during ``fn()`` (untimed)."""
    runs: list[list[int]] = [[] for _ in model.tiers]
    originals = []
    for i, tier in enumerate(model.tiers):
        orig = tier.encode
        originals.append((tier, orig))

        def wrapped(ids, types, cu, max_seqlen, _orig=orig, _i=i, **kw):
            runs[_i].append(int(cu.shape[0] - 1))
            return _orig(ids, types, cu, max_seqlen, **kw)

        tier.encode = wrapped
    try:
        fn()
    finally:
        for tier, _ in originals:
            del tier.encode
    return runs


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['exit_rate_tier0']:.0%} exit" for r in results]
    x = range(len(results))
    w = 0.27
    ax.bar([i - w for i in x], [r["analytic_speedup"] for r in results], w, label="analytic (FLOPs)", color="#bbb")
    ax.bar(list(x), [r["speedup_per_batch"] for r in results], w, label="per-batch cascade")
    ax.bar([i + w for i in x], [r["speedup_stream"] for r in results], w, label="stream (survivor queue)")
    for i, r in enumerate(results):
        ax.text(i, r["speedup_per_batch"], f"{r['realized_per_batch']:.2f}", ha="center", va="bottom", fontsize=7)
        ax.text(i + w, r["speedup_stream"], f"{r['realized_stream']:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("speed-up vs last tier alone (labels: measured/analytic)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--avg-frac", type=float, default=0.6, help="average length / max length")
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--runs", type=int, default=None, help="timed runs of each (default: 3 on CPU, 10 on CUDA)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.warn_if_loaded(device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if cuda else torch.float32)
    rows, batch, max_len, rates = args.rows, args.batch, args.max_len, args.rates
    runs = args.runs or (10 if cuda else 3)
    if args.quick:
        rows, batch, max_len, runs = 96, 8, 32, 1
    tiers = [common.minilm_tier(n, seed=10 + n, device=device, dtype=dtype) for n in LAYERS]
    model = CascadeBert(tiers, [0.5, 0.5]).eval()
    alone = CascadeBert([tiers[-1]], []).eval()
    batches, lens = make_batches(rows, batch, max_len, args.avg_frac, tiers[0].config.vocab_size, device)
    cfg = {"rows": rows, "batch": batch, "num_batches": len(batches), "max_len": max_len,
           "avg_len_frac": args.avg_frac, "mean_len": sum(lens) / rows, "rates": rates, "runs": runs,
           "dtype": str(dtype).replace("torch.", ""), "tier_layers": list(LAYERS),
           "stream_max_batch_tokens": "default: the most tokens of any input batch so far",
           "baseline": "the last tier alone (one-tier CascadeBert) on each input batch",
           "timing": "min over runs of the whole pass over all batches; alone, per_batch and stream interleaved"}
    print(f"device {common.device_name(device)}, {cfg['dtype']}, tiers {list(LAYERS)} MiniLM layers, {rows} rows "
          f"in {len(batches)} batches of {batch}, mean length {cfg['mean_len']:.1f} of {max_len}; "
          f"backends {common.op_backends(device)}", flush=True)

    conf0 = confidences(tiers[0], batches)
    reach_any = conf0 < threshold_for(conf0, min(rates))
    conf1 = confidences(tiers[1], batches, reach_any)

    def run_alone():
        for b in batches:
            alone(**b)

    def run_per_batch():
        for b in batches:
            model(**b)

    def run_stream():
        for _ in model.stream(batches):
            pass

    print(f"{'exit@0':>7}{'rows/tier':>18}{'alone s':>9}{'batch s':>9}{'stream s':>9}{'analytic':>10}"
          f"{'per-batch':>18}{'stream':>18}{'tier-2 rows/run':>17}")
    results = []
    for rate in rates:
        t0 = threshold_for(conf0, rate)
        reach1 = conf0 < t0
        t1 = threshold_for(conf1[reach1], rate)
        model.set_thresholds([t0, t1])
        with torch.inference_mode():
            outs: list = []
            # one untimed stream pass: the exit tiers, the stream's tier runs, and a warm-up
            runs_stream = count_runs(model, lambda: outs.extend(model.stream(batches)))
            exit_tier = torch.cat([o.exit_tier for o in outs]).tolist()
            rows_per_tier = torch.stack([o.rows_per_tier for o in outs]).sum(0).tolist()
            # the per-batch cascade runs tier i once per batch that has rows reaching it
            runs_batch = [[n for n in (int(o.rows_per_tier[i]) for o in outs) if n] for i in range(len(tiers))]
            alone(**batches[0])
            model(**batches[0])
            t = common.interleaved({"alone": run_alone, "per_batch": run_per_batch, "stream": run_stream},
                                   device, warmup=0, runs=runs)
        analytic = flops.analytic_speedup([x.config for x in tiers], lens, exit_tier)
        sp_b = t["alone"]["min"] / t["per_batch"]["min"]
        sp_s = t["alone"]["min"] / t["stream"]["min"]
        r = {
            "target_exit_rate": rate, "thresholds": [t0, t1], "exit_rate_tier0": exit_tier.count(0) / rows,
            "rows_per_tier": rows_per_tier,
            "alone_s": t["alone"]["min"], "per_batch_s": t["per_batch"]["min"], "stream_s": t["stream"]["min"],
            "alone_median_s": t["alone"]["median"], "per_batch_median_s": t["per_batch"]["median"],
            "stream_median_s": t["stream"]["median"],
            "analytic_speedup": analytic, "speedup_per_batch": sp_b, "speedup_stream": sp_s,
            "realized_per_batch": sp_b / analytic, "realized_stream": sp_s / analytic,
            "stream_over_per_batch": t["per_batch"]["min"] / t["stream"]["min"],
            "tier_runs_per_batch": [len(x) for x in runs_batch], "tier_runs_stream": [len(x) for x in runs_stream],
            "mean_rows_per_run_per_batch": [sum(x) / len(x) if x else 0.0 for x in runs_batch],
            "mean_rows_per_run_stream": [sum(x) / len(x) if x else 0.0 for x in runs_stream],
            "rows_per_s_stream": rows / t["stream"]["min"],
        }
        results.append(r)
        print(f"{r['exit_rate_tier0']:>7.0%}{str(rows_per_tier):>18}{r['alone_s']:>9.2f}{r['per_batch_s']:>9.2f}"
              f"{r['stream_s']:>9.2f}{analytic:>9.2f}x{sp_b:>8.2f}x ({r['realized_per_batch']:.2f}){sp_s:>8.2f}x "
              f"({r['realized_stream']:.2f}){r['mean_rows_per_run_per_batch'][2]:>7.1f} -> "
              f"{r['mean_rows_per_run_stream'][2]:.1f}", flush=True)
    model.set_thresholds([0.5, 0.5])
    path = common.write_result("e2e_stream", device, cfg, results, Path(args.out_dir))
    print(f"wrote {path}")
    if not args.no_plot:
        env = common.environment(device)
        png = path.with_suffix(".png")
        plot(results, png, f"MiniLM {list(LAYERS)} layers, {rows} rows in batches of {batch}, {cfg['dtype']}, "
                           f"{env['device']}, commit {env['commit']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
