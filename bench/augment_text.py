"""Noisy copies of a shipped set's training texts, as text without labels for ``bench/tier_recipe.py``.

Each training text gives ``--variants`` copies: a random contiguous window of 50-100% of its
words (texts of more than 4 words), each word then dropped with probability 0.1 and about one
in ten neighbouring pairs swapped. The copies carry no label: a tier learns them by
distillation from the final tier (``--unlabeled FILE``), the usual way to stretch a small
labelled set for a small model. ``--with-shipped`` puts the other shipped sets' training texts
(``--unlabeled shipped``) in the same file first. Writes JSONL with a ``text`` column::

    .venv/bin/python bench/augment_text.py --data amazon --variants 4 --with-shipped --out /tmp/aug.jsonl
    .venv/bin/python bench/tier_recipe.py --data amazon --layers 2 --bf16 --train-word-embeddings \\
        --min-steps 500 --lr 3e-4 --large FINAL --init-from FINAL --unlabeled /tmp/aug.jsonl \\
        --targets 1.5 2.0 2.5 3.0

Seeded (``--seed``) and split with ``--split-seed``, like the demo, so the copies come from the
training rows only; a copy equal to a text of the set's own splits is dropped by
``cascade_rt.data.unlabeled_texts`` when the file is read.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def noisy_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4:
        n = max(3, int(len(words) * rng.uniform(0.5, 1.0)))
        start = rng.randint(0, len(words) - n)
        words = words[start:start + n]
    words = [w for w in words if rng.random() > 0.1] or words[:1]
    for _ in range(max(1, len(words) // 10)):
        if len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="amazon", help="a shipped set")
    p.add_argument("--variants", type=int, default=4, help="noisy copies per training text")
    p.add_argument("--with-shipped", action="store_true",
                   help="also write the other shipped sets' training texts (first)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.variants < 1:
        raise SystemExit(f"--variants must be >= 1, got {args.variants}")

    from cascade_rt.data import load_shipped, unlabeled_texts

    splits = load_shipped(args.data, args.split_seed)
    if any(e.text_pair is not None for e in splits.train):
        raise SystemExit(f"{args.data}: text pairs are not supported")
    rng = random.Random(args.seed)
    rows = [e.text for e in unlabeled_texts("shipped", splits, args.split_seed)] if args.with_shipped else []
    rows += [noisy_copy(e.text, rng) for e in splits.train for _ in range(args.variants)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for t in rows:
            f.write(json.dumps({"text": t}) + "\n")
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
