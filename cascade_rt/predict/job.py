"""The predict job: a file in, one result per row out, in chunks, resumable.

:func:`predict_chunk` is the unit of work (validate a chunk of raw rows, classify the good
ones with a :class:`~cascade_rt.pipeline.Pipeline`, return results and rejects); the local job
:func:`run_predict` and a Ray Data ``map_batches`` callable both call it.

Durability (``resume=True``): after each chunk the output (and rejects file) are flushed and
fsynced, then ``<output>.progress.json`` is replaced atomically with the rows done and the
output's size. A resumed run cuts the output back to that size (dropping a chunk half written
when the run died), skips the rows done and goes on; the survivor queue is flushed at each
chunk's end, so every chunk is classified by the same tier runs whether or not the run was
interrupted, and the resumed output equals an uninterrupted one byte for byte.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import RejectsWriter, count_rows, detect_format, fsync_dir, open_writer, read_chunks
from .rows import BadRowError, Reject, RowChunk, validate

__all__ = ["ChunkResult", "predict_chunk", "run_predict", "JobError", "Summary", "progress_path", "rejects_path"]

PROGRESS_VERSION = 1


class JobError(RuntimeError):
    """The job cannot start or resume as asked (output exists, options changed, ...)."""


@dataclass
class ChunkResult:
    """Results of one chunk: ``ids``, ``labels`` (names), ``scores`` (float32), ``exit_tier``
    (int64) for the rows classified, in input order; ``rejects`` for the others; ``truncated``:
    rows cut to the model's length."""

    ids: list
    labels: list
    scores: np.ndarray
    exit_tier: np.ndarray
    rejects: list = field(default_factory=list)
    truncated: int = 0


def predict_chunk(clf, chunk: RowChunk, text_column: str = "text", pair_column: str | None = None,
                  id_column: str | None = None, on_bad_row: str = "error") -> ChunkResult:
    """Validate ``chunk`` and classify its good rows with ``clf`` (a :class:`Pipeline`).

    ``on_bad_row="error"`` raises :class:`BadRowError` for the first bad row; ``"skip"`` returns
    every bad row in ``rejects``. Rows without an id column are identified by their row number.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    good, rejects = validate(chunk, text_column, pair_column, id_column)
    if rejects and on_bad_row == "error":
        raise BadRowError(rejects[0])
    texts = [chunk.text[k] for k in good]
    pairs = [chunk.pair[k] for k in good] if chunk.pair is not None else None
    ids = [chunk.id[k] for k in good] if chunk.id is not None else [chunk.rows[k] for k in good]
    r = clf.classify(texts, pairs)
    return ChunkResult(ids, [clf.id2label[int(c)] for c in r.label_id], r.score, r.exit_tier, rejects,
                       int(r.truncated.sum()))


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress.json")


def rejects_path(output: Path) -> Path:
    stem = output.name.rsplit(".", 1)[0] if "." in output.name else output.name
    return output.with_name(stem + ".rejects.jsonl")


def _write_progress(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Summary:
    rows: int = 0
    classified: int = 0
    rejected: int = 0
    truncated: int = 0
    exits: list = field(default_factory=list)  # rows that left at each tier
    seconds: float = 0.0
    output: str = ""
    rejects_file: str | None = None
    resumed_from_row: int = 0

    def lines(self) -> list[str]:
        n = max(self.classified, 1)
        shares = ", ".join(f"tier {i} {c / n:.1%}" for i, c in enumerate(self.exits))
        rate = (self.rows - self.resumed_from_row) / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.rows} rows -> {self.output}: {self.classified} classified, {self.rejected} rejected, "
               f"{self.truncated} truncated" + (f" (resumed at row {self.resumed_from_row})" if self.resumed_from_row else ""),
               f"exits: {shares}; {rate:.1f} rows/s over {self.seconds:.1f} s"]
        if self.rejects_file is not None:
            out.append(f"rejected rows ({self.rejected}) with their reasons: {self.rejects_file}")
        return out


def _options(clf, cascade_dir, input_path: Path, in_fmt, out_fmt, text_column, pair_column, id_column,
             chunk_rows, on_bad_row) -> dict:
    st = input_path.stat()
    model = clf.model
    return {
        "input": str(input_path.resolve()), "input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns,
        "input_format": in_fmt, "output_format": out_fmt, "text_column": text_column,
        "pair_column": pair_column, "id_column": id_column, "chunk_rows": chunk_rows, "on_bad_row": on_bad_row,
        "cascade": str(Path(cascade_dir).resolve()), "thresholds": list(model.thresholds),
        # only where it pools, so that a job a release before pooling started still resumes
        **({"pool_weight": model.pool_weight} if model.pool_weight else {}),
        "dtype": str(model.tiers[0].dtype), "device": str(model.device), "max_length": clf.max_length,
        "max_batch_tokens": clf.max_batch_tokens, "max_batch_rows": clf.max_batch_rows,
    }


def _id_type(input_path: Path, in_fmt: str, id_column: str | None) -> str:
    if id_column is None:
        return "int"
    if in_fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            t = pq.ParquetFile(str(input_path)).schema_arrow.field(id_column).type
        except Exception:
            return "str"
        return "int" if pa.types.is_integer(t) else "str"
    return "str"


def run_predict(clf, cascade_dir, input_path, output, *, text_column: str = "text",
                pair_column: str | None = None, id_column: str | None = None, input_format: str | None = None,
                output_format: str | None = None, chunk_rows: int = 4096, on_bad_row: str = "error",
                resume: bool = False, overwrite: bool = False, progress: bool | None = None) -> Summary:
    """Classify every row of ``input_path`` into ``output``; see the module docstring.

    ``clf``: a :class:`~cascade_rt.pipeline.Pipeline` loaded from ``cascade_dir``.
    ``progress``: show a tqdm bar (None: only on a terminal). Raises :class:`BadRowError`,
    :class:`~cascade_rt.predict.io.InputFileError` or :class:`JobError` with one message.
    """
    from tqdm.auto import tqdm

    input_path, output = Path(input_path), Path(output)
    if chunk_rows < 1:
        raise JobError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if on_bad_row not in ("error", "skip"):
        raise JobError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    in_fmt = detect_format(input_path, input_format)
    out_fmt = detect_format(output, output_format)
    if not input_path.is_file():
        raise JobError(f"{input_path}: no such input file")
    if output.resolve() == input_path.resolve():
        raise JobError("the output would overwrite the input; choose another --output")
    prog = progress_path(output)
    rej_path = rejects_path(output) if on_bad_row == "skip" else None
    options = _options(clf, cascade_dir, input_path, in_fmt, out_fmt, text_column, pair_column, id_column,
                       chunk_rows, on_bad_row)
    n_tiers = len(clf.model.tiers)
    state = None
    if resume and prog.is_file():
        state = json.loads(prog.read_text())
        if state.get("version") != PROGRESS_VERSION:
            raise JobError(f"{prog}: written by another version of cascade-rt predict; start over with --overwrite")
        changed = [k for k in {**state["options"], **options} if state["options"].get(k) != options.get(k)]
        if changed:
            raise JobError(f"cannot resume: {', '.join(changed)} changed since the interrupted run "
                           f"(was {[state['options'].get(k) for k in changed]}, now {[options.get(k) for k in changed]}); "
                           f"start over with --overwrite")
        kept = ([(output, "output_bytes")] if out_fmt != "parquet" else []) + (
            [(rej_path, "rejects_bytes")] if rej_path is not None else [])
        for f, key in kept:
            have = f.stat().st_size if f.exists() else 0
            if have < state[key]:
                raise JobError(f"cannot resume: {f} holds {have} bytes but the interrupted run had written "
                               f"{state[key]}; it was changed or lost since; start over with --overwrite")
        if out_fmt == "parquet":
            parts = output.with_name(output.name + ".parts")
            lost = [k for k in range(state["chunks_done"]) if not (parts / f"part-{k:08d}.parquet").is_file()]
            if lost:
                raise JobError(f"cannot resume: {parts} lacks the part of chunk {lost[0]}; start over with --overwrite")
    elif resume and output.exists():
        raise JobError(f"nothing to resume: {output} exists and has no {prog.name} (that run finished); "
                       f"pass --overwrite to redo it")
    elif prog.is_file() and not overwrite:
        raise JobError(f"{output}: an interrupted run left {prog.name}; pass --resume to continue it "
                       f"or --overwrite to start over")
    elif output.exists() and not overwrite:
        raise JobError(f"{output} exists; pass --overwrite to replace it")
    chunks = read_chunks(input_path, in_fmt, text_column, pair_column, id_column, chunk_rows,
                         state["rows_done"] if state else 0)  # file-level errors before any output
    if state is None:
        state = {"version": PROGRESS_VERSION, "options": options, "rows_done": 0, "chunks_done": 0,
                 "output_bytes": 0, "rejects_bytes": 0,
                 "counts": {"rows": 0, "classified": 0, "rejected": 0, "truncated": 0, "exits": [0] * n_tiers}}
        if out_fmt == "parquet":
            parts = output.with_name(output.name + ".parts")
            if parts.is_dir():
                for p in parts.glob("*"):
                    p.unlink()
        _write_progress(prog, state)  # before the output exists: an output without it is complete
    counts = state["counts"]
    summary = Summary(output=str(output), rejects_file=str(rej_path) if rej_path else None,
                      resumed_from_row=state["rows_done"])

    writer = open_writer(output, out_fmt, state["output_bytes"], state["chunks_done"], _id_type(input_path, in_fmt, id_column))
    rejects = RejectsWriter(rej_path, state["rejects_bytes"]) if rej_path else None
    total = count_rows(input_path, in_fmt)
    bar = tqdm(total=total, initial=state["rows_done"], unit="rows", desc="predict", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for chunk in chunks:
            res = predict_chunk(clf, chunk, text_column, pair_column, id_column, on_bad_row)
            writer.write_chunk(state["chunks_done"], res.ids, res.labels, res.scores, res.exit_tier)
            state["output_bytes"] = writer.commit()
            if rejects is not None:
                rejects.write_rejects(res.rejects)
                state["rejects_bytes"] = rejects.commit()
            counts["rows"] += len(chunk)
            counts["classified"] += len(res.ids)
            counts["rejected"] += len(res.rejects)
            counts["truncated"] += res.truncated
            for t, c in zip(*np.unique(res.exit_tier, return_counts=True)):
                counts["exits"][int(t)] += int(c)
            state["rows_done"] = chunk.rows[-1] + 1
            state["chunks_done"] += 1
            _write_progress(prog, state)
            bar.update(len(chunk))
            n = max(counts["classified"], 1)
            bar.set_postfix_str("exit " + " ".join(f"t{i}:{c / n:.0%}" for i, c in enumerate(counts["exits"]))
                                + (f" rejected:{counts['rejected']}" if counts["rejected"] else ""), refresh=False)
        writer.finish()
    finally:
        bar.close()
        writer.close()
        if rejects is not None:
            rejects.close()
    prog.unlink()
    if out_fmt == "parquet":
        writer.cleanup()
    summary.seconds = time.perf_counter() - t0
    summary.rows = counts["rows"]
    summary.classified = counts["classified"]
    summary.rejected = counts["rejected"]
    summary.truncated = counts["truncated"]
    summary.exits = counts["exits"]
    return summary
