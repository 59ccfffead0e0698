"""Progress: one duration format (h:mm:ss) and every long phase shown as it runs.

The commands run for real (a CliRunner, stderr not a terminal) on the tiny fixtures, with
LOCALAUG_PROGRESS_INTERVAL=0 so that every step prints its plain line (a slow source, without
sleeping). What the lines must say is computed here from the files themselves: the checkpoint's
safetensors headers (tensor count, bytes), the input's size, the model file's size. --json keeps
stdout one strict JSON object: progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from localaug.cli.main import app
from localaug.cli.render.progress import clock
from localaug.core.settings import PROGRESS_INTERVAL, progress_interval

runner = CliRunner()
SCRIPTED = ["--prompt-format", "qwen2-chatml", "--temperature", "0", "--max-tokens", "64", "--threads", "1"]
CLOCK = r"\d+:\d\d:\d\d"


def cli(home: Path, *args: Any, interval: str = "0") -> Result:
    env = {"LOCALAUG_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "300", "LOCALAUG_PROGRESS_INTERVAL": interval}
    return runner.invoke(app, [str(a) for a in args], env=env)


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


def size_text(n: int) -> str:
    """What a byte count reads like (KB = 1024 B, one decimal), worked out here on its own."""
    if n < 1024:
        return f"{n} B"
    for i, unit in enumerate(("KB", "MB", "GB"), start=1):
        if n < 1024 ** (i + 1):
            return f"{n / 1024 ** i:.1f} {unit}"
    return f"{n / 1024 ** 4:.1f} TB"


def safetensors_tensors(folder: Path) -> dict[str, int]:
    """Each tensor of a checkpoint folder and its data bytes, read from the safetensors headers."""
    out: dict[str, int] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.update({k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"})
    return out


def lines_of(err: str, prefix: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(prefix)]


# --- the one duration format ------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00:00"), (0.999, "0:00:00"), (59, "0:00:59"), (59.9, "0:00:59"), (60, "0:01:00"), (61, "0:01:01"),
    (3599, "0:59:59"), (3600, "1:00:00"), (13542, "3:45:42"), (86399, "23:59:59"), (86400, "24:00:00"),
    (90061, "25:01:01"), (10 * 86400 + 5, "240:00:05"), (-3, "0:00:00"),
    (None, "-:--:--"), (math.nan, "-:--:--"), (math.inf, "-:--:--"),
])
def test_clock_is_h_mm_ss(seconds: float | None, text: str) -> None:
    assert clock(seconds) == text


@pytest.mark.parametrize(("value", "seconds"), [
    (None, PROGRESS_INTERVAL), ("", PROGRESS_INTERVAL), ("0", 0.0), ("2.5", 2.5), (" 30 ", 30.0),
    ("-1", PROGRESS_INTERVAL), ("soon", PROGRESS_INTERVAL), ("nan", PROGRESS_INTERVAL), ("inf", PROGRESS_INTERVAL),
])
def test_the_interval_setting(monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float) -> None:
    if value is None:
        monkeypatch.delenv("LOCALAUG_PROGRESS_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("LOCALAUG_PROGRESS_INTERVAL", value)
    assert progress_interval() == seconds
    assert PROGRESS_INTERVAL == 10.0


# --- conversion --------------------------------------------------------------------------------------


def test_conversion_prints_each_tensor_and_bytes_of_the_total(qwen2_tied: Path, tmp_path: Path) -> None:
    tensors = safetensors_tensors(qwen2_tied)
    total = sum(tensors.values())  # bf16 in, BF16 written: the same bytes per tensor
    out = tmp_path / "m.gguf"
    r = cli(tmp_path / "home", "convert", qwen2_tied, "-q", "Q4_K_M", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert strict_json(r.stdout)["path"] == str(out)  # stdout: one JSON object, nothing else
    err = r.stderr
    assert "\x1b" not in err and "\r" not in err

    writing = lines_of(err, "writing BF16: ")
    assert writing[0] == f"writing BF16: {size_text(total)}"
    steps = writing[1:-1]  # interval 0: a line per block written (a big tensor is written in blocks)
    assert len(steps) >= len(tensors)
    pattern = re.compile(rf"writing BF16: +([\d.]+)% · (.+) of {re.escape(size_text(total))} · (\d+) tensors · (\S+) · "
                         rf"elapsed {CLOCK} · ETA {CLOCK}")
    found = [pattern.fullmatch(line) for line in steps]
    assert all(found), steps
    percents = [float(m.group(1)) for m in found if m]
    assert percents == sorted(percents) and percents[-1] == 100.0
    seen = [int(m.group(3)) for m in found if m]
    assert seen == sorted(seen) and seen[-1] == len(tensors)
    assert len({m.group(4) for m in found if m}) == len(tensors)  # each tensor named
    assert steps[-1].startswith("writing BF16: 100.0% · ") and steps[-1].endswith("ETA 0:00:00")
    assert re.fullmatch(rf"writing BF16: done in {CLOCK} · {re.escape(size_text(total))}", writing[-1])

    quantizing = lines_of(err, "quantizing Q4_K_M: ")
    n = len(tensors)
    assert quantizing[0] == f"quantizing Q4_K_M: {n} tensors"
    counts = [re.fullmatch(rf"quantizing Q4_K_M: +[\d.]+% · (\d+)/{n} tensors · \S+ · elapsed {CLOCK} · ETA {CLOCK}", ln)
              for ln in quantizing[1:-1]]
    assert all(counts), quantizing
    assert [int(m.group(1)) for m in counts if m] == list(range(1, n + 1))
    assert re.fullmatch(rf"quantizing Q4_K_M: done in {CLOCK} · {n} tensors", quantizing[-1])
    assert err.splitlines() == writing + quantizing  # nothing else on stderr


def test_a_quick_phase_prints_its_first_and_last_line_only_at_the_default_interval(qwen2_tied: Path, tmp_path: Path) -> None:
    r = cli(tmp_path / "home", "convert", qwen2_tied, "-q", "BF16", "-o", tmp_path / "m.gguf", interval="")
    assert r.exit_code == 0, r.output
    total = size_text(sum(safetensors_tensors(qwen2_tied).values()))
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == f"writing BF16: {total}", lines
    assert re.fullmatch(rf"writing BF16: done in {CLOCK} · {re.escape(total)}", lines[1])


# --- a job: implicit pull + conversion, counting, model load, rows --------------------------------------


def test_run_from_a_checkpoint_shows_conversion_counting_and_the_load(qwen2_tied: Path, tmp_path: Path) -> None:
    home, src, out = tmp_path / "home", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Plan day {i} in Hangzhou."}) + "\n" for i in range(3)), encoding="utf-8")
    r = cli(home, "run", "refine", "-i", src, "-o", out, "-m", qwen2_tied, "--max-tokens", "2", "--threads", "1", "--json")
    # the tiny random model's replies are cut at 2 tokens: every row fails, which is not what is checked here
    err = r.stderr.splitlines()
    n = len(safetensors_tensors(qwen2_tied))
    stored = next(home.rglob("*.gguf"))  # the model the implicit pull converted into the store
    phases = [ln.split(":")[0] for ln in err if re.search(rf": done in {CLOCK}", ln)]
    assert phases == ["writing BF16", "quantizing Q4_K_M", f"counting rows of {src}", f"loading model {stored}"], err

    assert f"quantizing Q4_K_M: {n} tensors" in err
    size = src.stat().st_size
    assert f"counting rows of {src}: {size_text(size)}" in err
    assert re.fullmatch(rf"counting rows of {re.escape(str(src))}: 100\.0% · {size_text(size)} of {size_text(size)} · 3 rows · "
                        rf"elapsed {CLOCK} · ETA 0:00:00", lines_of(r.stderr, f"counting rows of {src}: 100")[0])
    assert re.fullmatch(rf"counting rows of {re.escape(str(src))}: done in {CLOCK} · {size_text(size)} · 3 rows",
                        lines_of(r.stderr, f"counting rows of {src}: done")[0])

    model = stored.stat().st_size
    load = lines_of(r.stderr, f"loading model {stored}: ")
    assert load[0] == f"loading model {stored}: {size_text(model)}"
    assert re.fullmatch(rf"loading model {re.escape(str(stored))}: 100\.0% · {re.escape(size_text(model))} of "
                        rf"{re.escape(size_text(model))} · elapsed {CLOCK} · ETA 0:00:00", load[-2])
    assert re.fullmatch(rf"loading model {re.escape(str(stored))}: done in {CLOCK} · {re.escape(size_text(model))}", load[-1])

    rows = [ln for ln in err if re.match(r"\d+/3 rows · ", ln)]
    assert rows and rows[-1].startswith("3/3 rows · ") and "ETA 0:00:00 · " in rows[-1], err
    assert all(re.search(rf" · elapsed {CLOCK} · ETA ({CLOCK}|-:--:--) · ", ln) for ln in rows), rows
    assert not re.search(r"ETA \d+s", r.stderr)  # no raw seconds anywhere
    if r.exit_code == 0:
        assert isinstance(strict_json(r.stdout), dict)


def test_run_json_stdout_stays_one_object_while_every_step_prints(scripted, tmp_path: Path) -> None:
    home, src, out, model = tmp_path / "home", tmp_path / "in.jsonl", tmp_path / "out.jsonl", scripted("refine")
    src.write_text("".join(json.dumps({"instruction": f"Plan day {i} in Hangzhou."}) + "\n" for i in range(4)), encoding="utf-8")
    r = cli(home, "run", "refine", "-i", src, "-o", out, "-m", model, *SCRIPTED, "--json")
    assert r.exit_code == 0, r.output
    data = strict_json(r.stdout)
    assert data["this_run"]["done"] == 4
    err = r.stderr.splitlines()
    assert f"counting rows of {src}: {size_text(src.stat().st_size)}" in err
    assert f"loading model {model}: {size_text(model.stat().st_size)}" in err
    rows = [ln for ln in err if re.match(r"\d+/4 rows · ", ln)]
    assert rows[-1].startswith("4/4 rows · ") and "ETA 0:00:00" in rows[-1]

    # at the default interval (10 s) these quick phases leave a log as it was: no line of theirs
    out.unlink()
    quiet = cli(home, "run", "refine", "-i", src, "-o", out, "-m", model, *SCRIPTED, "--json", interval="")
    assert quiet.exit_code == 0, quiet.output
    assert strict_json(quiet.stdout)["this_run"]["done"] == 4
    assert not [ln for ln in quiet.stderr.splitlines() if ln.startswith(("counting rows", "loading model", "hashing"))], quiet.stderr


# --- grading and judging -------------------------------------------------------------------------------


def test_grade_and_judge_show_answers_and_pairs_done_of_all(scripted, tmp_path: Path) -> None:
    home, answers = tmp_path / "home", tmp_path / "answers.jsonl"
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Plan day {i} in Hangzhou."}) + "\n" for i in range(2)), encoding="utf-8")
    ran = cli(home, "run", "respond", "-i", src, "-o", answers, "-m", scripted("answers"), "--samples", "2",
              "--prompt-format", "qwen2-chatml", "--temperature", "0.9", "--max-tokens", "64", "--threads", "1", interval="")
    assert ran.exit_code == 0, ran.output
    kept = sum(len(json.loads(line)["responses"]) for line in answers.read_text(encoding="utf-8").splitlines())

    graded = cli(home, "grade", answers, "--judge", scripted("grader"), "--max-tokens", "32", "--threads", "1", "--json")
    assert graded.exit_code == 0, graded.output
    assert strict_json(graded.stdout)["graded"] == kept
    grading = lines_of(graded.stderr, "grading answers: ")
    assert grading[0] == f"grading answers: {kept} answers"
    steps = [re.fullmatch(rf"grading answers: +[\d.]+% · (\d+)/{kept} answers · elapsed {CLOCK} · ETA {CLOCK}", ln)
             for ln in grading[1:-1]]
    assert all(steps) and [int(m.group(1)) for m in steps if m] == list(range(1, kept + 1)), grading
    assert re.fullmatch(rf"grading answers: done in {CLOCK} · {kept} answers", grading[-1])
    # the judge's load comes before its grading line, never inside it
    err = graded.stderr.splitlines()
    assert err.index(grading[0]) > max(i for i, ln in enumerate(err) if ln.startswith("loading model "))

    judged = cli(home, "judge", answers, answers, "--judge", scripted("judge"), "--max-tokens", "32", "--threads", "1", "--json")
    assert judged.exit_code == 0, judged.output
    n = strict_json(judged.stdout)["n"]
    assert n == 2
    judging = lines_of(judged.stderr, "judging pairs: ")
    assert judging[0] == "judging pairs: 2 pairs"  # the first pair judged opens the line
    assert re.fullmatch(rf"judging pairs: 100\.0% · 2/2 pairs · elapsed {CLOCK} · ETA 0:00:00", judging[1]), judging
    assert re.fullmatch(rf"judging pairs: done in {CLOCK} · 2 pairs", judging[2]) and len(judging) == 3

    again = cli(home, "grade", answers, "--judge", scripted("grader"), "--max-tokens", "32", "--threads", "1", interval="")
    assert again.exit_code == 0 and not lines_of(again.stderr, "grading answers")  # nothing left to grade: no phase
