"""Dataset rows in and training files out (localaug/jobs/dataio.py): readers round-tripping what the
writers wrote (JSONL, JSON, CSV, Parquet, a save_to_disk folder; CJK, emoji, nested fields), bad
rows that fail alone, and the exact bytes of every export and of dataset_info.json.

Fast tests over small files (no model): they guard dataio.py in tools/mutation.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.core.errors import UsageError
from localaug.jobs import dataio as D
from localaug.jobs import readers as R
from localaug.jobs.dataio import InputRow
from localaug.jobs.exports import Example

PROPS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def rows(path: Path) -> list[tuple[int, dict, str | None, str | None]]:
    return [(r.index, r.record, r.error, r.raw) for r in D.read_rows(path)]


def respond(key: str, q: str, a: str, row: int = 0, status: str = "ok") -> dict:
    return {"source_id": key, "task": "respond", "status": status, "row": row, "instruction": q, "response": a}


# --- json_line, chunked, get_field ---------------------------------------------------------------------


def test_json_line():
    assert D.json_line({"a": "你好 😀", "b": [1, 2.5, None, True]}) == '{"a": "你好 😀", "b": [1, 2.5, null, true]}'
    assert D.json_line({"x": "a\ud800b"}) == '{"x": "a\\ud800b"}'  # not valid Unicode: escaped, still one valid line
    assert D.json_line({"x": "é\udcff"}) == '{"x": "\\u00e9\\udcff"}'
    assert D.json_line({"n": math.nan, "i": -math.inf}) == '{"n": null, "i": null}'
    assert D.json_line({"line": "a\nb"}) == '{"line": "a\\nb"}'


@pytest.mark.parametrize("n, size, want", [
    (0, 3, []), (1, 3, [[0]]), (3, 3, [[0, 1, 2]]), (4, 3, [[0, 1, 2], [3]]), (7, 2, [[0, 1], [2, 3], [4, 5], [6]]),
    (3, 1, [[0], [1], [2]]),
])
def test_chunked(n, size, want):
    got = list(D.chunked([InputRow(i, {}) for i in range(n)], size))
    assert [[r.index for r in c] for c in got] == want


def test_get_field():
    rec = {"a": {"b": "x"}, "m": [{"c": "first"}, {"c": "second"}], "k.j": 1, "0": "zero"}
    assert D.get_field(rec, "a.b") == "x"
    assert D.get_field(rec, "a") == {"b": "x"}
    assert D.get_field(rec, "m.0.c") == "first"
    assert D.get_field(rec, "m.1.c") == "second"
    assert D.get_field(rec, "m.-1.c") == "second"
    assert D.get_field(rec, "m.-2.c") == "first"
    assert D.get_field(rec, "0") == "zero"
    for bad in ("m.2.c", "m.-3.c", "m.x", "m.X0", "a.b.c", "zz", "k.j", "m.+1.c", "m. 1.c", "a.", ""):
        with pytest.raises(KeyError) as e:
            D.get_field(rec, bad)
        assert e.value.args == (bad,)


# --- input kinds -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", [("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.JSON", "json"), ("a.csv", "csv"),
                                        ("a.Parquet", "parquet"), ("x.tar.jsonl", "jsonl")])
def test_input_kind(tmp_path, name, kind):
    assert D.input_kind(tmp_path / name) == kind


def test_input_kind_refusals(tmp_path):
    with pytest.raises(UsageError) as e:
        D.input_kind(tmp_path / "a.txt")
    assert str(e.value) == f"{tmp_path / 'a.txt'}: unknown input type .txt; use .jsonl, .json, .csv, .parquet or a save_to_disk folder"
    with pytest.raises(UsageError) as e:
        D.input_kind(tmp_path / "README")
    assert str(e.value) == f"{tmp_path / 'README'}: unknown input type (none); use .jsonl, .json, .csv, .parquet or a save_to_disk folder"
    d = tmp_path / "ds"
    d.mkdir()
    with pytest.raises(UsageError) as e:
        D.input_kind(d)
    assert str(e.value) == f"{d} is a folder but not a datasets save_to_disk folder (no state.json)"
    (d / "dataset_dict.json").write_text("{}")
    with pytest.raises(UsageError) as e:
        D.input_kind(d)
    assert str(e.value) == f"{d} holds several splits: pass one split's folder, e.g. {d / 'train'}"
    (d / "state.json").write_text("{}")
    assert D.input_kind(d) == "hf-disk"


def test_is_blank(tmp_path):
    p = tmp_path / "f"
    for data, blank in ((b"", True), (b" \n\t\r\n", True), (b"\n x", False), (b"{}", False), (b"\xff\xfe", False)):
        p.write_bytes(data)
        assert D.is_blank(p) is blank
    p.write_bytes(b" " * 100)
    assert D.is_blank(p, look=100) is True and D.is_blank(p, look=99) is False
    p.write_bytes(b" " * (1 << 20))
    assert D.is_blank(p) is True
    p.write_bytes(b" " * ((1 << 20) + 1))
    assert D.is_blank(p) is False  # past what it looks at: not blank


def test_read_rows_refusals(tmp_path):
    with pytest.raises(UsageError) as e:
        list(D.read_rows(tmp_path / "none.jsonl"))
    assert str(e.value) == f"input {tmp_path / 'none.jsonl'} does not exist"


def test_the_row_limit_is_64_mi_characters():
    assert R.MAX_ROW_CHARS == D.MAX_ROW_CHARS == 64 << 20


# --- JSON Lines ---------------------------------------------------------------------------------------------


def test_jsonl_rows_and_their_errors(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"instruction": "\xe4\xbd\xa0\xe5\xa5\xbd"}\n'  # line 1
                  b"\n"  # 2: blank, no row
                  b"   \n"  # 3: blank
                  b'{"instruction": "a", \n'  # 4
                  b"[1, 2]\n"  # 5
                  b'{"a": 1, "a": 2}\n'  # 6
                  b'{"x": {"k": 1, "k": 2}}\n'  # 7: nested twice
                  b'{"instruction": "bad \xff byte"}\n'  # 8
                  b'{"instruction": "last", "n": [1, {"d": null}]}')  # 9: no newline at the end
    got = rows(p)
    assert got == [
        (0, {"instruction": "你好"}, None, None),
        (1, {}, "invalid JSON on line 4: Expecting property name enclosed in double quotes", '{"instruction": "a", '),
        (2, {}, "line 5 is not a JSON object", "[1, 2]"),
        (3, {}, "line 6 holds the key 'a' twice (a reader keeps only one): remove or rename one", '{"a": 1, "a": 2}'),
        (4, {}, "line 7 holds the key 'k' twice (a reader keeps only one): remove or rename one", '{"x": {"k": 1, "k": 2}}'),
        (5, {}, "text that is not valid UTF-8 or Unicode (at character 4): fix or remove the row",
         '{"instruction": "bad \udcff byte"}'),
        (6, {"instruction": "last", "n": [1, {"d": None}]}, None, None),
    ]


def test_jsonl_nested_too_deep(tmp_path):
    p = tmp_path / "in.jsonl"
    deep = "[" * 200_000
    p.write_text('{"instruction": "ok"}\n' + deep + "\n")
    [ok, bad] = list(D.read_rows(p))
    assert ok.record == {"instruction": "ok"}
    assert (bad.index, bad.record, bad.error, bad.raw) == (1, {}, "line 2 is nested too deep to read", "[" * 1000)


def test_the_first_key_seen_twice_is_named():
    got = list(D.text_rows("jsonl", io.BytesIO(b'{"a": 1, "b": 2, "c": 3, "b": 4, "a": 5}\n{"x": 1}X\n')))
    assert [(r.error, r.raw) for r in got] == [
        ("line 1 holds the key 'b' twice (a reader keeps only one): remove or rename one", '{"a": 1, "b": 2, "c": 3, "b": 4, "a": 5}'),
        ("invalid JSON on line 2: Extra data", '{"x": 1}X')]


def test_a_large_json_file_is_read_item_by_item(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no disk used; a JSON array is streamed, so no size limit refuses it
    with pytest.raises(UsageError) as e:
        list(D.read_rows(big))
    assert str(e.value) == f"{big} is not valid JSON (Expecting value, line 1); for one object a line, name it .jsonl"


def test_jsonl_numbering_starts_where_asked():
    got = list(D.text_rows("jsonl", io.BytesIO(b'{"a": 1}\n\n{"a": 2}\n'), start=10))
    assert [(r.index, r.record) for r in got] == [(10, {"a": 1}), (11, {"a": 2})]


def test_an_overlong_jsonl_line_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 100)
    p = tmp_path / "in.jsonl"
    exact = '{"instruction": "' + "e" * 81 + '"}'  # 100 characters and its newline: read
    assert len(exact) == 100
    p.write_text('{"instruction": "a"}\n' + '{"instruction": "' + "x" * 500 + '"}\n' + exact + "\n"
                 + '{"instruction": "' + "y" * 82 + '"}\n' + '{"instruction": "b"}\n' + exact, encoding="utf-8")
    got = rows(p)
    assert got == [(0, {"instruction": "a"}, None, None),
                   (1, {}, "line 2 is over 100 characters: split it or shorten it", None),
                   (2, {"instruction": "e" * 81}, None, None),
                   (3, {}, "line 4 is over 100 characters: split it or shorten it", None),
                   (4, {"instruction": "b"}, None, None),
                   (5, {"instruction": "e" * 81}, None, None)]


def test_an_overlong_line_is_skipped_in_bounded_reads(tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setattr(R, "MAX_ROW_CHARS", 1 << 20)
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"instruction": "' + b"x" * (24 << 20) + b'"}\n{"instruction": "b"}\n')
    tracemalloc.start()
    try:
        got = rows(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [(0, {}, "line 1 is over 1048576 characters: split it or shorten it", None),
                   (1, {"instruction": "b"}, None, None)]
    assert peak < 12 << 20


def test_an_overlong_last_line(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 50)
    p = tmp_path / "in.jsonl"
    p.write_text('{"a": "b"}\n' + "z" * 300)
    assert rows(p) == [(0, {"a": "b"}, None, None), (1, {}, "line 2 is over 50 characters: split it or shorten it", None)]


# --- JSON arrays ------------------------------------------------------------------------------------------


def test_json_array_rows(tmp_path):
    p = tmp_path / "in.json"
    p.write_text(json.dumps([{"instruction": "一"}, 3, {"instruction": "二", "x": {"y": [1]}}, ["l"]], ensure_ascii=False),
                 encoding="utf-8")
    assert rows(p) == [(0, {"instruction": "一"}, None, None), (1, {}, "item 1 is not a JSON object", "3"),
                       (2, {"instruction": "二", "x": {"y": [1]}}, None, None), (3, {}, "item 3 is not a JSON object", '["l"]')]


def test_json_item_raw_is_ascii_and_bounded(tmp_path):
    p = tmp_path / "in.json"
    p.write_text(json.dumps([["é" * 60_000]]), encoding="utf-8")
    [row] = list(D.read_rows(p))
    assert row.raw == ('["' + "\\u00e9" * 60_000 + '"]')[:100_000] and len(row.raw) == 100_000


def test_json_object_with_one_list(tmp_path):
    p = tmp_path / "in.json"
    p.write_text(json.dumps({"version": 1, "data": [{"instruction": "a"}], "meta": {"x": []}}))
    assert rows(p) == [(0, {"instruction": "a"}, None, None)]
    assert [r.index for r in D.text_rows("json", io.BytesIO(p.read_bytes()), start=5)] == [5]


@pytest.mark.parametrize("text, words", [
    ('{"a": [1], "b": [2]}', "expected a JSON array of objects"),
    ('{"a": 1}', "expected a JSON array of objects"),
    ('"text"', "expected a JSON array of objects"),
    ("3", "expected a JSON array of objects"),
    ('[{"a": 1, "a": 2}]', "an object holds the key 'a' twice (a reader keeps only one): remove or rename one"),
])
def test_json_refusals(tmp_path, text, words):
    p = tmp_path / "in.json"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == f"{p}: {words}"


def test_json_refusals_of_unreadable_files(tmp_path):
    p = tmp_path / "in.json"
    p.write_text('[{"a": 1},\n{"b": }]')
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == f"{p} is not valid JSON (Expecting value, line 2); for one object a line, name it .jsonl"
    p.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == f"{p} is not UTF-8 text (a bad byte at 8): save it as UTF-8"
    p.write_text("[" * 200_000)
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == f"{p} is nested too deep to read: flatten it, or give one object a line as .jsonl"
    with pytest.raises(UsageError) as e:
        list(D.text_rows("json", io.BytesIO(b"{")))
    assert str(e.value).startswith("input is not valid JSON")


# --- CSV ---------------------------------------------------------------------------------------------------


def test_csv_rows(tmp_path):
    p = tmp_path / "in.csv"
    p.write_bytes("\ufeffinstruction,lang\n\"多行\ntext, with comma\",zh\nplain,en\n".encode("utf-8")
                  + b"bad \xff,x\n" + b"short\n" + b"a,b,extra\n")
    assert rows(p) == [
        (0, {"instruction": "多行\ntext, with comma", "lang": "zh"}, None, None),
        (1, {"instruction": "plain", "lang": "en"}, None, None),
        (2, {}, "text that is not valid UTF-8 or Unicode (at character 4): fix or remove the row", None),
        (3, {"instruction": "short", "lang": None}, None, None),
        (4, {"instruction": "a", "lang": "b", None: ["extra"]}, None, None),
    ]
    assert [r.index for r in D.text_rows("csv", io.BytesIO(b"a\n1\n2\n"), start=3)] == [3, 4]


def test_csv_header_refusals(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text("instruction,lang,instruction\nx,y,z\n")
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == (f"{p}: the header names column 'instruction' twice (columns 1 and 3); a reader keeps only "
                            "one: rename one of them")
    p.write_text(",a,\n1,2,3\n")  # blank names twice are not a clash
    assert rows(p) == [(0, {"": "3", "a": "2"}, None, None)]
    p.write_text("")
    assert rows(p) == []


def test_csv_header_that_cannot_be_read(tmp_path, monkeypatch):
    old = csv.field_size_limit()
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    try:
        csv.field_size_limit(10)
        with pytest.raises(UsageError) as e:
            list(D.text_rows("csv", io.BytesIO(b"a" * 20 + b"\n1\n"), name="h.csv"))
        assert str(e.value) == "h.csv: the CSV header cannot be read (field larger than field limit (10)): fix the first line"
    finally:
        csv.field_size_limit(old)


def test_an_oversized_csv_field_fails_its_row_alone(monkeypatch):
    old = csv.field_size_limit()
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 50)
    try:
        csv.field_size_limit(20)  # lower than the reader's own limit: raised to it
        data = b"instruction\n" + b"a" * 40 + b"\nok\n" + b"b" * 60 + b"\nlast\n"
        got = [(r.index, r.record, r.error) for r in D.text_rows("csv", io.BytesIO(data))]
        assert got == [(0, {"instruction": "a" * 40}, None), (1, {"instruction": "ok"}, None),
                       (2, {}, "bad CSV record near line 4: field larger than field limit (50)"),
                       (3, {"instruction": "last"}, None)]
        csv.field_size_limit(80)  # higher already: kept
        assert [r.error for r in D.text_rows("csv", io.BytesIO(data))] == [None] * 4
    finally:
        csv.field_size_limit(old)


def test_refuse_duplicate_columns():
    D.refuse_duplicate_columns(["a", "b", " ", " "], "f")
    D.refuse_duplicate_columns([], "f")
    with pytest.raises(UsageError) as e:
        D.refuse_duplicate_columns(["a", "b", "c", "b", "a"], "where")
    assert str(e.value) == "where: the header names column 'b' twice (columns 2 and 4); a reader keeps only one: rename one of them"
    with pytest.raises(UsageError) as e:
        D.refuse_duplicate_columns(["x", "b", "b", "b"], "w")
    assert "(columns 2 and 3)" in str(e.value)


def test_invalid_text():
    assert D.invalid_text("fine 你好") is None
    assert D.invalid_text("ab\udcffc") == "text that is not valid UTF-8 or Unicode (at character 2): fix or remove the row"
    assert D.invalid_text({"k": ["ok", {"deep": "x\ud800"}]}) == ("text that is not valid UTF-8 or Unicode (at character 1): "
                                                                 "fix or remove the row")
    assert D.invalid_text({"\udcff": 1}) is not None
    assert D.invalid_text({"a": "\udc80", "b": "ok\udc80"}).endswith("(at character 0): fix or remove the row")
    assert D.invalid_text([1, None, "ok", ["\udc80"]]) is not None
    assert D.invalid_text([1, None, 2.5, {"a": "b"}]) is None
    assert D.invalid_text(7) is None and D.invalid_text(None) is None


# --- Parquet and save_to_disk folders --------------------------------------------------------------------------


def test_parquet_rows(tmp_path):
    p = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": f"第{i}行", "meta": {"n": i}} for i in range(2500)]), p,
                   row_group_size=1000)
    got = list(D.read_rows(p))
    assert [r.index for r in got] == list(range(2500))
    assert got[0].record == {"instruction": "第0行", "meta": {"n": 0}} and got[-1].record["instruction"] == "第2499行"
    assert all(r.error is None for r in got)


def test_parquet_with_a_column_twice_is_refused(tmp_path):
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["instruction", "instruction"]), p)
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert "names column 'instruction' twice" in str(e.value) and str(e.value).startswith(str(p))


def hf_folder(path: Path, tables: list[pa.Table], listed: bool = True, stream: bool = True) -> Path:
    path.mkdir()
    files = []
    for i, t in enumerate(tables):
        name = f"data-{i:05d}-of-{len(tables):05d}.arrow"
        with pa.OSFile(str(path / name), "wb") as sink:
            writer = pa.ipc.new_stream(sink, t.schema) if stream else pa.ipc.new_file(sink, t.schema)
            for batch in t.to_batches(max_chunksize=2):
                writer.write_batch(batch)
            writer.close()
        files.append({"filename": name})
    (path / "state.json").write_text(json.dumps({"_data_files": files} if listed else {}))
    return path


@pytest.mark.parametrize("listed, stream", [(True, True), (False, True), (True, False)])
def test_save_to_disk_folder(tmp_path, listed, stream):
    t1 = pa.Table.from_pylist([{"instruction": t} for t in ("a", "b", "c")])
    t2 = pa.Table.from_pylist([{"instruction": t} for t in ("d 😀", "e")])
    d = hf_folder(tmp_path / "ds", [t1, t2], listed, stream)
    assert rows(d) == [(i, {"instruction": t}, None, None) for i, t in enumerate(["a", "b", "c", "d 😀", "e"])]


def test_save_to_disk_folder_files_in_state_order(tmp_path):
    d = hf_folder(tmp_path / "ds", [pa.Table.from_pylist([{"x": 1}]), pa.Table.from_pylist([{"x": 2}])])
    state = json.loads((d / "state.json").read_text())
    state["_data_files"].reverse()
    (d / "state.json").write_text(json.dumps(state))
    assert [r.record["x"] for r in D.read_rows(d)] == [2, 1]


def test_save_to_disk_folder_with_a_column_twice(tmp_path):
    d = hf_folder(tmp_path / "ds", [pa.table([pa.array(["a"]), pa.array(["b"])], names=["q", "q"])])
    with pytest.raises(UsageError) as e:
        list(D.read_rows(d))
    assert "names column 'q' twice" in str(e.value) and "data-00000-of-00001.arrow" in str(e.value)


FROM_CHECKOUT = " (or pip install -e '.[parquet]' from a checkout)"


def test_without_pyarrow_the_readers_say_what_to_install(tmp_path, monkeypatch):
    p = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": 1}]), p)
    d = hf_folder(tmp_path / "ds", [pa.Table.from_pylist([{"a": 1}])])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: import raises ImportError
    with pytest.raises(UsageError) as e:
        list(D.read_rows(p))
    assert str(e.value) == "reading Parquet needs pyarrow: pip install 'localaug[parquet]'" + FROM_CHECKOUT
    with pytest.raises(UsageError) as e:
        list(D.read_rows(d))
    assert str(e.value) == "reading a datasets folder needs pyarrow: pip install 'localaug[parquet]'" + FROM_CHECKOUT
    with pytest.raises(UsageError) as e:
        D.write_records([{"a": 1}], "parquet", tmp_path / "o.parquet")
    assert str(e.value) == "reading Parquet output needs pyarrow: pip install 'localaug[parquet]'" + FROM_CHECKOUT


# --- round trips ------------------------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
LEAF = st.one_of(TEXT, st.integers(-10**6, 10**6), st.booleans(), st.none())
VALUE = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), inner, max_size=3)),
                     max_leaves=8)
RECORD = st.fixed_dictionaries({"source_id": st.text("0123456789abcdef", min_size=1, max_size=8),
                                "task": st.just("refine"), "status": st.just("failed")},
                               optional={"instruction": TEXT, "nested": VALUE, "emoji": st.just("😀 你好 Привет")})


@PROPS
@given(st.lists(RECORD, max_size=6))
def test_jsonl_written_reads_back_the_same(records):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "o.jsonl"
        assert D.write_records(records, "jsonl", out) == len(records)
        data = out.read_bytes()
        assert data == b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        assert [r.record for r in D.read_rows(out)] == records
        assert all(r.error is None for r in D.read_rows(out))


@PROPS
@given(st.lists(st.tuples(TEXT.filter(str.strip), TEXT.filter(str.strip)), max_size=5),
       st.sampled_from(["alpaca", "sharegpt", "messages", "prompts"]), st.sampled_from([".json", ".jsonl"]))
def test_exports_read_back_as_written(pairs, fmt, suffix):
    records = [respond(f"k{i}", q, a, i) for i, (q, a) in enumerate(pairs)]
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"train{suffix}"
        assert D.write_records(records, fmt, out) == len(pairs)
        got = [r.record for r in D.read_rows(out)]
        assert got == [D.shape(fmt, q, a) for q, a in pairs]
        if suffix == ".json":  # one JSON array, as trainers load it whole
            assert json.loads(out.read_text(encoding="utf-8")) == got


@PROPS
@given(st.lists(st.fixed_dictionaries({"instruction": TEXT, "lang": TEXT}), max_size=6))
def test_csv_reads_back_what_the_csv_module_wrote(records):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "in.csv"
        with open(p, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, ["instruction", "lang"])
            w.writeheader()
            w.writerows(records)
        assert [r.record for r in D.read_rows(p)] == records


def test_parquet_round_trip_with_nested_and_missing_columns(tmp_path):
    records = [
        {"source_id": "k0", "task": "expand", "status": "ok", "row": 0, "outputs": ["一", "😀"], "meta": {"a": 1}},
        {"source_id": "k1", "task": "expand", "status": "failed", "row": 1, "error": "boom"},
    ]
    out = tmp_path / "o.parquet"
    assert D.write_records(records, "parquet", out) == 2
    assert [r.record for r in D.read_rows(out)] == [
        {**records[0], "error": None},
        {"source_id": "k1", "task": "expand", "status": "failed", "row": 1, "outputs": None, "meta": None, "error": "boom"},
    ]
    assert pq.read_table(out).column_names == ["source_id", "task", "status", "row", "outputs", "meta", "error"]


def test_parquet_with_mixed_types_writes_text_columns(tmp_path):
    records = [{"id": 1, "v": {"a": "é"}, "s": "x", "n": None}, {"id": "two", "v": [1, 2], "s": "y", "n": None}]
    out = tmp_path / "o.parquet"
    assert D.write_records(records, "parquet", out) == 2
    assert pq.read_table(out).to_pylist() == [{"id": "1", "v": '{"a": "é"}', "s": "x", "n": None},
                                              {"id": "two", "v": "[1, 2]", "s": "y", "n": None}]
    out2 = tmp_path / "o2.parquet"
    D.write_records([{"a": 1}, {"a": "b", "when": object}], "parquet", out2)
    assert pq.read_table(out2).to_pylist()[1]["when"] == json.dumps(str(object))


def test_an_empty_parquet_output(tmp_path):
    out = tmp_path / "o.parquet"
    assert D.write_records([], "parquet", out) == 0
    assert pq.read_table(out).num_rows == 0


# --- training files: exact bytes ----------------------------------------------------------------------------------

RECORDS = [respond("k0", "Say hi 你好", "Hi 😀", 0), respond("k1", 'Quote "x"\nand\\slash', "Done.", 1),
           respond("k2", "skip", "", 2, status="failed")]
LINES = {
    "alpaca": ['{"instruction": "Say hi 你好", "input": "", "output": "Hi 😀"}',
               '{"instruction": "Quote \\"x\\"\\nand\\\\slash", "input": "", "output": "Done."}'],
    "sharegpt": ['{"conversations": [{"from": "human", "value": "Say hi 你好"}, {"from": "gpt", "value": "Hi 😀"}]}',
                 '{"conversations": [{"from": "human", "value": "Quote \\"x\\"\\nand\\\\slash"}, {"from": "gpt", "value": "Done."}]}'],
    "messages": ['{"messages": [{"role": "user", "content": "Say hi 你好"}, {"role": "assistant", "content": "Hi 😀"}]}',
                 '{"messages": [{"role": "user", "content": "Quote \\"x\\"\\nand\\\\slash"}, '
                 '{"role": "assistant", "content": "Done."}]}'],
    "prompts": ['{"prompt": [{"role": "user", "content": "Say hi 你好"}]}',
                '{"prompt": [{"role": "user", "content": "Quote \\"x\\"\\nand\\\\slash"}]}'],
}


@pytest.mark.parametrize("fmt", sorted(LINES))
def test_export_bytes_json_array_and_jsonl(tmp_path, fmt):
    a, b = LINES[fmt]
    arr = tmp_path / "train.json"
    assert D.write_records(RECORDS, fmt, arr) == 2
    assert arr.read_bytes() == f"[\n{a},\n{b}\n]\n".encode("utf-8")
    lines = tmp_path / "train.jsonl"
    assert D.write_records(RECORDS, fmt, lines) == 2
    assert lines.read_bytes() == f"{a}\n{b}\n".encode("utf-8")
    upper = tmp_path / "TRAIN.JSON"
    D.write_records(RECORDS, fmt, upper)
    assert upper.read_bytes() == arr.read_bytes()
    for p in (arr, lines):
        data = p.read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf") and b"\\u" not in data and data.endswith(b"\n")


@pytest.mark.parametrize("fmt", sorted(LINES))
def test_export_of_one_and_of_no_examples(tmp_path, fmt):
    one = tmp_path / "one.json"
    assert D.write_records(RECORDS[:1], fmt, one) == 1
    assert one.read_bytes() == f"[\n{LINES[fmt][0]}\n]\n".encode("utf-8")
    none = tmp_path / "none.json"
    assert D.write_records([], fmt, none) == 0
    assert none.read_bytes() == b"[\n]\n" and json.loads(none.read_bytes()) == []
    empty = tmp_path / "none.jsonl"
    assert D.write_records(RECORDS[2:], fmt, empty) == 0
    assert empty.read_bytes() == b""


def test_dataset_info_bytes(tmp_path):
    D.write_records(RECORDS, "alpaca", tmp_path / "train.json")
    assert (tmp_path / "dataset_info.json").read_bytes() == (
        '{\n  "train": {\n    "file_name": "train.json",\n    "formatting": "alpaca",\n    "columns": {\n'
        '      "prompt": "instruction",\n      "query": "input",\n      "response": "output"\n    }\n  }\n}\n').encode()
    D.write_records(RECORDS, "sharegpt", tmp_path / "chat.v2.jsonl")
    D.write_records(RECORDS, "messages", tmp_path / "msgs.json")
    D.write_records(RECORDS, "prompts", tmp_path / "prompts.jsonl")  # TRL's format: LLaMA-Factory has no entry for it
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == {
        "train": {"file_name": "train.json", "formatting": "alpaca",
                  "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
        "chat": {"file_name": "chat.v2.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system"}},
        "msgs": {"file_name": "msgs.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                          "system_tag": "system"}},
    }
    assert list(json.loads((tmp_path / "dataset_info.json").read_text())) == ["train", "chat", "msgs"]


def test_dataset_info_keeps_other_entries_and_replaces_its_own(tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"mine": {"file_name": "mine.json", "note": "你好"}, "train": {"file_name": "old"}}))
    assert D.write_dataset_info(tmp_path / "train.json", "alpaca") == info
    got = json.loads(info.read_text(encoding="utf-8"))
    assert got["mine"] == {"file_name": "mine.json", "note": "你好"} and got["train"]["file_name"] == "train.json"
    assert "你好" in info.read_text(encoding="utf-8")
    assert D.write_dataset_info(tmp_path / "p.jsonl", "prompts") is None
    assert D.write_dataset_info(tmp_path / "r.jsonl", "jsonl") is None


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not a JSON object LLaMA-Factory can read ("),
    ("[1, 2]", "is not a JSON object: fix or move it; "),
    ("\"text\"", "is not a JSON object: fix or move it; "),
])
def test_a_damaged_dataset_info_is_refused_and_left_alone(tmp_path, content, words):
    info = tmp_path / "dataset_info.json"
    info.write_text(content)
    out = tmp_path / "train.json"
    with pytest.raises(UsageError) as e:
        D.write_records(RECORDS, "alpaca", out)
    assert str(e.value).startswith(f"{info} {words}") and str(e.value).endswith(f"{out} is written")
    assert "fix or move it" in str(e.value)
    assert info.read_text() == content and json.loads(out.read_text())[0]["output"] == "Hi 😀"


def test_an_oversized_dataset_info_is_refused(tmp_path, monkeypatch):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"x": "y" * 100}))
    monkeypatch.setattr(D, "MAX_DATASET_INFO_BYTES", 50)
    with pytest.raises(UsageError) as e:
        D.write_dataset_info(tmp_path / "t.json", "alpaca")
    assert "is not a JSON object LLaMA-Factory can read" in str(e.value)
    monkeypatch.setattr(D, "MAX_DATASET_INFO_BYTES", 200)
    assert D.write_dataset_info(tmp_path / "t.json", "alpaca") == info
    assert D.MAX_DATASET_INFO_BYTES == 200


def test_the_dataset_info_limit_is_16_mib():
    assert D.MAX_DATASET_INFO_BYTES == 16 << 20


LOCALE_CHILD = """
import sys
from pathlib import Path
from localaug.jobs.dataio import read_rows, write_records
assert [r.record for r in read_rows(Path(sys.argv[1]) / "ds")] == [{"x": 1}]
rec = {"source_id": "k", "task": "respond", "status": "ok", "instruction": "\\u4f60\\u597d", "response": "\\U0001f600"}
print(write_records([rec], "alpaca", Path(sys.argv[1]) / "train.json"), write_records([rec], "jsonl", Path(sys.argv[1]) / "r.jsonl"))
"""


def test_exports_are_utf8_whatever_the_locale(tmp_path):
    ds = hf_folder(tmp_path / "ds", [pa.Table.from_pylist([{"x": 1}])])
    state = json.loads((ds / "state.json").read_text())
    (ds / "state.json").write_text(json.dumps({**state, "_split": "训练"}, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", LOCALE_CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "1 1\n"), r.stderr
    assert (tmp_path / "train.json").read_bytes() == '[\n{"instruction": "你好", "input": "", "output": "😀"}\n]\n'.encode()
    assert (tmp_path / "r.jsonl").read_bytes() == (
        '{"source_id": "k", "task": "respond", "status": "ok", "instruction": "你好", "response": "😀"}\n').encode()
    assert D.write_records([], "jsonl", tmp_path / "e.jsonl") == 0  # and in this process
    assert D.write_records([], "alpaca", tmp_path / "e.json") == 0
    assert [r.record for r in D.read_rows(ds)] == [{"x": 1}]


# --- examples and shapes ------------------------------------------------------------------------------------------


def test_examples_of_each_task():
    assert D.examples({"status": "ok", "task": "refine", "output": "R"}) == [("R", "")]
    assert D.examples({"status": "ok", "task": "expand", "outputs": ["a", "b"]}) == [("a", ""), ("b", "")]
    assert D.examples({"status": "ok", "task": "expand"}) == []
    assert D.examples({"status": "ok", "task": "respond", "instruction": "q", "response": "r"}) == [("q", "r")]
    assert D.examples({"status": "ok", "task": "pairs", "pairs": [{"instruction": "q", "response": "r"}]}) == [("q", "r")]
    assert D.examples({"status": "ok", "task": "pairs"}) == []
    assert D.examples({"status": "filtered", "task": "refine", "output": "R"}) == []
    assert D.examples({"task": "refine", "output": "R"}) == []


def test_shape_of_each_format():
    assert D.shape("prompts", "q", "") == {"prompt": [{"role": "user", "content": "q"}]}
    assert D.shape("alpaca", "q", "r") == {"instruction": "q", "input": "", "output": "r"}
    assert D.shape("sharegpt", "q", "r") == {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]}
    assert D.shape("messages", "q", "r") == {"messages": [{"role": "user", "content": "q"},
                                                          {"role": "assistant", "content": "r"}]}
    with pytest.raises(UsageError) as e:
        D.shape("alpaca", "q", "")
    assert str(e.value) == ("this output holds instructions without responses: answer them with --respond-with MODEL (or "
                            "localaug run respond), or write them with --format prompts")
    with pytest.raises(UsageError) as e:
        D.shape("csv", "q", "r")
    assert str(e.value) == "unknown output format 'csv': use jsonl, alpaca, sharegpt, messages, prompts, dpo"


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
def test_instructions_without_responses_are_refused_and_nothing_is_written(tmp_path, fmt):
    out = tmp_path / "train.json"
    with pytest.raises(UsageError) as e:
        D.write_records([{"status": "ok", "task": "refine", "output": "R", "source_id": "k"}], fmt, out)
    assert "holds instructions without responses" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert D.write_records([{"status": "ok", "task": "refine", "output": "R"}], "prompts", out) == 1
    assert out.read_bytes() == b'[\n{"prompt": [{"role": "user", "content": "R"}]}\n]\n'


def test_unknown_output_format(tmp_path):
    with pytest.raises(UsageError) as e:
        D.write_records([], "csv", tmp_path / "o.csv")
    assert str(e.value) == "unknown output format 'csv': use jsonl, parquet, alpaca, sharegpt, messages, prompts, dpo"
    assert list(tmp_path.iterdir()) == []


def test_an_output_is_replaced_whole(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("old contents that are longer than the new ones\n" * 10)
    D.write_records([{"a": 1}], "jsonl", out)
    assert out.read_bytes() == b'{"a": 1}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


def test_expand_and_pairs_exports(tmp_path):
    recs = [{"status": "ok", "task": "pairs", "pairs": [{"instruction": "q1", "response": "r1"},
                                                         {"instruction": "q2", "response": "r2"}]},
            {"status": "ok", "task": "expand", "outputs": ["e1"]}]
    out = tmp_path / "p.jsonl"
    assert D.write_records(recs, "prompts", out) == 3
    assert out.read_bytes() == (b'{"prompt": [{"role": "user", "content": "q1"}]}\n{"prompt": [{"role": "user", "content": "q2"}]}\n'
                                b'{"prompt": [{"role": "user", "content": "e1"}]}\n')


# --- instruction rows -------------------------------------------------------------------------------------------


def test_instruction_rows_of_a_refine_or_expand_output():
    src = [
        InputRow(0, {"source_id": "a", "task": "expand", "status": "ok", "row": 4, "outputs": ["n1", "n2"]}),
        InputRow(1, {"source_id": "b", "task": "refine", "status": "failed", "row": 5, "error": "x"}),
        InputRow(2, {"source_id": "c", "task": "refine", "status": "ok", "output": "r1"}),
        InputRow(3, {"instruction": "plain row"}),
        InputRow(4, {}, "invalid JSON on line 5", raw="{"),
        InputRow(5, {"source_id": "d", "task": "expand", "status": "ok", "outputs": "not a list"}),
        InputRow(6, {"task": "expand", "status": "ok", "outputs": ["no key"]}),
        InputRow(7, {"source_id": "e", "task": "pairs", "status": "ok", "pairs": []}),
        InputRow(8, {"source_id": "f", "task": "expand", "outputs": ["no status"]}),
    ]
    got = list(D.instruction_rows(src))
    assert [(r.index, r.record, r.error) for r in got] == [
        (0, {"instruction": "n1", "origin": {"task": "expand", "source_id": "a", "row": 4, "item": 0}}, None),
        (1, {"instruction": "n2", "origin": {"task": "expand", "source_id": "a", "row": 4, "item": 1}}, None),
        (2, {"instruction": "r1", "origin": {"task": "refine", "source_id": "c", "row": None, "item": 0}}, None),
        (3, {"instruction": "plain row"}, None),
        (4, {}, "invalid JSON on line 5"),
        (5, {}, "a damaged expand record (an ok expand record whose outputs is text, not a list of texts)"),
        (6, {"task": "expand", "status": "ok", "outputs": ["no key"]}, None),
        (7, {"source_id": "e", "task": "pairs", "status": "ok", "pairs": []}, None),
        (8, {"source_id": "f", "task": "expand", "outputs": ["no status"]}, None),
    ]
    assert got[5].raw == D.json_line(src[5].record)
    assert got[4].raw == "{"


def test_a_damaged_record_raw_is_bounded():
    rec = {"source_id": "d", "task": "refine", "status": "ok", "output": 5, "pad": "p" * 200_000}
    [row] = list(D.instruction_rows([InputRow(0, rec)]))
    assert row.raw == D.json_line(rec)[:100_000] and len(row.raw) == 100_000
    assert row.error == "a damaged refine record (an ok refine record whose output is a number, not text)"


def test_instruction_rows_round_trip_through_a_written_output(tmp_path):
    recs = [{"source_id": "a", "task": "refine", "status": "ok", "row": 0, "output": "新的指令"},
            {"source_id": "b", "task": "refine", "status": "filtered", "row": 1}]
    out = tmp_path / "stage.jsonl"
    D.write_records(recs, "jsonl", out)
    got = list(D.instruction_rows(D.read_rows(out)))
    assert [(r.index, r.record) for r in got] == [
        (0, {"instruction": "新的指令", "origin": {"task": "refine", "source_id": "a", "row": 0, "item": 0}})]


@pytest.mark.parametrize("name, data", [("e.jsonl", b""), ("e.jsonl", b"\n\n  \n"), ("e.json", b"[]"), ("e.csv", b"instruction\n")])
def test_inputs_without_rows(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    assert rows(p) == []


@pytest.mark.parametrize("name, data", [("one.jsonl", '{"instruction": "唯一"}'), ("one.json", '[{"instruction": "唯一"}]'),
                                        ("one.csv", "instruction\r\n唯一\r\n")])
def test_inputs_of_one_row(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data, encoding="utf-8")
    assert rows(p) == [(0, {"instruction": "唯一"}, None, None)]


# --- a respond record's context and system prompt; choosing what is exported ------------------------------------


def test_training_examples_of_a_respond_record_carry_its_context_and_system():
    base = respond("k", "Q", "A")
    assert D.training_examples({**base, "input": "ctx", "system": "Be brief."}) == [Example("Q", "A", "ctx", "Be brief.")]
    assert D.training_examples({**base, "input": 3, "system": ""}) == [Example("Q", "A", "", None)]
    assert D.training_examples({**base, "input": None, "system": ["x"]}) == [Example("Q", "A", "", None)]
    assert D.training_examples(base) == [Example("Q", "A", "", None)]
    assert D.training_examples({**base, "status": "failed", "input": "ctx"}) == []
    # the keys mean the responder's input only in a respond record
    pairs = {"status": "ok", "task": "pairs", "pairs": [{"instruction": "q", "response": "r"}], "input": "c", "system": "s"}
    assert D.training_examples(pairs) == [Example("q", "r", "", None)]
    assert D.training_examples({"status": "ok", "task": "refine", "output": "R", "system": "s"}) == [Example("R", "", "", None)]


def test_an_alpaca_export_names_its_system_column_only_when_a_row_has_one(tmp_path):
    plain, told = respond("k1", "Q1", "A1"), {**respond("k2", "Q2", "A2"), "input": "ctx", "system": "Be brief."}
    out = tmp_path / "train.json"
    assert D.write_records([plain, told], "alpaca", out) == 2
    assert out.read_bytes() == ('[\n{"instruction": "Q1", "input": "", "output": "A1"},\n'
                                '{"instruction": "Q2", "input": "ctx", "output": "A2", "system": "Be brief."}\n]\n').encode()
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    info = tmp_path / "dataset_info.json"
    assert json.loads(info.read_text())["train"]["columns"] == {**columns, "system": "system"}
    assert D.write_records([told, plain], "alpaca", out) == 2  # the first row has it
    assert json.loads(info.read_text())["train"]["columns"] == {**columns, "system": "system"}
    assert D.write_records([plain], "alpaca", out) == 1
    assert json.loads(info.read_text())["train"]["columns"] == columns
    assert D.write_dataset_info(tmp_path / "t.json", "alpaca") == info
    assert json.loads(info.read_text())["t"] == {"file_name": "t.json", "formatting": "alpaca", "columns": columns}
    D.write_dataset_info(tmp_path / "t.json", "alpaca", system_column=True)
    assert json.loads(info.read_text())["t"]["columns"] == {**columns, "system": "system"}


def test_an_export_of_chosen_records(tmp_path):
    recs = [respond("k1", "Q1", "a1"), respond("k2", "Q2", "a2"), respond("k3", "Q3", "a3")]
    out = tmp_path / "train.jsonl"

    def choose(rec):
        return None if rec["source_id"] == "k2" else {**rec, "response": rec["response"].upper()}

    assert D.write_records(recs, "alpaca", out, choose=choose) == 2
    assert out.read_bytes() == (b'{"instruction": "Q1", "input": "", "output": "A1"}\n'
                                b'{"instruction": "Q3", "input": "", "output": "A3"}\n')


# --- rows read again from their places -----------------------------------------------------------------------


@pytest.mark.parametrize("name, data", [
    ("in.JSONL", b'{"instruction": "\xe4\xb8\x80"}\r\n\n[1]\n{"a": 1, "a": 2}\r{"instruction": "last"}'),
    ("in.json", b'{"rows": [ {"instruction": "a"},\n 7 , {"b": [1, {"c": null}]}]}'),
    ("in.csv", b'\xef\xbb\xbfinstruction,n\r\n"two\r\nlines",1\r\nbad \xff,2\r\nplain,3\r\n'),
])
def test_rows_read_again_from_their_places_in_any_order(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    first = list(D.read_rows(p))
    assert len(first) in (3, 4)
    order = [len(first) - 1, 0, *range(1, len(first) - 1)]
    again = list(D.read_again(p, [first[i].place for i in order]))
    assert [(a.record, a.error, a.raw, a.place) for a in again] == [
        (first[i].record, first[i].error, first[i].raw, first[i].place) for i in order]
    assert all(a.index == 0 for a in again)


def test_rows_read_again_from_a_csv_whose_header_no_longer_reads(tmp_path, monkeypatch):
    p = tmp_path / "in.csv"
    p.write_bytes(b"instruction\nshort\n")
    [row] = list(D.read_rows(p))
    p.write_bytes(b"a" * 20 + b"\nshort\n")
    old = csv.field_size_limit()
    monkeypatch.setattr(R, "MAX_ROW_CHARS", 10)
    try:
        csv.field_size_limit(10)
        with pytest.raises(UsageError) as e:
            list(D.read_again(p, [row.place]))
    finally:
        csv.field_size_limit(old)
    assert str(e.value) == f"{p}: the CSV header cannot be read (field larger than field limit (10)): fix the first line"
