"""The rows a run still has to do (localaug/jobs/pending.py): a row of a text file is kept as its
place and read again from there, in input order, with its index and key; a row without a place is
kept whole up to the memory budget (exactly at it still kept, one byte past it not), and past it
the rest come from reading the input again; an input edited since it was counted stops the job
with a message that names the row."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest

from localaug.core.errors import JobError
from localaug.jobs import dataio, pending
from localaug.jobs.dataio import InputRow
from localaug.jobs.pending import PendingRows


def key(i: int) -> str:
    return hashlib.sha256(f"row {i}".encode()).hexdigest()


def keyed(rows: list[InputRow]) -> list[InputRow]:
    for row in rows:
        row.key = key(row.index)
    return rows


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the size of a row kept whole ------------------------------------------------------------------


@pytest.mark.parametrize("value, size", [
    ("", 50),
    ("abc", 53),
    ("一二", 52),  # characters, not bytes
    (None, 32),
    (7, 32),
    (1.5, 32),
    (True, 32),
    ({}, 64),
    ([], 56),
    ({"a": "bc"}, 64 + 51 + 52),
    ([1, "x"], 56 + 32 + 51),
    ({"k": [None, {"z": ""}]}, 64 + 51 + (56 + 32 + (64 + 51 + 50))),
])
def test_the_size_of_a_value_kept_in_memory(value, size):
    assert pending._size(value) == size


def test_the_memory_budget_is_128_mib():
    assert pending.MEMORY_BUDGET == 134_217_728


# --- rows kept whole: the budget -------------------------------------------------------------------


def whole_rows(n: int) -> list[InputRow]:
    """Rows without places, each costing 64 + 61 + 55 + 200 = 380 bytes (raw "xyzxyz" adds 6)."""
    return [InputRow(i, {"instruction": f"row {i}"}, raw="xyzxyz" if i % 2 else None, key=key(i)) for i in range(n)]


COST = [380, 386, 380, 386, 380, 386]  # by hand: _size(record) + len(raw) + 200


def test_the_cost_of_a_row_kept_whole(monkeypatch):
    rows = whole_rows(6)
    assert [pending._size(r.record) + len(r.raw or "") + 200 for r in rows] == COST
    store = PendingRows(None)
    for row in rows:
        store.add(row)
    assert store._held_bytes == sum(COST) and len(store) == 6 and not store.overflow


@pytest.mark.parametrize("budget, kept", [
    (380 + 386 + 380, 3),  # exactly at the budget: all three kept
    (380 + 386 + 380 - 1, 2),  # one byte short: the third is past it
    (380, 1),
    (379, 0),
    (sum(COST), 6),
])
def test_rows_kept_whole_up_to_the_budget_exactly(monkeypatch, budget, kept):
    monkeypatch.setattr(pending, "MEMORY_BUDGET", budget)
    rows = whole_rows(6)
    store = PendingRows(None)
    for row in rows:
        store.add(row)
    assert len(store) == kept and store.count == kept
    assert store.overflow is (kept < 6)
    calls = []

    def again():
        calls.append(1)
        return iter([InputRow(r.index, dict(r.record), key=r.key) for r in rows])

    got = list(store.rows(again))
    assert [(r.index, r.record, r.key) for r in got] == [(r.index, r.record, r.key) for r in rows]
    assert got[:kept] == rows[:kept] and all(a is b for a, b in zip(got, rows[:kept]))  # the rows kept, as kept
    assert calls == ([1] if kept < 6 else [])
    assert all(a is not b for a, b in zip(got[kept:], rows[kept:]))  # the rest from the input again


def test_nothing_is_kept_after_the_budget_is_passed(monkeypatch):
    monkeypatch.setattr(pending, "MEMORY_BUDGET", 380 + 386)
    store = PendingRows(None)
    big, small = InputRow(0, {"instruction": "x" * 1000}, key=key(0)), InputRow(1, {}, key=key(1))
    store.add(big)  # past the budget alone
    store.add(small)  # would fit, but the rows must come in order: read again from here on
    assert (len(store), store.overflow, store._held) == (0, True, {})
    assert [r.index for r in store.rows(lambda: iter([big, small]))] == [0, 1]


def test_rows_without_overflow_never_read_the_input_again():
    store = PendingRows(None)
    rows = whole_rows(3)
    for row in rows:
        store.add(row)

    def again():
        raise AssertionError("read again")

    assert list(store.rows(again)) == rows


# --- rows kept as places ----------------------------------------------------------------------------

JSONL = '{"instruction": "一"}\r\n\n{"instruction": "two"}\n{broken\n{"instruction": "four", "n": 4}'.encode()


def test_placed_rows_are_read_again_with_their_index_and_key(tmp_path):
    src = write(tmp_path / "in.jsonl", JSONL)
    rows = keyed(list(dataio.read_rows(src)))
    assert [r.place for r in rows] == [  # by hand: (offset, length, line, CRC-32 of the bytes)
        (0, 24, 1, zlib.crc32(JSONL[0:24])), (25, 23, 3, zlib.crc32(JSONL[25:48])), (48, 8, 4, zlib.crc32(JSONL[48:56])),
        (56, 31, 5, zlib.crc32(JSONL[56:]))]
    store = PendingRows(src)
    for row in rows:
        store.add(row)
    assert len(store) == 4 and store._held == {} and store._held_bytes == 0
    got = list(store.rows(lambda: iter(())))
    assert [(r.index, r.key, r.record, r.error, r.raw, r.place) for r in got] == [
        (r.index, r.key, r.record, r.error, r.raw, r.place) for r in rows]
    assert [r.index for r in got] == [0, 1, 2, 3] and len({r.key for r in got}) == 4
    assert got[2].error == "invalid JSON on line 4: Expecting property name enclosed in double quotes"


def test_places_and_whole_rows_mixed_keep_input_order(tmp_path):
    """Rows selected from a file (some left out), and rows without a usable key kept whole."""
    src = write(tmp_path / "in.csv", "instruction,n\r\na,1\r\n\"b\r\nb\",2\r\nc,3\r\nd,4\r\n".encode())
    rows = keyed(list(dataio.read_rows(src)))
    rows[2].key = ""  # no key: kept whole (no place can stand for it)
    rows[3].index, rows[3].key = 17, key(99)  # an index and key of the job's own, not the reader's
    todo = [rows[0], rows[2], rows[3]]  # row 1 done already
    store = PendingRows(src)
    for row in todo:
        store.add(row)
    assert len(store) == 3 and list(store._held) == [1] and store._held[1] is rows[2]
    got = list(store.rows(lambda: iter(())))
    assert got[1] is rows[2]
    assert [(r.index, r.key, r.record) for r in got] == [
        (0, key(0), {"instruction": "a", "n": "1"}), (2, "", {"instruction": "c", "n": "3"}),
        (17, key(99), {"instruction": "d", "n": "4"})]
    assert got[0] is not rows[0] and got[2] is not rows[3]  # read again


@pytest.mark.parametrize("why", ["no path", "no place", "short key"])
def test_a_row_is_kept_whole_without_a_path_a_place_or_a_full_key(tmp_path, why):
    src = write(tmp_path / "in.jsonl", b'{"instruction": "a"}\n')
    row = keyed(list(dataio.read_rows(src)))[0]
    if why == "short key":
        row.key = row.key[:63]
    elif why == "no place":
        row.place = None
    store = PendingRows(None if why == "no path" else src)
    store.add(row)
    assert store._held == {0: row} and len(store._offsets) == 0 and store._held_bytes == 64 + 61 + 51 + 200
    src.write_bytes(b"")  # never read again
    assert list(store.rows(lambda: iter(()))) == [row]


def test_a_json_array_item_read_again(tmp_path):
    src = write(tmp_path / "in.json", b'[ {"instruction": "a"},\n  [1],\t{"instruction": "\\u4e00"} ]')
    rows = keyed(list(dataio.read_rows(src)))
    store = PendingRows(src)
    for row in rows[1:]:
        store.add(row)
    got = list(store.rows(lambda: iter(())))
    assert [(r.index, r.record, r.error, r.raw) for r in got] == [
        (1, {}, "item 1 is not a JSON object", "[1]"), (2, {"instruction": "一"}, None, None)]


def test_a_row_changed_since_it_was_counted_stops_the_job(tmp_path):
    src = write(tmp_path / "in.jsonl", b"".join(json.dumps({"instruction": f"row {i}"}).encode() + b"\n" for i in range(4)))
    rows = keyed(list(dataio.read_rows(src)))
    rows[2].index = 7  # the job's own numbering is the one named
    store = PendingRows(src)
    for row in rows[1:]:
        store.add(row)
    src.write_bytes(src.read_bytes().replace(b"row 2", b"row X"))  # same length, other bytes
    got = store.rows(lambda: iter(()))
    assert next(got).record == {"instruction": "row 1"}
    with pytest.raises(JobError) as e:
        next(got)
    assert str(e.value) == (f"{src} changed while this job ran (row 7 is no longer what was counted): run the same "
                            "command again; the rows done so far are kept")
    assert e.value.fields == {"path": str(src)}


def test_a_cut_input_stops_the_job_at_the_first_row_gone(tmp_path):
    src = write(tmp_path / "in.jsonl", b'{"instruction": "a"}\n{"instruction": "b"}\n')
    rows = keyed(list(dataio.read_rows(src)))
    store = PendingRows(src)
    for row in rows:
        store.add(row)
    src.write_bytes(b'{"instruction": "a"}\n')
    got = store.rows(lambda: iter(()))
    assert next(got).record == {"instruction": "a"}
    with pytest.raises(JobError, match=r"\(row 1 is no longer what was counted\)"):
        next(got)


def test_the_input_is_opened_only_when_a_placed_row_is_due(tmp_path):
    src = write(tmp_path / "in.jsonl", b'{"instruction": "a"}\n')
    rows = keyed(list(dataio.read_rows(src)))
    store = PendingRows(src)
    store.add(InputRow(5, {"instruction": "whole"}, key=""))
    store.add(rows[0])
    got = store.rows(lambda: iter(()))
    assert next(got).index == 5
    src.unlink()
    with pytest.raises(FileNotFoundError):
        next(got)


def test_an_overlong_line_is_kept_as_its_place_and_fails_alone(tmp_path, monkeypatch):
    from localaug.jobs import readers

    monkeypatch.setattr(readers, "MAX_ROW_CHARS", 10)
    src = write(tmp_path / "in.jsonl", b'{"instruction": "far too long"}\n{"a": 1}\n')
    rows = keyed(list(dataio.read_rows(src)))
    assert rows[0].place == (0, -1, 1, 0)
    store = PendingRows(src)
    for row in rows:
        store.add(row)
    got = list(store.rows(lambda: iter(())))
    assert [(r.index, r.error, r.record) for r in got] == [
        (0, "line 1 is over 10 characters: split it or shorten it", {}), (1, None, {"a": 1})]


def test_places_with_large_offsets_and_crcs_are_kept_exactly():
    store = PendingRows(Path("/nonexistent"))
    place = (2**40 + 3, 2**31 + 5, 2**33, 2**32 - 1)  # offsets past 4 GiB, a CRC with its top bit set
    store.add(InputRow(0, {}, key=key(0), place=place))
    store.add(InputRow(1, {}, key=key(1), place=(1, 2, 3, 4)))
    assert list(zip(store._offsets, store._lengths, store._numbers, store._crcs)) == [place, (1, 2, 3, 4)]
    assert list(store._indexes) == [0, 1] and bytes(store._keys) == bytes.fromhex(key(0) + key(1))
