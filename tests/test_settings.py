"""Where ``localaug run``'s settings come from: flags, a ``--config`` TOML file, ``LOCALAUG_*``
environment defaults, and ``--replay`` of a recorded run; and that the command line, the Python API
and the server build the same settings objects for the same inputs (docs/configuration.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer.main
from scripted_fixture import SCRIPTS
from typer.testing import CliRunner

from localaug.augment.settings import EngineSettings, FilterSettings, SamplingSettings
from localaug.cli.jobs import run_request
from localaug.cli.main import app
from localaug.cli.serve import serve_settings
from localaug.core.errors import UsageError
from localaug.jobs.options import JobOptions

runner = CliRunner()
ENV = ("LOCALAUG_MODEL", "LOCALAUG_DEVICE", "LOCALAUG_THREADS", "LOCALAUG_GPU_LAYERS", "LOCALAUG_HOST", "LOCALAUG_PORT")
# every key a run's config file may hold: its flags without dashes (--ctx and --n-ctx both), and the task
KNOWN = ("actors, ctx, dedup, device, echo, examples, field, format, gpu_layers, input, input_field, judge, judge_max_tokens, "
         "keep_refusals, limit, margin, max_chars, max_samples, max_tokens, min_chars, min_score, minhash_threshold, model, "
         "n, n_ctx, num_cpus, num_gpus, output, parallel, prompt_format, ray, respond_max_tokens, respond_samples, "
         "respond_system, respond_with, response_field, retry_failed, rouge_l, rule, samples, seed, shard, system, task, "
         "temperature, threads, top_k, top_p")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))


def command(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def parsed(*args: str):
    """``localaug run ARGS`` as the command builds it (flags, files, environment), nothing run."""
    return run_request(command("run").make_context("run", list(args)))


def one_line_error(result) -> str:
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- precedence


def test_a_flag_overrides_the_file_and_the_file_fills_the_rest(tmp_path: Path) -> None:
    cfg = write(tmp_path / "run.toml", 'task = "expand"\ninput = "seeds.jsonl"\noutput = "out.jsonl"\n'
                                       "n = 5\n[sampling]\nmax_tokens = 256\ntemperature = 0.25\n"
                                       '[engine]\nthreads = 3\nctx = 1024\ngpu_layers = 7\ndevice = "cpu"\n'
                                       "[filters]\nrouge_l = 0.5\nkeep_refusals = true\n")
    r = parsed("--config", str(cfg), "--max-tokens", "64", "-n", "2")
    assert (r.task, r.input, r.output, r.fmt) == ("expand", "seeds.jsonl", Path("out.jsonl"), "jsonl")
    assert r.options.n == 2  # the flag, not the file's 5
    assert r.options.sampling == SamplingSettings(temperature=0.25, max_tokens=64)
    assert r.options.engine == EngineSettings(device="cpu", gpu_layers=7, threads=3, n_ctx=1024)
    assert r.options.filters == FilterSettings(rouge_l=0.5, keep_refusals=True)
    # the task argument given on the command line wins too
    assert parsed("refine", "--config", str(cfg)).task == "refine"


def test_the_file_overrides_the_environment_which_overrides_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALAUG_THREADS", "5")
    monkeypatch.setenv("LOCALAUG_DEVICE", "cpu")
    monkeypatch.setenv("LOCALAUG_GPU_LAYERS", "all")
    monkeypatch.setenv("LOCALAUG_MODEL", "mine.gguf")
    base = ("refine", "-i", "a.jsonl", "-o", "b.jsonl")
    r = parsed(*base)
    assert r.options.engine == EngineSettings(device="cpu", gpu_layers="all", threads=5)
    assert r.options.model == "mine.gguf"
    cfg = write(tmp_path / "c.toml", 'threads = 2\nmodel = "other.gguf"\n')
    r = parsed(*base, "--config", str(cfg))
    assert (r.options.engine.threads, r.options.engine.device, r.options.model) == (2, "cpu", "other.gguf")
    r = parsed(*base, "--config", str(cfg), "--threads", "9", "-m", "flag.gguf")
    assert (r.options.engine.threads, r.options.model) == (9, "flag.gguf")
    monkeypatch.delenv("LOCALAUG_THREADS")
    assert parsed(*base).options.engine.threads is None  # the default: all cores


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "message"), [
    ("[sampling]\nmax_tokenz = 256\n", f"unknown setting 'max_tokenz'; known: {KNOWN}"),
    ("json = true\n", f"unknown setting 'json'; known: {KNOWN}"),
    ('max_tokens = "256"\n', "max_tokens must be a whole number, not '256'"),
    ("max_tokens = 2.5\n", "max_tokens must be a whole number, not 2.5"),
    ("temperature = true\n", "temperature must be a number, not True"),
    ('device = "tpu"\n', "device must be one of auto, cpu, cuda, metal, not 'tpu'"),
    ("keep_refusals = 1\n", "keep_refusals must be true or false, not 1"),
    ('gpu_layers = "many"\n', "gpu_layers must be a whole number or \"all\", not 'many'"),
    ("model = 3\n", "model must be a string, not 3"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    result = runner.invoke(app, ["run", "refine", "-i", "a.jsonl", "-o", "b.jsonl", "--config", str(cfg)])
    assert one_line_error(result) == f"error: config file {cfg}: {message}"


def test_a_config_file_that_is_not_toml_or_too_big_is_refused(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.toml", "max_tokens = \n")
    line = one_line_error(runner.invoke(app, ["run", "--config", str(broken)]))
    assert line.startswith(f"error: config file {broken} is not valid TOML (")
    big = write(tmp_path / "big.toml", "# " + "x" * (1 << 20) + "\n")
    assert one_line_error(runner.invoke(app, ["run", "--config", str(big)])) == (
        f"error: config file {big} is over 1048576 bytes: a settings file is a few lines")
    missing = tmp_path / "none.toml"
    assert one_line_error(runner.invoke(app, ["run", "--config", str(missing)])) == f"error: config file {missing} does not exist"
    assert one_line_error(runner.invoke(app, ["run", "refine", "-o", "b.jsonl"])) == (
        "error: missing --input: give it on the command line or in a --config file (or --replay a run)")


@pytest.mark.parametrize(("name", "value", "line"), [
    ("LOCALAUG_THREADS", "four", "error: Invalid value for '--threads' (env var: 'LOCALAUG_THREADS'): Input should be a "
                                 "valid integer, unable to parse string as an integer (see: localaug run --help)"),
    ("LOCALAUG_GPU_LAYERS", "many", "error: Invalid value for '--gpu-layers' (env var: 'LOCALAUG_GPU_LAYERS'): 'many': give "
                                    "a number or 'all' (see: localaug run --help)"),
    ("LOCALAUG_DEVICE", "tpu", "error: Invalid value for '--device' (env var: 'LOCALAUG_DEVICE'): 'tpu' is not one of "
                               "'auto', 'cpu', 'cuda', 'metal'. (see: localaug run --help)"),
])
def test_a_bad_environment_default_is_one_line_naming_the_variable(name: str, value: str, line: str) -> None:
    result = runner.invoke(app, ["run", "refine", "-i", "a.jsonl", "-o", "b.jsonl"], env={name: value})
    assert one_line_error(result) == line


def test_a_bad_port_in_the_environment_names_it() -> None:
    result = runner.invoke(app, ["serve"], env={"LOCALAUG_PORT": "70000"})
    assert one_line_error(result) == ("error: Invalid value for '--port' (env var: 'LOCALAUG_PORT'): Input should be less "
                                      "than or equal to 65535 (see: localaug serve --help)")


def test_help_shows_the_environment_defaults() -> None:
    shown = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).stdout
    for name in ("LOCALAUG_MODEL", "LOCALAUG_DEVICE", "LOCALAUG_THREADS", "LOCALAUG_GPU_LAYERS"):
        assert f"[env var: {name}]" in shown
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).stdout
    for name in ENV:
        assert f"[env var: {name}]" in shown


# --------------------------------------------------------------------------- one object at every layer


def test_the_cli_the_api_and_the_server_build_the_same_settings() -> None:
    engine_flags = ["--device", "cpu", "--gpu-layers", "3", "--threads", "2", "--ctx", "512", "--parallel", "4"]
    cli = parsed("refine", "-i", "a.jsonl", "-o", "b.jsonl", "-m", "m.gguf", "--seed", "7", "--temperature", "0.3",
                 "--max-tokens", "99", "--rouge-l", "0.5", "--keep-refusals", "--min-chars", "2", "--dedup", "minhash",
                 *engine_flags).options
    api = JobOptions.of("refine", model="m.gguf", device="cpu", gpu_layers=3, threads=2, n_ctx=512, parallel=4, seed=7,
                        temperature=0.3, max_tokens=99, rouge_l=0.5, keep_refusals=True, min_chars=2, dedup="minhash")
    whole = JobOptions.of("refine", model="m.gguf", engine=EngineSettings("cpu", 3, 2, 512, 4),
                          sampling=SamplingSettings(temperature=0.3, max_tokens=99, seed=7),
                          filters=FilterSettings(rouge_l=0.5, keep_refusals=True, min_chars=2, dedup="minhash"))
    older = JobOptions.of("refine", model="m.gguf", device="cpu", gpu_layers=3, threads=2, n_ctx=512, parallel=4, seed=7,
                          temperature=0.3, max_tokens=99, threshold=0.5, refusals=False, min_chars=2, dedup="minhash")
    assert cli == api == whole == older  # compare=False: the recorded command line is not a setting
    ctx = command("serve").make_context("serve", ["-m", "m.gguf", *engine_flags])
    server = serve_settings(ctx.params)
    assert server.engine == cli.engine == EngineSettings(device="cpu", gpu_layers=3, threads=2, n_ctx=512, parallel=4)
    assert server.model == ("m.gguf",)
    with pytest.raises(UsageError) as e:
        JobOptions.of("refine", threshold=0.5, rouge_l=0.6)
    assert str(e.value) == "threshold and rouge_l name one setting: give rouge_l alone"


# --------------------------------------------------------------------------- replay


SAMPLING = ["--prompt-format", "qwen2-chatml", "--temperature", "0.8", "--seed", "11", "--max-tokens", "64",
            "--threads", "1", "--parallel", "1"]


def rows(path: Path, n: int) -> Path:
    return write(path, "".join(json.dumps({"instruction": f"Describe a walk along river number {i}."}) + "\n" for i in range(n)))


def test_replay_resumes_the_same_run_and_writes_the_same_bytes(scripted, tmp_path: Path, monkeypatch) -> None:
    model = scripted("refine")
    src = rows(tmp_path / "in.jsonl", 4)
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    first = runner.invoke(app, ["run", "refine", "-i", str(src), "-o", str(whole), "-m", str(model), *SAMPLING, "--json"])
    assert first.exit_code == 0, first.output
    run_id = json.loads(first.stdout)["run_id"]
    expected = whole.read_bytes()
    records = [json.loads(line) for line in expected.splitlines()]
    assert [(r["status"], r["output"], r["seed"]) for r in records] == [("ok", SCRIPTS["refine"][0], 11)] * 4

    # the same run, set from a file in another folder with relative paths, then cut short
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path / "run.toml", f'task = "refine"\ninput = "in.jsonl"\noutput = "part.jsonl"\nmodel = "{model}"\n'
                                       'prompt_format = "qwen2-chatml"\n[sampling]\ntemperature = 0.8\nseed = 11\n'
                                       "max_tokens = 64\n[engine]\nthreads = 1\nparallel = 1\n")
    made = runner.invoke(app, ["run", "--config", str(cfg), "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["run_id"] == run_id and part.read_bytes() == expected
    manifest = json.loads((tmp_path / "part.jsonl.manifest.json").read_text())
    recorded = manifest["settings"]
    assert (recorded["task"], recorded["input"], recorded["output"], recorded["model"]) == (
        "refine", str(src), str(part), str(model))
    assert (recorded["seed"], recorded["temperature"], recorded["max_tokens"], recorded["threads"]) == (11, 0.8, 64, 1)
    part.write_bytes(b"".join(expected.splitlines(keepends=True)[:2]))  # as if killed after two rows

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = runner.invoke(app, ["run", "--replay", str(tmp_path / "part.jsonl.manifest.json"), "--json"],
                          env={"LOCALAUG_THREADS": "2", "LOCALAUG_DEVICE": "cpu"})  # the recorded settings win over env
    assert again.exit_code == 0, again.output
    shown = json.loads(again.stdout)
    assert shown["run_id"] == run_id
    assert (shown["this_run"]["skipped"], shown["this_run"]["done"]) == (2, 2)
    assert part.read_bytes() == expected
    replayed = tmp_path / "part.jsonl.manifest.json"
    assert again.stderr.splitlines()[0] == f"replaying {replayed}: refine {src} -> {part} with the settings it recorded"

    # replaying a finished run (by its output's name) has nothing left to do
    done = runner.invoke(app, ["run", "--replay", str(part), "--json"])
    assert done.exit_code == 0, done.output
    assert (json.loads(done.stdout)["this_run"]["skipped"], part.read_bytes()) == (4, expected)
    # a flag still overrides what was recorded: another seed is another run, refused on the same output
    other = runner.invoke(app, ["run", "--replay", str(part), "--seed", "12"])
    assert other.exit_code == 1 and "holds a different run (sampling.seed, seed changed)" in other.stderr


def test_replay_of_nothing_recorded_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert one_line_error(runner.invoke(app, ["run", "--replay", str(out)])) == (
        f"error: no run manifest for {out}: give a localaug run output (or its .manifest.json)")
    old = write(tmp_path / "old.jsonl.manifest.json", json.dumps({"run_id": "x", "config": {}}))
    assert one_line_error(runner.invoke(app, ["run", "--replay", str(tmp_path / "old.jsonl")])) == (
        f"error: {old} records no settings (written by an older localaug, the API or Ray's augment): run the same "
        "command again with its flags")


def test_paths_are_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in.jsonl", "{}\n")
    r = parsed("refine", "-i", "in.jsonl", "-o", "out.jsonl", "--seed", "3", "--ctx", "256")
    assert r.options.command == {
        "task": "refine", "input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out.jsonl"),
        "field": "instruction", "n": 3, "samples": 1, "seed": 3, "dedup": "exact", "minhash_threshold": 0.8,
        "rouge_l": 0.7, "echo": 0.9, "min_chars": 4, "keep_refusals": False, "format": "jsonl", "retry_failed": False,
        "device": "auto", "n_ctx": 256, "rule": "scores", "margin": 1.0, "judge_max_tokens": 512}
    assert os.path.isabs(r.options.command["input"])


def test_a_chained_run_cut_short_in_its_first_phase_replays_from_that_phase(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    recorded = {"task": "expand", "input": str(tmp_path / "seeds.jsonl"), "output": str(out), "format": "alpaca",
                "respond_with": "answers.gguf", "respond_max_tokens": 128, "seed": 5, "n": 2, "n_ctx": 1024}
    stage_manifest = tmp_path / "train.json.expand.jsonl.manifest.json"  # the augmenter's phase: OUT.<task>.jsonl
    write(stage_manifest, json.dumps({"run_id": "r", "settings": recorded}))
    r = parsed("--replay", str(out))
    assert (r.replayed, r.task, r.input, r.output, r.fmt) == (stage_manifest, "expand", recorded["input"], out, "alpaca")
    assert r.chain == {"respond_with": "answers.gguf", "respond": {"max_tokens": 128}}
    assert (r.options.n, r.options.sampling.seed, r.options.engine.n_ctx) == (2, 5, 1024)
    assert r.options.command == recorded | {  # recorded again as given, defaults filled in
        "field": "instruction", "samples": 1, "dedup": "exact", "minhash_threshold": 0.8, "rouge_l": 0.7, "echo": 0.9,
        "min_chars": 4, "keep_refusals": False, "retry_failed": False, "device": "auto", "rule": "scores", "margin": 1.0,
        "judge_max_tokens": 512}
    # once the second phase has a manifest of its own, that one is replayed
    final = write(tmp_path / "train.json.manifest.json", json.dumps({"run_id": "s", "settings": {**recorded, "seed": 6}}))
    again = parsed("--replay", str(out))
    assert (again.replayed, again.options.sampling.seed) == (final, 6)
