"""The convert command in a real pseudo-terminal: a live Rich progress bar, then the result line."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pexpect


def _localaug() -> str:
    exe = Path(sys.executable).with_name("localaug")
    return str(exe) if exe.exists() else (shutil.which("localaug") or "localaug")


def test_convert_shows_a_live_progress_bar_on_a_tty(qwen2_tied: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    env = dict(os.environ, COLUMNS="120", TERM="xterm-256color")
    child = pexpect.spawn(_localaug(), ["convert", str(qwen2_tied), "-q", "Q4_K_M", "-o", str(out)],
                          env=env, encoding="utf-8", timeout=180, dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before or "")
    assert child.exitstatus == 0, screen
    assert "writing BF16" in screen and "quantizing Q4_K_M" in screen
    assert "━" in screen  # the bar itself: Rich draws it only on a terminal
    assert re.search(r"100\.0%", screen)
    assert re.search(r"\d+ tensors", screen)
    assert re.search(r"ETA \d+:\d\d:\d\d", screen) and re.search(r"done in \d+:\d\d:\d\d", screen)  # h:mm:ss
    assert not re.search(r"(ETA|done in) \d+(\.\d+)?s", screen)  # never raw seconds in progress
    flat = re.sub(r"\s+", "", screen)
    assert "wrote" in screen and re.sub(r"\s+", "", str(out)) in flat
    assert out.is_file()


def test_refine_interactive_loop_in_a_terminal(smollm2: Path) -> None:
    env = dict(os.environ, COLUMNS="100", TERM="xterm-256color")
    child = pexpect.spawn(_localaug(), ["refine", "-m", str(smollm2), "--seed", "1", "--max-tokens", "24", "--threads", "2"],
                          env=env, encoding="utf-8", timeout=240, dimensions=(40, 100))
    child.expect("Ctrl-D quits")
    child.expect("instruction>")
    child.sendline("Create a travel guide for Hangzhou.")
    # the final panel (its title, then the footer), or, for a reply a job would not keep (an echo,
    # cut at --max-tokens), why; either way the loop goes on
    if child.expect(["refined", "not a refinement"]) == 0:
        child.expect(r"tokens, [\d.]+ tok/s")
    else:
        child.expect("try another --seed")
    child.expect("instruction>")  # back at the prompt for the next one
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_grade_draws_one_live_line_with_an_eta_on_a_tty(scripted, tmp_path: Path) -> None:
    """Grading on a terminal: a live bar (redrawn in place, not a new line per answer) with n/N
    answers and an h:mm:ss ETA, then "done in"."""
    import json

    from typer.testing import CliRunner

    from localaug.cli.main import app

    src, answers = tmp_path / "in.jsonl", tmp_path / "answers.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Plan day {i}."}) + "\n" for i in range(3)), encoding="utf-8")
    env = dict(os.environ, LOCALAUG_HOME=str(tmp_path / "home"), COLUMNS="120", TERM="xterm-256color")
    ran = CliRunner().invoke(app, ["run", "respond", "-i", str(src), "-o", str(answers), "-m", str(scripted("answers")),
                                   "--prompt-format", "qwen2-chatml", "--max-tokens", "64", "--threads", "1"], env=env)
    assert ran.exit_code == 0, ran.output
    child = pexpect.spawn(_localaug(), ["grade", str(answers), "--judge", str(scripted("grader")), "--max-tokens", "32",
                                        "--threads", "1"], env=env, encoding="utf-8", timeout=240, dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before or ""
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert child.exitstatus == 0, screen
    assert "grading answers" in screen and "━" in screen
    assert re.search(r"grading answers\s+━+\s+100\.0%\s+3/3 answers\s+done in \d+:\d\d:\d\d", screen), screen
    assert "\x1b[" in raw  # redrawn in place (cursor moves), not printed line after line
    assert not re.search(r"judging: \d+/\d+", screen)  # the old counter's line per 0.2 s is gone
