"""Two-tier inference demo on the shipped MiniLM weights (``cascade-rt infer``).

Tier 0 is the first 2 layers of the shipped 6-layer MiniLM, tier 1 all 6 layers, each with a
seeded, *untrained* classification head (train real ones with ``cascade-rt demo``). The
threshold is set to the median tier-0 confidence of the batch so that about half the rows
exit early; the demo prints each row's exit tier and confidence, then the analytic speed-up
(``cascade_rt.flops``) and the measured one against running the 6-layer tier alone.
"""
from __future__ import annotations

import argparse

import torch

SENTENCES = [
    "A gripping, beautifully shot film.",
    "Boring.",
    "The plot is thin, but the leads carry it with so much charm that you hardly notice the holes.",
    "I laughed, I cried, I wanted my money back.",
    "An utter mess from start to finish, with dialogue that sounds machine-translated twice.",
    "Worth seeing twice.",
    "It never decides whether it is a comedy or a thriller, and it fails at both.",
    "Fine.",
    "The soundtrack alone is worth the ticket.",
    "Two hours of my life I will not get back.",
    "A quiet, patient character study that rewards attention.",
    "Loud, long and stupid, but the kids loved it and so, secretly, did I.",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=4, help="copies of the sentence list in the batch")
    p.add_argument("--timing-runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def build_cascade(num_labels: int = 2):
    """The demo's two tiers (cached under the user cache dir)."""
    from . import CascadeBert, make_classifier_checkpoint
    from .paths import cache_dir, shipped_minilm_dir

    src = shipped_minilm_dir()
    root = cache_dir() / "infer_demo"
    dirs = []
    for n in (2, 6):
        d = root / f"minilm_l{n}"
        if not (d / "model.safetensors").is_file():
            make_classifier_checkpoint(src, d, num_labels=num_labels, num_layers=n, seed=n, init_std=1.0)
        dirs.append(d)
    return CascadeBert.from_pretrained(dirs, thresholds=[0.5]).eval(), src


def run(args) -> int:
    from transformers import BertTokenizer

    from . import CascadeBert, backends, flops
    from .timing import interleaved

    if args.threads:
        torch.set_num_threads(args.threads)
    model, src = build_cascade()
    tok = BertTokenizer(vocab=str(src / "vocab.txt"))
    sentences = SENTENCES * args.repeat
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        conf0 = model.tiers[0](**enc).softmax(-1).amax(-1)
    threshold = float(conf0.median())
    model.set_thresholds([threshold])
    out = model(**enc)
    lens = enc["attention_mask"].sum(1)
    print(f"cascade: tier 0 = MiniLM 2 layers, tier 1 = MiniLM 6 layers (untrained heads); "
          f"threshold {threshold:.4f} (median tier-0 confidence)")
    print(f"backends: cpu -> {backends.implementation('exit_head', torch.zeros(1))[0]} "
          f"(python -m cascade_rt.info for details)")
    print(f"{'row':>3} {'tokens':>6} {'exit':>4} {'conf':>6}  text")
    for i, s in enumerate(sentences[: len(SENTENCES)]):
        print(f"{i:>3} {int(lens[i]):>6} {int(out.exit_tier[i]):>4} {float(out.confidence[i]):>6.3f}  {s[:60]}")
    if args.repeat > 1:
        print(f"... ({len(sentences)} rows in all)")
    cfgs = [t.config for t in model.tiers]
    analytic = flops.analytic_speedup(cfgs, lens.tolist(), out.exit_tier.tolist())
    alone = CascadeBert([model.tiers[-1]], []).eval()
    t = interleaved({"cascade": lambda: model(**enc), "alone": lambda: alone(**enc)}, model.device,
                    runs=args.timing_runs)
    t_casc, t_alone = t["cascade"]["median"], t["alone"]["median"]
    print(f"rows per tier: {out.rows_per_tier.tolist()}  tokens per tier: {out.tokens_per_tier.tolist()}")
    print(f"6-layer tier alone: {t_alone * 1e3:.1f} ms   cascade: {t_casc * 1e3:.1f} ms   "
          f"(median of {args.timing_runs}, interleaved, {torch.get_num_threads()} threads)")
    print(f"speed-up over the last tier alone: measured {t_alone / t_casc:.2f}x, analytic {analytic:.2f}x")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


if __name__ == "__main__":
    main()
