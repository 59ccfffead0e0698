"""What every reader of an input makes: a row (``InputRow``) with its place in its file, and the JSON
decoding they share (``Loads``: a key some object holds twice is named, never silently dropped).

A row whose text is not valid Unicode, or that is not a JSON object, carries its ``error`` instead
of its columns, so a job records it as failed and goes on with the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from localaug.core.errors import UsageError

Place = tuple[int, int, int, int]  # (byte offset, byte length or -1 when never read, line or item number, CRC-32)


@dataclass
class InputRow:
    """One input row: its position, its columns, and an ``error`` when it cannot be used as is."""

    index: int
    record: dict[str, Any]
    error: str | None = None
    raw: str | None = None  # the line as read, when it was not valid JSON
    key: str = ""  # the job's row key (jobs.py), set once the run is known
    place: Place | None = None  # where it is in its file (readers of text files), to read it again


def invalid_text(value: Any) -> str | None:
    """Why a parsed row holds text that is not valid Unicode (None: it does not)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"text that is not valid UTF-8 or Unicode (at character {e.start}): fix or remove the row"
        return None
    if isinstance(value, dict):
        return next(filter(None, (invalid_text(k) or invalid_text(v) for k, v in value.items())), None)
    if isinstance(value, list):
        return next(filter(None, map(invalid_text, value)), None)
    return None


def may_hold_invalid(source: str) -> bool:
    """Whether JSON text can parse to a string that is not valid Unicode: only through a \\u escape
    of a surrogate, or a character that is one (a byte that was not UTF-8)."""
    if "\\ud" in source or "\\uD" in source:
        return True
    if source.isascii():
        return False
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def row_of(index: int, rec: Any, what: str, raw: str | Callable[[], str], source: str | None = None,
         place: Place | None = None) -> InputRow:
    if not isinstance(rec, dict):
        return InputRow(index, {}, f"{what} is not a JSON object", raw=raw if isinstance(raw, str) else raw(), place=place)
    why = invalid_text(rec) if source is None or may_hold_invalid(source) else None
    if why:
        return InputRow(index, {}, why, raw=raw if isinstance(raw, str) else raw(), place=place)
    return InputRow(index, rec, place=place)


class Loads:
    """``json.loads`` that also names a key some object holds twice (Python's reader keeps the last
    of two equal keys silently; a row that has two is refused instead, so no column is lost)."""

    def __init__(self) -> None:
        self.twice: list[str] = []
        self.decoder = json.JSONDecoder(object_pairs_hook=self._pairs)

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs) and not self.twice:
            seen: set[str] = set()
            self.twice.append(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
        return obj

    def __call__(self, text: str) -> tuple[Any, str | None]:
        """(the JSON value of ``text``, a key some object in it holds twice, or None)."""
        self.twice.clear()
        if text.startswith("\ufeff"):  # as json.loads
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = self.decoder.decode(text)
        return value, (self.twice[0] if self.twice else None)

    def raw(self, text: str, at: int) -> tuple[Any, int, str | None]:
        """(the JSON value starting at ``text[at]``, where it ends, a key held twice or None)."""
        self.twice.clear()
        value, end = self.decoder.raw_decode(text, at)
        return value, end, (self.twice[0] if self.twice else None)


def refuse_duplicate_columns(names: Iterable[Any], where: str) -> None:
    """A UsageError naming the first column name that appears twice in ``names`` (a header), where
    a reader would keep only one of the two columns."""
    seen: dict[Any, int] = {}
    for position, column in enumerate(names, 1):
        if column in seen and str(column).strip():
            raise UsageError(f"{where}: the header names column {column!r} twice (columns {seen[column]} and {position}); "
                             "a reader keeps only one: rename one of them")
        seen.setdefault(column, position)
