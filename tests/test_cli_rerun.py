"""Rerunning a finished job answers at once: the rows are checked against the output before any model
loads, and what the run id needs of the model (its sha256, its prompt style from the GGUF metadata)
comes from caches keyed by the file's path, size and mtime.

The caches are checked against the file read in full (gguf-py's reader for the special tokens), and
the "nothing loaded, nothing read" claims with tripwires: the engine, the metadata reader and the
hasher replaced by functions that fail the test if they are called.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from scripted_fixture import SCRIPTS
from typer.testing import CliRunner

from localaug.augment import resolve
from localaug.cli.main import app
from localaug.family.styles import style_for
from localaug.store.gguf_info import read_kv

runner = CliRunner()
SCRIPTED = ["--prompt-format", "qwen2-chatml", "--temperature", "0", "--max-tokens", "64", "--threads", "1"]


def tripwire(what: str):
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} was called")

    return fail


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_json(*args: Any) -> dict[str, Any]:
    result = runner.invoke(app, ["run", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_an_all_done_rerun_loads_no_model_and_reads_no_model_file(scripted, home: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    model = scripted("refine")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Write a note about topic {i}."}) + "\n" for i in range(20)),
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    first = run_json("refine", "-i", src, "-o", out, "-m", model, *SCRIPTED)
    assert first["this_run"]["done"] == 20
    records = out.read_bytes()
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())

    with monkeypatch.context() as m:
        m.setattr("localaug.jobs.run.open_calibrated", tripwire("loading the model"))
        m.setattr("localaug.augment.resolve.read_kv", tripwire("reading the GGUF metadata"))
        m.setattr("localaug.core.files.sha256_file", tripwire("hashing the model file"))
        started = time.monotonic()
        again = run_json("refine", "-i", src, "-o", out, "-m", model, *SCRIPTED)
        seconds = time.monotonic() - started
    assert (again["run_id"], again["complete"]) == (first["run_id"], True)
    assert (again["this_run"]["rows"], again["this_run"]["skipped"], again["this_run"]["done"]) == (20, 20, 0)
    assert out.read_bytes() == records  # the output untouched
    kept = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert (kept["parallel"], kept["parallel_chosen"]) == (manifest["parallel"], manifest["parallel_chosen"])
    assert seconds < 1.0, seconds  # in this process (imports done): counting 20 rows against the ledger

    # one more row: the model loads for it (and only it is done)
    with src.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "Write a note about one more topic."}) + "\n")
    more = run_json("refine", "-i", src, "-o", out, "-m", model, *SCRIPTED)
    assert (more["this_run"]["skipped"], more["this_run"]["done"], more["this_run"]["ok"]) == (20, 1, 1)
    assert json.loads(out.read_text().splitlines()[-1])["output"] == SCRIPTS["refine"][0]


def test_the_cached_metadata_gives_the_style_the_whole_file_gives(smollm2: Path, home: Path, monkeypatch) -> None:
    import gguf

    fresh = resolve.resolve_style(smollm2)
    assert (home / resolve.METADATA_CACHE).is_file()
    meta = read_kv(smollm2)
    assert fresh.style == style_for(meta)  # the style from the file read in full
    reader = gguf.GGUFReader(smollm2)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    bos = int(reader.get_field("tokenizer.ggml.bos_token_id").contents())
    assert fresh.style.bos_token == tokens.contents(bos) and fresh.style.bos_token  # SmolLM2's <|im_start|>
    monkeypatch.setattr("localaug.augment.resolve.read_kv", tripwire("reading the GGUF metadata"))
    cached = resolve.resolve_style(smollm2)
    assert cached.style == fresh.style and cached.spec == fresh.spec
    assert {k: v for k, v in cached.meta.items() if not isinstance(v, list) and k != "tokenizer.ggml.tokens"} \
        == {k: v for k, v in meta.items() if not isinstance(v, list)}
    assert len(cached.meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.tokens"]) == 49152


def test_a_changed_file_is_read_again(converted, home: Path, tmp_path: Path, monkeypatch) -> None:
    import os

    path = tmp_path / "m.gguf"
    shutil.copyfile(converted("tied", "Q8_0"), path)
    first = resolve.resolve_style(path, prompt_format="teacher")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the same bytes, a new mtime
    read: list[Path] = []
    monkeypatch.setattr("localaug.augment.resolve.read_kv", lambda p: read.append(p) or read_kv(p))
    again = resolve.resolve_style(path, prompt_format="teacher")
    assert read == [path] and again.style == first.style
    resolve.resolve_style(path, prompt_format="teacher")
    assert read == [path]  # cached again


def test_a_damaged_cache_is_read_past(smollm2: Path, home: Path) -> None:
    home.mkdir(parents=True)
    (home / resolve.METADATA_CACHE).write_text("{not json", encoding="utf-8")
    assert resolve.resolve_style(smollm2).style == style_for(read_kv(smollm2))
    assert json.loads((home / resolve.METADATA_CACHE).read_text())  # rewritten whole
