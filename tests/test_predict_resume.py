"""cascade-rt predict --resume: after a kill, the output equals an uninterrupted run, byte for byte."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import cascade_rt
from cascade_rt import CascadeBert
from cascade_rt.predict import job as job_mod
from cascade_rt.predict import rejects_path, run_predict


@pytest.fixture(scope="module")
def cascade_dir(tier_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "cascade"
    CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.6]).save_pretrained(path)
    return path


def _input(path, n):
    # every 37th row is bad (null text), so the rejects file is resumed too
    lines = [json.dumps({"text": None if i % 37 == 5 else f"review {i}: {'good' if i % 3 else 'bad, really'} film"})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigkill_mid_run_then_resume_equals_uninterrupted(cascade_dir, tmp_path):
    src = _input(tmp_path / "in.jsonl", 1500)
    args = [str(cascade_dir), str(src), "--chunk-rows", "50", "--on-bad-row", "skip", "--no-progress"]
    ref_out = tmp_path / "ref.csv"
    clf = cascade_rt.pipeline(cascade_dir)
    run_predict(clf, cascade_dir, src, ref_out, chunk_rows=50, on_bad_row="skip", progress=False)

    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "cascade_rt.cli", "predict", *args, "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prog = out.with_name(out.name + ".progress.json")
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads(prog.read_text())["rows_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 100:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 100 <= json.loads(prog.read_text())["rows_done"] < 1500

    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resumed at row" in res.stdout
    assert out.read_bytes() == ref_out.read_bytes()
    assert rejects_path(out).read_bytes() == rejects_path(ref_out).read_bytes()
    assert not prog.exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_torn_chunk_is_cut_back_on_resume(cascade_dir, tmp_path, monkeypatch, fmt):
    """A crash after a chunk was partly written (before its progress record) loses nothing."""
    import pyarrow.parquet as pq

    src = _input(tmp_path / "in.jsonl", 120)
    clf = cascade_rt.pipeline(cascade_dir)
    ref = tmp_path / f"ref.{fmt}"
    run_predict(clf, cascade_dir, src, ref, chunk_rows=25, on_bad_row="skip", progress=False)

    out = tmp_path / f"out.{fmt}"
    real = job_mod._write_progress
    calls = {"n": 0}

    def crash_in_last_chunk(path, state):
        if state["chunks_done"] == 5:
            raise KeyboardInterrupt("power cut")  # the last chunk (rows 100-119) is written but not recorded
        calls["n"] += 1
        real(path, state)

    monkeypatch.setattr(job_mod, "_write_progress", crash_in_last_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_predict(clf, cascade_dir, src, out, chunk_rows=25, on_bad_row="skip", progress=False)
    monkeypatch.setattr(job_mod, "_write_progress", real)
    if fmt == "csv":
        with open(out, "ab") as f:
            f.write(b"999,torn,0.5")  # half a row written when the power went
    with pytest.raises(job_mod.JobError, match="pass --resume"):
        run_predict(clf, cascade_dir, src, out, chunk_rows=25, on_bad_row="skip", progress=False)
    with pytest.raises(job_mod.JobError, match="chunk_rows changed"):
        run_predict(clf, cascade_dir, src, out, chunk_rows=30, on_bad_row="skip", progress=False, resume=True)
    clf.model.set_pool_weight(0.5)  # a pooling cascade decides differently: no resume either
    with pytest.raises(job_mod.JobError, match="pool_weight changed"):
        run_predict(clf, cascade_dir, src, out, chunk_rows=25, on_bad_row="skip", progress=False, resume=True)
    clf.model.set_pool_weight(0.0)
    if fmt == "csv":  # an output cut shorter than the record cannot be resumed
        whole = out.read_bytes()
        out.write_bytes(whole[:10])
        with pytest.raises(job_mod.JobError, match="changed or lost since"):
            run_predict(clf, cascade_dir, src, out, chunk_rows=25, on_bad_row="skip", progress=False, resume=True)
        out.write_bytes(whole)
    s = run_predict(clf, cascade_dir, src, out, chunk_rows=25, on_bad_row="skip", progress=False, resume=True)
    assert s.resumed_from_row == 100
    if fmt == "csv":
        assert out.read_bytes() == ref.read_bytes()
    else:
        assert pq.read_table(str(out)).to_pylist() == pq.read_table(str(ref)).to_pylist()
        assert not out.with_name(out.name + ".parts").exists()
    assert rejects_path(out).read_bytes() == rejects_path(ref).read_bytes()
