"""cascade-rt predict --ray: a local Ray (2 CPUs) gives every row once, with the local job's results."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_rt import CascadeBert
from cascade_rt.cli import main as cli_main
from cascade_rt.predict import BadRowError, RowChunk, predict_chunk, rejects_path, run_predict

ray = pytest.importorskip("ray")

WORDS = ("the a film plot acting good bad great boring long short fine dull, funny! script music ending "
         "cast loved hated never again worth it twice").split()
SHARDS, ROWS_PER_SHARD = 3, 700
SCORE_TOL = 2e-6  # the local job writes scores rounded to 6 decimals; batch make-up moves float32 by ~1e-7


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cascade_dir(tier_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "cascade"
    CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.6]).save_pretrained(path)
    return path


def _texts(n, seed):
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def jsonl_shards(tmp_path_factory):
    """SHARDS JSONL shards (named so that sorted order is not creation order) with bad rows in
    each, and the same rows concatenated into one file for the local job."""
    root = tmp_path_factory.mktemp("shards")
    shard_dir = root / "in"
    shard_dir.mkdir()
    texts = _texts(SHARDS * ROWS_PER_SHARD, 7)
    lines_all = []
    for s in range(SHARDS):
        lines = [json.dumps({"text": t}) for t in texts[s * ROWS_PER_SHARD:(s + 1) * ROWS_PER_SHARD]]
        lines[5 + s] = json.dumps({"text": None})
        lines[300 + s] = "not json"
        lines[500] = json.dumps({"text": 12})
        lines.insert(200, "")  # a blank line is not a row
        (shard_dir / f"part-{(s * 7) % SHARDS:02d}.jsonl").write_text("\n".join(lines) + "\n")
    for f in sorted(shard_dir.iterdir()):
        lines_all.append(f.read_text())
    (root / "all.jsonl").write_text("".join(lines_all))
    return shard_dir, root / "all.jsonl"


def _read_dir(path, fmt):
    import pyarrow.parquet as pq

    files = sorted(p for p in Path(path).iterdir() if p.is_file())
    assert files, f"no shards in {path}"
    if fmt == "parquet":
        return [r for f in files for r in pq.read_table(str(f)).to_pylist()]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def _same_results(got, expected):
    """got: rows from --ray; expected: the local job's rows. Every id once, same results."""
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)), "an id appears more than once"
    by_id = {str(r["id"]): r for r in got}
    assert set(by_id) == {str(r["id"]) for r in expected}
    for e in expected:
        g = by_id[str(e["id"])]
        assert (g["label"], int(g["exit_tier"])) == (e["label"], int(e["exit_tier"])), e["id"]
        assert abs(float(g["score"]) - float(e["score"])) <= SCORE_TOL, e["id"]


def test_ray_cli_equals_local_job_with_rejects(local_ray, cascade_dir, jsonl_shards, tmp_path, capsys):
    shard_dir, concat = jsonl_shards
    opts = ["--max-length", "64", "--max-batch-tokens", "512", "--on-bad-row", "skip"]
    local_out = tmp_path / "local.jsonl"
    assert cli_main(["predict", str(cascade_dir), str(concat), "-o", str(local_out), "--no-progress",
                     "--chunk-rows", "256"] + opts) == 0
    capsys.readouterr()
    out = tmp_path / "ray_out.parquet"
    assert cli_main(["predict", str(cascade_dir), str(shard_dir), "-o", str(out), "--ray", "--workers", "2",
                     "--chunk-rows", "300"] + opts) == 0
    said = capsys.readouterr().out
    n_rows, n_bad = SHARDS * ROWS_PER_SHARD, 3 * SHARDS
    assert f"{n_rows} rows from {SHARDS} file(s) -> {out}: {n_rows - n_bad} classified, {n_bad} rejected" in said
    assert "rows/s" in said and "exits: tier 0" in said
    expected = [json.loads(line) for line in local_out.read_text().splitlines()]
    assert len(expected) == n_rows - n_bad
    _same_results(_read_dir(out, "parquet"), expected)
    # rejects: the same rows, numbered over the sorted shards as one input, same columns and reasons
    local_rej = [json.loads(line) for line in rejects_path(local_out).read_text().splitlines()]
    ray_rej = sorted(_read_dir(tmp_path / "ray_out.rejects", "jsonl"), key=lambda r: r["row"])
    assert [(r["row"], r["id"], r["column"], r["reason"]) for r in ray_rej] == \
        [(r["row"], r["id"], r["column"], r["reason"]) for r in local_rej]
    # and the line within its own shard
    assert {r["line"] for r in ray_rej} == {6, 7, 8, 302, 303, 304, 502}
    # a second run refuses to overwrite without --overwrite
    assert cli_main(["predict", str(cascade_dir), str(shard_dir), "-o", str(out), "--ray"] + opts) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_bad_row_fails_the_ray_job_naming_file_row_and_column(local_ray, cascade_dir, tmp_path, capsys):
    from cascade_rt.ray import run_ray_predict

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"k": f"a{i}", "text": t}) + "\n"
                                         for i, t in enumerate(_texts(5, 1))))
    (src / "b.jsonl").write_text('{"k": "b0", "text": "fine"}\n{"k": "b1", "text": null}\n')
    with pytest.raises(BadRowError, match=r"b\.jsonl: bad input row: row 1 \(line 2\), column 'text': null value"):
        run_ray_predict(cascade_dir, src, tmp_path / "o.parquet", id_column="k", max_length=64, batch_size=4,
                        chunk_rows=4)
    csv_src = tmp_path / "short.csv"
    csv_src.write_text("id,text\n1,ok\n2\n")
    rc = cli_main(["predict", str(cascade_dir), str(csv_src), "-o", str(tmp_path / "o2.jsonl"), "--ray",
                   "--max-length", "64"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cascade-rt predict: error: ")
    assert "short.csv: bad input row: row 1 (line 3), column 'text': the row has no such field" in err[-1]


def test_predictor_takes_pandas_arrow_and_numpy_batches_without_ray(cascade_dir):
    """The callable class alone (no Ray): every batch format gives predict_chunk's results, ids
    being the batch's row numbers (or its id column), rejects after the classified rows."""
    import pandas as pd
    import pyarrow as pa

    from cascade_rt.ray import ROW, CascadePredictor

    rows = list(range(1000, 1037))
    texts = _texts(37, 5)
    texts[3], texts[20] = None, 4.5
    df = pd.DataFrame({"text": texts, "doc": [f"d{r}" for r in rows], ROW: rows})
    arrow_df = df.assign(text=[None if k == 20 else t for k, t in enumerate(texts)])  # Arrow: one type a column
    float_reason = "float value 4.5, not a string"
    cases = [(df, float_reason), ({c: df[c].to_numpy() for c in df}, float_reason),
             (pa.Table.from_pandas(arrow_df, preserve_index=False), "null value")]
    for id_column in (None, "doc"):
        pred = CascadePredictor(cascade_dir, id_column=id_column, on_bad_row="skip", max_length=64,
                                max_batch_tokens=512)
        exp = predict_chunk(pred.clf, RowChunk(rows, None, texts, id=list(df["doc"]) if id_column else None),
                            id_column=id_column, on_bad_row="skip")
        n = len(exp.ids)
        assert n == 35
        for batch, reason in cases:
            out = pred(batch)
            assert len(out["id"]) == 37
            assert list(out["id"][:n]) == exp.ids
            assert list(out["label"][:n]) == exp.labels
            assert list(out["exit_tier"][:n]) == list(exp.exit_tier)
            assert list(out["score"][:n]) == list(exp.scores)  # the same batch: the same arithmetic
            assert list(out["row"]) == [r for r in rows if r not in (1003, 1020)] + [1003, 1020]
            assert list(out["id"][n:]) == ([1003, 1020] if id_column is None else ["d1003", "d1020"])
            assert list(out["reject_reason"][n:]) == ["null value", reason]
            assert all(r is None for r in out["reject_reason"][:n]) and list(out["exit_tier"][n:]) == [-1, -1]


# -- a worker that dies mid-job -----------------------------------------------------------------

def _dying_class(marker):
    """A CascadePredictor whose actor exits its process on the first batch holding a doc >= 900
    (once: the marker file remembers). Defined in a function, so Ray pickles it by value."""
    from cascade_rt.ray import CascadePredictor

    class Dying(CascadePredictor):
        def __call__(self, batch):
            if max(batch["doc"]) >= 900 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return super().__call__(batch)

    return Dying


@pytest.mark.slow  # about a minute on 2 loaded cores: four shards, two actors, one of them killed
def test_a_dead_worker_is_replaced_and_its_batch_redone(local_ray, cascade_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cascade_rt.ray import run_ray_predict

    texts = _texts(1200, 3)
    src = tmp_path / "in"
    src.mkdir()
    for s in range(4):
        part = slice(s * 300, (s + 1) * 300)
        pq.write_table(pa.table({"doc": list(range(s * 300, (s + 1) * 300)), "text": texts[part]}),
                       str(src / f"{s}.parquet"), row_group_size=128)
    pq.write_table(pa.table({"doc": list(range(1200)), "text": texts}), str(tmp_path / "all.parquet"))
    marker = tmp_path / "died"
    out = tmp_path / "out.jsonl"
    s = run_ray_predict(cascade_dir, src, out, id_column="doc", workers=2, batch_size=150, chunk_rows=150,
                        max_length=64, max_batch_tokens=512, predictor_cls=_dying_class(str(marker)))
    assert marker.exists(), "no worker died: the test did not test anything"
    assert (s.rows, s.classified, s.rejected) == (1200, 1200, 0)
    import cascade_rt

    clf = cascade_rt.pipeline(cascade_dir, max_length=64, max_batch_tokens=512)
    run_predict(clf, cascade_dir, tmp_path / "all.parquet", tmp_path / "local.jsonl", id_column="doc",
                progress=False)
    expected = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    got = _read_dir(out, "jsonl")
    assert all(isinstance(r["id"], int) for r in got)  # an integer Parquet id column stays integer
    _same_results(got, expected)


# -- without Ray ---------------------------------------------------------------------------------

def test_without_ray_one_error_says_how_to_install(cascade_dir, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    rc = cli_main(["predict", str(cascade_dir), str(src), "-o", str(tmp_path / "o"), "--ray"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cascade-rt predict: error: Ray is not installed; install the extra with: "
                   "pip install cascade_rt[ray]"]


def test_import_cascade_rt_never_imports_ray():
    code = "import sys, cascade_rt, cascade_rt.ray, cascade_rt.predict.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
