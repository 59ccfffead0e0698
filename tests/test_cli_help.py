"""What a new user meets first: ``-h`` on every command, an example in every command's help, on/off
options shown as flags, every choice listed (from the product's own tables), ``ls`` as ``models``,
``inspect`` by name, usage errors as one line, install hints that work from a checkout too."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from localaug.cli.main import app
from localaug.convert import OUTPUT_TYPES
from localaug.family.judging import ASPECTS
from localaug.jobs.dataio import EXPORT_FORMATS, RECORD_FORMATS, RESPONSE_FORMATS

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def commands() -> dict[str, Any]:
    """Every command of the app by its words ("bundle export"), aliases included."""
    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found[prefix + name] = command

    walk(typer.main.get_command(app), "")
    return found


def help_of(words: str, flag: str = "-h") -> str:
    result = runner.invoke(app, [*words.split(), flag], env=WIDE)
    assert result.exit_code == 0, (words, result.output)
    return result.stdout


def test_the_commands_a_user_expects_are_there() -> None:
    assert set(commands()) == {
        "convert", "inspect", "pull", "models", "list", "ls", "rm", "export-modelfile", "bundle export", "bundle import",
        "refine", "expand", "pairs", "doctor", "bench", "run", "merge", "grade", "export", "report", "judge", "serve"}


@pytest.mark.parametrize("words", sorted(commands()))
def test_dash_h_shows_the_help_with_an_example(words: str) -> None:
    short = help_of(words)
    assert short == help_of(words, "--help")
    shown = "ls" if words in ("models", "list") else words  # the aliases show the help of models, whose example uses ls
    assert f"localaug {shown}" in short.split("Example:")[1], short


def test_the_group_and_the_app_take_dash_h_too() -> None:
    assert "bundle" in help_of("") and "export" in help_of("bundle")


@pytest.mark.parametrize("words", sorted(commands()))
def test_on_off_options_show_as_flags(words: str) -> None:
    """Typer shows "<bool>" after a flag, as if it took a value; here a flag stands alone."""
    text = help_of(words)
    flags = [p.opts[0] for p in commands()[words].params if getattr(p, "is_flag", False)]
    assert flags and all(f in text for f in flags)
    assert "<bool>" not in text


def test_a_flag_takes_no_value() -> None:
    result = runner.invoke(app, ["run", "refine", "-i", "x.jsonl", "-o", "y.jsonl", "--retry-failed", "true"])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "unexpected extra argument" in line.lower() and "true" in line


def option_row(text: str, flag: str) -> str:
    """The row of ``flag`` in a help text (its type and help, over as many lines as it wraps)."""
    lines = [ln.strip("│ ").lstrip("* ") for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln == flag or ln.startswith(flag + " "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("-", "╰"))), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


@pytest.mark.parametrize(("words", "flag", "choices"), [
    ("convert", "--quant", OUTPUT_TYPES), ("pull", "--quant", OUTPUT_TYPES), ("inspect", "--quant", OUTPUT_TYPES),
    ("rm", "--quant", OUTPUT_TYPES), ("bundle export", "--quant", OUTPUT_TYPES),
    ("export-modelfile", "--quant", OUTPUT_TYPES),
    ("judge", "--aspect", tuple(ASPECTS)), ("grade", "--aspect", tuple(ASPECTS)),
    ("run", "--format", (*RECORD_FORMATS, *EXPORT_FORMATS)), ("merge", "--format", (*RECORD_FORMATS, *EXPORT_FORMATS)),
    ("export", "--format", RESPONSE_FORMATS),
    ("run", "--device", ("auto", "cpu", "cuda", "metal")), ("run", "--dedup", ("row", "exact", "minhash")),
    ("run", "--rule", ("scores", "pairwise")), ("refine", "--prompt-format", ("qwen2-chatml", "teacher")),
])
def test_every_choice_is_listed(words: str, flag: str, choices: tuple[str, ...]) -> None:
    shown = option_row(help_of(words), flag)
    assert all(re.search(rf"(?<![A-Za-z0-9_]){re.escape(c)}(?![A-Za-z0-9_])", shown) for c in choices), (flag, shown)


def test_a_value_outside_the_choices_is_one_line_naming_them() -> None:
    result = runner.invoke(app, ["judge", "a.jsonl", "b.jsonl", "--judge", "m.gguf", "--aspect", "style"])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: Invalid value for '--aspect': 'style' is not one of")
    assert all(f"'{a}'" in line for a in ASPECTS) and "localaug judge --help" in line


def test_ls_is_models(tmp_path: Path) -> None:
    env = {"LOCALAUG_HOME": str(tmp_path), **WIDE}
    shown = [runner.invoke(app, [words], env=env) for words in ("models", "list", "ls")]
    assert all(r.exit_code == 0 for r in shown) and shown[0].stdout == shown[1].stdout == shown[2].stdout
    assert "qwen2-refine:1.5b" in shown[0].stdout and "the store" in shown[0].stdout


def test_inspect_by_family_name_needs_it_stored_and_never_pulls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["inspect", "qwen2-refine:1.5b"], env={"LOCALAUG_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: qwen2-refine:1.5b is neither a file nor in the store: localaug pull qwen2-refine:1.5b brings it in "
        "(localaug models lists what is stored)"]
    assert not (home / "models").exists()  # nothing pulled


def test_a_missing_extra_names_the_wheel_and_the_checkout_install(tmp_path: Path, monkeypatch) -> None:
    """matplotlib and scikit-learn are installed here: report them missing to see the hint."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("matplotlib", "sklearn") else real(name, *a))
    out = tmp_path / "out.jsonl"
    out.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line == ("error: localaug report draws with matplotlib, scikit-learn, openTSNE and rapidfuzz: pip install 'localaug[report]' "
                    "(or pip install -e '.[report]' from a checkout)")


def test_the_gpu_hint_pins_the_supported_llama_cpp_python(smollm2: Path) -> None:
    from localaug.runtime.engine import gpu_offload_supported

    if gpu_offload_supported():
        pytest.skip("this llama.cpp build has a GPU backend: --device cuda is no error here")
    result = runner.invoke(app, ["refine", "hi", "-m", str(smollm2), "--device", "cuda"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        'error: --device cuda: this llama.cpp build has no GPU backend; reinstall with CMAKE_ARGS="-DGGML_CUDA=on" pip '
        'install --force-reinstall --no-cache-dir "llama-cpp-python==0.3.36"']


def test_the_pinned_llama_cpp_python_is_the_one_hints_name() -> None:
    from localaug.core.install import LLAMA_CPP_PYTHON

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r'"llama-cpp-python==([0-9.]+)"', pyproject) == [LLAMA_CPP_PYTHON]
    assert f"llama-cpp-python=={LLAMA_CPP_PYTHON}" in (Path(__file__).resolve().parents[1] / "README.md").read_text()


RUN_PANELS = {
    "Input": ["--input", "--field", "--response-field", "--input-field", "--limit"],
    "Output and training": ["--output", "--format", "--retry-failed", "--json"],
    "Model and prompt": ["--model", "--prompt-format", "--system", "--examples"],
    "Sampling": ["-n", "--samples", "--max-samples", "--temperature", "--top-p", "--top-k", "--max-tokens", "--seed"],
    "Filters": ["--dedup", "--minhash-threshold", "--rouge-l", "--echo", "--min-chars", "--max-chars", "--keep-refusals"],
    "Engine": ["--device", "--gpu-layers", "--threads", "--n-ctx", "--parallel"],  # --ctx: the same flag
    "Scale-out (shards, Ray)": ["--shard", "--ray", "--actors", "--num-cpus", "--num-gpus"],
    "Respond and judge (training files with answers)": [
        "--respond-with", "--respond-system", "--respond-max-tokens", "--respond-samples", "--judge", "--rule", "--margin",
        "--min-score", "--judge-max-tokens"],
    "Settings from files": ["--config", "--replay"],
}


def panels(text: str) -> dict[str, list[str]]:
    """The options of each --help panel, by the panel's title, in order."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        title = re.match(r"╭─ (.+?) ─", line)
        if title:
            current = found.setdefault(title.group(1), [])
        elif line.startswith("╰"):
            current = None
        elif current is not None:
            first = line.strip("│ ").lstrip("* ").split(" ")[0].split(",")[0]  # --n-ctx,--ctx: its longest name
            if first.startswith("-"):
                current.append(first)
    return found


def test_run_help_groups_its_options_in_panels() -> None:
    shown = panels(help_of("run"))
    assert shown == {"Arguments": [], "Options": ["--help"], **RUN_PANELS}
    names = {max(p.opts, key=len) for p in commands()["run"].params if p.param_type_name == "option"}
    assert names == {o for opts in RUN_PANELS.values() for o in opts}  # every option of run is in a panel


def test_help_into_a_closed_pipe_ends_without_a_traceback() -> None:
    """`localaug run --help | head -1`: the reader goes away before the help is written."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "localaug.cli", "run", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads: the first write meets a broken pipe
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and proc.returncode in (0, 1, 120), err.decode(errors="replace")
