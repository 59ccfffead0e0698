"""The byte-level readers (localaug/jobs/readers.py) against the text-mode readers they replaced,
kept here as the oracle: the same rows (record, error, raw) for any bytes, universal newlines,
bytes that are not UTF-8, overlong lines and BOMs included; each row read again at its place is
the row itself; a JSON array is read no further than the rows taken.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any, TextIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.core.errors import UsageError
from localaug.jobs import dataio
from localaug.jobs import readers as R
from localaug.jobs.readers import InputRow

PROPS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# --- the oracle: the text-mode readers as they were ---------------------------------------------------

OLD_KINDS: dict[str, dict[str, Any]] = {
    "jsonl": {"encoding": "utf-8", "errors": "surrogateescape"},
    "json": {"encoding": "utf-8"},
    "csv": {"encoding": "utf-8-sig", "newline": "", "errors": "surrogateescape"},
}


def old_loads(text: str) -> tuple[Any, str | None]:
    twice: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs) and not twice:
            seen: set[str] = set()
            twice.append(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
        return obj

    return json.loads(text, object_pairs_hook=pairs_hook), (twice[0] if twice else None)


def old_row(index: int, rec: Any, what: str, raw: str) -> InputRow:
    if not isinstance(rec, dict):
        return InputRow(index, {}, f"{what} is not a JSON object", raw=raw)
    why = R.invalid_text(rec)
    return InputRow(index, {}, why, raw=raw) if why else InputRow(index, rec)


def old_lines(f: TextIO, limit: int) -> Iterator[tuple[int, str | None]]:
    lineno = 0
    while line := f.readline(limit + 1):
        lineno += 1
        if len(line) > limit and not line.endswith("\n"):
            while (more := f.readline(1 << 20)) and not more.endswith("\n"):
                pass
            yield lineno, None
        else:
            yield lineno, line


def old_jsonl(f: TextIO, limit: int) -> Iterator[InputRow]:
    i = 0
    for lineno, line in old_lines(f, limit):
        if line is None:
            yield InputRow(i, {}, f"line {lineno} is over {limit} characters: split it or shorten it")
            i += 1
            continue
        if not line.strip():
            continue
        raw = line.rstrip("\n")
        try:
            rec, twice = old_loads(line)
        except json.JSONDecodeError as e:
            yield InputRow(i, {}, f"invalid JSON on line {lineno}: {e.msg}", raw=raw)
        except RecursionError:
            yield InputRow(i, {}, f"line {lineno} is nested too deep to read", raw=raw[:1000])
        else:
            if twice is not None:
                yield InputRow(i, {}, f"line {lineno} holds the key {twice!r} twice (a reader keeps only one): remove "
                                      "or rename one", raw=raw)
            else:
                yield old_row(i, rec, f"line {lineno}", raw)
        i += 1


def old_json(f: TextIO, path: str) -> Iterator[InputRow]:
    try:
        data, twice = old_loads(f.read())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); for one object a line, name it .jsonl") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (a bad byte at {e.start}): save it as UTF-8") from None
    if twice is not None:
        raise UsageError(f"{path}: an object holds the key {twice!r} twice (a reader keeps only one): remove or rename one")
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UsageError(f"{path}: expected a JSON array of objects")
        data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON array of objects")
    for i, rec in enumerate(data):
        yield old_row(i, rec, f"item {i}", json.dumps(rec, ensure_ascii=True)[:100_000])


def old_csv(f: TextIO, limit: int, name: str) -> Iterator[InputRow]:
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    reader = csv.DictReader(f)
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise UsageError(f"{name}: the CSV header cannot be read ({e}): fix the first line") from None
    R.refuse_duplicate_columns(header, name)
    i = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield InputRow(i, {}, f"bad CSV record near line {reader.reader.line_num}: {e}")
        else:
            why = R.invalid_text(rec)
            yield InputRow(i, {} if why else dict(rec), why)
        i += 1


def old_rows(kind: str, data: bytes, limit: int = R.MAX_ROW_CHARS) -> list[tuple[Any, ...]] | str:
    f = io.TextIOWrapper(io.BytesIO(data), **OLD_KINDS[kind])
    try:
        if kind == "jsonl":
            got = list(old_jsonl(f, limit))
        elif kind == "json":
            got = list(old_json(f, "input"))
        else:
            got = list(old_csv(f, limit, "input"))
    except UsageError as e:
        return f"UsageError: {e}"
    return [(r.index, r.record, r.error, r.raw) for r in got]


def new_rows(kind: str, data: bytes) -> list[tuple[Any, ...]] | str:
    try:
        return [(r.index, r.record, r.error, r.raw) for r in R.text_rows(kind, io.BytesIO(data), name="input")]
    except UsageError as e:
        return f"UsageError: {e}"


def same_after_a_second_read(kind: str, data: bytes) -> None:
    """Every row read again from its place is the row (index aside)."""
    try:
        rows = list(R.text_rows(kind, io.BytesIO(data), name="input"))
    except UsageError:
        return
    assert all(r.place is not None for r in rows)
    again = list(R.rows_at(kind, io.BytesIO(data), [r.place for r in rows]))  # type: ignore[misc]
    assert [(a.record, a.error, a.raw) if a else None for a in again] == [(r.record, r.error, r.raw) for r in rows]


# --- the bytes tried ----------------------------------------------------------------------------------

PIECES = [b"\n", b"\r", b"\r\n", b" ", b"\t", b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"a", b"1", b"x",
          b'"instruction"', b'"a"', b'"\\ud800"', b'"\\ud83d\\ude00"', b"\xe4\xbd\xa0", b"\xff", b"\xe4", b"\xef\xbb\xbf",
          b'{"instruction": "hi"}', b'{"a": 1, "a": 2}', b"null", b"NaN", b"1e400", b"-0.5"]
SOUP = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
GOOD_LINE = st.dictionaries(st.sampled_from(["instruction", "input", "id", "é"]),
                            st.one_of(st.text(max_size=12), st.integers(), st.none(), st.floats(allow_nan=False)),
                            max_size=3).map(lambda d: json.dumps(d, ensure_ascii=False).encode())
LINES = st.lists(st.one_of(GOOD_LINE, SOUP), max_size=8).flatmap(
    lambda ls: st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]), min_size=len(ls), max_size=len(ls)).map(
        lambda ends: b"".join(line + end for line, end in zip(ls, ends))))
CSV_CELL = st.one_of(st.text(alphabet='ab,"\n\r é', max_size=6).map(str.encode), st.sampled_from([b"\xff", b'"', b'"a""b"']))
CSV_DATA = st.lists(st.lists(CSV_CELL, min_size=1, max_size=4).map(b",".join), min_size=1, max_size=6).flatmap(
    lambda ls: st.sampled_from([b"\n", b"\r\n", b"\r"]).map(lambda end: b"".join(line + end for line in ls)))


@PROPS
@given(st.one_of(LINES, SOUP), st.booleans())
def test_jsonl_rows_are_those_of_the_text_reader(data, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + data
    assert new_rows("jsonl", data) == old_rows("jsonl", data)
    same_after_a_second_read("jsonl", data)


@PROPS
@given(st.lists(st.sampled_from([b"a" * 5, b"\xe4\xbd\xa0" * 3, b"\xff", b"\n", b"\r", b"\r\n", b'{"k":"', b'"}']),
                max_size=30).map(b"".join), st.integers(1, 12))
def test_overlong_lines_as_the_text_reader_counts_them(data, limit):
    """A line is too long when its characters (not its bytes) are over the limit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "MAX_ROW_CHARS", limit)
        assert new_rows("jsonl", data) == old_rows("jsonl", data, limit)
        same_after_a_second_read("jsonl", data)


@PROPS
@given(st.one_of(CSV_DATA, SOUP), st.booleans())
def test_csv_rows_are_those_of_the_text_reader(data, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + b"instruction,lang\r\n" + data
    assert new_rows("csv", data) == old_rows("csv", data)
    same_after_a_second_read("csv", data)


JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                          max_leaves=8)


def dump(value: Any, style: int) -> bytes:
    if style == 0:
        return json.dumps(value).encode()
    if style == 1:
        return json.dumps(value, ensure_ascii=False, indent=2).encode().replace(b"\n", b"\r\n")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@PROPS
@given(st.one_of(st.lists(JSON_VALUE, max_size=6), st.dictionaries(st.text(max_size=4), JSON_VALUE, max_size=4), JSON_VALUE),
       st.integers(0, 2))
def test_json_documents_give_the_rows_of_the_whole_document_reader(value, style):
    data = dump(value, style)
    assert new_rows("json", data) == old_rows("json", data)
    same_after_a_second_read("json", data)


@PROPS
@given(st.lists(JSON_VALUE, max_size=5), st.integers(0, 2), st.integers(0, 200), SOUP)
def test_broken_json_is_refused_as_the_whole_document_reader_refuses_it(value, style, cut, junk):
    """Cut short or with junk inside: refused (the message may name another fault of the same file)."""
    whole = dump(value, style)
    for data in (whole[:cut], whole[:cut] + junk + whole[cut:]):
        old, new = old_rows("json", data), new_rows("json", data)
        if isinstance(old, str):
            assert isinstance(new, str), (data, old, new)
        else:
            assert new == old, data
        same_after_a_second_read("json", data)


# --- JSON arrays read item by item -------------------------------------------------------------------


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def read(self, n: int | None = -1) -> bytes:
        block = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return block


def test_a_json_array_is_read_no_further_than_the_items_taken():
    items = b",".join(json.dumps({"instruction": f"row {i} " + "x" * 200}).encode() for i in range(2000))
    stream = CountingReader(b"[" + items + b",\n{not json at all")
    rows = R.text_rows("json", stream, name="input")
    assert [next(rows).record["instruction"][:6] for _ in range(2)] == ["row 0 ", "row 1 "]
    assert stream.furthest <= 1 << 17  # a block or two of a 440 KB file
    with pytest.raises(UsageError) as e:
        list(rows)
    assert str(e.value) == "input is not valid JSON (Expecting property name enclosed in double quotes, line 2); for one object a line, name it .jsonl"


def test_json_places_are_byte_offsets_of_each_item(tmp_path):
    p = tmp_path / "in.json"
    p.write_bytes('[\r\n {"instruction": "一"},\r\n 3,\r\n {"instruction": "二"}\r\n]'.encode())
    rows = list(dataio.read_rows(p))
    data = p.read_bytes()
    assert [data[r.place[0]:r.place[0] + r.place[1]] for r in rows if r.place] == [
        '{"instruction": "一"}'.encode(), b"3", '{"instruction": "二"}'.encode()]
    assert [r.place[2] for r in rows if r.place] == [0, 1, 2]


def test_an_oversized_json_item_is_refused_with_bounded_reads(monkeypatch):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 1000)
    data = b'[{"instruction": "a"}, {"instruction": "' + b"x" * 5000 + b'"}]'
    rows = R.text_rows("json", io.BytesIO(data), name="in.json")
    assert next(rows).record == {"instruction": "a"}
    with pytest.raises(UsageError) as e:
        next(rows)
    assert str(e.value).startswith("in.json: an item is over 1000 characters")


def test_a_row_whose_bytes_changed_is_not_read_again(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"instruction": "a"}\n{"instruction": "b"}\n')
    rows = list(dataio.read_rows(p))
    p.write_bytes(b'{"instruction": "a"}\n{"instruction": "c"}\n')
    again = list(dataio.read_again(p, [r.place for r in rows]))  # type: ignore[misc]
    assert again[0] is not None and again[0].record == {"instruction": "a"} and again[1] is None
