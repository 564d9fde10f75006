"""Shared helpers of the cascade_rt benchmarks: timing, environment record, models, results.

Every result file written by a benchmark in ``bench/`` is one JSON object::

    {"bench": name, "env": environment(), "config": {...}, "results": [{...}, ...]}

``environment()`` records the device, the torch / triton / CUDA / transformers versions,
the git commit and the backend each op dispatches to, so a number can always be traced to
the code and machine that produced it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from cascade_rt.info import cpu_name, source_commit

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = [
    "RESULTS_DIR",
    "device_name",
    "environment",
    "time_fn",
    "interleaved",
    "gemm_peak_flops",
    "hf_from_tier",
    "random_tier",
    "minilm_tier",
    "random_padded_batch",
    "write_result",
    "op_backends",
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def op_backends(device: torch.device) -> dict[str, str]:
    """The backend each op would take for fp32/fp16 input on ``device`` (what was measured)."""
    from cascade_rt import backends

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    T, H, D, B = 8, 2, 16, 2
    q = torch.randn(T, H, D, device=device, dtype=dtype)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    x = torch.randn(T, H * D, device=device, dtype=dtype)
    w = torch.ones(H * D, device=device, dtype=dtype)
    cls = torch.randn(B, H * D, device=device, dtype=dtype)
    pw = torch.randn(H * D, H * D, device=device, dtype=dtype)
    cw = torch.randn(3, H * D, device=device, dtype=dtype)
    mask = torch.tensor([True, False], device=device)
    toks = torch.zeros(T, 2, dtype=torch.int64, device=device)
    probes = {
        "varlen_attention": (q, q, q, cu, 5, None),
        "add_layer_norm": (x, x, w, w, 1e-12),
        "exit_head": (cls, pw, w, cw, cw[:, 0], 0.5),
        "compact": (mask, toks, cu),
    }
    out = {}
    for op, args in probes.items():
        try:
            out[op] = backends.implementation(op, *args)[0]
        except Exception as exc:  # report, never fail
            out[op] = f"none ({type(exc).__name__})"
    return out


def environment(device: torch.device) -> dict:
    """Everything needed to reproduce a figure: device, versions, commit, threads, backends."""
    import cascade_rt

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        import transformers

        tf_version = transformers.__version__
    except Exception:
        tf_version = None
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other processes on the machine distort CPU timings (and 2-thread runs most: a
        # descheduled OpenMP thread stalls every parallel region); recorded for that reason
        "loadavg_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "transformers": tf_version,
        "cascade_rt": cascade_rt.__version__,
        "commit": source_commit() or "unknown",
        "backends": op_backends(device),
        "CASCADE_RT_BACKEND": os.environ.get("CASCADE_RT_BACKEND"),
    }


def warn_if_loaded(device: torch.device) -> None:
    """Say so when other processes compete for the CPU (timings then mean little)."""
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        if load > 0.5 * (os.cpu_count() or 1):
            print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes are "
                  f"running; CPU timings will be noisy (try --threads 1)", flush=True)


# timing lives in the package so the demo and the CLI time models the same way
from cascade_rt.timing import interleaved, sync as _sync, time_fn  # noqa: E402,F401


def gemm_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak the tiers are held to."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=2, runs=5)["min"]
    return 2 * n ** 3 / t


# -- models ----------------------------------------------------------------------------------

def hf_from_tier(tier, attn_implementation: str = "sdpa"):
    """``transformers.BertForSequenceClassification`` holding exactly the tier's weights."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = tier.config.to_hf_dict()
    cfg["num_labels"] = tier.config.num_labels
    config = BertConfig(**cfg)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        hf = BertForSequenceClassification(config)
    sd = tier.state_dict()
    missing, unexpected = hf.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"HF model does not match the tier: missing {missing}, unexpected {unexpected}")
    # non-persistent buffers stay on meta after assign; rebuild them
    emb = hf.bert.embeddings
    n_pos = config.max_position_embeddings
    if hasattr(emb, "position_ids"):
        emb.position_ids = torch.arange(n_pos, device=tier.device).expand((1, -1))
    if hasattr(emb, "token_type_ids"):
        emb.token_type_ids = torch.zeros((1, n_pos), dtype=torch.long, device=tier.device)
    return hf.to(device=tier.device, dtype=tier.dtype).eval()


def random_tier(hidden: int, layers: int, heads: int, intermediate: int | None = None, *,
                vocab: int = 30522, num_labels: int = 2, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A tier of the given shape with seeded random weights (BERT init: normal(0, 0.02))."""
    from cascade_rt import Tier, TierConfig

    cfg = TierConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                     num_labels=num_labels)
    g = torch.Generator().manual_seed(seed)
    tier = Tier(cfg)
    with torch.no_grad():
        for name, p in tier.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return tier.to(device=device, dtype=dtype).eval()


def minilm_tier(num_layers: int = 6, *, num_labels: int = 2, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped all-MiniLM-L6 encoder (first ``num_layers`` layers) with a seeded head."""
    from cascade_rt import load_tier, make_classifier_checkpoint
    from cascade_rt.paths import cache_dir, shipped_minilm_dir

    d = cache_dir() / "bench" / f"minilm_l{num_layers}_c{num_labels}_s{seed}"
    if not (d / "model.safetensors").is_file():
        make_classifier_checkpoint(shipped_minilm_dir(), d, num_labels=num_labels,
                                   num_layers=num_layers, seed=seed, init_std=1.0)
    return load_tier(d, dtype=dtype, device=device)


def random_padded_batch(batch: int, max_len: int, mean_frac: float, *, vocab: int, seed: int = 0,
                        device: torch.device | str = "cpu"):
    """HF-style batch padded to ``max_len`` (``padding="max_length"``) whose row lengths are
    uniform around ``mean_frac * max_len``.

    Lengths are drawn uniformly from ``[2m - max_len, max_len]`` (m the target mean) when
    ``mean_frac >= 0.5``, else from ``[1, 2m - 1]``, so their mean is ``mean_frac * max_len``
    up to sampling noise (``mean_frac == 1``: every row full).

    Returns input_ids (B, max_len) int64, attention_mask (B, max_len) int64, lengths (B,) list.
    """
    g = torch.Generator().manual_seed(seed)
    m = mean_frac * max_len
    lo, hi = (max(1, round(2 * m - max_len)), max_len) if mean_frac >= 0.5 else (1, max(1, round(2 * m - 1)))
    lens = torch.randint(lo, hi + 1, (batch,), generator=g)
    ids = torch.randint(1000, vocab, (batch, max_len), generator=g)
    col = torch.arange(max_len)
    mask = (col[None, :] < lens[:, None]).to(torch.int64)
    ids = ids * mask
    return ids.to(device), mask.to(device), lens.tolist()


#: read when ATen, MKL, oneDNN and the native extension load: every CPU path held to AVX2 on an
#: AVX-512 CPU (a stand-in for a CPU without AVX-512), the panel kernel on its AVX2 tiles
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "CASCADE_RT_PANEL_ISA": "avx2"}


def add_isa_flag(p) -> None:
    """``--isa {native,avx2}`` on an argument parser (see :func:`start_cpu_bench`)."""
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: every path held to AVX2 (a stand-in for a CPU without AVX-512)")


def start_cpu_bench(p, args, argv: list[str] | None, script: str) -> str:
    """The start of a CPU bench with :func:`add_isa_flag`'s ``--isa``; returns a line naming the
    ISA it runs.

    ``--isa avx2``, unless this process already runs under :data:`AVX2_ENV`: runs ``script``
    again with the same arguments in a child process that does and exits with its status (the
    caps are read when the libraries load). In that child, ``p.error`` unless ATen and the
    panel kernel really run AVX2. Then ``--threads`` (where given) and the load warning."""
    if args.isa == "avx2" and not all(os.environ.get(k) == v for k, v in AVX2_ENV.items()):
        argv = sys.argv[1:] if argv is None else list(argv)
        raise SystemExit(subprocess.call([sys.executable, script, *argv], env={**os.environ, **AVX2_ENV}))
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    warn_if_loaded(torch.device("cpu"))
    if args.isa == "native":
        return "native"
    from cascade_rt.dense import panel_width

    cap = torch.backends.cpu.get_cpu_capability()
    if cap != "AVX2" or panel_width() != 16:
        p.error(f"--isa avx2: ATen runs {cap}, the panel width is {panel_width()} (AVX2 tiles: 16); "
                f"this CPU lacks AVX2 and FMA")
    return "AVX2 (" + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"


def write_result(name: str, device: torch.device, config: dict, results: list[dict],
                 out_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>_<device_type>.json`` and return its path."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{device.type}.json"
    rec = {"bench": name, "env": environment(device), "config": config, "results": results}
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def demo_dev_split(data: str, max_len: int = 64, split: str = "dev"):
    """A shipped set's dev split (or ``split``: "test"), tokenized as ``cascade-rt demo`` does
    (the default split)."""
    from transformers import BertTokenizer

    from cascade_rt.data import load_dataset
    from cascade_rt.paths import shipped_minilm_dir
    from cascade_rt.train import encode

    tok = BertTokenizer(vocab=str(shipped_minilm_dir() / "vocab.txt"))
    return encode(tok, getattr(load_dataset(data), split), max_len)


def name_dir(text: str, flag: str, error, reserved=()) -> tuple[str, str]:
    """A ``NAME=DIR`` command-line value as (name, dir); ``error`` (e.g. an argument parser's)
    gets one message naming ``flag`` where it is not one, or where NAME is one of ``reserved``."""
    name, sep, d = text.partition("=")
    if not sep or not name or not d or name in reserved:
        error(f"{flag} takes NAME=DIR" + (" with a new name" if reserved else "") + f", got {text!r}")
    return name, d


def cached_tier(path: Path, dev):
    """A tier ``cascade-rt demo`` trained and cached at ``path``: (tier, its dev probabilities
    (N, C) float32, its FLOPs per dev row (N,)). One clear error where no model is there."""
    from cascade_rt.evaluate import tier_row_costs
    from cascade_rt.tier import Tier
    from cascade_rt.train import predict_probs

    if not (Path(path) / "model.safetensors").is_file():
        raise SystemExit(f"no trained model in {path} (run cascade-rt demo first; see the script's docstring)")
    tier = Tier.from_pretrained(path)
    return tier, predict_probs(tier, dev), tier_row_costs([tier.config], dev.lengths)[0]
