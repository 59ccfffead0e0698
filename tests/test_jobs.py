"""Batch jobs (`localaug run`): readers, records, resume after kill -9, retries, lock, Ctrl-C."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localaug import dataio
from localaug.errors import JobError, JobLockedError
from localaug.jobs import run_job

pa = pytest.importorskip("pyarrow")
import pyarrow.json  # noqa: E402,F401  (pa.json)

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
TINY = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=3, threads=1)
ROWS = [{"id": i, "instruction": f"Write a short note about topic number {i}.", "meta": {"lang": "en"}} for i in range(6)]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


@pytest.fixture(scope="module")
def tiny(converted) -> Path:
    return converted("tied", "Q8_0")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def one_per_row(path: Path, n_rows: int) -> list[dict]:
    recs = records(path)
    assert sorted(r["row"] for r in recs) == list(range(n_rows))
    assert len({r["source_id"] for r in recs}) == n_rows
    return recs


# --- inputs -----------------------------------------------------------------------------------


def _write_input(kind: str, tmp_path: Path) -> Path:
    rows = [{"instruction": r["instruction"], "id": r["id"]} for r in ROWS]
    if kind == "jsonl":
        return write_jsonl(tmp_path / "in.jsonl", rows)
    if kind == "json":
        (tmp_path / "in.json").write_text(json.dumps(rows), encoding="utf-8")
        return tmp_path / "in.json"
    if kind == "csv":
        with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["instruction", "id"])
            w.writeheader()
            w.writerows(rows)
        return tmp_path / "in.csv"
    table = pa.Table.from_pylist(rows)
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, tmp_path / "in.parquet")
        return tmp_path / "in.parquet"
    folder = tmp_path / "hf"  # what datasets' save_to_disk writes: Arrow IPC stream + state.json
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "hf-disk"])
def test_input_formats(kind, tmp_path, tiny):
    src = _write_input(kind, tmp_path)
    rows = list(dataio.read_rows(src))
    assert [r.record["instruction"] for r in rows] == [r["instruction"] for r in ROWS]
    out = tmp_path / "out.jsonl"
    summary = run_job("refine", src, out, model=tiny, limit=2, **TINY)
    recs = one_per_row(out, 2)
    assert summary.stats.done == 2
    assert all(str(r["id"]) in ("0", "1") and r["task"] == "refine" and r["status"] == "failed" for r in recs)
    assert all(r["error"].startswith("max_tokens hit") and isinstance(r["output"], str) for r in recs)


def test_dotted_field_carries_columns_and_shards(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", [{"q": {"text": r["instruction"]}, "output": "old", "id": r["id"]} for r in ROWS])
    out = tmp_path / "out.jsonl"
    run_job("refine", src, out, model=tiny, field="q.text", shard="1/3", **TINY)
    recs = records(out)
    assert sorted(r["row"] for r in recs) == [1, 4]
    assert all(r["source_output"] == "old" and "q" in r and r["id"] == r["row"] for r in recs)
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["complete"] and manifest["model"]["sha256"] and manifest["model"]["quant"] == "Q8_0"
    assert manifest["counts"]["done"] == 2 and manifest["llama_cpp_python"] and manifest["config"]["sampling"]["max_tokens"] == 3


# --- outputs (a real model: replies that end) -------------------------------------------------


def test_expand_records_and_training_formats(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Say hi."}, {"instruction": "Name a color."}])
    args = dict(model=smollm2, prompt_format="qwen2-chatml", temperature=0.8, max_tokens=24, threads=1, n=2)
    for fmt, name in (("alpaca", "a.json"), ("sharegpt", "s.jsonl"), ("messages", "m.jsonl")):
        out = tmp_path / name
        summary = run_job("expand", src, out, fmt=fmt, **args)
        recs = one_per_row(summary.ledger, 2)
        assert any(r["status"] == "ok" and r["outputs"] for r in recs)
        assert summary.exported == sum(len(r["outputs"]) for r in recs if r["status"] == "ok") > 0
        if fmt == "alpaca":
            data = json.loads(out.read_text())
            assert set(data[0]) == {"instruction", "input", "output"}
        else:
            data = pa.json.read_json(out).to_pylist()  # JSON Lines as pyarrow (and datasets) read it
            key = "conversations" if fmt == "sharegpt" else "messages"
            assert data[0][key][0]["from" if fmt == "sharegpt" else "role"] in ("human", "user")
        assert len(data) == summary.exported
    ledger = pa.json.read_json(tmp_path / "a.json.ledger.jsonl")
    assert ledger.num_rows == 2 and "source_id" in ledger.column_names


# --- never lose work ----------------------------------------------------------------------------


def test_bad_rows_recorded_and_retry_failed_reruns_only_them(tmp_path, smollm2):
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Say hi."}\nnot json\n{"instruction": ""}\n{"other": 1}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = dict(model=smollm2, prompt_format="qwen2-chatml", temperature=0.8, max_tokens=24, threads=1, n=1)
    first = run_job("expand", src, out, **args)
    recs = {r["row"]: r for r in one_per_row(out, 4)}
    assert recs[0]["status"] == "ok"
    assert recs[1]["status"] == "failed" and "invalid JSON" in recs[1]["error"] and recs[1]["raw"] == "not json"
    assert recs[2]["error"] == "empty text" and "no field 'instruction'" in recs[3]["error"]
    assert first.stats.failed == 3 and first.stats.ok == 1
    again = run_job("expand", src, out, **args)
    assert again.stats.skipped == 4 and again.stats.done == 0
    retry = run_job("expand", src, out, retry_failed=True, **args)
    assert retry.stats.done == 3 and retry.stats.skipped == 1
    assert {r["row"]: r["status"] for r in one_per_row(out, 4)} == {0: "ok", 1: "failed", 2: "failed", 3: "failed"}


def test_changed_arguments_are_a_different_run(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    out = tmp_path / "out.jsonl"
    run_job("refine", src, out, model=tiny, **TINY)
    with pytest.raises(JobError, match="max_tokens changed"):
        run_job("refine", src, out, model=tiny, **{**TINY, "max_tokens": 4})
    with pytest.raises(JobError, match="seed"):
        run_job("refine", src, out, model=tiny, seed=5, **TINY)


def test_torn_last_line_is_repaired(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    run_job("refine", src, out, model=tiny, limit=3, **TINY)
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a write cut short by kill -9
    summary = run_job("refine", src, out, model=tiny, **TINY)
    assert summary.stats.skipped == 2 and summary.stats.done == 4
    one_per_row(out, 6)


def test_duplicate_texts_are_distinct_rows(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], ROWS[0], ROWS[1]])
    out = tmp_path / "out.jsonl"
    run_job("refine", src, out, model=tiny, **TINY)
    one_per_row(out, 3)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "localaug.cli", "run", *args]


def test_lock_refuses_a_second_writer(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    out = tmp_path / "out.jsonl"
    with open(tmp_path / "out.jsonl.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(JobLockedError):
            run_job("refine", src, out, model=tiny, **TINY)
        r = subprocess.run(cli("refine", "-i", str(src), "-o", str(out), "-m", str(tiny)), env=ENV, capture_output=True, text=True)
        assert r.returncode == 1 and "another localaug run" in r.stderr
    assert not out.exists()


def _cmd(src: Path, out: Path, tiny: Path) -> list[str]:
    return cli("refine", "-i", str(src), "-o", str(out), "-m", str(tiny), "--prompt-format", "qwen2-chatml",
               "--temperature", "0", "--max-tokens", "12", "--threads", "1")


def test_ctrl_c_exits_130_and_resumes(tmp_path, tiny):
    rows = [{"instruction": f"Describe item {i} in detail."} for i in range(40)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = subprocess.Popen(_cmd(src, out, tiny), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    done = len(records(out))
    assert 0 < done < 40
    r = subprocess.run(_cmd(src, out, tiny), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    one_per_row(out, 40)


def test_resume_after_kill_9_at_random_moments(tmp_path, tiny):
    rows = [{"instruction": f"Explain idea {i} with an example."} for i in range(40)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    rng = random.Random(1234)
    kills, progress = 0, []
    started = time.monotonic()
    while kills < 20 and time.monotonic() - started < 90:
        proc = subprocess.Popen(_cmd(src, out, tiny), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.0))
        if proc.poll() is not None:  # finished before the kill: start over to keep killing mid-run
            out.unlink()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress.append(len(out.read_bytes().split(b"\n")) - 1 if out.exists() else 0)
    assert kills >= 20, f"only {kills} kills"
    r = subprocess.run(_cmd(src, out, tiny), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    one_per_row(out, 40)
    assert any(0 < p < 40 for p in progress), progress  # some kills landed mid-run
