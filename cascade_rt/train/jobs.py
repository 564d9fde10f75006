"""Training jobs with dependencies, run side by side in worker processes.

On a CPU with few cores, fine-tuning small BERT models with every core on one model wastes
much of the machine: a training step is many small GEMMs plus Python, autograd and optimizer
work that does not split across threads. Several models trained at once, one process and
``threads`` threads each, keep the cores busier. :func:`run_jobs` does that for a set of jobs
whose results go to disk (a trained tier's directory, a difficulty-label file), starting each
job once the jobs it depends on are done, the one with the longest chain of work after it
(its ``cost`` plus that of the costliest chain of jobs that wait for it) first. A job that
most of the others wait for can run ``alone``, with every thread, instead of beside one job
and with one worker's share.

On Linux a worker ends with the process that started it, killed or not.

A model's training depends only on its own seed and inputs, not on which worker runs it or
when; the thread count a job runs with can change its last bits (floating-point reductions).
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Job", "run_jobs"]


@dataclass
class Job:
    """``fn(*args, **kwargs)`` (a module-level function, so that it pickles), run after every
    job named in ``deps``; ``cost`` (any unit) orders the ready jobs (see :func:`run_jobs`).
    ``alone``: no other job runs beside it, and it has every worker's threads."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    cost: float = 1.0
    alone: bool = False


def _die_with_parent(parent: int) -> None:
    """Linux: end this worker process when the process that started it ends, however it ends
    (a timeout's kill included), so that a stopped run leaves no training writing into the
    cache behind it. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(1)


def _init_worker(threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)


def _run_alone(threads: int, fn, args, kwargs):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


def _ranks(jobs: list[Job]) -> dict[str, float]:
    """Per job, its cost plus the largest rank among the jobs that depend on it: the work
    left on the longest chain that starts with it."""
    after: dict[str, list[str]] = {j.name: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            after[d].append(j.name)
    cost = {j.name: j.cost for j in jobs}
    rank: dict[str, float] = {}

    def of(name):
        if name not in rank:
            rank[name] = cost[name] + max((of(n) for n in after[name]), default=0.0)
        return rank[name]

    for j in jobs:
        of(j.name)
    return rank


def _order_check(jobs: list[Job]) -> None:
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    known = set(names)
    for j in jobs:
        missing = [d for d in j.deps if d not in known]
        if missing:
            raise ValueError(f"job {j.name!r} depends on unknown jobs {missing}")
    done: set[str] = set()
    todo = list(jobs)
    while todo:  # a dependency cycle leaves jobs that never become ready
        ready = [j for j in todo if set(j.deps) <= done]
        if not ready:
            raise ValueError(f"jobs {[j.name for j in todo]} depend on each other in a cycle")
        done |= {j.name for j in ready}
        todo = [j for j in todo if j.name not in done]


def run_jobs(jobs: list[Job], workers: int = 1, threads: int | None = None,
             log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run ``jobs`` respecting their ``deps``; returns ``{name: result}``.

    ``workers <= 1``: in this process, in dependency order, with this process's threads.
    Otherwise in ``workers`` spawned processes with ``threads`` threads each (default: this
    machine's cores split among the workers); a job marked ``alone`` starts once no other job
    runs, with ``workers * threads`` threads, and none starts beside it. Of the ready jobs the
    one with the largest rank starts first: its cost plus the largest rank among the jobs that
    depend on it (ties: in the order given). A job that raises stops the run: the jobs
    already started finish, none is started after it, and its exception is raised here.
    """
    _order_check(jobs)
    rank = _ranks(jobs)
    by_name = {j.name: j for j in jobs}
    results: dict[str, Any] = {}
    started: dict[str, float] = {}

    def ready(pending):
        out = [j for j in pending if set(j.deps) <= results.keys()]
        return sorted(out, key=lambda j: -rank[j.name])

    def note(msg):
        if log is not None:
            log(f"[{time.strftime('%H:%M:%S')}] {msg}")

    pending = list(jobs)
    if workers <= 1:
        while pending:
            j = ready(pending)[0]
            pending.remove(j)
            note(f"{j.name}: started")
            t = time.perf_counter()
            results[j.name] = j.fn(*j.args, **j.kwargs)
            note(f"{j.name}: done in {time.perf_counter() - t:.0f} s")
        return results

    import multiprocessing as mp

    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
        running = {}
        error = None
        while pending or running:
            if error is None and not any(by_name[n].alone for n in running.values()):
                for j in ready(pending):
                    if len(running) >= workers or (j.alone and running):
                        break  # a job to run alone waits for the running ones, and nothing starts before it
                    pending.remove(j)
                    started[j.name] = time.perf_counter()
                    n = threads * workers if j.alone else threads
                    note(f"{j.name}: started ({n} thread{'s' if n > 1 else ''}{', alone' if j.alone else ''})")
                    if j.alone:
                        running[pool.submit(_run_alone, n, j.fn, j.args, j.kwargs)] = j.name
                        break
                    running[pool.submit(j.fn, *j.args, **j.kwargs)] = j.name
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                    note(f"{name}: failed ({type(exc).__name__}: {exc})")
                    continue
                results[name] = fut.result()
                note(f"{name}: done in {time.perf_counter() - started[name]:.0f} s")
        if error is not None:
            raise error
    return results
