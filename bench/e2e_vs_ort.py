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
run stops if it exceeds ``--atol``). ONNX Runtime runs in a process of its own (its default
thread pool, spinning included), the tier in this one, each with the same thread count. Timing
alternates blocks of consecutive calls (ORT block, tier block, ...; each side times its own
block; per-call time = block time / calls, median over blocks; a 50 ms pause between blocks
lets the side that just ran park its threads): a steady stream of requests, as a server sees.
Ratios are ONNX Runtime time / tier time (> 1: the tier is faster). ``--profile`` adds a
per-op profile (``torch.profiler``, self CPU time) of the tier at batch 1, 10 tokens, the case
where per-call overheads dominate.
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


def optimized_onnx(tier, workdir: Path) -> tuple[Path, list[str]]:
    """The tier exported and fused by ONNX Runtime's BERT optimizer: the file and its op types."""
    from onnxruntime.transformers import optimizer

    raw, fused = workdir / "tier.onnx", workdir / "tier_optimized.onnx"
    export_onnx(tier, raw)
    cfg = tier.config
    model = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                     hidden_size=cfg.hidden_size)
    model.save_model_to_file(str(fused))
    return fused, sorted({n.op_type for n in model.model.graph.node})


#: the ONNX Runtime side, run in its own process (``python -c``): commands and replies are
#: pickles over stdin/stdout; it imports neither torch nor cascade_rt
_ORT_WORKER = r"""
import pickle, sys, time
import onnxruntime as ort
path, threads = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
inp, out = sys.stdin.buffer, sys.stdout.buffer
feeds = {}
def reply(obj):
    pickle.dump(obj, out)
    out.flush()
reply("ready")
while True:
    cmd, key, arg = pickle.load(inp)
    if cmd == "stop":
        break
    if cmd == "set":
        feeds[key] = arg
        reply(None)
    elif cmd == "run":
        reply([sess.run(None, f)[0] for f in feeds[key]])
    elif cmd == "time":
        fs = feeds[key]
        t0 = time.perf_counter()
        for _ in range(arg):
            for f in fs:
                sess.run(None, f)
        reply((time.perf_counter() - t0) / arg)
"""


class OrtProcess:
    """An ONNX Runtime session in a process of its own.

    One process holding both runtimes times each while the other's worker threads still spin
    after their last call (ONNX Runtime's pool and OpenMP's both do): on 2 cores that slowed
    the tier up to 2x at batch 1, and turning ONNX Runtime's spinning off slows it instead. In
    two processes each runtime keeps its own defaults, as in a deployment; a pause between
    timed blocks lets the idle side's threads park before the other side runs.
    """

    def __init__(self, path: Path, threads: int):
        import pickle
        import subprocess

        self._pickle = pickle
        self.proc = subprocess.Popen([sys.executable, "-c", _ORT_WORKER, str(path), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self._recv() != "ready":
            raise RuntimeError("the ONNX Runtime worker did not start")

    def _recv(self):
        return self._pickle.load(self.proc.stdout)

    def _call(self, cmd: str, key: str = "", arg=None):
        self._pickle.dump((cmd, key, arg), self.proc.stdin)
        self.proc.stdin.flush()
        return self._recv()

    def set(self, key: str, feeds: list[dict[str, np.ndarray]]) -> None:
        self._call("set", key, feeds)

    def run(self, key: str) -> list[np.ndarray]:
        """Logits of each feed under ``key``."""
        return self._call("run", key)

    def time(self, key: str, calls: int) -> float:
        """Seconds per call of running every feed under ``key``, ``calls`` times in a row."""
        return self._call("time", key, calls)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._pickle.dump(("stop", "", None), self.proc.stdin)
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.proc.wait(timeout=30)


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


#: seconds between timed blocks, so that the side that just ran parks its spinning threads
PAUSE_S = 0.05


def blocks(fns: dict, calls: int, rounds: int, warmup: int = 3) -> dict[str, dict]:
    """Per-call seconds of each side, timed in alternating blocks of ``calls`` consecutive
    calls (the order rotates each round, a pause between blocks); ``{"median", "min",
    "all_ms"}`` over the ``rounds`` blocks. ``fns[k](calls)`` runs ``calls`` calls and returns
    the seconds per call (timed on its own side: the ONNX Runtime process times itself)."""
    import time

    for fn in fns.values():
        fn(warmup)
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(PAUSE_S)
            times[k].append(fns[k](calls))
    return {k: {"median": float(np.median(v)), "min": min(v), "all_ms": [round(x * 1e3, 4) for x in v]}
            for k, v in times.items()}


def local(fn):
    """``fn`` as a side for :func:`blocks`: ``calls`` -> seconds per call, timed here."""
    import time

    def run(calls: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls
    return run


def run_latency(tier, ort_proc: OrtProcess, length: int, runs: int, atol: float) -> dict:
    rows = random_rows(1, length, 1.0, tier.config.vocab_size, seed=length)
    ids, mask = _padded(rows)
    key = f"latency{length}"
    ort_proc.set(key, [_feed(ids, mask)])
    diff = float(np.abs(ort_proc.run(key)[0] - tier(ids, mask).numpy()).max())
    if diff > atol:
        raise SystemExit(f"logits differ by {diff:.2e} > --atol {atol:g} at batch 1, {length} tokens")
    t = blocks({"ort": lambda n: ort_proc.time(key, n), "cascade_rt": local(lambda: tier(ids, mask))},
               calls=max(2, runs), rounds=7)
    return {"case": f"batch 1, {length} tokens", "kind": "latency", "rows": 1, "tokens": length,
            "max_abs_logit_diff": diff, "ort_ms": t["ort"]["median"] * 1e3,
            "cascade_rt_ms": t["cascade_rt"]["median"] * 1e3,
            "ort_ms_all": t["ort"]["all_ms"], "cascade_rt_ms_all": t["cascade_rt"]["all_ms"],
            "ratio_ort_over_ours": t["ort"]["median"] / t["cascade_rt"]["median"]}


def run_throughput(tier, ort_proc: OrtProcess, cfg: dict, atol: float) -> list[dict]:
    rows = random_rows(cfg["rows"], cfg["max_len"], cfg["frac"], tier.config.vocab_size, seed=48)
    lens = [len(r) for r in rows]
    ids, mask = _padded(rows)
    ours = tier(ids, mask).numpy()
    order = sorted(range(len(rows)), key=lambda i: lens[i])
    buckets = [order[i: i + cfg["bucket"]] for i in range(0, len(order), cfg["bucket"])]
    ort_proc.set("padded", [_feed(ids, mask)])
    ort_proc.set("bucketed", [_feed(*_padded([rows[i] for i in b])) for b in buckets])

    d_pad = float(np.abs(ort_proc.run("padded")[0] - ours).max())
    got = np.empty_like(ours)
    for b, out in zip(buckets, ort_proc.run("bucketed")):
        got[b] = out
    d_bucket = float(np.abs(got - ours).max())
    if max(d_pad, d_bucket) > atol:
        raise SystemExit(f"logits differ by {max(d_pad, d_bucket):.2e} > --atol {atol:g} on {len(rows)} rows")
    t = blocks({"ort_padded": lambda n: ort_proc.time("padded", n),
                "ort_bucketed": lambda n: ort_proc.time("bucketed", n),
                "cascade_rt": local(lambda: tier(ids, mask))}, calls=2, rounds=max(3, cfg["runs"] // 4), warmup=1)
    tokens = sum(lens)
    ours_s = t["cascade_rt"]["median"]
    out = []
    for key, diff, pad in (("ort_padded", d_pad, f"padded to the longest row ({ids.shape[1]})"),
                           ("ort_bucketed", d_bucket, f"sorted by length, batches of {cfg['bucket']}")):
        out.append({"case": f"{len(rows)} rows, ORT {pad}", "kind": key, "rows": len(rows), "tokens": tokens,
                    "mean_len": tokens / len(rows), "max_abs_logit_diff": diff,
                    "ort_ms": t[key]["median"] * 1e3, "cascade_rt_ms": ours_s * 1e3,
                    "ort_ms_all": t[key]["all_ms"], "cascade_rt_ms_all": t["cascade_rt"]["all_ms"],
                    "ratio_ort_over_ours": t[key]["median"] / ours_s,
                    "cascade_rt_tokens_per_s": tokens / ours_s, "ort_tokens_per_s": tokens / t[key]["median"],
                    "padded_over_packed_flops": flops.padded_tier_flops(tier.config, lens, ids.shape[1],
                                                                        first_tokens=False)
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
               timing="median over alternating blocks of consecutive calls (ORT block, tier block, ...), "
                      f"ONNX Runtime in its own process, {PAUSE_S:g} s pause between blocks")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        path, fused = optimized_onnx(tier, Path(tmp))
        cfg["ort_fused_ops"] = fused
        print(f"{common.device_name(device)}, {threads} thread(s); ONNX Runtime ops: {', '.join(fused)}")
        print(f"{'case':<52}{'ORT ms':>9}{'ours ms':>9}{'ORT/ours':>10}{'diff':>9}")
        ort_proc = OrtProcess(path, threads)
        try:
            results = [run_latency(tier, ort_proc, n, cfg["runs"], args.atol) for n in cfg["latency_lengths"]]
            results += run_throughput(tier, ort_proc, cfg, args.atol)
        finally:
            ort_proc.close()
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
