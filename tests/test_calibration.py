"""The batch size localaug picks when none is given: measured on this machine once, then cached."""

from __future__ import annotations

import json
from pathlib import Path

from scripted_fixture import SCRIPTS

from localaug.jobs.run import run_job
from localaug.runtime.bench import BATCH_SIZES, batch_curve, fastest
from localaug.runtime.calibrate import choose_parallel
from localaug.runtime.engine import Engine, EngineOptions


def test_the_fastest_batch_size_is_measured_once_then_cached(tmp_path: Path, monkeypatch, scripted) -> None:
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOCALAUG_PARALLEL")
    model = scripted("refine")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Row {i}."}) + "\n" for i in range(4)), encoding="utf-8")
    first = run_job("refine", src, tmp_path / "a.jsonl", model=model, prompt_format="qwen2-chatml", temperature=0.0,
                    max_tokens=64, threads=1)
    manifest = json.loads(first.manifest.read_text())
    assert manifest["parallel_chosen"] == "calibrated" and manifest["parallel"] in BATCH_SIZES
    cache = json.loads((tmp_path / "home" / "calibration.json").read_text())
    [(key, entry)] = cache.items()
    assert entry["parallel"] == manifest["parallel"] and set(entry["tokens_per_s"]) <= {str(b) for b in BATCH_SIZES}
    best = max(entry["tokens_per_s"].values())
    assert entry["tokens_per_s"][str(entry["parallel"])] >= 0.97 * best  # the fastest (or within 3 % of it)
    second = run_job("refine", src, tmp_path / "b.jsonl", model=model, prompt_format="qwen2-chatml", temperature=0.0,
                     max_tokens=64, threads=1)
    again = json.loads(second.manifest.read_text())
    assert (again["parallel"], again["parallel_chosen"]) == (manifest["parallel"], "cached")
    given = run_job("refine", src, tmp_path / "c.jsonl", model=model, prompt_format="qwen2-chatml", temperature=0.0,
                    max_tokens=64, threads=1, parallel=2)
    assert json.loads(given.manifest.read_text())["parallel_chosen"] == "given"
    assert {r["output"] for p in ("a", "b", "c") for r in map(json.loads, (tmp_path / f"{p}.jsonl").read_text().splitlines())} \
        == {SCRIPTS["refine"][0]}


def test_the_curve_and_the_pick(converted) -> None:
    with Engine(converted("tied", "Q8_0"), EngineOptions(threads=1), context=False) as engine:
        points = batch_curve(engine, engine.tokenize("Write a short haiku about the sea."), (1, 2, 4), 8)
        assert [p.parallel for p in points] == [1, 2, 4]
        assert all(p.tokens_per_s > 0 and p.raw_tokens_per_s and p.raw_tokens_per_s > 0 for p in points)
        pick = fastest(points)
        assert points[[p.parallel for p in points].index(pick)].tokens_per_s >= 0.97 * max(p.tokens_per_s for p in points)
        assert choose_parallel(engine, "sha", 512, 3).value == 3
