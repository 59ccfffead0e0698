"""Hostile files: a poison row fails alone, a writer never replaces what it reads (or a FIFO), odd
encodings and huge rows are one-line errors or failed rows, files get the permissions the umask
gives, a killed export leaves nothing behind for long, and a model's chat template cannot freeze or
crash the terminal. Each case was a real failure before (a traceback, a whole job aborted on every
rerun, a source overwritten, 2.6 GB of memory for one row).

Ends with a soak of random job rows: every row gets exactly one record.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_fixture import SCRIPTS

from localaug.jobs.run import run_job

SCRIPTED = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=64, threads=1)
REFINED = SCRIPTS["refine"][0]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


@pytest.fixture(scope="module")
def refiner(scripted) -> Path:
    return scripted("refine")


def cli(*args: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localaug.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600, **kw)


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- D4: a poison row fails alone, on the first run and on every rerun ----------------------------------


def test_poison_rows_fail_alone(tmp_path: Path, refiner: Path) -> None:
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        f.write(b'{"instruction": "A good row."}\n')
        f.write(b'{"instruction": "bad \\ud800 surrogate"}\n')  # valid JSON, not valid Unicode
        f.write(b'{"instruction": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")  # nested past the parser
        f.write(b'{"instruction": "latin-1 caf\xe9"}\n')  # a byte that is not UTF-8
        f.write(b'{"instruction": "' + b"word " * 4_000_000 + b'"}\n')  # 20 MB: refused untokenized
        f.write(b'{"instruction": "Another good row."}\n')
    out = tmp_path / "out.jsonl"
    args = ["run", "refine", "-i", str(src), "-o", str(out), "-m", str(refiner), "--prompt-format", "qwen2-chatml",
            "--temperature", "0", "--max-tokens", "64", "--threads", "1", "--parallel", "2", "--retry-failed"]
    # the command reports its own peak memory on its way out (VmHWM: this process image only; the
    # rusage maximum would include the pytest process it was forked from)
    probe = ("import re, runpy, sys\nsys.argv = ['localaug', *sys.argv[1:]]\ntry:\n"
             "    runpy.run_module('localaug.cli', run_name='__main__')\nfinally:\n"
             "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "    print('maxrss', hwm, file=sys.stderr)\n")
    for attempt in range(2):  # the same rows, the same outcome, on a rerun too
        r = subprocess.run([sys.executable, "-c", probe, *args], env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        # the 20 MB row did not cost gigabytes (it was 2.6 GB for 50 MB when tokenized whole)
        assert int(r.stderr.rsplit("maxrss", 1)[1].split()[0]) < 700_000, r.stderr  # 920 MB when tokenized whole
        recs = {rec["row"]: rec for rec in records(out)}
        assert sorted(recs) == [0, 1, 2, 3, 4, 5]
        assert recs[0]["status"] == recs[5]["status"] == "ok" and recs[0]["output"] == REFINED
        assert "not valid UTF-8 or Unicode" in recs[1]["error"] and "nested too deep" in recs[2]["error"]
        assert "not valid UTF-8 or Unicode" in recs[3]["error"] and "cannot fit" in recs[4]["error"]
        assert all(recs[i]["status"] == "failed" for i in (1, 2, 3, 4)), attempt


# --- D5: an output is never an input, nor a FIFO or device --------------------------------------------------


def test_writers_refuse_to_replace_what_they_read(tmp_path: Path, qwen2_tied: Path, refiner: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in qwen2_tied.iterdir():
        os.link(f, ckpt / f.name)
    weights = (ckpt / "model.safetensors").stat()
    line = one_line_error(cli("convert", ckpt, "-q", "F16", "-o", ckpt / "model.safetensors"), 2)
    assert "one of the files this reads" in line and "-o" in line
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns  # the source is untouched
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = one_line_error(cli("convert", ckpt, "-q", "F16", "-o", fifo), 2)
    assert "not a regular file" in line and stat.S_ISFIFO(fifo.stat().st_mode)
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "A row."}\n', encoding="utf-8")
    alias = tmp_path / "alias.jsonl"
    os.link(src, alias)  # the input under a second name
    line = one_line_error(cli("run", "refine", "-i", src, "-o", alias, "-m", refiner, "--prompt-format", "qwen2-chatml"), 2)
    assert "one of the files this reads" in line and src.read_text() == '{"instruction": "A row."}\n'
    line = one_line_error(cli("export-modelfile", refiner, "-o", refiner), 2)
    assert "one of the files this reads" in line or "not a family model" in line


# --- D6: odd encodings, long fields and a full disk ---------------------------------------------------------


def test_odd_encodings_and_long_csv_fields(tmp_path: Path, refiner: Path) -> None:
    latin = tmp_path / "in.json"
    latin.write_bytes('[{"instruction": "café"}]'.encode("latin-1"))
    line = one_line_error(cli("run", "refine", "-i", latin, "-o", tmp_path / "o.jsonl", "-m", refiner), 2)
    assert "not UTF-8" in line
    csv_path = tmp_path / "in.csv"
    with open(csv_path, "wb") as f:
        f.write(b"instruction,note\n")
        f.write(b"A fine row.,x\n")
        f.write(b"caf\xe9 au lait,y\n")  # not UTF-8: this row fails
        f.write(b'"' + b"long text " * 20_000 + b'",z\n')  # a 200,000-character field: read, not refused
    out = tmp_path / "csv.jsonl"
    summary = run_job("refine", csv_path, out, model=refiner, **SCRIPTED)
    recs = {r["row"]: r for r in records(out)}
    assert summary.stats.done == 3 and recs[0]["status"] == "ok" and "not valid UTF-8" in recs[1]["error"]
    assert len(recs[2]["note"]) == 1 and recs[2]["status"] in ("ok", "failed") and "bad CSV" not in str(recs[2]["error"])


def test_disk_full_while_appending_is_one_line_and_resumes(tmp_path: Path, refiner: Path, monkeypatch) -> None:
    import errno

    import localaug.jobs.ledger as ledger
    from localaug.core.errors import JobError

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Row {i}."}) + "\n" for i in range(6)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    real_write, writes = os.write, {"n": 0}

    def full_after_three(fd: int, data: bytes) -> int:
        if fd != 1 and fd != 2 and data.endswith(b"\n") and b'"source_id"' in data:
            writes["n"] += 1
            if writes["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(ledger.os, "write", full_after_three)
    with pytest.raises(JobError) as e:
        run_job("refine", src, out, model=refiner, **SCRIPTED)
    assert "No space left" in str(e.value) and "run the same command again" in str(e.value)
    assert "\n" not in str(e.value) and len(records(out)) == 3
    monkeypatch.setattr(ledger.os, "write", real_write)
    again = run_job("refine", src, out, model=refiner, **SCRIPTED)
    assert again.stats.skipped == 3 and again.stats.done == 3 and len(records(out)) == 6


# --- D8 / D9: permissions and leftovers ----------------------------------------------------------------------


def test_outputs_follow_the_umask_and_killed_writers_leave_nothing_for_long(tmp_path: Path, refiner: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "A row.", "response": "Its answer."}\n', encoding="utf-8")  # pairs reads seed pairs
    dead = tmp_path / ".train.json.999999999.abcdef.part"  # what a writer killed mid-export leaves
    dead.write_text("half", encoding="utf-8")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f".train.json.{sleeper.pid}.abcdef.part"  # a writer still at work: left alone
    live.write_text("busy", encoding="utf-8")
    try:
        old = os.umask(0o002)
        try:
            run_job("pairs", src, tmp_path / "train.json", model=refiner, fmt="alpaca",
                    **{**SCRIPTED, "prompt_format": "qwen2-response-pairs"}, n=1, max_samples=1)
        finally:
            os.umask(old)
        for name in ("train.json", "train.json.manifest.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name  # not mkstemp's 0600
        assert not dead.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# --- D2 in the terminal: a template that raises is one line ---------------------------------------------------


@pytest.mark.parametrize(("template", "why"), [
    ("{{ 1/0 }}", "ZeroDivisionError"), ("{{ 10.0 ** 400 }}", "too large"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "stopped"),
])
def test_a_broken_template_is_one_line_in_the_terminal(tmp_path: Path, qwen2_tied: Path, template: str, why: str) -> None:
    from test_hostile_server import with_template

    from localaug.convert import convert_checkpoint

    ckpt = with_template(qwen2_tied, tmp_path / "ckpt", template)
    gguf = convert_checkpoint(ckpt, tmp_path / "t.Q8_0.gguf", "Q8_0").path
    started = time.monotonic()
    line = one_line_error(cli("refine", "hi", "-m", gguf, "--threads", "1", "--max-tokens", "4"), 1)
    assert "chat template" in line and why in line and time.monotonic() - started < 60


# --- soak: random rows --------------------------------------------------------------------------------------


def _random_row(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return b"not json at all"
    if kind == 1:
        return json.dumps(rng.choice([[1, 2], "text", 3, None])).encode()
    if kind == 2:
        return b'{"instruction": "' + bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 5))) + b'"}'
    if kind == 3:
        return json.dumps({"instruction": rng.choice(["", " ", "\t\n"])}).encode()
    if kind == 4:
        return json.dumps({"other": "field"}).encode()
    if kind == 5:
        return b'{"instruction": "x\\udc' + rng.choice([b"80", b"ff"]) + b'"}'
    if kind == 6:
        return json.dumps({"instruction": {"nested": [1, {"deep": True}]}}).encode()
    text = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 60)))
    return json.dumps({"instruction": text, "n": rng.random()}, ensure_ascii=rng.random() < 0.5).encode()


def test_soak_random_rows_get_one_record_each(tmp_path: Path, refiner: Path) -> None:
    rng = random.Random(11302026)
    lines = [_random_row(rng) for _ in range(120)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    summary = run_job("refine", src, out, model=refiner, parallel=4, **SCRIPTED)
    recs = records(out)
    assert sorted(r["row"] for r in recs) == list(range(120)) and len({r["source_id"] for r in recs}) == 120
    assert summary.stats.ok >= 30 and summary.stats.failed >= 30
    assert all(r["output"] == REFINED for r in recs if r["status"] == "ok")
    assert all(r["error"] for r in recs if r["status"] == "failed")
