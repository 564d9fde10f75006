"""Streaming readers (CSV, JSONL, Parquet) into :class:`RowChunk` objects, and writers that
append one chunk at a time and can be cut back to the last finished chunk (``--resume``).

CSV is read and written with the standard library's ``csv`` module (RFC 4180 quoting: commas,
quotes and newlines inside quoted fields), UTF-8 (a byte-order mark is dropped). A blank line
is not a row. An empty field is the empty string. JSONL: one JSON object per line, blank lines
skipped. Parquet through ``pyarrow``, one record batch at a time.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator

from .rows import MISSING, RowChunk

__all__ = ["FORMATS", "InputFileError", "detect_format", "read_chunks", "count_rows", "open_writer",
           "RejectsWriter", "fsync_dir"]

FORMATS = ("csv", "jsonl", "parquet")
_EXT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
        ".pq": "parquet"}


class InputFileError(ValueError):
    """The input file as a whole cannot be read as asked (no such column, not UTF-8, ...)."""


def detect_format(path, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise InputFileError(f"unknown format {given!r}; use one of {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix not in _EXT:
        raise InputFileError(f"{path}: cannot tell the format from the extension {suffix!r}; "
                             f"name it .csv, .jsonl or .parquet, or pass --input-format/--output-format")
    return _EXT[suffix]


# -- readers: one tuple per row ----------------------------------------------------------------
# (row number, line or None, {column: value or MISSING}, problem or None)

def _csv_rows(path: Path, columns: list[str]):
    f = open(path, newline="", encoding="utf-8-sig")
    try:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InputFileError(f"{path}: empty file (a CSV input needs a header row)") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputFileError(f"{path}: no column {missing[0]!r} in the header (columns: {header})")
        index = {c: header.index(c) for c in columns}
        row, line = 0, reader.line_num + 1
        for rec in reader:
            start, line = line, reader.line_num + 1
            if not rec:
                continue  # a blank line
            values = {c: (rec[i] if i < len(rec) else MISSING) for c, i in index.items()}
            problem = (f"the row has {len(rec)} fields but the header has {len(header)}"
                       if len(rec) > len(header) else None)
            yield row, start, values, problem
            row += 1
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise InputFileError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
    finally:
        f.close()


def _jsonl_rows(path: Path, columns: list[str]):
    with open(path, "rb") as f:
        row = 0
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield row, line_no, {c: MISSING for c in columns}, f"not UTF-8 text ({exc.reason})"
                row += 1
                continue
            if line_no == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield row, line_no, {c: MISSING for c in columns}, f"not valid JSON ({exc.msg})"
            else:
                if isinstance(obj, dict):
                    yield row, line_no, {c: obj.get(c, MISSING) for c in columns}, None
                else:
                    yield row, line_no, {c: MISSING for c in columns}, \
                        f"a JSON {type(obj).__name__}, not an object"
            row += 1


def _parquet_rows(path: Path, columns: list[str], batch_rows: int):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:
        raise InputFileError(f"{path}: not a Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputFileError(f"{path}: no column {missing[0]!r} (columns: {names})")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(columns))):
        cols = {c: batch.column(c).to_pylist() for c in dict.fromkeys(columns)}
        for k in range(batch.num_rows):
            yield row, None, {c: cols[c][k] for c in columns}, None
            row += 1


def count_rows(path, fmt: str) -> int | None:
    """Rows in the input when that is cheap to know (Parquet metadata), else None."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(str(path)).metadata.num_rows
        except Exception:
            return None
    return None


def read_chunks(path, fmt: str, text_column: str, pair_column: str | None = None,
                id_column: str | None = None, chunk_rows: int = 4096, skip_rows: int = 0) -> Iterator[RowChunk]:
    """The input in chunks of exactly ``chunk_rows`` rows (the last one shorter), after skipping
    the first ``skip_rows`` rows; chunk boundaries do not depend on ``skip_rows`` when it is a
    multiple of ``chunk_rows``. File-level problems (no such file or column) raise
    :class:`InputFileError` here, before any row is read."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    columns = [text_column] + [c for c in (pair_column, id_column) if c is not None]
    if fmt == "csv":
        rows = _csv_rows(path, columns)
    elif fmt == "jsonl":
        rows = _jsonl_rows(path, columns)
    else:
        rows = _parquet_rows(path, columns, chunk_rows)
    first = next(rows, None)  # runs the header / schema checks now
    return _chunks(first, rows, fmt, text_column, pair_column, id_column, chunk_rows, skip_rows)


def _chunks(first, rows, fmt, text_column, pair_column, id_column, chunk_rows, skip_rows) -> Iterator[RowChunk]:
    import itertools

    rows = itertools.chain([first] if first is not None else [], rows)

    def empty() -> RowChunk:
        return RowChunk([], [] if fmt != "parquet" else None, [], [] if pair_column else None,
                        [] if id_column else None, [])

    chunk = empty()
    for row, line, values, problem in rows:
        if row < skip_rows:
            continue
        chunk.rows.append(row)
        if chunk.lines is not None:
            chunk.lines.append(line)
        chunk.text.append(values[text_column])
        if chunk.pair is not None:
            chunk.pair.append(values[pair_column])
        if chunk.id is not None:
            chunk.id.append(values[id_column])
        chunk.problem.append(problem)
        if len(chunk) == chunk_rows:
            yield chunk
            chunk = empty()
    if len(chunk):
        yield chunk


# -- writers -------------------------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _AppendFile:
    """A file cut back to ``start_bytes`` and appended to; :meth:`commit` makes it durable and
    returns its size (what a later resume cuts back to)."""

    def __init__(self, path: Path, start_bytes: int):
        self.path = path
        mode = "r+b" if path.exists() else "w+b"
        self.f = open(path, mode)
        self.f.truncate(start_bytes)
        self.f.seek(start_bytes)
        self.size = start_bytes

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.size += len(data)

    def commit(self) -> int:
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.size

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


class CsvWriter(_AppendFile):
    HEADER = ("id", "label", "score", "exit_tier")

    def __init__(self, path: Path, start_bytes: int):
        super().__init__(path, start_bytes)
        if start_bytes == 0:
            self._write_rows([self.HEADER])

    def _write_rows(self, rows) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows(rows)
        self.write(buf.getvalue().encode("utf-8"))

    def write_chunk(self, index: int, ids, labels, scores, tiers) -> None:
        self._write_rows(zip(ids, labels, (_score(s) for s in scores), (int(t) for t in tiers)))

    def finish(self) -> None:
        self.close()


class JsonlWriter(_AppendFile):
    def write_chunk(self, index: int, ids, labels, scores, tiers) -> None:
        lines = [json.dumps({"id": i, "label": lab, "score": _score(s), "exit_tier": int(t)}, ensure_ascii=False)
                 for i, lab, s, t in zip(ids, labels, scores, tiers)]
        if lines:
            self.write(("\n".join(lines) + "\n").encode("utf-8"))

    def finish(self) -> None:
        self.close()


def _score(s) -> float:
    return round(float(s), 6)


class ParquetWriter:
    """Each chunk becomes ``<output>.parts/part-<k>.parquet`` (written whole, then renamed);
    :meth:`finish` streams the parts, one row group each, into the output file."""

    def __init__(self, path: Path, chunks_done: int, id_type: str):
        import pyarrow as pa

        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.parts.mkdir(exist_ok=True)
        for p in self.parts.glob("part-*.parquet"):
            if int(p.stem.split("-")[1]) >= chunks_done:
                p.unlink()  # a chunk that did not finish before the interruption
        for p in self.parts.glob("*.tmp"):
            p.unlink()
        self.schema = pa.schema([("id", pa.int64() if id_type == "int" else pa.string()),
                                 ("label", pa.string()), ("score", pa.float32()), ("exit_tier", pa.int64())])
        self.id_type = id_type

    def write_chunk(self, index: int, ids, labels, scores, tiers) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.id_type != "int":
            ids = [str(i) for i in ids]
        table = pa.Table.from_pydict({"id": list(ids), "label": list(labels), "score": list(map(float, scores)),
                                      "exit_tier": [int(t) for t in tiers]}, schema=self.schema)
        final = self.parts / f"part-{index:08d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.parts)

    def commit(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def finish(self) -> None:
        import pyarrow.parquet as pq

        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(str(tmp), self.schema) as w:
            for p in sorted(self.parts.glob("part-*.parquet")):
                t = pq.read_table(str(p))
                if t.num_rows:
                    w.write_table(t)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def cleanup(self) -> None:
        for p in self.parts.glob("*"):
            p.unlink()
        self.parts.rmdir()


def open_writer(path: Path, fmt: str, start_bytes: int, chunks_done: int, id_type: str):
    if fmt == "csv":
        return CsvWriter(path, start_bytes)
    if fmt == "jsonl":
        return JsonlWriter(path, start_bytes)
    return ParquetWriter(path, chunks_done, id_type)


class RejectsWriter(_AppendFile):
    """``<output stem>.rejects.jsonl``: one JSON object per rejected row."""

    def write_rejects(self, rejects) -> None:
        for r in rejects:
            self.write((json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n").encode("utf-8"))
