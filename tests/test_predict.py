"""cascade-rt predict: every row once, in order, in every format; bad rows stop or go to rejects."""
import csv
import json

import pytest

import cascade_rt
from cascade_rt import CascadeBert
from cascade_rt.cli import main as cli_main
from cascade_rt.predict import (MISSING, BadRowError, InputFileError, JobError, RowChunk, predict_chunk,
                                read_chunks, rejects_path, run_predict, validate)

TRICKY = [
    "plain text",
    "a, b, and c: commas inside",
    'she said "no", twice',
    "first line\nsecond line, after a newline\r\nthird",
    "naïve café, déjà vu — 日本語のテキスト 🙂",
    "",
    "  leading and trailing spaces  ",
    "word " * 300,  # longer than max_length below: truncated, not an error
]


@pytest.fixture(scope="module")
def cascade_dir(tier_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "cascade"
    CascadeBert.from_pretrained([tier_dirs[1], tier_dirs[2]], thresholds=[0.6]).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clf(cascade_dir):
    return cascade_rt.pipeline(cascade_dir, max_length=64, max_batch_tokens=256)


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _expected(clf, texts, ids=None, chunk_rows=None):
    """What the pipeline gives each chunk (the job flushes the survivor queue at a chunk's end)."""
    step = chunk_rows or max(len(texts), 1)
    res = [r for k in range(0, len(texts), step) for r in clf(texts[k:k + step])]
    ids = list(range(len(texts))) if ids is None else ids
    return [{"id": str(i), "label": r["label"], "score": str(round(r["score"], 6)), "exit_tier": str(r["exit_tier"])}
            for i, r in zip(ids, res)]


def test_cli_csv_with_quotes_newlines_unicode_and_empty(cascade_dir, clf, tmp_path, capsys):
    src = tmp_path / "in.csv"
    texts = TRICKY * 3
    ids = [f'id {i}, "quoted"\nnext line é' for i in range(len(texts))]  # the writer must quote these
    _write_csv(src, ["text", "note"], list(zip(texts, ids)))
    out = tmp_path / "out.csv"
    rc = cli_main(["predict", str(cascade_dir), str(src), "--output", str(out), "--chunk-rows", "5",
                   "--id-column", "note", "--max-length", "64", "--max-batch-tokens", "256", "--no-progress"])
    assert rc == 0
    rows = _read_csv(out)
    assert rows == _expected(clf, texts, ids, chunk_rows=5)
    said = capsys.readouterr().out
    assert f"{len(texts)} rows -> {out}: {len(texts)} classified, 0 rejected, 3 truncated" in said
    assert "exits: tier 0" in said and "rows/s" in said
    assert not (tmp_path / "out.csv.progress.json").exists()


@pytest.mark.parametrize("in_fmt,out_fmt", [("csv", "parquet"), ("jsonl", "csv"), ("parquet", "jsonl")])
def test_every_format_in_and_out(cascade_dir, clf, tmp_path, in_fmt, out_fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = TRICKY[:6] * 2
    ids = [f"doc-{i}" for i in range(len(texts))]
    src = tmp_path / f"in.{in_fmt}"
    if in_fmt == "csv":
        _write_csv(src, ["doc", "text"], list(zip(ids, texts)))
    elif in_fmt == "jsonl":
        src.write_text("".join(json.dumps({"doc": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    else:
        pq.write_table(pa.table({"doc": ids, "text": texts}), str(src), row_group_size=5)
    out = tmp_path / f"out.{out_fmt}"
    run_predict(clf, cascade_dir, src, out, id_column="doc", chunk_rows=4, progress=False)
    if out_fmt == "csv":
        got = _read_csv(out)
    elif out_fmt == "jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        got = pq.read_table(str(out)).to_pylist()
    exp = _expected(clf, texts, ids, chunk_rows=4)
    assert [r["id"] for r in got] == ids
    assert [r["label"] for r in got] == [e["label"] for e in exp]
    assert [int(r["exit_tier"]) for r in got] == [int(e["exit_tier"]) for e in exp]
    # both are written to 6 decimals; rounding them again to 5 would turn a last-place
    # difference at a half-way point into a 1e-5 one, so compare at the precision written
    assert all(abs(float(r["score"]) - float(e["score"])) <= 2e-6 for r, e in zip(got, exp, strict=True))


def test_bad_rows_stop_the_run_naming_row_and_column(cascade_dir, clf, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    lines = ['{"text": "fine"}', '{"text": "also fine"}', '{"text": null}', '{"text": 7}']
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRowError, match=r"row 2 \(line 3\), column 'text': null value"):
        run_predict(clf, cascade_dir, src, tmp_path / "o.csv", progress=False)
    rc = cli_main(["predict", str(cascade_dir), str(src), "-o", str(tmp_path / "o2.csv"), "--no-progress"])
    assert rc == 2
    assert "row 2 (line 3), column 'text': null value" in capsys.readouterr().err
    csv_src = tmp_path / "short.csv"
    csv_src.write_text("id,text\n1,ok\n2\n")
    with pytest.raises(BadRowError, match=r"row 1 \(line 3\), column 'text': the row has no such field"):
        run_predict(clf, cascade_dir, csv_src, tmp_path / "o3.csv", progress=False)


def test_skip_writes_every_bad_row_to_rejects(cascade_dir, clf, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = ['{"text": "good one", "k": "a"}', '{"text": null, "k": "b"}', '{"other": "x", "k": "c"}',
             '{"text": 3.5, "k": "d"}', 'not json at all', '[1, 2]', '', '{"text": "", "k": "g"}',
             '{"text": "fine", "k": null}', '{"text": "last", "k": "i"}']
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    s = run_predict(clf, cascade_dir, src, out, id_column="k", on_bad_row="skip", chunk_rows=3, progress=False)
    got = _read_csv(out)
    assert [r["id"] for r in got] == ["a", "g", "i"]
    rej = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [(r["row"], r["line"], r["id"], r["column"]) for r in rej] == [
        (1, 2, "b", "text"), (2, 3, "c", "text"), (3, 4, "d", "text"), (4, 5, None, "text"),
        (5, 6, None, "text"), (7, 9, None, "k")]
    reasons = [r["reason"] for r in rej]
    assert reasons[0] == "null value" and reasons[1] == "the row has no such field"
    assert "float value 3.5, not a string" in reasons[2] and "not valid JSON" in reasons[3]
    assert "a JSON list, not an object" in reasons[4] and reasons[5] == "null value"
    assert (s.rows, s.classified, s.rejected) == (9, 3, 6)  # the blank line is not a row
    assert any(f"rejected rows (6)" in line and str(rejects_path(out)) in line for line in s.lines())


def test_file_level_errors(cascade_dir, clf, tmp_path):
    src = tmp_path / "in.csv"
    _write_csv(src, ["body"], [["x"]])
    with pytest.raises(InputFileError, match=r"no column 'text' in the header \(columns: \['body'\]\)"):
        run_predict(clf, cascade_dir, src, tmp_path / "o.csv", progress=False)
    _write_csv(src, ["text"], [["x"]])
    out = tmp_path / "o.csv"
    run_predict(clf, cascade_dir, src, out, progress=False)
    with pytest.raises(JobError, match="exists; pass --overwrite"):
        run_predict(clf, cascade_dir, src, out, progress=False)
    with pytest.raises(JobError, match="nothing to resume"):
        run_predict(clf, cascade_dir, src, out, resume=True, progress=False)
    run_predict(clf, cascade_dir, src, out, overwrite=True, progress=False)
    with pytest.raises(InputFileError, match="cannot tell the format"):
        run_predict(clf, cascade_dir, src, tmp_path / "o.txt", progress=False)


def test_validate_is_the_one_judge():
    chunk = RowChunk(rows=[0, 1, 2, 3, 4], lines=None, text=["a", "", None, MISSING, float("nan")],
                     pair=["b", 5, "c", "d", "e"])
    good, rejects = validate(chunk, "text", "second")
    assert good == [0]
    assert [(r.row, r.column) for r in rejects] == [(1, "second"), (2, "text"), (3, "text"), (4, "text")]
    assert rejects[2].message() == "row 3, column 'text': the row has no such field"


def test_predict_chunk_reusable(clf):
    chunk = RowChunk(rows=[10, 11, 12], lines=None, text=["x", None, "z"], id=["p", "q", "r"])
    res = predict_chunk(clf, chunk, id_column="id", on_bad_row="skip")
    assert res.ids == ["p", "r"] and len(res.labels) == 2 and [r.id for r in res.rejects] == ["q"]
    with pytest.raises(BadRowError, match="row 11, column 'text'"):
        predict_chunk(clf, chunk, id_column="id")


def test_read_chunks_exact_sizes(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)))
    sizes = [len(c) for c in read_chunks(src, "jsonl", "text", chunk_rows=4)]
    assert sizes == [4, 4, 2]
    assert [c.rows for c in read_chunks(src, "jsonl", "text", chunk_rows=4, skip_rows=8)] == [[8, 9]]
