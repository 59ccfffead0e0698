"""`localaug grade --judge URL#MODEL`: a judge on an OpenAI-compatible server grades a respond output
as `localaug judge` uses one: the real `localaug serve` (uvicorn in a thread, SmolLM2-135M-Instruct,
an API key) on loopback.

The server decodes one request at a time with no shared-prefix cache, so the same messages always
decode the same way: each grade's reply must be what a direct request with the grading prompt
answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_fixture import keyed_env, one_at_a_time, running, use_key

from localaug.family import judging
from localaug.jobs.grade import JudgeOptions, answer_key, grade_run_id, resolve_judge, run_grade, run_verdicts
from localaug.serve.app import Limits, ServerConfig
from localaug.serve.scheduler import ServedModel

KEY = "sk-test-0b6e2d9f4a7c18e3"
ENV = keyed_env(KEY)
ANSWERS = [("Name a color.", "Red."), ("What is 2+2?", "2+2 is 5.")]
MAX_TOKENS = 16


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_key(monkeypatch, tmp_path / "home", KEY, ENV)


@pytest.fixture(scope="module")
def smol(smollm2: Path) -> Iterator[ServedModel]:
    with one_at_a_time(smollm2) as m:
        yield m


@pytest.fixture(scope="module")
def base(smol: ServedModel) -> Iterator[str]:
    with running([smol], ServerConfig(api_key=KEY, limits=Limits(max_tokens=64))) as url:
        yield url


def respond_output(path: Path) -> Path:
    """A respond output of two rows, one answer each (as `localaug run respond` writes them)."""
    recs = [{"task": "respond", "status": "ok", "source_id": f"k{i}", "row": i, "error": None, "instruction": q,
             "response": a} for i, (q, a) in enumerate(ANSWERS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def direct(base: str, messages: list[dict[str, str]], seed: int) -> str:
    """What the server answers the judge's prompt, asked directly (greedy, top_p 0.95, as the judge asks)."""
    r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"model": "smol", "messages": messages, "temperature": 0.0, "top_p": 0.95,
                         "max_tokens": MAX_TOKENS, "seed": seed})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_grade_with_a_judge_on_a_server_grades_each_answer_once(tmp_path: Path, base: str) -> None:
    out = respond_output(tmp_path / "answers.jsonl")
    judge = f"{base}/v1#smol"
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "grade", str(out), "--judge", judge, "--max-tokens",
                        str(MAX_TOKENS), "--parallel", "2", "--json"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["judge"], summary["answers"], summary["done_now"], summary["failed"]) == (judge, 2, 2, 0)
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl.grades.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(x["source_id"] for x in lines) == ["k0", "k1"]
    # the run is the server's URL and model name, never a file's sha256
    opts = JudgeOptions(judge, max_tokens=MAX_TOKENS, parallel=2)
    model = resolve_judge(judge)
    assert (model.path, model.identity) == (None, {"url": f"{base}/v1", "model": "smol"})
    assert {x["run_id"] for x in lines} == {grade_run_id(model, opts)}
    for line in lines:
        i = int(line["source_id"][1:])
        question, answer = ANSWERS[i]
        key = answer_key(line["source_id"], 0, answer)
        reply = direct(base, judging.grade_messages(question, answer), int(key[:8], 16) % (1 << 31))
        assert line["reply"] == reply and line["score"] == judging.rating(reply) and line["key"] == key
    again = run_grade(out, opts)  # the same command: nothing judged twice
    assert (again.done_now, again.graded, again.judge) == (0, 2, judge)
    assert ("judge", judge) in again.rows()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


def test_pairwise_verdicts_with_a_judge_on_a_server(tmp_path: Path, base: str) -> None:
    out = tmp_path / "answers.jsonl"
    rec = {"task": "respond", "status": "ok", "source_id": "k0", "row": 0, "error": None, "instruction": "Name a color.",
           "response": "Red.", "responses": [{"text": t, "sample": k, "seed": k, "model": "smol", "status": "ok"}
                                              for k, t in enumerate(("Red.", "Blue and green."))]}
    out.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    summary = run_verdicts(out, JudgeOptions(f"{base}/v1#smol", max_tokens=MAX_TOKENS, aspect="detail"))
    assert (summary.pairs, summary.judged, summary.done_now, summary.failed) == (1, 1, 1, 0)
    [line] = [json.loads(x) for x in (tmp_path / "answers.jsonl.verdicts.jsonl").read_text(encoding="utf-8").splitlines()]
    key = line["key"]
    first = direct(base, judging.messages("detail", "Name a color.", "Red.", "Blue and green."), int(key[:8], 16) % (1 << 31))
    assert line["reply_first"] == first and line["first"] == judging.verdict(first)
