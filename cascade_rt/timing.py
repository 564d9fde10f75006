"""Wall-clock timing shared by the demo, ``cascade-rt evaluate`` and the benchmarks.

CPU timings on a shared machine drift; comparing two models is fair only when their runs
interleave (A B A B ...), so both see the same drift, and the median is reported.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["sync", "time_fn", "interleaved"]


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (a no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "runs": len(times),
            "all": [round(t, 6) for t in times]}


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
                warmup: int = 1, runs: int = 5) -> dict[str, dict]:
    """Time several functions round-robin so that drift hits each alike; a
    :func:`time_fn`-style dict per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: _summary(v) for k, v in times.items()}
