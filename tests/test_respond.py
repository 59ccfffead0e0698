"""From seed instructions to training files that trainers load: respond, --respond-with, exports.

The models are scripted Qwen2 checkpoints (tests/scripted_fixture.py) whose replies are known in
advance; the loaders are the trainers' own: LLaMA-Factory's dataset parser (dataset_info.json) and
converters, TRL's data utilities and SFTTrainer, Hugging Face datasets' json builder.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from scripted_fixture import SCRIPTS

from localaug.core.errors import UsageError
from localaug.jobs.run import run_job

ENV_KEYS = {"OMP_WAIT_POLICY": "PASSIVE", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
NEW = SCRIPTS["expand"]
ANSWER = SCRIPTS["respond"][0]
SEEDS = [{"instruction": f"Write a short note about topic number {i}."} for i in range(3)]
EXPAND = dict(prompt_format="qwen2-chatml", temperature=0.8, max_tokens=48, threads=1, n=2, seed=3, dedup="row")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    for k, v in ENV_KEYS.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def expander(scripted) -> Path:
    return scripted("expand")


@pytest.fixture(scope="module")
def responder(scripted) -> Path:
    return scripted("respond")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def new_instructions(stage: Path) -> list[str]:
    """The new instructions of an expand output, read from its records."""
    return [text for rec in lines(stage) if rec["status"] == "ok" for text in rec["outputs"]]


def llamafactory():
    """LLaMA-Factory's dataset parser and converter modules, imported without the package's
    ``llamafactory.data`` __init__ (which pulls its multimodal extras)."""
    spec = importlib.util.find_spec("llamafactory")
    assert spec is not None, "pip install --no-deps llamafactory==0.9.5 (README, development install)"
    if "llamafactory.data" not in sys.modules:
        pkg = types.ModuleType("llamafactory.data")
        pkg.__path__ = [str(Path(spec.submodule_search_locations[0]) / "data")]
        sys.modules["llamafactory.data"] = pkg
    from llamafactory.data import converter, parser

    return parser, converter


def load_like_llamafactory(folder: Path, name: str, tmp_path: Path) -> list[dict]:
    """What LLaMA-Factory makes of dataset ``name`` in ``folder``: dataset_info.json parsed by its
    own get_dataset_list, the file loaded by datasets' json builder (as its loader does for a
    local file), each example through its own converter."""
    import datasets

    parser, converter = llamafactory()
    [attr] = parser.get_dataset_list([name], str(folder))
    assert attr.load_from == "file"
    data = datasets.load_dataset("json", data_files=str(folder / attr.dataset_name), split="train",
                                 cache_dir=str(tmp_path / "hf-cache"))
    convert = converter.get_dataset_converter(attr.formatting, attr, types.SimpleNamespace(media_dir=str(folder)))
    return [convert(example) for example in data]


def assert_every_example_trains(aligned: list[dict], instructions: list[str]) -> None:
    """LLaMA-Factory keeps an example only with one user turn (odd prompt length) and one
    non-empty assistant response; every new instruction is there once, with its answer."""
    assert len(aligned) == len(instructions) > 0
    for ex in aligned:
        assert [m["role"] for m in ex["_prompt"]] == ["user"]
        assert [m["role"] for m in ex["_response"]] == ["assistant"]
        assert ex["_response"][0]["content"] == ANSWER
    assert sorted(ex["_prompt"][0]["content"] for ex in aligned) == sorted(instructions)


# --- respond ------------------------------------------------------------------------------------


def test_respond_answers_each_instruction_and_filters_like_other_tasks(tmp_path, responder, scripted):
    rows = [{"instruction": "Plan a day in Hangzhou.", "id": 1}, {"instruction": "  "}, {"question": "no field"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    summary = run_job("respond", src, out, model=responder, temperature=0, max_tokens=64, threads=1)
    recs = sorted(lines(out), key=lambda r: r["row"])
    assert [r["status"] for r in recs] == ["ok", "failed", "failed"]
    assert recs[0]["instruction"] == "Plan a day in Hangzhou." and recs[0]["response"] == ANSWER and recs[0]["id"] == 1
    assert summary.stats.ok == 1
    refused = run_job("respond", src, tmp_path / "refused.jsonl", model=scripted("refusal"), temperature=0,
                      max_tokens=64, threads=1, limit=1)
    [rec] = lines(tmp_path / "refused.jsonl")
    assert rec["status"] == "filtered" and rec["rejected"] == {"refusal": 1} and refused.stats.filtered == 1


def test_respond_reads_a_refine_or_expand_output_one_row_per_new_instruction(tmp_path, expander, responder):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    stage = tmp_path / "expanded.jsonl"
    run_job("expand", src, stage, model=expander, **EXPAND)
    wanted = new_instructions(stage)
    out = tmp_path / "answers.jsonl"
    run_job("respond", stage, out, model=responder, temperature=0, max_tokens=64, threads=1, fmt="jsonl")
    recs = lines(out)
    assert sorted(r["instruction"] for r in recs) == sorted(wanted) and len(wanted) == 6
    assert all(r["status"] == "ok" and r["response"] == ANSWER and r["origin"]["task"] == "expand" for r in recs)


# --- exports that trainers load ---------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("alpaca", "train.json"), ("sharegpt", "chat.jsonl"), ("messages", "msgs.jsonl")])
def test_respond_with_exports_load_in_llamafactory_with_every_example(tmp_path, expander, responder, fmt, name):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))  # a user's own entry
    summary = run_job("expand", src, data / name, model=expander, respond_with=responder, fmt=fmt,
                      respond={"max_tokens": 64, "temperature": 0.0}, **EXPAND)
    stage = data / f"{name}.expand.jsonl"
    instructions = new_instructions(stage)
    assert summary.exported == len(instructions) == 6 and summary.stages[0].stats.ok == 3
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["mine"] == {"file_name": "mine.json"} and info[name.split(".")[0]]["file_name"] == name
    assert_every_example_trains(load_like_llamafactory(data, name.split(".")[0], tmp_path), instructions)


def test_instruction_only_exports_are_refused_and_prompts_is_trls_prompt_only_format(tmp_path, expander, qwen2_tied):
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    for fmt in ("alpaca", "sharegpt", "messages"):
        with pytest.raises(UsageError, match=r"--respond-with|respond_with") as err:
            run_job("expand", src, tmp_path / f"x.{fmt}.json", model=expander, fmt=fmt, **EXPAND)
        assert "prompts" in str(err.value)
        assert not list(tmp_path.glob("x.*"))  # refused before anything was written
    out = tmp_path / "prompts.jsonl"
    summary = run_job("expand", src, out, model=expander, fmt="prompts", **EXPAND)
    examples = lines(out)
    assert len(examples) == summary.exported == len(new_instructions(out.with_name(out.name + ".ledger.jsonl")))
    tok = AutoTokenizer.from_pretrained(qwen2_tied)
    for ex in examples:
        assert is_conversational(ex)
        rendered = apply_chat_template(ex, tok)["prompt"]
        assert rendered.endswith("<|im_start|>assistant\n") and ex["prompt"][0]["content"] in rendered
    assert not (tmp_path / "dataset_info.json").exists()  # LLaMA-Factory has no prompt-only format


def test_cli_refuses_an_instruction_only_alpaca_export_in_one_line(tmp_path, expander):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "run", "expand", "-i", str(src), "-o", str(tmp_path / "t.json"),
                        "-m", str(expander), "--format", "alpaca"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--respond-with" in line and "--format prompts" in line
    assert not (tmp_path / "t.json").exists()


def test_trl_sft_trainer_takes_a_training_step_on_a_messages_export(tmp_path, expander, responder, qwen2_tied):
    import datasets
    from trl import SFTConfig, SFTTrainer

    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "train.jsonl"
    run_job("expand", src, out, model=expander, respond_with=responder, fmt="messages", respond={"max_tokens": 64}, **EXPAND)
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 6
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=128)
    trainer = SFTTrainer(model=str(qwen2_tied), args=args, train_dataset=ds)
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0


# --- one command, resumable ----------------------------------------------------------------------


def test_respond_with_resumes_after_kill_9_in_either_phase(tmp_path, expander, responder):
    rows = [{"instruction": f"Write a short note about topic number {i}."} for i in range(8)]
    src = write_jsonl(tmp_path / "seeds.jsonl", rows)
    out = tmp_path / "train.json"
    stage, ledger = tmp_path / "train.json.expand.jsonl", tmp_path / "train.json.ledger.jsonl"
    cmd = [sys.executable, "-m", "localaug.cli", "run", "expand", "-i", str(src), "-o", str(out), "-m", str(expander),
           "--prompt-format", "qwen2-chatml", "--temperature", "0.8", "--max-tokens", "48", "--threads", "1", "-n", "1", "--dedup", "row",
           "--parallel", "1", "--respond-with", str(responder), "--respond-max-tokens", "64", "--format", "alpaca"]
    env = {**os.environ, **ENV_KEYS}
    rng = random.Random(7)

    def count(path: Path) -> int:
        return path.read_bytes().count(b"\n") if path.exists() else 0

    killed = []
    for watch, limit in ((stage, 7), (ledger, 7)):  # once mid augment, once mid respond
        for _ in range(2):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = min(count(watch) + rng.randint(1, 3), limit)
            deadline = time.monotonic() + 120
            while proc.poll() is None and count(watch) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed.append((watch.name, count(watch)))
    assert any(name == stage.name for name, _ in killed) and any(name == ledger.name for name, _ in killed), killed
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    instructions = new_instructions(stage)
    assert len(lines(stage)) == 8 and len(instructions) == 8
    answered = lines(ledger)
    assert sorted(a["instruction"] for a in answered) == sorted(instructions)  # one record per new instruction
    train = json.loads(out.read_text())
    assert sorted(ex["instruction"] for ex in train) == sorted(instructions)
    assert all(ex["output"] == ANSWER and ex["input"] == "" for ex in train)


# --- the terminal judges like a job -------------------------------------------------------------------


def test_refine_in_the_terminal_reports_an_echo_and_exits_1(scripted):
    refiner = scripted("refine")
    echo = SCRIPTS["refine"][0]  # the scripted model writes exactly this: given as input, it is an echo
    base = [sys.executable, "-m", "localaug.cli", "refine", "-m", str(refiner), "--prompt-format", "qwen2-chatml",
            "--temperature", "0", "--max-tokens", "64", "--threads", "1"]
    r = subprocess.run([*base, echo], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert "echo" in r.stderr and "not a refinement" in r.stderr
    r = subprocess.run([*base, "--json", echo], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "filtered" and json.loads(r.stdout)["rejected"] == "echo"
    ok = subprocess.run([*base, "Write about Hangzhou."], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == echo
