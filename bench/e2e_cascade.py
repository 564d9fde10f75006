"""A cascade against its last tier alone, at exit rates from 0 to 90%, measured beside analytic.

The tiers (smallest first) share one vocabulary; for each target exit rate ``r`` the
threshold of tier 0 is set from the confidences tier 0 gives this very batch so that a
fraction ``r`` of the rows leaves after tier 0 (the rest run the later tiers; with three
tiers the middle one lets ``r`` of what reaches it leave too). The cascade and the last tier
alone (a one-tier ``CascadeBert``: same input path, same packing) are timed interleaved in
this process on the same padded batch. Prints the measured speed-up, the analytic one
(``cascade_rt.flops.analytic_speedup`` on the rows' real exit tiers) and their ratio, and the
cost of the tier boundary (exit head + scatter + compaction) as a share of tier 0's time.
Writes ``bench/results/e2e_cascade_<n>tier_<device>.json`` and ``.png``.

    .venv/bin/python bench/e2e_cascade.py                 # CPU: MiniLM 2 -> 6 layers
    .venv/bin/python bench/e2e_cascade.py --device cuda   # fp16, BERT-base-wide 4 -> 12 layers
    .venv/bin/python bench/e2e_cascade.py --tiers 3       # MiniLM 1 -> 3 -> 6 layers
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt import CascadeBert, Tier, flops, ops  # noqa: E402

RATES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def build_tiers(device, dtype, n_tiers: int, family: str) -> list[Tier]:
    if family == "minilm":
        layers = {2: (2, 6), 3: (1, 3, 6)}[n_tiers]
        return [common.minilm_tier(n, seed=10 + n, device=device, dtype=dtype) for n in layers]
    layers = {2: (4, 12), 3: (2, 6, 12)}[n_tiers]
    # random weights with std 1 heads so that confidences spread over (1/C, 1)
    tiers = []
    for n in layers:
        t = common.random_tier(768, n, 12, 3072, seed=20 + n, device=device, dtype=dtype)
        with torch.no_grad():
            t.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator(device=device).manual_seed(n))
        tiers.append(t)
    return tiers


def threshold_for(conf: torch.Tensor, rate: float, among: torch.Tensor | None = None) -> float:
    """A threshold that lets ``rate`` of the rows (of those flagged in ``among``) exit."""
    c = conf if among is None else conf[among]
    if c.numel() == 0:
        return 1.0
    k = round(rate * c.numel())
    srt = torch.sort(c.float(), descending=True).values
    if k == 0:
        return min(1.0, float(torch.nextafter(srt[0], torch.tensor(2.0, device=srt.device))))
    return float(srt[k - 1])


def confidences(tier: Tier, ids, mask) -> torch.Tensor:
    with torch.inference_mode():
        return tier(ids, mask).softmax(-1).amax(-1)


def boundary_share(model: CascadeBert, ids, mask, device, runs: int) -> dict:
    """Exit head + scatter + compaction at tier 0, against tier 0's encode, same batch."""
    tier = model.tiers[0]
    batch = model.pack(ids, mask)
    B = batch.num_rows
    tokens = torch.stack([batch.input_ids, batch.token_type_ids], dim=1)
    row_index = torch.arange(B, device=device, dtype=torch.int64)
    out_l = torch.zeros((B, model.num_labels), dtype=torch.float32, device=device)
    out_c = torch.zeros(B, dtype=torch.float32, device=device)
    out_t = torch.full((B,), -1, dtype=torch.int64, device=device)
    thr = model.thresholds[0]
    with torch.inference_mode():
        cls = tier.encode(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, batch.max_seqlen,
                          first_tokens=True)

        def boundary():
            logits, conf, exit_mask = tier.exit_head(cls, thr)
            ops.scatter_exits(exit_mask, row_index, logits, conf, 0, out_l, out_c, out_t)
            return ops.compact(exit_mask, tokens, batch.cu_seqlens)

        def encode():  # as the cascade runs a tier: the [CLS] states only
            return tier.encode(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, batch.max_seqlen,
                               first_tokens=True)

        t = common.interleaved({"boundary": boundary, "encode": encode}, device, warmup=1, runs=runs)
    return {"boundary_ms": t["boundary"]["min"] * 1e3, "tier0_encode_ms": t["encode"]["min"] * 1e3,
            "boundary_share": t["boundary"]["min"] / (t["boundary"]["min"] + t["encode"]["min"])}


def tier_profile(model: CascadeBert, ids, mask, lens: list[int], runs: int) -> list[dict]:
    """Where a cascade forward's time goes: each tier's wall time (its ``cascade_rt.tier<i>``
    range under ``torch.profiler``, mean over ``runs``) beside its share of the analytic FLOPs.
    CPU only (on CUDA the ranges time kernel launches, not kernels)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        out = model(ids, mask)
        exit_tier = out.exit_tier.tolist()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(ids, mask)
    totals = {e.key: e.cpu_time_total / 1e3 / runs for e in prof.key_averages() if e.key.startswith("cascade_rt.tier")}
    rows = []
    tier_flops = []
    for i, tier in enumerate(model.tiers):
        reach = [n for n, t in zip(lens, exit_tier) if t >= i]
        tier_flops.append(flops.tier_flops(tier.config, reach) if reach else 0.0)
        rows.append({"tier": i, "layers": tier.config.num_hidden_layers, "rows": len(reach), "tokens": sum(reach),
                     "ms": totals.get(f"cascade_rt.tier{i}", 0.0)})
    total_ms, total_flops = sum(r["ms"] for r in rows), sum(tier_flops)
    for r, f in zip(rows, tier_flops):
        r["time_share"] = r["ms"] / total_ms if total_ms else 0.0
        r["flop_share"] = f / total_flops if total_flops else 0.0
        r["gflop_per_s"] = f / (r["ms"] / 1e3) / 1e9 if r["ms"] else 0.0
    return rows


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["exit_rate_tier0"] * 100 for r in results]
    ax.plot(xs, [r["speedup"] for r in results], "o-", label="measured")
    ax.plot(xs, [r["analytic_speedup"] for r in results], "x--", label="analytic (FLOPs)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("rows exiting at tier 0 (%)")
    ax.set_ylabel("speed-up vs last tier alone")
    ax.legend()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    p.add_argument("--tiers", type=int, default=2, choices=(2, 3))
    p.add_argument("--family", choices=("minilm", "bert-base"), default=None,
                   help="default: minilm on CPU, bert-base (random weights) on CUDA")
    p.add_argument("--batch", type=int, default=None, help="default: 48 on CPU, 256 on CUDA")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--avg-frac", type=float, default=0.6, help="average length / max length")
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--sync-free", action="store_true", help="run the cascade with model.sync_free = True")
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
    family = args.family or ("bert-base" if cuda else "minilm")
    batch = args.batch or (256 if cuda else 48)
    runs = args.runs or (20 if cuda else 5)
    rates = args.rates
    max_len = args.max_len
    if args.quick:
        batch, runs, rates, max_len = 8, 2, [0.0, 0.5], 32
    cfg = {"family": family, "tiers": args.tiers, "batch": batch, "max_len": max_len,
           "avg_len_frac": args.avg_frac, "rates": rates, "runs": runs, "sync_free": args.sync_free,
           "dtype": str(dtype).replace("torch.", ""),
           "baseline": "the last tier alone as a one-tier CascadeBert on the same padded batch",
           "timing": "min over runs, cascade and baseline interleaved"}

    tiers = build_tiers(device, dtype, args.tiers, family)
    cfg["tier_layers"] = [t.config.num_hidden_layers for t in tiers]
    cfg["tier_hidden"] = [t.config.hidden_size for t in tiers]
    ids, mask, lens = common.random_padded_batch(batch, max_len, args.avg_frac,
                                                 vocab=tiers[0].config.vocab_size, seed=7, device=device)
    model = CascadeBert(tiers, [0.5] * (len(tiers) - 1)).eval()
    model.sync_free = args.sync_free
    alone = CascadeBert([tiers[-1]], []).eval()
    alone.sync_free = args.sync_free
    confs = [confidences(t, ids, mask) for t in tiers[:-1]]
    print(f"device {common.device_name(device)}, {cfg['dtype']}, tiers {cfg['tier_layers']} layers x "
          f"{cfg['tier_hidden']} wide, batch {batch}, mean length {sum(lens) / batch:.1f} of {max_len}; "
          f"backends {common.op_backends(device)}")
    print(f"{'target':>7}{'exit@0':>8}{'rows/tier':>16}{'cascade ms':>12}{'alone ms':>10}"
          f"{'measured':>10}{'analytic':>10}{'meas/anal':>10}")
    results = []
    for rate in rates:
        thresholds = [threshold_for(confs[0], rate)]
        if len(tiers) == 3:
            reach1 = confs[0] < thresholds[0]
            thresholds.append(threshold_for(confs[1], rate, reach1))
        model.set_thresholds(thresholds)
        with torch.inference_mode():
            out = model(ids, mask)
            t = common.interleaved({"cascade": lambda: model(ids, mask), "alone": lambda: alone(ids, mask)},
                                   device, warmup=1, runs=runs)
        exit_tier = out.exit_tier.tolist()
        analytic = flops.analytic_speedup([t_.config for t_ in tiers], lens, exit_tier)
        measured = t["alone"]["min"] / t["cascade"]["min"]
        r = {
            "target_exit_rate": rate, "thresholds": thresholds,
            "exit_rate_tier0": exit_tier.count(0) / batch,
            "rows_per_tier": out.rows_per_tier.tolist(), "tokens_per_tier": out.tokens_per_tier.tolist(),
            "cascade_ms": t["cascade"]["min"] * 1e3, "alone_ms": t["alone"]["min"] * 1e3,
            "cascade_median_ms": t["cascade"]["median"] * 1e3, "alone_median_ms": t["alone"]["median"] * 1e3,
            "speedup": measured, "speedup_median": t["alone"]["median"] / t["cascade"]["median"],
            "analytic_speedup": analytic, "measured_over_analytic": measured / analytic,
            "cascade_tokens_per_s": sum(lens) / t["cascade"]["min"],
        }
        results.append(r)
        print(f"{rate:>7.0%}{r['exit_rate_tier0']:>8.0%}{str(r['rows_per_tier']):>16}{r['cascade_ms']:>12.1f}"
              f"{r['alone_ms']:>10.1f}{measured:>9.2f}x{analytic:>9.2f}x{r['measured_over_analytic']:>10.2f}",
              flush=True)
    model.set_thresholds([0.5] * (len(tiers) - 1))
    share = boundary_share(model, ids, mask, device, runs=max(runs, 5))
    cfg["boundary"] = share
    print(f"tier boundary (exit head + scatter + compaction) {share['boundary_ms']:.2f} ms = "
          f"{share['boundary_share']:.2%} of tier 0 ({share['tier0_encode_ms']:.1f} ms encode)")
    if device.type == "cpu":
        model.set_thresholds(results[-1]["thresholds"])
        prof = tier_profile(model, ids, mask, lens, runs=max(runs, 3))
        base = tier_profile(alone, ids, mask, lens, runs=max(runs, 3))[0]
        cfg["tier_profile"] = {"exit_rate_tier0": results[-1]["exit_rate_tier0"], "tiers": prof, "alone": base}
        print(f"profile at {results[-1]['exit_rate_tier0']:.0%} exit (torch.profiler, per-tier ranges):")
        print(f"{'tier':>6}{'layers':>8}{'rows':>6}{'tokens':>8}{'ms':>9}{'time':>8}{'FLOPs':>8}{'GFLOP/s':>9}")
        for r in prof:
            print(f"{r['tier']:>6}{r['layers']:>8}{r['rows']:>6}{r['tokens']:>8}{r['ms']:>9.1f}"
                  f"{r['time_share']:>8.0%}{r['flop_share']:>8.0%}{r['gflop_per_s']:>9.1f}")
        print(f"{'alone':>6}{base['layers']:>8}{base['rows']:>6}{base['tokens']:>8}{base['ms']:>9.1f}"
              f"{'':>16}{base['gflop_per_s']:>9.1f}")
    name = f"e2e_cascade_{args.tiers}tier" + ("_sync_free" if args.sync_free else "")
    path = common.write_result(name, device, cfg, results, Path(args.out_dir))
    print(f"wrote {path}")
    if not args.no_plot:
        env = common.environment(device)
        png = path.with_suffix(".png")
        plot(results, png, f"{family} cascade {cfg['tier_layers']} layers vs last tier, batch {batch}, "
                           f"{cfg['dtype']}, {env['device']}, commit {env['commit']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
