"""One tier against ONNX Runtime running the same model with its BERT graph optimizations.

ONNX Runtime is what a user who serves a BERT classifier on CPUs deploys, so it is the peer a
``cascade_rt`` tier must beat there. This exports the tier's exact weights
(``transformers.BertForSequenceClassification``, eager attention) to ONNX, fuses the graph
with ``onnxruntime.transformers.optimizer`` (``EmbedLayerNormalization``, ``Attention``,
``SkipLayerNormalization``, ``BiasGelu``), and times, interleaved in one process with the
same thread count:

* batch-1 latency at 10, 32 and 128 tokens (ONNX Runtime runs the row unpadded);
* throughput on 48 rows of mean length 0.6 x 128: ONNX Runtime on the batch padded to its
  longest row (``padding=True``), and length-bucketed (rows sorted by length, batches of 8,
  each padded to its own longest row: a user's easy fix); the tier on the 48 rows in one call.

Every case first checks that both give the same logits (max abs difference recorded; the
run stops if it exceeds ``--atol``). Timing alternates blocks of consecutive calls (ORT block,
tier block, ...; per-call time = block time / calls, median over blocks): a steady stream of
requests, as a server sees. Alternating single calls would time each runtime while the other's
idle worker threads still spin (ONNX Runtime's pool and OpenMP's both do), which slows both. Ratios are ONNX Runtime time / tier time (> 1: the tier
is faster). ``--profile`` adds a per-op profile (``torch.profiler``, self CPU time) of the
tier at batch 1, 10 tokens, the case where per-call overheads dominate.
Writes ``bench/results/e2e_vs_ort_<device>.json`` and ``.png``.

    .venv/bin/python bench/e2e_vs_ort.py --threads 2 --profile
    .venv/bin/python bench/e2e_vs_ort.py --quick          # smoke run, seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cascade_rt import flops  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def defaults(quick: bool) -> dict:
    if quick:
        return {"latency_lengths": [10], "rows": 8, "bucket": 4, "max_len": 32, "frac": 0.6, "runs": 2}
    return {"latency_lengths": [10, 32, 128], "rows": 48, "bucket": 8, "max_len": 128, "frac": 0.6,
            "runs": 20}


def export_onnx(tier, path: Path) -> None:
    """The tier's weights as a ``BertForSequenceClassification`` ONNX graph, dynamic batch/length."""
    hf = common.hf_from_tier(tier, attn_implementation="eager")
    ids = torch.randint(1000, tier.config.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    axes = {k: {0: "batch", 1: "seq"} for k in INPUTS}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(hf, (ids, mask, torch.zeros_like(ids)), str(path), input_names=list(INPUTS),
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)


def ort_session(tier, workdir: Path, threads: int):
    """An ONNX Runtime session on the tier's BERT-optimized graph, and the fused op types."""
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    raw, fused = workdir / "tier.onnx", workdir / "tier_optimized.onnx"
    export_onnx(tier, raw)
    cfg = tier.config
    model = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                     hidden_size=cfg.hidden_size)
    model.save_model_to_file(str(fused))
    ops = sorted({n.op_type for n in model.model.graph.node})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(fused), so, providers=["CPUExecutionProvider"]), ops


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, longest) ids and mask, as a tokenizer's ``padding=True`` gives."""
    n = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def _feed(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}


def random_rows(n: int, max_len: int, frac: float, vocab: int, seed: int) -> list[torch.Tensor]:
    ids, mask, lens = common.random_padded_batch(n, max_len, frac, vocab=vocab, seed=seed)
    rows = [ids[i, :l].clone() for i, l in enumerate(lens)]
    for r in rows:
        r[0] = 101  # [CLS]
    return rows


def blocks(fns: dict, calls: int, rounds: int, warmup: int = 3) -> dict[str, dict]:
    """Per-call seconds of each function, timed in alternating blocks of ``calls`` consecutive
    calls (the order rotates each round); ``{"median", "min", "all"}`` over the ``rounds`` blocks."""
    import time

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: {"median": float(np.median(v)), "min": min(v), "all": [round(x, 6) for x in v]}
            for k, v in times.items()}


def run_latency(tier, sess, length: int, runs: int, atol: float) -> dict:
    rows = random_rows(1, length, 1.0, tier.config.vocab_size, seed=length)
    ids, mask = _padded(rows)
    feed = _feed(ids, mask)
    diff = float(np.abs(sess.run(None, feed)[0] - tier(ids, mask).numpy()).max())
    if diff > atol:
        raise SystemExit(f"logits differ by {diff:.2e} > --atol {atol:g} at batch 1, {length} tokens")
    t = blocks({"ort": lambda: sess.run(None, feed), "cascade_rt": lambda: tier(ids, mask)},
               calls=max(2, runs), rounds=7)
    return {"case": f"batch 1, {length} tokens", "kind": "latency", "rows": 1, "tokens": length,
            "max_abs_logit_diff": diff, "ort_ms": t["ort"]["median"] * 1e3,
            "cascade_rt_ms": t["cascade_rt"]["median"] * 1e3,
            "ort_ms_all": t["ort"]["all"], "cascade_rt_ms_all": t["cascade_rt"]["all"],
            "ratio_ort_over_ours": t["ort"]["median"] / t["cascade_rt"]["median"]}


def run_throughput(tier, sess, cfg: dict, atol: float) -> list[dict]:
    rows = random_rows(cfg["rows"], cfg["max_len"], cfg["frac"], tier.config.vocab_size, seed=48)
    lens = [len(r) for r in rows]
    ids, mask = _padded(rows)
    ours = tier(ids, mask).numpy()
    padded_feed = _feed(ids, mask)
    order = sorted(range(len(rows)), key=lambda i: lens[i])
    buckets = [order[i: i + cfg["bucket"]] for i in range(0, len(order), cfg["bucket"])]
    bucket_feeds = [_feed(*_padded([rows[i] for i in b])) for b in buckets]

    def ort_bucketed():
        return [sess.run(None, f)[0] for f in bucket_feeds]

    d_pad = float(np.abs(sess.run(None, padded_feed)[0] - ours).max())
    got = np.empty_like(ours)
    for b, out in zip(buckets, ort_bucketed()):
        got[b] = out
    d_bucket = float(np.abs(got - ours).max())
    if max(d_pad, d_bucket) > atol:
        raise SystemExit(f"logits differ by {max(d_pad, d_bucket):.2e} > --atol {atol:g} on {len(rows)} rows")
    t = blocks({"ort_padded": lambda: sess.run(None, padded_feed), "ort_bucketed": ort_bucketed,
                "cascade_rt": lambda: tier(ids, mask)}, calls=2, rounds=max(3, cfg["runs"] // 4), warmup=1)
    tokens = sum(lens)
    ours_s = t["cascade_rt"]["median"]
    out = []
    for key, diff, pad in (("ort_padded", d_pad, f"padded to the longest row ({ids.shape[1]})"),
                           ("ort_bucketed", d_bucket, f"sorted by length, batches of {cfg['bucket']}")):
        out.append({"case": f"{len(rows)} rows, ORT {pad}", "kind": key, "rows": len(rows), "tokens": tokens,
                    "mean_len": tokens / len(rows), "max_abs_logit_diff": diff,
                    "ort_ms": t[key]["median"] * 1e3, "cascade_rt_ms": ours_s * 1e3,
                    "ort_ms_all": t[key]["all"], "cascade_rt_ms_all": t["cascade_rt"]["all"],
                    "ratio_ort_over_ours": t[key]["median"] / ours_s,
                    "cascade_rt_tokens_per_s": tokens / ours_s, "ort_tokens_per_s": tokens / t[key]["median"],
                    "padded_over_packed_flops": flops.padded_tier_flops(tier.config, lens, ids.shape[1])
                    / flops.tier_flops(tier.config, lens)})
    return out


def op_profile(tier, length: int, top: int = 12) -> list[dict]:
    """Self CPU time per op of the tier's forward at batch 1 (mean over 20 calls)."""
    from torch.profiler import ProfilerActivity, profile

    rows = random_rows(1, length, 1.0, tier.config.vocab_size, seed=length)
    ids, mask = _padded(rows)
    for _ in range(3):
        tier(ids, mask)
    n = 20
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            tier(ids, mask)
    rows_out = []
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]:
        rows_out.append({"op": e.key, "calls_per_forward": e.count / n,
                         "self_us_per_forward": e.self_cpu_time_total / n,
                         "share": e.self_cpu_time_total / total if total else 0.0})
    return rows_out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(results))
    ax.bar(xs - 0.2, [r["ort_ms"] for r in results], 0.4, label="ONNX Runtime (optimized graph)")
    ax.bar(xs + 0.2, [r["cascade_rt_ms"] for r in results], 0.4, label="cascade_rt tier")
    for x, r in zip(xs, results):
        ax.text(x, max(r["ort_ms"], r["cascade_rt_ms"]), f"{r['ratio_ort_over_ours']:.2f}x", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(xs, [r["case"].replace(", ORT", "\nORT") for r in results], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu only: ONNX Runtime's CPU provider is the peer")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: torch's)")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--atol", type=float, default=1e-3, help="largest logit difference accepted")
    p.add_argument("--profile", action="store_true", help="per-op profile of the tier at batch 1")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cpu":
        print("e2e_vs_ort: ONNX Runtime's CPU provider is the peer; run with --device cpu")
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SystemExit("e2e_vs_ort needs onnxruntime (pip install onnxruntime), a bench/test dependency")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    common.warn_if_loaded(device)
    cfg = defaults(args.quick)
    if args.runs:
        cfg["runs"] = args.runs
    tier = common.minilm_tier(6, device=device)
    cfg.update(model="shipped MiniLM, 6 layers, 384 wide, fp32", threads=threads,
               timing="median over alternating blocks of consecutive calls (ORT block, tier block, ...)")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        sess, fused = ort_session(tier, Path(tmp), threads)
        cfg["ort_fused_ops"] = fused
        print(f"{common.device_name(device)}, {threads} thread(s); ONNX Runtime ops: {', '.join(fused)}")
        print(f"{'case':<52}{'ORT ms':>9}{'ours ms':>9}{'ORT/ours':>10}{'diff':>9}")
        results = [run_latency(tier, sess, n, cfg["runs"], args.atol) for n in cfg["latency_lengths"]]
        results += run_throughput(tier, sess, cfg, args.atol)
        for r in results:
            print(f"{r['case']:<52}{r['ort_ms']:>9.2f}{r['cascade_rt_ms']:>9.2f}"
                  f"{r['ratio_ort_over_ours']:>9.2f}x{r['max_abs_logit_diff']:>9.1e}", flush=True)
        profile_rows = op_profile(tier, cfg["latency_lengths"][0]) if args.profile else None
    if profile_rows:
        print(f"tier at batch 1, {cfg['latency_lengths'][0]} tokens, self CPU per forward:")
        for r in profile_rows:
            print(f"  {r['op']:<40}{r['calls_per_forward']:>6.0f} calls{r['self_us_per_forward']:>10.0f} us"
                  f"{r['share']:>7.1%}")
    path = common.write_result("e2e_vs_ort", device, cfg, results, Path(args.out_dir))
    if profile_rows:
        import json

        rec = json.loads(path.read_text())
        rec["profile_batch1"] = profile_rows
        path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path}")
    if not args.no_plot:
        png = path.with_suffix(".png")
        env = common.environment(device)
        plot(results, png, f"one tier vs ONNX Runtime (BERT-optimized graph), fp32, {env['device']}, "
                           f"{threads} thread(s), commit {env['commit']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
