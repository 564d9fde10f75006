"""The main job (``cascade-rt demo``): train a calibrated cascade on real data and compare it
with dynamic early exit, on a CPU in minutes.

Steps, each cached under ``<cache>/demo/<data>_s<seed>_len<max_len>_.../`` so a second run is
fast (training runs under bf16 autocast where the CPU has native bf16, see ``--bf16``):
1. tiers from the shipped MiniLM: its first ``--small-layers`` layers and all 6 layers;
2. fine-tune the 6-layer tier (its final head doubles as the early-exit backbone);
3. difficulty labels: k-fold held-out predictions of the small tier on the training split;
4. the small tier with DAO and without (the ablation);
5. DeeBERT-style exit heads after each layer of the fine-tuned 6-layer backbone;
6. per target speed-up, thresholds chosen on dev (one per non-final tier for the cascade, one
   per exit layer for early exit, by the same search); accuracy, ECE, DIS, analytic and
   measured speed-up (wall clock, each point timed interleaved with the 6-layer tier alone)
   on test.
Writes ``sweep.json`` (a list of points) and ``sweep.png`` (accuracy against speed-up, and a
reliability diagram) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import CascadeBert, flops, make_classifier_checkpoint
from .paths import cache_dir, shipped_minilm_dir


#: every tier trains this many epochs, chosen on dev (``bench/tier_recipe.py``,
#: ``bench/results/tier_recipe.jsonl``; dev accuracy over the 1,057 dev rows, test never
#: consulted): a 2-layer tier (lr 3e-4, word embeddings frozen) reached 0.772 after one epoch
#: and 0.795 after two; with word embeddings trained, 0.810 after two and 0.813 after three
#: (3 rows more, within noise, for 1.5x the training time). The 6-layer tier (lr 1e-4) has no
#: dev comparison of epoch counts on record (0.848 dev after two); it trains two as well.
EPOCHS = 2.0


def _spread(point: dict) -> str:
    if "speedup_measured_min" not in point:
        return ""
    return f"({point['speedup_measured_min']:.2f}-{point['speedup_measured_max']:.2f})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="movies", help="shipped set (movies, tweets, amazon, nyt) or a CSV/JSONL file")
    p.add_argument("--small-layers", type=int, nargs="+", default=[2],
                   help="layers of the small tier(s) cut from the shipped MiniLM (smallest first)")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 2.2, 2.5, 3.0],
                   help="analytic speed-ups to choose thresholds for")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the final tier")
    p.add_argument("--small-lr", type=float, default=3e-4,
                   help="learning rate of the small tiers (a 1-2 layer tier barely moves at 1e-4 in one epoch)")
    p.add_argument("--epochs", type=float, default=EPOCHS, help="epochs of the final tier")
    p.add_argument("--small-epochs", type=float, default=EPOCHS,
                   help="epochs of the small tiers and of the difficulty-label fold models")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="train under bfloat16 autocast (auto: when the CPU has native bf16 matmuls; "
                        "about 1.5x faster there at the same accuracy)")
    p.add_argument("--folds", type=int, default=2,
                   help="folds for the difficulty labels (each fold model trains on the other folds)")
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=128, help="inference batch for the measured speed-up")
    p.add_argument("--timing-runs", type=int, default=3,
                   help="timed passes over the test split per point, after one warm-up pass, interleaved "
                        "with the final tier alone in alternating order; the point's measured speed-up is "
                        "the median of the per-pass ratios (their spread is recorded)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--large-layers", type=int, default=6, help="layers of the final tier")
    p.add_argument("--cache", default=None, help="where trained tiers are cached (default: <cache>/demo)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many rows per split (smoke runs)")


def _step(msg: str) -> float:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return time.perf_counter()


def run(args) -> int:
    import transformers
    from transformers import BertTokenizer

    from .data import load_dataset
    from .early_exit import EarlyExitBert, layer_cls_features, train_exit_heads
    from .info import cpu_name, source_commit
    from .evaluate import (dis, ece, f1_binary, reliability_bins, row_costs, run_batches, search_thresholds,
                           simulate_exits, tier_row_costs, timed_speedup)
    from .tier import Tier
    from .train import TrainConfig, collate, difficulty_labels, encode, finetune, native_bf16, predict_probs

    t_start = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    src = shipped_minilm_dir()
    splits = load_dataset(args.data, seed=args.seed)
    if args.limit:
        splits.train, splits.dev, splits.test = (x[: args.limit] for x in (splits.train, splits.dev, splits.test))
    print(splits.describe())
    tok = BertTokenizer(vocab=str(src / "vocab.txt"))
    tr, dv, te = (encode(tok, getattr(splits, p), args.max_len) for p in ("train", "dev", "test"))
    print(f"tokens per row: train mean {np.mean(tr.lengths):.1f}, max {max(tr.lengths)} (cut at {args.max_len})")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16("cpu"))
    print(f"training in {'bfloat16 autocast' if bf16 else 'float32'} on {torch.get_num_threads()} CPU threads")
    root = (Path(args.cache) if args.cache else cache_dir() / "demo") / (
        f"{splits.name}_s{args.seed}_len{args.max_len}_e{args.epochs:g}_fw" + ("_bf16" if bf16 else "")
        + (f"_limit{args.limit}" if args.limit else ""))
    root.mkdir(parents=True, exist_ok=True)
    C = splits.num_labels
    small_layers = sorted(args.small_layers)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=32, seed=args.seed, margin=args.margin, lam=args.lam,
                      bf16=bf16)
    # small tiers also train their word embeddings: most of a 2-layer tier's parameters, and
    # worth about 1.5 points of its dev accuracy here (0.795 -> 0.810 after 2 epochs,
    # bench/tier_recipe.py)
    small_cfg = TrainConfig(**{**vars(cfg), "lr": args.small_lr, "epochs": args.small_epochs,
                               "freeze_word_embeddings": False})
    stag = f"lr{args.small_lr:g}_e{args.small_epochs:g}_we"

    def base(n):
        d = root / f"init_l{n}"
        if not (d / "model.safetensors").is_file():
            make_classifier_checkpoint(src, d, num_labels=C, num_layers=n, seed=args.seed)
        return d

    def trained(name, n, **kw):
        d = root / name
        if not (d / "model.safetensors").is_file():
            t = _step(f"fine-tuning {name} ({n} layer{'s' if n > 1 else ''}, {len(tr)} rows)")
            base_cfg = cfg if n == L else small_cfg
            finetune(base(n), tr, d, TrainConfig(**{**vars(base_cfg), **kw.get("over", {})}),
                     easy=kw.get("easy"), desc=name, quiet=args.quiet)
            print(f"  done in {time.perf_counter() - t:.0f} s")
        else:
            print(f"cached: {d}")
        return d

    L = args.large_layers
    large = trained(f"large_l{L}_lr{args.lr:g}", L)
    t = _step(f"difficulty labels: {args.folds}-fold held-out predictions of the {small_layers[0]}-layer tier")
    diff = difficulty_labels(base(small_layers[0]), tr, small_cfg, folds=args.folds, extra={"test": te, "dev": dv},
                             cache=root / f"difficulty_l{small_layers[0]}_k{args.folds}_{stag}.json", quiet=args.quiet)
    easy = diff["easy"]
    print(f"  {sum(easy)} easy / {len(easy) - sum(easy)} hard training rows ({time.perf_counter() - t:.0f} s)")
    # the DAO tiers depend on the difficulty labels (folds) and the loss settings too
    dao_tag = f"dao_k{args.folds}_m{args.margin:g}_lam{args.lam:g}"
    smalls_dao = [trained(f"small_l{n}_{stag}_{dao_tag}", n, easy=easy, over={"dao": True}) for n in small_layers]
    smalls_ce = [trained(f"small_l{n}_{stag}_ce", n) for n in small_layers]

    ee_dir = root / f"early_exit_{large.name}"  # heads belong to this backbone
    if not (ee_dir / "exit_heads.safetensors").is_file():
        t = _step("early-exit baseline: exit heads on the frozen 6-layer backbone")
        backbone = Tier.from_pretrained(large)
        heads = train_exit_heads(backbone, tr, seed=args.seed)
        EarlyExitBert(backbone, heads).save_pretrained(ee_dir)
        print(f"  done in {time.perf_counter() - t:.0f} s")
    early = EarlyExitBert.from_pretrained(ee_dir)

    # ---- evaluation -------------------------------------------------------------------------
    _step("evaluating on dev (threshold search) and test")
    labels_dv, labels_te = np.array(dv.labels), np.array(te.labels)
    easy_te = np.array(diff["extra"]["test"]["easy"])
    tiers = {d: Tier.from_pretrained(d) for d in [*smalls_dao, *smalls_ce, large]}
    probs = {d: (predict_probs(t, dv), predict_probs(t, te)) for d, t in tiers.items()}
    cfgs = {d: tiers[d].config for d in tiers}
    feats = {name: layer_cls_features(early.backbone, s) for name, s in (("dev", dv), ("test", te))}
    with torch.no_grad():
        ee_probs = {name: [torch.softmax(h(f[:, i]), -1) for i, h in enumerate(early.heads)]
                    + [probs[large][k]] for k, (name, f) in enumerate(feats.items())}

    def ee_costs(lengths):
        c = early.backbone.config
        return row_costs([[flops.early_exit_flops(c, [n], [0]) for n in lengths]] * c.num_hidden_layers)

    full_dv = sum(flops.tier_flops(cfgs[large], [n]) for n in dv.lengths)
    enc_te = collate(te, range(len(te)))
    full_model = CascadeBert([tiers[large]], []).eval()
    o_full = run_batches(full_model, enc_te, args.batch)
    full_acc_te = float((o_full["logits"].argmax(-1).numpy() == labels_te).mean())
    full_conf = o_full["confidence"].numpy()
    full_correct = o_full["logits"].argmax(-1).numpy() == labels_te
    points = [{
        "method": "full", "thresholds": [], "accuracy": full_acc_te,
        "ece": ece(full_conf, full_correct), "dis": dis(full_conf, easy_te),
        "speedup_analytic": 1.0, "speedup_measured": 1.0, "rows_per_tier": [len(te)],
        "f1": f1_binary(o_full["logits"].argmax(-1).numpy(), labels_te) if C == 2 else None,
    }]
    print(f"{L}-layer tier alone: test accuracy {full_acc_te:.4f}")
    reliab = {"full": (full_conf, full_correct)}

    def measure(method, model, stage_cfgs, ths, target, dis_conf):
        """One sweep point: the model timed against the final tier alone (warm-up, then
        interleaved passes in alternating order; the median ratio and its spread)."""
        timed = timed_speedup(model, full_model, enc_te, args.batch, runs=args.timing_runs)
        o = timed.pop("out")
        pred = o["logits"].argmax(-1).numpy()
        conf = o["confidence"].numpy()
        exit_t = o["exit_tier"].numpy()
        if method == "early_exit":
            c = early.backbone.config
            sp_an = (sum(flops.tier_flops(c, [n]) for n in te.lengths)
                     / flops.early_exit_flops(c, te.lengths, exit_t.tolist()))
        else:
            sp_an = flops.analytic_speedup(stage_cfgs, te.lengths, exit_t.tolist())
        pt = {
            "method": method, "thresholds": [float(t) for t in ths], "accuracy": float((pred == labels_te).mean()),
            "ece": ece(conf, pred == labels_te), "dis": dis(dis_conf, easy_te),
            "speedup_analytic": sp_an, "speedup_measured": timed["speedup"],
            "speedup_measured_min": timed["speedup_min"], "speedup_measured_max": timed["speedup_max"],
            "speedup_measured_all": timed["speedup_all"], "rows_per_tier": o["rows"].tolist(),
            "f1": f1_binary(pred, labels_te) if C == 2 else None, "target_speedup": target,
            "seconds": timed["seconds"], "seconds_full": timed["seconds_baseline"],
        }
        points.append(pt)
        if target == 2.0:
            reliab[method] = (conf, pred == labels_te)
        return pt, exit_t

    methods = {"cascade": smalls_dao, "cascade_no_dao": smalls_ce}
    for method, smalls in methods.items():
        dirs = [*smalls, large]
        stage_cfgs = [cfgs[d] for d in dirs]
        cum_dv = tier_row_costs(stage_cfgs, dv.lengths)
        model = CascadeBert([tiers[d] for d in dirs], [0.5] * len(smalls)).eval()
        for target in args.targets:
            ths, _, _ = search_thresholds([probs[d][0] for d in dirs], labels_dv, cum_dv, full_dv,
                                          target_speedup=target)
            model.set_thresholds(ths)
            pt, exit_t = measure(method, model, stage_cfgs, ths, target, probs[dirs[0]][1].amax(-1).numpy())
            sim_stage, _, _ = simulate_exits([probs[d][1] for d in dirs], ths)
            pt["exit_agreement_with_simulation"] = float((sim_stage == exit_t).mean())

    cum_ee_dv = ee_costs(dv.lengths)
    for target in args.targets:
        # the same search as the cascade's: one threshold per exit layer, chosen on dev
        ths, _, _ = search_thresholds(ee_probs["dev"], labels_dv, cum_ee_dv, full_dv, target_speedup=target)
        early.threshold = ths
        measure("early_exit", early, None, ths, target, ee_probs["test"][0].amax(-1).numpy())

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"data": splits.name, "small_layers": small_layers, "large_layers": L, "max_len": args.max_len,
            "epochs": args.epochs, "small_epochs": args.small_epochs, "small_lr": args.small_lr,
            "lr": args.lr, "bf16_autocast": bf16, "folds": args.folds, "margin": args.margin, "lam": args.lam,
            "seed": args.seed, "threads": torch.get_num_threads(), "test_rows": len(te),
            "torch": torch.__version__, "transformers": transformers.__version__, "cpu": cpu_name(),
            "commit": source_commit(), "loadavg_at_start": load_at_start, "wall_seconds": None,
            "timing": {"runs": args.timing_runs, "warmup": 1, "order": "alternating (baseline model, model baseline, ...)",
                       "speedup_measured": "median over passes of final-tier seconds / method seconds; "
                                           "speedup_measured_min/max/all: the spread"}}
    (out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n")
    _plot(points, reliab, out / "sweep.png", reliability_bins)
    print()
    print(f"{'method':<15} {'target':>6} {'thresholds':<18} {'acc':>6} {'drop':>6} {'ECE':>6} {'DIS':>6} "
          f"{'sp_an':>6} {'sp_meas':>7} {'(min-max)':>11}  rows per tier")
    for p in points:
        ths = ",".join(f"{t:.3f}" for t in p["thresholds"]) or "-"
        d = "-" if p["dis"] is None else f"{p['dis']:.3f}"
        print(f"{p['method']:<15} {p.get('target_speedup', 1.0):>6.1f} {ths:<18} {p['accuracy']:>6.3f} "
              f"{(full_acc_te - p['accuracy']) * 100:>5.1f}p {p['ece']:>6.3f} {d:>6} "
              f"{p['speedup_analytic']:>6.2f} {p['speedup_measured']:>7.2f} {_spread(p):>11}  {p['rows_per_tier']}")
    meta["wall_seconds"] = time.perf_counter() - t_start
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {out / 'sweep.json'} and {out / 'sweep.png'} ({meta['wall_seconds']:.0f} s in all)")
    return 0


def _plot(points, reliab, path, reliability_bins) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"cascade": ("C0", "o", "cascade (DAO)"), "cascade_no_dao": ("C1", "s", "cascade (no DAO)"),
              "early_exit": ("C2", "^", "early exit (DeeBERT-style)"), "full": ("k", "*", "6-layer alone")}
    for m, (col, mk, lab) in styles.items():
        pts = sorted((p for p in points if p["method"] == m), key=lambda p: p["speedup_measured"])
        if not pts:
            continue
        ax.plot([p["speedup_measured"] for p in pts], [100 * p["accuracy"] for p in pts], marker=mk,
                color=col, label=lab)
        ax.plot([p["speedup_analytic"] for p in pts], [100 * p["accuracy"] for p in pts], marker=mk,
                color=col, ls=":", alpha=0.5, mfc="none")
    ax.set_xlabel("speed-up over the 6-layer tier (solid: measured, dotted: analytic)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot([0, 1], [0, 1], "k--", lw=1)
    for m, (conf, corr) in reliab.items():
        centres, acc, _ = reliability_bins(conf, corr)
        ax2.plot(centres, acc, marker=styles[m][1], color=styles[m][0], label=styles[m][2])
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("accuracy")
    ax2.set_title("reliability (points at 2x target)", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


if __name__ == "__main__":
    main()
