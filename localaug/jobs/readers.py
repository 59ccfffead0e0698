"""Input rows of text files (JSON Lines, JSON arrays, CSV), each with its place in the file.

The readers work on the file's bytes, so that each row knows where it is (``InputRow.place``: byte
offset, length, line or item number, CRC-32 of those bytes). A job reads its input once, to count
and key the rows, and reads a row still to do again from its place when its turn comes
(``rows_at``), never the whole input a second time.

Each reader gives the rows a text-mode reader of the file gives: lines end at \\r\\n, \\r or \\n
(universal newlines); bytes that are not UTF-8 survive decoding (as surrogates) in JSON Lines and
CSV, so that only their row fails, with the reason; CSV keeps newlines inside quoted fields and
drops a byte-order mark. A JSON array (or the one array in an object) is read item by item, so a
run with a limit or a shard reads no further than it needs; an item, like a JSON Lines line, may
be up to ``MAX_ROW_CHARS`` characters.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from localaug.core.errors import UsageError
from localaug.jobs.rows import (  # noqa: F401 - the rows' names, as they were here
    InputRow,
    Loads,
    Place,
    invalid_text,
    may_hold_invalid,
    refuse_duplicate_columns,
    row_of,
)

MAX_ROW_CHARS = 64 << 20  # a JSONL line, JSON item or CSV field longer than this is refused, read no further
TEXT_KINDS = ("jsonl", "json", "csv")
_READ = 1 << 16
_SKIP = 1 << 20
_EOL = re.compile(rb"\r\n?|\n")
_BOM = codecs.BOM_UTF8
_WS = " \t\n\r"

def text_rows(kind: str, stream: BinaryIO, start: int = 0, name: str = "input") -> Iterator[InputRow]:
    """The rows of one JSONL, JSON-array or CSV file given as a binary stream, numbered from
    ``start`` (``dataio.read_rows`` for a path; ``localaug.jobs.on_ray`` for bytes read by Ray Data)."""
    if kind == "jsonl":
        yield from _read_jsonl(stream, start)
    elif kind == "json":
        yield from _read_json(stream, start, name)
    else:
        yield from _read_csv(stream, start, name)


def rows_at(kind: str, stream: BinaryIO, places: Iterable[Place], name: str = "input") -> Iterator[InputRow | None]:
    """The rows at ``places`` (of rows ``text_rows`` gave from the same stream), read again in the
    order given (their index left 0); None for a place whose bytes are no longer what they were."""
    loads = Loads()
    header = _csv_header(stream, name) if kind == "csv" else []
    for offset, length, number, crc in places:
        if length < 0:  # a line too long to read, then and now
            yield InputRow(0, {}, _too_long(number), place=(offset, length, number, crc))
            continue
        stream.seek(offset)
        data = stream.read(length)
        if len(data) != length or zlib.crc32(data) != crc:
            yield None
            continue
        place = (offset, length, number, crc)
        if kind == "jsonl":
            end = _end_of(data)
            yield _jsonl_row(0, number, data[:len(data) - len(end)], bool(end), loads, place)
        elif kind == "json":
            text = data.decode("utf-8")
            value, _, _ = loads.raw(text, 0)
            yield row_of(0, value, f"item {number}", lambda v=value: json.dumps(v, ensure_ascii=True)[:100_000], text, place)
        else:
            yield _csv_again(data, header, number, place)


# --- lines --------------------------------------------------------------------------------------------


class _Bytes:
    """A binary stream read forward in blocks, knowing the stream offset of its first byte held."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.buf, self.base, self.eof = f, bytearray(), 0, False

    def more(self, n: int) -> None:
        block = self.f.read(max(n, 1))
        if block:
            self.buf += block
        else:
            self.eof = True

    def drop(self, n: int) -> None:
        del self.buf[:n]
        self.base += n


def byte_lines(f: BinaryIO, cap: int | None = None) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(offset, content, end) of each line of ``f``, ``end`` being the bytes that end it (\\r\\n, \\r,
    \\n, or nothing at the end of the stream); ``content`` is None for a line of more than ``cap``
    bytes, skipped without being held in memory."""
    src = _Bytes(f)
    pos = scan = 0  # the line begins at src.buf[pos]; no line end before src.buf[scan]
    while True:
        m = _EOL.search(src.buf, scan)
        if m is not None and (m.end() < len(src.buf) or src.eof or m.group() != b"\r"):
            yield src.base + pos, bytes(src.buf[pos:m.start()]), m.group()
            pos = scan = m.end()
            continue
        if src.eof:
            if pos < len(src.buf):
                yield src.base + pos, bytes(src.buf[pos:]), b""
            return
        scan = len(src.buf) if m is None else m.start()  # a \r at the very end may be half of \r\n
        if cap is not None and scan - pos > cap:
            start = src.base + pos
            pos, end = _skip_line(src, scan)
            scan = pos
            yield start, None, end
            continue
        if pos:
            src.drop(pos)
            scan, pos = scan - pos, 0
        want = min(max(_READ, len(src.buf)), _SKIP)
        src.more(want if cap is None else min(want, max(cap + 1 - len(src.buf), 1)))


def _skip_line(src: _Bytes, scan: int) -> tuple[int, bytes]:
    """Read past the end of the line that has no end before ``src.buf[scan]``; (where the next
    line begins in ``src.buf``, the bytes that ended this one)."""
    src.drop(scan)
    while True:
        m = _EOL.search(src.buf)
        if m is not None and (m.end() < len(src.buf) or src.eof or m.group() != b"\r"):
            return m.end(), m.group()
        if src.eof:
            return len(src.buf), b""
        src.drop(len(src.buf) if m is None else m.start())
        src.more(_SKIP)


def _end_of(data: bytes) -> bytes:
    return b"\r\n" if data.endswith(b"\r\n") else data[-1:] if data.endswith((b"\r", b"\n")) else b""


# --- JSON Lines -----------------------------------------------------------------------------------------


def _too_long(lineno: int) -> str:
    return f"line {lineno} is over {MAX_ROW_CHARS} characters: split it or shorten it"


def _read_jsonl(f: BinaryIO, start: int) -> Iterator[InputRow]:
    i, loads = start, Loads()
    # a line of more than 4 bytes a character cannot be short enough: skipped unread
    for lineno, (offset, content, end) in enumerate(byte_lines(f, 4 * MAX_ROW_CHARS), 1):
        if content is None:
            yield InputRow(i, {}, _too_long(lineno), place=(offset, -1, lineno, 0))
            i += 1
            continue
        data = content + end
        row = _jsonl_row(i, lineno, content, bool(end), loads, (offset, len(data), lineno, zlib.crc32(data)))
        if row is not None:
            yield row
            i += 1


def _jsonl_row(i: int, lineno: int, content: bytes, ended: bool, loads: Loads, place: Place) -> InputRow | None:
    """The row of one line (None: a blank line, no row); ``ended``: by a line end (parsed with its
    \n, as a text-mode reader gives it: a string left open at the end of the line is then one
    holding a control character)."""
    raw = content.decode("utf-8", "surrogateescape")
    if len(raw) > MAX_ROW_CHARS:
        return InputRow(i, {}, _too_long(lineno), place=(place[0], -1, lineno, 0))
    if not raw.strip():
        return None
    try:
        rec, twice = loads(raw + "\n" if ended else raw)
    except json.JSONDecodeError as e:
        return InputRow(i, {}, f"invalid JSON on line {lineno}: {e.msg}", raw=raw, place=place)
    except RecursionError:
        return InputRow(i, {}, f"line {lineno} is nested too deep to read", raw=raw[:1000], place=place)
    if twice is not None:
        return InputRow(i, {}, f"line {lineno} holds the key {twice!r} twice (a reader keeps only one): remove "
                               "or rename one", raw=raw, place=place)
    return row_of(i, rec, f"line {lineno}", raw, raw, place)


# --- CSV ----------------------------------------------------------------------------------------------


class _CsvLines:
    """Lines for the csv module, as a text file opened with newline="" gives them, counting the
    lines and bytes handed out (and their CRC-32 since ``crc`` was last reset)."""

    def __init__(self, lines: Iterator[tuple[int, bytes | None, bytes]], bom: bool) -> None:
        self.lines, self.bom = lines, bom
        self.count = self.consumed = self.crc = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        offset, content, end = next(self.lines)
        assert content is not None
        data = content + end
        self.count += 1
        self.consumed = offset + len(data)
        self.crc = zlib.crc32(data, self.crc)
        if self.bom and offset == 0 and data.startswith(_BOM):
            data = data[len(_BOM):]
        return data.decode("utf-8", "surrogateescape")


def _csv_reader(lines: _CsvLines, name: str, fieldnames: list[str] | None = None) -> tuple[csv.DictReader[str], list[str]]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_CHARS))
    reader = csv.DictReader(lines, fieldnames=fieldnames)
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise UsageError(f"{name}: the CSV header cannot be read ({e}): fix the first line") from None
    return reader, list(header)


def _csv_header(f: BinaryIO, name: str) -> list[str]:
    f.seek(0)
    return _csv_reader(_CsvLines(byte_lines(f), bom=True), name)[1]


def _read_csv(f: BinaryIO, start: int, name: str) -> Iterator[InputRow]:
    lines = _CsvLines(byte_lines(f), bom=True)
    reader, header = _csv_reader(lines, name)
    refuse_duplicate_columns(header, name)
    i = start
    while True:
        at, before, lines.crc = lines.consumed, lines.count, 0
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a malformed or oversized record fails alone
            # the csv reader's own count: DictReader's is that of the last record read whole
            yield InputRow(i, {}, f"bad CSV record near line {reader.reader.line_num}: {e}",
                           place=(at, lines.consumed - at, before, lines.crc))
        else:
            why = invalid_text(rec)
            yield InputRow(i, {} if why else dict(rec), why, place=(at, lines.consumed - at, before, lines.crc))
        i += 1


def _csv_again(data: bytes, header: list[str], before: int, place: Place) -> InputRow:
    lines = _CsvLines(byte_lines(io.BytesIO(data)), bom=False)
    reader, _ = _csv_reader(lines, "input", header)
    try:
        rec = next(reader)
    except csv.Error as e:
        return InputRow(0, {}, f"bad CSV record near line {before + reader.reader.line_num}: {e}", place=place)
    why = invalid_text(rec)
    return InputRow(0, {} if why else dict(rec), why, place=place)


# --- JSON arrays ------------------------------------------------------------------------------------


class _JsonText:
    """A JSON document decoded as it is read (strict UTF-8), with the byte offset and line of each
    character kept for places and messages."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f, self.name = f, name
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.text, self.pos, self.eof = "", 0, False
        self.fed = 0  # bytes given to the decoder
        self.cursor = (0, 0)  # (character, its byte offset) in self.text
        self.lines = 0  # line ends before self.text[0]
        self.loads = Loads()

    def more(self, n: int = _READ) -> bool:
        """Read on (False at the end); the text before ``pos`` is let go."""
        if self.eof:
            return False
        cut = self.pos - (self.pos > 0 and self.text[self.pos - 1] == "\r")  # never between \r and \n
        if cut > _READ:
            self.byte_at(cut)
            self.lines += _line_ends(self.text[:cut])
            self.text, self.pos, self.cursor = self.text[cut:], self.pos - cut, (0, self.cursor[1])
        block = self.f.read(n)
        pending = len(self.decoder.getstate()[0])
        try:
            self.text += self.decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            raise UsageError(f"{self.name} is not UTF-8 text (a bad byte at {self.fed - pending + e.start}): "
                             "save it as UTF-8") from None
        self.fed += len(block)
        self.eof = not block
        return True

    def byte_at(self, at: int) -> int:
        char, offset = self.cursor
        offset += len(self.text[char:at].encode("utf-8"))
        self.cursor = (at, offset)
        return offset

    def fail(self, msg: str, at: int | None = None) -> UsageError:
        at = self.pos if at is None else at
        lineno = self.lines + _line_ends(self.text[:at]) + 1
        return UsageError(f"{self.name} is not valid JSON ({msg}, line {lineno}); for one object a line, name it .jsonl")

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def take(self, char: str, msg: str) -> None:
        if self.peek() != char:
            raise self.fail(msg)
        self.pos += 1

    def value(self) -> tuple[Any, str, Place]:
        """The JSON value here, read on until it is whole: (value, its text, its place)."""
        self.peek()
        while True:
            try:
                value, end, twice = self.loads.raw(self.text, self.pos)
            except json.JSONDecodeError as e:
                # cut short by the end of what is read so far (the scanner stops within a few
                # characters of it, or in a string that runs to it): read on and parse again
                if (e.pos >= len(self.text) - 8 or e.msg.startswith("Unterminated string")) and self._grow():
                    continue
                raise self.fail(e.msg, e.pos) from None
            except RecursionError:
                raise UsageError(f"{self.name} is nested too deep to read: flatten it, or give one object a line as "
                                 ".jsonl") from None
            if end == len(self.text) and self._grow():  # a number may go on
                continue
            if end - self.pos > MAX_ROW_CHARS:
                raise self._too_big()
            break
        if twice is not None:
            raise UsageError(f"{self.name}: an object holds the key {twice!r} twice (a reader keeps only one): remove "
                             "or rename one")
        text = self.text[self.pos:end]
        data = text.encode("utf-8")
        place = (self.byte_at(self.pos), len(data), 0, zlib.crc32(data))
        self.pos = end
        self.byte_at(end)
        return value, text, place

    def _grow(self) -> bool:
        if len(self.text) - self.pos > MAX_ROW_CHARS:
            raise self._too_big()
        return self.more(max(_READ, len(self.text) - self.pos))  # doubling: an item is parsed a few times at most

    def _too_big(self) -> UsageError:
        return UsageError(f"{self.name}: an item is over {MAX_ROW_CHARS} characters (or the JSON is broken from line "
                          f"{self.lines + _line_ends(self.text[:self.pos]) + 1}): give one object a line as .jsonl")

    def end(self) -> None:
        if self.peek():
            raise self.fail("Extra data")


def _line_ends(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


_NOT_AN_ARRAY = "expected a JSON array of objects"


def _read_json(f: BinaryIO, start: int, name: str) -> Iterator[InputRow]:
    doc = _JsonText(f, name)
    first = doc.peek()
    if first == "\ufeff" and doc.pos == 0:  # as json.loads
        raise doc.fail("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    if first == "[":
        yield from _items(doc, start)
    elif first == "{":
        yield from _object(doc, start)
    else:
        doc.value()
        doc.end()
        raise UsageError(f"{name}: {_NOT_AN_ARRAY}")
    doc.end()


def _items(doc: _JsonText, start: int) -> Iterator[InputRow]:
    assert doc.peek() == "["  # the caller saw it: no message for anything else
    doc.pos += 1
    if doc.peek() == "]":
        doc.pos += 1
        return
    i = 0
    while True:
        value, text, (offset, length, _, crc) = doc.value()
        yield row_of(start + i, value, f"item {i}", lambda v=value: json.dumps(v, ensure_ascii=True)[:100_000], text,
                   (offset, length, i, crc))
        i += 1
        if doc.peek() == "]":
            doc.pos += 1
            return
        doc.take(",", "Expecting ',' delimiter")


def _object(doc: _JsonText, start: int) -> Iterator[InputRow]:
    """The items of the one array among the values of a top-level object."""
    assert doc.peek() == "{"  # the caller saw it: no message for anything else
    doc.pos += 1
    keys: set[str] = set()
    lists = 0
    if doc.peek() == "}":
        doc.pos += 1
    else:
        while True:
            if doc.peek() != '"':
                raise doc.fail("Expecting property name enclosed in double quotes")
            key, _, _ = doc.value()
            doc.take(":", "Expecting ':' delimiter")
            if key in keys:
                raise UsageError(f"{doc.name}: an object holds the key {key!r} twice (a reader keeps only one): remove "
                                 "or rename one")
            keys.add(key)
            if doc.peek() == "[":
                if lists:
                    raise UsageError(f"{doc.name}: {_NOT_AN_ARRAY}")
                lists += 1
                yield from _items(doc, start)
            else:
                doc.value()
            if doc.peek() == "}":
                doc.pos += 1
                break
            doc.take(",", "Expecting ',' delimiter")
    if not lists:
        doc.end()
        raise UsageError(f"{doc.name}: {_NOT_AN_ARRAY}")
