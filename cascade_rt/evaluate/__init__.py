"""Metrics, threshold search and sweeps for cascades and the early-exit baseline."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["accuracy", "f1_binary", "ece", "dis", "pooled_stage_probs", "simulate_exits", "row_costs",
           "search_thresholds", "EQUAL_WITHIN_HELP", "parse_pool_weight", "parse_equal_within",
           "reliability_bins", "tier_row_costs", "run_batches", "timed_against", "timed_speedup", "timed_speedups"]


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


def pooled_stage_probs(probs: Sequence[torch.Tensor], weight: float) -> list[torch.Tensor]:
    """Each stage's probabilities as a cascade with ``pool_weight=weight`` sees them (stage 0
    as it is, stage ``i > 0`` pooled with the pool after stage ``i - 1``,
    :func:`cascade_rt.cascade.pool_log_probs`), for every row; feed them to
    :func:`simulate_exits` / :func:`search_thresholds` to score or choose a pooling cascade.
    ``probs``: per stage (N, C) probabilities (each stage's own softmax)."""
    from ..cascade import pool_log_probs

    if not weight:
        return list(probs)
    out = [probs[0]]
    pool = torch.log(probs[0].float().clamp_min(1e-30))
    for p in probs[1:]:
        # a tier's own log-probabilities, as log_softmax of its logits would give them
        pool, _ = pool_log_probs(torch.log(p.float().clamp_min(1e-30)), pool, weight)
        out.append(pool.exp())
    return out


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


EQUAL_WITHIN_HELP = ("dev accuracies within this of the best count as equal when choosing thresholds for a "
                     "target speed-up, and the slowest of them (nearest the target) wins: 'se' (default) = one "
                     "standard error of the best dev accuracy, or a fraction (0.005 = half a point); 0 = the most "
                     "accurate point wins outright")


def parse_equal_within(value: str) -> float | str:
    """``--equal-within``: 'se' or a fraction >= 0."""
    import argparse

    if value == "se":
        return value
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be 'se' or a fraction >= 0, got {value!r}")
    return x


def parse_pool_weight(value: str) -> float:
    """``--pool-weight``: a finite number >= 0 (``CascadeBert(pool_weight=...)``)."""
    import argparse

    from ..cascade import _check_pool_weight

    try:
        return _check_pool_weight(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value!r}") from None


def search_thresholds(probs, labels, cum_cost: np.ndarray, full_cost: float, *,
                      target_speedup: float | None = None, max_drop: float | None = None,
                      full_accuracy: float | None = None, grid: int = 60, max_combos: int = 200_000,
                      equal_within: float | str = "se"):
    """Choose one threshold per non-final stage on a dev set.

    With ``target_speedup``: the most accurate thresholds whose analytic speed-up is at least
    the target (if none reaches it, the fastest). Accuracies within ``equal_within`` of the
    best count as equal, and of those the slowest point is taken: the one nearest the target,
    which sends the most rows on to the later, more accurate stages. ``"se"`` (default) is one
    standard error of the best accuracy on the search set, sqrt(a (1 - a) / N): a gain the
    search set cannot resolve does not buy a faster, riskier point (``bench/threshold_rule.py``
    compares the rules on held-out halves of the shipped sets' dev splits). With
    ``equal_within=0`` the most accurate point wins outright and equally accurate ones go to
    the fastest.
    With ``max_drop``: the fastest thresholds whose accuracy is at least
    ``full_accuracy - max_drop``. ``cum_cost``: (S, N) from :func:`row_costs`; ``full_cost``:
    the last stage alone on all rows.

    Each stage's candidates are ``grid`` quantiles of its confidences plus "never exit". When
    the grid has at most ``max_combos`` combinations every one is tried. Otherwise (many
    stages, e.g. early exit after every layer) a local search runs from several starts: the
    best threshold shared by all stages, and the points that maximise accuracy minus a price
    times cost for a range of prices (each found by changing one stage at a time from "no
    stage exits", so they trace the accuracy / cost front from the accurate end instead of
    from the fast, degenerate end where every row leaves at the first stage). From each
    start, one or two stages' thresholds change at a time while that improves the result.
    The most accurate point found is never worse on the search set than a shared threshold,
    nor than any of those front points that meets the target; the second phase (the slowest
    point within ``equal_within`` of it) runs the same local search from it.
    Returns (thresholds, accuracy, analytic speed-up) on the search set.
    """
    if (target_speedup is None) == (max_drop is None):
        raise ValueError("give exactly one of target_speedup or max_drop")
    if not (equal_within == "se" or (isinstance(equal_within, (int, float)) and equal_within >= 0)):
        raise ValueError(f"equal_within must be 'se' or a number >= 0, got {equal_within!r}")
    if max_drop is not None and full_accuracy is None:
        raise ValueError("max_drop needs full_accuracy")
    labels = np.asarray(labels)
    S = len(probs)
    if S < 2:
        return [], float("nan"), 1.0
    conf = torch.stack([p.amax(-1) for p in probs]).numpy()  # (S, N)
    pred = torch.stack([p.argmax(-1) for p in probs]).numpy()
    correct = pred == labels[None, :]
    cum_cost = np.asarray(cum_cost, dtype=np.float64)
    N = conf.shape[1]
    ar = np.arange(N)
    never = 1.0 + 1e-6  # above any probability: the stage never exits
    cands = [np.concatenate([np.unique(np.quantile(conf[s], np.linspace(0, 1, grid))), [never]])
             for s in range(S - 1)]

    def exits(ts):
        stage = np.full(N, S - 1)
        open_ = np.ones(N, dtype=bool)
        for s, t in enumerate(ts):
            go = open_ & (conf[s] >= t)
            stage[go] = s
            open_ &= ~go
        return stage

    # second phase of a target search: the slowest point that meets the target and an accuracy floor
    floor = None

    def key_of(acc, sp):
        if target_speedup is not None:
            ok = sp >= target_speedup
            if floor is not None:
                ok = ok and acc >= floor
                return (ok, -sp, acc) if ok else (ok, acc, sp)
            return (ok, acc, sp) if ok else (ok, sp, acc)
        ok = acc >= full_accuracy - max_drop - 1e-12
        return (ok, sp, acc) if ok else (ok, acc, sp)

    def score(ts):
        stage = exits(ts)
        acc = float(correct[stage, ar].mean())
        sp = float(full_cost / cum_cost[stage, ar].sum())
        return key_of(acc, sp), acc, sp

    best = None

    def consider(ts):
        nonlocal best
        key, acc, sp = score(ts)
        if best is None or key > best[0]:
            best = (key, list(ts), acc, sp)
            return True
        return False

    import itertools

    def relax_floor():
        """The accuracy floor of the second phase, or None where there is none to run."""
        if target_speedup is None or not best[0][0] or equal_within == 0:
            return None
        a = best[2]
        tol = np.sqrt(a * (1.0 - a) / N) if equal_within == "se" else float(equal_within)
        return a - tol - 1e-12 if tol > 0 else None

    def result():
        return [min(float(t), 1.0) for t in best[1]], best[2], best[3]

    if np.prod([float(len(c)) for c in cands]) <= max_combos:
        scored = [(list(ts), *score(ts)[1:]) for ts in itertools.product(*cands)]

        def pick():
            """The best of every combination under the current ``key_of``."""
            return max(((key_of(acc, sp), ts, acc, sp) for ts, acc, sp in scored), key=lambda b: b[0])

        best = pick()
        floor = relax_floor()
        if floor is not None:
            best = pick()
        return result()

    def sweep(ts, s):
        """Every candidate of stage ``s`` with the other stages fixed, at once: (correct
        count, summed cost) per candidate."""
        stage = exits(ts)
        before = stage < s
        ts_after = list(ts)
        ts_after[s] = never
        cont = exits(ts_after)  # where a row goes when stage s lets it pass
        base_c = correct[stage, ar][before].sum()
        base_cost = cum_cost[stage, ar][before].sum()
        op = ~before
        c_here, k_here = correct[s][op], cum_cost[s][op]
        c_cont, k_cont = correct[cont, ar][op], cum_cost[cont, ar][op]
        go = conf[s][op][None, :] >= cands[s][:, None]  # (candidates, open rows)
        n_correct = base_c + np.where(go, c_here, c_cont).sum(1)
        cost = base_cost + np.where(go, k_here, k_cont).sum(1)
        return n_correct, cost

    # thresholds from which a whole round of two-stage moves found nothing: from there it
    # never does (the search is deterministic), so a later start that reaches them skips it
    pair_stable: set = set()

    def local_search(ts):
        """Single-stage moves (all candidates of a stage at once) until they stall, then
        moves of two stages at once; repeat while anything improves."""
        nonlocal best
        start = best
        best = None
        consider(ts)
        for _ in range(50):
            changed = True
            while changed:
                changed = False
                for s in range(S - 1):
                    n_correct, cost = sweep(best[1], s)
                    keys = [key_of(c / N, full_cost / k) for c, k in zip(n_correct, cost)]
                    i = max(range(len(keys)), key=keys.__getitem__)
                    if keys[i] > best[0]:
                        ts = list(best[1])
                        ts[s] = cands[s][i]
                        changed |= consider(ts)
            # trading one stage's exits for another's keeps the speed-up while the accuracy changes
            here = tuple(best[1])
            if here in pair_stable:
                break
            pair_changed = False
            for s1, s2 in itertools.combinations(range(S - 1), 2):
                for t1 in cands[s1]:
                    ts = list(best[1])
                    ts[s1] = t1
                    n_correct, cost = sweep(ts, s2)
                    keys = [key_of(c / N, full_cost / k) for c, k in zip(n_correct, cost)]
                    i = max(range(len(keys)), key=keys.__getitem__)
                    if keys[i] > best[0]:
                        ts[s2] = cands[s2][i]
                        pair_changed |= consider(ts)
            if not pair_changed:
                pair_stable.add(here)
                break
        found, best = best, start
        if best is None or found[0] > best[0]:
            best = found

    def front_point(price):
        """Thresholds that maximise accuracy - price * (cost / full cost), by one stage at a
        time from "no stage exits"."""
        ts = [never] * (S - 1)
        val = None
        for _ in range(20):
            moved = False
            for s in range(S - 1):
                n_correct, cost = sweep(ts, s)
                obj = n_correct / N - price * cost / full_cost
                i = int(np.argmax(obj))
                if val is None or obj[i] > val + 1e-12:
                    val, ts[s], moved = obj[i], cands[s][i], True
            if not moved:
                break
        return ts

    starts = []
    shared = np.unique(np.concatenate(cands))
    best = None
    for t in shared:
        consider([t] * (S - 1))
    starts.append(best[1])
    for price in np.concatenate([[0.0], np.geomspace(1e-3, 10.0, 40)]):
        ts = front_point(price)
        if ts not in starts:
            starts.append(ts)
    best = None
    for ts in starts:
        local_search(ts)
    floor = relax_floor()
    if floor is not None:
        # from the most accurate point (which meets the floor), move towards the target
        ts0 = best[1]
        best = None
        pair_stable.clear()
        local_search(ts0)
    return result()


def tier_row_costs(configs, lengths) -> np.ndarray:
    """(S, N) cumulative analytic FLOPs of a row of each length exiting at each tier."""
    from .. import flops

    return row_costs([[flops.tier_flops(c, [n]) for n in lengths] for c in configs])


def run_batches(model, enc: dict, batch: int) -> dict:
    """``model`` (a :class:`cascade_rt.CascadeBert` or anything returning a
    :class:`cascade_rt.CascadeOutput`) over padded ``enc`` in batches of ``batch`` rows,
    each batch cut to its longest row. Returns logits, exit_tier, confidence (input order)
    and rows per tier summed over batches."""
    N = enc["input_ids"].shape[0]
    outs: dict = {"logits": [], "exit_tier": [], "confidence": []}
    rows = None
    for s in range(0, N, batch):
        sl = {k: v[s:s + batch] for k, v in enc.items()}
        n = int(sl["attention_mask"].sum(1).max())
        o = model(**{k: v[:, :n] for k, v in sl.items()})
        outs["logits"].append(o.logits)
        outs["exit_tier"].append(o.exit_tier)
        outs["confidence"].append(o.confidence)
        rows = o.rows_per_tier if rows is None else rows + o.rows_per_tier
    res = {k: torch.cat(v) for k, v in outs.items()}
    res["rows"] = rows
    return res


def timed_speedups(cases: dict, baseline, enc: dict, batch: int, runs: int = 3, warmup: int = 1,
                   warmup_rows: int | None = None) -> dict:
    """Measured speed-ups of several models (or one model in several settings) over ``baseline``
    on the same rows (batches of ``batch``), timed together.

    ``cases``: ``{name: model}`` or ``{name: (model, setup)}``, ``setup()`` being called
    before each pass of that case (e.g. to set a shared cascade's thresholds). One untimed
    warm-up round, then ``runs`` timed rounds; each round runs the baseline once and every
    case once, the order turning by one each round (:func:`cascade_rt.timing.interleaved`),
    so every case and the baseline see the same machine load within a round and none always
    runs first. A case's speed-up is the median over rounds of ``baseline seconds / case
    seconds`` of the same round; its min, max and every round's value are kept as the spread.
    The baseline runs once per round however many cases there are. ``warmup_rows``: the
    warm-up round runs every case and the baseline on the first ``warmup_rows`` rows only
    (weights packed, buffers grown, at a fraction of a whole pass); None: on every row.

    Returns ``{name: {"speedup", "speedup_min", "speedup_max", "speedup_all", "seconds",
    "seconds_baseline", "runs", "warmup", "out"}}``: seconds are medians over rounds, ``out``
    the case's outputs (:func:`run_batches`, from its last pass).
    """
    from ..timing import interleaved, paired_ratio

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if not cases:
        raise ValueError("timed_speedups needs at least one case")
    if warmup_rows is not None and warmup_rows < 1:
        raise ValueError(f"warmup_rows must be >= 1 or None, got {warmup_rows}")
    keep: dict = {}
    head = enc if warmup_rows is None else {k: v[:warmup_rows] for k, v in enc.items()}
    fns = {("baseline",): lambda: run_batches(baseline, enc, batch)}
    warm = {("baseline",): lambda: run_batches(baseline, head, batch)}
    device = None
    for name, case in cases.items():
        model, setup = case if isinstance(case, tuple) else (case, None)
        device = device or getattr(model, "device", None)

        def run_case(name=name, model=model, setup=setup, rows=enc, out=True):
            if setup is not None:
                setup()
            o = run_batches(model, rows, batch)
            if out:
                keep[name] = o

        fns[("case", name)] = run_case
        warm[("case", name)] = lambda f=run_case: f(rows=head, out=False)
    t = interleaved(fns, device, warmup=warmup, runs=runs, warmup_fns=warm)
    res = {}
    for name in cases:
        r = paired_ratio(t, ("baseline",), ("case", name))
        res[name] = {"speedup": r["median"], "speedup_min": r["min"], "speedup_max": r["max"],
                     "speedup_all": r["all"], "seconds": t[("case", name)]["median"],
                     "seconds_baseline": t[("baseline",)]["median"], "runs": runs, "warmup": warmup,
                     "warmup_rows": warmup_rows,
                     "out": keep[name]}
    return res


def timed_speedup(model, baseline, enc: dict, batch: int, runs: int = 3, warmup: int = 1) -> dict:
    """Measured speed-up of ``model`` over ``baseline`` on the same rows (batches of ``batch``).

    One untimed warm-up pass of each, then ``runs`` timed passes of each, interleaved in
    alternating order (baseline model, model baseline, ...) so both see the same machine load
    and neither always runs first. The speed-up is the median over rounds of
    ``baseline seconds / model seconds`` (the two passes of a round are adjacent in time);
    its min, max and every round's value are kept as the spread.

    Returns ``{"speedup", "speedup_min", "speedup_max", "speedup_all", "seconds",
    "seconds_baseline", "runs", "warmup", "out"}``: seconds are medians over rounds, ``out``
    the model's outputs (:func:`run_batches`). :func:`timed_speedups` times several at once.
    """
    return timed_speedups({"model": model}, baseline, enc, batch, runs=runs, warmup=warmup)["model"]


def timed_against(model, baseline, enc: dict, batch: int, runs: int = 3, warmup: int = 1):
    """Wall time of ``model`` and ``baseline`` over the same rows, as :func:`timed_speedup`
    measures them (warm-up, alternating interleaved passes).

    Returns (model seconds, baseline seconds, model outputs); medians over ``runs``.
    """
    r = timed_speedup(model, baseline, enc, batch, runs=runs, warmup=warmup)
    return r["seconds"], r["seconds_baseline"], r["out"]
