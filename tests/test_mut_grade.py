"""Judging the answers of a respond output (localaug/jobs/grade.py): which answers and pairs are
judged, the keys and seeds they are judged under, what each ledger line holds, the summaries, and
the resumable ledger (a failed request is not written and is judged again by the same command; a
torn last line is cut; a ledger of another run is refused).

The judge here is a judge model on an OpenAI-compatible server — a tiny HTTP server on loopback
(tests/loopback_server.py) whose replies follow from the answers it is shown ("score=8" is rated
8, "good" beats the rest, "biased" is always the answer shown first, "mute" gets no verdict,
"FAIL" is a 400) — reached through ``runtime.remote``'s backend at the module's judge seam
(``resolve_judge``/``open_judge``): so every expected grade, verdict and count is known in
advance. The seam itself is checked on the real SmolLM2 GGUF (one test, only its own mutants pay
for the load). Keys, seeds and run ids are computed here from their definitions (sha256).

They guard grade.py in tools/mutation.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback_server import Loopback, Reply, Seen, completion

from localaug.core.errors import JobError, UsageError, opt
from localaug.family import judging
from localaug.family.styles import PromptStyle
from localaug.augment.settings import EngineSettings
from localaug.jobs import grade as G
from localaug.jobs import paths as P
from localaug.jobs.grade import Answer, JudgeModel, JudgeOptions
from localaug.runtime.remote import RemoteModel, open_remote

RESPONSES = ("a localaug run respond output (JSON Lines of records with task respond, or a training file with its "
             ".ledger.jsonl)")


def akey(sid: str, sample: int, text: str) -> str:
    return hashlib.sha256(f"{sid}\0{sample}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def pkey(a: str, b: str) -> str:
    return hashlib.sha256(f"{a}\0{b}".encode()).hexdigest()[:32]


def seed_of(key: str, k: int, base: int = 0) -> int:
    return (base + int(key[:8], 16) + k) % 2**31


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def respond(sid: str, texts: list[str] | str, statuses: list[str] | None = None, **extra) -> dict:
    rec = {"source_id": sid, "task": "respond", "status": "ok", "row": 0, "instruction": f"Question {sid}?", **extra}
    if isinstance(texts, str):
        return {**rec, "response": texts}
    statuses = statuses or ["ok"] * len(texts)
    return {**rec, "response": texts[0], "responses": [{"text": t, "sample": k, "seed": k, "model": "m", "status": s}
                                                       for k, (t, s) in enumerate(zip(texts, statuses))]}


# --- what is judged ----------------------------------------------------------------------------------------


def test_answer_and_pair_keys():
    assert G.answer_key("k0", 1, "West Lake.") == akey("k0", 1, "West Lake.")
    assert G.answer_key("k0", 1, "x\ud800") == akey("k0", 1, "x\ud800")  # a lone surrogate still has a key
    assert len({G.answer_key("k", 0, "a"), G.answer_key("k", 1, "a"), G.answer_key("j", 0, "a"), G.answer_key("k", 0, "b")}) == 4
    a, b = Answer("k", 0, "a", "q"), Answer("k", 1, "b", "q")
    assert a.key == akey("k", 0, "a") and G.pair_key(a, b) == pkey(a.key, b.key) != G.pair_key(b, a)


def test_the_kept_answers_of_a_record():
    rec = respond("k", ["x", "y", "z"], ["ok", "filtered", "ok"], input="ctx")
    assert G.answers_of(rec) == [Answer("k", 0, "x", "Question k?\nctx"), Answer("k", 2, "z", "Question k?\nctx")]
    assert G.answers_of(respond("s", "only")) == [Answer("s", 0, "only", "Question s?")]  # one answer: sample 0
    assert G.answers_of({**respond("s", "only"), "status": "filtered"}) == []
    assert G.answers_of({"source_id": "e", "task": "expand", "status": "ok", "outputs": ["x"]}) == []
    assert G.answers_of({**respond("s", ["a"]), "responses": "not a list"}) == [Answer("s", 0, "a", "Question s?")]


def test_every_two_different_answers_make_a_pair():
    a, b, c, a2 = (Answer("k", i, t, "q") for i, t in enumerate(["a", "b", "c", "a"]))
    assert G.pairs_of([a, b, c, a2]) == [(a, b), (a, c), (b, c), (b, a2), (c, a2)]
    assert G.pairs_of([a]) == [] and G.pairs_of([]) == [] and G.pairs_of([a, a2]) == []


def test_where_the_records_and_ledgers_are(tmp_path: Path):
    out = tmp_path / "train.json"
    assert G.records_path(out) == out  # nothing beside it: the output itself
    beside = write_lines(tmp_path / "train.json.ledger.jsonl", [])
    assert G.records_path(out) == beside
    named = write_lines(tmp_path / "elsewhere.jsonl", [])
    manifest = tmp_path / "train.json.manifest.json"
    for value, want in ((str(named), named), (str(tmp_path / "gone.jsonl"), beside), ("", beside), (5, beside)):
        manifest.write_text(json.dumps({"ledger": value}))
        assert G.records_path(out) == want, value
    manifest.write_text("[1]")
    assert G.records_path(out) == beside
    assert P.judged_path(Path("/d/a.jsonl"), P.GRADES) == Path("/d/a.jsonl.grades.jsonl")
    assert P.judged_path(Path("/d/train.json.ledger.jsonl"), P.VERDICTS) == Path("/d/train.json.verdicts.jsonl")
    assert (G.GRADES, G.VERDICTS, G.MAX_REPLY_KEPT) == (".grades.jsonl", ".verdicts.jsonl", 4000)
    assert P.summary_path(Path("/d/a.grades.jsonl")) == Path("/d/a.grades.summary.json")
    assert P.summary_path(Path("/d/mine.log")) == Path("/d/mine.log.summary.json")


def test_read_answers_keeps_ok_records_with_answers(tmp_path: Path):
    out = write_lines(tmp_path / "a.jsonl", [respond("k0", ["x", "y"]), {**respond("k1", "z"), "status": "failed"},
                                            "not a record", respond("k2", "w")])
    path, rows = G.read_answers(out)
    assert path == out and rows == [[Answer("k0", 0, "x", "Question k0?"), Answer("k0", 1, "y", "Question k0?")],
                                    [Answer("k2", 0, "w", "Question k2?")]]


@pytest.mark.parametrize(("rows", "found"), [
    ([{"source_id": "e", "task": "expand", "status": "ok", "outputs": ["x"]}, respond("k", "y")], "found expand, respond records"),
    ([{"source_id": "r", "task": "refine", "status": "failed"}], "found refine records"),
    ([], "no job records"),
    (["junk", {"instruction": "plain"}], "line 1: text, not an object"),
])
def test_read_answers_refuses_what_is_not_answers(tmp_path: Path, rows, found):
    out = write_lines(tmp_path / "a.jsonl", rows)
    with pytest.raises(UsageError) as e:
        G.read_answers(out)
    assert str(e.value) == f"{out} is not answers to judge ({found}): give {RESPONSES}"


def test_a_file_that_cannot_be_read_is_named():
    with pytest.raises(JobError) as e:
        G.read_answers(Path("/proc/self/mem"))  # a regular file whose first byte cannot be read
    assert str(e.value) == "cannot read /proc/self/mem: Input/output error" and e.value.fields == {"path": "/proc/self/mem"}


def test_read_answers_of_nothing(tmp_path: Path):
    with pytest.raises(UsageError) as e:
        G.read_answers(tmp_path / "none.jsonl")
    assert str(e.value) == f"{tmp_path / 'none.jsonl'} does not exist: give {RESPONSES}"
    assert G.RESPONSES == RESPONSES


# --- the ledger -------------------------------------------------------------------------------------------


def test_read_judged_by_key(tmp_path: Path):
    p = tmp_path / "g.jsonl"
    assert G.read_judged(p, "r", G._valid_grade) == {}
    p.write_bytes(b'{"run_id": "r", "key": "a", "score": 7}\n\n{"run_id": "r", "key": "b", "score": 99}\n'
                  b'{"run_id": "r", "score": 5}\n{"run_id": "r", "key": 3, "score": 5}\n{"run_id": "r", "key": "a", "score": 9}\n'
                  b'{"run_id": "r", "key": "c", "sco')  # a torn last line: cut later, judged again
    assert G.read_judged(p, "r", G._valid_grade) == {"a": {"run_id": "r", "key": "a", "score": 9}}
    assert G.read_judged(p, None, G._valid_grade) == {"a": {"run_id": "r", "key": "a", "score": 9}}


@pytest.mark.parametrize(("data", "why"), [
    (b'{"run_id": "r", "key": "a"}\nnot json\n{"run_id": "r"}\n', "line 2: not JSON"),
    (b'[1]\n', "line 1: not a judged line"),
    (b'{"key": "a"}\n', "line 1: not a judged line"),
    (b'{"run_id": 5}\n', "line 1: not a judged line"),
])
def test_a_file_that_is_not_a_judge_ledger_is_refused(tmp_path: Path, data, why):
    p = tmp_path / "g.jsonl"
    p.write_bytes(data)
    with pytest.raises(JobError) as e:
        G.read_judged(p, "r", G._valid_grade)
    assert str(e.value) == f"{p} is not a localaug judge ledger ({why}): give another file"
    assert e.value.fields == {"path": str(p)}


def test_a_ledger_of_another_run_is_refused(tmp_path: Path):
    p = write_lines(tmp_path / "g.jsonl", [{"run_id": "r", "key": "a", "score": 1}, {"run_id": "q", "key": "b", "score": 1}])
    message = (f"{p} holds judgements of another judging run (another judge, prompt or settings): give another file, or "
               "remove it to judge again")
    for run_id in ("r", "q", None, "other"):
        with pytest.raises(JobError) as e:
            G.read_judged(p, run_id, G._valid_grade)
        assert str(e.value) == message and e.value.fields == {"path": str(p)}
    write_lines(p, [{"run_id": "r", "key": "a", "score": 1}])
    with pytest.raises(JobError):
        G.read_judged(p, "q", G._valid_grade)
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError) as e:
        G.read_judged(tmp_path / "dir", "r", G._valid_grade)
    assert str(e.value) == f"{tmp_path / 'dir'} is not a regular file: give a file path for the judge's ledger"


@pytest.mark.parametrize(("score", "valid"), [(None, True), (1, True), (10, True), (7.5, True), (1.0, True), (0.99, False),
                                              (10.01, False), (0, False), (True, False), ("7", False), ([7], False)])
def test_a_valid_grade(score, valid):
    assert G._valid_grade({"score": score}) is valid


def test_a_valid_verdict_and_the_judged_lines(tmp_path: Path):
    assert G.OUTCOMES == ("A", "B", "tie", "inconsistent", "no-verdict")
    assert [G._valid_verdict({"outcome": o}) for o in (*G.OUTCOMES, "C", None)] == [True] * 5 + [False, False]
    assert G._valid_verdict({}) is False and G._valid_grade({}) is True
    p = write_lines(tmp_path / "mixed.jsonl", [{"run_id": "r", "key": "g", "score": 3}, {"run_id": "r", "key": "h", "score": 0},
                                               {"run_id": "r", "key": "v", "outcome": "B"}, {"run_id": "r", "key": "w", "outcome": "?"}])
    assert [x["key"] for x in G.judged_lines(p)] == ["g", "v"]


# --- options ---------------------------------------------------------------------------------------------


def test_judge_options_bounds():
    for ok in (JudgeOptions("j", max_tokens=1), JudgeOptions("j", temperature=0.0), JudgeOptions("j", temperature=2.0),
               JudgeOptions("j", parallel=1), JudgeOptions("j", parallel=None), JudgeOptions("j", aspect="detail"),
               JudgeOptions("j", aspect="truthfulness")):
        ok.check()
    limits = f"the judge's longest reply must be at least 1 token, its temperature from 0 to 2 and {opt('parallel')} at least 1"
    for bad in (JudgeOptions("j", max_tokens=0), JudgeOptions("j", temperature=-0.1), JudgeOptions("j", temperature=2.1),
                JudgeOptions("j", parallel=0)):
        with pytest.raises(UsageError) as e:
            bad.check()
        assert e.value.template == limits
    with pytest.raises(UsageError) as e:
        JudgeOptions("j", aspect="style").check()
    assert e.value.template == f"{opt('aspect')} 'style': use detail, truthfulness, helpfulness"
    o = JudgeOptions("j")
    assert (o.max_tokens, o.temperature, o.seed, o.aspect, o.parallel, o.device) == (512, 0.0, 0, "helpfulness", None, "auto")
    # where the judge runs: the engine settings a job and the server build
    assert JudgeOptions("j", device="cpu", threads=3, n_ctx=256, parallel=2).engine == EngineSettings(
        device="cpu", gpu_layers=None, threads=3, n_ctx=256, parallel=2)
    assert JudgeOptions("j", max_tokens=9, temperature=0.3, seed=4, parallel=2).settings() == {
        "max_tokens": 9, "temperature": 0.3, "seed": 4}


def test_each_reading_is_seeded_from_its_key():
    key = "ffffffff" + "0" * 24
    s = G._sampling(JudgeOptions("j", max_tokens=7, temperature=0.4, seed=3), key, 1)
    assert (s.temperature, s.max_tokens, s.seed) == (0.4, 7, (3 + 0xFFFFFFFF + 1) % 2**31)
    assert G._sampling(JudgeOptions("j"), "0000000a" + "f" * 24, 0).seed == 10
    assert G._sampling(JudgeOptions("j", seed=2**31 - 11), "0000000a" + "f" * 24, 2).seed == 1  # wraps below 2**31


def test_run_ids_hash_the_judge_prompt_and_settings():
    model = JudgeModel("judge", Path("judge.gguf"), PromptStyle("teacher"), "abc123")
    opts = JudgeOptions("judge", max_tokens=64, temperature=0.5, seed=7, aspect="detail")
    grade_prompt = hashlib.sha256((judging.SINGLE_SYSTEM + judging.SINGLE_USER).encode()).hexdigest()[:16]
    pair_prompt = hashlib.sha256((judging.SYSTEM + judging.USER).encode()).hexdigest()[:16]
    assert G.grade_run_id(model, opts) == hashlib.sha256(json.dumps(
        {"judge": "abc123", "kind": "grade", "max_tokens": 64, "prompt": grade_prompt, "seed": 7, "temperature": 0.5},
        sort_keys=True).encode()).hexdigest()
    assert G.verdicts_run_id(model, opts) == hashlib.sha256(json.dumps(
        {"aspect": "detail", "judge": "abc123", "kind": "pairwise", "max_tokens": 64, "prompt": pair_prompt, "seed": 7,
         "temperature": 0.5}, sort_keys=True).encode()).hexdigest()


def test_the_distribution_counts_whole_parts_from_1_to_10():
    assert G.distribution([]) == {str(k): 0 for k in range(1, 11)}
    assert G.distribution([1.0, 1.9, 2, 9.99, 10.0, 10.0, 0.5, 11]) == {
        "1": 3, "2": 1, "3": 0, "4": 0, "5": 0, "6": 0, "7": 0, "8": 0, "9": 1, "10": 3}
    assert list(G.distribution([5])) == [str(k) for k in range(1, 11)]


def test_the_summaries_in_rows():
    g = G.GradeSummary("out.jsonl", "rec.jsonl", "/models/judge.gguf", "out.jsonl.grades.jsonl", 5, 4, 3, 1, "boom", 1,
                       {str(k): int(k == 8) for k in range(1, 11)}, 17 / 3)
    assert g.rows() == [("judge", "judge.gguf"), ("answers", "5"), ("graded", "4"), ("graded now", "3"),
                        ("no rating in the reply", "1"), ("mean rating", "5.67"),
                        ("ratings 1–10", "1:0 2:0 3:0 4:0 5:0 6:0 7:0 8:1 9:0 10:0"),
                        ("requests that failed (rerun)", "1: boom"), ("grades", "out.jsonl.grades.jsonl")]
    g.failed, g.mean = 0, None
    assert ("mean rating", "—") in g.rows() and not any(k.startswith("requests") for k, _ in g.rows())
    assert g.to_json()["distribution"]["8"] == 1 and g.to_json()["first_error"] == "boom"
    v = G.VerdictSummary("o", "r", "/m/j.gguf", "o.verdicts.jsonl", "detail", 6, 5, 5, 1, "bad",
                         {"A": 1, "B": 1, "tie": 1, "inconsistent": 1, "no-verdict": 1}, 4, 6)
    assert v.rows() == [("judge", "j.gguf"), ("aspect", "detail"), ("pairs of answers", "6"), ("judged", "5"),
                        ("judged now", "5"), ("A", "1"), ("B", "1"), ("tie", "1"), ("inconsistent", "1"), ("no-verdict", "1"),
                        ("readings naming the answer shown first", "4 of 6"), ("requests that failed (rerun)", "1: bad"),
                        ("verdicts", "o.verdicts.jsonl")]
    v.failed, v.decided_readings = 0, 0
    assert ("readings naming the answer shown first", "—") in v.rows() and len(v.rows()) == 12
    # a judge on a server is named whole, URL#MODEL (its file name would be "v1#qwen-judge")
    g.judge = v.judge = "http://127.0.0.1:8080/v1#qwen-judge"
    assert g.rows()[0] == v.rows()[0] == ("judge", "http://127.0.0.1:8080/v1#qwen-judge")


# --- judging, on a judge that answers as the test says -------------------------------------------------------

LONG = "y" * 4100 + " Rating: [[6]]"


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class Judge:
    """The judge's server: its replies follow from the answers it is shown; ``fail`` answers 400 to
    any answer holding "FAIL"."""

    def __init__(self) -> None:
        self.fail = True

    def __call__(self, seen: Seen) -> Reply:
        body = seen.json()
        system, user = (m["content"] for m in body["messages"])
        if system == judging.SINGLE_SYSTEM:
            answer = between(user, "[The Start of Assistant's Answer]\n", "\n[The End of Assistant's Answer]")
            shown = [answer]
        else:
            a = between(user, "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]")
            b = between(user, "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]")
            shown = [a, b]
        if self.fail and "FAIL" in shown[0]:  # the answer shown first: one reading of a pair fails, the other not
            return Reply(400, {"error": {"message": "cannot judge this"}})
        if len(shown) == 1:
            found = re.search(r"score=(\d+)", answer)
            text = LONG if "long" in answer else f"Weighed. Rating: [[{found[1]}]]" if found else "I cannot rate it."
            return Reply(200, completion(text))
        if any("mute" in s for s in shown):
            text = "Both are fine."
        elif any("biased" in s for s in shown):
            text = "The first one. [[A]]"
        else:
            good = ["good" in s for s in shown]
            text = "Compared. " + ("[[C]]" if good[0] == good[1] else "[[A]]" if good[0] else "[[B]]")
        return Reply(200, completion(text + (" z" * 2100 if "long" in shown[0] else "")))


@dataclass
class Seam:
    server: Loopback
    judge: Judge
    model: JudgeModel
    opened: list[int]  # the parallel of each backend opened
    resolved: list[str]  # the judges asked for


@pytest.fixture
def seam(monkeypatch) -> Iterator[Seam]:
    """The loopback judge, with the grade module's judge seam pointed at it."""
    judge = Judge()
    with Loopback(judge) as server:
        model = JudgeModel(f"{server.url}/v1#judge", Path("judge-on-a-server"),
                           PromptStyle("teacher", stop=("</verdict>",), remote=True), "judge-sha")
        s = Seam(server, judge, model, [], [])

        def open_judge(m: JudgeModel, opts: JudgeOptions):
            assert m is model
            parallel = opts.parallel or 2
            s.opened.append(parallel)
            return open_remote(RemoteModel(f"{server.url}/v1", "judge"), parallel), parallel

        monkeypatch.setattr(G, "resolve_judge", lambda judge: (s.resolved.append(judge), model)[1])
        monkeypatch.setattr(G, "open_judge", open_judge)
        yield s


ANSWERS = [respond("k0", ["score=8 West Lake.", "score=3 a lake", "score=10 refused"], ["ok", "ok", "filtered"], input="in Hangzhou"),
           respond("k1", "no rating here"), {**respond("k9", "score=9 failed row"), "status": "failed"},
           respond("k2", ["long answer", "FAIL this"])]
GRADE_KEYS = [akey("k0", 0, "score=8 West Lake."), akey("k0", 1, "score=3 a lake"), akey("k1", 0, "no rating here"),
              akey("k2", 0, "long answer"), akey("k2", 1, "FAIL this")]


def test_grade_rates_each_kept_answer_once_and_resumes(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "answers.jsonl", ANSWERS)
    ticks: list[tuple[int, int]] = []
    opts = JudgeOptions("judge", parallel=1, progress=lambda done, total: ticks.append((done, total)))
    s = G.run_grade(out, opts)
    run_id = G.grade_run_id(seam.model, opts)
    keys = GRADE_KEYS
    ledger = tmp_path / "answers.jsonl.grades.jsonl"
    assert lines(ledger) == [
        {"run_id": run_id, "key": keys[0], "source_id": "k0", "sample": 0, "score": 8.0, "reply": "Weighed. Rating: [[8]]"},
        {"run_id": run_id, "key": keys[1], "source_id": "k0", "sample": 1, "score": 3.0, "reply": "Weighed. Rating: [[3]]"},
        {"run_id": run_id, "key": keys[2], "source_id": "k1", "sample": 0, "score": None, "reply": "I cannot rate it."},
        {"run_id": run_id, "key": keys[3], "source_id": "k2", "sample": 0, "score": 6.0, "reply": "y" * 4000},
    ]
    first_error = f"{seam.server.url}/v1 answered 400: cannot judge this"
    want = {"output": str(out), "records": str(out), "judge": seam.model.name, "ledger": str(ledger), "answers": 5, "graded": 4,
            "done_now": 4, "failed": 1, "first_error": first_error, "no_rating": 1,
            "distribution": {**{str(k): 0 for k in range(1, 11)}, "3": 1, "6": 1, "8": 1}, "mean": 17 / 3}
    assert s.to_json() == want and json.loads((tmp_path / "answers.jsonl.grades.summary.json").read_text()) == want
    assert ticks == [(1, 5), (2, 5), (3, 5), (4, 5)] and seam.opened == [1] and seam.resolved == ["judge"]
    # what the judge was asked: MT-Bench's grading prompt on the user turn and the answer, seeded from the answer's key
    sent = [x.json() for x in seam.server.seen]
    assert [b["messages"] for b in sent] == [judging.grade_messages("Question k0?\nin Hangzhou", "score=8 West Lake."),
                                             judging.grade_messages("Question k0?\nin Hangzhou", "score=3 a lake"),
                                             judging.grade_messages("Question k1?", "no rating here"),
                                             judging.grade_messages("Question k2?", "long answer"),
                                             judging.grade_messages("Question k2?", "FAIL this")]
    assert [(b["seed"], b["temperature"], b["max_tokens"], b["stop"]) for b in sent] == [
        (seed_of(k, 0), 0.0, 512, ["</verdict>"]) for k in keys]
    # the same command again: only the answer whose request failed is asked again; failing alone, it is an error
    with pytest.raises(JobError) as e:
        G.run_grade(out, opts)
    assert str(e.value) == f"no answer could be judged (1 failed): {first_error}; run the same command again to retry them"
    assert len(seam.server.seen) == 6 and len(lines(ledger)) == 4
    seam.judge.fail = False
    ticks.clear()
    s = G.run_grade(out, opts)
    assert (s.graded, s.done_now, s.failed, s.first_error, s.no_rating) == (5, 1, 0, None, 2) and ticks == [(5, 5)]
    assert lines(ledger)[-1] == {"run_id": run_id, "key": keys[4], "source_id": "k2", "sample": 1, "score": None,
                                 "reply": "I cannot rate it."}
    s = G.run_grade(out, JudgeOptions("judge", parallel=1))  # all judged: nothing asked, no progress to show
    assert (s.graded, s.done_now) == (5, 0) and len(seam.server.seen) == 7 and seam.opened == [1, 1, 1]


PAIRS = [respond("p0", ["good answer", "plain answer", "good too"]), respond("p1", ["biased long one", "other"]),
         respond("p2", ["mute x", "y"]), respond("p3", ["same", "same"]), respond("p4", ["FAIL z", "w"], input="ctx")]


def test_verdicts_judge_every_two_answers_in_both_orders(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "answers.jsonl", PAIRS)
    ticks: list[tuple[int, int]] = []
    opts = JudgeOptions("judge", parallel=1, aspect="detail", seed=5, progress=lambda d, t: ticks.append((d, t)))
    s = G.run_verdicts(out, opts)
    run_id = G.verdicts_run_id(seam.model, opts)
    texts = {r["source_id"]: [a["text"] for a in r["responses"]] for r in PAIRS}

    def key(sid: str, i: int, j: int) -> str:
        return pkey(akey(sid, i, texts[sid][i]), akey(sid, j, texts[sid][j]))

    def line(sid, i, j, first, second, outcome, reply_first, reply_second):
        return {"run_id": run_id, "key": key(sid, i, j), "source_id": sid, "samples": [i, j], "first": first,
                "second": second, "outcome": outcome, "reply_first": reply_first, "reply_second": reply_second}

    ledger = tmp_path / "answers.jsonl.verdicts.jsonl"
    assert lines(ledger) == [
        line("p0", 0, 1, "A", "B", "A", "Compared. [[A]]", "Compared. [[B]]"),
        line("p0", 0, 2, "C", "C", "tie", "Compared. [[C]]", "Compared. [[C]]"),
        line("p0", 1, 2, "B", "A", "B", "Compared. [[B]]", "Compared. [[A]]"),
        line("p1", 0, 1, "A", "A", "inconsistent", ("The first one. [[A]]" + " z" * 2100)[:4000], "The first one. [[A]]"),
        line("p2", 0, 1, None, None, "no-verdict", "Both are fine.", "Both are fine."),
    ]
    first_error = f"{seam.server.url}/v1 answered 400: cannot judge this"
    want = {"output": str(out), "records": str(out), "judge": seam.model.name, "ledger": str(ledger), "aspect": "detail",
            "pairs": 6, "judged": 5, "done_now": 5, "failed": 1, "first_error": first_error,
            "outcomes": {"A": 1, "B": 1, "tie": 1, "inconsistent": 1, "no-verdict": 1},
            "first_shown_preferred": 4, "decided_readings": 6}
    assert s.to_json() == want and json.loads((tmp_path / "answers.jsonl.verdicts.summary.json").read_text()) == want
    assert ticks == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6)]
    # each pair: MT-Bench's pairwise prompt with the aspect, in both orders, each reading seeded apart
    sent = [x.json() for x in seam.server.seen]
    order = [("p0", 0, 1), ("p0", 0, 2), ("p0", 1, 2), ("p1", 0, 1), ("p2", 0, 1), ("p4", 0, 1)]
    question = {sid: f"Question {sid}?" for sid in texts} | {"p4": "Question p4?\nctx"}
    assert [b["messages"] for b in sent] == [
        judging.messages("detail", question[sid], *pair) for sid, i, j in order
        for pair in ((texts[sid][i], texts[sid][j]), (texts[sid][j], texts[sid][i]))]
    assert [b["seed"] for b in sent] == [seed_of(key(sid, i, j), k, 5) for sid, i, j in order for k in (0, 1)]
    # again, with the judge now answering: the failed pair only
    seam.judge.fail = False
    ticks.clear()
    s = G.run_verdicts(out, opts)
    assert (s.judged, s.done_now, s.failed, s.outcomes["tie"]) == (6, 1, 0, 2) and ticks == [(6, 6)] and len(seam.server.seen) == 14
    assert lines(ledger)[-1] == line("p4", 0, 1, "C", "C", "tie", "Compared. [[C]]", "Compared. [[C]]")


def test_verdicts_default_to_the_helpfulness_aspect_and_a_parallel_judge(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", PAIRS[:1])
    s = G.run_verdicts(out, JudgeOptions("judge"))
    assert s.aspect == "helpfulness" and s.judged == 3 and seam.opened == [2]
    assert sorted(json.dumps(x.json()["messages"]) for x in seam.server.seen) == sorted(
        json.dumps(judging.messages("helpfulness", "Question p0?", a, b))
        for a, b in [("good answer", "plain answer"), ("plain answer", "good answer"), ("good answer", "good too"),
                     ("good too", "good answer"), ("plain answer", "good too"), ("good too", "plain answer")])
    with pytest.raises(UsageError):  # options are checked first
        G.run_verdicts(out, JudgeOptions("judge", aspect="style"))


def test_many_answers_in_several_batches_are_each_judged_once(tmp_path: Path, seam: Seam):
    recs = [respond(f"r{i}", [f"score={1 + i % 10} a{i}", f"b{i}"]) for i in range(9)]
    out = write_lines(tmp_path / "a.jsonl", recs)
    s = G.run_grade(out, JudgeOptions("judge", parallel=2))
    assert (s.answers, s.graded, s.done_now, s.no_rating) == (18, 18, 18, 9) and len(seam.server.seen) == 18
    assert sorted(g["key"] for g in lines(tmp_path / "a.jsonl.grades.jsonl")) == sorted(
        akey(f"r{i}", k, t) for i in range(9) for k, t in enumerate([f"score={1 + i % 10} a{i}", f"b{i}"]))
    assert s.distribution == {str(k): int(k <= 9) for k in range(1, 11)} and s.mean == 5.0


def test_nothing_to_judge_still_makes_the_ledger(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", [{**respond("k", "x"), "status": "failed"}])
    s = G.run_grade(out, JudgeOptions("judge"))
    assert (s.answers, s.graded, s.done_now, s.failed, s.mean) == (0, 0, 0, 0, None)
    assert (tmp_path / "a.jsonl.grades.jsonl").read_bytes() == b"" and seam.opened == [] and seam.server.seen == []


def test_a_judge_that_fails_every_request_is_one_error_and_nothing_is_written(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["FAIL 1", "FAIL 2"])])
    with pytest.raises(JobError) as e:
        G.run_grade(out, JudgeOptions("judge"))
    assert str(e.value) == (f"no answer could be judged (2 failed): {seam.server.url}/v1 answered 400: cannot judge this; run "
                            "the same command again to retry them")
    assert e.value.fields == {"path": str(tmp_path / "a.jsonl.grades.jsonl")}
    assert (tmp_path / "a.jsonl.grades.jsonl").read_bytes() == b"" and not (tmp_path / "a.jsonl.grades.summary.json").exists()


def test_a_torn_last_line_is_cut_and_judged_again(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["score=4 x", "score=5 y"])])
    opts = JudgeOptions("judge", parallel=1)
    G.run_grade(out, opts)
    ledger = tmp_path / "a.jsonl.grades.jsonl"
    whole = ledger.read_bytes()
    first = whole.split(b"\n")[0] + b"\n"
    ledger.write_bytes(first + whole[len(first):len(first) + 20])  # the second line cut by a kill
    s = G.run_grade(out, opts)
    assert (s.graded, s.done_now, s.mean) == (2, 1, 4.5) and ledger.read_bytes() == whole and len(seam.server.seen) == 3


def test_a_ledger_of_another_judging_run_is_refused(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["score=4 x", "score=5 y"])])
    G.run_grade(out, JudgeOptions("judge"))
    with pytest.raises(JobError, match="holds judgements of another judging run"):
        G.run_grade(out, JudgeOptions("judge", temperature=0.5))
    with pytest.raises(JobError, match="holds judgements of another judging run"):
        G.run_verdicts(out, JudgeOptions("judge"), ledger=tmp_path / "a.jsonl.grades.jsonl")
    assert len(seam.server.seen) == 2


def test_a_ledger_another_run_is_writing_is_refused(tmp_path: Path, seam: Seam):
    from localaug.core.errors import JobLockedError
    from localaug.core.files import exclusive_lock
    from localaug.jobs.ledger import lock_path

    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["score=4 x"])])
    ledger = tmp_path / "a.jsonl.grades.jsonl"
    with exclusive_lock(lock_path(ledger)) as held:
        assert held
        with pytest.raises(JobLockedError):
            G.run_grade(out, JudgeOptions("judge"))
    assert seam.server.seen == [] and not ledger.exists()
    assert G.run_grade(out, JudgeOptions("judge")).graded == 1  # once it is free


def test_a_ledger_given_goes_where_asked_and_never_onto_an_input(tmp_path: Path, seam: Seam):
    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["score=4 x"])])
    s = G.run_grade(out, JudgeOptions("judge"), ledger=tmp_path / "mine.jsonl")
    assert s.ledger == str(tmp_path / "mine.jsonl") and (tmp_path / "mine.summary.json").exists()
    assert not (tmp_path / "a.jsonl.grades.jsonl").exists()
    (tmp_path / "a.jsonl.manifest.json").write_text("{}")
    for ledger in (out, tmp_path / "a.jsonl.manifest.json"):
        with pytest.raises(UsageError, match="is one of the files this reads"):
            G.run_grade(out, JudgeOptions("judge"), ledger=ledger)
    with pytest.raises(UsageError, match="is one of the files this reads"):  # the judge named as a file
        G.run_grade(out, JudgeOptions(str(tmp_path / "mine.jsonl")), ledger=tmp_path / "mine.jsonl")
    assert out.read_text().count("\n") == 1


def test_the_resolved_judge_file_is_never_the_ledger(tmp_path: Path, seam: Seam, monkeypatch):
    out = write_lines(tmp_path / "a.jsonl", [respond("k", ["score=4 x"])])
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(G, "resolve_judge", lambda judge: JudgeModel("j", gguf, seam.model.style, "sha"))
    with pytest.raises(UsageError, match="is one of the files this reads"):
        G.run_grade(out, JudgeOptions("store-name"), ledger=gguf)
    assert gguf.read_bytes() == b"GGUF"


# --- the judge seam on a real GGUF ----------------------------------------------------------------------------


def test_the_judge_seam_opens_the_gguf_with_the_options(smollm2, tmp_path: Path, monkeypatch):
    from conftest import SMOLLM2_SHA256

    from localaug.runtime.backend import SequentialBackend
    from localaug.runtime.batch import BatchEngine
    from localaug.runtime.engine import EngineOptions

    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    model = G.resolve_judge(smollm2)
    assert (model.name, model.path, model.identity) == (str(smollm2), smollm2, SMOLLM2_SHA256)
    assert model.style.chat_template and not model.style.remote
    backend, chosen = G.open_judge(model, JudgeOptions(smollm2, parallel=2, threads=1, n_ctx=512, device="cpu"))
    with backend:
        assert chosen == 2 and isinstance(backend, BatchEngine) and backend.parallel == 2
        assert backend.engine.opts == EngineOptions(device="cpu", threads=1, n_ctx=512) and backend.n_ctx_seq == 512
        assert backend.engine.n_ctx == 0  # the model alone: the batch engine brings its own context
    monkeypatch.setenv("LOCALAUG_PARALLEL", "1")
    backend, chosen = G.open_judge(model, JudgeOptions(smollm2, threads=1, device="cpu"))
    with backend:
        assert chosen == 1 and isinstance(backend, SequentialBackend)
        assert backend.engine.opts == EngineOptions(device="cpu", threads=1)


def test_the_judge_seam_takes_a_calibrated_batch_size(smollm2, tmp_path: Path, monkeypatch):
    from localaug.family.registry import context_size
    from localaug.runtime import calibrate
    from localaug.runtime.batch import BatchEngine
    from localaug.runtime.bench import BATCH_SIZES
    from localaug.runtime.engine import Engine, EngineOptions

    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOCALAUG_PARALLEL", raising=False)
    model = G.resolve_judge(smollm2)
    probe = Engine(smollm2, EngineOptions(device="cpu", threads=1), context=False)
    key = f"{calibrate._key(model.identity, probe)}|{max(calibrate.affordable(probe, context_size(None, probe.n_ctx_train), BATCH_SIZES))}"
    probe.close()
    (tmp_path / "home" / "calibration.json").write_text(json.dumps({key: {"parallel": 3}}))  # no batch size measures 3
    backend, chosen = G.open_judge(model, JudgeOptions(smollm2, threads=1, device="cpu"))
    with backend:
        assert chosen == 3 and isinstance(backend, BatchEngine) and backend.parallel == 3
