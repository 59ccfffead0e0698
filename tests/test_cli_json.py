"""``--json``: every command that produces a result prints it as ONE strict JSON object on stdout
(progress and human text go to stderr), read here with a parser that refuses NaN and Infinity.

The values are checked against what the command did, found independently: the files on disk (their
sizes, sha256 and lines), gguf-py's own reader, the scripted models' known replies
(tests/scripted_fixture.py), os.sysconf for the machine.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from scripted_fixture import SCRIPTS
from typer.testing import CliRunner, Result

from localaug.cli.main import app

runner = CliRunner()
SCRIPTED = ["--prompt-format", "qwen2-chatml", "--temperature", "0", "--max-tokens", "64", "--threads", "1"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}


def strict(text: str) -> Any:
    """``text`` as exactly one JSON value, refusing NaN / Infinity (Python's json writes them)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def cli(home: Path, *args: Any) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"LOCALAUG_HOME": str(home), **OFFLINE})


def as_json(home: Path, *args: Any) -> dict[str, Any]:
    result = cli(home, *args, "--json")
    assert result.exit_code == 0, result.output
    data = strict(result.stdout)
    assert isinstance(data, dict), result.stdout
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Suggest a way to spend day {i} in Hangzhou."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def test_the_strict_reader_refuses_what_python_writes_for_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        strict(json.dumps({"score": float("nan")}))


# --------------------------------------------------------------------------- models


def test_convert_json_names_the_file_its_size_and_sha256(qwen2_tied: Path, tmp_path: Path) -> None:
    import gguf
    import numpy as np

    out = tmp_path / "m.gguf"
    result = cli(tmp_path / "home", "convert", qwen2_tied, "-q", "q8_0", "-o", out, "--json")  # any case
    assert result.exit_code == 0, result.output
    data = strict(result.stdout)
    reader = gguf.GGUFReader(out)
    assert data == {"path": str(out), "quant": "Q8_0", "size_bytes": out.stat().st_size, "sha256": sha256(out),
                    "tensors": len(reader.tensors), "parameters": sum(int(np.prod(t.shape)) for t in reader.tensors),
                    "seconds": data["seconds"]}
    assert data["seconds"] > 0 and "writing" in result.stderr  # the progress went to stderr


def test_pull_list_inspect_and_rm_in_json(qwen2_tied: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    pulled = as_json(home, "pull", qwen2_tied, "--quant", "Q8_0")
    stored = Path(pulled["path"])
    assert stored.is_file() and home in stored.parents
    assert (pulled["name"], pulled["quant"], pulled["reused"]) == ("tiny-qwen2-tied", "Q8_0", False)
    assert (pulled["size"], pulled["sha256"]) == (stored.stat().st_size, sha256(stored))
    again = as_json(home, "pull", qwen2_tied, "--quant", "Q8_0")
    assert again["reused"] is True and again["sha256"] == pulled["sha256"] and again["path"] == pulled["path"]

    listed = as_json(home, "ls")  # ls and list are models
    assert listed == as_json(home, "list") == as_json(home, "models")
    [entry] = listed["store"]
    assert (entry["name"], entry["path"], entry["sha256"]) == ("tiny-qwen2-tied", str(stored), pulled["sha256"])

    by_name = as_json(home, "inspect", "tiny-qwen2-tied")  # a store name, not a path
    assert (by_name["path"], by_name["size_bytes"], by_name["file_type"]) == (str(stored), stored.stat().st_size, "Q8_0")

    removed = as_json(home, "rm", "tiny-qwen2-tied", "--quant", "q8_0")
    assert [(e["name"], e["quant"], e["sha256"]) for e in removed["removed"]] == [("tiny-qwen2-tied", "Q8_0", pulled["sha256"])]
    assert not stored.exists() and as_json(home, "ls")["store"] == []


def test_bundle_export_and_import_in_json(qwen2_tied: Path, tmp_path: Path) -> None:
    home_a, home_b, tar = tmp_path / "a", tmp_path / "b", tmp_path / "models.tar"
    pulled = as_json(home_a, "pull", qwen2_tied, "--quant", "Q8_0")
    exported = as_json(home_a, "bundle", "export", "tiny-qwen2-tied", "-o", tar)
    assert (exported["path"], exported["size_bytes"]) == (str(tar), tar.stat().st_size)
    assert [(m["name"], m["quant"], m["sha256"]) for m in exported["models"]] == [("tiny-qwen2-tied", "Q8_0", pulled["sha256"])]

    imported = as_json(home_b, "bundle", "import", tar)
    [added] = imported["added"]
    assert (imported["archive"], imported["replaced"], imported["unchanged"]) == (str(tar), [], [])
    assert home_b in Path(added["path"]).parents and sha256(Path(added["path"])) == pulled["sha256"] == added["sha256"]
    assert [e["sha256"] for e in as_json(home_b, "bundle", "import", tar)["unchanged"]] == [pulled["sha256"]]


def test_doctor_json_is_typed(tmp_path: Path) -> None:
    data = as_json(tmp_path / "home", "doctor")
    assert data["memory_bytes"] == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert data["cpu_cores"] == os.cpu_count()
    assert (data["models_in_store"], data["store_bytes"], data["store"]) == (0, 0, str(tmp_path / "home" / "models"))
    assert isinstance(data["gpu_offload"], bool) and data["default_device"] == ("gpu" if data["gpu_offload"] else "cpu")
    assert data["llama_cpp_python"] == data["llama_cpp_python_supported"] == "0.3.36"
    assert all(key == key.lower() and " " not in key and "-" not in key for key in data)


# --------------------------------------------------------------------------- jobs


def test_run_and_merge_json(scripted, tmp_path: Path) -> None:
    home, model = tmp_path / "home", scripted("refine")
    src, out = write_rows(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    first = as_json(home, "run", "refine", "-i", src, "-o", out, "-m", model, *SCRIPTED)
    records = jsonl(out)
    assert [r["output"] for r in records] == [SCRIPTS["refine"][0]] * 3
    manifest = json.loads(Path(first["files"]["manifest"]).read_text())
    assert first["run_id"] == manifest["run_id"] and first["complete"] is True
    assert first["files"] == {"output": str(out), "records": str(out), "manifest": str(out) + ".manifest.json"}
    ran = first["this_run"]
    assert (ran["rows"], ran["skipped"], ran["done"], ran["ok"], ran["failed"]) == (3, 0, 3, 3, 0)
    assert ran["tokens"] == sum(r["completion_tokens"] for r in records)
    assert first["output_counts"]["rows"] == 3 and first["stages"] == [] and first["exported"] is None

    rerun = as_json(home, "run", "refine", "-i", src, "-o", out, "-m", model, *SCRIPTED)
    assert (rerun["this_run"]["skipped"], rerun["this_run"]["done"], rerun["run_id"]) == (3, 0, first["run_id"])

    merged = tmp_path / "merged.jsonl"
    data = as_json(home, "merge", out, "-o", merged)
    assert (data["rows"], data["written"], data["by_status"], data["inputs"]) == (3, 3, {"ok": 3}, [str(out)])
    assert data["files"] == {"output": str(merged), "manifest": str(merged) + ".manifest.json"}
    assert [r["source_id"] for r in jsonl(merged)] == [r["source_id"] for r in records]


def test_grade_export_judge_and_report_json(scripted, tmp_path: Path) -> None:
    home, answers = tmp_path / "home", tmp_path / "answers.jsonl"
    src = write_rows(tmp_path / "in.jsonl", 2)
    ran = as_json(home, "run", "respond", "-i", src, "-o", answers, "-m", scripted("answers"), "--samples", "2",
                  "--prompt-format", "qwen2-chatml", "--temperature", "0.9", "--max-tokens", "64", "--threads", "1")
    assert ran["this_run"]["ok"] == 2
    kept = sum(len(r["responses"]) for r in jsonl(answers))

    # the scripted grader writes "Rating: [[7]]" for every answer
    graded = as_json(home, "grade", answers, "--judge", scripted("grader"), "--max-tokens", "32", "--threads", "1")
    assert (graded["answers"], graded["graded"], graded["mean"], graded["distribution"]["7"]) == (kept, kept, 7.0, kept)
    assert len(jsonl(Path(graded["ledger"]))) == kept

    train = tmp_path / "data" / "train.json"
    exported = as_json(home, "export", answers, "-o", train, "--format", "alpaca")
    assert exported["written"] == len(json.loads(train.read_text())) == 2  # the best-graded answer per instruction
    assert exported["files"] == {"output": str(train), "manifest": str(train) + ".manifest.json",
                                 "dataset_info": str(train.parent / "dataset_info.json")}
    assert Path(exported["files"]["dataset_info"]).is_file()

    # the scripted judge prefers whichever answer it is shown first: both orders disagree, every pair a tie
    judged = as_json(home, "judge", answers, answers, "--judge", scripted("judge"), "--max-tokens", "32", "--threads", "1")
    assert (judged["n"], judged["wins"], judged["ties"], judged["losses"], judged["score"]) == (2, 0, 2, 0, 0.5)

    summary = Path(judged["verdicts"] + ".summary.json")
    report = as_json(home, "report", answers, "--embed-model", scripted("refine"), "--threads", "1", "--judge", summary)
    for path in (report["files"]["html"], report["files"]["summary"], *report["files"]["figures"].values()):
        assert Path(path).is_file(), path
    assert report["counts"]["rows"] == 2 and report["judge"]["wins"] == 0 and report["judge"]["n"] == 2

    # one judge table: the terminal's rows are the report page's, in the same order
    shown = cli(home, "judge", answers, answers, "--judge", scripted("judge"), "--max-tokens", "32", "--threads", "1")
    assert shown.exit_code == 0, shown.output
    rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in shown.stdout.splitlines() if line.count("│") == 3]
    assert rows[:3] == [["aspect", "detail"], ["judge", scripted("judge").name], ["pairs judged", "2"]]
    page = Path(report["files"]["html"]).read_text(encoding="utf-8")
    section = page[page.index("<h2>Judge: detail</h2>"):]
    cells = re.findall(r"<td>(.*?)</td><td>(.*?)</td>", section)
    assert [[html.unescape(k), html.unescape(v)] for k, v in cells][2:] == rows  # after the rows naming A and B
    # a metric undefined on so few texts is null here, as in the summary file the report wrote
    assert report["diversity"] == strict(Path(report["files"]["summary"]).read_text())["diversity"]
