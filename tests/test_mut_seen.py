"""The duplicate index kept beside a ledger (localaug/jobs/seen.py), pinned byte by byte.

The oracle is written here from the documented format: one entry per text the index holds, for the
latest record of each row key in ledger order, each text kept unless an earlier one has its key:
8 bytes of blake2b(source id), the text's 16-byte key, the signature's little-endian 32-bit slots;
the header names the settings, the run, how many entries it covers, their blake2b, and the length
and blake2b of the ledger prefix they were read from. Whatever happened before (a first run, a
resume with records a kill left unsaved, a compaction, damage of any kind), the files a closed
book leaves are those bytes, and the index in memory holds those entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.augment.filters import ExactIndex, MinHashIndex, text_key
from localaug.core.errors import UsageError
from localaug.jobs import seen as S
from localaug.jobs.ledger import Appender, compact_ledger

RUN = "a" * 64
PROPS = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def rec(key: str, texts: list[str], status: str = "ok", pairs: bool = False) -> dict[str, Any]:
    r: dict[str, Any] = {"source_id": key, "task": "pairs" if pairs else "expand", "status": status, "row": 0}
    if pairs:
        r["pairs"] = [{"instruction": t, "response": "r"} for t in texts] if status == "ok" else []
    else:
        r["outputs"] = texts if status == "ok" else []
    return r


def append(ledger: Path, recs: list[dict[str, Any]]) -> None:
    app = Appender(ledger)
    for r in recs:
        app.write(r)
    app.close()


def owner(source_id: str) -> bytes:
    return hashlib.blake2b(source_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def latest_texts(ledger: Path) -> list[tuple[str, str]]:
    """(source id, text) of each accepted text of the latest record of each key, in ledger order."""
    recs = [json.loads(line) for line in ledger.read_bytes().splitlines() if line.strip()] if ledger.exists() else []
    last = {r["source_id"]: i for i, r in enumerate(recs)}
    out = []
    for i, r in enumerate(recs):
        if last[r["source_id"]] == i and r["status"] == "ok":
            out += [(r["source_id"], t) for t in r.get("outputs") or [p["instruction"] for p in r.get("pairs") or []]]
    return out


def oracle_entries(ledger: Path) -> list[tuple[str, str]]:
    """(source id, text) of each entry an exact index of ``ledger`` holds: each text whose key no
    earlier one has."""
    keys: set[bytes] = set()
    out = []
    for sid, t in latest_texts(ledger):
        if text_key(t) not in keys:
            keys.add(text_key(t))
            out.append((sid, t))
    return out


def oracle_bytes(ledger: Path) -> bytes:
    return b"".join(owner(sid) + text_key(t) for sid, t in oracle_entries(ledger))


def oracle_header(ledger: Path, entries: bytes, index: dict[str, Any] | None = None) -> bytes:
    data = ledger.read_bytes() if ledger.exists() else b""
    head = {"format": 1, "run_id": RUN, "index": index or {"kind": "exact"}, "entries": len(entries) // (24 + 4 * (
        (index or {}).get("num_perm", 0))), "entries_blake2b": hashlib.blake2b(entries).hexdigest(),
        "ledger_bytes": len(data), "ledger_blake2b": hashlib.blake2b(data).hexdigest()}
    return (json.dumps(head, indent=2) + "\n").encode()


def files_of(ledger: Path) -> tuple[bytes, bytes]:
    entries, header = S.index_paths(ledger)
    return entries.read_bytes(), header.read_bytes()


def exact_book(ledger: Path) -> tuple[S.SeenBook, S.Loaded]:
    b = S.SeenBook(ledger, RUN, ExactIndex())
    return b, b.load()


def loaded_tuple(loaded: S.Loaded) -> tuple[int, int, int, str]:
    return loaded.saved, loaded.tail, loaded.rebuilt, loaded.reason


def assert_files_are_the_oracle(ledger: Path) -> None:
    entries, header = files_of(ledger)
    assert entries == oracle_bytes(ledger)
    assert header == oracle_header(ledger, entries)


TEXTS = ["Name three rivers.", "name  THREE rivers.", "List two cities.", "写一首诗", "Explain tides.", "x"]
BASE = [rec("k0", ["Name three rivers.", "List two cities."]), rec("k1", [], "failed"),
        rec("k2", ["name  THREE rivers.", "写一首诗"]), rec("k3", ["Explain tides."], pairs=True),
        rec("k4", ["filtered one"], "filtered")]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "out.jsonl"
    append(path, BASE)
    return path


# --- names, settings, keys, hashes, the entry format -------------------------------------------


def test_the_index_files_are_named_after_the_ledgers_real_path(tmp_path: Path):
    real = tmp_path / "real" / "out.jsonl"
    real.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert S.index_paths(link) == (real.parent / "out.jsonl.dedup", real.parent / "out.jsonl.dedup.json")


def test_the_settings_an_index_depends_on():
    assert S.settings_of(ExactIndex()) == {"kind": "exact"}
    assert S.settings_of(MinHashIndex(0.7, num_perm=64, seed=3)) == {"kind": "minhash", "threshold": 0.7, "num_perm": 64,
                                                                      "seed": 3}


def test_record_keys():
    assert S.record_key("k0") == hashlib.blake2b(b"k0", digest_size=8).digest()
    assert S.record_key("é") == hashlib.blake2b(b"\xc3\xa9", digest_size=8).digest()
    assert S.record_key("\ud800") == hashlib.blake2b(b"\xed\xa0\x80", digest_size=8).digest()  # never fails
    assert len({S.record_key(f"k{i}") for i in range(100)}) == 100


def test_hash_range(tmp_path: Path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")

    def digest(start: int, end: int) -> str | None:
        h = S.hash_range(p, start, end, hashlib.blake2b())
        return None if h is None else h.hexdigest()

    for read in (1 << 20, 4, 1):
        monkeypatch.setattr(S, "_READ", read)
        assert digest(0, 10) == hashlib.blake2b(b"0123456789").hexdigest()
        assert digest(2, 3) == hashlib.blake2b(b"2").hexdigest()  # one byte
        assert digest(0, 5) == hashlib.blake2b(b"01234").hexdigest()  # a block and one byte
        assert digest(4, 4) == hashlib.blake2b().hexdigest()
        assert digest(0, 11) is None and digest(9, 12) is None  # the file is shorter
    h = hashlib.blake2b(b"ab")
    assert S.hash_range(p, 0, 2, h) is h and h.hexdigest() == hashlib.blake2b(b"ab01").hexdigest()  # updated, not new


def test_the_entry_format_is_little_endian_whatever_the_signatures_byte_order():
    owners, keys = [b"O" * 8, b"P" * 8], [b"K" * 16, b"L" * 16]
    sigs = np.array([[1, 0x01020304], [0xFFFFFFFF, 7]], dtype=">u4")  # big-endian in memory
    data = S._pack(owners, keys, sigs, 2)
    assert data == (b"O" * 8 + b"K" * 16 + struct.pack("<2I", 1, 0x01020304)
                    + b"P" * 8 + b"L" * 16 + struct.pack("<2I", 0xFFFFFFFF, 7))
    got_keys, got_sigs = S._unpack(np.frombuffer(data, np.uint8).reshape(2, 32), 2)
    assert got_keys == keys and got_sigs.dtype == np.uint32 and got_sigs.tolist() == [[1, 0x01020304], [0xFFFFFFFF, 7]]
    assert S._pack([], [], np.empty((0, 2), np.uint32), 2) == b""
    assert S._pack(owners, keys, np.empty((2, 0), np.uint32), 0) == b"O" * 8 + b"K" * 16 + b"P" * 8 + b"L" * 16


# --- the files of a first run, and of a resume -------------------------------------------------


def test_a_first_run_writes_the_oracles_bytes(ledger: Path):
    b, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (0, 0, 5, "no saved index") and 0 <= loaded.seconds < 60  # 5 texts checked
    assert [sid for sid, _ in oracle_entries(ledger)] == ["k0", "k0", "k2", "k3"]  # k2's first is k0's first again
    assert b.index.entries()[0] == [text_key(t) for _, t in oracle_entries(ledger)]
    assert_files_are_the_oracle(ledger)  # written by load, before any record
    b.close()
    assert_files_are_the_oracle(ledger)
    again, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (4, 0, 0, "") and again.index.entries()[0] == b.index.entries()[0]
    again.close()


def test_a_minhash_index_files(ledger: Path):
    b = S.SeenBook(ledger, RUN, MinHashIndex(0.8, num_perm=16, seed=5))
    assert loaded_tuple(b.load()) == (0, 0, 5, "no saved index")
    b.close()
    entries, header = files_of(ledger)
    settings_ = {"kind": "minhash", "threshold": 0.8, "num_perm": 16, "seed": 5}
    assert header == oracle_header(ledger, entries, settings_)
    fresh = MinHashIndex(0.8, num_perm=16, seed=5)
    want = b""
    for sid, t in oracle_entries(ledger):  # no two of these texts are near each other
        keys, sigs = fresh.encode([t])
        want += owner(sid) + keys[0] + sigs[0].astype("<u4").tobytes()
    assert entries == want and len(entries) == 4 * (24 + 64)
    again = S.SeenBook(ledger, RUN, MinHashIndex(0.8, num_perm=16, seed=5))
    assert loaded_tuple(again.load()) == (4, 0, 0, "")
    assert again.index.check("Explain  tides.", add=False) == "duplicate"
    assert again.index.entries()[1].tolist() == b.index.entries()[1].tolist()
    again.close()


def test_records_written_during_a_run_and_those_a_kill_left_unsaved(ledger: Path, monkeypatch):
    b, _ = exact_book(ledger)
    app = Appender(ledger)
    for r in (rec("k5", ["New one.", "Name three rivers."]), rec("k1", ["Retried row."]), rec("k6", [], "failed")):
        r["outputs"] = [t for t in r["outputs"] if b.index.check(t) is None]
        app.write(r)
        b.written(r)
    app.close()
    # not saved yet (SAVE_EVERY_S not reached): the header still covers the ledger as it was loaded
    assert json.loads(files_of(ledger)[1])["entries"] == 4
    entries = files_of(ledger)[0]
    assert entries == oracle_bytes(ledger)  # the entries are appended as records are written
    os.close(b._fd)  # killed: no save, no close
    again, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (4, 2, 0, "")  # the two texts of the records after the header's prefix
    again.close()
    assert_files_are_the_oracle(ledger)


def test_a_save_after_each_record_covers_what_is_written(ledger: Path, monkeypatch):
    monkeypatch.setattr(S, "SAVE_EVERY_S", 0.0)
    b, _ = exact_book(ledger)
    r = rec("k5", [t for t in ["New one."] if b.index.check(t) is None])
    append(ledger, [r])
    b.written(r)
    assert_files_are_the_oracle(ledger)
    os.close(b._fd)
    assert loaded_tuple(exact_book(ledger)[1]) == (5, 0, 0, "")


def test_a_tail_whose_record_replaces_one_without_texts_is_read_one_by_one(ledger: Path):
    exact_book(ledger)[0].close()
    append(ledger, [rec("k1", ["Retried row.", "List two cities."]), rec("k4", ["Now ok."])])  # k1 failed, k4 filtered
    again, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (4, 3, 0, "")
    assert [again.index.check(t, add=False) for t in ["Retried row.", "List two cities.", "Now ok.", "no"]] == [
        "duplicate", "duplicate", "duplicate", None]
    again.close()
    assert_files_are_the_oracle(ledger)
    assert len(files_of(ledger)[0]) == 6 * 24


@pytest.mark.parametrize("replaced", ["k0", "k2", "k3"])  # the first, a middle and the last owner held
def test_a_tail_whose_record_replaces_one_with_texts_rebuilds(ledger: Path, replaced: str):
    exact_book(ledger)[0].close()
    append(ledger, [rec("k9", ["Fine."]), rec(replaced, [], "failed")])
    again, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (0, 0, len(latest_texts(ledger)), "a later record replaces one whose texts the index holds")
    again.close()
    assert_files_are_the_oracle(ledger)


# --- every kind of damage: rebuilt, with the reason ------------------------------------------------


def _damage(ledger: Path, kind: str) -> None:
    entries, header_path = S.index_paths(ledger)
    header = json.loads(header_path.read_text())

    def put(**changes: Any) -> None:
        h = {**header, **changes}
        header_path.write_text(json.dumps({k: v for k, v in h.items() if v is not ...}))

    if kind == "no header":
        header_path.unlink()
    elif kind == "header not json":
        header_path.write_text("{not json")
    elif kind == "header a list":
        header_path.write_text("[1, 2]")
    elif kind == "other format":
        put(format=2)
    elif kind == "other run":
        put(run_id="b" * 64)
    elif kind == "other settings":
        put(index={"kind": "minhash", "threshold": 0.8, "num_perm": 128, "seed": 1})
    elif kind.startswith("entries="):
        put(entries=json.loads(kind[8:]))
    elif kind.startswith("ledger_bytes="):
        put(ledger_bytes=json.loads(kind[13:]))
    elif kind == "no entries count":
        put(entries=...)
    elif kind == "more entries than the file holds":
        put(entries=header["entries"] + 1)
    elif kind == "entries file cut":
        entries.write_bytes(entries.read_bytes()[:-1])
    elif kind == "entries file gone":
        entries.unlink()
    elif kind == "entries file a folder":
        entries.unlink()
        entries.mkdir()
    elif kind == "entries flipped":
        data = bytearray(entries.read_bytes())
        data[30] ^= 0x10
        entries.write_bytes(bytes(data))
    elif kind == "entries hash gone":
        put(entries_blake2b=...)
    elif kind == "ledger cut":
        data = ledger.read_bytes()
        ledger.write_bytes(data[:data.rindex(b"\n", 0, len(data) - 1) + 1])
    elif kind == "ledger edited":
        ledger.write_bytes(ledger.read_bytes().replace(b"Explain tides.", b"Explain TIDES."))
    elif kind == "ledger hash gone":
        put(ledger_blake2b=...)
    else:
        raise AssertionError(kind)


DAMAGE = {
    "no header": "no saved index",
    "header not json": "no saved index",
    "header a list": "no saved index",
    "other format": "the saved index is of other settings",
    "other run": "the saved index is of other settings",
    "other settings": "the saved index is of other settings",
    "entries=-1": "the saved index header is damaged",
    'entries="4"': "the saved index header is damaged",
    "entries=4.0": "the saved index header is damaged",
    "entries=null": "the saved index header is damaged",
    "no entries count": "the saved index header is damaged",
    "ledger_bytes=-1": "the saved index header is damaged",
    'ledger_bytes="1"': "the saved index header is damaged",
    "more entries than the file holds": "the saved index covers more than is there",
    "entries file cut": "the saved index covers more than is there",
    "ledger cut": "the saved index covers more than is there",
    "entries file gone": "the saved index cannot be read",
    "entries file a folder": "the saved index cannot be read",
    "entries flipped": "the saved entries do not match their header",
    "entries hash gone": "the saved entries do not match their header",
    "ledger edited": "the ledger changed since the index was saved",
    "ledger hash gone": "the ledger changed since the index was saved",
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_damage_is_rebuilt_into_the_oracles_bytes(ledger: Path, kind: str):
    exact_book(ledger)[0].close()
    _damage(ledger, kind)
    b = S.SeenBook(ledger, RUN, ExactIndex())
    if kind == "entries file a folder":  # read as damaged, but a rebuild cannot replace it: said so
        with pytest.raises(UsageError, match=r"out\.jsonl\.dedup is not a regular file \(a folder"):
            b.load()
        return
    loaded = b.load()
    want = oracle_entries(ledger)
    assert loaded_tuple(loaded) == (0, 0, len(latest_texts(ledger)), DAMAGE[kind])
    assert b.index.entries()[0] == [text_key(t) for _, t in want]
    assert_files_are_the_oracle(ledger)  # the header written anew at once
    b.close()
    assert_files_are_the_oracle(ledger)
    assert loaded_tuple(exact_book(ledger)[1]) == (len(want), 0, 0, "")


def test_entries_past_the_headers_count_are_never_read(ledger: Path):
    b, _ = exact_book(ledger)
    b.close()
    entries, _ = S.index_paths(ledger)
    with open(entries, "ab") as f:
        f.write(owner("k7") + text_key("appended before a kill") + b"\xff" * 5)  # and half of another
    again, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (4, 0, 0, "")
    assert again.index.check("appended before a kill", add=False) is None
    assert entries.read_bytes() == oracle_bytes(ledger)  # cut back to what the header covers
    again.close()


def test_a_saved_index_of_no_entries_is_taken(tmp_path: Path):
    ledger = tmp_path / "out.jsonl"
    append(ledger, [rec("k1", [], "failed"), rec("k2", [], "filtered"), rec("k3", [])])
    for index in (ExactIndex(), MinHashIndex(0.8, num_perm=16)):
        for f in S.index_paths(ledger):
            f.unlink(missing_ok=True)
        b = S.SeenBook(ledger, RUN, index)
        assert loaded_tuple(b.load()) == (0, 0, 0, "no saved index")
        b.close()
        entries, header = files_of(ledger)
        assert entries == b"" and json.loads(header)["entries"] == 0
        again = S.SeenBook(ledger, RUN, type(index)() if isinstance(index, ExactIndex) else MinHashIndex(0.8, num_perm=16))
        assert loaded_tuple(again.load()) == (0, 0, 0, "")
        again.close()


def test_an_empty_ledger(tmp_path: Path):
    ledger = tmp_path / "out.jsonl"
    ledger.write_bytes(b"")
    b, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (0, 0, 0, "no saved index")
    entries, header = files_of(ledger)
    assert entries == b"" and header == oracle_header(ledger, b"")
    b.close()
    assert loaded_tuple(exact_book(ledger)[1]) == (0, 0, 0, "")


def test_a_missing_ledger_is_an_error_and_writes_nothing(tmp_path: Path):
    ledger = tmp_path / "out.jsonl"  # a run creates it before the index is loaded
    with pytest.raises(FileNotFoundError):
        exact_book(ledger)
    assert list(tmp_path.iterdir()) == []


def test_the_ledger_is_read_in_chunks_up_to_where_it_ended(ledger: Path, monkeypatch):
    monkeypatch.setattr(S, "_ENCODE_AT_ONCE", 3)
    b = S.SeenBook(ledger, RUN, ExactIndex())
    last: dict[str, int] = {}
    assert list(b._ledger_texts(last, ledger.stat().st_size)) == [
        ([("k0", 0), ("k0", 0), ("k2", 2), ("k2", 2)], ["Name three rivers.", "List two cities.", "name  THREE rivers.", "写一首诗"]),
        ([("k3", 3)], ["Explain tides."])]
    assert last == {"k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4}
    lines = ledger.read_bytes().splitlines(keepends=True)
    second = len(lines[0] + lines[1])  # where record 2 (k2) begins
    last = {}
    assert list(b._ledger_texts(last, second + 1)) == [
        ([("k0", 0), ("k0", 0), ("k2", 2), ("k2", 2)], ["Name three rivers.", "List two cities.", "name  THREE rivers.", "写一首诗"])]
    assert last == {"k0": 0, "k1": 1, "k2": 2}
    last = {}
    assert list(b._ledger_texts(last, second)) == [([("k0", 0), ("k0", 0)], ["Name three rivers.", "List two cities."])]
    assert last == {"k0": 0, "k1": 1}
    assert list(b._ledger_texts({}, 0)) == []


@pytest.mark.parametrize("at_once", [1, 2, 3, 4096])
def test_a_rebuild_in_chunks_gives_the_oracles_bytes(ledger: Path, monkeypatch, at_once: int):
    monkeypatch.setattr(S, "_ENCODE_AT_ONCE", at_once)
    append(ledger, [rec("k0", ["Replaced.", "Name three rivers."]), rec("k8", ["x", "X ", "y"])])
    b, loaded = exact_book(ledger)
    assert loaded_tuple(loaded) == (0, 0, len(latest_texts(ledger)), "no saved index")
    b.close()
    assert_files_are_the_oracle(ledger)
    assert [t for _, t in oracle_entries(ledger)] == ["name  THREE rivers.", "写一首诗", "Explain tides.", "Replaced.", "x", "y"]


def test_a_rebuild_starts_from_an_empty_index(ledger: Path):
    index = ExactIndex()
    index.check("already here")
    with pytest.raises(AssertionError, match="^a rebuild starts from an empty index$"):
        S.SeenBook(ledger, RUN, index).load()


# --- writing: when the header is replaced, and what a closed or unloaded book does ------------------


def test_the_header_is_replaced_only_when_there_is_something_new(ledger: Path):
    b, _ = exact_book(ledger)
    _, header_path = S.index_paths(ledger)
    inode = header_path.stat().st_ino
    b.save()
    b.written(rec("k9", []))  # a record without texts: nothing to keep, the mark moves on
    assert header_path.stat().st_ino == inode
    b.save()
    assert header_path.stat().st_ino != inode
    inode = header_path.stat().st_ino
    b.close()
    b.close()
    b.save()
    assert header_path.stat().st_ino == inode


def test_a_book_not_loaded_or_closed_writes_nothing(ledger: Path, capfd):
    b = S.SeenBook(ledger, RUN, ExactIndex())
    b.written(rec("k9", ["Not kept."]))
    b.save()
    b.close()
    assert [p.exists() for p in S.index_paths(ledger)] == [False, False]
    b.load()
    b.close()
    before = files_of(ledger)
    b.written(rec("k9", ["Not kept."]))
    b.save()
    b.close()
    assert files_of(ledger) == before
    assert capfd.readouterr() == ("", "")


def test_a_ledger_cut_under_a_running_book(ledger: Path):
    b, _ = exact_book(ledger)
    r = rec("k9", [t for t in ["Cut away."] if b.index.check(t) is None])
    append(ledger, [r])
    b.written(r)
    ledger.write_bytes(ledger.read_bytes()[:10])
    with pytest.raises(OSError) as e:
        b.close()
    assert str(e.value) == f"{ledger} is shorter than the records written to it"
    b.close()  # closed all the same: nothing more happens
    b.save()
    assert loaded_tuple(exact_book(ledger)[1])[3] == "the saved index covers more than is there"


class CuttingIndex(ExactIndex):
    """An exact index that cuts the ledger short while the ledger is being read for a rebuild."""

    def __init__(self, ledger: Path) -> None:
        super().__init__()
        self.ledger = ledger

    def encode(self, texts):
        self.ledger.write_bytes(b"")
        return super().encode(texts)


def test_a_ledger_cut_while_it_is_read_for_a_rebuild(ledger: Path):
    b = S.SeenBook(ledger, RUN, CuttingIndex(ledger))
    with pytest.raises(OSError) as e:
        b.load()
    assert str(e.value) == f"{ledger} was cut while it was read"
    b.close()
    assert not S.index_paths(ledger)[1].exists()  # no header claims anything
    assert loaded_tuple(exact_book(ledger)[1]) == (0, 0, 0, "no saved index")


# --- compaction ------------------------------------------------------------------------------------------


def _with_retries(ledger: Path) -> None:
    append(ledger, [rec("k1", ["Retried row."]), rec("k4", [], "failed")])


def test_compaction_points_a_saved_index_at_the_compacted_ledger(ledger: Path):
    b, _ = exact_book(ledger)
    r = rec("k1", [t for t in ["Retried row."] if b.index.check(t) is None])
    append(ledger, [r])
    b.written(r)
    b.close()
    entries, header = files_of(ledger)
    S.compact_keeping_index(ledger, lambda: compact_ledger(ledger))
    assert [json.loads(x)["source_id"] for x in ledger.read_bytes().splitlines()] == ["k0", "k2", "k3", "k4", "k1"]
    assert files_of(ledger) == (entries, oracle_header(ledger, entries))
    assert entries == oracle_bytes(ledger)
    assert loaded_tuple(exact_book(ledger)[1]) == (5, 0, 0, "")


@pytest.mark.parametrize("state", ["no header", "covers a prefix", "other hash", "damaged size"])
def test_compaction_leaves_a_header_that_did_not_cover_the_ledger_alone(ledger: Path, state: str):
    b, _ = exact_book(ledger)
    b.close()
    _, header_path = S.index_paths(ledger)
    header = json.loads(header_path.read_text())
    if state == "no header":
        header_path.unlink()
    elif state == "covers a prefix":
        _with_retries(ledger)  # records a kill left unsaved
    elif state == "other hash":
        header_path.write_text(json.dumps({**header, "ledger_blake2b": "0" * 128}))
    else:  # the whole ledger's hash, but another length
        header_path.write_text(json.dumps({**header, "ledger_bytes": header["ledger_bytes"] - 1}))
    _with_retries(ledger) if state != "covers a prefix" else None
    before = header_path.read_bytes() if header_path.exists() else None
    S.compact_keeping_index(ledger, lambda: compact_ledger(ledger))
    assert (header_path.read_bytes() if header_path.exists() else None) == before
    again, loaded = exact_book(ledger)
    assert loaded.saved == 0 and loaded.rebuilt == len(latest_texts(ledger)) == 6 and len(oracle_entries(ledger)) == 5
    again.close()
    assert_files_are_the_oracle(ledger)


# --- any history: the files are the oracle's ---------------------------------------------------------

STEP = st.tuples(st.sampled_from(["ok", "ok", "failed", "filtered"]), st.integers(0, 7),
                 st.lists(st.sampled_from(TEXTS + ["Retried row.", "EXPLAIN tides", "List two cities"]), max_size=3))
SESSION = st.tuples(st.sampled_from(["none", "compact", "flip", "drop header", "cut entries"]),
                    st.lists(STEP, max_size=6), st.sampled_from(["close", "kill", "kill before the last written"]),
                    st.booleans())


@PROPS
@given(st.lists(SESSION, min_size=1, max_size=4))
def test_after_any_history_the_files_are_the_oracles(tmp_path_factory, sessions):
    ledger = tmp_path_factory.mktemp("h") / "out.jsonl"
    ledger.touch()  # as a run creates it
    latest: dict[str, str] = {}
    for before, steps, end, save_each in sessions:
        if before == "compact" and ledger.exists():
            S.compact_keeping_index(ledger, lambda: compact_ledger(ledger))
        elif before != "none" and S.index_paths(ledger)[0].exists():
            entries, header = S.index_paths(ledger)
            if before == "flip" and entries.stat().st_size:
                data = bytearray(entries.read_bytes())
                data[random.Random(len(data)).randrange(len(data))] ^= 1
                entries.write_bytes(bytes(data))
            elif before == "drop header":
                header.unlink(missing_ok=True)
            elif before == "cut entries":
                entries.write_bytes(entries.read_bytes()[:-24])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(S, "SAVE_EVERY_S", 0.0 if save_each else 1e9)
            b, _ = exact_book(ledger)
            assert b.index.entries()[0] == [text_key(t) for _, t in oracle_entries(ledger)]
            app = Appender(ledger)
            written = []  # a run does a row once, and again in a later run only if it has no ok record
            for status, k, texts in steps:
                if latest.get(f"k{k}", "") in ("", "failed", "filtered") and f"k{k}" not in {w[1] for w in written}:
                    written.append((status, f"k{k}", texts))
            for n, (status, k, texts) in enumerate(written):
                r = rec(k, [t for t in dict.fromkeys(texts) if b.index.check(t) is None] if status == "ok" else [], status)
                app.write(r)
                latest[r["source_id"]] = status
                if not (end == "kill before the last written" and n == len(written) - 1):
                    b.written(r)
            app.close()
            if end == "close":
                b.close()
                assert_files_are_the_oracle(ledger)
            else:
                os.close(b._fd)  # killed
    b, loaded = exact_book(ledger)
    assert b.index.entries()[0] == [text_key(t) for _, t in oracle_entries(ledger)]
    b.close()
    assert_files_are_the_oracle(ledger)


def test_the_entries_file_is_created_readable_by_all_writable_by_its_owner(tmp_path: Path):
    path = tmp_path / "out.jsonl"
    append(path, BASE)
    old = os.umask(0o022)
    try:
        b, _ = exact_book(path)
    finally:
        os.umask(old)
    b.close()
    entries_path, _ = S.index_paths(path)
    assert entries_path.stat().st_mode & 0o777 == 0o644


def test_a_book_whose_entries_file_is_descriptor_0_writes_saves_and_closes(ledger: Path):
    # a process started with its standard input closed (a daemon, a job scheduler) gets descriptor 0
    # from its first open: a valid descriptor like any other
    stdin = os.dup(0)
    os.close(0)
    try:
        b, _ = exact_book(ledger)
        assert b._fd == 0
        r = rec("k5", [t for t in ["New one.", "Name three rivers."] if b.index.check(t) is None])
        append(ledger, [r])
        b.written(r)  # appended now, saved (SAVE_EVERY_S is far off) at close
        assert files_of(ledger)[0] == oracle_bytes(ledger)
        b.close()
        assert b._fd < 0 and os.fstat(stdin)  # closed: descriptor 0 is free again
        with pytest.raises(OSError):
            os.fstat(0)
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
    assert_files_are_the_oracle(ledger)
    assert loaded_tuple(exact_book(ledger)[1]) == (5, 0, 0, "")


def test_a_forced_save_on_descriptor_0_rewrites_the_header(ledger: Path):
    stdin = os.dup(0)
    os.close(0)
    try:
        b, _ = exact_book(ledger)
        assert b._fd == 0
        _, header_path = S.index_paths(ledger)
        inode = header_path.stat().st_ino
        b.save(force=True)
        assert header_path.stat().st_ino != inode
        b.close()
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
