"""The job ledger (localaug/jobs/ledger.py): repair, scan, compaction, the best record of a key,
counts. Exact bytes and values typed out here, and random histories of ok/filtered/failed records
checked against brute-force oracles written in this file.

Fast pure-logic tests (no model): they guard ledger.py in tools/mutation.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.augment.filters import ExactIndex
from localaug.core.errors import JobLockedError, opt
from localaug.jobs import ledger as L
from localaug.jobs.schema import Skipped

PROPS = settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def rec(key: str, status: str = "ok", row: int | None = None, task: str = "refine", **extra) -> dict:
    r = {"source_id": key, "task": task, "status": status}
    if row is not None:
        r["row"] = row
    if status == "ok" and task == "refine" and "output" not in extra:
        r["output"] = f"{key} refined"
    return {**r, **extra}


def line(r: dict) -> bytes:
    """One record line as localaug writes it: json.dumps's default separators, readable UTF-8."""
    return (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")


def write(path: Path, *items: dict | bytes) -> Path:
    path.write_bytes(b"".join(i if isinstance(i, bytes) else line(i) for i in items))
    return path


# --- paths and the lock ---------------------------------------------------------------------------------


def test_job_paths(tmp_path):
    out = tmp_path / "out.jsonl"
    assert L.job_paths(out, "jsonl") == (out, tmp_path / "out.jsonl.manifest.json", tmp_path / "out.jsonl.lock")
    train = tmp_path / "train.json"
    assert L.job_paths(train, "alpaca") == (tmp_path / "train.json.ledger.jsonl", tmp_path / "train.json.manifest.json",
                                            tmp_path / "train.json.lock")


def test_lock_and_stale_paths_follow_a_symlink_to_the_real_file(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "out.jsonl"
    real.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert L.lock_path(link) == tmp_path / "real" / "out.jsonl.lock"
    assert L.stale_path(link) == tmp_path / "real" / "out.jsonl.stale"
    assert L.stale_path(real) == tmp_path / "real" / "out.jsonl.stale"


def test_output_lock_refuses_a_second_writer(tmp_path):
    lock = tmp_path / "out.jsonl.lock"
    with L.output_lock(lock):
        assert lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process holds it
        with pytest.raises(JobLockedError) as e:
            with L.output_lock(lock):
                pytest.fail("entered a held lock")
        assert e.value.template == (f"another localaug run is writing {tmp_path / 'out.jsonl'}: wait for it or choose "
                                    f"another {opt('output')}")
        assert e.value.fields == {"path": str(tmp_path / "out.jsonl")}
    finally:
        os.close(fd)
    with L.output_lock(lock):  # free again
        pass


# --- a torn last line ----------------------------------------------------------------------------------


def untouched(path: Path) -> tuple[int, bytes]:
    """A file's mtime (set in the past) and bytes: a repair that writes it, even the same bytes, changes the first."""
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return path.stat().st_mtime_ns, path.read_bytes()


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n", line(rec("a")) + line(rec("b"))])
def test_repair_leaves_whole_files_alone_unwritten(tmp_path, data):
    assert L.repair_ledger(tmp_path / "absent.jsonl") == 0
    path = tmp_path / "out.jsonl"
    path.write_bytes(data)
    before = untouched(path)
    assert L.repair_ledger(path) == 0
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


@pytest.mark.parametrize("head, torn", [
    (b'{"a": 1}\n', b'{"source_id": "x", "ta'),
    (b'{"a": 1}\n{"b": 2}\n', b"{"),
    (b"", b'{"source_id": "x"'),  # the only line is torn: nothing is kept
    (b"x" * 70_000 + b"\n", b"y" * 10),  # the newline lies in an earlier 64 KiB block
    (b"z\n", b"t" * 200_000),  # a torn line longer than a block
    (b"a\n" + b"b" * 65_535 + b"\n", b"c"),  # a newline right at a block's edge
    (b"", b"{"),  # one byte
    (b"\n", b"x" * 65_536),  # the only newline is the first byte, a block away
])
def test_repair_cuts_exactly_the_torn_line(tmp_path, head, torn):
    path = tmp_path / "out.jsonl"
    path.write_bytes(head + torn)
    assert L.repair_ledger(path) == len(torn)
    assert path.read_bytes() == head


def test_repair_reads_a_long_torn_line_in_bounded_blocks(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(line(rec("a")) + b"x" * (24 << 20))
    tracemalloc.start()
    try:
        assert L.repair_ledger(path) == 24 << 20
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.read_bytes() == line(rec("a")) and peak < 4 << 20


def test_repair_of_a_single_newline_block_boundary(tmp_path):
    path = tmp_path / "out.jsonl"
    data = b"q" * (1 << 16) + b"\n" + b"r" * ((1 << 16) - 1)  # the newline is the last byte of the first block
    path.write_bytes(data)
    assert L.repair_ledger(path) == (1 << 16) - 1
    assert path.read_bytes() == b"q" * (1 << 16) + b"\n"


# --- reading lines and records -----------------------------------------------------------------------------


def test_record_lines_numbers_and_offsets(tmp_path):
    path = write(tmp_path / "r.jsonl", b'{"a": 1}\n', b"\n", "é".encode() + b"\n", b"last")
    with open(path, "rb") as f:
        assert list(L.record_lines(f)) == [(1, 0, b'{"a": 1}\n'), (2, 9, b"\n"), (3, 10, "é".encode() + b"\n"),
                                           (4, 13, b"last")]


def test_an_overlong_line_is_skipped_unread_and_offsets_stay_right(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_RECORD_BYTES", 1 << 20)
    big = b'{"x": "' + b"a" * (3 << 20) + b'"}\n'  # three times the limit, skipped in 1 MiB reads
    exact = b"b" * (1 << 20) + b"\n"  # the limit and its newline: read whole
    path = write(tmp_path / "r.jsonl", rec("k0"), big, exact, rec("k1"))
    first = len(line(rec("k0")))
    with open(path, "rb") as f:
        got = list(L.record_lines(f))
    assert got == [(1, 0, line(rec("k0"))), (2, first, None), (3, first + len(big), exact),
                   (4, first + len(big) + len(exact), line(rec("k1")))]
    assert L.parse_line(None) == (None, "a line over 1 MiB")
    skipped = Skipped()
    assert [r["source_id"] for _, _, r in L.records_in(path, skipped)] == ["k0", "k1"]
    assert (skipped.count, skipped.first) == (2, "line 2: a line over 1 MiB")


def test_the_limit_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_RECORD_BYTES", 200)
    at = rec("at", output="")
    at["output"] = "a" * (200 - len(json.dumps(at)))  # exactly 200 bytes and its newline: read
    over = rec("over", output="")
    over["output"] = "o" * (201 - len(json.dumps(over)))  # 201 bytes and its newline: skipped
    assert len(json.dumps(at)) == 200 and len(json.dumps(over)) == 201
    path = write(tmp_path / "r.jsonl", at, over, rec("k"))
    skipped = Skipped()
    assert [r["source_id"] for _, _, r in L.records_in(path, skipped)] == ["at", "k"]
    assert skipped.first == "line 2: a line over 0 MiB"
    last = write(tmp_path / "last.jsonl", rec("k"), json.dumps(at).encode())  # 200 bytes, no newline: read
    assert [r["source_id"] for _, _, r in L.records_in(last)] == ["k", "at"]


def test_an_overlong_line_is_skipped_in_bounded_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_RECORD_BYTES", 1 << 20)
    path = write(tmp_path / "r.jsonl", b'{"x": "' + b"a" * (24 << 20) + b'"}\n', rec("k"))
    tracemalloc.start()
    try:
        got = [r["source_id"] for _, _, r in L.records_in(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == ["k"] and peak < 6 << 20


def test_an_overlong_last_line_without_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_RECORD_BYTES", 1 << 20)
    path = write(tmp_path / "r.jsonl", rec("k0"), b"c" * (2 << 20))
    with open(path, "rb") as f:
        assert list(L.record_lines(f)) == [(1, 0, line(rec("k0"))), (2, len(line(rec("k0"))), None)]


def test_the_real_limit_is_256_mib():
    assert L.MAX_RECORD_BYTES == 256 << 20
    assert L.parse_line(None) == (None, "a line over 256 MiB")


def test_parse_line():
    assert L.parse_line(b'{"a": [1, 2]}\n') == ({"a": [1, 2]}, None)
    assert L.parse_line(b'{"a": "\xff"}') == ({"a": "\ufffd"}, None)  # bad UTF-8 is replaced, the line is read
    assert L.parse_line(b'{"a": ') == (None, "not JSON")
    assert L.parse_line(b"\xff\xfe") == (None, "not JSON")
    assert L.parse_line(b"[" * 100_000) == (None, "nested too deep to read")


def test_read_record():
    assert L.read_record(line(rec("k"))) == (rec("k"), None)
    assert L.read_record(b"[1]") == (None, "an array, not an object")
    assert L.read_record(b"nope") == (None, "not JSON")
    assert L.read_record(None) == (None, "a line over 256 MiB")


def test_records_in_skips_blank_lines_and_counts_the_rest(tmp_path):
    path = write(tmp_path / "r.jsonl", rec("a"), b"\n", b"   \n", b"[1]\n", rec("b"), b"oops\n", b'{"source_id": ""}\n')
    skipped = Skipped()
    got = list(L.records_in(path, skipped))
    a = len(line(rec("a")))
    assert got == [(1, 0, rec("a")), (5, a + 1 + 4 + 4, rec("b"))]
    assert skipped.count == 3 and skipped.first == "line 4: an array, not an object"
    assert [r for _, _, r in L.records_in(path)] == [rec("a"), rec("b")]  # no Skipped given: still read


# --- scan, iterate, compact -----------------------------------------------------------------------------


def test_scan_ledger(tmp_path):
    assert L.scan_ledger(tmp_path / "absent.jsonl") == ({}, 0)
    path = write(tmp_path / "r.jsonl", rec("a", "failed"), rec("b"), b"junk\n", rec("a"), rec("c", "filtered"),
                 rec("a", "failed"), b"\n")
    assert L.scan_ledger(path) == ({"a": "failed", "b": "ok", "c": "filtered"}, 3)


def test_iter_ledger_latest_only_keeps_ledger_order_of_the_last_record(tmp_path):
    recs = [rec("a", "failed", 0), rec("b", "ok", 1), rec("a", "ok", 0), rec("c", "failed", 2), rec("b", "filtered", 1)]
    path = write(tmp_path / "r.jsonl", *recs[:2], b"[]\n", *recs[2:])
    assert list(L.iter_ledger(path)) == [recs[2], recs[3], recs[4]]
    skipped = Skipped()
    assert list(L.iter_ledger(path, latest_only=False, skipped=skipped)) == recs
    assert skipped.count == 1
    skipped = Skipped()
    assert len(list(L.iter_ledger(path, skipped=skipped))) == 3 and skipped.count == 1


def test_compact_keeps_the_latest_record_of_each_key_and_writes_exact_bytes(tmp_path):
    path = write(tmp_path / "out.jsonl", rec("k1", "failed", 0, error="max_tokens hit"), rec("k2", "ok", 1, output="二"),
                 b"garbage\n", rec("k1", "ok", 0, output="一 😀"))
    assert L.compact_ledger(path) == 0
    assert path.read_bytes() == (
        '{"source_id": "k2", "task": "refine", "status": "ok", "row": 1, "output": "二"}\n'
        '{"source_id": "k1", "task": "refine", "status": "ok", "row": 0, "output": "一 😀"}\n').encode("utf-8")
    assert not L.stale_path(path).exists()


def test_compact_moves_dropped_keys_to_the_stale_file(tmp_path):
    path = write(tmp_path / "out.jsonl", rec("gone", "failed", 0), rec("kept", "ok", 1), rec("gone", "ok", 0),
                 rec("old", "filtered", 2))
    stale = L.stale_path(path)
    stale.write_bytes(line(rec("earlier")))
    assert L.compact_ledger(path, {"gone", "old", "absent"}) == 2
    assert path.read_bytes() == line(rec("kept", "ok", 1))
    assert stale.read_bytes() == line(rec("earlier")) + line(rec("gone", "ok", 0)) + line(rec("old", "filtered", 2))


def test_compact_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "d").mkdir()
    real = write(tmp_path / "d" / "out.jsonl", rec("a", "failed"), rec("a"), rec("b"))
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    assert L.compact_ledger(link, {"b"}) == 1
    assert link.is_symlink() and real.read_bytes() == line(rec("a"))
    assert (tmp_path / "d" / "out.jsonl.stale").read_bytes() == line(rec("b"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["out.jsonl", "out.jsonl.stale"]


LOCALE_CHILD = """
import sys
from pathlib import Path
from localaug.jobs.ledger import compact_ledger
print(compact_ledger(Path(sys.argv[1]), {"gone"}))
"""


def test_compaction_writes_utf8_whatever_the_locale(tmp_path):
    path = write(tmp_path / "out.jsonl", rec("gone", output="走了 😀"), rec("kept", "failed"), rec("kept", output="留下 ✓"))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", LOCALE_CHILD, str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
    assert path.read_bytes() == line(rec("kept", output="留下 ✓"))
    assert L.stale_path(path).read_bytes() == line(rec("gone", output="走了 😀"))
    assert L.compact_ledger(path) == 0  # and in this process


def test_compact_an_empty_ledger(tmp_path):
    path = write(tmp_path / "out.jsonl")
    assert L.compact_ledger(path, {"x"}) == 0
    assert path.read_bytes() == b"" and L.stale_path(path).read_bytes() == b""


# --- appends ---------------------------------------------------------------------------------------------


def test_appender_writes_whole_lines_and_syncs_at_most_every_second(tmp_path):
    path = tmp_path / "out.jsonl"
    a = L.Appender(path)
    try:
        a.write(rec("k", output="é"))
        assert path.read_bytes() == '{"source_id": "k", "task": "refine", "status": "ok", "output": "é"}\n'.encode()
        a.synced = time.monotonic() - 0.5
        before = a.synced
        a.write(rec("k2"))
        assert a.synced == before  # synced half a second ago: not yet
        a.synced = time.monotonic() - 1.5
        t0 = time.monotonic()
        a.write(rec("k3"))
        assert a.synced >= t0  # over a second ago: fsync'd now
        assert path.read_bytes().count(b"\n") == 3
    finally:
        a.close()
    assert L.FSYNC_EVERY_S == 1.0


def test_appender_on_descriptor_0_is_closed_too(tmp_path):
    """A process started with stdin closed gets descriptor 0 for its ledger."""
    saved = os.dup(0)
    try:
        os.close(0)
        a = L.Appender(tmp_path / "out.jsonl")
        assert a.fd == 0
        a.write(rec("k"))
        a.close()
        with pytest.raises(OSError):
            os.fstat(0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert (tmp_path / "out.jsonl").read_bytes() == line(rec("k"))


def test_appender_appends_to_what_is_there_and_closes_once(tmp_path):
    path = write(tmp_path / "out.jsonl", rec("old"))
    a = L.Appender(path)
    fd = a.fd
    a.write(rec("new"))
    a.close()
    assert a.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    a.close()  # twice is fine
    assert path.read_bytes() == line(rec("old")) + line(rec("new"))
    fresh = L.Appender(tmp_path / "new.jsonl")
    fresh.close()
    assert (tmp_path / "new.jsonl").read_bytes() == b"" and (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# --- what changed between two runs -----------------------------------------------------------------------


def test_changed_keys():
    old = {"task": "refine", "sampling": {"temperature": 0.5, "top_p": 0.9, "x": {"y": 1}}, "n": 1, "seed": None}
    new = {"task": "refine", "sampling": {"temperature": 0.7, "top_p": 0.9, "x": {"y": 2}}, "n": 2, "extra": 1}
    assert L.changed_keys(old, new) == ["extra", "n", "sampling.temperature", "sampling.x.y"]
    assert L.changed_keys({"a": {"b": 1}}, {"a": 3}) == ["a"]
    assert L.changed_keys({}, {}) == [] and L.changed_keys(old, old) == []


# --- the best record of each key --------------------------------------------------------------------------


def test_best_records_ranks_ok_then_filtered_then_failed_the_later_of_equals(tmp_path):
    f0 = write(tmp_path / "a.jsonl", rec("k1", "ok", 3, output="first ok"), rec("k2", "failed", 1), b"junk\n",
               rec("k3", "filtered", 0))
    f1 = write(tmp_path / "b.jsonl", rec("k1", "failed", 3), rec("k2", "filtered", 1), rec("k1", "ok", 3, output="second ok"),
               rec("k3", "failed", 0), rec("k4", "failed"), b"[]\n", b"{}\n")
    best = L.best_records([f0, f1])
    assert (best.read, best.superseded, best.unreadable) == (8, 4, 3)
    assert [(n, s.count) for n, s in best.per_file] == [(3, 1), (5, 2)]
    got = {k: r for k, r in zip(best.where, L.read_at([f0, f1], list(best.where.values())))}
    assert got == {"k1": rec("k1", "ok", 3, output="second ok"), "k2": rec("k2", "filtered", 1),
                   "k3": rec("k3", "filtered", 0), "k4": rec("k4", "failed")}
    assert best.where["k4"][3] == L.NO_ROW and best.where["k1"][:2] == (2, 1)


def test_read_at_reads_in_the_order_given(tmp_path):
    f0 = write(tmp_path / "a.jsonl", rec("a"), rec("b"))
    f1 = write(tmp_path / "b.jsonl", rec("c"))
    best = L.best_records([f0, f1])
    places = [best.where["c"], best.where["a"], best.where["b"], best.where["c"]]
    assert [r["source_id"] for r in L.read_at([f0, f1], places)] == ["c", "a", "b", "c"]


def test_read_at_reads_no_more_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_RECORD_BYTES", 200)
    at = rec("at", output="")
    at["output"] = "a" * (200 - len(json.dumps(at)))
    path = write(tmp_path / "a.jsonl", at, rec("k"))
    best = L.best_records([path])
    assert list(L.read_at([path], [best.where["at"], best.where["k"]])) == [at, rec("k")]
    # edited between the two passes: a record of 202 bytes where one of 200 was is not read whole
    longer = dict(at, output=at["output"] + "bb")
    path.write_bytes(line(longer))
    assert list(L.read_at([path], [best.where["at"]])) == []
    longer = dict(at, output=at["output"] + "b")  # 201 bytes: the most one read can hold
    path.write_bytes(line(longer))
    assert list(L.read_at([path], [best.where["at"]])) == [longer]


def test_read_at_skips_a_line_that_is_no_longer_a_record(tmp_path):
    f0 = write(tmp_path / "a.jsonl", rec("a"), rec("b"))
    best = L.best_records([f0])
    f0.write_bytes(b"x" * len(line(rec("a"))) + line(rec("b")))  # edited since it was read
    assert list(L.read_at([f0], [best.where["a"], best.where["b"]])) == [rec("b")]


# --- random histories against brute force ------------------------------------------------------------------

KEYS = ["k0", "k1", "k2", "k3"]
RECORD = st.tuples(st.sampled_from(KEYS), st.sampled_from(["ok", "filtered", "failed"]),
                   st.one_of(st.none(), st.integers(0, 5)), st.booleans())
HISTORY = st.lists(st.lists(RECORD, max_size=10), min_size=1, max_size=3)
RANK = {"ok": 2, "filtered": 1, "failed": 0}


def materialise(history: list[list[tuple]], folder: Path) -> tuple[list[Path], list[list[dict]]]:
    """Files of records (each record's `n` tells it apart), with a junk line where asked."""
    paths, files, n = [], [], 0
    for fi, items in enumerate(history):
        recs, parts = [], []
        for key, status, row, junk in items:
            r = rec(key, status, row, n=n)
            n += 1
            recs.append(r)
            parts.append(line(r))
            if junk:
                parts.append(b'{"not": "a record"}\n')
        path = folder / f"part-{fi}.jsonl"
        path.write_bytes(b"".join(parts))
        path.with_name(path.name + ".manifest.json").write_text('{"run_id": "r", "complete": true}')  # a shard may be empty
        paths.append(path)
        files.append(recs)
    return paths, files


@PROPS
@given(st.lists(RECORD, max_size=14))
def test_compaction_and_scan_against_brute_force(items):
    with tempfile.TemporaryDirectory() as d:
        (path,), (recs,) = materialise([items], Path(d))
        junk = sum(j for *_, j in items)
        last = {r["source_id"]: i for i, r in enumerate(recs)}
        expected = [r for i, r in enumerate(recs) if last[r["source_id"]] == i]
        assert L.scan_ledger(path) == ({r["source_id"]: r["status"] for r in expected}, len(recs) - len(expected) + junk)
        assert list(L.iter_ledger(path)) == expected
        drop = {"k1"}
        moved = L.compact_ledger(path, drop)
        assert moved == sum(r["source_id"] in drop for r in expected)
        assert path.read_bytes() == b"".join(line(r) for r in expected if r["source_id"] not in drop)
        stale = L.stale_path(path)
        assert stale.read_bytes() == b"".join(line(r) for r in expected if r["source_id"] in drop)


@PROPS
@given(HISTORY)
def test_best_record_and_merge_order_against_brute_force(history):
    from localaug.jobs.merge import merge_outputs

    with tempfile.TemporaryDirectory() as d:
        paths, files = materialise(history, Path(d))
        every = [(fi, i, r) for fi, recs in enumerate(files) for i, r in enumerate(recs)]
        winner: dict[str, tuple] = {}
        for fi, i, r in every:  # the best rank; of equals, the one read last
            old = winner.get(r["source_id"])
            if old is None or RANK[r["status"]] >= RANK[old[2]["status"]]:
                winner[r["source_id"]] = (fi, i, r)
        best = L.best_records(paths)
        assert best.read == len(every) and best.superseded == len(every) - len(winner)
        assert best.unreadable == sum(j for items in history for *_, j in items)
        got = dict(zip(best.where, L.read_at(paths, list(best.where.values()))))
        assert got == {k: v[2] for k, v in winner.items()}
        # merge: one record per key in input order (row; records without one last), then file, then place
        order = sorted(winner.values(), key=lambda v: (v[2].get("row", 1 << 62), v[0], v[1]))
        if not winner:
            return
        out = Path(d) / "merged.jsonl"
        summary = merge_outputs(paths, out, dedup="none")
        assert out.read_bytes() == b"".join(line(v[2]) for v in order)
        assert summary.rows == len(winner) and summary.superseded == len(every) - len(winner)
        assert summary.by_status == {s: n for s in RANK if (n := sum(v[2]["status"] == s for v in order))}


# --- counts -------------------------------------------------------------------------------------------------


def test_accepted_texts():
    assert L.accepted_texts({"status": "ok", "outputs": ["a", "b"]}) == ["a", "b"]
    assert L.accepted_texts({"status": "ok", "outputs": [], "pairs": [{"instruction": "q", "response": "r"}]}) == ["q"]
    assert L.accepted_texts({"status": "ok", "pairs": [{"instruction": 1, "response": "r"}]}) == ["1"]
    assert L.accepted_texts({"status": "ok", "outputs": [2]}) == ["2"]
    assert L.accepted_texts({"status": "ok", "pairs": None}) == []
    assert L.accepted_texts({"status": "ok", "output": "x"}) == []
    assert L.accepted_texts({"status": "filtered", "outputs": ["a"]}) == []
    assert L.accepted_texts({"outputs": ["a"]}) == []


def test_remember_fills_the_duplicate_index():
    seen = ExactIndex()
    L.remember(seen, [{"status": "ok", "outputs": ["Alpha one", "Beta two"]}, {"status": "failed", "outputs": ["Gamma"]},
                      {"status": "ok", "pairs": [{"instruction": "Delta", "response": "r"}]}])
    assert [seen.check(t) for t in ("Alpha one", "Beta two", "Gamma", "Delta")] == ["duplicate", "duplicate", None, "duplicate"]


def test_record_counts_exact():
    records = [
        {"status": "ok", "task": "refine", "output": "x"},
        {"status": "ok", "task": "refine", "output": None},
        {"status": "ok", "task": "expand", "outputs": ["a", "b", "c"], "rejected": {"duplicate": 2, "too short": 1}},
        {"status": "ok", "task": "pairs", "pairs": [{"instruction": "q", "response": "r"}], "rejected": {"near-duplicate": 1}},
        {"status": "filtered", "task": "expand", "outputs": [], "rejected": {"duplicate": 3, "refusal": 2}},
        {"status": "failed", "error": "invalid JSON on line 3"},
        {"status": "failed", "error": "invalid JSON on line 12"},
        {"status": "failed", "error": "max_tokens hit (64 tokens)"},
        {"status": "failed"},
        {"task": "refine"},
        {"status": "ok", "task": "respond", "instruction": "q", "response": "r"},
    ]
    assert L.record_counts(records) == {
        "rows": 11, "ok": 5, "filtered": 1, "failed": 5, "items": 5, "duplicates": 6,
        "rejected_by_reason": {"duplicate": 5, "near-duplicate": 1, "refusal": 2, "too short": 1},
        "most_common_error": {"error": "invalid JSON on line 3", "rows": 2},
    }


def test_record_counts_of_nothing_and_of_no_failures():
    assert L.record_counts([]) == {"rows": 0, "ok": 0, "filtered": 0, "failed": 0, "items": 0, "duplicates": 0,
                                   "rejected_by_reason": {}}
    assert "most_common_error" not in L.record_counts([{"status": "ok", "output": "a"}])
    assert L.record_counts([{"status": "failed", "error": None}])["most_common_error"] == {"error": "no reason recorded", "rows": 1}


def test_most_common_error_blanks_numbers_in_the_first_500_characters():
    long_a = "x" * 500 + " 1"
    long_b = "x" * 500 + " 2"
    counts = L.record_counts([{"status": "failed", "error": e} for e in ("row 7 bad", long_a, long_b, "row 8 bad", "row 99 bad")])
    assert counts["most_common_error"] == {"error": "row 7 bad", "rows": 3}
    counts = L.record_counts([{"status": "failed", "error": e} for e in (long_a, "once", long_b)])
    assert counts["most_common_error"] == {"error": long_a, "rows": 2}  # the tail past 500 is not compared
    counts = L.record_counts([{"status": "failed", "error": "x" * 499 + "1"}, {"status": "failed", "error": "x" * 499 + "2"}])
    assert counts["most_common_error"]["rows"] == 2  # the 500th character is compared (blanked)


def test_error_kinds_compare_the_first_500_characters_with_numbers_as_hash():
    counts = L.record_counts([{"status": "failed", "error": "x" * 500 + t} for t in ("a", "once", "b")])
    assert counts["most_common_error"] == {"error": "x" * 500 + "a", "rows": 3}
    # a number is written as "#" before comparing: "row #" and "row 5" are one kind
    counts = L.record_counts([{"status": "failed", "error": e} for e in ("row #", "other", "row 5", "other", "row 6")])
    assert counts["most_common_error"] == {"error": "row #", "rows": 3}


def test_a_status_outside_the_three_is_counted_under_its_name():
    counts = L.record_counts([{"status": "pending"}, {"status": "ok", "output": "a"}])
    assert (counts["pending"], counts["ok"], counts["rows"]) == (1, 1, 2)


def test_distinct_errors_are_capped(monkeypatch):
    monkeypatch.setattr(L, "MAX_ERROR_KINDS", 2)
    errors = ["alpha", "beta", "gamma", "gamma", "gamma", "beta"]
    counts = L.record_counts([{"status": "failed", "error": e} for e in errors])
    assert counts["most_common_error"] == {"error": "beta", "rows": 2}  # gamma came after the cap: not counted
    assert L.MAX_ERROR_KINDS == 2 and counts["failed"] == 6


def test_the_error_kind_cap_is_1000():
    errors = [f"error {chr(0x4E00 + i)}" for i in range(1000)] + ["late"] * 5 + ["error 一"]
    counts = L.record_counts([{"status": "failed", "error": e} for e in errors])
    assert counts["most_common_error"] == {"error": "error 一", "rows": 2}
    errors = [f"error {chr(0x4E00 + i)}" for i in range(999)] + ["late"] * 5
    assert L.record_counts([{"status": "failed", "error": e} for e in errors])["most_common_error"] == {"error": "late", "rows": 5}


def test_output_counts(tmp_path):
    assert L.output_counts(tmp_path / "absent.jsonl")["rows"] == 0
    path = write(tmp_path / "out.jsonl", rec("a", "failed", error="boom 1"), rec("a", "ok"), rec("b", "failed", error="boom 2"))
    counts = L.output_counts(path)
    assert (counts["rows"], counts["ok"], counts["failed"], counts["items"]) == (2, 1, 1, 1)
    assert counts["most_common_error"] == {"error": "boom 2", "rows": 1}


# --- a retried row: exactly one record, in the ledger, the export and the counts ---------------------------


def respond_rec(key: str, status: str, row: int, **extra) -> dict:
    r = {"source_id": key, "task": "respond", "status": status, "row": row, "instruction": f"Q{row}", **extra}
    if status == "ok":
        r["response"] = f"A{row}"
    return r


def retried(tmp_path: Path, second: dict) -> tuple[object, Path]:
    """A ledger whose row 1 failed, then (a retry with retry_failed) got ``second``; row 0 and 2 ok."""
    from localaug.jobs.run import LedgerTarget

    out = tmp_path / "train.json"
    ledger = write(tmp_path / "train.json.ledger.jsonl", respond_rec("k0", "ok", 0),
                   respond_rec("k1", "failed", 1, error="max_tokens hit (64 tokens): raise max_tokens"),
                   respond_rec("k2", "ok", 2))
    target = LedgerTarget(out, "alpaca")
    assert target.prepare() == ""
    assert target.statuses == {"k0": "ok", "k1": "failed", "k2": "ok"}
    target.write([second])
    target.close()
    return target, ledger


def test_a_row_that_failed_then_succeeded_is_one_ok_record_everywhere(tmp_path):
    target, ledger = retried(tmp_path, respond_rec("k1", "ok", 1))
    assert target.finish() == 3
    assert ledger.read_bytes() == line(respond_rec("k0", "ok", 0)) + line(respond_rec("k2", "ok", 2)) + line(respond_rec("k1", "ok", 1))
    assert (tmp_path / "train.json").read_bytes() == (
        b'[\n{"instruction": "Q0", "input": "", "output": "A0"},\n{"instruction": "Q2", "input": "", "output": "A2"},\n'
        b'{"instruction": "Q1", "input": "", "output": "A1"}\n]\n')
    counts = target.counts()
    assert (counts["rows"], counts["ok"], counts["failed"]) == (3, 3, 0) and "most_common_error" not in counts
    assert L.scan_ledger(ledger) == ({"k0": "ok", "k2": "ok", "k1": "ok"}, 0)


def test_a_retried_row_that_fails_again_is_one_failed_record_with_the_new_error(tmp_path):
    target, ledger = retried(tmp_path, respond_rec("k1", "failed", 1, error="unparseable reply"))
    assert target.finish() == 2
    assert ledger.read_bytes() == (line(respond_rec("k0", "ok", 0)) + line(respond_rec("k2", "ok", 2))
                                   + line(respond_rec("k1", "failed", 1, error="unparseable reply")))
    assert json.loads((tmp_path / "train.json").read_bytes()) == [{"instruction": "Q0", "input": "", "output": "A0"},
                                                                  {"instruction": "Q2", "input": "", "output": "A2"}]
    counts = target.counts()
    assert (counts["rows"], counts["ok"], counts["failed"]) == (3, 2, 1)
    assert counts["most_common_error"] == {"error": "unparseable reply", "rows": 1}


def test_a_ledger_with_nothing_superseded_is_not_rewritten(tmp_path):
    from localaug.jobs.run import LedgerTarget

    out = tmp_path / "out.jsonl"
    write(out, rec("a", row=0), rec("b", row=1))
    target = LedgerTarget(out, "jsonl")
    target.prepare()
    target.write([rec("c", row=2)])
    target.close()
    before = untouched(out)
    assert target.finish() is None
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before


class _Calls:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def check(self, text: str) -> None:
        self.calls.append(("check", text))


class _Bulk(_Calls):
    def encode(self, texts: list[str]) -> tuple[list[str], list[int]]:
        self.calls.append(("encode", list(texts)))
        return [t.upper() for t in texts], [len(t) for t in texts]

    def extend(self, keys: list[str], sigs: list[int]) -> None:
        self.calls.append(("extend", keys, sigs))


def test_remember_fills_an_index_in_bulk_when_it_can_else_text_by_text():
    recs = [{"status": "ok", "outputs": ["ab", "c"]}, {"status": "failed", "outputs": ["x"]},
            {"status": "ok", "pairs": [{"instruction": "def", "response": "r"}]}]
    bulk, one = _Bulk(), _Calls()
    L.remember(bulk, recs)
    L.remember(one, recs)
    assert bulk.calls == [("encode", ["ab", "c", "def"]), ("extend", ["AB", "C", "DEF"], [2, 1, 3])]
    assert one.calls == [("check", "ab"), ("check", "c"), ("check", "def")]
