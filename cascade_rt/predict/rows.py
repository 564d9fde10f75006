"""Rows as read from a file, and the one place where a row is judged good or bad.

A reader yields :class:`RowChunk` objects holding each row's raw values (whatever the file
held: a str, None, a number, or :data:`MISSING` when the row has no such field). :func:`validate`
splits a chunk into the rows to classify and :class:`Reject` records naming the row, the column
and the reason. The local job and a Ray Data ``map_batches`` callable both use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MISSING", "RowChunk", "Reject", "BadRowError", "validate", "where"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: the value of a field the row does not have (a short CSV row, a JSON object without the key)
MISSING = _Missing()


@dataclass
class RowChunk:
    """Consecutive input rows, raw.

    ``rows``: 0-based data row number of each row in the input file; ``lines``: the 1-based
    line of the file where each row starts, or None (Parquet, Ray); ``text``/``pair``/``id``:
    the raw values of the text, pair and id columns (``pair``/``id`` None when those columns are
    not used); ``problem``: a reason the whole row is unreadable (invalid JSON, ...), else None.
    """

    rows: list
    lines: list | None
    text: list
    pair: list | None = None
    id: list | None = None
    problem: list | None = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Reject:
    """A row not classified: its row number, id (None when it has none), column and reason."""

    row: int
    id: object
    column: str
    reason: str
    line: int | None = None

    def message(self) -> str:
        return f"{where(self.row, self.line)}, column {self.column!r}: {self.reason}"

    def to_dict(self) -> dict:
        return {"row": self.row, "line": self.line, "id": self.id, "column": self.column, "reason": self.reason}


class BadRowError(ValueError):
    """A bad input row under ``on_bad_row="error"``; ``.reject`` holds the details."""

    def __init__(self, reject: Reject):
        super().__init__(f"bad input row: {reject.message()} (pass --on-bad-row skip to write such rows "
                         f"to a rejects file instead)")
        self.reject = reject


def where(row: int, line: int | None) -> str:
    return f"row {row}" + (f" (line {line})" if line is not None else "")


def _text_problem(v) -> str | None:
    if isinstance(v, str):
        return None
    if v is MISSING:
        return "the row has no such field"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null value"
    return f"{type(v).__name__} value {v!r:.60}, not a string"


def _id_problem(v) -> str | None:
    if v is MISSING:
        return "the row has no such field"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null value"
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return None
    return f"{type(v).__name__} value {v!r:.60}, not a string or an integer"


def validate(chunk: RowChunk, text_column: str, pair_column: str | None = None,
             id_column: str | None = None) -> tuple[list[int], list[Reject]]:
    """Indices (into the chunk) of the good rows, and a :class:`Reject` for every other row.

    A row is bad when its text (or pair) is missing, null or not a string, when its id (with
    an id column) is missing, null or neither a string nor an integer, or when the reader
    could not read it at all. The empty string is text. One reject per bad row (the first
    problem found).
    """
    good, rejects = [], []
    for k, row in enumerate(chunk.rows):
        line = chunk.lines[k] if chunk.lines is not None else None
        rid = chunk.id[k] if chunk.id is not None else row
        checks = []
        if chunk.problem is not None and chunk.problem[k] is not None:
            checks.append((text_column, chunk.problem[k]))
        if chunk.id is not None:
            checks.append((id_column, _id_problem(rid)))
        checks.append((text_column, _text_problem(chunk.text[k])))
        if chunk.pair is not None:
            checks.append((pair_column, _text_problem(chunk.pair[k])))
        bad = next(((col, why) for col, why in checks if why is not None), None)
        if bad is None:
            good.append(k)
        else:
            safe_id = rid if (rid is not MISSING and _id_problem(rid) is None) else None
            rejects.append(Reject(row, safe_id, bad[0], bad[1], line))
    return good, rejects
