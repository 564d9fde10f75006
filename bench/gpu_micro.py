"""GPU op microbenchmarks against the torch baselines each op replaces (CUDA only).

Each case times our op and its baselines *interleaved* (round-robin rounds, each round a
burst of back-to-back calls between two CUDA events, so the launch cost is amortised and
drift hits every contender alike), and reports the min and median time per call and the
ratio ``baseline / ours`` (> 1: ours is faster), all measured in this run:

* ``varlen_attention`` (BERT-base heads: 12 x 64, fp16, rows of mean length 0.6 of 128)
  against ``scaled_dot_product_attention`` on the padded batch with its FlashAttention,
  cuDNN, memory-efficient and math backends (flash takes no mask: it computes the padding
  too, the cost a padded batch pays), each forced with ``torch.nn.attention.sdpa_kernel``;
* ``linear`` (BERT-base dense layers) with the live-rows Triton kernel against cuBLAS
  (``F.linear``) on every row of the upper-bound shape (what the sync-free tier would run
  otherwise) and on exactly the live rows (the lower bound), at live fractions 1, 0.6, 0.3;
* ``add_layer_norm`` (Triton, native) against ``F.layer_norm(x + r)``;
* ``exit_head`` native CUDA vs Triton vs the unfused torch head (pooler, tanh, classifier,
  softmax, max, threshold), at 2 and 256 labels.

Writes ``bench/results/micro_ops_gpu.json`` (device, versions, commit, every case) and
``micro_ops_gpu.png``. Refuses (exit 2) without CUDA.

    python bench/gpu_micro.py [--quick] [--out-dir bench/results]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def bench(fns: dict, rounds: int = 15, inner: int = 20, warmup: int = 3) -> dict:
    """Per-call seconds of each zero-argument ``fns[name]``: ``{name: {"min", "median"}}``.

    Round-robin rounds; in each, ``inner`` back-to-back calls between two CUDA events."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end) / 1e3 / inner)
    return {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}


def _lengths(batch: int, max_len: int, frac: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = frac * max_len
    lo, hi = (max(1, round(2 * m - max_len)), max_len) if frac >= 0.5 else (1, max(1, round(2 * m - 1)))
    return torch.randint(lo, hi + 1, (batch,), generator=g)


def _cu(lens: torch.Tensor, device) -> torch.Tensor:
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    return cu.to(device)


def _record(case: dict, t: dict, ours: str) -> dict:
    case["ms"] = {k: v["min"] * 1e3 for k, v in t.items()}
    case["median_ms"] = {k: v["median"] * 1e3 for k, v in t.items()}
    case["ours"] = ours
    case["speedup_vs"] = {k: t[k]["min"] / t[ours]["min"] for k in t if k != ours}
    print(f"  {case['op']:<16}{case['label']:<34}" + "  ".join(
        f"{k} {v * 1e3:.3f}ms" for k, v in ((k, t[k]["min"]) for k in t)) + "  | ours faster by " +
        ", ".join(f"{k} {r:.2f}x" for k, r in case["speedup_vs"].items()), flush=True)
    return case


# -- attention -----------------------------------------------------------------------------
def attention_cases(device, dtype, batches, rounds) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cascade_rt import ops

    H, D, S, frac = 12, 64, 128, 0.6
    out = []
    for B in batches:
        lens = _lengths(B, S, frac, seed=B)
        T = int(lens.sum())
        cu = _cu(lens, device)
        qkv = torch.randn(T, 3, H, D, device=device, dtype=dtype)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # the padded batch HF's sdpa path sees: (B, H, S, D) and a key-padding mask
        pad = torch.zeros(B, S, 3, H, D, device=device, dtype=dtype)
        mask = torch.arange(S)[None, :] < lens[:, None]
        pad[mask.to(device)] = qkv
        pq, pk, pv = (pad[:, :, i].transpose(1, 2) for i in range(3))
        amask = mask.to(device)[:, None, None, :].expand(B, 1, S, S)
        fns = {"ours_triton": lambda: ops.varlen_attention(q, k, v, cu, S)}
        skipped = {}
        for name, backend, use_mask in (("sdpa_flash_padded", SDPBackend.FLASH_ATTENTION, False),
                                        ("sdpa_cudnn_masked", SDPBackend.CUDNN_ATTENTION, True),
                                        ("sdpa_efficient_masked", SDPBackend.EFFICIENT_ATTENTION, True),
                                        ("sdpa_math_masked", SDPBackend.MATH, True)):
            def fn(backend=backend, m=amask if use_mask else None):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(pq, pk, pv, attn_mask=m)
            try:
                fn()
                torch.cuda.synchronize()
                fns[name] = fn
            except Exception as exc:  # a backend this build / GPU does not have
                skipped[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        # correctness beside speed: ours against the masked math backend on the live tokens
        want = F.scaled_dot_product_attention(pq.float(), pk.float(), pv.float(), attn_mask=amask)
        want = want.transpose(1, 2)[mask.to(device)]
        err = float((ops.varlen_attention(q, k, v, cu, S).float() - want).abs().max())
        t = bench(fns, rounds=rounds)
        useful = 4.0 * float((lens.double() ** 2).sum()) * H * D
        case = {"op": "varlen_attention", "label": f"B={B} H={H} D={D} S={S} mean {frac}",
                "batch": B, "tokens": T, "max_abs_err_vs_fp32": err, "skipped": skipped,
                "ours_tflops_useful": useful / t["ours_triton"]["min"] / 1e12}
        out.append(_record(case, t, "ours_triton"))
    return out


# -- linear --------------------------------------------------------------------------------
def linear_cases(device, dtype, batches, fracs, rounds) -> list[dict]:
    from cascade_rt import ops
    from cascade_rt.kernels import linear as kl

    out = []
    for B in batches:
        T = B * 128
        for K, N, act in ((768, 2304, "none"), (768, 3072, "gelu"), (3072, 768, "none")):
            x = torch.randn(T, K, device=device, dtype=dtype)
            w = torch.randn(N, K, device=device, dtype=dtype) / math.sqrt(K)
            b = torch.randn(N, device=device, dtype=dtype)
            for frac in fracs:
                n_live = int(T * frac)
                cu = torch.tensor([0, n_live], dtype=torch.int32, device=device)
                xl = x[:n_live]

                def cublas_all(act=act):
                    y = F.linear(x, w, b)
                    return F.gelu(y) if act == "gelu" else y

                def cublas_live(act=act):
                    y = F.linear(xl, w, b)
                    return F.gelu(y) if act == "gelu" else y

                fns = {"ours_triton": lambda: ops.linear(x, w, b, cu, act, zero_dead=False),
                       "cublas_all_rows": cublas_all, "cublas_live_rows_only": cublas_live}
                got = ops.linear(x, w, b, cu, act, zero_dead=False)[:n_live].float()
                err = float((got - cublas_live().float()).abs().max()) if n_live else 0.0
                t = bench(fns, rounds=rounds)
                cfg = kl._config(T, N, K, dtype, kl.num_sms(device))
                case = {"op": "linear", "label": f"T={T} {K}->{N} {act} live {frac:g}",
                        "rows": T, "live_rows": n_live, "K": K, "N": N, "activation": act,
                        "tile": [cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg.get("num_warps"),
                                 cfg.get("num_stages")],
                        "max_abs_diff_vs_cublas": err,
                        "ours_tflops": 2.0 * n_live * K * N / t["ours_triton"]["min"] / 1e12}
                out.append(_record(case, t, "ours_triton"))
    return out


# -- add + LayerNorm -----------------------------------------------------------------------
def layer_norm_cases(device, dtype, batches, rounds) -> list[dict]:
    from cascade_rt import backends

    out = []
    for B in batches:
        T, H = B * 128, 768
        x, r = torch.randn(T, H, device=device, dtype=dtype), torch.randn(T, H, device=device, dtype=dtype)
        w, b = torch.randn(H, device=device, dtype=dtype), torch.randn(H, device=device, dtype=dtype)
        cu = torch.tensor([0, int(T * 0.6)], dtype=torch.int32, device=device)
        fns = {"torch_add_layer_norm": lambda: F.layer_norm(x + r, (H,), w, b, 1e-12)}
        for name in ("triton", "native"):
            if backends.available(name):
                mod = backends._module(name)
                if mod.why_not("add_layer_norm", x, r, w, b, 1e-12) is None:
                    fn = mod.OPS["add_layer_norm"]
                    fns[f"{name}"] = lambda fn=fn: fn(x, r, w, b, 1e-12)
        if backends.available("triton"):
            fn = backends._module("triton").OPS["add_layer_norm"]
            fns["triton_live_0.6"] = lambda fn=fn: fn(x, r, w, b, 1e-12, cu)
        ours = "triton" if "triton" in fns else next(iter(fns))
        t = bench(fns, rounds=rounds)
        case = {"op": "add_layer_norm", "label": f"T={T} H={H}", "rows": T}
        out.append(_record(case, t, ours))
    return out


# -- exit head -----------------------------------------------------------------------------
def exit_head_cases(device, dtype, rounds) -> list[dict]:
    from cascade_rt import backends

    out = []
    for B, C in ((256, 2), (256, 256), (32, 2)):
        H = 768
        cls = torch.randn(B, H, device=device, dtype=dtype)
        pw, pb = torch.randn(H, H, device=device, dtype=dtype) / 28, torch.randn(H, device=device, dtype=dtype)
        cw, cb = torch.randn(C, H, device=device, dtype=dtype) / 28, torch.randn(C, device=device, dtype=dtype)

        def torch_head():
            pooled = torch.tanh(F.linear(cls, pw, pb))
            logits = F.linear(pooled, cw, cb).float()
            conf = logits.softmax(-1).amax(-1)
            return logits, conf, conf >= 0.9

        fns = {"torch_unfused": torch_head}
        skipped = {}
        for name in ("native", "triton"):
            mod = backends._module(name) if backends.available(name) else None
            why = "not available" if mod is None else mod.why_not("exit_head", cls, pw, pb, cw, cb, 0.9)
            if why:
                skipped[name] = why
                continue
            fns[name] = lambda fn=mod.OPS["exit_head"]: fn(cls, pw, pb, cw, cb, 0.9)
        ours = "triton" if "triton" in fns else ("native" if "native" in fns else "torch_unfused")
        t = bench(fns, rounds=rounds)
        case = {"op": "exit_head", "label": f"B={B} H={H} C={C}", "batch": B, "labels": C, "skipped": skipped}
        out.append(_record(case, t, ours))
    return out


def plot(cases: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{c['op']} {c['label']}", k, r) for c in cases for k, r in c["speedup_vs"].items()]
    fig, ax = plt.subplots(figsize=(9, max(3, 0.22 * len(rows))))
    ys = range(len(rows))
    ax.barh(list(ys), [r for _, _, r in rows], color=["C0" if r >= 1 else "C3" for _, _, r in rows])
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{a} / {b}" for a, b, _ in rows], fontsize=5)
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("baseline time / ours (> 1: ours faster)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one shape per op, few rounds")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_micro: no CUDA device visible to this torch ({torch.__version__}, CUDA "
              f"{torch.version.cuda}); these benchmarks run only on a GPU machine", file=sys.stderr)
        return 2
    import common

    device, dtype = torch.device("cuda"), torch.float16
    batches = [32] if args.quick else [32, 256]
    rounds = 5 if args.quick else 15
    print(f"device {common.device_name(device)}, fp16; backends {common.op_backends(device)}", flush=True)
    cases = []
    with torch.inference_mode():
        cases += attention_cases(device, dtype, batches, rounds)
        cases += linear_cases(device, dtype, batches, [1.0, 0.6, 0.3], rounds)
        cases += layer_norm_cases(device, dtype, batches, rounds)
        cases += exit_head_cases(device, dtype, rounds)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "micro_ops_gpu.json"
    env = common.environment(device)
    rec = {"bench": "micro_ops_gpu", "env": env,
           "config": {"dtype": "float16", "batches": batches, "rounds": rounds,
                      "timing": "interleaved rounds of back-to-back calls between CUDA events; min per call"},
           "results": cases}
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path}")
    if not args.no_plot:
        png = path.with_suffix(".png")
        plot(cases, png, f"op microbenchmarks vs torch baselines, fp16, {env['device']}, commit {env['commit']}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
