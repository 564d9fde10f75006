"""Labelled text for training and evaluating cascades, from offline sources.

Shipped sets come from the vaderSentiment 3.3.2 source distribution (MIT), whose
``additional_resources/hutto_ICWSM_2014.tar.gz`` holds human-rated snippets with a mean
sentiment score in [-4, 4]: ``movies`` (10,605 movie-review snippets, the default task),
``tweets`` (4,200), ``amazon`` (3,708) and ``nyt`` (5,190). A snippet's label is 1 when its
score is positive and 0 when negative; snippets rated exactly 0 (neutral) are dropped.
``scripts/setup.sh`` downloads the sdist into ``<cache>/data`` (see
:func:`cascade_rt.paths.cache_dir`); nothing is downloaded at run time.

Users' own data: :func:`load_table` reads CSV or JSONL with columns ``text``, optional
``text_pair`` and ``label`` (int, or strings mapped to ids in sorted order).

Text without labels (:func:`unlabeled_texts`): the other shipped sets' training rows, or a
user's CSV / JSONL / Parquet file with a ``text`` column; the small models of a cascade learn
from the final tier's predictions on it (``cascade-rt demo --unlabeled``).
"""
from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import cache_dir

__all__ = ["Example", "Splits", "SHIPPED", "load_dataset", "load_shipped", "load_table", "split",
           "unlabeled_texts", "UNLABELED", "VADER_SDIST", "data_dir"]

#: the label of an example that has none (:func:`unlabeled_texts`); the same value as
#: :data:`cascade_rt.train.UNLABELED`
UNLABELED = -1

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
SHIPPED = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
INSTALL_HINT = ("pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {dir}  "
                "(scripts/setup.sh does this)")


@dataclass
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclass
class Splits:
    """Seeded train/dev/test splits of one data set."""

    name: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    label_names: list[str] = field(default_factory=lambda: ["negative", "positive"])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe(self) -> str:
        lines = [f"data set {self.name}: {len(self.train)} train / {len(self.dev)} dev / {len(self.test)} test"]
        for part in ("train", "dev", "test"):
            counts = Counter(e.label for e in getattr(self, part))
            total = sum(counts.values()) or 1
            dist = ", ".join(f"{self.label_names[k]} {counts[k]} ({counts[k] / total:.1%})"
                             for k in range(self.num_labels))
            lines.append(f"  {part:<5} {dist}")
        return "\n".join(lines)


def data_dir() -> Path:
    return cache_dir() / "data"


def _read_vader(name: str, root: Path | None = None) -> list[Example]:
    root = data_dir() if root is None else Path(root)
    sdist = root / VADER_SDIST
    if not sdist.is_file():
        raise FileNotFoundError(
            f"the {name!r} data set needs {sdist}; get it once with:\n  " + INSTALL_HINT.format(dir=root)
        )
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(f"hutto_ICWSM_2014/{SHIPPED[name]}").read()
    text = raw.decode("utf-8", errors="replace")
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        score = float(parts[1])
        if score == 0:
            continue
        out.append(Example(text="\t".join(parts[2:]).strip(), label=int(score > 0)))
    return out


def load_table(path, label_names: list[str] | None = None) -> tuple[list[Example], list[str]]:
    """Read a CSV (header row) or JSONL file with ``text``, optional ``text_pair``, ``label``."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    for i, r in enumerate(rows):
        if "text" not in r or "label" not in r:
            raise ValueError(f"{path}: row {i} lacks a 'text' or 'label' column (has {sorted(r)})")
    raw_labels = [r["label"] for r in rows]
    if label_names is None:
        if all(isinstance(x, int) or (isinstance(x, str) and x.strip().lstrip("-").isdigit()) for x in raw_labels):
            ids = sorted({int(x) for x in raw_labels})
            if ids[0] < 0:
                raise ValueError(f"{path}: negative label {ids[0]}")
            label_names = [str(i) for i in range(ids[-1] + 1)]
        else:
            label_names = sorted({str(x) for x in raw_labels})
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for i, r in enumerate(rows):
        key = str(r["label"]).strip()
        if key not in index:
            raise ValueError(f"{path}: row {i} has label {key!r}, not one of {label_names}")
        pair = r.get("text_pair") or None
        out.append(Example(text=str(r["text"]), label=index[key], text_pair=pair))
    return out, label_names


def split(examples: list[Example], seed: int = 0, dev: float = 0.1, test: float = 0.1) -> tuple:
    """Shuffle with ``seed`` and cut into train/dev/test by the given fractions."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test, n_dev = int(round(len(order) * test)), int(round(len(order) * dev))
    pick = lambda idx: [examples[i] for i in idx]
    return pick(order[n_test + n_dev:]), pick(order[n_test:n_test + n_dev]), pick(order[:n_test])


def load_shipped(name: str = "movies", seed: int = 0, root=None) -> Splits:
    if name not in SHIPPED:
        raise ValueError(f"unknown data set {name!r}; shipped: {', '.join(SHIPPED)} (or a .csv/.jsonl path)")
    tr, dv, te = split(_read_vader(name, root), seed)
    return Splits(name, tr, dv, te)


def load_dataset(name_or_path: str = "movies", seed: int = 0) -> Splits:
    """A shipped set by name, or a user's CSV/JSONL file, split 80/10/10 with ``seed``."""
    if name_or_path in SHIPPED:
        return load_shipped(name_or_path, seed)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a shipped data set ({', '.join(SHIPPED)}) nor a file")
    examples, names = load_table(path)
    tr, dv, te = split(examples, seed)
    return Splits(path.stem, tr, dv, te, label_names=names)


def unlabeled_texts(source: str, splits: Splits, seed: int = 0) -> list[Example]:
    """Text without labels for distillation, as examples labelled :data:`UNLABELED`.

    ``source``: ``"shipped"``, the training rows of every shipped set but ``splits``' own (each
    split with ``seed``, in the order of :data:`SHIPPED`); or a CSV / JSONL / Parquet file with a
    ``text`` column (and ``text_pair`` when ``splits`` holds pairs; other columns, a label
    included, are ignored). Texts that occur in any of ``splits``' own train, dev or test rows
    are left out, so no evaluation row is seen under another name; a text is kept once. A bad
    row (missing, null or non-string text) is an error that names it; so is a source that
    leaves nothing.
    """
    pairs = any(e.text_pair is not None for e in splits.train + splits.dev + splits.test)
    if source == "shipped":
        if splits.name not in SHIPPED:
            raise ValueError(f"unlabeled text 'shipped' is for the shipped sets ({', '.join(SHIPPED)}); "
                             f"{splits.name!r} is not one: give a file of its own kind of text")
        rows = [(e.text, None) for other in SHIPPED if other != splits.name
                for e in load_shipped(other, seed).train]
        where = f"the shipped sets other than {splits.name}"
    else:
        from ..predict.io import detect_format, read_chunks
        from ..predict.rows import validate

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"unlabeled text: {source!r} is neither 'shipped' nor a file")
        rows, pair_column = [], "text_pair" if pairs else None
        for chunk in read_chunks(path, detect_format(path), "text", pair_column):
            good, rejects = validate(chunk, "text", pair_column)
            if rejects:
                raise ValueError(f"unlabeled text {path}: {rejects[0].message()}")
            rows += [(chunk.text[k], chunk.pair[k] if pair_column else None) for k in good]
        where = str(path)
    seen = {(e.text, e.text_pair) for e in splits.train + splits.dev + splits.test}
    out = []
    for text, pair in rows:
        if (text, pair) not in seen:
            seen.add((text, pair))
            out.append(Example(text=text, label=UNLABELED, text_pair=pair))
    if not out:
        raise ValueError(f"unlabeled text from {where}: no row left once the data set's own texts "
                         f"(and repeats) are left out ({len(rows)} read)")
    return out
