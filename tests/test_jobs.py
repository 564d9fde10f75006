"""cascade_rt.train.jobs: training jobs with dependencies, inline or in worker processes."""
import time
from pathlib import Path

import pytest

from cascade_rt.train.jobs import Job, run_jobs


def _write(path, needs=(), delay=0.0):
    """Writes ``path`` after checking every file in ``needs`` exists (its dependencies ran)."""
    missing = [n for n in needs if not Path(n).is_file()]
    if missing:
        raise AssertionError(f"ran before {missing}")
    time.sleep(delay)
    Path(path).write_text(str(time.time()))
    return Path(path).name


def _span(path, seconds):
    """Sleeps ``seconds``; writes its start and end time to ``path``."""
    start = time.time()
    time.sleep(seconds)
    Path(path).write_text(f"{start} {time.time()}")


def _threads():
    import torch

    return torch.get_num_threads()


def _fail(msg):
    raise RuntimeError(msg)


def _graph(tmp_path, delay=0.0):
    f = {k: str(tmp_path / k) for k in "abcde"}
    return f, [
        Job("e", _write, (f["e"], [f["c"], f["d"]]), deps=("c", "d"), cost=9),  # listed first, runs last
        Job("a", _write, (f["a"], [], delay), cost=1),
        Job("b", _write, (f["b"], [], delay), cost=5),
        Job("c", _write, (f["c"], [f["a"]]), deps=("a",)),
        Job("d", _write, (f["d"], [f["a"], f["b"]]), deps=("a", "b")),
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_their_dependencies(tmp_path, workers):
    f, jobs = _graph(tmp_path)
    lines = []
    res = run_jobs(jobs, workers=workers, threads=1, log=lines.append)
    assert res == {k: k for k in "abcde"}
    assert all(Path(p).is_file() for p in f.values())
    assert sum("done" in x for x in lines) == 5
    if workers == 1:  # ready jobs by cost, largest first: b before a
        assert [x.split("] ")[1].split(":")[0] for x in lines if "started" in x] == ["b", "a", "c", "d", "e"]


def test_workers_run_side_by_side_with_their_threads(tmp_path):
    f = [tmp_path / f"{i}" for i in range(2)]
    run_jobs([Job(str(i), _span, (f[i], 2.0)) for i in range(2)], workers=2, threads=1, log=None)
    (s0, e0), (s1, e1) = ([float(x) for x in p.read_text().split()] for p in f)
    assert max(s0, s1) < min(e0, e1)  # the two jobs overlapped in time
    assert run_jobs([Job("t", _threads)], workers=2, threads=1, log=None) == {"t": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_stops_the_run(tmp_path, workers):
    jobs = [Job("bad", _fail, ("no data",), cost=9), Job("after", _write, (str(tmp_path / "x"),), deps=("bad",))]
    with pytest.raises(RuntimeError, match="no data"):
        run_jobs(jobs, workers=workers, log=None)
    assert not (tmp_path / "x").exists()


def test_bad_job_graphs_are_refused():
    with pytest.raises(ValueError, match="unknown jobs"):
        run_jobs([Job("a", _threads, deps=("z",))], log=None)
    with pytest.raises(ValueError, match="cycle"):
        run_jobs([Job("a", _threads, deps=("b",)), Job("b", _threads, deps=("a",))], log=None)
    with pytest.raises(ValueError, match="unique"):
        run_jobs([Job("a", _threads), Job("a", _threads)], log=None)


def _span_threads(path, seconds):
    """``_span`` that also records the threads it ran with."""
    _span(path, seconds)
    Path(path).write_text(Path(path).read_text() + f" {_threads()}")


def test_a_job_alone_has_every_thread_and_nothing_beside_it(tmp_path):
    f = {k: tmp_path / k for k in ("big", "x", "y")}
    jobs = [Job("x", _span_threads, (f["x"], 1.0), cost=1),
            Job("big", _span_threads, (f["big"], 1.5), cost=5, alone=True),
            Job("y", _span_threads, (f["y"], 1.0), deps=("big",))]
    lines = []
    run_jobs(jobs, workers=2, threads=1, log=lines.append)
    (sb, eb, tb), (sx, ex, tx), (sy, ey, ty) = ([float(v) for v in f[k].read_text().split()] for k in ("big", "x", "y"))
    assert (tb, tx, ty) == (2, 1, 1)  # alone: both workers' threads; the others one each
    assert eb <= sx or ex <= sb  # x never overlapped it
    assert sb < sx  # the larger rank first (big, and y after it), then x
    assert sy >= eb
    assert any("big: started (2 threads, alone)" in x for x in lines)
    assert run_jobs([Job("t", _threads, alone=True)], workers=2, threads=1, log=None) == {"t": 2}
    # inline (one worker) it simply runs with this process's threads
    assert run_jobs([Job("t", _threads, alone=True)], workers=1, log=None)["t"] >= 1


def test_longest_chain_first():
    from cascade_rt.train.jobs import _ranks

    jobs = [Job("big", _threads, cost=8), Job("folds", _threads, cost=4), Job("dao", _threads, deps=("folds",), cost=4),
            Job("l4", _threads, cost=6), Job("heads", _threads, deps=("big",), cost=1)]
    assert _ranks(jobs) == {"big": 9, "folds": 8, "dao": 4, "l4": 6, "heads": 1}


def _pid_then_sleep(path, seconds):
    """Writes this worker's pid to ``path``, then sleeps ``seconds``."""
    import os

    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux only (PR_SET_PDEATHSIG)")
def test_workers_end_when_the_run_is_killed(tmp_path):
    """A run killed from outside (SIGKILL: a timeout, the OOM killer) takes its workers with
    it instead of leaving them training into the cache."""
    import os
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "pid"
    code = ("from cascade_rt.train.jobs import Job, run_jobs; import tests.test_jobs as t; "
            f"run_jobs([Job('a', t._pid_then_sleep, ({str(pid_file)!r}, 120)), Job('b', t._span, "
            f"({str(tmp_path / 'b')!r}, 120))], workers=2, threads=1, log=None)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=str(Path(__file__).parent.parent))
    try:
        deadline = time.time() + 120
        while not pid_file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        assert pid_file.is_file(), "the worker never started"
        time.sleep(0.2)
        worker = int(pid_file.read_text())
        os.kill(worker, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            # a worker killed but not yet reaped by init still answers; its state says so
            try:
                if Path(f"/proc/{worker}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            raise AssertionError("the worker outlived the killed run")
    finally:
        if parent.poll() is None:
            parent.kill()
