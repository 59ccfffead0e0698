"""Jobs at scale (localaug/jobs/run.py, pending.py, seen.py): the input is read and keyed once, a
row still to do is read again from its place; row keys are those of before (they are hashed into
ledgers users have); a JSON array is read no further than a limit needs; a resumed job takes its
saved duplicate index, and kill -9 at any moment never leaves a wrong one."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_fixture import SCRIPTS
from test_minhash_index import OldMinHashIndex
from test_readers_places import OLD_KINDS, old_csv, old_json, old_jsonl

from localaug.augment.resolve import default_sampling
from localaug.core.errors import JobError
from localaug.jobs import dataio, keys, pending, seen
from localaug.jobs.config import JobConfig
from localaug.jobs.dataio import InputRow
from localaug.jobs.ledger import iter_ledger, remember
from localaug.jobs.pending import PendingRows
from localaug.jobs.run import run_job

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
SCRIPTED = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=64, threads=1)
REFINED = SCRIPTS["refine"][0]
NEW = SCRIPTS["expand"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- row keys -----------------------------------------------------------------------------------------

RUN = "9" * 64
CFG = JobConfig("refine", default_sampling(None), "instruction", None, 1, "m")
TRICKY = {
    "jsonl": b'{"instruction": "Name three rivers."}\r\n{"instruction": "Name three rivers."}\n\n'
             b'{"instruction": "caf\xe9"}\r{broken\n{"instruction": "\\ud800"}\n{"a": 1, "a": 2}\n'
             b'{"instruction": "  "}\n[1]\n{"instruction": "last", "n": 1e400}',
    "csv": b'\xef\xbb\xbfinstruction,lang\r\n"two\r\nlines",en\r\nName three rivers.,en\r\nName three rivers.,en\r\n'
           b"caf\xe9,fr\r\n,x\r\n",
    "json": '[{"instruction": "一"}, {"instruction": "一"}, 3, {"instruction": "\\udc80"}, {"other": 1}]'.encode(),
}


def documented_key(identity: str, occurrence: int) -> str:
    """The row key as documented: sha256 of the run id, the row's text (or "bad:" and its raw line)
    and the text's occurrence number, joined by NULs."""
    return hashlib.sha256(f"{RUN}\0{identity}\0{occurrence}".encode("utf-8", "surrogatepass")).hexdigest()


def oracle_keys(kind: str, data: bytes) -> list[str]:
    """Keys from the rows the text-mode readers gave, with the documented formula."""
    f = io.TextIOWrapper(io.BytesIO(data), **OLD_KINDS[kind])
    rows = list(old_jsonl(f, 64 << 20) if kind == "jsonl" else old_json(f, "input") if kind == "json" else old_csv(f, 64 << 20, "input"))
    seen_count: dict[str, int] = {}
    out = []
    for row in rows:
        text = row.record.get("instruction") if row.error is None else None
        if isinstance(text, str) and text.strip():
            ident = text
        else:
            ident = "bad:" + (row.raw if row.raw is not None else json.dumps(row.record, sort_keys=True, ensure_ascii=False))
        seen_count[ident] = seen_count.get(ident, 0) + 1
        out.append(documented_key(ident, seen_count[ident]))
    return out


@pytest.mark.parametrize("kind", ["jsonl", "csv", "json"])
def test_row_keys_are_those_of_before(kind, tmp_path):
    path = tmp_path / f"in.{kind}"
    path.write_bytes(TRICKY[kind])
    got = [r.key for r in keys.select_rows(dataio.read_rows(path), CFG, RUN)]
    assert got == oracle_keys(kind, TRICKY[kind])
    assert len(set(got)) == len(got) >= 5
    if kind == "jsonl":  # one written out by hand, for the record
        assert got[0] == hashlib.sha256(("9" * 64 + "\0Name three rivers.\0" + "1").encode()).hexdigest()
        assert got[1] == hashlib.sha256(("9" * 64 + "\0Name three rivers.\0" + "2").encode()).hexdigest()


# --- read once ------------------------------------------------------------------------------------------


class Counts:
    def __init__(self, monkeypatch) -> None:
        self.reset()
        real_read, real_again, real_key = dataio.read_rows, dataio.read_again, keys.RowKeys.key

        def read_rows(path):
            self.read_rows_calls += 1
            for row in real_read(path):
                self.rows_read += 1
                yield row

        def read_again(path, places):
            for row in real_again(path, places):
                self.read_again += 1
                yield row

        def key(self_, row):
            self.keys += 1
            return real_key(self_, row)

        monkeypatch.setattr(dataio, "read_rows", read_rows)
        monkeypatch.setattr(dataio, "read_again", read_again)
        monkeypatch.setattr(keys.RowKeys, "key", key)

    def reset(self) -> None:
        self.read_rows_calls = self.rows_read = self.keys = self.read_again = 0


def test_a_run_reads_its_input_once_and_keys_each_row_once(tmp_path, scripted, monkeypatch):
    refiner = scripted("refine")
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"Explain idea {i} with an example."} for i in range(12)])
    out = tmp_path / "out.jsonl"
    counts = Counts(monkeypatch)
    run_job("refine", src, out, model=refiner, limit=5, **SCRIPTED)
    # the columns check reads one row; counting reads to the limit (and the row after it); each row
    # to do is read again from its place, once
    assert (counts.read_rows_calls, counts.rows_read, counts.keys, counts.read_again) == (2, 1 + 6, 6, 5)
    counts.reset()
    summary = run_job("refine", src, out, model=refiner, **SCRIPTED)
    assert (counts.read_rows_calls, counts.rows_read, counts.keys, counts.read_again) == (2, 1 + 12, 12, 7)
    assert summary.stats.skipped == 5 and summary.stats.done == 7
    recs = records(out)
    assert sorted(r["row"] for r in recs) == list(range(12)) and all(r["output"] == REFINED for r in recs)
    assert not any(p.exists() for p in seen.index_paths(out))  # refine holds no new instructions to index


def test_a_json_array_with_a_broken_tail_runs_with_a_limit(tmp_path, scripted):
    refiner = scripted("refine")
    src = tmp_path / "in.json"
    src.write_text('[{"instruction": "Plan a trip."}, {"instruction": "Name a river."}, {"instruction": "x"}, {oops',
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = run_job("refine", src, out, model=refiner, limit=2, **SCRIPTED)
    assert summary.stats.done == 2
    assert sorted((r["row"], r["instruction"], r["status"]) for r in records(out)) == [
        (0, "Plan a trip.", "ok"), (1, "Name a river.", "ok")]
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "run", "refine", "-i", str(src), "-o", str(out), "-m",
                        str(refiner), "--prompt-format", "qwen2-chatml", "--temperature", "0", "--max-tokens", "64", "--threads", "1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: {src} is not valid JSON (Expecting property name enclosed in double quotes, line 1); for one object "
        "a line, name it .jsonl")
    assert len(records(out)) == 2  # nothing lost


def test_rows_read_again_from_an_edited_input_stop_the_job(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"row {i}"} for i in range(4)])
    store = PendingRows(src)
    for row in keys.select_rows(dataio.read_rows(src), CFG, RUN):
        store.add(row)
    src.write_text(src.read_text().replace("row 3", "row X"))  # edited after counting
    got = store.rows(lambda: iter(()))
    assert [(r.index, r.record) for r in (next(got), next(got), next(got))] == [
        (0, {"instruction": "row 0"}), (1, {"instruction": "row 1"}), (2, {"instruction": "row 2"})]
    with pytest.raises(JobError) as e:
        next(got)
    assert str(e.value) == (f"{src} changed while this job ran (row 3 is no longer what was counted): run the same "
                            "command again; the rows done so far are kept")


def test_rows_without_places_are_kept_up_to_a_budget_then_read_again(monkeypatch):
    monkeypatch.setattr(pending, "MEMORY_BUDGET", 3 * (pending._size({"instruction": "row 0"}) + 200) + 10)
    rows = [InputRow(i, {"instruction": f"row {i}"}, key=f"{i:064x}") for i in range(8)]
    store = PendingRows(None)
    for row in rows:
        store.add(row)
    assert len(store) == 3 and store.overflow
    again_calls = []

    def again():
        again_calls.append(1)
        return iter(InputRow(r.index, dict(r.record), key=r.key) for r in rows)

    assert [(r.index, r.key) for r in store.rows(again)] == [(r.index, r.key) for r in rows]
    assert again_calls == [1]


# --- the duplicate index of a resumed job --------------------------------------------------------------


def test_a_resumed_minhash_job_takes_its_saved_index(tmp_path, scripted, monkeypatch):
    model = scripted("expand")
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"Seed instruction number {i}."} for i in range(6)])
    out = tmp_path / "out.jsonl"
    args = dict(model=model, prompt_format="qwen2-chatml", temperature=0.8, max_tokens=32, threads=1, n=2, dedup="minhash")
    loads: list[seen.Loaded] = []
    real_load = seen.SeenBook.load

    def load(self):
        loads.append(real_load(self))
        return loads[-1]

    monkeypatch.setattr(seen.SeenBook, "load", load)
    run_job("expand", src, out, limit=3, **args)
    first = {r["source_id"] for r in records(out)}
    held = sum(len(r["outputs"]) for r in records(out))
    run_job("expand", src, out, **args)
    assert [(x.saved, x.tail, x.rebuilt) for x in loads] == [(0, 0, 0), (held, 0, 0)]
    recs = records(out)
    texts = [t for r in recs for t in r["outputs"]]
    assert set(texts) <= set(NEW) and len(texts) == len(set(texts))
    # every row samples the same texts (same seeds): the resumed rows met the first run's texts,
    # which only the saved index told them about
    later = [r for r in recs if r["source_id"] not in first]
    assert len(later) == 3 and sum(r["rejected"].get("duplicate", 0) for r in later) > 0
    old = OldMinHashIndex()
    assert all(old.check(t) is None for t in texts)  # no text a near duplicate of another: what the oracle keeps


def test_kill_9_at_random_moments_never_leaves_a_wrong_index(tmp_path, scripted):
    model = scripted("expand")
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"Seed instruction number {i}."} for i in range(30)])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "localaug.cli", "run", "expand", "-i", str(src), "-o", str(out), "-m", str(model),
           "--prompt-format", "qwen2-chatml", "--temperature", "0.8", "--max-tokens", "32", "--threads", "1", "-n", "3",
           "--dedup", "minhash", "--minhash-threshold", "0.5", "--parallel", "2"]
    rng = random.Random(7)
    kills = 0
    for _ in range(20):
        if kills == 5:
            break
        before = out.read_bytes().count(b"\n") if out.exists() else 0
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = min(before + rng.randint(1, 5), 29)
        deadline = time.monotonic() + 120
        while proc.poll() is None and (out.read_bytes().count(b"\n") if out.exists() else 0) < target \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        time.sleep(rng.random() * 0.05)  # anywhere: while a record or the index is being written
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 3
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert sorted(x["row"] for x in recs) == list(range(30)) and len({x["source_id"] for x in recs}) == 30
    texts = [t for x in recs for t in x.get("outputs", [])]
    old = OldMinHashIndex(0.5)
    assert all(old.check(t) is None for t in texts), texts  # a wrong index would have let a duplicate in
    remembered = OldMinHashIndex(0.5)
    remember(remembered, iter_ledger(out))
    book = seen.SeenBook(out, json.loads(out.with_name("out.jsonl.manifest.json").read_text())["run_id"],
                         __import__("localaug.augment.filters", fromlist=["MinHashIndex"]).MinHashIndex(0.5))
    loaded = book.load()
    assert loaded.rebuilt == 0 and loaded.saved == len(remembered)
    probes = [*NEW, *(t.upper() for t in NEW), "Describe California coastal road trips in winter."]
    assert [book.index.check(p, add=False) for p in probes] == [remembered.check(p, add=False) for p in probes]
