"""The CLI shell: version, help, the family registry."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from localaug import __version__
from localaug.cli.main import app
from localaug.family import registry
from localaug.family.registry import tomllib

runner = CliRunner()
MODELS_DIR = Path(__file__).resolve().parents[1] / "localaug" / "models"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"localaug {__version__}"


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        assert command.callback is not None
        if command.hidden:  # the aliases list and ls, named in the help of models
            continue
        # Typer names a command after its function, with dashes for underscores.
        assert (command.name or command.callback.__name__.replace("_", "-")) in result.output
    for group in app.registered_groups:
        assert group.name and group.name in result.output


def test_family_matches_manifests_on_disk() -> None:
    on_disk = {tomllib.loads(p.read_text())["name"] for p in MODELS_DIR.glob("*.toml")}
    assert on_disk == {s.name for s in registry.family()}
    assert len(on_disk) == 7  # five augmenters, two responders


def test_manifests_carry_the_vendor_defaults() -> None:
    for spec in registry.family():
        if spec.task == "respond":  # Qwen2-Instruct, with its generation_config.json sampling
            assert spec.repo in ("Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-7B-Instruct")
            assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k) == (0.7, 0.8, 20)
        else:
            assert spec.repo.startswith("alibaba-pai/Qwen2-")
            assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k, spec.sampling.max_tokens) == (0.5, 0.95, 50, 2048)
        assert set(spec.stop) == {"<|im_end|>", "<|endoftext|>"}
        assert spec.architecture.tied_embeddings == (spec.parameters == "1.5B")
        assert spec.task in registry.TASKS


def test_models_json_lists_the_family(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path))  # the user's own store is not this test's business
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    names = {m["name"] for m in json.loads(result.output)["family"]}
    assert {"qwen2-refine:1.5b", "qwen2-exp:7b", "qwen2-response-exp:7b"} <= names


# The README's family table, typed out: name -> Hugging Face repo.
README_FAMILY = {
    "qwen2-refine:1.5b": "alibaba-pai/Qwen2-1.5B-Instruct-Refine",
    "qwen2-refine:7b": "alibaba-pai/Qwen2-7B-Instruct-Refine",
    "qwen2-exp:1.5b": "alibaba-pai/Qwen2-1.5B-Instruct-Exp",
    "qwen2-exp:7b": "alibaba-pai/Qwen2-7B-Instruct-Exp",
    "qwen2-response-exp:7b": "alibaba-pai/Qwen2-7B-Instruct-Response-Exp",
    "qwen2-instruct:1.5b": "Qwen/Qwen2-1.5B-Instruct",
    "qwen2-instruct:7b": "Qwen/Qwen2-7B-Instruct",
}


def test_lookup_by_name_and_by_repo_id() -> None:
    for name, repo in README_FAMILY.items():
        assert registry.get(name).repo == repo
        assert registry.get(repo).name == name
        assert registry.get(repo.upper()).name == name  # lookups ignore case


def test_unknown_model_name_is_a_one_line_error_listing_the_family(tmp_path: Path) -> None:
    env = {"LOCALAUG_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = runner.invoke(app, ["refine", "hello", "-m", "qwen2-refine:3b"], env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "unknown model 'qwen2-refine:3b'" in line
    assert all(name in line for name in README_FAMILY), line
    assert not (tmp_path / "home").exists()  # nothing pulled, nothing created


def test_inspect_of_a_missing_file_is_a_one_line_error() -> None:
    result = runner.invoke(app, ["inspect", "/nonexistent/file.gguf"])
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "/nonexistent/file.gguf does not exist" in line
