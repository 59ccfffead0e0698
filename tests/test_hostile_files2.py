"""Hostile files, round 2: an input edited between two runs, a command told to write onto what it
reads, files localaug did not write given to its readers, columns that cannot be read, and NaN in
anything written as JSON. Each class was a measured failure before (a stale record beside the new
one, a page appended into a JSONL input, a 41-line traceback, every row failed with exit 0, a
CSV column lost without a word, bare NaN in a summary).

Every writing command of the CLI is listed with a way to make its output one of its inputs
(``WRITERS``); a command added to the app that is in no list fails ``test_every_command_is_classified``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_fixture import SCRIPTS
from typer.testing import CliRunner

from localaug.cli.main import app
from localaug.core.errors import JobError, LocalaugError, UsageError
from localaug.core.files import dumps_strict, write_json_atomic
from localaug.jobs import dataio
from localaug.jobs.columns import check_columns
from localaug.jobs.keys import RowKeys
from localaug.jobs.merge import merge_outputs
from localaug.jobs.run import run_job
from localaug.report.judge import JudgeSummary, responses, score
from localaug.report.records import collect

SCRIPTED = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=64, threads=1)
REFINED = SCRIPTS["refine"][0]
ANSWER = SCRIPTS["respond"][0]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "LOCALAUG_PARALLEL": "4"}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


@pytest.fixture(scope="module")
def refiner(scripted) -> Path:
    return scripted("refine")


@pytest.fixture(scope="module")
def responder(scripted) -> Path:
    return scripted("respond")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def strict(text: str) -> Any:
    """JSON as a strict reader takes it: NaN, Infinity and -Infinity are errors."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def records(path: Path) -> list[dict]:
    return [strict(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localaug.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600)


def one_line_error(stderr: str, code: int, got: int) -> str:
    assert got == code, (got, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    return lines[-1]


def usage_error(*args: str | Path) -> str:
    """The one error line of a command that must exit 2."""
    code, stderr = invoke(*args)
    return one_line_error(stderr, 2, code)


def invoke(*args: str | Path) -> tuple[int, str]:
    """The command run in this process (exit code, stderr); an exception that escaped is a failure."""
    result = runner.invoke(app, [str(a) for a in args], env={"LOCALAUG_HOME": os.environ["LOCALAUG_HOME"],
                                                             "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


class Recorder:
    """A JobProgress that keeps the start message."""

    def __init__(self) -> None:
        self.message = ""

    def start(self, stats: Any, message: str) -> None:
        self.message = message

    def update(self, stats: Any) -> None:
        pass

    def close(self) -> None:
        pass


# --- 1. an input that changes between runs --------------------------------------------------------------

ROWS = [{"instruction": f"Describe landmark number {i} in a few lines.", "id": i} for i in range(8)]


def test_rows_edited_or_removed_between_runs_leave_no_stale_record(tmp_path: Path, refiner: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:4])
    out = tmp_path / "out.jsonl"
    run_job("refine", src, out, model=refiner, **SCRIPTED)
    assert len(records(out)) == 4
    edited = dict(ROWS[1], instruction="Describe landmark number 1 in detail, with its history.")
    write_jsonl(src, [ROWS[0], edited, ROWS[2]])  # row 1 edited, row 3 removed
    r = cli("run", "refine", "-i", src, "-o", out, "-m", refiner, "--prompt-format", "qwen2-chatml", "--temperature", "0",
            "--max-tokens", "64", "--threads", "1")
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("run ")]  # the start line says it
    assert len(said) == 1 and "; 2 records of rows no longer in the input were dropped (kept in " in said[0], r.stderr
    assert f"{(tmp_path / 'out.jsonl.stale').resolve()})" in said[0]
    recs = records(out)
    assert sorted(rec["instruction"] for rec in recs) == sorted([ROWS[0]["instruction"], edited["instruction"],
                                                                ROWS[2]["instruction"]])
    assert sorted(rec["row"] for rec in recs) == [0, 1, 2] and all(rec["status"] == "ok" for rec in recs)
    stale = records(tmp_path / "out.jsonl.stale")
    assert sorted(rec["instruction"] for rec in stale) == [ROWS[1]["instruction"], ROWS[3]["instruction"]]
    manifest = strict((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["counts"]["rows"] == 3 and manifest["this_run"]["stale_dropped"] == 2
    assert manifest["this_run"]["skipped"] == 2 and manifest["this_run"]["done"] == 1
    again = run_job("refine", src, out, model=refiner, **SCRIPTED)  # nothing more to drop
    assert again.stats.stale == 0 and again.stats.skipped == 3 and len(records(tmp_path / "out.jsonl.stale")) == 2


def test_a_training_export_counts_the_current_rows(tmp_path: Path, refiner: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:3])
    out = tmp_path / "prompts.jsonl"
    run_job("refine", src, out, model=refiner, fmt="prompts", **SCRIPTED)
    write_jsonl(src, [ROWS[0], dict(ROWS[1], instruction="Another text for row one.")])
    progress = Recorder()
    summary = run_job("refine", src, out, model=refiner, fmt="prompts", progress=progress, **SCRIPTED)
    assert summary.stats.stale == 2 and summary.exported == 2 and summary.counts["rows"] == 2
    assert progress.message.endswith("; 2 records of rows no longer in the input were dropped (kept in "
                                     f"{(tmp_path / 'prompts.jsonl.ledger.jsonl.stale').resolve()})")
    assert [strict(line) for line in out.read_text().splitlines()] == [
        {"prompt": [{"role": "user", "content": REFINED}]}] * 2
    assert len(records(tmp_path / "prompts.jsonl.ledger.jsonl")) == 2


def test_limit_and_shard_keep_the_records_of_rows_outside_the_selection(tmp_path: Path, refiner: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "limit.jsonl"
    run_job("refine", src, out, model=refiner, limit=5, **SCRIPTED)
    fewer = run_job("refine", src, out, model=refiner, limit=2, **SCRIPTED)
    assert fewer.stats.stale == 0 and fewer.stats.total == 2 and len(records(out)) == 5  # rows 2-4: in the input
    write_jsonl(src, [r for r in ROWS if r["id"] not in (4, 6)])  # row 4 was done (past this limit), 6 never
    after = run_job("refine", src, out, model=refiner, limit=2, **SCRIPTED)
    assert after.stats.stale == 1 and sorted(r["id"] for r in records(out)) == [0, 1, 2, 3]

    write_jsonl(src, ROWS)
    outs = [tmp_path / f"shard{i}.jsonl" for i in range(2)]
    for i, o in enumerate(outs):
        run_job("refine", src, o, model=refiner, shard=f"{i}/2", **SCRIPTED)
    ids = [sorted(r["id"] for r in records(o)) for o in outs]
    assert sorted(ids[0] + ids[1]) == list(range(8)) and ids[0] and ids[1]
    before = [o.read_bytes() for o in outs]
    gone = ids[1][0]  # a row of shard 1 removed from the input
    write_jsonl(src, [r for r in ROWS if r["id"] != gone])
    s0 = run_job("refine", src, outs[0], model=refiner, shard="0/2", **SCRIPTED)
    assert s0.stats.stale == 0 and outs[0].read_bytes() == before[0]  # shard 0 never had it
    s1 = run_job("refine", src, outs[1], model=refiner, shard="1/2", **SCRIPTED)
    assert s1.stats.stale == 1 and sorted(r["id"] for r in records(outs[1])) == ids[1][1:]


def test_a_ray_output_folder_moves_stale_records_out_of_its_parts(tmp_path: Path) -> None:
    from localaug.jobs import parts

    recs = [{"source_id": f"k{i}", "task": "refine", "status": "ok", "output": f"text {i}", "row": i} for i in range(5)]
    first = parts.write_part(tmp_path, ["k0", "k1"], [dataio.json_line(r) for r in recs[:2]])
    second = parts.write_part(tmp_path, ["k2", "k3", "k4"], [dataio.json_line(r) for r in recs[2:]])
    assert parts.drop_keys(tmp_path, {"k0", "k1", "k3"}) == 3
    assert not first.exists() and records(second) == [recs[2], recs[4]]  # a part left empty is removed
    assert records(tmp_path / "records.stale") == [recs[0], recs[1], recs[3]]
    assert sorted(parts.statuses(tmp_path)) == ["k2", "k4"]


# --- 2. every writing command refuses an output that is one of its inputs --------------------------------


@dataclass
class Ctx:
    tmp: Path
    refiner: Path
    responder: Path
    checkpoint: Path
    store_gguf: Path


def _respond_records(path: Path, n: int = 2) -> Path:
    return write_jsonl(path, [{"instruction": f"Question {i}?", "response": f"Answer {i}.", "task": "respond", "status": "ok",
                               "source_id": f"key{i}", "row": i} for i in range(n)])


def _expand_records(path: Path) -> Path:
    return write_jsonl(path, [{"instruction": "Plan a trip.", "outputs": ["Plan a trip to Rome.", "Plan a hike."],
                               "task": "expand", "status": "ok", "source_id": "k0", "row": 0}])


def _link(target: Path, name: Path) -> Path:
    name.symlink_to(target)
    return name


def _convert(c: Ctx) -> list[tuple[list[Any], Path]]:
    weights = c.checkpoint / "model.safetensors"
    return [(["convert", c.checkpoint, "-q", "F16", "-o", _link(weights, c.tmp / "weights.gguf")], weights)]


def _run(c: Ctx) -> list[tuple[list[Any], Path]]:
    src = write_jsonl(c.tmp / "in.jsonl", ROWS[:2])
    info = c.tmp / "data" / "dataset_info.json"
    info.parent.mkdir()
    write_jsonl(info, [{"instruction": "Q?", "response": "A."}])
    common = ["--prompt-format", "qwen2-chatml", "--threads", "1"]
    return [(["run", "refine", "-i", src, "-o", _link(src, c.tmp / "out.jsonl"), "-m", c.refiner, *common], src),
            (["run", "refine", "-i", src, "-o", c.refiner, "-m", c.refiner, *common], c.refiner),
            (["run", "respond", "-i", info, "-o", info.parent / "train.json", "--format", "alpaca", "-m", c.responder,
              *common], info)]


def _merge(c: Ctx) -> list[tuple[list[Any], Path]]:
    a = _respond_records(c.tmp / "a.jsonl")
    return [(["merge", a, "-o", _link(a, c.tmp / "merged.jsonl")], a)]


def _report(c: Ctx) -> list[tuple[list[Any], Path]]:
    recs = _expand_records(c.tmp / "expanded.jsonl")
    summary = c.tmp / "j.summary.json"
    summary.write_text('{"wins": 1, "ties": 0, "losses": 0, "n": 1, "score": 1.0, "interval": [1.0, 1.0]}')
    page = c.tmp / "page.html"
    return [(["report", recs, "--embed-model", c.refiner, "--html", _link(recs, c.tmp / "r.html")], recs),
            (["report", recs, "--embed-model", c.refiner, "--html", page, "--judge", _link(summary, c.tmp / "page.json")],
             summary)]


def _judge(c: Ctx) -> list[tuple[list[Any], Path]]:
    a, b = _respond_records(c.tmp / "a.jsonl"), _respond_records(c.tmp / "b.jsonl")
    return [(["judge", a, b, "--judge", c.refiner, "-o", _link(a, c.tmp / "verdicts.jsonl")], a),
            (["judge", a, b, "--judge", c.refiner, "--html", _link(b, c.tmp / "page.html")], b),
            (["judge", a, b, "--judge", c.refiner, "--html", c.refiner], c.refiner)]


def _grade(c: Ctx) -> list[tuple[list[Any], Path]]:
    a = _respond_records(c.tmp / "a.jsonl")
    return [(["grade", a, "--judge", c.refiner, "-o", _link(a, c.tmp / "grades.jsonl")], a),
            (["grade", a, "--judge", c.refiner, "--pairwise", "-o", c.refiner], c.refiner)]


def _export(c: Ctx) -> list[tuple[list[Any], Path]]:
    a = _respond_records(c.tmp / "a.jsonl")
    grades = write_jsonl(c.tmp / "a.jsonl.grades.jsonl", [{"run_id": "r", "key": "k", "score": 7}])
    return [(["export", a, "-o", _link(a, c.tmp / "train.json"), "--format", "alpaca"], a),
            (["export", a, "-o", grades, "--format", "messages", "--min-score", "5"], grades)]


def _bundle_export(c: Ctx) -> list[tuple[list[Any], Path]]:
    return [(["bundle", "export", "qwen2-refine:1.5b", "-o", _link(c.store_gguf, c.tmp / "models.tar")], c.store_gguf)]


def _export_modelfile(c: Ctx) -> list[tuple[list[Any], Path]]:
    return [(["export-modelfile", "qwen2-refine:1.5b", "-o", _link(c.store_gguf, c.tmp / "Modelfile")], c.store_gguf)]


# writing command -> how to make its output one of its inputs (each case: arguments, the input to keep)
WRITERS: dict[str, Callable[[Ctx], list[tuple[list[Any], Path]]]] = {
    "convert": _convert, "run": _run, "merge": _merge, "report": _report, "judge": _judge, "grade": _grade, "export": _export,
    "bundle export": _bundle_export, "export-modelfile": _export_modelfile,
}
# commands that write only inside the store (LOCALAUG_HOME), at names the store chooses
STORE_ONLY = {"pull", "bundle import", "rm"}
# commands that write no file (stdout, or a cache in LOCALAUG_HOME)
NO_FILES = {"inspect", "models", "list", "ls", "refine", "expand", "pairs", "doctor", "bench", "serve"}


def cli_commands() -> set[str]:
    """Every command of the app, with its group's name before it ("bundle export")."""
    found: set[str] = set()

    def walk(group: Any, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found.add(prefix + name)

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_is_classified() -> None:
    commands = cli_commands()
    unlisted = commands - set(WRITERS) - STORE_ONLY - NO_FILES
    assert not unlisted, f"add {sorted(unlisted)} to WRITERS (with an output-is-input case), STORE_ONLY or NO_FILES"
    assert not (set(WRITERS) & (STORE_ONLY | NO_FILES)) and not (STORE_ONLY & NO_FILES)
    assert set(WRITERS) | STORE_ONLY | NO_FILES == commands  # nothing listed that the app no longer has


@pytest.fixture(scope="module")
def family_store(tmp_path_factory: pytest.TempPathFactory, qwen2_tied: Path) -> tuple[Path, Path]:
    """(LOCALAUG_HOME, its GGUF) of a store holding qwen2-refine:1.5b Q8_0 (pulled from a cache snapshot)."""
    from localaug.store import local as store

    snap = (tmp_path_factory.mktemp("hf") / "hub" / "models--alibaba-pai--Qwen2-1.5B-Instruct-Refine" / "snapshots"
            / ("89abcdef" * 5))
    snap.mkdir(parents=True)
    for f in qwen2_tied.iterdir():
        os.link(f, snap / f.name)
    home = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALAUG_HOME", str(home))
        entry = store.pull(str(snap), quant="Q8_0")
    return home, entry.path


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_writing_command_refuses_an_output_that_is_one_of_its_inputs(command: str, tmp_path: Path, monkeypatch,
                                                                        refiner: Path, responder: Path, qwen2_tied: Path,
                                                                        family_store: tuple[Path, Path]) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in qwen2_tied.iterdir():
        os.link(f, ckpt / f.name)
    home, gguf = family_store
    if command in ("bundle export", "export-modelfile"):
        monkeypatch.setenv("LOCALAUG_HOME", str(home))
    cases = WRITERS[command](Ctx(tmp_path, refiner, responder, ckpt, gguf))
    assert cases
    for args, kept in cases:
        before = _fingerprint(kept)
        code, stderr = invoke(*args)
        line = one_line_error(stderr, 2, code)
        assert "is one of the files this reads" in line, (args, line)
        assert _fingerprint(kept) == before, args
        assert not list(kept.resolve().parent.glob(".*.part")), args


# --- 3. files localaug did not write, given to its readers -------------------------------------------------

FOREIGN = {
    "foreign JSONL": b'{"name": "Ada", "score": 3}\n{"name": "Grace"}\n',
    "records missing fields": b'{"source_id": "k1", "task": "respond"}\n{"task": "refine", "status": "ok"}\n',
    "wrong types": (b'{"source_id": ["k"], "task": 3, "status": "ok"}\n'
                    b'{"source_id": "k2", "task": "respond", "status": "ok", "instruction": 5, "response": null, "row": "0"}\n'),
    "damaged refine records": b'{"source_id": "k1", "task": "refine", "status": "ok", "output": 7, "instruction": 1}\n',
    "not JSON": b"this, is not json\n{oops\n",
    "binary": bytes(range(256)) * 8,
    "empty": b"",
}


def _foreign_case(command: str, bad: Path, tmp: Path, refiner: Path, responder: Path) -> list[Any]:
    good = _respond_records(tmp / "good.jsonl")
    return {"report": ["report", bad, "--embed-model", refiner, "--html", tmp / "page.html"],
            "judge": ["judge", good, bad, "--judge", refiner],
            "merge": ["merge", bad, "-o", tmp / "merged.jsonl"],
            "grade": ["grade", bad, "--judge", refiner],
            "export": ["export", bad, "-o", tmp / "merged.jsonl", "--format", "alpaca"],
            "run respond": ["run", "respond", "-i", bad, "-o", tmp / "answers.jsonl", "-m", responder]}[command]


@pytest.mark.parametrize("command", ["report", "judge", "merge", "grade", "export", "run respond"])
def test_foreign_and_malformed_files_are_one_line_errors(command: str, tmp_path: Path, refiner: Path,
                                                         responder: Path) -> None:
    expected = {"report": "expected JSON Lines of localaug job records",
                "judge": "give a localaug run respond output (JSON Lines of records with task respond",
                "merge": "expected JSON Lines of localaug job records",
                "grade": "give a localaug run respond output (JSON Lines of records with task respond",
                "export": "give a localaug run respond output (JSON Lines of records with task respond"}
    for kind, data in FOREIGN.items():
        bad = tmp_path / f"{kind.replace(' ', '-')}.jsonl"
        bad.write_bytes(data)
        code, stderr = invoke(*_foreign_case(command, bad, tmp_path, refiner, responder))
        line = one_line_error(stderr, 2, code)
        if command in expected:
            assert expected[command] in line, (kind, line)
        else:  # run respond: what the column or the file should be
            assert any(s in line for s in ("has a column 'instruction'", "holds numbers", "can be read", "is empty")), (kind, line)
        assert not (tmp_path / "answers.jsonl").exists() and not (tmp_path / "merged.jsonl").exists(), kind


def test_a_partly_damaged_output_is_read_for_what_it_holds(tmp_path: Path) -> None:
    good = json.loads(_respond_records(tmp_path / "x.jsonl", 3).read_text().splitlines()[0])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([json.dumps(good), "[1, 2]", '{"source_id": "k9", "task": "respond", "status": "ok"}',
                                "\x00\x01garbage"]) + "\n", encoding="utf-8")
    assert responses(mixed) == {"0:0": ("Question 0?", "Answer 0.")}
    merged = merge_outputs([mixed], tmp_path / "merged.jsonl")
    assert (merged.rows, merged.unreadable) == (1, 3) and records(tmp_path / "merged.jsonl") == [good]


def test_judge_never_cuts_or_appends_to_a_file_that_is_not_its_ledger(tmp_path: Path, refiner: Path) -> None:
    a, b = _respond_records(tmp_path / "a.jsonl"), _respond_records(tmp_path / "b.jsonl")
    other = tmp_path / "notes.jsonl"
    other.write_bytes(b'{"note": "mine"}\n{"note": "no newline at the end"}')  # a torn-looking last line
    code, stderr = invoke("judge", a, b, "--judge", refiner, "-o", other)
    line = one_line_error(stderr, 1, code)
    assert line == (f"error: {other} is not a localaug judge ledger (line 1: not a verdict record): give another -o")
    assert other.read_bytes() == b'{"note": "mine"}\n{"note": "no newline at the end"}'


# --- 3b. the same readers under random input (hypothesis) ----------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
RECORD_KEYS = ["source_id", "task", "status", "row", "output", "outputs", "pairs", "instruction", "response", "origin",
               "rejected", "shortfall", "error"]
FIELD_VALUES = (JSON_VALUES | st.sampled_from(["refine", "expand", "pairs", "respond", "ok", "filtered", "failed", "k1"])
                | st.lists(st.text(max_size=8), max_size=3) | st.integers(0, 5))
RECORDS = st.dictionaries(st.sampled_from(RECORD_KEYS), FIELD_VALUES, max_size=len(RECORD_KEYS))
LINES = st.lists(st.one_of(RECORDS.map(lambda r: dumps_strict(r).encode()), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                           st.binary(max_size=40)), max_size=6)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _file(lines: list[bytes]) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "in.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + (b"\n" if lines else b""))
    return tmp, path


def _one_line(e: LocalaugError) -> None:
    assert "\n" not in str(e) and str(e)


@FUZZ
@given(LINES)
def test_fuzz_report_reader(lines: list[bytes]) -> None:
    tmp, path = _file(lines)
    with tmp:
        try:
            data = collect(path)
        except (UsageError, JobError) as e:
            _one_line(e)
        else:
            assert data.counts["rows"] >= 1 and all(isinstance(s, str) for s in data.sources)
            strict(dumps_strict(data.counts))


@FUZZ
@given(LINES)
def test_fuzz_judge_reader(lines: list[bytes]) -> None:
    tmp, path = _file(lines)
    with tmp:
        try:
            got = responses(path)
        except UsageError as e:
            _one_line(e)
        else:
            assert got and all(isinstance(q, str) and isinstance(a, str) for q, a in got.values())


@FUZZ
@given(LINES)
def test_fuzz_merge_reader(lines: list[bytes]) -> None:
    tmp, path = _file(lines)
    with tmp:
        out = Path(tmp.name) / "merged.jsonl"
        try:
            summary = merge_outputs([path], out, fmt="jsonl")
        except (UsageError, JobError) as e:
            _one_line(e)
        else:
            written = records(out)  # strict JSON, one record per key
            assert len(written) == summary.rows == len({r["source_id"] for r in written})
            strict(out.with_name("merged.jsonl.manifest.json").read_text())


@FUZZ
@given(st.sampled_from(["jsonl", "json", "csv"]), st.one_of(LINES.map(lambda ls: b"\n".join(ls)), st.binary(max_size=200)),
       st.sampled_from(["refine", "pairs", "respond"]))
def test_fuzz_job_readers(kind: str, data: bytes, task: str) -> None:
    from localaug.augment.resolve import default_sampling
    from localaug.jobs.config import JobConfig

    def rows() -> Any:
        read = dataio.text_rows(kind, io.BytesIO(data), name="input")
        return dataio.instruction_rows(read) if task == "respond" else read

    try:
        check_columns(rows(), task, "instruction", None, "input")
        read = list(rows())
    except UsageError as e:
        _one_line(e)
        return
    keys = RowKeys(JobConfig(task, default_sampling(None), "instruction", None, 1, "m"), "run")
    assert len({keys.key(r) for r in read}) == len(read)  # every row keyed, each its own key
    assert all(isinstance(r.record, dict) and (r.error is None or isinstance(r.error, str)) for r in read)
    for r in read:
        strict(dataio.json_line(r.record))


# --- 4. columns, before the model loads -----------------------------------------------------------------------


def _not_a_model(tmp: Path) -> Path:
    fake = tmp / "fake.gguf"
    fake.write_text("not a model", encoding="utf-8")
    return fake


@pytest.mark.parametrize(("rows", "args", "said"), [
    ([{"question": "Q?", "id": 1}], ["--field", "text"], "no row of {src} has a column 'text': give the text column with "
                                                          "--field (the columns: question, id)"),
    ([{"instruction": 3}, {"instruction": [1]}, {"other": "x"}], [], "column 'instruction' of {src} holds numbers and "
                                                                     "arrays, not text, in every row that has it"),
    ([{"instruction": "Q?", "answer": "A."}], ["--response-field", "reply"], "no row of {src} has a column 'reply': give "
                                                                             "the text column with --response-field"),
])
def test_a_column_the_rows_cannot_give_is_refused_before_the_model_loads(tmp_path: Path, rows: list[dict], args: list[str],
                                                                       said: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    task = "pairs" if "--response-field" in args else "refine"
    out = tmp_path / "out.jsonl"
    code, stderr = invoke("run", task, "-i", src, "-o", out, "-m", _not_a_model(tmp_path), *args)
    line = one_line_error(stderr, 2, code)
    assert said.format(src=src) in line and not out.exists()  # the fake model was never opened


def test_duplicate_column_names_are_refused_or_fail_their_row(tmp_path: Path, refiner: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fake = _not_a_model(tmp_path)
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("instruction,note,note\nWrite a poem.,a,b\n", encoding="utf-8")
    line = usage_error("run", "refine", "-i", csv_path, "-o", tmp_path / "o.jsonl", "-m", fake)
    assert line == (f"error: {csv_path}: the header names column 'note' twice (columns 2 and 3); a reader keeps only "
                    "one: rename one of them")
    array = tmp_path / "in.json"
    array.write_text('[{"instruction": "Q?", "a": 1, "a": 2}]', encoding="utf-8")
    line = usage_error("run", "refine", "-i", array, "-o", tmp_path / "o.jsonl", "-m", fake)
    assert "holds the key 'a' twice" in line
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["Q?"]), pa.array(["x"]), pa.array(["y"])],
                                        names=["instruction", "c", "c"]), parquet)
    line = usage_error("run", "refine", "-i", parquet, "-o", tmp_path / "o.jsonl", "-m", fake)
    assert "names column 'c' twice (columns 2 and 3)" in line
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"instruction": "Write a poem.", "x": 1, "x": 2}\n{"instruction": "Write a song."}\n', encoding="utf-8")
    run_job("refine", jsonl, tmp_path / "rows.jsonl", model=refiner, **SCRIPTED)
    recs = {r["row"]: r for r in records(tmp_path / "rows.jsonl")}
    assert recs[0]["status"] == "failed" and recs[0]["error"] == ("line 1 holds the key 'x' twice (a reader keeps only "
                                                                  "one): remove or rename one")
    assert recs[1]["status"] == "ok" and recs[1]["output"] == REFINED


def test_a_job_in_which_every_row_failed_exits_1_with_the_most_common_error(tmp_path: Path, refiner: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": " "}, {"instruction": ""}, {"instruction": "\t"},
                                               {"other": "no text"}])
    out = tmp_path / "out.jsonl"
    args = ["run", "refine", "-i", src, "-o", out, "-m", refiner, "--prompt-format", "qwen2-chatml", "--threads", "1"]
    for _ in range(2):  # and on a rerun, where every row is already done
        r = cli(*args)
        line = one_line_error(r.stderr, 1, r.returncode)
        assert line == ("error: every row failed (4 of 4); the most common error (3 rows): empty text; fix the cause "
                        "and rerun with --retry-failed")
    manifest = strict((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["counts"]["most_common_error"] == {"error": "empty text", "rows": 3}
    assert manifest["complete"] is True and len(records(out)) == 4


# --- 5. strict JSON everywhere ------------------------------------------------------------------------------


def test_nan_and_infinity_are_written_as_null(tmp_path: Path, responder: Path, scripted) -> None:
    src = tmp_path / "in.jsonl"  # Python's reader takes NaN and Infinity in an input row
    src.write_text('{"instruction": "Name a colour.", "score": NaN, "w": [Infinity, -Infinity, 1.5]}\n', encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text('{"old": {"file_name": "old.json", "weight": NaN}}', encoding="utf-8")
    out = tmp_path / "train.json"
    run_job("respond", src, out, model=responder, fmt="alpaca", temperature=0.0, max_tokens=64, threads=1)
    rec = records(tmp_path / "train.json.ledger.jsonl")[0]
    assert (rec["score"], rec["w"], rec["response"]) == (None, [None, None, 1.5], ANSWER)
    assert strict(out.read_text()) == [{"instruction": "Name a colour.", "input": "", "output": ANSWER}]
    info = strict((tmp_path / "dataset_info.json").read_text())
    assert info["old"] == {"file_name": "old.json", "weight": None} and info["train"]["file_name"] == "train.json"
    strict((tmp_path / "train.json.manifest.json").read_text())
    merge_outputs([out], tmp_path / "merged.jsonl")
    assert records(tmp_path / "merged.jsonl")[0]["w"] == [None, None, 1.5]

    from localaug.report.build import make_report

    one = _expand_records(tmp_path / "one.jsonl")  # one source text: its mean pairwise cosine is undefined
    r = make_report(one, tmp_path / "page.html", embed_model=scripted("expand"), threads=1)
    summary = strict((tmp_path / "page.json").read_text())
    assert summary["diversity"]["sources"]["mean pairwise cosine"] is None
    assert summary["diversity"]["sources"]["texts"] == 1 and r.diversity["new"]["texts"] == 2


def test_a_judge_summary_with_no_pair_is_strict_json(tmp_path: Path) -> None:
    mean, interval = score([])
    s = JudgeSummary("a", "b", "j", "detail", 0, 0, 0, 0, mean, interval, 0, 0, "v.jsonl", 0)
    write_json_atomic(tmp_path / "s.json", s.to_json())
    assert strict((tmp_path / "s.json").read_text())["score"] is None
    assert strict((tmp_path / "s.json").read_text())["interval"] == [None, None]
    assert dict(s.rows())["B's score (wins + ties/2) / n"] == "—"
