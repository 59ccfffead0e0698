"""The byte-level input readers (localaug/jobs/readers.py), on hand-typed bytes: the exact rows and
messages for BOMs, \\r\\n and \\r line ends, bytes that are not UTF-8, overlong lines, CSV records
over several lines, JSON arrays with nesting and odd white space; the exact place of each row (byte
offset, length, line or item number, CRC-32) and the identical row read again from it; the limits
at exactly the limit and one past. Block sizes are made tiny so that every line end, character and
item meets a block boundary somewhere.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.core.errors import UsageError
from localaug.jobs import readers as R

PROPS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
BLOCKS = [1, 2, 3, 5, 8, 1 << 16]


class Trickle(io.BytesIO):
    """A stream that gives at most ``most`` bytes a read (as a pipe may): every reader must read on."""

    most = 1 << 30

    def read(self, n: int | None = -1) -> bytes:
        return super().read(self.most if n is None or n < 0 else min(n, self.most))


def stream(data: bytes) -> Trickle:
    return Trickle(data)


def rows(kind: str, data: bytes, name: str = "in") -> list[tuple[Any, ...]]:
    return [(r.index, r.record, r.error, r.raw, r.place) for r in R.text_rows(kind, stream(data), name=name)]


def again(kind: str, data: bytes, places: list[Any]) -> list[tuple[Any, ...] | None]:
    return [None if r is None else (r.index, r.record, r.error, r.raw, r.place)
            for r in R.rows_at(kind, io.BytesIO(data), places, name="in")]  # a file: reads whole blocks


def place(data: bytes, start: int, end: int, number: int) -> tuple[int, int, int, int]:
    return start, end - start, number, zlib.crc32(data[start:end])


def round_trip(kind: str, data: bytes) -> None:
    """Each row read again from its place is the row (index aside), in any order."""
    got = list(R.text_rows(kind, io.BytesIO(data), name="in"))
    order = list(reversed(got))
    back = list(R.rows_at(kind, io.BytesIO(data), [r.place for r in order], name="in"))
    assert [(b.record, b.error, b.raw, b.place) for b in back] == [(r.record, r.error, r.raw, r.place) for r in order]  # type: ignore[union-attr]


@pytest.fixture(params=BLOCKS)
def block(request, monkeypatch):
    """Every test that takes it runs with blocks of 1, 2, 3, 5, 8 bytes and the real 64 KiB: the
    readers' own block sizes, and a stream that gives no more at a time."""
    if request.param < 1 << 16:
        monkeypatch.setattr(R, "_READ", request.param)
        monkeypatch.setattr(R, "_SKIP", max(request.param, 4))
        monkeypatch.setattr(Trickle, "most", request.param)
    return request.param


# --- lines ------------------------------------------------------------------------------------------------


def reference_lines(data: bytes, cap: int | None) -> list[tuple[int, bytes | None, bytes]]:
    """(offset, content, end) of each line, from the whole bytes at once."""
    out: list[tuple[int, bytes | None, bytes]] = []
    pos = 0
    for m in re.finditer(rb"\r\n|\r|\n", data):
        content = data[pos:m.start()]
        out.append((pos, None if cap is not None and len(content) > cap else content, m.group()))
        pos = m.end()
    if pos < len(data):
        out.append((pos, None if cap is not None and len(data) - pos > cap else data[pos:], b""))
    return out


@PROPS
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"bc", b"\xe4\xbd\xa0", b"\r\r", b"\n\r", b"xxxxxxx"]),
                max_size=30).map(b"".join),
       st.sampled_from([1, 2, 3, 4, 7, 1 << 16]), st.sampled_from([1, 2, 5, 1 << 20]),
       st.one_of(st.none(), st.integers(0, 9)))
def test_byte_lines_are_those_of_the_whole_bytes(data, read, skip, cap):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "_READ", read)
        mp.setattr(R, "_SKIP", skip)
        assert list(R.byte_lines(io.BytesIO(data), cap)) == reference_lines(data, cap)


def test_byte_lines_by_hand():
    data = b"a\r\nb\rc\n\nd\r"
    assert list(R.byte_lines(io.BytesIO(data))) == [(0, b"a", b"\r\n"), (3, b"b", b"\r"), (5, b"c", b"\n"),
                                                    (7, b"", b"\n"), (8, b"d", b"\r")]
    assert list(R.byte_lines(io.BytesIO(b""))) == []
    assert list(R.byte_lines(io.BytesIO(b"no end"))) == [(0, b"no end", b"")]
    assert list(R.byte_lines(io.BytesIO(b"12345\n123456\n1234567"), 6)) == [
        (0, b"12345", b"\n"), (6, b"123456", b"\n"), (13, None, b"")]
    assert list(R.byte_lines(io.BytesIO(b"1234567\r"), 6)) == [(0, None, b"\r")]  # skipped up to a \r at the end


def test_a_line_skipped_up_to_a_lone_cr_reads_no_further(monkeypatch):
    monkeypatch.setattr(R, "_READ", 4)
    monkeypatch.setattr(R, "_SKIP", 16)
    f = Reads(b"x" * 10 + b"\ry" + b"z" * 1000)
    lines = R.byte_lines(f, 5)
    assert next(lines) == (0, None, b"\r")
    assert f.tell() <= 10 + 2 + 16  # the \r, the byte that shows it is no \r\n, at most one block more
    assert list(lines) == [(11, None, b"")]  # the next line, over the cap too


class Reads(io.BytesIO):
    """A stream that keeps the size of each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n: int | None = -1) -> bytes:
        self.asked.append(-1 if n is None else n)
        return super().read(n)


def test_a_line_over_the_cap_is_read_in_bounded_blocks(monkeypatch):
    monkeypatch.setattr(R, "_READ", 4)
    monkeypatch.setattr(R, "_SKIP", 16)
    f = Reads(b"ab\n" + b"x" * 100 + b"\r\ncd")
    assert list(R.byte_lines(f, 5)) == [(0, b"ab", b"\n"), (3, None, b"\r\n"), (105, b"cd", b"")]
    assert max(f.asked) <= 16  # never the whole line
    # blocks of 4 up to the cap and one byte (6 bytes: "ab\n" + 3 "x", then 3 + 1 + 1 "x" held), then
    # the rest of the line skipped in blocks of _SKIP
    assert f.asked[:4] == [4, 4, 1, 16]


def test_the_end_of_a_line():
    assert [R._end_of(d) for d in (b"a\r\n", b"a\r", b"a\n", b"a", b"", b"\n\r", b"\r\n\n")] == [
        b"\r\n", b"\r", b"\n", b"", b"", b"\r", b"\n"]


# --- JSON Lines -----------------------------------------------------------------------------------------------

JSONL = (b'\xef\xbb\xbf{"instruction": "bom"}\r\n'  # line 1: a BOM, as a text reader gives it, is no JSON
         b'{"instruction": "\xe4\xbd\xa0"}\r\n'  # 2
         b"  \t \r"  # 3: blank
         b'{"a": "open\n'  # 4: a string left open at the line end
         b'{"a": "\\uDC80"}\n'  # 5: a lone surrogate, written upper case
         b'{"a": "caf\xe9"}\r'  # 6: Latin-1
         b'{"a": 1, "b": {"c": [1, 2]}}\n'  # 7
         b'{"a": "still open')  # 8: at the end of the file, no line end
JSONL_ROWS = [
    (0, {}, "invalid JSON on line 1: Unexpected UTF-8 BOM (decode using utf-8-sig)", '\ufeff{"instruction": "bom"}',
     place(JSONL, 0, 27, 1)),
    (1, {"instruction": "你"}, None, None, place(JSONL, 27, 51, 2)),
    (2, {}, "invalid JSON on line 4: Invalid control character at", '{"a": "open', place(JSONL, 56, 68, 4)),
    (3, {}, "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row", '{"a": "\\uDC80"}',
     place(JSONL, 68, 84, 5)),
    (4, {}, "text that is not valid UTF-8 or Unicode (at character 3): fix or remove the row", '{"a": "caf\udce9"}',
     place(JSONL, 84, 98, 6)),
    (5, {"a": 1, "b": {"c": [1, 2]}}, None, None, place(JSONL, 98, 127, 7)),
    (6, {}, "invalid JSON on line 8: Unterminated string starting at", '{"a": "still open', place(JSONL, 127, 144, 8)),
]


def test_jsonl_rows_and_places_by_hand(block):
    assert len(JSONL) == 144
    assert rows("jsonl", JSONL) == JSONL_ROWS
    assert again("jsonl", JSONL, [r[4] for r in JSONL_ROWS]) == [(0, *r[1:]) for r in JSONL_ROWS]


def test_jsonl_numbering_and_a_changed_file():
    assert [r.index for r in R.text_rows("jsonl", io.BytesIO(JSONL), start=7)] == list(range(7, 14))
    places = [r[4] for r in JSONL_ROWS]
    edited = JSONL.replace(b'"b": {"c"', b'"B": {"c"')
    assert again("jsonl", edited, places) == [(0, *r[1:]) for r in JSONL_ROWS[:5]] + [None, (0, *JSONL_ROWS[6][1:])]
    assert again("jsonl", JSONL[:-1], places)[-1] is None  # cut: fewer bytes than counted


@pytest.mark.parametrize("line, error", [
    (b"[1]", "line 1 is not a JSON object"),
    (b'"text"', "line 1 is not a JSON object"),
    (b"null", "line 1 is not a JSON object"),
    (b'{"a": 1} {"b": 2}', "invalid JSON on line 1: Extra data"),
    (b'{"a": 1,}', "invalid JSON on line 1: Expecting property name enclosed in double quotes"),
    (b'{"a" 1}', "invalid JSON on line 1: Expecting ':' delimiter"),
    (b'{"k": 1, "j": {"k": 2, "k": 3}, "j": 4}', "line 1 holds the key 'k' twice (a reader keeps only one): remove or rename one"),
    (b'{"a": "\\ud83d\\ude00 ok"}', None),  # a surrogate pair is one character
    (b'{"a": "\\ud800"}', "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row"),
    (b'{"\\udfff": 1}', "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row"),
    (b'{"a": ["x", "\xff"]}', "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row"),
    (b'{"a": "\xe4\xbd"}', "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row"),
    (b'{"n": NaN, "i": -Infinity}', None),
])
def test_one_jsonl_line(line, error):
    for end in (b"", b"\n", b"\r\n", b"\r"):
        [(index, record, got, raw, at)] = rows("jsonl", line + end)
        assert (index, got, at) == (0, error, place(line + end, 0, len(line + end), 1))
        assert (record == {}) is (error is not None)
        assert raw == (None if error is None else line.decode("utf-8", "surrogateescape"))
        round_trip("jsonl", line + end)


def test_jsonl_too_deep():
    line = b"[" * 100_000 + b"\n"
    [(_, _, error, raw, at)] = rows("jsonl", b'\n' + line)
    assert (error, raw, at) == ("line 2 is nested too deep to read", "[" * 1000, place(b"\n" + line, 1, len(line) + 1, 2))
    round_trip("jsonl", b"\n" + line)


@pytest.mark.parametrize("chars, too_long", [(8, False), (9, True)])
def test_a_jsonl_line_at_the_limit_and_one_past_in_characters(monkeypatch, block, chars, too_long):
    """The limit counts characters: 8 three-byte characters (24 bytes) are within a limit of 8."""
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 8)
    line = ('"' + "一" * (chars - 2) + '"').encode()
    assert len(line.decode()) == chars
    data = b"{}\n" + line + b"\r\n{}"
    want_error = "line 2 is over 8 characters: split it or shorten it" if too_long else "line 2 is not a JSON object"
    got = rows("jsonl", data)
    assert [g[2] for g in got] == [None, want_error, None]
    assert got[1][4] == ((3, -1, 2, 0) if too_long else place(data, 3, 3 + len(line) + 2, 2))
    assert got[2][4] == place(data, len(data) - 2, len(data), 3)
    round_trip("jsonl", data)


@pytest.mark.parametrize("size, skipped", [(32, False), (33, True)])
def test_a_line_of_more_than_four_bytes_a_character_is_not_read(monkeypatch, block, size, skipped):
    """A limit of 8 characters: a line of 32 bytes is read (and found too long), of 33 skipped unread."""
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 8)
    data = b"x" * size + b"\n{}\n"
    assert list(R.byte_lines(io.BytesIO(data), 32))[0][1] == (None if skipped else b"x" * size)
    got = rows("jsonl", data)
    assert got == [(0, {}, "line 1 is over 8 characters: split it or shorten it", None, (0, -1, 1, 0)),
                   (1, {}, None, None, place(data, size + 1, size + 4, 2))]
    assert again("jsonl", data, [got[0][4]]) == [(0, {}, "line 1 is over 8 characters: split it or shorten it", None,
                                                  (0, -1, 1, 0))]


# --- CSV ------------------------------------------------------------------------------------------------------

CSV = ('\ufeffinstruction,lang\r\n'  # a BOM before the header is dropped
       '"one\r\ntwo, three",en\r\n'  # a record over two lines
       'plain,\r\n'
       '\ufeffbom inside,x\r\n'  # a BOM elsewhere is text
       '"a ""quoted""\rword",fr\r'  # \r alone ends a line too
       ).encode() + b'caf\xe9,fr\n' + '"last\n\n",zh'.encode()


def test_csv_rows_and_places_by_hand(block):
    h = len("\ufeffinstruction,lang\r\n".encode())
    ends = [h, h + 22, h + 30, h + 47, h + 70, h + 78, len(CSV)]
    assert ends[1:] == [CSV.index(b"plain"), CSV.index(b"\xef\xbb\xbfbom inside"), CSV.index(b'"a ""'),
                        CSV.index(b"caf\xe9"), CSV.index(b'"last'), len(CSV)]
    got = rows("csv", CSV)
    assert got == [
        (0, {"instruction": "one\r\ntwo, three", "lang": "en"}, None, None, place(CSV, ends[0], ends[1], 1)),
        (1, {"instruction": "plain", "lang": ""}, None, None, place(CSV, ends[1], ends[2], 3)),
        (2, {"instruction": "\ufeffbom inside", "lang": "x"}, None, None, place(CSV, ends[2], ends[3], 4)),
        (3, {"instruction": 'a "quoted"\rword', "lang": "fr"}, None, None, place(CSV, ends[3], ends[4], 5)),
        (4, {}, "text that is not valid UTF-8 or Unicode (at character 3): fix or remove the row", None,
         place(CSV, ends[4], ends[5], 7)),
        (5, {"instruction": "last\n\n", "lang": "zh"}, None, None, place(CSV, ends[5], ends[6], 8)),
    ]
    assert again("csv", CSV, [g[4] for g in reversed(got)]) == [(0, *g[1:]) for g in reversed(got)]
    assert [r.index for r in R.text_rows("csv", io.BytesIO(CSV), start=4)] == [4, 5, 6, 7, 8, 9]


def test_a_bad_csv_record_fails_alone_and_again_from_its_place(monkeypatch, block):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    old = csv.field_size_limit()
    try:
        csv.field_size_limit(10)
        data = b'h\r\n"ok\nok"\r\n' + b"y" * 11 + b"\r\nz\r\n"
        got = rows("csv", data)
        assert [(g[0], g[1], g[2]) for g in got] == [
            (0, {"h": "ok\nok"}, None), (1, {}, "bad CSV record near line 4: field larger than field limit (10)"),
            (2, {"h": "z"}, None)]
        assert [g[4] for g in got] == [place(data, 3, 12, 1), place(data, 12, 25, 3), place(data, 25, 28, 4)]
        back = again("csv", data, [g[4] for g in got])
        assert back == [(0, *g[1:]) for g in got]
    finally:
        csv.field_size_limit(old)


def test_a_csv_field_at_the_limit_and_one_past(monkeypatch):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    old = csv.field_size_limit()
    try:
        csv.field_size_limit(1)
        data = "h\n" + "é" * 10 + "\n" + "é" * 11 + "\n"
        got = rows("csv", data.encode())
        assert [(g[1], g[2]) for g in got] == [({"h": "é" * 10}, None),
                                               ({}, "bad CSV record near line 3: field larger than field limit (10)")]
        assert csv.field_size_limit() == 10
    finally:
        csv.field_size_limit(old)


@pytest.mark.parametrize("data, header", [
    (b"", []), (b"\xef\xbb\xbf", []), (b"a,b\r\n", ["a", "b"]), (b"\xef\xbb\xbfa\xff\n1\n", ["a\udcff"]),
])
def test_csv_headers(data, header):
    assert R._csv_header(io.BytesIO(data), "in") == header


def test_a_csv_header_named_twice_names_the_file():
    with pytest.raises(UsageError) as e:
        rows("csv", b"a,b,a\n1,2,3\n", name="t.csv")
    assert str(e.value) == ("t.csv: the header names column 'a' twice (columns 1 and 3); a reader keeps only one: "
                            "rename one of them")


# --- JSON arrays ----------------------------------------------------------------------------------------------

JSON = ('[\r\n'
        '  {"instruction": "一", "n": [1, {"deep": [true, null]}]}\t,\r'
        '  42 ,\n'
        '\t{ "instruction" : "two\\n\\u4e8c" } ,'
        '[{"x": "\\ud800"}],   {"s": "\\udc80"}\r\n'
        ']\r\n').encode()


def test_json_rows_and_places_by_hand(block):
    one = JSON.index(b'{"instruction": "')
    items = [(one, JSON.index(b"\t,\r")), (JSON.index(b"42"), JSON.index(b"42") + 2),
             (JSON.index(b'{ "instr'), JSON.index(b"} ,[") + 1), (JSON.index(b'[{"x"'), JSON.index(b'}],') + 2),
             (JSON.index(b'{"s"'), JSON.index(b'"}\r\n]') + 2)]
    got = rows("json", JSON)
    assert got == [
        (0, {"instruction": "一", "n": [1, {"deep": [True, None]}]}, None, None, place(JSON, *items[0], 0)),
        (1, {}, "item 1 is not a JSON object", "42", place(JSON, *items[1], 1)),
        (2, {"instruction": "two\n二"}, None, None, place(JSON, *items[2], 2)),
        (3, {}, "item 3 is not a JSON object", '[{"x": "\\ud800"}]', place(JSON, *items[3], 3)),
        (4, {}, "text that is not valid UTF-8 or Unicode (at character 0): fix or remove the row", '{"s": "\\udc80"}',
         place(JSON, *items[4], 4)),
    ]
    assert again("json", JSON, [g[4] for g in reversed(got)]) == [(0, *g[1:]) for g in reversed(got)]
    assert [r.index for r in R.text_rows("json", io.BytesIO(JSON), start=3)] == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("data, want", [
    (b"[]", []),
    (b" \r\n[ \t\r\n ] \n", []),
    (b'{"rows": []}', []),
    (b'{"meta": {"a": [1]}, "rows": [{"a": 1}], "n": 2}', [{"a": 1}]),
    (b'{ "rows" :[ {"a":1} ,{"b":"\\u00e9"} ] }', [{"a": 1}, {"b": "é"}]),
    (b'[{"a": 1}]\n\n', [{"a": 1}]),
    (b'[{"a": 1.5e3, "b": -0, "c": 12345678901234567890}]', [{"a": 1500.0, "b": 0, "c": 12345678901234567890}]),
])
def test_json_documents(block, data, want):
    assert [r[1] for r in rows("json", data)] == want
    round_trip("json", data)


def refusal(data: bytes, name: str = "in.json") -> str:
    with pytest.raises(UsageError) as e:
        list(R.text_rows("json", stream(data), name=name))
    return str(e.value)


def not_valid(msg: str, line: int) -> str:
    return f"in.json is not valid JSON ({msg}, line {line}); for one object a line, name it .jsonl"


@pytest.mark.parametrize("data, message", [
    (b"", not_valid("Expecting value", 1)),
    (b"  \n ", not_valid("Expecting value", 2)),
    (b'\xef\xbb\xbf[{"a": 1}]', not_valid("Unexpected UTF-8 BOM (decode using utf-8-sig)", 1)),
    (b'[{"a": 1},\r\n{"b": 2}\r\n{"c": 3}]', not_valid("Expecting ',' delimiter", 3)),
    (b'[{"a": 1},\r{"b": 2},\r\r{"c": }]', not_valid("Expecting value", 4)),
    (b'[{"a": 1},\n\n{"b": 2},]', not_valid("Expecting value", 3)),
    (b'[{"a": 1}] [', not_valid("Extra data", 1)),
    (b'[{"a": 1}]\r\n\r\nx', not_valid("Extra data", 3)),
    (b'[{"a": 1}', not_valid("Expecting ',' delimiter", 1)),
    (b'[{"a": 1} {"b": 2}\n\n\n]', not_valid("Expecting ',' delimiter", 1)),  # the lines after it are not counted
    (b'[\n{"a":\n1,\n"b" 2}\n]', not_valid("Expecting ':' delimiter", 4)),  # where in the item, not where it began
    (b'[{"a": "\n"}]', not_valid("Invalid control character at", 1)),
    (b'[{"a": "open}]', not_valid("Unterminated string starting at", 1)),
    (b'{"rows" [1]}', not_valid("Expecting ':' delimiter", 1)),
    (b"{\n\n'rows': []}", not_valid("Expecting property name enclosed in double quotes", 3)),
    (b'{"rows": [], }', not_valid("Expecting property name enclosed in double quotes", 1)),
    (b'{"rows": [] "x": 1}', not_valid("Expecting ',' delimiter", 1)),
    (b'{"rows": [{"a": 1}]', not_valid("Expecting ',' delimiter", 1)),
    (b'{"rows": [{"a": 1}]}}', not_valid("Extra data", 1)),
    (b"nul", not_valid("Expecting value", 1)),
    (b'"text"', "in.json: expected a JSON array of objects"),
    (b"3 ", "in.json: expected a JSON array of objects"),
    (b"{}", "in.json: expected a JSON array of objects"),
    (b'{"a": 1, "b": "x"}', "in.json: expected a JSON array of objects"),
    (b'{"a": [1], "b": []}', "in.json: expected a JSON array of objects"),
    (b'{"a": [], "a": 1}', "in.json: an object holds the key 'a' twice (a reader keeps only one): remove or rename one"),
    (b'[{"k": {"x": 1, "x": 2}}]', "in.json: an object holds the key 'x' twice (a reader keeps only one): remove or rename one"),
    (b'[{"a": "\xff"}]', "in.json is not UTF-8 text (a bad byte at 8): save it as UTF-8"),
    (b'[{"a": "\xe4\xbd\xa0\xe4\xbd"}]', "in.json is not UTF-8 text (a bad byte at 11): save it as UTF-8"),
    (b'[{"a": "\xe4\xbd\xa0"}, "\xe4\xbd\xa0\xed\xa0\x80"]', "in.json is not UTF-8 text (a bad byte at 19): save it as UTF-8"),
])
def test_json_refusals_by_hand(block, data, message):
    assert refusal(data) == message


@pytest.mark.parametrize("size", [8, 1 << 16])  # one-byte blocks over 100,000 bytes are slow and add nothing
def test_json_nested_too_deep(size, monkeypatch):
    monkeypatch.setattr(R, "_READ", size)
    monkeypatch.setattr(Trickle, "most", size)
    assert refusal(b"[" * 100_000) == "in.json is nested too deep to read: flatten it, or give one object a line as .jsonl"


def test_a_json_array_refused_after_its_first_rows():
    data = b'[{"a": 1},\n{"b": 2},\n{"c": ]'
    got = R.text_rows("json", io.BytesIO(data), name="in.json")
    assert [next(got).record, next(got).record] == [{"a": 1}, {"b": 2}]
    with pytest.raises(UsageError) as e:
        next(got)
    assert str(e.value) == not_valid("Expecting value", 3)


@pytest.mark.parametrize("chars, ok", [(10, True), (11, False)])
def test_a_json_item_at_the_limit_and_one_past(monkeypatch, block, chars, ok):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    item = ('{"a":"' + "é" * (chars - 8) + '"}').encode()
    assert len(item.decode()) == chars
    data = b'[{"b":1},\r\n' + item + b"]"
    if ok:
        got = rows("json", data)
        assert got[1] == (1, {"a": "é" * (chars - 8)}, None, None, place(data, 11, 11 + len(item), 1))
        round_trip("json", data)
    else:
        assert refusal(data) == ("in.json: an item is over 10 characters (or the JSON is broken from line 2): give one "
                                 "object a line as .jsonl")


def test_an_item_left_open_is_refused_once_it_is_over_the_limit(monkeypatch, block):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    assert refusal(b'[{"a": 1},\n\n "' + b"x" * 40) == (
        "in.json: an item is over 10 characters (or the JSON is broken from line 3): give one object a line as .jsonl")
    assert refusal(b'[\n"' + b"x" * 9) == not_valid("Unterminated string starting at", 2)


def test_a_long_json_document_is_let_go_as_it_is_read(monkeypatch):
    """Read in 64-byte blocks, the text held stays near the item being read, and the lines and byte
    offsets of what was let go still count."""
    monkeypatch.setattr(R, "_READ", 64)
    monkeypatch.setattr(Trickle, "most", 64)
    items = [('{"n": %d, "t": "%s"}' % (i, "é" * (i % 7))).encode() for i in range(300)]
    data = b"[" + b",\r\n".join(items) + b"\r\n, x]"
    doc = R._JsonText(stream(data), "in.json")
    items_read = R._items(doc, 0)
    got, held = [], 0
    for _ in range(300):
        got.append(next(items_read))
        held = max(held, len(doc.text))
    assert held <= 4 * 64 and len(data) > 8000
    assert [g.place for g in got] == [place(data, data.index(it), data.index(it) + len(it), i) for i, it in enumerate(items)]
    with pytest.raises(UsageError) as e:
        next(items_read)
    assert str(e.value) == not_valid("Expecting value", 301)


def test_json_text_cut_keeps_lines_and_offsets(monkeypatch):
    monkeypatch.setattr(R, "_READ", 4)
    monkeypatch.setattr(Trickle, "most", 4)
    data = "[\r\n1,\r\n2,\r3,\n\"é\",\r\n".encode() + b" " * 20 + b"x]"
    doc = R._JsonText(stream(data), "in.json")
    items_read = R._items(doc, 0)
    got = [next(items_read) for _ in range(4)]
    assert [g.raw for g in got] == ["1", "2", "3", '"\\u00e9"']
    assert [g.place[:3] for g in got] == [(3, 1, 0), (7, 1, 1), (10, 1, 2), (13, 4, 3)]
    with pytest.raises(UsageError) as e:
        next(items_read)
    assert str(e.value) == not_valid("Expecting value", 6)
    assert doc.lines + R._line_ends(doc.text[:doc.pos]) == 5 and doc.lines > 0  # some were let go


def test_line_ends_count_universal_newlines():
    assert [R._line_ends(t) for t in ("", "a", "\n", "\r", "\r\n", "\n\r", "\r\r\n\n", "a\rb\nc\r\nd")] == [
        0, 0, 1, 1, 1, 2, 3, 3]


# --- reading again: what the places say ---------------------------------------------------------------------


def test_rows_at_a_place_whose_bytes_changed_are_none():
    data = b'{"a": 1}\n{"a": 2}\n'
    places = [r.place for r in R.text_rows("jsonl", io.BytesIO(data))]
    assert again("jsonl", b'{"a": 1}\n{"a": 3}\n', places) == [(0, {"a": 1}, None, None, places[0]), None]
    assert again("jsonl", b'{"a": 1}\n{"a": 2}', places) == [(0, {"a": 1}, None, None, places[0]), None]
    assert again("jsonl", data, [(0, 8, 1, zlib.crc32(b'{"a": 1}'))]) == [(0, {"a": 1}, None, None, (0, 8, 1, zlib.crc32(b'{"a": 1}')))]
    assert again("jsonl", data, []) == []
    data = b'[{"a": 1}, {"a": 2}]'
    places = [r.place for r in R.text_rows("json", io.BytesIO(data))]
    assert again("json", b'[{"a": 1}, {"b": 2}]', places) == [(0, {"a": 1}, None, None, places[0]), None]


def test_a_place_with_no_length_is_a_line_too_long_to_read():
    assert again("jsonl", b"", [(5, -1, 3, 0)]) == [(0, {}, "line 3 is over 67108864 characters: split it or shorten it",
                                                    None, (5, -1, 3, 0))]
    assert R._too_long(3) == "line 3 is over 67108864 characters: split it or shorten it"


# --- parsed values: keys twice, invalid text ----------------------------------------------------------------


def test_loads_names_the_first_key_held_twice_and_forgets_it():
    loads = R.Loads()
    assert loads('{"a": {"b": 1, "b": 2}, "a": 3}') == ({"a": 3}, "b")
    assert loads('{"a": 1}') == ({"a": 1}, None)
    assert loads.raw('  {"x": [1, {"y": 1, "y": 2}]} tail', 2) == ({"x": [1, {"y": 2}]}, 30, "y")
    assert loads.raw('{"x": 1}', 0) == ({"x": 1}, 8, None)
    with pytest.raises(ValueError, match="Unexpected UTF-8 BOM"):
        loads('\ufeff{"a": 1}')


@pytest.mark.parametrize("source, may", [
    ('{"a": "b"}', False), ('{"a": "\\ud800"}', True), ('{"a": "\\uDFFF"}', True), ('{"a": "\\u00e9"}', False),
    ('{"a": "é"}', False), ('{"a": "\udcff"}', True), ('{"a": "\\\\ud800"}', True),
])
def test_which_json_text_may_hold_invalid_unicode(source, may):
    assert R.may_hold_invalid(source) is may


def test_invalid_text_is_found_anywhere_in_a_value():
    bad = "ok\ud800"
    assert R.invalid_text({"a": [1, {"b": bad}]}) == "text that is not valid UTF-8 or Unicode (at character 2): fix or remove the row"
    assert R.invalid_text({bad: 1}) is not None and R.invalid_text([None, 2.5, bad]) is not None
    assert R.invalid_text({"a": ["fine", {"b": "é"}]}) is None and R.invalid_text(3) is None


def test_the_constants():
    assert (R.MAX_ROW_CHARS, R.TEXT_KINDS, R._READ, R._SKIP) == (64 << 20, ("jsonl", "json", "csv"), 1 << 16, 1 << 20)
