"""README claims about the commands, checked on real models through the real CLI.

- "Errors are one line on stderr; exit codes are 0 ok, 1 failure, 2 usage error ... `localaug
  --debug …` shows tracebacks" (a real child process: Typer prints tracebacks only there).
- `refine`: "`--compare` shows original and refined side by side; `-` (or a pipe) reads stdin".
- `expand`: "a shortfall is reported and exits 1".
- `inspect`: architecture, tokenizer, chat template of the real SmolLM2 GGUF, against gguf-py's
  GGUFReader and the model's published shape.

Generation runs on the scripted model (tests/scripted_fixture.py), which writes known texts: the
expected outputs are the script's strings, not anything the code under test computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scripted_fixture import SCRIPTS
from typer.testing import CliRunner

from localaug.cli.main import app

REPO = Path(__file__).resolve().parents[1]
REFINED = SCRIPTS["refine"][0]
# The scripted models are family-shaped Qwen2 files with no provenance: force the ChatML format.
CHATML = ["--prompt-format", "qwen2-chatml", "--threads", "2", "--ctx", "512"]
runner = CliRunner()


def chatml(user: str) -> str:
    """The Qwen2 ChatML prompt of one user turn, typed out (see docs/formats.md)."""
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def child(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``localaug ARGS`` in a child process, as a user runs it (stdin a pipe, or /dev/null)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "localaug.cli", *map(str, args)], cwd=REPO, env=env, text=True,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=240)


@pytest.fixture(scope="module")
def refine_model(scripted) -> Path:
    return scripted("refine")


@pytest.fixture(scope="module")
def qwen2_tokenizer(qwen2_tied: Path):
    """The Hugging Face tokenizer the scripted models were built with (the same tokenizer.json)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen2_tied / "tokenizer.json"))


# --------------------------------------------------------------------------- errors and --debug


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"

    failure = child("inspect", missing)
    assert failure.returncode == 1, failure.stderr
    assert failure.stdout == ""
    [line] = failure.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(missing) in line and "does not exist" in line

    traced = child("--debug", "inspect", missing)
    assert traced.returncode == 1, traced.stderr
    assert "Traceback" in traced.stderr and "GGUFError" in traced.stderr
    assert "read_metadata" in traced.stderr  # the frame that raised: a real traceback, not the message again
    assert len(traced.stderr.strip().splitlines()) > 5

    usage = child("refine", "hi", "--device", "tpu", "-m", missing)
    assert usage.returncode == 2, usage.stderr
    [line] = usage.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--device" in line and "tpu" in line

    unknown_option = child("refine", "--no-such-option")  # the parser's own usage errors: one line, exit 2 too
    assert unknown_option.returncode == 2 and unknown_option.stdout == ""
    [line] = unknown_option.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--no-such-option" in line and "localaug refine --help" in line
    missing_arg = child("run", "refine", "-o", tmp_path / "o.jsonl")
    assert missing_arg.returncode == 2 and len(missing_arg.stderr.strip().splitlines()) == 1
    assert "--input" in missing_arg.stderr

    ours = child("refine", "hi", "--gpu-layers", "many", "-m", missing)  # a usage error localaug raises itself
    assert ours.returncode == 2 and ours.stderr.strip().splitlines() == [
        "error: --gpu-layers 'many': give a number or 'all'"]  # the setting named by its flag
    debug_usage = child("--debug", "refine", "hi", "--gpu-layers", "many", "-m", missing)  # --debug keeps the exit code
    assert debug_usage.returncode == 2 and "Traceback" in debug_usage.stderr


def test_exit_0_on_success(smollm2: Path) -> None:
    ok = child("inspect", smollm2, "--json")
    assert ok.returncode == 0 and ok.stderr == ""
    assert json.loads(ok.stdout)["architecture"] == "llama"


# --------------------------------------------------------------------------- refine: --compare, stdin


def test_refine_compare_shows_original_and_refined_side_by_side(refine_model: Path) -> None:
    text = "Create a travel guide for Hangzhou."
    result = runner.invoke(app, ["refine", text, "--compare", "-m", str(refine_model), "--seed", "1", *CHATML],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    [header] = [ln for ln in lines if "original" in ln]
    assert "refined" in header and header.index("original") < header.index("refined")
    head, *tail = REFINED.split("\n")  # the script's reply holds a blank line: three lines in its cell
    [row] = [ln for ln in lines if text in ln]
    assert head in row and row.index(text) < row.index(head), row  # one table row: original left, refined right
    assert any(tail[-1] in ln for ln in lines[lines.index(row):]), result.stdout


def test_refine_compare_shows_bracketed_text_verbatim(refine_model: Path) -> None:
    for text in ("What does [/INST] mean in a Llama prompt?", "Explain [bold] and [red] in Rich markup."):
        result = runner.invoke(app, ["refine", text, "--compare", "-m", str(refine_model), "--seed", "1", *CHATML],
                               env={"COLUMNS": "200"})
        assert result.exit_code == 0, (text, result.exception)
        assert any(text in ln for ln in result.stdout.splitlines()), result.stdout


def test_refine_reads_stdin_for_dash_and_for_a_pipe(refine_model: Path, qwen2_tokenizer) -> None:
    text = "写一首关于秋天的诗。"
    want_prompt = len(qwen2_tokenizer.encode(chatml(text), add_special_tokens=False).ids)
    for args in (["refine", "-"], ["refine"]):  # '-', and no TEXT with stdin not a terminal
        result = runner.invoke(app, [*args, "-m", str(refine_model), "--seed", "7", "--json", *CHATML], input=text + "\n")
        assert result.exit_code == 0, (args, result.output)
        data = json.loads(result.stdout)
        assert (data["input"], data["output"], data["finish_reason"]) == (text, REFINED, "stop"), args
        assert data["prompt_tokens"] == want_prompt, args  # exactly the stdin text went into the prompt

    # A real pipe into a real process: `echo TEXT | localaug refine --json`.
    piped = child("refine", "-m", refine_model, "--json", *CHATML, stdin=text + "\n")
    assert piped.returncode == 0, piped.stderr
    data = json.loads(piped.stdout)
    assert (data["input"], data["output"], data["prompt_tokens"]) == (text, REFINED, want_prompt)


# --------------------------------------------------------------------------- expand: shortfall


def test_expand_shortfall_is_reported_and_exits_1(scripted) -> None:
    """The scripted expand model knows 8 instructions: asking for 9 must fall short after 3n samples."""
    model = str(scripted("expand"))
    result = runner.invoke(app, ["expand", "Plan a weekend in Paris.", "-n", "9", "-m", model, "--seed", "0", "--json",
                                 *CHATML])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    got = data["instructions"]
    assert 1 <= len(got) <= 8 and len(set(got)) == len(got)
    assert set(got) <= set(SCRIPTS["expand"])
    assert data["samples"] == 27  # "more samples drawn up to 3n"
    assert data["shortfall"] == 9 - len(got)
    assert sum(data["rejected"].values()) == 27 - len(got)  # each sample is one instruction: kept or rejected

    # For a person: the shortfall as a warning on stderr. Here every sample hits --max-tokens 3, so none is
    # kept and each is counted (cap max(3n, n+4) = 6 samples for -n 2).
    shown = runner.invoke(app, ["expand", "Plan a weekend in Paris.", "-n", "2", "-m", model, "--seed", "0",
                                "--max-tokens", "3", *CHATML])
    assert shown.exit_code == 1, shown.output
    assert shown.stdout == ""
    [warning] = shown.stderr.strip().splitlines()
    assert warning.startswith("warning: only 0/2 from 6 samples (rejected: truncated 6)"), warning


# --------------------------------------------------------------------------- inspect


def test_inspect_smollm2_against_gguf_reader(smollm2: Path) -> None:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(smollm2)

    def field(key: str):
        f = reader.get_field(key)
        assert f is not None, key
        return f.contents()

    result = runner.invoke(app, ["inspect", str(smollm2), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # SmolLM2-135M: a llama-architecture model, 30 blocks of width 576, a 49152-token vocabulary.
    assert data["architecture"] == field("general.architecture") == "llama"
    assert data["tokenizer"]["tokens"] == len(field("tokenizer.ggml.tokens")) == 49152
    assert data["tokenizer"]["model"] == field("tokenizer.ggml.model")
    assert data["hparams"]["block_count"] == field("llama.block_count") == 30
    assert data["hparams"]["embedding_length"] == field("llama.embedding_length") == 576
    template = field("tokenizer.chat_template")
    assert data["chat_template"] == template and "<|im_start|>" in template
    assert data["file_type"] == "Q4_1" and field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_1
    assert data["tensor_count"] == len(reader.tensors)
    assert data["tensor_types"] == dict(Counter(t.tensor_type.name for t in reader.tensors))
    assert data["parameter_count"] == sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert 130e6 < data["parameter_count"] < 140e6  # "135M"
    assert data["size_bytes"] == smollm2.stat().st_size

    table = runner.invoke(app, ["inspect", str(smollm2)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    rows = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in table.stdout.splitlines() if ln.count("│") == 3}
    assert rows["architecture"] == "llama" and rows["quant type"] == "Q4_1" and rows["block_count"] == "30"
    assert "49152 tokens" in rows["tokenizer"]
    assert rows["chat template"].startswith(template[:40])
