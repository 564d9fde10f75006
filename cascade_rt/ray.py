"""The predict job on Ray Data: the same rows, checks and cascade as ``cascade-rt predict``, spread
over an actor pool (``pip install cascade_rt[ray]``).

Two public pieces, usable in any Ray Data pipeline:

* :func:`read_rows`: a ``ray.data.Dataset`` of the raw rows of CSV, JSONL or Parquet files (or
  directories of such shards), read by the local job's own readers, one Ray task per file, so a
  row is numbered and judged exactly as the local job would (blank lines skipped, an unparsable
  JSON line or a short CSV row kept as a bad row, not a read error).
* :class:`CascadePredictor`: the callable class for ``Dataset.map_batches(...,
  compute=ray.data.ActorPoolStrategy(size=N))``. It loads the cascade once per actor and classifies
  each batch with :func:`~cascade_rt.predict.job.predict_chunk` (validation, then the survivor
  queue of :meth:`CascadeBert.stream` across the batch's token-budget sub-batches). It returns one
  row per input row: ``id``, ``label``, ``score``, ``exit_tier``, ``path``, ``row`` and, for a bad
  row under ``on_bad_row="skip"``, the reject record (``line``, ``reject_column``,
  ``reject_reason``; null or -1 on classified rows).

:func:`run_ray_predict` is the job behind ``cascade-rt predict --ray``.

Row ids without an id column: the row number of the row in the input as the local job counts
it; for several files, the files in sorted path order are taken as one input (the row number
of a row of the k-th file is its number in that file plus the rows of the files before it).

``import cascade_rt`` never imports Ray; this module imports it only when a function runs.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .predict.io import InputFileError, detect_format, read_chunks
from .predict.job import JobError, predict_chunk
from .predict.rows import MISSING, BadRowError, Reject, RowChunk

__all__ = ["RAY_MISSING", "RayNotInstalledError", "require_ray", "input_files", "read_rows",
           "CascadePredictor", "RaySummary", "run_ray_predict", "ROW", "LINE", "PATH", "PROBLEM"]

#: the one error when Ray is not installed
RAY_MISSING = "Ray is not installed; install the extra with: pip install cascade_rt[ray]"

# columns that read_rows adds beside the raw text/pair/id columns
PATH = "__path"  # the file the row comes from
ROW = "__row"  # the row's number in that file (0-based, as the local job counts)
LINE = "__line"  # the 1-based line where the row starts (CSV, JSONL), else null
PROBLEM = "__problem"  # why the reader could not read the row at all (invalid JSON, ...), else null
_MISSING_PREFIX = "__missing__"  # __missing__<column>: the row has no such field (not even null)

_SHARD_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


class RayNotInstalledError(ImportError):
    """``--ray`` (or this module's functions) without Ray installed."""


def require_ray():
    """The ``ray`` module, with ``ray.data`` imported; :class:`RayNotInstalledError` without it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayNotInstalledError(RAY_MISSING) from None
    return ray


# -- input -------------------------------------------------------------------------------------

def input_files(inputs, input_format: str | None = None) -> tuple[list[str], str]:
    """The input shard paths in sorted order and their one format.

    ``inputs``: a path or list of paths, each a file or a directory (its files with a known
    extension, hidden files and ``_``-prefixed files such as ``_SUCCESS`` skipped).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = [f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_"))]
            if input_format is None:
                found = [f for f in found if f.suffix.lower() in _SHARD_SUFFIXES]
            if not found:
                raise InputFileError(f"{p}: a directory without input files (.csv, .jsonl, .parquet)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputFileError(f"{p}: no such file or directory")
    files = sorted({str(f.resolve()) for f in files})
    fmts = {detect_format(f, input_format) for f in files}
    if len(fmts) > 1:
        raise InputFileError(f"the input mixes formats ({', '.join(sorted(fmts))}); give one format of shards")
    return files, fmts.pop()


def _read_file(batch: dict, fmt: str, text_column: str, pair_column: str | None, id_column: str | None,
               chunk_rows: int):
    """Ray task body: one input file (``batch['item']``, one path) to batches of raw rows."""
    used = [c for c in dict.fromkeys((text_column, pair_column, id_column)) if c is not None]
    for path in batch["item"]:
        for chunk in read_chunks(path, fmt, text_column, pair_column, id_column, chunk_rows):
            raw = {text_column: chunk.text}
            if pair_column is not None:
                raw[pair_column] = chunk.pair
            if id_column is not None:
                raw[id_column] = chunk.id
            n = len(chunk)
            out = {PATH: np.array([path] * n, dtype=object), ROW: np.asarray(chunk.rows, dtype=np.int64),
                   LINE: np.array(chunk.lines if chunk.lines is not None else [None] * n, dtype=object),
                   PROBLEM: np.array(chunk.problem, dtype=object)}
            for c in used:
                vals = raw[c]
                out[c] = _object_array([None if v is MISSING else v for v in vals])
                out[_MISSING_PREFIX + c] = np.array([v is MISSING for v in vals], dtype=bool)
            yield out


def _object_array(values: list) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def read_rows(inputs, *, text_column: str = "text", pair_column: str | None = None,
              id_column: str | None = None, input_format: str | None = None, chunk_rows: int = 4096,
              concurrency: int = 2):
    """A ``ray.data.Dataset`` of the raw rows of ``inputs`` (files or directories of shards).

    Columns: the text, pair and id columns with the values as read (any type, null included),
    ``__missing__<column>`` (bool: the row has no such field), ``__path``, ``__row`` (int64: row
    number in its file), ``__line`` (1-based line or null) and ``__problem`` (why the row could
    not be read, or null). One read task per file (at most ``concurrency`` at once, no CPU reserved),
    in batches of ``chunk_rows`` rows; a missing
    column or a non-UTF-8 CSV fails the job with :class:`InputFileError`'s message.
    """
    ray = require_ray()
    files, fmt = input_files(inputs, input_format)
    for f in files:  # file-level problems (no such column, empty CSV) now, with one clear error
        read_chunks(f, fmt, text_column, pair_column, id_column, 1)
    ds = ray.data.from_items(files, override_num_blocks=len(files))
    # a read task takes no CPU of its own: with CPU-bound actors holding every CPU it still runs
    # (else the job waits forever), and ``concurrency`` bounds how many files are read at once
    return ds.map_batches(_read_file, batch_size=1, batch_format="numpy", num_cpus=0,
                          concurrency=max(1, min(concurrency, len(files))),
                          fn_kwargs=dict(fmt=fmt, text_column=text_column, pair_column=pair_column,
                                         id_column=id_column, chunk_rows=chunk_rows))


# -- the callable class ------------------------------------------------------------------------

def _column(batch, name: str) -> list | None:
    """Column ``name`` of a pandas / pyarrow / dict-of-numpy batch as Python values, or None."""
    if hasattr(batch, "column_names") and hasattr(batch, "column"):  # pyarrow.Table
        return batch.column(name).to_pylist() if name in batch.column_names else None
    if name not in batch:
        return None
    col = batch[name]
    if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray):  # pandas Series
        col = col.to_numpy()
    return np.asarray(col).tolist() if not isinstance(col, list) else list(col)


def _num_rows(batch) -> int:
    if hasattr(batch, "num_rows"):
        return batch.num_rows
    if hasattr(batch, "shape") and hasattr(batch, "columns"):  # pandas
        return batch.shape[0]
    return len(next(iter(batch.values()))) if len(batch) else 0


def _na(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class CascadePredictor:
    """Classify Ray Data batches with a saved cascade; the cascade loads once per actor.

        ds = ray.data.read_parquet("s3://bucket/docs/")
        out = ds.map_batches(CascadePredictor, fn_constructor_args=("my_cascade",),
                             fn_constructor_kwargs={"id_column": "doc_id"}, batch_size=4096,
                             compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)

    ``cascade_dir``: a cascade saved by ``CascadeBert.save_pretrained`` (tokenizer in ``tier_0/``),
    on a path every node can read. ``text_column``/``pair_column``: the text (and second text of a
    pair). ``id_column``: the row id; without it the rows need a row-number column
    (``row_column``, default the ``__row`` that :func:`read_rows` adds). ``on_bad_row``: ``"error"``
    raises :class:`~cascade_rt.predict.rows.BadRowError` for a bad row (missing, null or non-string
    text; missing or null id); ``"skip"`` returns it with ``reject_column``/``reject_reason`` set
    and ``label`` null, ``score`` NaN, ``exit_tier`` -1. ``device``: default ``cuda`` when the actor
    sees a GPU, else ``cpu``. ``dtype``/``max_batch_tokens``/``max_length``: as for
    :func:`cascade_rt.pipeline`. ``threads``: torch CPU threads in the actor. ``id_type``: ``"int"``
    or ``"str"``, the type of the ``id`` column (default: int for row numbers, str for an id column).

    ``__call__(batch)`` takes a pandas DataFrame, a pyarrow Table or a dict of numpy arrays and
    returns a dict of numpy arrays, one row per input row, in the batch's order, classified rows
    first: ``id`` (as given, or the row number), ``label`` (str), ``score`` (float32, max softmax
    probability at the exit tier), ``exit_tier`` (int64), ``path`` (the ``__path`` of the row or
    None), ``row`` (int64: the row number, or -1 without a row-number column), ``line`` (1-based
    line of a rejected row, else -1), ``reject_column`` and ``reject_reason`` (str or None).
    """

    def __init__(self, cascade_dir, *, text_column: str = "text", pair_column: str | None = None,
                 id_column: str | None = None, row_column: str = ROW, on_bad_row: str = "error",
                 device=None, dtype=None, max_batch_tokens: int = 4096, max_length: int | None = None,
                 threads: int | None = None, id_type: str | None = None):
        import torch

        from .pipeline import pipeline

        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if threads:
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.text_column, self.pair_column, self.id_column = text_column, pair_column, id_column
        self.row_column, self.on_bad_row = row_column, on_bad_row
        if id_type not in (None, "int", "str"):
            raise ValueError(f"id_type must be 'int', 'str' or None, got {id_type!r}")
        self.id_type = id_type or ("int" if id_column is None else "str")
        self.clf = pipeline(cascade_dir, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens,
                            max_length=max_length)

    def _raw(self, batch, name: str, n: int) -> list:
        vals = _column(batch, name)
        if vals is None:
            raise KeyError(f"the batch has no column {name!r}")
        missing = _column(batch, _MISSING_PREFIX + name)
        if missing is not None:
            vals = [MISSING if m else v for v, m in zip(vals, missing)]
        return vals

    def chunk(self, batch) -> RowChunk:
        """The batch as a :class:`RowChunk` of raw rows (what ``predict_chunk`` validates)."""
        n = _num_rows(batch)
        rows = _column(batch, self.row_column)
        if rows is None:
            if self.id_column is None:
                raise KeyError(f"the batch has neither an id column nor the row-number column {self.row_column!r}; "
                               f"pass id_column=...")
            rows = [-1] * n
        lines = _column(batch, LINE)
        if lines is not None:
            lines = [None if _na(v) else int(v) for v in lines]
        problem = _column(batch, PROBLEM)
        if problem is not None:
            problem = [None if _na(v) else v for v in problem]
        return RowChunk(
            rows=[int(r) for r in rows], lines=lines, text=self._raw(batch, self.text_column, n),
            pair=self._raw(batch, self.pair_column, n) if self.pair_column else None,
            id=self._raw(batch, self.id_column, n) if self.id_column else None, problem=problem)

    def __call__(self, batch) -> dict:
        chunk = self.chunk(batch)
        n = len(chunk)
        rows, paths = chunk.rows, _column(batch, PATH) or [None] * n
        # predict_chunk sees each row's position in the batch as its row number: positions are
        # unique (a batch may join rows of several files), so the rejects tell which rows passed
        chunk.rows = list(range(n))
        try:
            res = predict_chunk(self.clf, chunk, self.text_column, self.pair_column, self.id_column,
                                self.on_bad_row)
        except BadRowError as exc:
            raise _located(exc.reject, rows, paths, self.id_column is not None) from None
        bad = [r.row for r in res.rejects]
        good = sorted(set(range(n)) - set(bad))
        order = good + bad
        ids = list(res.ids) if self.id_column else [rows[k] for k in good]
        ids += [r.id if self.id_column else rows[r.row] for r in res.rejects]
        n_bad = len(bad)
        return {
            "id": _ids(ids, self.id_type),
            "label": _object_array(list(res.labels) + [None] * n_bad),
            "score": np.concatenate([np.asarray(res.scores, dtype=np.float32), np.full(n_bad, np.nan, np.float32)]),
            "exit_tier": np.concatenate([np.asarray(res.exit_tier, dtype=np.int64), np.full(n_bad, -1, np.int64)]),
            "path": _object_array([paths[k] for k in order]),
            "row": np.asarray([rows[k] for k in order], dtype=np.int64),
            "line": np.asarray([-1] * len(good) + [r.line if r.line is not None else -1 for r in res.rejects],
                               dtype=np.int64),
            "reject_column": _object_array([None] * len(good) + [r.column for r in res.rejects]),
            "reject_reason": _object_array([None] * len(good) + [r.reason for r in res.rejects]),
        }


def _located(reject: Reject, rows: list, paths: list, has_id: bool) -> BadRowError:
    """``reject`` (numbered by position in the batch) as the error naming the file and row."""
    k = reject.row
    rid = reject.id if has_id else rows[k]
    err = _BadRow(Reject(rows[k], rid, reject.column, reject.reason, reject.line))
    if paths[k] is not None:
        err.args = (f"{paths[k]}: {err.args[0]}",)
    return err


def _ids(ids: list, id_type: str) -> np.ndarray:
    """The ids as ``id_type`` (one type per column, whatever the batch holds); None stays None."""
    if id_type == "int":
        return _object_array([None if i is None else int(i) for i in ids])
    return _object_array([None if i is None else str(i) for i in ids])


class _BadRow(BadRowError):
    """A :class:`BadRowError` that survives pickling (it crosses from an actor to the driver)."""

    def __init__(self, reject: Reject | None, message: str | None = None):
        ValueError.__init__(self, message if message is not None else BadRowError(reject).args[0])
        self.reject = reject  # None when only the message came back from the actor

    def __reduce__(self):
        return type(self), (self.reject, self.args[0])


_ORIGINAL = re.compile(r"^(cascade_rt\.ray\._BadRow|cascade_rt\.predict\.io\.InputFileError): (.+)$", re.M)


def _original(exc: BaseException) -> Exception | None:
    """The bad-row or input-file error that a Ray task raised, from the exception Ray raises here.

    Ray Data wraps a task's exception in ``UserCodeException`` and only the remote traceback's
    text comes back (the exception object does not), so the last line of that traceback, which
    names our exception and its one-line message, is read back.
    """
    seen, todo = set(), [exc]
    while todo:  # the exception object itself, where a Ray version keeps it
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _BadRow) and not type(e).__module__.startswith("ray"):
            return _BadRow(e.reject, e.args[0])
        if type(e) is InputFileError:
            return InputFileError(str(e))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    m = _ORIGINAL.search(str(exc))
    if m is None:
        return None
    return _BadRow(None, m.group(2)) if m.group(1).endswith("_BadRow") else InputFileError(m.group(2))


# -- the job -----------------------------------------------------------------------------------

@dataclass
class RaySummary:
    rows: int = 0
    classified: int = 0
    rejected: int = 0
    exits: list = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""
    rejects_dir: str | None = None
    workers: int = 1
    files: int = 1
    started_ray: bool = False

    def lines(self) -> list[str]:
        n = max(self.classified, 1)
        shares = ", ".join(f"tier {i} {c / n:.1%}" for i, c in enumerate(self.exits))
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.rows} rows from {self.files} file(s) -> {self.output}: {self.classified} classified, "
               f"{self.rejected} rejected ({self.workers} Ray worker(s))",
               f"exits: {shares}; {rate:.1f} rows/s over {self.seconds:.1f} s ("
               + ("Ray start-up, " if self.started_ray else "") + "actor start-up and model loads included)"]
        if self.rejects_dir is not None:
            out.append(f"rejected rows ({self.rejected}) with their reasons: {self.rejects_dir}")
        return out


def rejects_dir(output: Path) -> Path:
    """``<output stem>.rejects``: the directory of JSONL reject shards beside the output."""
    stem = output.name.rsplit(".", 1)[0] if "." in output.name else output.name
    return output.with_name(stem + ".rejects")


def _finish(batch, offsets: dict, rejected: bool, has_id: bool):
    """pyarrow batch of predictor output -> output rows (or reject records), rows numbered over
    the files taken in sorted order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_null(batch["reject_reason"])
    if rejected:
        mask = pc.invert(mask)
    batch = batch.filter(mask)
    off = pa.array([offsets[p] for p in batch["path"].to_pylist()], type=pa.int64())
    row = pc.add(batch["row"], off)
    ids = batch["id"] if has_id else row
    if not rejected:
        return pa.table({"id": ids, "label": batch["label"], "score": batch["score"],
                         "exit_tier": batch["exit_tier"]})
    line = pc.if_else(pc.less(batch["line"], 0), pa.scalar(None, pa.int64()), batch["line"])
    return pa.table({"row": row, "line": line, "id": ids, "column": batch["reject_column"],
                     "reason": batch["reject_reason"]})


def _tally(results) -> tuple[dict, dict]:
    """Rows per input file (highest row number + 1) and rows per exit tier (-1: rejected), from
    the materialized predictor output, block by block in the driver (no shuffle)."""
    import pyarrow.compute as pc

    rows, exits = {}, {}
    for b in results.select_columns(["path", "row", "exit_tier"]).iter_batches(batch_size=None,
                                                                              batch_format="pyarrow"):
        if not b.num_rows:
            continue
        for g in b.group_by("path").aggregate([("row", "max")]).to_pylist():
            rows[g["path"]] = max(rows.get(g["path"], 0), g["row_max"] + 1)
        vc = pc.value_counts(b["exit_tier"]).to_pylist()
        for v in vc:
            exits[v["values"]] = exits.get(v["values"], 0) + v["counts"]
    return rows, exits


def _num_tiers(cascade_dir) -> int:
    import json

    from .cascade import CASCADE_FILE

    spec = Path(cascade_dir) / CASCADE_FILE
    return len(json.loads(spec.read_text())["tiers"]) if spec.is_file() else 1


def _write(ds, path: Path, fmt: str, overwrite: bool) -> None:
    mode = "overwrite" if overwrite else "create"
    if fmt == "parquet":
        ds.write_parquet(str(path), mode=mode)
    elif fmt == "jsonl":
        ds.write_json(str(path), mode=mode)
    else:
        ds.write_csv(str(path), mode=mode)


def run_ray_predict(cascade_dir, inputs, output, *, text_column: str = "text", pair_column: str | None = None,
                    id_column: str | None = None, input_format: str | None = None,
                    output_format: str | None = None, on_bad_row: str = "error", overwrite: bool = False,
                    workers: int = 1, gpus_per_worker: float = 0, address: str | None = None,
                    batch_size: int = 1024, chunk_rows: int = 4096, max_batch_tokens: int = 4096,
                    max_length: int | None = None, device=None, dtype=None, threads: int | None = None,
                    predictor_cls=None, ray_init_kwargs: dict | None = None) -> RaySummary:
    """Classify every row of ``inputs`` on Ray into the directory ``output``; see the module docstring.

    The rows are read with :func:`read_rows`, classified by ``workers`` actors of
    ``predictor_cls`` (default :class:`CascadePredictor`; ``gpus_per_worker`` GPUs each), each
    call on ``batch_size`` rows; actors that die are restarted and their batches redone. The
    results are materialized once and written as shards of ``output`` (a directory; Parquet,
    JSONL or CSV from ``output_format`` or its extension); rejected rows (``on_bad_row="skip"``)
    go to ``<output stem>.rejects/`` as JSONL shards. Shard order is not input order; each row
    is there once. Connects to ``address`` (``"auto"``, ``"ray://host:10001"``), or to the Ray
    already initialized in this process, or starts a local one (shut down at the end).
    Raises :class:`BadRowError`, :class:`InputFileError` or :class:`JobError` with one message.
    """
    ray = require_ray()
    if workers < 1:
        raise JobError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker < 0:
        raise JobError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if batch_size < 1 or chunk_rows < 1:
        raise JobError(f"batch_size and chunk_rows must be >= 1, got {batch_size}, {chunk_rows}")
    if on_bad_row not in ("error", "skip"):
        raise JobError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if not Path(cascade_dir).is_dir():
        raise JobError(f"{cascade_dir}: not a directory (expected a saved cascade)")
    files, in_fmt = input_files(inputs, input_format)
    output = Path(output)
    out_fmt = detect_format(output, output_format)
    if str(output.resolve()) in files or any(Path(f).is_relative_to(output.resolve()) for f in files):
        raise JobError("the output would overwrite the input; choose another --output")
    rej = rejects_dir(output) if on_bad_row == "skip" else None
    for p in (output, rej):
        if p is not None and p.exists() and not overwrite:
            raise JobError(f"{p} exists; pass --overwrite to replace it")
        if p is not None and p.is_file():
            raise JobError(f"{p} is a file; --ray writes a directory of shards there")
    id_type = "int" if id_column is None else "str"
    if id_column is not None and in_fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if all(pa.types.is_integer(pq.ParquetFile(f).schema_arrow.field(id_column).type) for f in files
               if id_column in pq.ParquetFile(f).schema_arrow.names):
            id_type = "int"
    predictor_cls = predictor_cls or CascadePredictor

    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=True)
        if address is None:  # a local Ray: one logical CPU per asked worker at least
            kw["num_cpus"] = max(os.cpu_count() or 1, workers * (threads or 1))
        kw.update(ray_init_kwargs or {})
        ray.init(address=address, **kw)
        started = True
    try:
        if started and address is None and gpus_per_worker:
            have = ray.cluster_resources().get("GPU", 0)
            if have < workers * gpus_per_worker:
                raise JobError(f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs "
                               f"{workers * gpus_per_worker:g} GPUs; this machine has {have:g}")
        ds = read_rows(files, text_column=text_column, pair_column=pair_column, id_column=id_column,
                       input_format=in_fmt, chunk_rows=chunk_rows, concurrency=max(2, workers))
        # Ray Data's actor pool restarts a dead actor and resubmits its batches (its defaults
        # max_restarts=-1, max_task_retries=-1; tests/test_ray.py kills a worker to check it)
        remote = {"num_cpus": threads or 1}  # an actor reserves the CPUs its torch threads use
        if gpus_per_worker:
            remote["num_gpus"] = gpus_per_worker
        mapped = ds.map_batches(
            predictor_cls, fn_constructor_args=(str(Path(cascade_dir).resolve()),),
            fn_constructor_kwargs=dict(text_column=text_column, pair_column=pair_column, id_column=id_column,
                                       on_bad_row=on_bad_row, device=device, dtype=dtype,
                                       max_batch_tokens=max_batch_tokens, max_length=max_length,
                                       threads=threads, id_type=id_type),
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), **remote)
        results = mapped.materialize()
        rows_per_file, exits = _tally(results)
        n_out = results.count()
        if n_out != sum(rows_per_file.values()):
            raise JobError(f"{n_out} results for {sum(rows_per_file.values())} input rows: rows were lost or "
                           f"duplicated on the way; nothing was written")
        offsets, acc = {}, 0
        for f in files:  # the files in sorted order, as one input
            offsets[f] = acc
            acc += rows_per_file.get(f, 0)
        kw = dict(batch_format="pyarrow", zero_copy_batch=True)
        has_id = id_column is not None
        good = results.map_batches(_finish, fn_kwargs=dict(offsets=offsets, rejected=False, has_id=has_id), **kw)
        _write(good, output, out_fmt, overwrite)
        summary = RaySummary(output=str(output), workers=workers, files=len(files), started_ray=started)
        summary.rows = sum(rows_per_file.values())
        summary.rejected = exits.pop(-1, 0)
        summary.classified = summary.rows - summary.rejected
        summary.exits = [exits.get(t, 0) for t in range(_num_tiers(cascade_dir))]
        if rej is not None:
            summary.rejects_dir = str(rej)
            if summary.rejected:
                bad = results.map_batches(_finish, fn_kwargs=dict(offsets=offsets, rejected=True, has_id=has_id),
                                          **kw)
                _write(bad, rej, "jsonl", overwrite)
            else:
                rej.mkdir(parents=True, exist_ok=True)
    except Exception as exc:
        found = _original(exc) if not isinstance(exc, (BadRowError, InputFileError)) else None
        if found is None:
            raise
        raise found from None
    finally:
        if started:
            ray.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary
