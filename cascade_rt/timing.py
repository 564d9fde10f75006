"""Wall-clock timing shared by the demo, ``cascade-rt evaluate`` and the benchmarks.

CPU timings on a shared machine drift; comparing two models is fair only when their runs
interleave, so both see the same drift, after a warm-up (first calls pay for allocation,
caches, kernel compilation), in alternating order (A B, B A, A B, ...: neither always runs
first, on a cold cache or right after the other), and the median is reported with its spread.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["sync", "time_fn", "interleaved", "paired_ratio"]


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (a no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "runs": len(times), "all": list(times)}


def time_fn(fn: Callable[[], object], device: torch.device | str | None = None, *, warmup: int = 1,
            runs: int = 5, min_time: float = 0.0) -> dict:
    """Wall time of ``fn()`` in seconds: ``{"median", "min", "runs", "all"}``.

    Runs ``warmup`` times untimed, then at least ``runs`` times and until ``min_time``
    seconds have passed, synchronising ``device`` after each run.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return _summary(times)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str | None = None, *,
                warmup: int = 1, runs: int = 5, alternate: bool = True,
                warmup_fns: dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Time several functions round-robin so that drift hits each alike; a
    :func:`time_fn`-style dict per name (``"all"`` in round order, so entry ``r`` of two
    names comes from the same round: see :func:`paired_ratio`).

    Each function first runs ``warmup`` times untimed (in the same alternating order). With
    ``alternate`` the order of the names turns by one each round (A B C, B C A, C A B, ...),
    so no function always runs first or right after the same other one. ``warmup_fns`` (same
    names): what the warm-up rounds run instead, e.g. each function on a slice of its input.
    """
    names = list(fns)

    def order(r: int) -> list[str]:
        if not alternate or not names:
            return names
        k = r % len(names)
        return names[k:] + names[:k]

    warm = fns if warmup_fns is None else warmup_fns
    if set(warm) != set(fns):
        raise ValueError("warmup_fns must have the same names as fns")
    for r in range(warmup):
        for k in order(r):
            warm[k]()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(runs):
        for k in order(r):
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: _summary(v) for k, v in times.items()}


def paired_ratio(timings: dict[str, dict], num: str, den: str) -> dict:
    """``timings[num] / timings[den]`` per round of an :func:`interleaved` run (the two runs of
    a round saw the same machine load): ``{"median", "min", "max", "runs", "all"}``.

    For a speed-up of ``model`` over ``baseline`` pass ``num="baseline", den="model"``.
    """
    a, b = timings[num]["all"], timings[den]["all"]
    if len(a) != len(b) or not a:
        raise ValueError(f"{num!r} and {den!r} need the same number (>= 1) of timed rounds, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "runs": len(ratios), "all": [round(r, 4) for r in ratios]}
