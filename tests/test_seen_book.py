"""The job-wide duplicate index kept beside a ledger (localaug/jobs/seen.py): taken as saved when it
describes the ledger, rebuilt when it is missing, stale or damaged, and in every case holding what
checking the texts of the ledger's latest records one by one holds (``ledger.remember``: the
oracle, with the index's previous implementation)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_minhash_index import OldMinHashIndex

from localaug.augment.filters import ExactIndex, MinHashIndex
from localaug.jobs import seen as S
from localaug.jobs.ledger import Appender, compact_ledger, iter_ledger, remember

RUN = "r" * 64
WORDS = [f"w{i}" for i in range(60)]


def rec(key: str, texts: list[str], status: str = "ok") -> dict:
    return {"source_id": key, "task": "expand", "status": status, "row": 0, "outputs": texts if status == "ok" else []}


def some_texts(rng: random.Random, n: int) -> list[str]:
    base = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(n)]
    return base + [t + " " + rng.choice(WORDS) for t in base[: n // 3]]  # near duplicates


def write_ledger(path: Path, recs: list[dict]) -> None:
    app = Appender(path)
    for r in recs:
        app.write(r)
    app.close()


def ledger_of(rng: random.Random, n: int, start: int = 0) -> list[dict]:
    texts = some_texts(rng, 3 * n)
    return [rec(f"k{start + i}", texts[3 * i:3 * i + rng.randint(0, 3)], rng.choice(["ok", "ok", "ok", "failed"]))
            for i in range(n)]


def oracle(ledger: Path, probes: list[str], threshold: float = 0.8) -> list[str | None]:
    old = OldMinHashIndex(threshold)
    remember(old, iter_ledger(ledger))
    return [old.check(p, add=False) for p in probes]


def book(ledger: Path, threshold: float = 0.8) -> tuple[S.SeenBook, S.Loaded]:
    b = S.SeenBook(ledger, RUN, MinHashIndex(threshold))
    return b, b.load()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "out.jsonl"
    write_ledger(path, ledger_of(random.Random(1), 60))
    return path


PROBES = some_texts(random.Random(9), 40) + [t.upper() for t in some_texts(random.Random(1), 30)]


def test_the_first_run_rebuilds_then_a_resume_takes_the_saved_entries(ledger: Path):
    want = oracle(ledger, PROBES)
    b, loaded = book(ledger)
    assert (loaded.saved, loaded.tail, loaded.reason) == (0, 0, "no saved index") and loaded.rebuilt > 0
    assert [b.index.check(p, add=False) for p in PROBES] == want
    b.close()
    entries, header_path = S.index_paths(ledger)
    header = json.loads(header_path.read_text())
    assert header["entries"] == len(b.index) and entries.stat().st_size == len(b.index) * (8 + 16 + 4 * 128)
    assert header["ledger_bytes"] == ledger.stat().st_size
    again, loaded = book(ledger)
    assert (loaded.saved, loaded.tail, loaded.rebuilt) == (len(b.index), 0, 0)
    assert [again.index.check(p, add=False) for p in PROBES] == want
    assert again.index.entries()[0] == b.index.entries()[0]


def test_records_written_after_the_save_are_read_from_the_ledger_tail(ledger: Path):
    b, _ = book(ledger)
    b.close()
    more = ledger_of(random.Random(2), 20, start=1000)
    write_ledger(ledger, more)  # a run killed before it saved its index again
    want = oracle(ledger, PROBES)
    again, loaded = book(ledger)
    assert loaded.rebuilt == 0 and loaded.saved == len(b.index)
    assert loaded.tail == sum(len(r["outputs"]) for r in more)
    assert [again.index.check(p, add=False) for p in PROBES] == want
    again.close()
    third, loaded = book(ledger)  # what the tail added was saved
    assert loaded.tail == 0 and loaded.saved == len(again.index)


def test_records_written_during_a_run_are_saved_as_they_come(ledger: Path, monkeypatch):
    monkeypatch.setattr(S, "SAVE_EVERY_S", 0.0)  # a save after every record
    b, _ = book(ledger)
    app = Appender(ledger)
    fresh = some_texts(random.Random(3), 12)
    for i in range(0, 12, 3):
        accepted = [t for t in fresh[i:i + 3] if b.index.check(t) is None]
        r = rec(f"new{i}", accepted)
        app.write(r)
        b.written(r)
    app.close()
    held = len(b.index)
    # killed here, without close(): the header saved after the last record covers everything
    again, loaded = book(ledger)
    assert (loaded.saved, loaded.tail, loaded.rebuilt) == (held, 0, 0)
    assert [again.index.check(p, add=False) for p in PROBES + fresh] == oracle(ledger, PROBES + fresh)


def test_a_record_appended_but_not_saved_before_a_kill_is_read_again(ledger: Path):
    b, _ = book(ledger)
    app = Appender(ledger)
    accepted = [t for t in ["alpha beta gamma delta", "one two three four five"] if b.index.check(t) is None]
    app.write(rec("late", accepted))
    app.close()
    b.written(rec("late", accepted))  # its entries are appended to the file, the header not replaced
    # a kill: no save, no close
    again, loaded = book(ledger)
    assert loaded.rebuilt == 0 and loaded.tail == 2
    assert again.index.check("alpha beta gamma delta", add=False) == "duplicate"


@pytest.mark.parametrize("damage", ["entries", "header", "ledger", "settings", "run", "short-entries", "cut-ledger"])
def test_a_stale_or_damaged_index_is_rebuilt(ledger: Path, damage: str):
    b, _ = book(ledger)
    b.close()
    entries, header_path = S.index_paths(ledger)
    header = json.loads(header_path.read_text())
    if damage == "entries":
        data = bytearray(entries.read_bytes())
        data[100] ^= 1
        entries.write_bytes(bytes(data))
    elif damage == "header":
        header_path.write_text("{not json")
    elif damage == "ledger":  # edited in place, same length
        data = ledger.read_bytes().replace(b'"k3"', b'"k9"', 1)
        ledger.write_bytes(data)
    elif damage == "settings":
        header_path.write_text(json.dumps({**header, "index": {**header["index"], "threshold": 0.5}}))
    elif damage == "run":
        header_path.write_text(json.dumps({**header, "run_id": "x" * 64}))
    elif damage == "short-entries":
        entries.write_bytes(entries.read_bytes()[:-1])
    else:
        data = ledger.read_bytes()
        ledger.write_bytes(data[:data.rindex(b"\n", 0, len(data) - 1) + 1])  # the last record gone
    want = oracle(ledger, PROBES)
    again, loaded = book(ledger)
    assert loaded.saved == 0 and loaded.reason and loaded.rebuilt > 0
    assert [again.index.check(p, add=False) for p in PROBES] == want
    again.close()
    assert book(ledger)[1].saved == len(again.index)  # and saved anew


def test_a_later_record_that_replaces_one_whose_texts_are_held_rebuilds(ledger: Path):
    b, _ = book(ledger)
    b.close()
    ok = next(r for r in iter_ledger(ledger) if r["status"] == "ok" and r["outputs"])
    write_ledger(ledger, [rec(ok["source_id"], [], "failed")])  # its texts no longer count
    want = oracle(ledger, [*ok["outputs"], *PROBES])
    assert want[0] is None
    again, loaded = book(ledger)
    assert loaded.reason == "a later record replaces one whose texts the index holds"
    assert [again.index.check(p, add=False) for p in [*ok["outputs"], *PROBES]] == want


def test_compaction_keeps_a_saved_index_that_covered_the_whole_ledger(ledger: Path):
    failed = next(r for r in iter_ledger(ledger) if r["status"] == "failed")
    b, _ = book(ledger)
    accepted = [t for t in ["retried row gives this"] if b.index.check(t) is None]
    app = Appender(ledger)
    retried = rec(failed["source_id"], accepted)
    app.write(retried)
    app.close()
    b.written(retried)
    b.close()
    S.compact_keeping_index(ledger, lambda: compact_ledger(ledger))
    assert sum(1 for r in iter_ledger(ledger, latest_only=False) if r["source_id"] == failed["source_id"]) == 1
    again, loaded = book(ledger)
    assert (loaded.saved, loaded.tail, loaded.rebuilt) == (len(b.index), 0, 0)
    assert [again.index.check(p, add=False) for p in PROBES] == oracle(ledger, PROBES)


def test_an_exact_index_is_kept_the_same_way(ledger: Path):
    b = S.SeenBook(ledger, RUN, ExactIndex())
    assert b.load().rebuilt > 0
    b.close()
    entries, _ = S.index_paths(ledger)
    assert entries.stat().st_size == len(b.index) * 24
    again = S.SeenBook(ledger, RUN, ExactIndex())
    loaded = again.load()
    assert loaded.saved == len(b.index) and loaded.rebuilt == 0
    exact = ExactIndex()
    remember(exact, iter_ledger(ledger))
    assert [again.index.check(p, add=False) for p in PROBES] == [exact.check(p, add=False) for p in PROBES]
    # an index of the other kind beside the same ledger is not taken for this one
    assert book(ledger)[1].reason == "the saved index is of other settings"
