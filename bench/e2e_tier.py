"""One tier, padding-free, against Hugging Face's padded BERT on the same batch.

For every model shape, batch size and average length (a fraction of ``max_len``) this draws
one batch of rows, pads it to its longest row as a user's tokenizer does with
``padding=True``, checks that both models give the same logits, then times
``cascade_rt.Tier`` (which packs the batch on the device and never computes padding) and
``transformers.BertForSequenceClassification`` with ``attn_implementation="sdpa"`` (which
computes every padded slot) on that batch: one warm-up call each, then ``--runs`` passes
interleaved in alternating order. A point's measured speed-up is the median over passes of
HF time / cascade_rt time (with its min and max); ``--repeat N`` runs the whole sweep N times
and reports the median of the N per-sweep figures with their spread. Beside it are the FLOPs
ratios (:mod:`cascade_rt.flops`): HF's work, padded to the longest row with every layer on
every slot, / the tier's, padding-free with its last layer for [CLS] only (the bound that
removing that work gives in this comparison) and, for reference only, padded to ``max_len`` /
padding-free (``padding="max_length"``, which the timed baseline does not use). A measured
speed-up above the first ratio means HF spends time on something besides padding FLOPs;
``--profile`` prints where each model's time goes (torch.profiler, self CPU time per op).
Also tokens/s and the fraction of the device's practical peak (a large matmul timed in the
same run). Writes ``bench/results/e2e_tier_<device>.json`` and ``e2e_tier_<device>.png``.

    .venv/bin/python bench/e2e_tier.py                       # CPU sweep, a few minutes
    .venv/bin/python bench/e2e_tier.py --repeat 5            # the README's figures: median of 5 sweeps
    .venv/bin/python bench/e2e_tier.py --models minilm --batches 48 --fracs 0.6 --profile
    .venv/bin/python bench/e2e_tier.py --device cuda         # fp16, batch 1..256
    .venv/bin/python bench/e2e_tier.py --quick               # smoke run, seconds

Models: ``minilm`` (the shipped 6-layer, 384-wide all-MiniLM-L6 weights), ``bert-base``
(12 layers, 768 wide, 12 heads, random weights).

``--family distilbert roberta xlm-roberta camembert electra`` (any of :data:`FAMILIES`) runs each
family's tier instead, at the model's shape with random weights (saved by transformers' own
``*ForSequenceClassification`` and loaded back by ``cascade_rt``), against that family's HF
model padded, and a BERT tier of the same shape against ``BertForSequenceClassification`` padded,
all four interleaved; it prints each family tier's time over the BERT tier's and both ratios over
transformers, and writes ``bench/results/e2e_tier_families_<device>.json``.

    .venv/bin/python bench/e2e_tier.py --family distilbert roberta electra --models minilm
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt import flops  # noqa: E402
from cascade_rt.timing import paired_ratio  # noqa: E402

MODELS = ("minilm", "bert-base")
FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")
#: (hidden, layers, heads, intermediate) of each model name when it is built for a family
SHAPES = {"minilm": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072)}


def build(model: str, device: torch.device, dtype: torch.dtype):
    if model == "minilm":
        return common.minilm_tier(6, device=device, dtype=dtype)
    if model == "bert-base":
        return common.random_tier(768, 12, 12, 3072, device=device, dtype=dtype, seed=1)
    raise ValueError(f"unknown model {model!r}; choose from {MODELS}")


def defaults(device: torch.device, quick: bool) -> dict:
    if quick:
        return {"models": ["minilm"], "batches": [4], "fracs": [0.6], "max_len": 64, "runs": 2}
    if device.type == "cuda":
        return {"models": ["bert-base", "minilm"], "batches": [1, 8, 32, 64, 128, 256],
                "fracs": [0.3, 0.6, 1.0], "max_len": 128, "runs": 20}
    # CPU: BERT-base at batch 48 would take minutes per case; it stops at 8
    return {"models": ["minilm", "bert-base"], "batches": [1, 8, 48], "fracs": [0.3, 0.6, 1.0],
            "max_len": 128, "runs": 3, "max_batch": {"bert-base": 8}}


def make_case(batch: int, frac: float, max_len: int, vocab: int, device):
    """One batch drawn around ``frac * max_len`` and padded to its longest row (``padding=True``)."""
    ids, mask, lens = common.random_padded_batch(batch, max_len, frac, vocab=vocab,
                                                 seed=batch * 1000 + int(frac * 100), device=device)
    longest = max(lens)
    return ids[:, :longest].contiguous(), mask[:, :longest].contiguous(), lens


def time_case(tier, hf, ids, mask, runs: int, device) -> dict:
    """One warm-up call each, then ``runs`` passes interleaved in alternating order."""
    with torch.inference_mode():
        t = common.interleaved({
            "hf_sdpa_padded": lambda: hf(input_ids=ids, attention_mask=mask),
            "cascade_rt": lambda: tier(ids, mask),
        }, device, warmup=1, runs=runs)
    return {"t": t, "ratio": paired_ratio(t, "hf_sdpa_padded", "cascade_rt")}


def profile_case(tier, hf, ids, mask, top: int = 8) -> dict:
    """Self CPU time per op of one call of each model (after a warm-up call): where HF's time
    goes besides the FLOPs it shares with cascade_rt."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    with torch.inference_mode():
        for name, fn in (("hf_sdpa_padded", lambda: hf(input_ids=ids, attention_mask=mask)),
                         ("cascade_rt", lambda: tier(ids, mask))):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ev) or 1.0
            out[name] = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count,
                          "share": e.self_cpu_time_total / total} for e in ev]
    # ops both models run (the matmuls, GELU, copies): HF's time over cascade_rt's, to set
    # against the row ratio (padded / live tokens); the rest is time only one model spends
    ours = {o["op"]: o["self_ms"] for o in out["cascade_rt"]}
    out["shared_op_time_ratio"] = {o["op"]: o["self_ms"] / ours[o["op"]] for o in out["hf_sdpa_padded"][:top]
                                   if ours.get(o["op"], 0) > 0}
    out["hf_only_ms"] = sum(o["self_ms"] for o in out["hf_sdpa_padded"] if o["op"] not in ours)
    for name in ("hf_sdpa_padded", "cascade_rt"):
        out[name] = out[name][:top]
    return out


def case_record(tier, batch: int, frac: float, max_len: int, lens: list[int], max_diff: float,
                timings: list[dict], peak: float) -> dict:
    """The figures of one case over ``len(timings)`` repeats of the sweep."""
    cfg = tier.config
    packed_flops = flops.tier_flops(cfg, lens)
    # HF's model: padded to the longest row, every layer on every slot
    longest_flops = flops.padded_tier_flops(cfg, lens, first_tokens=False)
    max_len_flops = flops.padded_tier_flops(cfg, lens, max_len, first_tokens=False)
    per_repeat = [r["ratio"]["median"] for r in timings]
    passes = [x for r in timings for x in r["ratio"]["all"]]
    # spread: over the repeated sweeps when there are several, else over the passes of the one
    spread = per_repeat if len(per_repeat) > 1 else passes
    ours_s = statistics.median(r["t"]["cascade_rt"]["median"] for r in timings)
    hf_s = statistics.median(r["t"]["hf_sdpa_padded"]["median"] for r in timings)
    tokens = sum(lens)
    speedup = statistics.median(per_repeat)
    bound = longest_flops / packed_flops
    return {
        "batch": batch, "avg_len_frac": frac, "max_len": max_len, "padded_len": max(lens),
        "tokens": tokens, "mean_len": tokens / batch, "max_abs_logit_diff": max_diff,
        "cascade_rt_ms": ours_s * 1e3, "hf_ms": hf_s * 1e3,
        # median over repeats of each repeat's median per-pass ratio
        "speedup": speedup, "speedup_min": min(spread), "speedup_max": max(spread),
        "speedup_spread_over": "repeats" if len(per_repeat) > 1 else "passes",
        "speedup_repeats": per_repeat,
        "speedup_passes": [r["ratio"]["all"] for r in timings],
        "analytic_speedup": bound,  # padded to the longest row / padding-free: this comparison's bound
        "flops_padding_free": packed_flops, "flops_padded_to_longest": longest_flops,
        "flops_padded_to_max_len": max_len_flops,
        "analytic_speedup_max_len": max_len_flops / packed_flops,  # padding="max_length" (not timed)
        "measured_over_bound": speedup / bound,
        "cascade_rt_tokens_per_s": tokens / ours_s, "hf_tokens_per_s": tokens / hf_s,
        # useful work only: padding FLOPs are not counted for HF either
        "cascade_rt_peak_frac": packed_flops / ours_s / peak,
        "hf_peak_frac": packed_flops / hf_s / peak,
        "hf_peak_frac_incl_padding": longest_flops / hf_s / peak,
    }


def family_hf(family: str, model: str, seed: int = 1):
    """A random-init transformers ``*ForSequenceClassification`` of ``family`` at ``model``'s
    shape (vocabulary 30522, 2 labels, 512 positions; ELECTRA's embeddings as wide as its
    hidden size, so the shapes match BERT's)."""
    import transformers as tf

    hidden, layers, heads, inter = SHAPES[model]
    kw = dict(vocab_size=30522, num_labels=2, hidden_size=hidden, num_hidden_layers=layers,
              num_attention_heads=heads, intermediate_size=inter)
    roberta = dict(kw, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    cls = {
        "bert": (tf.BertConfig, tf.BertForSequenceClassification, kw),
        "distilbert": (tf.DistilBertConfig, tf.DistilBertForSequenceClassification,
                       dict(vocab_size=30522, num_labels=2, dim=hidden, n_layers=layers, n_heads=heads,
                            hidden_dim=inter)),
        "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification, roberta),
        "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification, roberta),
        "camembert": (tf.CamembertConfig, tf.CamembertForSequenceClassification, roberta),
        "electra": (tf.ElectraConfig, tf.ElectraForSequenceClassification, dict(kw, embedding_size=hidden)),
    }[family]
    torch.manual_seed(seed)
    return cls[1](cls[0](**cls[2]))


def run_family_cases(families, model, cfg, device, dtype) -> list[dict]:
    """Each family's tier and HF model, and a BERT tier and HF BERT of the same shape, timed
    interleaved on the same padded batches."""
    import tempfile

    from cascade_rt import load_tier

    built = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in dict.fromkeys(["bert", *families]):
            hf = family_hf(fam, model)
            hf.save_pretrained(f"{tmp}/{fam}")
            tier = load_tier(f"{tmp}/{fam}", dtype=dtype, device=device)
            hf = hf.to(device=device, dtype=dtype).eval()
            hf.config._attn_implementation = "sdpa"
            built[fam] = (tier, hf)
    results = []
    for batch in cfg["batches"]:
        for frac in cfg["fracs"]:
            ids, mask, lens = common.random_padded_batch(batch, cfg["max_len"], frac, vocab=30522,
                                                         seed=batch * 1000 + int(frac * 100), device=device)
            fns, diffs = {}, {}
            with torch.inference_mode():
                for fam in built:
                    tier, hf = built[fam]
                    # RoBERTa-family pad id is 1: pad with it as its tokenizer would
                    pad = tier.config.pad_token_id
                    x = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
                    diffs[fam] = float((tier(x, mask) - hf(input_ids=x, attention_mask=mask).logits.float()).abs().max())
                    fns[f"{fam}:cascade_rt"] = (lambda t=tier, x=x: t(x, mask))
                    fns[f"{fam}:hf_sdpa_padded"] = (lambda h=hf, x=x: h(input_ids=x, attention_mask=mask))
                t = common.interleaved(fns, device, warmup=1, runs=cfg["runs"])
            bert_s = t["bert:cascade_rt"]["min"]
            bert_ratio = t["bert:hf_sdpa_padded"]["min"] / bert_s
            for fam in families:
                ours_s, hf_s = t[f"{fam}:cascade_rt"]["min"], t[f"{fam}:hf_sdpa_padded"]["min"]
                results.append({
                    "family": fam, "model": model, "batch": batch, "avg_len_frac": frac,
                    "max_len": cfg["max_len"], "tokens": sum(lens),
                    "max_abs_logit_diff": diffs[fam],
                    "cascade_rt_ms": ours_s * 1e3, "hf_ms": hf_s * 1e3, "bert_tier_ms": bert_s * 1e3,
                    "family_over_bert_tier": ours_s / bert_s,
                    "family_over_bert_tier_median": t[f"{fam}:cascade_rt"]["median"] / t["bert:cascade_rt"]["median"],
                    "speedup_vs_hf": hf_s / ours_s, "bert_speedup_vs_hf": bert_ratio,
                    "analytic_speedup": flops.padded_tier_flops(built[fam][0].config, lens, cfg["max_len"],
                                                                first_tokens=False)
                    / flops.tier_flops(built[fam][0].config, lens),
                })
                r = results[-1]
                print(f"{fam:<12}{model:<10}{batch:>6}{frac:>6.1f}{r['cascade_rt_ms']:>10.2f}"
                      f"{r['bert_tier_ms']:>10.2f}{r['family_over_bert_tier']:>9.3f}"
                      f"{r['speedup_vs_hf']:>8.2f}x{r['bert_speedup_vs_hf']:>8.2f}x{r['max_abs_logit_diff']:>9.1e}",
                      flush=True)
    return results


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in results if r["model"] == model]
        for i, frac in enumerate(sorted({r["avg_len_frac"] for r in rows})):
            rs = sorted((r for r in rows if r["avg_len_frac"] == frac), key=lambda r: r["batch"])
            xs = [r["batch"] for r in rs]
            color = f"C{i}"
            ax.plot(xs, [r["speedup"] for r in rs], "o-", color=color, label=f"measured, avg len {frac:g}")
            ax.plot(xs, [r["analytic_speedup"] for r in rs], "x--", color=color, alpha=0.6,
                    label=f"analytic, avg len {frac:g}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up vs HF sdpa (padded)")
        ax.set_title(f"{model}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 on CPU")
    p.add_argument("--models", nargs="+", choices=MODELS)
    p.add_argument("--batches", nargs="+", type=int)
    p.add_argument("--fracs", nargs="+", type=float, help="average length / max length")
    p.add_argument("--max-len", type=int)
    p.add_argument("--runs", type=int, help="timed passes of each model per case (after one warm-up)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole sweep this many times; each case reports the median over repeats "
                        "and their min/max")
    p.add_argument("--profile", action="store_true",
                   help="also profile one call of each model per case (top ops by self CPU time)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="one tiny case (smoke test)")
    p.add_argument("--family", nargs="+", choices=FAMILIES, default=None,
                   help="time these families' tiers against a BERT tier of the same shape")
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.warn_if_loaded(device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    cfg = defaults(device, args.quick)
    for key in ("models", "batches", "fracs", "max_len", "runs"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg["baseline"] = "transformers BertForSequenceClassification, attn_implementation=sdpa, padded"
    cfg["padding"] = ("each batch padded to its longest row (padding=True), lengths uniform around "
                      "avg_len_frac * max_len")
    cfg["timing"] = ("one warm-up call each, then `runs` passes interleaved in alternating order; speedup = "
                     "median over passes of HF / cascade_rt time, then median over `repeat` sweeps "
                     "(speedup_min/max: spread over sweeps, or over passes when repeat is 1)")
    cfg["repeat"] = args.repeat

    if args.family:
        cfg["baseline"] = ("each family's transformers *ForSequenceClassification (sdpa, padded), and a "
                           "cascade_rt BERT tier of the same shape")
        cfg["families"] = args.family
        print(f"device {common.device_name(device)}, {cfg['dtype']}; backends {common.op_backends(device)}")
        print(f"{'family':<12}{'model':<10}{'batch':>6}{'avg':>6}{'ours ms':>10}{'BERT ms':>10}"
              f"{'/BERT':>9}{'vs HF':>9}{'BERT/HF':>9}{'diff':>9}")
        results = []
        for model in cfg["models"]:
            results += run_family_cases(args.family, model, cfg, device, dtype)
        path = common.write_result("e2e_tier_families", device, cfg, results, Path(args.out_dir))
        print(f"wrote {path}")
        return 0
    peak = common.gemm_peak_flops(device, dtype)
    cfg["peak_flops_measured"] = peak
    print(f"device {common.device_name(device)}, {cfg['dtype']}, measured matmul peak "
          f"{peak / 1e12:.3f} TFLOP/s; backends {common.op_backends(device)}")
    print(f"{'model':<10}{'batch':>6}{'avg':>6}{'tokens':>8}{'pad':>5}{'HF ms':>10}{'ours ms':>10}"
          f"{'speedup':>9}{'(min-max)':>13}{'FLOPs longest':>14}{'FLOPs max_len':>14}{'tok/s':>10}{'peak':>7}"
          f"{'diff':>9}")
    cases = []  # (model, tier, hf, batch, frac, ids, mask, lens, max_diff)
    for model in cfg["models"]:
        tier = build(model, device, dtype)
        hf = common.hf_from_tier(tier)
        for batch in cfg["batches"]:
            if batch > cfg.get("max_batch", {}).get(model, batch) and args.batches is None:
                continue
            for frac in cfg["fracs"]:
                ids, mask, lens = make_case(batch, frac, cfg["max_len"], tier.config.vocab_size, device)
                with torch.inference_mode():
                    diff = float((tier(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits.float()).abs().max())
                cases.append((model, tier, hf, batch, frac, ids, mask, lens, diff))
    timings: list[list[dict]] = [[] for _ in cases]
    for rep in range(args.repeat):
        if args.repeat > 1:
            print(f"sweep {rep + 1} of {args.repeat}", flush=True)
        for i, (model, tier, hf, batch, frac, ids, mask, lens, diff) in enumerate(cases):
            timings[i].append(time_case(tier, hf, ids, mask, cfg["runs"], device))
    results = []
    for (model, tier, hf, batch, frac, ids, mask, lens, diff), tm in zip(cases, timings):
        r = case_record(tier, batch, frac, cfg["max_len"], lens, diff, tm, peak)
        r["model"] = model
        if args.profile:
            r["profile"] = profile_case(tier, hf, ids, mask)
        results.append(r)
        spread = f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        print(f"{model:<10}{batch:>6}{frac:>6.1f}{r['tokens']:>8}{r['padded_len']:>5}{r['hf_ms']:>10.2f}"
              f"{r['cascade_rt_ms']:>10.2f}{r['speedup']:>8.2f}x{spread:>13}{r['analytic_speedup']:>13.2f}x"
              f"{r['analytic_speedup_max_len']:>13.2f}x{r['cascade_rt_tokens_per_s']:>10.0f}"
              f"{r['cascade_rt_peak_frac']:>7.1%}{r['max_abs_logit_diff']:>9.1e}", flush=True)
        if args.profile:
            prof = r["profile"]
            for name in ("hf_sdpa_padded", "cascade_rt"):
                print(f"    {name}: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof[name]))
            rows = r["padded_len"] * batch / r["tokens"]
            print(f"    HF / cascade_rt self time on shared ops (row ratio {rows:.2f}): "
                  + ", ".join(f"{op} {x:.2f}x" for op, x in prof["shared_op_time_ratio"].items())
                  + f"; ops only HF runs: {prof['hf_only_ms']:.1f} ms")
    del cases
    out_dir = Path(args.out_dir)
    path = common.write_result("e2e_tier", device, cfg, results, out_dir)
    print(f"wrote {path}")
    if not args.no_plot:
        png = path.with_suffix(".png")
        env = common.environment(device)
        threads = f"{env['cpu_threads']} thread(s), " if device.type == "cpu" else ""
        plot(results, png, f"one tier padding-free vs HF sdpa padded, {cfg['dtype']}, {env['device']}, "
                           f"{threads}commit {env['commit']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
