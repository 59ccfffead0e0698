"""Several answers per instruction, a judge's grades and verdicts, and the training files made from
them: SFT files with the best-graded answer (or only answers above a score) and preference files.

The rules are pinned on hand-made records with hand-computed results; the whole road runs on
scripted Qwen2 checkpoints (tests/scripted_fixture.py) whose replies are known; the files are
loaded with the trainers' own code: LLaMA-Factory's dataset parser and converters, and one step of
TRL's DPOTrainer on a tiny Qwen2 checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qwen2_fixture import write_tokenizer
from scripted_fixture import SCRIPTS
from test_respond import ENV_KEYS, lines, load_like_llamafactory, write_jsonl

from localaug.core.errors import JobError
from localaug.family import judging
from localaug.jobs import preference as pref
from localaug.jobs.grade import JudgeOptions, answer_key, pair_key, run_grade, run_verdicts
from localaug.jobs.grade import Answer as GAnswer
from localaug.jobs.preference import Judged, Selection, Tally, export_output
from localaug.jobs.run import run_job

ANSWERS = SCRIPTS["answers"]
SEEDS = [{"instruction": f"Suggest a way to spend day {i} in Hangzhou."} for i in range(4)]
SAMPLED = dict(temperature=0.9, max_tokens=64, threads=1)  # the responder: sample k of a row writes one branch
JUDGE = dict(max_tokens=32, threads=1)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    for k, v in ENV_KEYS.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def answerer(scripted) -> Path:
    return scripted("answers")


# --- the judge's prompt and how its replies are read ---------------------------------------------------


def test_the_grading_prompt_is_mt_bench_single_v1_word_for_word():
    # FastChat fastchat/llm_judge/data/judge_prompts.jsonl, "single-v1", typed here from the paper's repository
    expected_user = (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question displayed below. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
        "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
        "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
        "example: \"Rating: [[5]]\".\n\n[Question]\nName a lake.\n\n[The Start of Assistant's Answer]\nWest Lake.\n"
        "[The End of Assistant's Answer]")
    assert judging.grade_messages("Name a lake.", "West Lake.") == [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": expected_user}]


@pytest.mark.parametrize(("reply", "expected"), [
    ("Clear and correct. Rating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("The format asks for [[5]]; my rating: [[9]]", 9.0),  # the last one: the rating follows the explanation
    ("Rating: [6]", 6.0),  # FastChat's fallback: single brackets
    ("Rating: [[10]]", 10.0), ("Rating: [[1]]", 1.0),
    ("Rating: [[0]]", None), ("Rating: [[11]]", None),  # outside 1-10
    ("Rating: 7/10", None), ("", None),
])
def test_the_rating_is_the_last_bracketed_number_from_1_to_10(reply, expected):
    assert judging.rating(reply) == expected


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("A", "B", "A"), ("B", "A", "B"),  # the same answer preferred in both orders
    ("A", "A", "inconsistent"), ("B", "B", "inconsistent"),  # whatever is shown first: position bias
    ("C", "C", "tie"), ("A", "C", "inconsistent"), ("C", "B", "inconsistent"),
    (None, "B", "no-verdict"), ("A", None, "no-verdict"),
])
def test_two_readings_make_one_outcome(first, second, expected):
    assert judging.outcome(first, second) == expected


# --- the rules, on hand-made records ------------------------------------------------------------------


def record(sid: str, texts: list[str], statuses: list[str] | None = None) -> dict:
    statuses = statuses or ["ok"] * len(texts)
    ok = [t for t, s in zip(texts, statuses) if s == "ok"]
    return {"task": "respond", "status": "ok" if ok else "filtered", "source_id": sid, "row": 0,
            "instruction": f"question {sid}", "response": ok[0] if ok else None,
            "responses": [{"text": t, "sample": k, "seed": k, "model": "m", "status": s} for k, (t, s) in enumerate(zip(texts, statuses))]}


def graded(recs_scores: list[tuple[dict, list[float | None]]]) -> Judged:
    judged = Judged()
    for rec, scores in recs_scores:
        for a, score in zip(rec["responses"], scores):
            judged.scores[answer_key(rec["source_id"], a["sample"], a["text"])] = score
    return judged


def test_the_scores_rule_keeps_exactly_these_pairs():
    recs = {
        "r1": (record("r1", ["a", "b"]), [8, 3]),            # kept: a over b (5 apart)
        "r2": (record("r2", ["a", "b"]), [6, 6]),            # dropped: equal grades
        "r3": (record("r3", ["a", "b", "c"]), [7, 8, 2]),    # kept: b (best) over c (worst)
        "r4": (record("r4", ["a", "b"]), [5, None]),         # dropped: only one graded (no rating in a reply)
        "r5": (record("r5", ["a", "b"], ["filtered", "ok"]), [None, 9]),  # dropped: one kept answer
        "r6": (record("r6", ["same", "same"]), [9, 2]),      # dropped: the two answers are one text
        "r7": (record("r7", ["a", "b"]), [4, 5]),            # kept at margin 1 (b over a), dropped at margin 2
        "r8": (record("r8", ["a", "b", "c"]), [9, 9, 1]),    # kept: a (the earlier of two 9s) over c
        "r9": (record("r9", ["a", "b", "c"]), [9, 2, 2]),    # kept: a over c (the later of two 2s)
        "r10": (record("r10", ["a", "b"], ["filtered", "failed"]), [None, None]),  # dropped: no answer kept at all
        "r11": (record("r11", ["a", "a", "b"]), [9, 1, 5]),  # kept: a over b (the worst answer that is another text)
    }
    judged = graded(list(recs.values()))

    def pairs(sel: Selection) -> tuple[dict[str, tuple[str, str]], Tally]:
        tally = Tally()
        out = {sid: (p.chosen, p.rejected) for sid, (rec, _) in recs.items() if (p := pref.preference(rec, judged, sel, tally))}
        return out, tally

    kept, tally = pairs(Selection("scores", margin=1))
    assert kept == {"r1": ("a", "b"), "r3": ("b", "c"), "r7": ("b", "a"), "r8": ("a", "c"), "r9": ("a", "c"), "r11": ("a", "b")}
    assert tally.kept == 6 and dict(tally.dropped) == {pref.BELOW_MARGIN: 1, pref.NOT_GRADED: 1, pref.ONE_ANSWER: 2,
                                                       pref.NO_ANSWER: 1}
    kept, tally = pairs(Selection("scores", margin=2))
    assert set(kept) == {"r1", "r3", "r8", "r9", "r11"} and tally.dropped[pref.BELOW_MARGIN] == 2
    kept, tally = pairs(Selection("scores", margin=1, min_score=8.5))  # the chosen answer must be graded >= 8.5
    assert set(kept) == {"r8", "r9", "r11"} and tally.dropped[pref.BELOW_MIN] == 3  # r1 (8), r3 (8), r7 (5)


def verdicts(rec: dict, outcomes: dict[tuple[int, int], str | None]) -> dict[str, str]:
    answers = {a["sample"]: GAnswer(rec["source_id"], a["sample"], a["text"], "q") for a in rec["responses"]}
    return {pair_key(answers[i], answers[j]): o for (i, j), o in outcomes.items() if o is not None}


def test_the_pairwise_rule_keeps_only_answers_preferred_in_both_orders():
    cases = {  # outcome of (0, 1) -> the pair kept, or why none
        "A": ("a", "b"), "B": ("b", "a"), "tie": pref.UNDECIDED["tie"],
        "inconsistent": pref.UNDECIDED["inconsistent"], "no-verdict": pref.UNDECIDED["no-verdict"], None: pref.NOT_JUDGED,
    }
    for outcome, expected in cases.items():
        rec = record("x", ["a", "b"])
        tally = Tally()
        p = pref.preference(rec, Judged(outcomes=verdicts(rec, {(0, 1): outcome})), Selection("pairwise"), tally)
        assert ((p.chosen, p.rejected) if p else dict(tally.dropped)) == (expected if p else {expected: 1}), outcome
    # three answers: c beats a and b, a beats b -> c over b (the weakest it beat)
    rec = record("y", ["a", "b", "c"])
    p = pref.preference(rec, Judged(outcomes=verdicts(rec, {(0, 1): "A", (0, 2): "B", (1, 2): "B"})), Selection("pairwise"), Tally())
    assert (p.chosen, p.rejected) == ("c", "b")
    # a cycle (a > b > c > a): every answer one win, one loss -> the earliest, a, over the one it beat, b
    p = pref.preference(rec, Judged(outcomes=verdicts(rec, {(0, 1): "A", (1, 2): "A", (0, 2): "B"})), Selection("pairwise"), Tally())
    assert (p.chosen, p.rejected) == ("a", "b")


def test_an_sft_file_takes_the_first_kept_answer_or_the_best_graded():
    rec = record("z", ["refused", "first kept", "second kept"], ["filtered", "ok", "ok"])
    assert pref.choose(rec, Judged(), Selection(), Tally())["response"] == "first kept"  # no grades
    judged = graded([(rec, [None, 6, 9])])
    assert pref.choose(rec, judged, Selection(), Tally())["response"] == "second kept"
    assert pref.choose(rec, graded([(rec, [None, 7, 7])]), Selection(), Tally())["response"] == "first kept"  # equals: earlier
    tally = Tally()
    assert pref.choose(rec, judged, Selection(min_score=9), tally)["response"] == "second kept"
    assert pref.choose(rec, judged, Selection(min_score=9.5), tally) is None and tally.to_json() == {
        "kept": 1, "dropped": {pref.BELOW_MIN: 1}}
    assert pref.choose(rec, Judged(), Selection(min_score=1), tally) is None and tally.dropped[pref.NOT_GRADED] == 1


# --- several answers per instruction ------------------------------------------------------------------


def test_samples_keep_every_answer_in_one_record_and_sample_k_uses_seed_plus_k(tmp_path, answerer):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "answers.jsonl"
    summary = run_job("respond", src, out, model=answerer, samples=3, seed=5, **SAMPLED)
    recs = sorted(lines(out), key=lambda r: r["row"])
    assert summary.stats.ok == 4 and [r["row"] for r in recs] == [0, 1, 2, 3]  # one record per row
    for rec in recs:
        assert [(a["sample"], a["seed"], a["model"], a["status"]) for a in rec["responses"]] == [
            (0, 5, answerer.name, "ok"), (1, 6, answerer.name, "ok"), (2, 7, answerer.name, "ok")]
        assert all(a["text"] in ANSWERS for a in rec["responses"]) and rec["response"] == rec["responses"][0]["text"]
        assert rec["seed"] == 5 and rec["samples"] == 3
    for k in (1, 2):  # one answer with seed 5+k is the k-th of the three
        single = tmp_path / f"seed{5 + k}.jsonl"
        run_job("respond", src, single, model=answerer, seed=5 + k, **SAMPLED)
        assert [r["response"] for r in sorted(lines(single), key=lambda r: r["row"])] == [r["responses"][k]["text"] for r in recs]
        assert "responses" not in lines(single)[0]  # one answer: the record keeps its shape
    again = run_job("respond", src, out, model=answerer, samples=3, seed=5, **SAMPLED)
    assert again.stats.skipped == 4 and again.stats.done == 0 and len(lines(out)) == 4


def test_context_and_system_prompt_reach_the_responder_and_every_export(tmp_path, answerer, scripted):
    from transformers import AutoTokenizer

    rows = [{"instruction": "Summarize the note.", "input": "West Lake is in Hangzhou.", "id": 1},
            {"instruction": "Name a tea.", "input": ""}, {"instruction": "Name a temple.", "context": "unused"}]
    src = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    data = tmp_path / "data"
    data.mkdir()
    system = "Answer in one sentence."
    run_job("respond", src, data / "train.json", model=answerer, input_field="input", system=system, fmt="alpaca", **SAMPLED)
    recs = sorted(lines(data / "train.json.ledger.jsonl"), key=lambda r: r["row"])
    assert [(r["instruction"], r["input"], r["system"]) for r in recs] == [
        ("Summarize the note.", "West Lake is in Hangzhou.", system), ("Name a tea.", "", system), ("Name a temple.", "", system)]
    (tmp_path / "tok").mkdir()
    write_tokenizer(tmp_path / "tok")  # the scripted models' tokenizer: Qwen2's own files
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for rec, user in zip(recs, ["Summarize the note.\nWest Lake is in Hangzhou.", "Name a tea.", "Name a temple."]):
        prompt = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         tokenize=False, add_generation_prompt=True)
        assert rec["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])  # what the responder read
    assert json.loads((data / "train.json").read_text()) == [
        {"instruction": r["instruction"], "input": r["input"], "output": r["response"], "system": system} for r in recs]
    for fmt, name in (("sharegpt", "chat.jsonl"), ("messages", "msgs.jsonl")):
        export_output(data / "train.json", data / name, fmt, Selection())
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["train"]["columns"]["system"] == "system"
    for name in ("train", "chat", "msgs"):  # LLaMA-Factory joins alpaca's instruction and input with "\n", as we did
        aligned = load_like_llamafactory(data, name, tmp_path)
        assert [(ex["_system"], ex["_prompt"], ex["_response"]) for ex in aligned] == [
            (system, [{"role": "user", "content": user}], [{"role": "assistant", "content": r["response"]}])
            for r, user in zip(recs, ["Summarize the note.\nWest Lake is in Hangzhou.", "Name a tea.", "Name a temple."])], name


# --- grading --------------------------------------------------------------------------------------------


def test_grade_rates_every_answer_once_keeps_the_reason_and_gates_exports(tmp_path, answerer, scripted):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS[:3])
    out = tmp_path / "answers.jsonl"
    run_job("respond", src, out, model=answerer, samples=2, **SAMPLED)
    answers = {(r["source_id"], a["sample"]): a["text"] for r in lines(out) for a in r["responses"]}
    s = run_grade(out, JudgeOptions(scripted("grader"), **JUDGE))
    grades = lines(tmp_path / "answers.jsonl.grades.jsonl")
    assert {(g["source_id"], g["sample"]) for g in grades} == set(answers) and len(grades) == 6
    assert all(g["score"] == 7.0 and g["reply"] == SCRIPTS["grader"][0] for g in grades)
    assert (s.answers, s.graded, s.done_now, s.no_rating, s.mean) == (6, 6, 6, 0, 7.0)
    assert s.distribution == {**{str(k): 0 for k in range(1, 11)}, "7": 6}
    again = run_grade(out, JudgeOptions(scripted("grader"), **JUDGE))
    assert again.done_now == 0 and len(lines(tmp_path / "answers.jsonl.grades.jsonl")) == 6
    kept = export_output(out, tmp_path / "kept.jsonl", "messages", Selection(min_score=7))
    gone = export_output(out, tmp_path / "gone.jsonl", "messages", Selection(min_score=7.5))
    assert (kept.written, gone.written) == (3, 0) and gone.tally.to_json() == {"kept": 0, "dropped": {pref.BELOW_MIN: 3}}
    manifest = json.loads((tmp_path / "gone.jsonl.manifest.json").read_text())
    assert manifest["selection"]["min_score"] == 7.5 and manifest["written"] == 0
    with pytest.raises(JobError, match="another judging run"):  # another judge on the same ledger is refused
        run_grade(out, JudgeOptions(scripted("grades"), **JUDGE))


def test_grade_resumes_after_kill_9_grading_each_answer_exactly_once(tmp_path, answerer, scripted):
    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Plan day {i}."} for i in range(12)])
    out = tmp_path / "answers.jsonl"
    run_job("respond", src, out, model=answerer, samples=2, **SAMPLED)
    ledger = tmp_path / "answers.jsonl.grades.jsonl"
    cmd = [sys.executable, "-m", "localaug.cli", "grade", str(out), "--judge", str(scripted("grader")), "--max-tokens", "32",
           "--threads", "1", "--parallel", "1", "--json"]
    env = {**os.environ, **ENV_KEYS}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and (not ledger.exists() or ledger.read_bytes().count(b"\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < ledger.read_bytes().count(b"\n") < 24
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    keys = [g["key"] for g in lines(ledger)]
    assert len(keys) == len(set(keys)) == 24 and json.loads(r.stdout)["graded"] == 24


# --- preference files that trainers load -----------------------------------------------------------------


def test_one_command_from_seeds_to_a_dpo_file_that_dpo_trainer_and_llamafactory_take(tmp_path, scripted, answerer, qwen2_tied):
    import datasets
    from trl import DPOConfig, DPOTrainer

    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    data = tmp_path / "data"
    out = data / "dpo.jsonl"
    summary = run_job("expand", src, out, model=scripted("expand"), prompt_format="qwen2-chatml", n=2, temperature=0.8,
                      max_tokens=48, threads=1, dedup="row", respond_with=answerer,
                      respond={"samples": 2, "temperature": 0.9, "max_tokens": 64, "system": "Be brief."},
                      judge=scripted("grades"), judging={"temperature": 0.9, **JUDGE}, fmt="dpo")
    recs = lines(data / "dpo.jsonl.ledger.jsonl")
    score = {(g["source_id"], g["sample"]): g["score"] for g in lines(data / "dpo.jsonl.grades.jsonl")}
    assert len(recs) == 8 and len(score) == 16 and set(score.values()) == {3.0, 8.0}  # the judge rates 3 or 8
    expected = []  # two answers each: a pair when one is rated 8 and the other 3 (and their texts differ)
    for r in recs:
        (a, sa), (b, sb) = [(x["text"], score[(r["source_id"], x["sample"])]) for x in r["responses"]]
        if sa != sb and a != b:
            expected.append((r["instruction"], *((a, b) if sa > sb else (b, a))))
    rows = lines(out)
    assert summary.exported == len(rows) == len(expected) > 0
    assert sorted((x["prompt"][1]["content"], x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in rows) == sorted(expected)
    assert all(x["prompt"][0] == {"role": "system", "content": "Be brief."} and x["chosen_message"] == x["chosen"][0] for x in rows)
    manifest = json.loads((data / "dpo.jsonl.manifest.json").read_text())
    assert manifest["selection"]["rule"] == "scores" and manifest["selection"]["margin"] == 1.0
    assert manifest["selection"]["kept"] == len(rows) and manifest["exported"] == len(rows)
    assert sum(manifest["selection"]["dropped"].values()) == 8 - len(rows)

    aligned = load_like_llamafactory(data, "dpo", tmp_path)  # its ranking entry: every example kept
    assert [(ex["_system"], ex["_prompt"], ex["_response"]) for ex in aligned] == [
        ("Be brief.", [{"role": "user", "content": x["prompt"][1]["content"]}], [x["chosen_message"], x["rejected_message"]])
        for x in rows]

    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=128)
    trainer = DPOTrainer(model=str(qwen2_tied), args=args, train_dataset=ds)
    result = trainer.train()
    # step one: the policy is the reference, so DPO's loss is -log sigmoid(0) = log 2 exactly
    assert trainer.state.global_step == 1 and result.training_loss == pytest.approx(math.log(2), abs=1e-4)
    prompt = trainer.processing_class.decode(trainer.train_dataset[0]["prompt_ids"])  # what it trained on: our system and user turns
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + rows[0]["prompt"][1]["content"])


def test_pairwise_verdicts_in_both_orders_make_the_pairs(tmp_path, answerer, scripted):
    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Plan day {i}."} for i in range(8)])
    out = tmp_path / "answers.jsonl"
    run_job("respond", src, out, model=answerer, samples=2, **SAMPLED)
    s = run_verdicts(out, JudgeOptions(scripted("verdicts"), temperature=0.9, **JUDGE))
    recs = {r["source_id"]: r for r in lines(out)}
    verdicts = lines(tmp_path / "answers.jsonl.verdicts.jsonl")
    different = [r for r in recs.values() if r["responses"][0]["text"] != r["responses"][1]["text"]]
    assert len(verdicts) == s.pairs == s.judged == len(different) > 0
    expected = []  # kept only when the answer named first in one order is named second in the other
    for v in verdicts:
        texts = [a["text"] for a in recs[v["source_id"]]["responses"]]
        assert v["samples"] == [0, 1] and v["reply_first"] in SCRIPTS["verdicts"] and v["reply_second"] in SCRIPTS["verdicts"]
        if (v["first"], v["second"]) == ("A", "B"):
            expected.append((texts[0], texts[1]))
        elif (v["first"], v["second"]) == ("B", "A"):
            expected.append((texts[1], texts[0]))
    assert s.first_shown_preferred == sum(r == "A" for v in verdicts for r in (v["first"], v["second"]))
    e = export_output(out, tmp_path / "dpo.json", "dpo", Selection("pairwise"))
    rows = json.loads((tmp_path / "dpo.json").read_text())
    assert sorted((x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in rows) == sorted(expected)
    assert e.written == len(expected) and e.tally.kept + sum(e.tally.dropped.values()) == 8
    assert json.loads((tmp_path / "dpo.json.manifest.json").read_text())["selection"]["rule"] == "pairwise"


def test_the_cli_refuses_what_a_judged_run_cannot_make_in_one_line(tmp_path, answerer):
    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    base = [sys.executable, "-m", "localaug.cli", "run", "respond", "-i", str(src), "-m", str(answerer), "--threads", "1"]
    for extra, words in (
        (["-o", str(tmp_path / "a.jsonl"), "--format", "dpo"], "--judge"),  # dpo needs judged answers
        (["-o", str(tmp_path / "b.jsonl"), "--format", "alpaca", "--min-score", "7"], "--judge"),
        (["-o", str(tmp_path / "c.jsonl"), "--format", "dpo", "--judge", str(answerer)], "--samples 2"),
        (["-o", str(tmp_path / "d.jsonl"), "--samples", "0"], "--samples"),
    ):
        r = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env={**os.environ, **ENV_KEYS})
        assert r.returncode == 2, (extra, r.stderr)
        [line] = r.stderr.strip().splitlines()
        assert line.startswith("error: ") and words in line, line
    assert not list(tmp_path.glob("[abcd].jsonl*"))  # refused before anything was written


def test_report_shows_the_grade_distribution(tmp_path, answerer, scripted):
    import matplotlib.image as mpimg

    from localaug.report.build import make_report

    src = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "answers.jsonl"
    run_job("respond", src, out, model=answerer, samples=2, **SAMPLED)
    run_grade(out, JudgeOptions(scripted("grader"), **JUDGE))
    r = make_report(out, tmp_path / "page.html", threads=1)
    assert r.grades is not None and r.grades["graded"] == 8 and r.grades["distribution"]["7"] == 8 and r.grades["mean"] == 7.0
    html = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<h2>Grades</h2>" in html and 'data-file="grades.png"' in html
    pixels = mpimg.imread(r.figures["grades"])
    assert pixels.shape[0] > 100 and float(pixels[..., :3].std()) > 0.01
    assert json.loads((tmp_path / "page.json").read_text())["grades"]["distribution"]["7"] == 8
