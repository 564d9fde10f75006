"""Metrics, threshold search and sweeps for cascades and the early-exit baseline."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["accuracy", "f1_binary", "ece", "dis", "simulate_exits", "row_costs", "search_thresholds",
           "reliability_bins"]


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def f1_binary(pred, labels, positive: int = 1) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    tp = int(((pred == positive) & (labels == positive)).sum())
    fp = int(((pred == positive) & (labels != positive)).sum())
    fn = int(((pred != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def ece(confidence, correct, bins: int = 15) -> float:
    """Expected calibration error: equal-width confidence bins over [0, 1], weighted by size.

    Bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]`` (the first also holds 0).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(conf) * abs(corr[m].mean() - conf[m].mean())
    return float(total)


def dis(confidence, easy) -> float | None:
    """Difficulty inversion score: the share of (easy, hard) pairs whose confidences are
    ordered against their difficulty (the hard one more confident); ties count half.
    ``None`` when there is no easy or no hard instance."""
    conf = np.asarray(confidence, dtype=np.float64)
    easy = np.asarray(easy, dtype=bool)
    ce, ch = np.sort(conf[easy]), conf[~easy]
    if len(ce) == 0 or len(ch) == 0:
        return None
    below = np.searchsorted(ce, ch, side="left")  # easy strictly less confident than each hard
    ties = np.searchsorted(ce, ch, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(ce) * len(ch)))


def reliability_bins(confidence, correct, bins: int = 10):
    """(bin centres, accuracy per bin or nan, count per bin)."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    acc = np.full(bins, np.nan)
    cnt = np.zeros(bins, dtype=int)
    for b in range(bins):
        m = idx == b
        cnt[b] = m.sum()
        if cnt[b]:
            acc[b] = corr[m].mean()
    return (np.arange(bins) + 0.5) / bins, acc, cnt


def simulate_exits(probs: Sequence[torch.Tensor], thresholds: Sequence[float]):
    """Exit decisions a cascade (or early exit) makes from each stage's probabilities.

    probs: per stage (N, C).  A row exits at the first stage whose max probability is
    >= its threshold; the last stage takes the rest.  Returns (exit_stage, pred, conf) arrays.
    """
    conf = torch.stack([p.amax(-1) for p in probs])  # (S, N)
    pred = torch.stack([p.argmax(-1) for p in probs])
    S, N = conf.shape
    exit_stage = torch.full((N,), S - 1, dtype=torch.int64)
    done = torch.zeros(N, dtype=torch.bool)
    for s, t in enumerate(thresholds):
        go = ~done & (conf[s] >= torch.tensor(float(t), dtype=conf.dtype))
        exit_stage[go] = s
        done |= go
    ar = torch.arange(N)
    return exit_stage.numpy(), pred[exit_stage, ar].numpy(), conf[exit_stage, ar].numpy()


def row_costs(costs_per_stage: Sequence[Sequence[float]]) -> np.ndarray:
    """(S, N) cumulative cost of a row that exits at each stage."""
    return np.cumsum(np.asarray(costs_per_stage, dtype=np.float64), axis=0)


def search_thresholds(probs, labels, cum_cost: np.ndarray, full_cost: float, *,
                      target_speedup: float | None = None, max_drop: float | None = None,
                      full_accuracy: float | None = None, grid: int = 60):
    """Choose one threshold per non-final stage on a dev set.

    With ``target_speedup``: the most accurate thresholds whose analytic speed-up is at least
    the target (if none reaches it, the fastest). With ``max_drop``: the fastest thresholds
    whose accuracy is at least ``full_accuracy - max_drop``. ``cum_cost``: (S, N) from
    :func:`row_costs`; ``full_cost``: the last stage alone on all rows.
    Returns (thresholds, accuracy, analytic speed-up) on the search set.
    """
    if (target_speedup is None) == (max_drop is None):
        raise ValueError("give exactly one of target_speedup or max_drop")
    labels = np.asarray(labels)
    S = len(probs)
    cands = []
    for s in range(S - 1):
        c = probs[s].amax(-1).numpy()
        qs = np.unique(np.quantile(c, np.linspace(0, 1, grid)))
        cands.append(np.concatenate([qs, [1.0 + 1e-6]]))
    best = None
    ar = np.arange(len(labels))
    import itertools

    for ts in itertools.product(*cands):
        ts = [min(float(t), 1.0) if t <= 1.0 else 1.0 for t in ts]
        stage, pred, _ = simulate_exits(probs, ts)
        acc = float((pred == labels).mean())
        sp = full_cost / cum_cost[stage, ar].sum()
        if target_speedup is not None:
            key = (sp >= target_speedup, acc if sp >= target_speedup else sp)
        else:
            ok = acc >= full_accuracy - max_drop - 1e-12
            key = (ok, sp if ok else acc)
        if best is None or key > best[0]:
            best = (key, list(ts), acc, sp)
    return best[1], best[2], best[3]
