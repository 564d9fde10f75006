"""``cascade-rt predict``: classify the rows of a CSV, JSONL or Parquet file with a saved cascade.

The pieces, each usable alone (the Ray Data job reuses them):
:class:`~cascade_rt.predict.rows.RowChunk` (raw rows) and :func:`~cascade_rt.predict.rows.validate`
(the one place a row is judged), :func:`~cascade_rt.predict.job.predict_chunk` (validate and
classify one chunk), :func:`~cascade_rt.predict.io.read_chunks` and the writers, and
:func:`~cascade_rt.predict.job.run_predict`, the local chunked, resumable job.
"""
from .io import FORMATS, InputFileError, detect_format, read_chunks
from .job import ChunkResult, JobError, Summary, predict_chunk, rejects_path, run_predict
from .rows import MISSING, BadRowError, Reject, RowChunk, validate

__all__ = ["FORMATS", "InputFileError", "detect_format", "read_chunks", "ChunkResult", "JobError", "Summary",
           "predict_chunk", "rejects_path", "run_predict", "MISSING", "BadRowError", "Reject", "RowChunk",
           "validate"]
