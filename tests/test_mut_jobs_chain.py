"""``--respond-with`` (localaug/jobs/chain.py): which settings the responder shares with the
augmenter, where the augmenter's records go, the refusals before anything runs, and one real
two-phase run (the SmolLM2 GGUF, no build) whose files and manifests are checked field by field.

They guard chain.py in tools/mutation.py: the refusals are pure; the one run loads a 135M model
twice (a few seconds), which only the mutants inside ``run_chain`` itself pay for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localaug.core.errors import ModelNotFoundError, UsageError, opt
from localaug.jobs import chain
from localaug.augment.settings import EngineSettings
from localaug.jobs.chain import SHARED, responder_options
from localaug.jobs.paths import stage_path
from localaug.jobs.run import run_job
from localaug.jobs.stats import JobStats


def run_chain(*args, **kwargs):
    """chain.run_chain with the real job runner handed in, as run_job hands it."""
    return chain.run_chain(*args, run=run_job, **kwargs)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def test_the_settings_the_responder_shares():
    assert SHARED == ("seed", "device", "gpu_layers", "threads", "n_ctx", "retry_failed", "max_chars", "keep_refusals")


def test_stage_path_is_beside_the_output_named_after_the_task():
    assert stage_path(Path("/d/train.json"), "expand") == Path("/d/train.json.expand.jsonl")
    assert stage_path(Path("out.jsonl"), "refine") == Path("out.jsonl.refine.jsonl")


def test_responder_options_take_the_shared_settings_then_its_own():
    options = {"seed": 7, "device": "cpu", "gpu_layers": 0, "threads": 2, "n_ctx": 2048, "retry_failed": True,
               "max_chars": 900, "keep_refusals": True, "parallel": 3,
               # the augmenter's own: not passed on
               "model": "aug.gguf", "n": 4, "temperature": 0.9, "max_tokens": 300, "min_chars": 5, "dedup": "row",
               "prompt_format": "qwen2-chatml", "system": "augment", "limit": 2, "shard": "0/2", "field": "q"}
    assert responder_options("expand", options, {}) == {
        "seed": 7, "device": "cpu", "gpu_layers": 0, "threads": 2, "n_ctx": 2048, "retry_failed": True, "max_chars": 900,
        "keep_refusals": True, "parallel": 3}
    respond = {"system": "Answer briefly.", "max_tokens": 64, "temperature": 0.1, "top_p": 0.8, "top_k": 20, "parallel": 1,
               "prompt_format": "chatml"}
    assert responder_options("refine", options, respond) == {
        "seed": 7, "device": "cpu", "gpu_layers": 0, "threads": 2, "n_ctx": 2048, "retry_failed": True, "max_chars": 900,
        "keep_refusals": True, **respond}
    assert responder_options("refine", {"threads": 1}, {"max_tokens": 8}) == {"threads": 1, "max_tokens": 8}
    assert responder_options("refine", {}, {}) == {}
    # the API's older name, and the engine settings given whole, come out flat under today's names
    assert responder_options("refine", {"refusals": False, "engine": EngineSettings(threads=3), "threads": 1}, {}) == {
        "keep_refusals": True, "device": "auto", "gpu_layers": None, "threads": 1, "n_ctx": None, "parallel": None}


@pytest.mark.parametrize("task", ["pairs", "respond", "nonsense"])
def test_respond_with_goes_with_refine_and_expand_only(task):
    with pytest.raises(UsageError) as e:
        responder_options(task, {}, {})
    assert e.value.template == f"{opt('respond_with')} goes with refine and expand ({task} makes its own responses)"


def test_unknown_responder_settings_are_named():
    with pytest.raises(UsageError) as e:
        responder_options("refine", {}, {"max_tokens": 8, "seed": 1, "n": 2})
    assert e.value.template == "unknown responder setting(s): n, seed"
    with pytest.raises(UsageError) as e:
        responder_options("expand", {}, {"model": "x"})
    assert e.value.template == "unknown responder setting(s): model"


def write_rows(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt, words", [
    ("parquet", f"{opt('respond_with')} writes jsonl or a training file: use --format jsonl and convert"),
    ("csv", f"{opt('fmt')} 'csv': use jsonl, parquet, alpaca, sharegpt, messages, prompts, dpo"),
])
def test_formats_refused_before_anything_runs(tmp_path, fmt, words):
    src = write_rows(tmp_path / "in.jsonl", ["a"])
    with pytest.raises(UsageError) as e:
        run_chain("refine", src, tmp_path / "out", tmp_path / "none.gguf", fmt=fmt, progress=None, respond={})
    assert e.value.template == words
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_the_task_is_checked_before_the_format(tmp_path):
    with pytest.raises(UsageError) as e:
        run_chain("pairs", tmp_path / "in.jsonl", tmp_path / "out", tmp_path / "m.gguf", fmt="parquet", progress=None, respond={})
    assert "goes with refine and expand" in str(e.value)


def test_bad_responder_settings_are_refused_before_the_augmenter_runs(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", ["a"])
    with pytest.raises(UsageError) as e:
        run_chain("refine", src, tmp_path / "out.jsonl", tmp_path / "m.gguf", fmt="jsonl", progress=None,
                  respond={"parallel": 0})
    assert e.value.params[:2] == ["n", "parallel"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_missing_responder_is_refused_before_the_augmenter_runs(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", ["a"])
    with pytest.raises(ModelNotFoundError) as e:
        run_chain("refine", src, tmp_path / "out.jsonl", tmp_path / "missing-responder.gguf", fmt="jsonl", progress=None,
                  respond={}, model=tmp_path / "missing-augmenter.gguf")
    assert str(e.value).startswith(f"{tmp_path / 'missing-responder.gguf'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


class Recorded:
    """A progress display that keeps what it was told."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.closed = 0

    def start(self, stats: JobStats, message: str) -> None:
        self.started.append(message)

    def update(self, stats: JobStats) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_a_two_phase_run_end_to_end(tmp_path, smollm2):
    src = write_rows(tmp_path / "seeds.jsonl", ["Write one sentence about cats number 0."])
    out = tmp_path / "train.json"
    progress = Recorded()
    summary = run_chain("refine", src, out, smollm2, fmt="alpaca", progress=progress,
                        respond={"max_tokens": 40, "temperature": 0.0, "prompt_format": "qwen2-chatml"},
                        model=smollm2, prompt_format="qwen2-chatml", temperature=0.0, max_tokens=96, seed=5, threads=1,
                        n_ctx=1024, max_chars=4000, refusals=False, parallel=2, min_chars=3)
    stage = tmp_path / "train.json.refine.jsonl"
    # the summary is the responder's, the augmenter's before it
    assert (summary.task, summary.complete, summary.output, summary.ledger) == ("respond", True, out,
                                                                               tmp_path / "train.json.ledger.jsonl")
    [first] = summary.stages
    assert (first.task, first.complete, first.output, first.ledger, first.stages) == ("refine", True, stage, stage, [])
    assert (first.stats.total, summary.stats.total) == (1, 1)
    # the augmenter's records, as JSON Lines beside the output
    [refined] = [json.loads(x) for x in stage.read_text(encoding="utf-8").splitlines()]
    assert (refined["task"], refined["status"], refined["row"]) == ("refine", "ok", 0)
    # the responder answered exactly that instruction
    [answered] = [json.loads(x) for x in summary.ledger.read_text(encoding="utf-8").splitlines()]
    assert answered["task"] == "respond" and answered["instruction"] == refined["output"]
    assert answered["origin"] == {"task": "refine", "source_id": refined["source_id"], "row": 0, "item": 0}
    examples = [(answered["instruction"], answered["response"])] if answered["status"] == "ok" else []
    assert out.read_bytes() == ("[\n" + ",\n".join(json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False)
                                                   for q, a in examples) + ("\n" if examples else "") + "]\n").encode("utf-8")
    assert summary.exported == len(examples)
    # each phase's settings: the shared ones in both, the augmenter's own in its run only
    m1 = json.loads((tmp_path / "train.json.refine.jsonl.manifest.json").read_text())
    m2 = json.loads((tmp_path / "train.json.manifest.json").read_text())
    assert (m1["input"], m1["format"], m1["parallel"], m1["complete"]) == (str(src), "jsonl", 2, True)
    assert (m2["input"], m2["format"], m2["parallel"], m2["complete"]) == (str(stage), "alpaca", 2, True)
    c1, c2 = m1["config"], m2["config"]
    assert (c1["task"], c1["sampling"]["max_tokens"], c1["seed"], c1["max_chars"], c1["refusals"], c1["min_chars"]) == (
        "refine", 96, 5, 4000, False, 3)
    assert (c2["task"], c2["sampling"]["max_tokens"], c2["sampling"]["temperature"], c2["seed"], c2["max_chars"],
            c2["refusals"], c2["prompt_format"]) == ("respond", 40, 0.0, 5, 4000, False, "qwen2-chatml")
    assert c2["min_chars"] != 3  # the augmenter's filter is its own
    assert m1["model"]["sha256"] == m2["model"]["sha256"]
    # both phases reported progress, each as a new run of one row
    assert len(progress.started) == 2 and all(": new, 1 rows" in m for m in progress.started) and progress.closed == 2


# --- a judged run refused before anything runs ------------------------------------------------------------


def refused(task: str, fmt: str, respond_with: object, samples: int, min_score: float | None = None) -> str | None:
    from localaug.jobs.preference import Selection

    try:
        chain._refuse_unjudgeable(task, fmt, respond_with, samples, Selection(min_score=min_score))
    except UsageError as e:
        return e.template  # the message, settings named by opt()
    return None


def test_a_judged_run_that_cannot_make_what_is_asked_is_refused():
    formats = "alpaca, sharegpt, messages, dpo"
    assert refused("expand", "alpaca", None, 1) == (
        f"{opt('judge')} grades answers: give {opt('respond_with')} with expand (or run respond)")
    assert refused("respond", "prompts", None, 1) == (
        f"{opt('judge')} with {opt('fmt')} prompts: judged answers go to jsonl records or a training file ({formats})")
    assert refused("respond", "parquet", None, 2) == (
        f"{opt('judge')} with {opt('fmt')} parquet: judged answers go to jsonl records or a training file ({formats})")
    assert refused("respond", "dpo", None, 1) == f"dpo pairs two answers to one instruction: give {opt('samples')} 2 or more"
    assert refused("expand", "dpo", "m.gguf", 1) == (
        f"dpo pairs two answers to one instruction: give {opt('respond_samples')} 2 or more")
    assert refused("respond", "jsonl", None, 1, min_score=7.0) == (
        f"{opt('min_score')} chooses what a training file keeps: give {opt('fmt')} {formats}")


@pytest.mark.parametrize("task, fmt, respond_with, samples, min_score", [
    ("respond", "alpaca", None, 1, None),
    ("respond", "jsonl", None, 1, None),  # records, no minimum: fine
    ("expand", "alpaca", "m.gguf", 1, 6.5),  # an augmenter, then answers from respond_with
    ("respond", "dpo", None, 2, None),  # exactly two answers: a pair
    ("refine", "dpo", "m.gguf", 2, 5.0),
    ("respond", "sharegpt", None, 1, 0.0),
])
def test_a_judged_run_that_can_make_what_is_asked_goes_on(task, fmt, respond_with, samples, min_score):
    assert refused(task, fmt, respond_with, samples, min_score) is None
