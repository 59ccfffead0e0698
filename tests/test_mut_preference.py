"""Which answers a training file keeps (localaug/jobs/preference.py): the best-graded answer of an
SFT file, the chosen/rejected pair of a dpo file by grades (margin, minimum score) or by pairwise
verdicts (ties, orders that disagree and replies without a verdict decide nothing), every left-out
instruction counted by reason, and ``localaug export``'s refusals, files and manifest.

Expected values are typed by hand (the tables) or come from an oracle written here from the module
doc (the hypothesis properties) — never from the code under test. Answer and pair keys are computed
here too (sha256 of row key, sample and text), so the judged ledgers are written as a judge writes
them. They guard preference.py in tools/mutation.py: no model, a few tiny files each.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.core.errors import UsageError, opt
from localaug.jobs import preference as P
from localaug.jobs.preference import Judged, Selection, Tally

PROPS = settings(max_examples=200, deadline=None, derandomize=True)


def akey(sid: str, sample: int, text: str) -> str:
    return hashlib.sha256(f"{sid}\0{sample}\0{text}".encode()).hexdigest()[:32]


def pkey(sid: str, a: tuple[int, str], b: tuple[int, str]) -> str:
    return hashlib.sha256(f"{akey(sid, *a)}\0{akey(sid, *b)}".encode()).hexdigest()[:32]


def record(sid: str, texts: list[str], statuses: list[str] | None = None, **extra) -> dict:
    statuses = statuses or ["ok"] * len(texts)
    ok = [t for t, s in zip(texts, statuses) if s == "ok"]
    return {"source_id": sid, "task": "respond", "status": "ok" if ok else "filtered", "row": 0,
            "instruction": f"question {sid}", "response": ok[0] if ok else None,
            "responses": [{"text": t, "sample": k, "seed": k, "model": "m", "status": s}
                          for k, (t, s) in enumerate(zip(texts, statuses))], **extra}


def scored(rec: dict, scores: list[float | None]) -> dict[str, float | None]:
    return {akey(rec["source_id"], k, a["text"]): s for k, (a, s) in enumerate(zip(rec["responses"], scores))}


def judged_pairs(rec: dict, outcomes: dict[tuple[int, int], str]) -> dict[str, str]:
    texts = [a["text"] for a in rec["responses"]]
    return {pkey(rec["source_id"], (i, texts[i]), (j, texts[j])): o for (i, j), o in outcomes.items()}


def pair(rec: dict, judged: Judged, sel: Selection) -> tuple[tuple[str, str] | None, dict]:
    tally = Tally()
    p = P.preference(rec, judged, sel, tally)
    return ((p.chosen, p.rejected) if p else None), tally.to_json()


# --- the scores rule, by hand ---------------------------------------------------------------------------

SCORED = {  # texts, grades -> the pair at margin 1
    "r1": (["a", "b"], [8, 3], ("a", "b")),
    "r2": (["a", "b"], [6, 6], P.BELOW_MARGIN),          # equal grades
    "r3": (["a", "b", "c"], [7, 8, 2], ("b", "c")),       # the best over the worst
    "r4": (["a", "b"], [5, None], P.NOT_GRADED),          # a reply with no rating: one graded answer
    "r5": (["same", "same"], [9, 2], P.ONE_ANSWER),       # two samples, one text
    "r6": (["a", "b"], [4, 5], ("b", "a")),               # exactly the margin apart: kept at 1, not at 2
    "r7": (["a", "b", "c"], [9, 9, 1], ("a", "c")),       # two best: the earlier sample
    "r8": (["a", "b", "c"], [9, 2, 2], ("a", "c")),       # two worst: the later sample
    "r9": (["a", "a", "b"], [9, 1, 5], ("a", "b")),       # the worst answer whose text differs from the chosen
    "r10": (["a", "b", "c"], [None, None, None], P.NOT_GRADED),
    "r11": (["a", "b"], [7.5, 5.5], ("a", "b")),          # 2 apart, halves
}


def test_the_scores_rule_at_margin_1_and_2():
    judged = Judged(scores={k: v for sid, (texts, scores, _) in SCORED.items() for k, v in scored(record(sid, texts), scores).items()})
    for sid, (texts, _, want) in SCORED.items():
        got, tally = pair(record(sid, texts), judged, Selection("scores", margin=1))
        assert (got if got else next(iter(tally["dropped"]))) == want, sid
        assert tally["kept"] == (1 if got else 0)
    at2 = {sid for sid, (texts, _, _) in SCORED.items() if pair(record(sid, texts), judged, Selection("scores", margin=2))[0]}
    assert at2 == {"r1", "r3", "r7", "r8", "r9", "r11"}  # r6 (1 apart) is below a margin of 2; r11 (exactly 2) is not
    at0 = {sid for sid, (texts, _, _) in SCORED.items() if pair(record(sid, texts), judged, Selection("scores", margin=0))[0]}
    assert at0 == at2 | {"r2", "r6"}  # margin 0: equal grades make a pair too
    at5 = {sid for sid, (texts, _, _) in SCORED.items() if pair(record(sid, texts), judged, Selection("scores", margin=5))[0]}
    assert at5 == {"r1", "r3", "r7", "r8"}  # 5, 6, 8, 7 apart; r9 is 4 apart


def test_the_minimum_score_is_inclusive():
    rec = record("m", ["a", "b"])
    judged = Judged(scores=scored(rec, [7.5, 3]))
    assert pair(rec, judged, Selection(min_score=7.5)) == (("a", "b"), {"kept": 1, "dropped": {}})
    assert pair(rec, judged, Selection(min_score=7.6)) == (None, {"kept": 0, "dropped": {P.BELOW_MIN: 1}})
    assert pair(rec, judged, Selection(min_score=1)) == (("a", "b"), {"kept": 1, "dropped": {}})


def test_no_kept_answer_and_not_a_respond_record():
    assert pair(record("x", ["a", "b"], ["filtered", "failed"]), Judged(), Selection()) == (
        None, {"kept": 0, "dropped": {P.NO_ANSWER: 1}})
    assert pair({**record("x", ["a", "b"]), "status": "failed"}, Judged(), Selection()) == (
        None, {"kept": 0, "dropped": {P.NO_ANSWER: 1}})


def test_the_pair_carries_the_records_prompt():
    rec = record("s", ["a", "b"], input="ctx", system="Be brief.")
    p = P.preference(rec, Judged(scores=scored(rec, [9, 1])), Selection(), Tally())
    assert (p.prompt.instruction, p.prompt.input, p.prompt.system, p.chosen, p.rejected) == (
        "question s", "ctx", "Be brief.", "a", "b")


# --- the pairwise rule, by hand -------------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "want"), [
    ("A", ("a", "b")), ("B", ("b", "a")), ("tie", P.UNDECIDED["tie"]), ("inconsistent", P.UNDECIDED["inconsistent"]),
    ("no-verdict", P.UNDECIDED["no-verdict"]), (None, P.NOT_JUDGED),
])
def test_one_pair_judged_in_both_orders(outcome, want):
    rec = record("x", ["a", "b"])
    got, tally = pair(rec, Judged(outcomes=judged_pairs(rec, {(0, 1): outcome} if outcome else {})), Selection("pairwise"))
    assert (got if got else tally["dropped"]) == (want if got else {want: 1})


def test_the_pairwise_rule_among_three_answers():
    rec = record("y", ["a", "b", "c"])

    def pw(outcomes: dict[tuple[int, int], str]) -> tuple[tuple[str, str] | None, dict]:
        return pair(rec, Judged(outcomes=judged_pairs(rec, outcomes)), Selection("pairwise"))

    assert pw({(0, 1): "A", (0, 2): "B", (1, 2): "B"})[0] == ("c", "b")  # c beats both; b is the weakest it beat
    assert pw({(0, 1): "A", (1, 2): "A", (0, 2): "B"})[0] == ("a", "b")  # a cycle: the earliest, over the one it beat
    assert pw({(0, 1): "B", (0, 2): "B"})[0] == ("b", "a")  # b and c one win each: the earlier, b
    assert pw({(0, 1): "tie", (0, 2): "tie", (1, 2): "A"})[0] == ("b", "c")
    assert pw({(0, 1): "tie", (0, 2): "inconsistent", (1, 2): "inconsistent"}) == (
        None, {"kept": 0, "dropped": {P.UNDECIDED["inconsistent"]: 1}})  # the most common reason
    assert pw({(0, 1): "no-verdict", (0, 2): "tie"}) == (None, {"kept": 0, "dropped": {P.UNDECIDED["no-verdict"]: 1}})
    assert pw({(0, 1): "tie", (0, 2): "no-verdict"}) == (None, {"kept": 0, "dropped": {P.UNDECIDED["tie"]: 1}})  # equals: the first seen
    assert pw({(1, 2): "tie"}) == (None, {"kept": 0, "dropped": {P.UNDECIDED["tie"]: 1}})  # the pairs not judged count for nothing
    # b > c > d > b, and a in no decided pair: every net is 0, so a (the earliest) is chosen and beat nobody
    four = record("z", ["a", "b", "c", "d"])
    assert pair(four, Judged(outcomes=judged_pairs(four, {(1, 2): "A", (2, 3): "A", (1, 3): "B"})), Selection("pairwise")) == (
        None, {"kept": 0, "dropped": {P.UNDECIDED["inconsistent"]: 1}})
    # c beats a and b, which tie on net -1: the weakest is the later, b
    assert pw({(0, 2): "B", (1, 2): "B"})[0] == ("c", "b")
    # a beats c and d but loses to b: a and b both net +1, so a (the earlier) over d (net -1, the later of two)
    assert pair(four, Judged(outcomes=judged_pairs(four, {(0, 2): "A", (0, 3): "A", (0, 1): "B"})), Selection("pairwise"))[0] == (
        "a", "d")


def test_the_pairwise_rule_with_repeated_texts_and_a_minimum_score():
    rec = record("w", ["a", "a", "b"])  # samples 0 and 1 share a text: pairs (0, 2) and (1, 2) only
    outcomes = judged_pairs(rec, {(0, 1): "A", (0, 2): "B", (1, 2): "B"})
    assert pair(rec, Judged(outcomes=outcomes), Selection("pairwise"))[0] == ("b", "a")
    assert pair(record("v", ["a", "a"]), Judged(), Selection("pairwise")) == (None, {"kept": 0, "dropped": {P.ONE_ANSWER: 1}})
    judged = Judged(scores={akey("w", 2, "b"): 8}, outcomes=outcomes)
    assert pair(rec, judged, Selection("pairwise", min_score=8))[0] == ("b", "a")
    assert pair(rec, judged, Selection("pairwise", min_score=8.5)) == (None, {"kept": 0, "dropped": {P.BELOW_MIN: 1}})
    assert pair(rec, Judged(outcomes=outcomes), Selection("pairwise", min_score=1)) == (
        None, {"kept": 0, "dropped": {P.NOT_GRADED: 1}})  # the chosen answer has no grade


# --- against an oracle written from the module doc --------------------------------------------------------

TEXTS = st.sampled_from(["a", "b", "c"])
GRADES = st.sampled_from([None, 1, 2, 3.5, 5, 6, 7, 8, 9, 10])
OUTCOMES = st.sampled_from([None, "A", "B", "tie", "inconsistent", "no-verdict"])


@st.composite
def cases(draw):
    n = draw(st.integers(1, 4))
    texts = draw(st.lists(TEXTS, min_size=n, max_size=n))
    statuses = draw(st.lists(st.sampled_from(["ok", "ok", "ok", "filtered"]), min_size=n, max_size=n))
    grades = draw(st.lists(GRADES, min_size=n, max_size=n))
    outcomes = {(i, j): draw(OUTCOMES) for i in range(n) for j in range(i + 1, n)}
    sel = Selection(draw(st.sampled_from(P.RULES)), draw(st.sampled_from([0, 0.5, 1, 2, 3, 9])),
                    draw(st.sampled_from([None, 1, 5, 7, 8.5, 10])))
    return texts, statuses, grades, outcomes, sel


def oracle(texts, statuses, grades, outcomes, sel):
    """(chosen, rejected) or the reason, by the rules of the module doc, in plain loops."""
    kept = [k for k in range(len(texts)) if statuses[k] == "ok"]
    if not kept:
        return P.NO_ANSWER
    if sel.rule == "scores":
        graded = [k for k in kept if grades[k] is not None]
        if len({texts[k] for k in graded}) < 2:
            return P.NOT_GRADED if len({texts[k] for k in kept}) > 1 else P.ONE_ANSWER
        best = graded[0]
        for k in graded:
            if grades[k] > grades[best]:
                best = k
        worst = None
        for k in graded:
            if texts[k] != texts[best] and (worst is None or grades[k] <= grades[worst]):
                worst = k
        if grades[best] - grades[worst] < sel.margin:
            return P.BELOW_MARGIN
    else:
        pairs = [(i, j) for i in kept for j in kept if i < j and texts[i] != texts[j]]
        if not pairs:
            return P.ONE_ANSWER
        wins = [(i, j) if outcomes[(i, j)] == "A" else (j, i) for i, j in pairs if outcomes[(i, j)] in ("A", "B")]
        if not wins:
            said = [outcomes[p] for p in pairs if outcomes[p] is not None]
            if not said:
                return P.NOT_JUDGED
            counts = Counter(said)
            return P.UNDECIDED[next(o for o in said if counts[o] == max(counts.values()))]
        net = {k: sum(w == k for w, _ in wins) - sum(lo == k for _, lo in wins) for k in kept}
        best = kept[0]
        for k in kept:
            if net[k] > net[best]:
                best = k
        beaten = [lo for w, lo in wins if w == best]
        if not beaten:
            return P.UNDECIDED["inconsistent"]
        worst = beaten[0]
        for k in beaten:
            if net[k] < net[worst] or (net[k] == net[worst] and k > worst):
                worst = k
    if sel.min_score is not None:
        if grades[best] is None:
            return P.NOT_GRADED
        if grades[best] < sel.min_score:
            return P.BELOW_MIN
    return texts[best], texts[worst]


@PROPS
@given(cases())
def test_preference_pairs_follow_the_documented_rules(case):
    texts, statuses, grades, outcomes, sel = case
    rec = record("p", texts, statuses)
    # every answer is graded and judged as the judge would have, the ones not kept too (they must not count)
    judged = Judged(scores={akey("p", k, t): g for k, (t, g) in enumerate(zip(texts, grades))},
                    outcomes={pkey("p", (i, texts[i]), (j, texts[j])): o for (i, j), o in outcomes.items() if o is not None})
    want = oracle(*case)
    got, tally = pair(rec, judged, sel)
    if isinstance(want, tuple):
        assert got == want and tally == {"kept": 1, "dropped": {}}
    else:
        assert got is None and tally == {"kept": 0, "dropped": {want: 1}}


@PROPS
@given(cases())
def test_an_sft_file_takes_the_best_graded_answer(case):
    texts, statuses, grades, _, sel = case
    rec = record("s", texts, statuses)
    judged = Judged(scores={akey("s", k, t): g for k, (t, g) in enumerate(zip(texts, grades))})
    tally = Tally()
    got = P.choose(rec, judged, sel, tally)
    kept = [k for k in range(len(texts)) if statuses[k] == "ok"]
    if not kept:
        assert got is rec and tally.to_json() == {"kept": 0, "dropped": {P.NO_ANSWER: 1}}
        return
    graded = [k for k in kept if grades[k] is not None]
    best = kept[0]
    for k in graded:
        if grades[best] is None or grades[k] > grades[best]:
            best = k
    if sel.min_score is not None and (grades[best] is None or grades[best] < sel.min_score):
        assert got is None
        assert tally.to_json() == {"kept": 0, "dropped": {P.NOT_GRADED if grades[best] is None else P.BELOW_MIN: 1}}
    else:
        assert got == {**rec, "response": texts[best]} and tally.to_json() == {"kept": 1, "dropped": {}}


def test_best_answer_by_hand():
    rec = record("z", ["refused", "first kept", "second kept"], ["filtered", "ok", "ok"])
    answers = P.answers_of(rec)
    assert [(a.sample, a.text) for a in answers] == [(1, "first kept"), (2, "second kept")]
    assert (P.best_answer(answers, Judged())[0].text, P.best_answer(answers, Judged())[1]) == ("first kept", None)
    judged = Judged(scores=scored(rec, [10, 6, 9]))  # the refused answer's 10 does not count
    assert (P.best_answer(answers, judged)[0].text, P.best_answer(answers, judged)[1]) == ("second kept", 9)
    assert P.best_answer(answers, Judged(scores=scored(rec, [None, 7, 7])))[0].text == "first kept"
    assert P.best_answer(answers, Judged(scores=scored(rec, [None, None, 2])))[0].text == "second kept"


def test_choose_passes_records_that_are_not_answers():
    tally = Tally()
    other = {"source_id": "e", "task": "expand", "status": "ok", "outputs": ["x"]}
    assert P.choose(other, Judged(), Selection(min_score=5), tally) is other
    failed = {"source_id": "f", "task": "respond", "status": "failed", "instruction": "q", "response": None}
    assert P.choose(failed, Judged(), Selection(), tally) is failed
    assert tally.to_json() == {"kept": 0, "dropped": {P.NO_ANSWER: 1}}  # only the respond record is counted


# --- the selection ------------------------------------------------------------------------------------


def test_selection_bounds_are_inclusive_and_refusals_name_the_setting():
    for ok in (Selection("scores", 0), Selection("pairwise", 9), Selection(min_score=1), Selection(min_score=10),
               Selection("scores", 9, 10)):
        ok.check()
    for bad, template in (
        (Selection("best"), f"{opt('rule')} 'best': use scores, pairwise"),
        (Selection(margin=-0.5), f"{opt('margin')} must be from 0 to 9 (grades are 1 to 10)"),
        (Selection(margin=9.5), f"{opt('margin')} must be from 0 to 9 (grades are 1 to 10)"),
        (Selection(min_score=0.5), f"{opt('min_score')} must be from 1 to 10 (grades are 1 to 10)"),
        (Selection(min_score=10.5), f"{opt('min_score')} must be from 1 to 10 (grades are 1 to 10)"),
    ):
        with pytest.raises(UsageError) as e:
            bad.check()
        assert e.value.template == template
    assert Selection() == Selection("scores", 1.0, None) and P.DEFAULT_MARGIN == 1.0


def test_what_an_export_reads_and_says():
    assert Selection("scores").needs("dpo") == (True, False)
    assert Selection("pairwise").needs("dpo") == (False, True)
    assert Selection("pairwise", min_score=7).needs("dpo") == (True, True)
    assert Selection("scores", min_score=7).needs("dpo") == (True, False)
    assert Selection("pairwise").needs("alpaca") == (True, False)
    assert Selection("scores", 2, 7).manifest("dpo") == {"min_score": 7, "rule": "scores", "margin": 2}
    assert Selection("pairwise", 2).manifest("dpo") == {"min_score": None, "rule": "pairwise", "margin": None}
    assert Selection("pairwise", 2, 8).manifest("messages") == {
        "min_score": 8, "answer": "the best-graded kept answer (the earlier sample of equals)"}
    tally = Tally(3, Counter({P.BELOW_MARGIN: 1, P.ONE_ANSWER: 2}))
    assert json.dumps(tally.to_json()) == json.dumps(
        {"kept": 3, "dropped": {P.ONE_ANSWER: 2, P.BELOW_MARGIN: 1}})  # reasons sorted: "fewer ..." before "grades ..."
    assert P.selection_fields("dpo", Selection(), tally, Path("g.jsonl"), None) == {
        "min_score": None, "rule": "scores", "margin": 1.0, "kept": 3, "dropped": {P.BELOW_MARGIN: 1, P.ONE_ANSWER: 2},
        "grades": "g.jsonl", "verdicts": None}
    assert P.selection_fields("dpo", Selection("pairwise"), Tally(), None, Path("v.jsonl"))["verdicts"] == "v.jsonl"
    assert P.selection_fields("dpo", Selection("pairwise"), Tally(), None, Path("v.jsonl"))["grades"] is None


def test_the_reasons_in_words():
    assert (P.NO_ANSWER, P.ONE_ANSWER, P.NOT_GRADED, P.BELOW_MARGIN, P.BELOW_MIN, P.NOT_JUDGED) == (
        "no answer kept (the row failed, or every answer was filtered)", "fewer than two different answers", "not graded",
        "grades differ by less than the margin", "chosen answer graded below the minimum score", "not judged pairwise")
    assert P.UNDECIDED == {"tie": "a tie in both orders", "inconsistent": "the two orders disagree",
                           "no-verdict": "no verdict in a reply"}


# --- the judged ledgers ----------------------------------------------------------------------------------


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_judged_load_reads_both_ledgers(tmp_path: Path):
    grades = write_lines(tmp_path / "g.jsonl", [{"run_id": "r", "key": "k1", "score": 7.0, "reply": "x"},
                                                {"run_id": "r", "key": "k2", "score": None, "reply": "y"},
                                                {"run_id": "r", "key": "k3", "score": 11, "reply": "z"}])  # out of range
    verdicts = write_lines(tmp_path / "v.jsonl", [{"run_id": "q", "key": "p1", "outcome": "A"},
                                                  {"run_id": "q", "key": "p2", "outcome": "tie"},
                                                  {"run_id": "q", "key": "p3", "outcome": "maybe"}])
    judged = Judged.load(grades, verdicts)
    assert judged.scores == {"k1": 7.0, "k2": None} and judged.outcomes == {"p1": "A", "p2": "tie"}
    assert Judged.load(None, verdicts).scores == {} and Judged.load(grades, None).outcomes == {}


# --- writing a training file, and localaug export ----------------------------------------------------------


def respond_output(tmp_path: Path, recs: list[dict], manifest: dict | None = None) -> Path:
    out = write_lines(tmp_path / "answers.jsonl", recs)
    if manifest is not None:
        (tmp_path / "answers.jsonl.manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def grades_ledger(path: Path, recs_scores: list[tuple[dict, list[float | None]]]) -> Path:
    return write_lines(path, [{"run_id": "g", "key": k, "score": s, "reply": "r"}
                              for rec, scores in recs_scores for k, s in scored(rec, scores).items()])


RECS = [record("k0", ["West Lake.", "A lake."], system="Be brief."), record("k1", ["same", "same"]),
        record("k2", ["x", "y"], ["failed", "ok"]), record("k3", ["Tea.", "Longjing tea."], input="from Hangzhou")]
SCORES = [(RECS[0], [9, 4]), (RECS[1], [8, 2]), (RECS[2], [None, 6]), (RECS[3], [5, 8])]


def test_exact_bytes_of_a_dpo_export_its_entry_and_manifest(tmp_path: Path):
    src = respond_output(tmp_path, RECS, {"run_id": "run-1", "model": "answerer.gguf"})
    grades = grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", SCORES)
    dest = tmp_path / "data" / "pref.jsonl"
    s = P.export_output(src, dest, "dpo", Selection())
    assert dest.read_bytes() == (
        '{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question k0"}], '
        '"chosen": [{"role": "assistant", "content": "West Lake."}], "rejected": [{"role": "assistant", "content": "A lake."}], '
        '"chosen_message": {"role": "assistant", "content": "West Lake."}, "rejected_message": {"role": "assistant", "content": "A lake."}}\n'
        '{"prompt": [{"role": "user", "content": "question k3\\nfrom Hangzhou"}], '
        '"chosen": [{"role": "assistant", "content": "Longjing tea."}], "rejected": [{"role": "assistant", "content": "Tea."}], '
        '"chosen_message": {"role": "assistant", "content": "Longjing tea."}, "rejected_message": {"role": "assistant", "content": "Tea."}}\n'
    ).encode()
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info == {"pref": {"file_name": "pref.jsonl", "formatting": "sharegpt", "ranking": True,
                             "columns": {"messages": "prompt", "chosen": "chosen_message", "rejected": "rejected_message"},
                             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                      "assistant_tag": "assistant", "system_tag": "system"}}}
    selection = {"min_score": None, "rule": "scores", "margin": 1.0, "kept": 2,
                 "dropped": {P.ONE_ANSWER: 2}, "grades": str(grades), "verdicts": None}  # k1: one text; k2: one kept answer
    assert (s.output, s.manifest, s.records, s.fmt, s.written, s.selection) == (
        dest, tmp_path / "data" / "pref.jsonl.manifest.json", src, "dpo", 2, selection)
    manifest = json.loads(s.manifest.read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", manifest.pop("finished"))
    assert manifest == {"source": str(src), "source_run_id": "run-1", "answered_by": "answerer.gguf", "output": str(dest),
                        "format": "dpo", "written": 2, "selection": selection}


def test_an_sft_export_takes_the_best_graded_answer_and_gates_on_the_minimum(tmp_path: Path):
    src = respond_output(tmp_path, RECS)  # no manifest: the source run is unknown
    grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", SCORES)
    s = P.export_output(src, tmp_path / "train.json", "alpaca", Selection(min_score=6))
    assert (tmp_path / "train.json").read_bytes() == (
        '[\n{"instruction": "question k0", "input": "", "output": "West Lake.", "system": "Be brief."},\n'
        '{"instruction": "question k1", "input": "", "output": "same"},\n'
        '{"instruction": "question k2", "input": "", "output": "y"},\n'
        '{"instruction": "question k3", "input": "from Hangzhou", "output": "Longjing tea."}\n]\n').encode()
    assert s.written == 4 and s.tally.to_json() == {"kept": 4, "dropped": {}}
    assert json.loads((tmp_path / "dataset_info.json").read_text())["train"]["columns"]["system"] == "system"
    s = P.export_output(src, tmp_path / "strict.jsonl", "messages", Selection(min_score=8.5))
    assert s.written == 1 and s.tally.to_json() == {"kept": 1, "dropped": {P.BELOW_MIN: 3}}
    assert json.loads((tmp_path / "strict.jsonl").read_text())["messages"][-1] == {"role": "assistant", "content": "West Lake."}
    manifest = json.loads((tmp_path / "strict.jsonl.manifest.json").read_text())
    assert (manifest["source_run_id"], manifest["answered_by"], manifest["written"]) == (None, None, 1)
    assert manifest["selection"]["answer"] == "the best-graded kept answer (the earlier sample of equals)"


def test_an_sft_export_without_grades_takes_the_first_kept_answer(tmp_path: Path):
    src = respond_output(tmp_path, RECS)
    s = P.export_output(src, tmp_path / "first.jsonl", "sharegpt", Selection())
    assert [json.loads(line)["conversations"][-1]["value"] for line in (tmp_path / "first.jsonl").read_text().splitlines()] == [
        "West Lake.", "same", "y", "Tea."]
    assert s.selection["grades"] is None and s.selection["verdicts"] is None and s.written == 4


def test_a_pairwise_export_reads_the_verdicts_and_not_the_grades(tmp_path: Path):
    src = respond_output(tmp_path, RECS)
    grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", [(RECS[0], [1, 9])])  # would reverse k0: not read
    verdicts = write_lines(tmp_path / "answers.jsonl.verdicts.jsonl", [
        {"run_id": "v", "key": pkey("k0", (0, "West Lake."), (1, "A lake.")), "outcome": "A"},
        {"run_id": "v", "key": pkey("k3", (0, "Tea."), (1, "Longjing tea.")), "outcome": "inconsistent"}])
    s = P.export_output(src, tmp_path / "pw.json", "dpo", Selection("pairwise"))
    rows = json.loads((tmp_path / "pw.json").read_text())
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("West Lake.", "A lake.")]
    assert s.selection == {"min_score": None, "rule": "pairwise", "margin": None, "kept": 1,
                           "dropped": {P.ONE_ANSWER: 2, P.UNDECIDED["inconsistent"]: 1}, "grades": None, "verdicts": str(verdicts)}
    with pytest.raises(UsageError) as e:  # with a minimum score it reads the grades too: those of k3 are missing
        P.export_output(src, tmp_path / "pw2.json", "dpo", Selection("pairwise", min_score=5),
                        grades=tmp_path / "none.jsonl")
    assert str(e.value) == f"{tmp_path / 'none.jsonl'} does not exist: judge the answers first (localaug grade OUT --judge MODEL)"


def test_given_ledgers_are_read_instead_of_those_beside_the_output(tmp_path: Path):
    src = respond_output(tmp_path, RECS)
    grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", [(RECS[0], [1, 9])])
    other = grades_ledger(tmp_path / "other.jsonl", SCORES)
    s = P.export_output(src, tmp_path / "o.jsonl", "dpo", Selection(), grades=other)
    assert s.selection["grades"] == str(other)
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])["chosen"][0]["content"] == "West Lake."
    verdicts = write_lines(tmp_path / "v.jsonl", [{"run_id": "v", "key": pkey("k3", (0, "Tea."), (1, "Longjing tea.")),
                                                   "outcome": "B"}])
    s = P.export_output(src, tmp_path / "p.jsonl", "dpo", Selection("pairwise"), verdicts=verdicts)
    assert s.selection["verdicts"] == str(verdicts) and s.written == 1


@pytest.mark.parametrize(("fmt", "sel", "given", "how"), [
    ("dpo", Selection(), {}, "localaug grade OUT --judge MODEL"),
    ("dpo", Selection("pairwise"), {}, "localaug grade OUT --judge MODEL --pairwise"),
    ("alpaca", Selection(min_score=5), {}, "localaug grade OUT --judge MODEL"),
    ("messages", Selection(), {"grades": "missing.jsonl"}, "localaug grade OUT --judge MODEL"),
])
def test_an_export_without_the_judgements_it_needs_is_refused(tmp_path: Path, fmt, sel, given, how):
    src = respond_output(tmp_path, RECS)
    given = {k: str(tmp_path / v) for k, v in given.items()}
    missing = Path(given.get("grades") or tmp_path / ("answers.jsonl.verdicts.jsonl" if sel.rule == "pairwise" and fmt == "dpo"
                                                        else "answers.jsonl.grades.jsonl"))
    with pytest.raises(UsageError) as e:
        P.export_output(src, tmp_path / "out.json", fmt, sel, **given)
    assert str(e.value) == f"{missing} does not exist: judge the answers first ({how})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]  # nothing written


def test_export_refusals_before_anything_is_read(tmp_path: Path):
    src = respond_output(tmp_path, RECS)
    with pytest.raises(UsageError) as e:
        P.export_output(src, tmp_path / "o.jsonl", "prompts", Selection())
    assert e.value.template == f"{opt('fmt')} 'prompts': export writes alpaca, sharegpt, messages, dpo"
    with pytest.raises(UsageError) as e:
        P.export_output(src, tmp_path / "o.jsonl", "dpo", Selection(margin=10))
    assert e.value.params == ["margin"]
    grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", SCORES)
    with pytest.raises(UsageError) as e:  # the export would write onto its own input
        P.export_output(src, tmp_path / "answers.jsonl.grades.jsonl", "alpaca", Selection())
    assert "is one of the files this reads" in str(e.value)
    (tmp_path / "answers.jsonl.manifest.json").write_text("{}")
    with pytest.raises(UsageError) as e:
        P.export_output(src, tmp_path / "answers.jsonl", "dpo", Selection())
    assert "is one of the files this reads" in str(e.value)
    assert src.read_text().count("\n") == 4  # left as it was


def test_write_export_counts_what_it_writes(tmp_path: Path):
    judged = Judged(scores={k: v for rec, scores in SCORES for k, v in scored(rec, scores).items()})
    n, tally = P.write_export(iter(RECS), "dpo", tmp_path / "d.json", judged, Selection(margin=4))
    assert n == 1 and tally.to_json() == {"kept": 1, "dropped": {P.BELOW_MARGIN: 1, P.ONE_ANSWER: 2}}  # k3: 3 apart
    assert json.loads((tmp_path / "d.json").read_text())[0]["chosen_message"] == {"role": "assistant", "content": "West Lake."}
    assert json.loads((tmp_path / "dataset_info.json").read_text())["d"]["ranking"] is True
    n, tally = P.write_export(iter(RECS), "messages", tmp_path / "m.jsonl", judged, Selection(min_score=8))
    assert n == 3 and tally.to_json() == {"kept": 3, "dropped": {P.BELOW_MIN: 1}}  # k2's only answer: 6


def test_an_export_never_writes_its_dataset_info_onto_an_input(tmp_path: Path):
    src = write_lines(tmp_path / "dataset_info.json", RECS)  # a respond output under that name: LLaMA-Factory's entry would replace it
    with pytest.raises(UsageError, match="is one of the files this reads"):
        P.export_output(src, tmp_path / "train.json", "alpaca", Selection())
    assert src.read_text().count("\n") == 4 and not (tmp_path / "train.json").exists()
    s = P.export_output(src, tmp_path / "sub" / "train.json", "alpaca", Selection())  # beside another folder's entry: fine
    assert s.written == 4 and (tmp_path / "sub" / "dataset_info.json").exists()


def test_an_export_never_writes_onto_the_source_manifest_and_makes_its_folders(tmp_path: Path):
    src = respond_output(tmp_path, RECS, {"run_id": "run-1", "model": "m"})
    with pytest.raises(UsageError, match="is one of the files this reads"):
        P.export_output(src, tmp_path / "answers.jsonl.manifest.json", "alpaca", Selection())
    assert json.loads((tmp_path / "answers.jsonl.manifest.json").read_text()) == {"run_id": "run-1", "model": "m"}
    s = P.export_output(src, tmp_path / "a" / "b" / "train.jsonl", "messages", Selection())
    assert s.written == 4 and (tmp_path / "a" / "b" / "dataset_info.json").exists()


def test_a_scores_export_does_not_read_the_verdicts(tmp_path: Path):
    src = respond_output(tmp_path, RECS)
    grades_ledger(tmp_path / "answers.jsonl.grades.jsonl", SCORES)
    write_lines(tmp_path / "answers.jsonl.verdicts.jsonl",
                [{"run_id": "v", "key": pkey("k0", (0, "West Lake."), (1, "A lake.")), "outcome": "B"}])
    s = P.export_output(src, tmp_path / "d.jsonl", "dpo", Selection("scores"))
    assert s.selection["verdicts"] is None and s.written == 2
    assert json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])["chosen"][0]["content"] == "West Lake."
