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

import pyarrow as pa
import pyarrow.json  # noqa: F401  (pa.json)
import pytest
from scripted_fixture import SCRIPTS

from localaug.core.errors import JobError, JobLockedError
from localaug.family.prompts import parse_pairs
from localaug.jobs import dataio
from localaug.jobs.run import run_job

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
TINY = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=3, threads=1)  # every reply hits max_tokens
# the scripted models (tests/scripted_fixture.py) write known replies that end
SCRIPTED = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=64, threads=1)
REFINED = SCRIPTS["refine"][0]
NEW = SCRIPTS["expand"]
PAIRS = [{"instruction": p.instruction, "response": p.response} for t in SCRIPTS["pairs"] for p in parse_pairs(t)]
ROWS = [{"id": i, "instruction": f"Write a short note about topic number {i}.", "meta": {"lang": "en"}} for i in range(6)]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


@pytest.fixture(scope="module")
def tiny(converted) -> Path:
    return converted("tied", "Q8_0")


@pytest.fixture(scope="module")
def refiner(scripted) -> Path:
    return scripted("refine")


def load_with_datasets(builder: str, path: Path, tmp_path: Path):
    """The file as Hugging Face datasets loads it (its packaged json/parquet builder, offline);
    None when datasets is not installed."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))


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
    folder = tmp_path / "hf"
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:  # the real writer
        datasets.Dataset.from_list(rows).save_to_disk(str(folder))
        return folder
    folder.mkdir()  # what save_to_disk writes: Arrow IPC stream + state.json
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "hf-disk"])
def test_input_formats(kind, tmp_path, refiner):
    src = _write_input(kind, tmp_path)
    rows = list(dataio.read_rows(src))
    assert [r.record["instruction"] for r in rows] == [r["instruction"] for r in ROWS]
    out = tmp_path / "out.jsonl"
    summary = run_job("refine", src, out, model=refiner, limit=2, **SCRIPTED)
    recs = one_per_row(out, 2)
    assert summary.stats.done == summary.stats.ok == 2
    for r in recs:
        assert str(r["id"]) in ("0", "1") and r["task"] == "refine"
        assert (r["status"], r["error"], r["output"], r["finish_reason"]) == ("ok", None, REFINED, "stop")


def test_max_tokens_hit_is_a_failed_row(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    recs = records(run_job("refine", src, tmp_path / "out.jsonl", model=tiny, **TINY).ledger)
    assert all(r["status"] == "failed" and r["error"].startswith("max_tokens hit") for r in recs)
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 3 for r in recs)


# --- successful records, every task -------------------------------------------------------------


@pytest.mark.parametrize("parallel", [1, 4])
def test_refine_records_are_ok_with_the_reply(tmp_path, refiner, parallel):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:5])
    summary = run_job("refine", src, tmp_path / "out.jsonl", model=refiner, parallel=parallel, **SCRIPTED)
    recs = one_per_row(summary.ledger, 5)
    assert [r["status"] for r in recs] == ["ok"] * 5
    assert {r["output"] for r in recs} == {REFINED}
    assert all(r["error"] is None and r["finish_reason"] == "stop" and r["prompt_tokens"] > 0 for r in recs)
    tokens = {r["completion_tokens"] for r in recs}
    assert len(tokens) == 1 and 0 < tokens.pop() < 64
    manifest = json.loads(summary.manifest.read_text())
    assert manifest["counts"]["ok"] == manifest["counts"]["items"] == manifest["counts"]["rows"] == 5
    assert manifest["tokens"] == sum(r["completion_tokens"] for r in recs) and manifest["tokens_per_s"] > 0
    assert manifest["parallel"] == parallel


def test_expand_records_are_ok_and_dedup_modes_work_across_the_job(tmp_path, scripted):
    model = scripted("expand")
    rows = [{"instruction": f"Seed instruction number {i}."} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = dict(model=model, prompt_format="qwen2-chatml", temperature=0.8, max_tokens=32, threads=1, n=3)
    # every row samples with the same seeds, and the model ignores its input: the rows draw the same texts
    row_only = one_per_row(run_job("expand", src, tmp_path / "row.jsonl", dedup="row", **args).ledger, 4)
    for r in row_only:
        assert r["status"] == "ok" and len(r["outputs"]) == 3 and len(set(r["outputs"])) == 3
        assert set(r["outputs"]) <= set(NEW) and r["shortfall"] == 0
        assert r["samples"] == 3 + sum(r["rejected"].values()) and set(r["rejected"]) <= {"duplicate"}
    assert len({tuple(r["outputs"]) for r in row_only}) == 1  # --dedup row keeps repeats across rows
    for mode in ("exact", "minhash"):
        recs = one_per_row(run_job("expand", src, tmp_path / f"{mode}.jsonl", dedup=mode, **args).ledger, 4)
        everything = [t for r in recs for t in r["outputs"]]
        assert len(everything) == len(set(everything)) >= 3 and set(everything) <= set(NEW), mode
        for r in recs:
            assert r["samples"] == len(r["outputs"]) + sum(r["rejected"].values()), mode
            assert set(r["rejected"]) <= {"duplicate", "near-duplicate"} and r["shortfall"] == 3 - len(r["outputs"])
            assert r["status"] == ("ok" if r["outputs"] else "filtered")
        assert sum(sum(r["rejected"].values()) for r in recs) > 0, mode  # later rows met earlier rows' texts


def test_pairs_records_and_training_files_have_content(tmp_path, scripted):
    model = scripted("pairs")
    rows = [{"instruction": f"Seed question {i}?", "output": f"Seed answer {i}."} for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "localaug.cli", "run", "pairs", "-i", str(src), "-o", str(out), "-m", str(model),
           "--prompt-format", "qwen2-response-pairs", "--temperature", "0.8", "--max-tokens", "48", "--threads", "1",
           "-n", "2", "--dedup", "row", "--format", "alpaca", "--parallel", "2"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = one_per_row(tmp_path / "train.json.ledger.jsonl", 3)
    for rec in recs:
        assert rec["status"] == "ok" and len(rec["pairs"]) == 2 and all(p in PAIRS for p in rec["pairs"])
        assert rec["pairs"][0] != rec["pairs"][1] and rec["samples"] == 2 + sum(rec["rejected"].values())
        assert rec["source_output"] == rows[rec["row"]]["output"]  # the input column named like a result is kept
    alpaca = json.loads(out.read_text())
    assert alpaca == [{"instruction": p["instruction"], "input": "", "output": p["response"]} for rec in recs for p in rec["pairs"]]
    for fmt, name in (("sharegpt", "s.jsonl"), ("messages", "m.jsonl")):
        summary = run_job("pairs", src, tmp_path / name, model=model, prompt_format="qwen2-response-pairs", temperature=0.8,
                          max_tokens=48, threads=1, n=2, dedup="row", fmt=fmt)
        data = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert len(data) == summary.exported == 6
        for ex in data:
            turns = ex["conversations"] if fmt == "sharegpt" else ex["messages"]
            pair = {"instruction": turns[0]["value" if fmt == "sharegpt" else "content"],
                    "response": turns[1]["value" if fmt == "sharegpt" else "content"]}
            assert [t["from" if fmt == "sharegpt" else "role"] for t in turns] == (
                ["human", "gpt"] if fmt == "sharegpt" else ["user", "assistant"])
            assert pair in PAIRS


def test_refusals_echoes_long_prompts_and_unparseable_replies(tmp_path, scripted, refiner):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Tell me about volcanoes."}])
    refusal = scripted("refusal")
    rec = records(run_job("refine", src, tmp_path / "a.jsonl", model=refusal, **SCRIPTED).ledger)[0]
    assert (rec["status"], rec["rejected"]) == ("filtered", {"refusal": 1}) and rec["error"].startswith("refusal")
    rec = records(run_job("refine", src, tmp_path / "b.jsonl", model=refusal, refusals=False, **SCRIPTED).ledger)[0]
    assert (rec["status"], rec["output"]) == ("ok", SCRIPTS["refusal"][0])  # --keep-refusals
    # echo: an output (nearly) equal to its input is filtered; --echo sets how near
    near = write_jsonl(tmp_path / "near.jsonl", [{"instruction": REFINED}, {"instruction": REFINED.rsplit(" ", 2)[0]}])
    recs = records(run_job("refine", near, tmp_path / "c.jsonl", model=refiner, **SCRIPTED).ledger)
    assert [r["status"] for r in sorted(recs, key=lambda r: r["row"])] == ["filtered", "filtered"]
    assert all(r["rejected"] == {"echo": 1} for r in recs)
    recs = records(run_job("refine", near, tmp_path / "d.jsonl", model=refiner, echo=0.99, **SCRIPTED).ledger)
    assert {r["row"]: r["status"] for r in recs} == {0: "filtered", 1: "ok"}
    # a prompt longer than the context fails its row only
    long = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "word " * 300}, {"instruction": "Short one."}])
    recs = {r["row"]: r for r in records(run_job("refine", long, tmp_path / "e.jsonl", model=refiner, n_ctx=128,
                                                 parallel=2, **SCRIPTED).ledger)}
    assert recs[0]["status"] == "failed" and "exceeds the per-sequence context of 128" in recs[0]["error"]
    assert recs[1]["status"] == "ok"
    # a reply that is not in the task's format: pairs from a model that writes plain text
    pairs_src = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Q?", "response": "A."}])
    rec = records(run_job("pairs", pairs_src, tmp_path / "f.jsonl", model=refiner, n=1, max_samples=2,
                          **{**SCRIPTED, "prompt_format": "qwen2-response-pairs"}).ledger)[0]
    assert (rec["status"], rec["error"], rec["rejected"]) == ("failed", "unparseable reply", {"unparseable": 2})


def test_dotted_field_carries_columns_and_shards(tmp_path, tiny):
    src = write_jsonl(tmp_path / "in.jsonl", [{"q": {"text": r["instruction"]}, "output": "old", "id": r["id"]} for r in ROWS])
    shards = []
    for i in range(3):  # shards partition the rows (by row key): together each row exactly once
        out = tmp_path / f"out{i}.jsonl"
        run_job("refine", src, out, model=tiny, field="q.text", shard=f"{i}/3", **TINY)
        recs = records(out)
        assert all(r["source_output"] == "old" and "q" in r and r["id"] == r["row"] for r in recs)
        manifest = json.loads((tmp_path / f"out{i}.jsonl.manifest.json").read_text())
        assert manifest["complete"] and manifest["model"]["sha256"] and manifest["model"]["quant"] == "Q8_0"
        assert manifest["counts"]["rows"] == len(recs) == manifest["this_run"]["done"]
        assert manifest["llama_cpp_python"] and manifest["config"]["sampling"]["max_tokens"] == 3
        shards.append(sorted(r["row"] for r in recs))
    assert sorted(sum(shards, [])) == list(range(len(ROWS))) and sum(1 for s in shards if s) >= 2, shards


# --- outputs (a real model: replies that end) -------------------------------------------------


def test_expand_records_and_the_prompt_only_training_format(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Say hi."}, {"instruction": "Name a color."}])
    args = dict(model=smollm2, prompt_format="qwen2-chatml", temperature=0.8, max_tokens=24, threads=1, n=2)
    out = tmp_path / "p.jsonl"
    summary = run_job("expand", src, out, fmt="prompts", **args)
    recs = one_per_row(summary.ledger, 2)
    assert any(r["status"] == "ok" and r["outputs"] for r in recs)
    assert summary.exported == sum(len(r["outputs"]) for r in recs if r["status"] == "ok") > 0
    data = pa.json.read_json(out).to_pylist()  # JSON Lines as pyarrow (and datasets) read it
    assert [ex["prompt"] for ex in data] == [[{"role": "user", "content": t}] for r in recs if r["status"] == "ok"
                                             for t in r["outputs"]]
    loaded = load_with_datasets("json", out, tmp_path)
    assert loaded is None or loaded.num_rows == summary.exported
    ledger = pa.json.read_json(tmp_path / "p.jsonl.ledger.jsonl")
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


def test_changed_arguments_are_a_different_run(tmp_path, tiny, refiner):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    out = tmp_path / "out.jsonl"
    args = dict(model=tiny, n=2, **TINY)
    run_job("expand", src, out, **args)
    changes = [  # what the README says a row key hashes: each one changed alone is refused, by name
        ({"max_tokens": 4}, "sampling.max_tokens"), ({"temperature": 0.5}, "sampling.temperature"),
        ({"seed": 5}, "seed"), ({"model": refiner}, "model_sha256"), ({"prompt_format": "teacher"}, "prompt_format"),
        ({"n": 3}, "n"), ({"min_chars": 9}, "min_chars"), ({"max_chars": 500}, "max_chars"),
        ({"refusals": False}, "refusals"), ({"echo": 0.8}, "echo"), ({"threshold": 0.5}, "threshold"),
        ({"dedup": "minhash"}, "dedup"), ({"max_samples": 9}, "max_samples"), ({"field": "meta.lang"}, "field"),  # a text column
    ]
    for change, key in changes:
        with pytest.raises(JobError, match=rf"\({key} changed\)|[(, ]{key} changed"):
            run_job("expand", src, out, **{**args, **change})
    with pytest.raises(JobError, match="task changed"):
        run_job("refine", src, out, model=tiny, **TINY)
    again = run_job("expand", src, out, **args)  # the same arguments resume (nothing left to do)
    assert again.stats.skipped == 2 and again.stats.done == 0


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


def test_a_second_name_for_the_output_takes_the_same_lock(tmp_path, refiner):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    real = tmp_path / "data" / "out.jsonl"
    real.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    from localaug.jobs.ledger import lock_path, output_lock

    with output_lock(lock_path(real)):  # a run writing out.jsonl under its own name
        with pytest.raises(JobLockedError):
            run_job("refine", src, link, model=refiner, **SCRIPTED)
    run_job("refine", src, link, model=refiner, **SCRIPTED)  # free again: runs, through the link
    assert [r["status"] for r in records(real)] == ["ok", "ok"]


def _cmd(src: Path, out: Path, tiny: Path) -> list[str]:
    return cli("refine", "-i", str(src), "-o", str(out), "-m", str(tiny), "--prompt-format", "qwen2-chatml",
               "--temperature", "0", "--max-tokens", "12", "--threads", "1")


def test_ctrl_c_exits_130_and_resumes_one_row_at_a_time(tmp_path, tiny):
    rows = [{"instruction": f"Describe item {i} in detail."} for i in range(40)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = subprocess.Popen([*_cmd(src, out, tiny), "--parallel", "1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    done = len(records(out))
    assert 0 < done < 40
    r = subprocess.run([*_cmd(src, out, tiny), "--parallel", "1"], env=ENV, capture_output=True, text=True, timeout=120)
    assert "resuming" in r.stderr
    recs = one_per_row(out, 40)
    # the random tiny model hits --max-tokens 12: a job in which every row failed exits 1
    assert r.returncode == (1 if all(x["status"] == "failed" for x in recs) else 0), r.stderr


def test_resume_after_kill_9_at_random_moments(tmp_path, refiner):
    rows = [{"instruction": f"Explain idea {i} with an example."} for i in range(40)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    cmd = cli("refine", "-i", str(src), "-o", str(out), "-m", str(refiner), "--prompt-format", "qwen2-chatml",
              "--temperature", "0", "--max-tokens", "64", "--threads", "1", "--parallel", "2")
    rng = random.Random(1234)
    kills, progress = 0, []

    def lines() -> int:
        return out.read_bytes().count(b"\n") if out.exists() else 0

    for _ in range(40):  # starts: a run that finishes before its kill is started again, but not forever
        if kills == 12:
            break
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill once the run has written a few more records than before: mid-run on any machine speed
        target = min(lines() + rng.randint(1, 6), 39)
        deadline = time.monotonic() + 120
        while proc.poll() is None and lines() < target and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is not None:  # finished before the kill: start over to keep killing mid-run
            out.unlink()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress.append(lines())
        if progress[-1] >= 39:
            out.unlink()
    assert kills == 12, f"only {kills} of 12 kills landed mid-run in 40 starts: {progress}"
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = one_per_row(out, 40)
    assert all(x["status"] == "ok" and x["output"] == REFINED for x in recs)
    assert sum(0 < p < 40 for p in progress) >= 10, progress  # the kills landed mid-run


def test_ctrl_c_under_the_batching_engine_exits_130_and_resumes(tmp_path, tiny):
    rows = [{"instruction": f"Summarise chapter {i} of the book."} for i in range(48)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    cmd = [*_cmd(src, out, tiny), "--parallel", "4"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert not manifest["complete"]
    done = len(records(out))
    assert 0 < done < 48
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert "resuming" in r.stderr
    recs = one_per_row(out, 48)
    assert r.returncode == (1 if all(x["status"] == "failed" for x in recs) else 0), r.stderr  # as above


# --- filters, parquet, merge ------------------------------------------------------------------


def test_filters_are_counted_by_reason_in_records_manifest_and_summary(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Name a fruit."}, {"instruction": "Say hi."}])
    args = dict(model=smollm2, temperature=0.8, max_tokens=64, threads=1, n=2)  # teacher mode: short replies
    out = tmp_path / "short.jsonl"
    summary = run_job("expand", src, out, min_chars=100_000, max_samples=3, **args)  # nothing is long enough
    recs = one_per_row(out, 2)
    assert all(r["status"] in ("filtered", "failed") and r["outputs"] == [] for r in recs)
    assert [sum(r["rejected"].values()) for r in recs] == [3, 3]  # every sample counted once, by its reason
    assert all(set(r["rejected"]) <= {"too-short", "truncated"} for r in recs)
    manifest = json.loads((tmp_path / "short.jsonl.manifest.json").read_text())
    reasons = manifest["counts"]["rejected_by_reason"]
    assert reasons.get("too-short", 0) >= 1 and sum(reasons.values()) == 6
    assert manifest["counts"]["ok"] == 0 and manifest["config"]["min_chars"] == 100_000
    assert summary.counts == manifest["counts"] and summary.stats.reasons == reasons
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "run", "refine", "-i", str(src), "-o", str(tmp_path / "r.jsonl"),
                        "-m", str(smollm2), "--max-tokens", "64", "--threads", "1", "--min-chars", "100000"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    refined = records(tmp_path / "r.jsonl")
    filtered = [x for x in refined if x["status"] == "filtered"]
    assert filtered and all(x["rejected"] == {"too-short": 1} for x in filtered)
    assert "rejected, by reason" in r.stdout + r.stderr and f"too-short {len(filtered)}" in r.stdout + r.stderr


def test_bad_filter_options_are_usage_errors(tmp_path, tiny):
    from localaug.core.errors import UsageError

    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    for bad in ({"dedup": "fuzzy"}, {"minhash_threshold": 0.0}, {"threshold": 1.5}, {"max_chars": 2, "min_chars": 4}):
        with pytest.raises(UsageError):
            run_job("expand", src, tmp_path / "o.jsonl", model=tiny, **{**TINY, **bad})
    assert not (tmp_path / "o.jsonl").exists()


def test_parquet_output_loads_with_pyarrow(tmp_path, tiny):
    import pyarrow.parquet as pq

    src = write_jsonl(tmp_path / "in.jsonl", [*ROWS[:3], {"instruction": "", "id": "x"}])
    out = tmp_path / "out.parquet"
    summary = run_job("refine", src, out, model=tiny, fmt="parquet", **TINY)
    table = pq.read_table(out).to_pylist()
    ledger = records(summary.ledger)
    assert summary.exported == len(table) == len(ledger) == 4
    assert [t["source_id"] for t in table] == [r["source_id"] for r in ledger]
    assert [t["output"] for t in table] == [r.get("output") for r in ledger]
    loaded = load_with_datasets("parquet", out, tmp_path)
    assert loaded is None or loaded["source_id"] == [r["source_id"] for r in ledger]


def _merge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localaug.cli", "merge", *args], env=ENV, capture_output=True, text=True,
                          timeout=120)


def test_shards_merge_into_the_unsharded_run(tmp_path, refiner):
    rows = [{"id": i, "instruction": f"Give advice number {i} for new gardeners."} for i in range(10)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    whole = tmp_path / "whole.jsonl"
    run_job("refine", src, whole, model=refiner, **SCRIPTED)
    assert {r["status"] for r in records(whole)} == {"ok"}
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"part{i}.jsonl")
        run_job("refine", src, parts[-1], model=refiner, shard=f"{i}/3", **SCRIPTED)
    # a shard given twice, and a stale failed record of a row that a later part has: still one per row
    r = _merge(*map(str, parts), str(parts[0]), "-o", str(tmp_path / "merged.jsonl"))
    assert r.returncode == 0, r.stderr
    merged = one_per_row(tmp_path / "merged.jsonl", 10)
    assert [m["row"] for m in merged] == list(range(10))  # input order
    want = {w["source_id"]: w for w in records(whole)}
    assert all(m == want[m["source_id"]] for m in merged)
    manifest = json.loads((tmp_path / "merged.jsonl.manifest.json").read_text())
    assert manifest["counts"]["rows"] == 10 and len(manifest["run_ids"]) == 1
    # a missing shard is reported, not hidden
    r = _merge(str(parts[0]), str(parts[1]), "-o", str(tmp_path / "partial.jsonl"))
    assert r.returncode == 0 and "missing shard 2/3" in r.stderr
    # outputs of a different run are refused unless asked for
    other = tmp_path / "other.jsonl"
    run_job("refine", src, other, model=refiner, seed=9, limit=2, **SCRIPTED)
    r = _merge(str(whole), str(other), "-o", str(tmp_path / "mixed.jsonl"))
    assert r.returncode == 1 and "different runs" in r.stderr and not (tmp_path / "mixed.jsonl").exists()
    assert _merge(str(whole), str(other), "--allow-mixed", "-o", str(tmp_path / "mixed.jsonl")).returncode == 0


def test_merge_of_pairs_shards_writes_training_files(tmp_path, scripted):
    rows = [{"instruction": f"Seed question {i}?", "response": f"Seed answer {i}."} for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = dict(model=scripted("pairs"), prompt_format="qwen2-response-pairs", temperature=0.8, max_tokens=48, threads=1,
                n=1, dedup="row")
    parts = [run_job("pairs", src, tmp_path / f"part{i}.jsonl", shard=f"{i}/2", **args).ledger for i in range(2)]
    r = _merge(*map(str, parts), "--format", "alpaca", "--dedup", "none", "-o", str(tmp_path / "train.json"))
    assert r.returncode == 0, r.stderr
    train = json.loads((tmp_path / "train.json").read_text())
    assert len(train) == 6  # one pair from each row, in input order
    assert all({"instruction": t["instruction"], "response": t["output"]} in PAIRS and t["input"] == "" for t in train)


def test_merge_removes_items_repeated_across_shards(tmp_path):
    from localaug.jobs.merge import merge_outputs

    def rec(key, row, outputs, status="ok"):
        return {"source_id": key, "row": row, "task": "expand", "status": status, "outputs": outputs, "rejected": {},
                "shortfall": 0}

    a = write_jsonl(tmp_path / "a.jsonl", [rec("k0", 0, ["List three rivers in Asia.", "Write a haiku about snow."]),
                                           rec("k2", 2, ["Describe a sunrise over the desert in two sentences."])])
    b = write_jsonl(tmp_path / "b.jsonl", [rec("k1", 1, ["list three rivers in asia", "Plan a picnic for six people."]),
                                           rec("k3", 3, ["Describe a sunrise over the desert in two short sentences."]),
                                           rec("k0", 0, [], "failed")])  # an older, worse record of row 0
    s = merge_outputs([a, b], tmp_path / "m.jsonl", dedup="exact")
    m = records(tmp_path / "m.jsonl")
    assert [r["source_id"] for r in m] == ["k0", "k1", "k2", "k3"] and m[0]["status"] == "ok"
    assert m[1]["outputs"] == ["Plan a picnic for six people."] and m[1]["rejected"] == {"duplicate": 1}
    assert m[1]["shortfall"] == 1 and s.items_removed == 1 and s.superseded == 1
    s = merge_outputs([a, b], tmp_path / "n.jsonl", dedup="minhash", minhash_threshold=0.5)
    n = records(tmp_path / "n.jsonl")
    assert n[3]["status"] == "filtered" and n[3]["rejected"] == {"near-duplicate": 1} and s.items_removed == 2
