"""localaug judge (localaug/report/judge.py), pinned: B's score and its interval against a formula
written here (by hand and with hypothesis), the win/tie/loss counts and the summary file from
verdicts the test chooses, the ledger, the pairing of A and B, the page table and the errors.

Most tests give ``run_judge`` a ledger whose verdicts they wrote (its run id computed here from
what the docs say it covers), so nothing is decoded; the judge then is a GGUF of metadata alone.
The last tests run a real scripted judge (tests/scripted_judge.py: its verdict is chosen by the
first characters of the answers it is shown) through llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.core.errors import JobError, UsageError, WriteError
from localaug.family import judging
from localaug.report import judge as judge_mod
from localaug.report.judge import JudgeSummary, add_to_page, pair_key, responses, run_judge, score

PROPS = settings(max_examples=150, deadline=None, derandomize=True)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))


# --- the score and its interval ---------------------------------------------------------------------


def ref_score(verdicts: list[str]) -> tuple[float, float, float]:
    """(wins + ties/2) / n and the normal-approximation 95% interval over the per-pair scores
    (B 1, tie 1/2, A 0): mean ± 1.96 · s / √n with the sample standard deviation s (0 for one
    pair), clipped to [0, 1]."""
    wins, ties, n = verdicts.count("B"), verdicts.count("tie"), len(verdicts)
    mean = (wins + ties / 2) / n
    values = [1.0] * wins + [0.5] * ties + [0.0] * (n - wins - ties)
    s = statistics.stdev(values) if n > 1 else 0.0
    half = 1.96 * s / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@pytest.mark.parametrize(("verdicts", "mean", "lo", "hi"), [
    (["B"], 1.0, 1.0, 1.0),                    # n = 1: no spread
    (["A"], 0.0, 0.0, 0.0),
    (["tie"], 0.5, 0.5, 0.5),
    (["B"] * 4, 1.0, 1.0, 1.0),                # all wins
    (["A"] * 5, 0.0, 0.0, 0.0),                # all losses
    (["tie"] * 3, 0.5, 0.5, 0.5),              # all ties
    (["B", "A"], 0.5, 0.0, 1.0),               # s = 0.7071, half-width 0.98: clipped on both sides
    (["B", "tie"], 0.75, 0.26, 1.0),           # s = 0.3536, half-width 0.49: clipped above
    (["A", "tie"], 0.25, 0.0, 0.74),           # clipped below
    (["B"] * 3 + ["tie"] * 3 + ["A"], 4.5 / 7, 4.5 / 7 - 0.28, 4.5 / 7 + 0.28),  # s²= 1/7: s/√7 = 1/7, half 0.28
    (["B"] * 6 + ["tie"] * 2 + ["A"] * 2, 0.7, 0.7 - 1.96 * 2 / 15, 0.7 + 1.96 * 2 / 15),  # s²/n = 1.6/9/10 = (2/15)²
    (["B"] * 50 + ["A"] * 50, 0.5, 0.401506, 0.598494),  # s² = 25/99, half = 1.96·0.502519/10 = 0.098494
])
def test_score_and_interval_by_hand(verdicts, mean, lo, hi):
    m, (a, b) = score(verdicts)
    assert m == pytest.approx(mean, abs=1e-12)
    assert (a, b) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))


def test_no_pair_has_no_score():
    m, (lo, hi) = score([])
    assert math.isnan(m) and math.isnan(lo) and math.isnan(hi)


@PROPS
@given(st.lists(st.sampled_from(["A", "B", "tie"]), min_size=1, max_size=60))
def test_score_is_the_mean_of_1_half_0_with_a_normal_interval(verdicts):
    m, (lo, hi) = score(verdicts)
    mean, rlo, rhi = ref_score(verdicts)
    assert m == pytest.approx(mean, abs=1e-12)
    assert lo == pytest.approx(rlo, abs=1e-9) and hi == pytest.approx(rhi, abs=1e-9)
    assert 0.0 <= lo <= m <= hi <= 1.0


# --- pairing A and B ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rec", "key"), [
    ({"row": 3}, "3:0"),
    ({"row": 0}, "0:0"),
    ({"row": 3, "origin": {"row": 7}}, "7:0"),                  # the seed row the refined text came from
    ({"row": 3, "origin": {"row": 7, "item": 2}}, "7:2"),       # the expand output's third new text
    ({"row": 3, "origin": {"row": 0, "item": 0}}, "0:0"),
    ({"row": 3, "origin": {"row": 7, "item": -1}}, "7:0"),      # a bad item: the first
    ({"row": 3, "origin": {"row": 7, "item": True}}, "7:0"),
    ({"row": 3, "origin": {"row": 7, "item": "2"}}, "7:0"),
    ({"row": 3, "origin": {"row": -1}}, "3:0"),                 # a bad origin row: the record's own row
    ({"row": 3, "origin": {"row": True}}, "3:0"),
    ({"row": 3, "origin": {"row": "7"}}, "3:0"),
    ({"row": 3, "origin": {"row": 7.0}}, "3:0"),
    ({"row": 3, "origin": [7]}, "3:0"),
    ({"row": 3, "origin": {}}, "3:0"),
    ({}, None),
    ({"row": -1}, None),
    ({"row": False}, None),
    ({"row": "3"}, None),
    ({"origin": {"row": 4}}, "4:0"),
])
def test_pair_key(rec, key):
    assert pair_key(rec) == key


def rec(row: int | None, instruction: str, response: str, *, task: str = "respond", status: str = "ok",
        origin: dict | None = None, sid: str | None = None) -> dict:
    r = {"source_id": sid or f"s{row}-{instruction[:8]}", "task": task, "status": status, "instruction": instruction,
         "response": response}
    if row is not None:
        r["row"] = row
    if origin is not None:
        r["origin"] = origin
    return r


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_responses_keep_the_answered_records_by_pair_key(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        rec(0, "Q0", "first answer", sid="x0"),
        rec(1, "Q1", "R1"),
        rec(2, "Q2", "", status="failed"),
        rec(3, "Q3", "R3", status="filtered"),
        {"source_id": "r4", "task": "refine", "status": "ok", "row": 4, "output": "refined"},
        rec(5, "Q5", "R5", origin={"row": 9, "item": 1}),
        rec(0, "Q0 again", "second answer", sid="x0b"),  # a later record for the same input row wins
        "not a record",
    ])
    assert responses(path) == {"0:0": ("Q0 again", "second answer"), "1:0": ("Q1", "R1"), "9:1": ("Q5", "R5")}


def test_responses_that_hold_nothing_to_judge_say_why(tmp_path):
    with pytest.raises(UsageError) as e:
        responses(tmp_path / "missing.jsonl")
    assert str(e.value).startswith(f"{tmp_path / 'missing.jsonl'} does not exist: give a localaug run respond output")
    assert e.value.exit_code == 2
    unplaced = write_jsonl(tmp_path / "u.jsonl", [rec(None, "Q", "R"), rec(None, "Q2", "R2", sid="b")])
    with pytest.raises(UsageError) as e:
        responses(unplaced)
    assert str(e.value) == (f"{unplaced} holds no answered instructions (2 answered, none naming its input row in row or "
                            f"origin.row): give {judge_mod.RESPONSES}")
    junk = write_jsonl(tmp_path / "j.jsonl", [[1, 2], {"a": 1}])
    with pytest.raises(UsageError) as e:
        responses(junk)
    assert str(e.value) == (f"{junk} holds no answered instructions (line 1: an array, not an object): give "
                            f"{judge_mod.RESPONSES}")
    others = write_jsonl(tmp_path / "o.jsonl", [rec(0, "Q", "R", status="failed")])
    with pytest.raises(UsageError) as e:
        responses(others)
    assert str(e.value) == f"{others} holds no answered instructions: give {judge_mod.RESPONSES}"
    assert judge_mod.RESPONSES == ("a localaug run respond output (JSON Lines of records with task respond, status ok, "
                                   "instruction and response)")
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(UsageError, match="does not exist"):
        responses(folder)


def test_a_responses_file_that_cannot_be_read_is_a_job_error():
    mem = Path("/proc/self/mem")  # a regular file whose first page no process maps: reading it fails (EIO)
    if not mem.is_file():
        pytest.skip("needs Linux /proc")
    with pytest.raises(JobError) as e:
        responses(mem)
    assert str(e.value) == "cannot read /proc/self/mem: Input/output error" and e.value.fields == {"path": str(mem)}
    assert e.value.exit_code == 1


# --- run_judge over a ledger the test wrote ------------------------------------------------------------


def meta_gguf(path: Path) -> Path:
    """A GGUF of metadata alone (no tensors) with a chat template: resolvable as a judge, never loaded
    while every pair is already in the ledger."""
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_chat_template("{{ messages[-1]['content'] }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_id(a: Path, b: Path, judge: Path, aspect: str = "detail", max_tokens: int = 512) -> str:
    """What the docs say a judging run is keyed by: both files' sha256, the judge's, the aspect and
    the settings (the reply length and the judging prompt)."""
    config = {"a": sha(a), "b": sha(b), "judge": sha(judge), "aspect": aspect, "max_tokens": max_tokens,
              "prompt": hashlib.sha256(judging.SYSTEM.encode()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def verdict_line(rid: str, key: str, verdict: str, first: str | None = "A", second: str | None = "A") -> str:
    return json.dumps({"run_id": rid, "key": key, "aspect": "detail", "first": first, "second": second,
                       "verdict": verdict, "reply_first": "…", "reply_second": "…"}) + "\n"


@pytest.fixture()
def pairs(tmp_path):
    """A (6 seeds) and B (answers to 5 refined versions, and one row of its own): rows 0-4 pair."""
    a = write_jsonl(tmp_path / "a.jsonl", [rec(i, f"Seed {i}?", f"Answer {i}.") for i in range(6)])
    b = write_jsonl(tmp_path / "b.jsonl", [rec(i, f"Refined {i}?", f"Better answer {i}.", origin={"row": i})
                                           for i in range(5)] + [rec(7, "Own?", "Own.", origin={"row": 7, "item": 0})])
    return a, b, meta_gguf(tmp_path / "judge.gguf")


def test_the_counts_score_and_interval_of_chosen_verdicts(tmp_path, pairs):
    a, b, j = pairs
    rid = run_id(a, b, j)
    out = tmp_path / "b.jsonl.judge-detail.jsonl"  # the default ledger: B.judge-ASPECT.jsonl
    out.write_text(verdict_line(rid, "0:0", "B", "B", "A") + verdict_line(rid, "1:0", "B", "B", "A")
                   + verdict_line(rid, "2:0", "tie", None, "B") + verdict_line(rid, "3:0", "A", "A", "B")
                   + verdict_line(rid, "4:0", "tie", "C", None), encoding="utf-8")
    s = run_judge(a, b, j)
    # B 1, 1; tie ½, ½; A 0: mean 3/5; s² = (0.16·2 + 0.01·2 + 0.36)/4 = 0.175, half = 1.96·√0.175/√5
    half = 1.96 * math.sqrt(0.175) / math.sqrt(5)
    assert (s.wins, s.ties, s.losses, s.n, s.no_verdict, s.done_now, s.missing) == (2, 2, 1, 5, 2, 0, 2)
    assert s.score == pytest.approx(0.6, abs=1e-12)
    assert s.interval == (pytest.approx(0.6 - half, abs=1e-12), pytest.approx(0.6 + half, abs=1e-12))
    assert half == pytest.approx(0.366682, abs=1e-6)  # 1.96 · 0.187083
    assert (s.a, s.b, s.judge, s.aspect, s.verdicts) == (str(a), str(b), str(j), "detail", str(out))
    summary_path = tmp_path / "b.jsonl.judge-detail.jsonl.summary.json"
    raw = summary_path.read_bytes()
    assert raw.endswith(b"}\n") and not raw.startswith(b"\xef\xbb\xbf")
    assert json.loads(raw) == {"a": str(a), "b": str(b), "judge": str(j), "aspect": "detail", "wins": 2, "ties": 2,
                               "losses": 1, "n": 5, "score": pytest.approx(0.6), "interval": [pytest.approx(0.6 - half),
                                                                                           pytest.approx(0.6 + half)],
                               "no_verdict": 2, "done_now": 0, "verdicts": str(out), "missing": 2, "failed": 0}
    assert list(json.loads(raw)) == ["a", "b", "judge", "aspect", "wins", "ties", "losses", "n", "score", "interval",
                                     "no_verdict", "done_now", "verdicts", "missing", "failed"]
    assert s.to_json() == json.loads(raw) | {"interval": s.interval}


@pytest.mark.parametrize(("verdicts", "wins", "ties", "losses"), [
    (["B"], 1, 0, 0),
    (["A"], 0, 0, 1),
    (["tie"], 0, 1, 0),
    (["B", "B", "B", "B", "B"], 5, 0, 0),
    (["A", "A", "A", "A", "A"], 0, 0, 5),
    (["tie", "tie", "tie", "tie", "tie"], 0, 5, 0),
    (["A", "B", "tie", "B", "A"], 2, 1, 2),
])
def test_counts_by_hand_through_the_summary_file(tmp_path, pairs, verdicts, wins, ties, losses):
    _, b, j = pairs
    n = len(verdicts)
    a = write_jsonl(tmp_path / "a.jsonl", [rec(i, f"Seed {i}?", f"Answer {i}.") for i in range(n)])  # n rows pair
    rid = run_id(a, b, j, "truthfulness", 64)
    out = tmp_path / "v.jsonl"
    out.write_text("".join(verdict_line(rid, f"{i}:0", v) for i, v in enumerate(verdicts)), encoding="utf-8")
    s = run_judge(a, b, j, aspect="truthfulness", output=out, max_tokens=64)
    summary = json.loads((tmp_path / "v.jsonl.summary.json").read_text(encoding="utf-8"))
    mean, lo, hi = ref_score(verdicts)
    assert {k: summary[k] for k in ("wins", "ties", "losses", "n", "done_now", "no_verdict")} == \
        {"wins": wins, "ties": ties, "losses": losses, "n": n, "done_now": 0, "no_verdict": 0}
    assert summary["score"] == pytest.approx((wins + ties / 2) / n, abs=1e-12) == mean
    assert summary["interval"] == [pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)]
    assert summary["missing"] == (5 - n) + 1  # B's rows A lacks, and B's row 7
    assert s.aspect == summary["aspect"] == "truthfulness" and not (tmp_path / "b.jsonl.judge-truthfulness.jsonl").exists()


def test_a_verdict_is_counted_once_by_its_last_record_and_only_for_rows_both_answer(tmp_path, pairs):
    a, b, j = pairs
    rid = run_id(a, b, j)
    out = tmp_path / "v.jsonl"
    lines = [verdict_line(rid, f"{i}:0", "A") for i in range(5)]
    lines += [verdict_line(rid, "2:0", "B", "B", "A"), verdict_line(rid, "7:0", "B")]  # judged again; a row A lacks
    out.write_text("".join(lines), encoding="utf-8")
    s = run_judge(a, b, j, output=out)
    assert (s.wins, s.ties, s.losses, s.n, s.no_verdict, s.missing) == (1, 0, 4, 5, 0, 2)


def test_the_run_id_covers_the_files_the_judge_the_aspect_and_the_reply_length(tmp_path, pairs):
    a, b, j = pairs
    out = tmp_path / "v.jsonl"
    out.write_text("".join(verdict_line(run_id(a, b, j), f"{i}:0", "B") for i in range(5)), encoding="utf-8")
    before = out.read_bytes()
    assert run_judge(a, b, j, output=out).wins == 5
    other_judge = meta_gguf(tmp_path / "other.gguf")
    other_judge.write_bytes(other_judge.read_bytes() + b"\0")
    other_a = write_jsonl(tmp_path / "a2.jsonl", [rec(i, f"Seed {i}?", f"Answer {i}!") for i in range(6)])
    for args, kw in [((a, b, j), {"max_tokens": 100}), ((a, b, j), {"aspect": "helpfulness"}),
                     ((a, b, other_judge), {}), ((other_a, b, j), {}), ((b, a, j), {})]:
        with pytest.raises(JobError) as e:
            run_judge(*args, output=out, **kw)
        assert str(e.value) == (f"{out} holds verdicts of another judging run (other files, judge or settings): give "
                                "another output") and e.value.fields == {"path": str(out)}
        assert out.read_bytes() == before  # nothing cut, nothing appended


def test_the_default_ledger_is_named_by_the_aspect_and_the_summary_sits_beside_it(tmp_path, pairs):
    a, b, j = pairs
    for aspect in judging.ASPECTS:
        rid = run_id(a, b, j, aspect)
        (tmp_path / f"b.jsonl.judge-{aspect}.jsonl").write_text(
            "".join(verdict_line(rid, f"{i}:0", "tie") for i in range(5)), encoding="utf-8")
        s = run_judge(a, b, j, aspect=aspect)
        assert s.verdicts == str(tmp_path / f"b.jsonl.judge-{aspect}.jsonl") and s.ties == 5
        assert json.loads((tmp_path / f"b.jsonl.judge-{aspect}.jsonl.summary.json").read_text())["aspect"] == aspect


def test_a_ledger_with_a_torn_last_line_and_blank_lines_is_read_and_repaired(tmp_path, pairs):
    a, b, j = pairs
    rid = run_id(a, b, j)
    out = tmp_path / "v.jsonl"
    good = [verdict_line(rid, f"{i}:0", "B") for i in range(5)]
    kept = "\n" + "".join(good[:2]) + "  \n" + "".join(good[2:])
    out.write_text(kept + '{"run_id": "' + rid[:9], encoding="utf-8")  # a kill while writing a sixth line
    assert run_judge(a, b, j, output=out).wins == 5
    assert out.read_text(encoding="utf-8") == kept


@pytest.mark.parametrize(("content", "why"), [
    (b"not json\n", "line 1: not JSON"),
    (b'{"key": "0:0"}\n', "line 1: not a verdict record"),
    (b'{"run_id": 5}\n', "line 1: not a verdict record"),
    (b"[1]\n", "line 1: not a verdict record"),
    (b"\n\nnot json\n", "line 3: not JSON"),
])
def test_a_file_that_is_not_a_judge_ledger_is_refused_untouched(tmp_path, pairs, content, why):
    a, b, j = pairs
    out = tmp_path / "v.jsonl"
    out.write_bytes(content)
    with pytest.raises(JobError) as e:
        run_judge(a, b, j, output=out)
    assert str(e.value) == f"{out} is not a localaug judge ledger ({why}): give another output"
    assert e.value.fields == {"path": str(out)} and out.read_bytes() == content


def test_an_output_that_is_a_folder_is_a_usage_error(tmp_path, pairs):
    a, b, j = pairs
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError) as e:
        run_judge(a, b, j, output=tmp_path / "out")
    assert str(e.value) == f"output {tmp_path / 'out'} is not a regular file: give a file path"


def test_a_ledger_another_run_is_writing_is_refused_and_the_lock_stays_beside_it(tmp_path, pairs):
    from localaug.core.files import exclusive_lock

    a, b, j = pairs
    out = tmp_path / "v.jsonl"
    out.write_text("".join(verdict_line(run_id(a, b, j), f"{i}:0", "B") for i in range(5)), encoding="utf-8")
    lock = tmp_path / "v.jsonl.lock"
    with exclusive_lock(lock) as held:
        assert held
        with pytest.raises(JobError) as e:
            run_judge(a, b, j, output=out)
    assert str(e.value) == f"another localaug run is writing {out}: wait for it or choose another output"
    assert not (tmp_path / "v.jsonl.summary.json").exists()
    assert run_judge(a, b, j, output=out).wins == 5 and lock.is_file()


def test_an_output_onto_the_judge_folder_is_refused_before_the_judge_is_read(tmp_path, pairs):
    a, b, _ = pairs
    folder = tmp_path / "judge-checkpoint"
    folder.mkdir()
    with pytest.raises(UsageError) as e:
        run_judge(a, b, folder, output=folder)
    assert str(e.value).startswith(f"output {folder} is one of the files this reads")


def test_done_keeps_only_whole_verdicts_of_this_run(tmp_path):
    out = tmp_path / "v.jsonl"
    assert judge_mod._done(out, "r") == {}
    good = {"run_id": "r", "key": "0:0", "verdict": "B", "first": "B", "second": "A"}
    damaged = [
        {**good, "key": "1:0", "verdict": "C"}, {**good, "key": "2:0", "verdict": None},
        {**good, "key": "3:0", "first": "D"}, {**good, "key": "4:0", "second": "b"},
        {**good, "key": 5}, {k: v for k, v in good.items() if k != "key"},
        {**good, "key": "6:0", "first": None, "second": None, "verdict": "tie"},  # whole: no verdict in either reading
        {**good, "key": "7:0", "first": "C", "second": "C", "verdict": "tie"},
        {**good, "key": "8:0", "verdict": "A"},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in [good, *damaged]), encoding="utf-8")
    done = judge_mod._done(out, "r")
    assert sorted(done) == ["0:0", "6:0", "7:0", "8:0"]  # a damaged verdict is judged again
    assert done["0:0"] == good and done["8:0"]["verdict"] == "A"


def test_judge_errors_before_any_judging(tmp_path, pairs):
    a, b, j = pairs
    with pytest.raises(UsageError) as e:
        run_judge(a, b, j, aspect="style")
    assert str(e.value) == "aspect 'style': use detail, truthfulness, helpfulness"
    lone = write_jsonl(tmp_path / "lone.jsonl", [rec(40, "Q", "R")])
    with pytest.raises(UsageError) as e:
        run_judge(a, lone, j)
    assert str(e.value) == (f"{a} and {lone} share no rows: judge answers to the same inputs (e.g. the seeds and "
                            "their refined versions)")
    for output in (a, b, j):
        with pytest.raises(UsageError) as e:
            run_judge(a, b, j, output=output)
        assert "is one of the files this reads" in str(e.value) and str(e.value).startswith(f"output {output} ")
        assert not (tmp_path / "b.jsonl.judge-detail.jsonl").exists()
    summary_on_a = tmp_path / "x.jsonl"
    summary_on_a.with_name("x.jsonl.summary.json").symlink_to(a)
    with pytest.raises(UsageError, match="is one of the files this reads"):
        run_judge(a, b, j, output=summary_on_a)
    for page in (a, b, j, tmp_path / "b.jsonl.judge-detail.jsonl.summary.json"):
        page.touch()
        with pytest.raises(UsageError) as e:
            run_judge(a, b, j, html=page)
        assert str(e.value).startswith(f"html {page} is one of the files this reads")
    (tmp_path / "b.jsonl.judge-detail.jsonl.summary.json").unlink()
    not_page = write_jsonl(tmp_path / "notes.html", [{"x": 1}])
    with pytest.raises(UsageError) as e:
        run_judge(a, b, j, html=not_page)
    assert str(e.value) == (f"html {not_page} is not an HTML page (no </body>): give a page made by localaug report, "
                            "or a new file name")
    assert not (tmp_path / "b.jsonl.judge-detail.jsonl").exists()  # refused before any judging


# --- the summary as rows and on a page -------------------------------------------------------------------


def summary(**kw) -> JudgeSummary:
    base = dict(a="a.jsonl", b="b.jsonl", judge="/models/judge<7b>.gguf", aspect="detail", wins=3, ties=2, losses=1, n=6,
                score=0.6666666, interval=(0.41234, 0.92345), no_verdict=1, done_now=6, verdicts="v&.jsonl", missing=4)
    return JudgeSummary(**{**base, **kw})


def test_summary_rows():
    assert summary().rows() == [
        ("aspect", "detail"), ("judge", "judge<7b>.gguf"), ("pairs judged", "6"), ("B better (wins)", "3"),
        ("ties", "2"), ("A better (losses)", "1"), ("B's score (wins + ties/2) / n", "0.667  (95% interval 0.412–0.923)"),
        ("replies with no verdict (ties)", "1"), ("rows in only one file", "4"), ("verdicts", "v&.jsonl"),
    ]
    nan = float("nan")
    assert dict(summary(score=nan, interval=(nan, nan)).rows())["B's score (wins + ties/2) / n"] == "—"


PAGE_HEAD = "<!doctype html><html><head><meta charset='utf-8'><title>localaug judge</title></head><body>"
TABLE = ("<h2>Judge: detail</h2><table><tr><th>aspect</th><td>detail</td></tr><tr><th>judge</th><td>judge&lt;7b&gt;.gguf"
         "</td></tr><tr><th>pairs judged</th><td>6</td></tr><tr><th>B better (wins)</th><td>3</td></tr><tr><th>ties</th>"
         "<td>2</td></tr><tr><th>A better (losses)</th><td>1</td></tr><tr><th>B&#x27;s score (wins + ties/2) / n</th>"
         "<td>0.667  (95% interval 0.412–0.923)</td></tr><tr><th>replies with no verdict (ties)</th><td>1</td></tr>"
         "<tr><th>rows in only one file</th><td>4</td></tr><tr><th>verdicts</th><td>v&amp;.jsonl</td></tr></table>")


def test_the_page_table_is_a_page_of_its_own_or_goes_before_the_end_of_a_report(tmp_path):
    new = tmp_path / "new.html"
    add_to_page(new, summary())
    assert new.read_bytes() == (PAGE_HEAD + TABLE + "</body></html>\n").encode("utf-8")
    report = tmp_path / "report.html"
    report.write_text("<html><body><p>figures</p><pre>&lt;/body&gt;</pre></body></html>\n<!-- </body> -->", encoding="utf-8")
    add_to_page(report, summary())
    assert report.read_text(encoding="utf-8") == (
        "<html><body><p>figures</p><pre>&lt;/body&gt;</pre>" + TABLE + "</body></html>\n<!-- </body> -->")
    add_to_page(report, summary(aspect="truthfulness"))
    text = report.read_text(encoding="utf-8")
    assert text.index("Judge: detail") < text.index("Judge: truthfulness") < text.index("</body>")
    assert text.count("</body>") == 2


def test_a_page_path_that_is_not_a_page_is_refused(tmp_path):
    folder = tmp_path / "dir.html"
    folder.mkdir()
    with pytest.raises(UsageError) as e:
        add_to_page(folder, summary())
    assert str(e.value) == f"html {folder} is not a regular file: give a report page or a new file name"
    binary = tmp_path / "b.html"
    binary.write_bytes(b"\xff\xfe</body>")  # not UTF-8: not a page localaug wrote
    with pytest.raises(UsageError, match="is not an HTML page"):
        add_to_page(binary, summary())
    assert binary.read_bytes() == b"\xff\xfe</body>"
    with pytest.raises(WriteError) as e:
        add_to_page(tmp_path / "no" / "page.html", summary())
    assert str(e.value) == f"output folder {tmp_path / 'no'} does not exist: create it or pass another html"
    assert judge_mod._page_text(tmp_path / "none.html") is None
    ok = tmp_path / "ok.html"
    ok.write_text("<body>ü</body>", encoding="utf-8")
    assert judge_mod._page_text(ok) == "<body>ü</body>"


def test_a_judge_run_adds_its_table_to_the_page(tmp_path, pairs):
    a, b, j = pairs
    rid = run_id(a, b, j)
    out = tmp_path / "v.jsonl"
    out.write_text("".join(verdict_line(rid, f"{i}:0", v) for i, v in enumerate(["B", "B", "A", "tie", "B"])),
                   encoding="utf-8")
    page = tmp_path / "page.html"
    s = run_judge(a, b, j, output=out, html=page)
    html = page.read_text(encoding="utf-8")
    assert html.startswith(PAGE_HEAD + "<h2>Judge: detail</h2><table>") and html.endswith("</table></body></html>\n")
    assert "<tr><th>B better (wins)</th><td>3</td></tr>" in html and "<tr><th>pairs judged</th><td>5</td></tr>" in html
    assert f"<td>{s.score:.3f}  (95% interval" in html and "0.700" in html


# --- results of the backend ----------------------------------------------------------------------------


# --- a real judge whose verdicts the answers choose (llama.cpp) --------------------------------------------


@pytest.fixture(scope="module")
def scripted_judge(tmp_path_factory) -> Path:
    from scripted_judge import build_judge_checkpoint

    from localaug.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("scripted-judge")
    return convert_checkpoint(build_judge_checkpoint(root / "ckpt"), root / "judge.F16.gguf", "F16").path


# (A's answer, B's answer, verdict, first reading, second reading): the judge ranks answers by their
# first character, "+" over "~" over "-"; "*" it prefers whenever it reads it first; "?" it cannot
# judge (tests/scripted_judge.py)
CASES = [
    ("-a", "+b", "B", "B", "A"),        # B preferred in both orders: a win
    ("+a", "-b", "A", "A", "B"),        # A preferred in both orders: a loss
    ("*a", "*b", "tie", "A", "A"),      # each preferred when shown first: position bias, a tie
    ("~a", "~b", "tie", "C", "C"),      # the judge says tie
    ("*a", "?b", "tie", "A", None),     # no verdict in one reading
    ("+a", "+b", "tie", "C", "C"),
    ("-a", "~b", "B", "B", "A"),
    ("~a", "+b", "B", "B", "A"),
    ("?a", "-b", "tie", None, None),    # no verdict at all
    ("+a", "~b", "A", "A", "B"),
    ("-a", "+b", "B", "B", "A"),        # row 10: keys are in row order, 10 after 9
]
REPLY = {"A": "[[A]]", "B": " [[B]]", "C": "([[C]]", None: "I cannot tell."}  # what the judge writes for each reading


def judged_files(tmp_path: Path, cases=CASES) -> tuple[Path, Path]:
    """A: answers to the seeds ("!Seed i?": a question the judge takes); B: answers to the refined
    versions ("Refined i?": one it cannot judge, should it be shown), paired by origin.row."""
    a = write_jsonl(tmp_path / "seeds.answers.jsonl", [rec(i, f"!Seed {i}?", ans) for i, (ans, *_) in enumerate(cases)]
                    + [rec(50, "!Only in A?", "+x")])
    b = write_jsonl(tmp_path / "refined.answers.jsonl",
                    [rec(i + 100, f"Refined {i}?", ans, origin={"row": i}) for i, (_, ans, *_) in enumerate(cases)])
    return a, b


def expected_records(rid: str, cases=CASES) -> list[dict]:
    return [{"run_id": rid, "key": f"{i}:0", "aspect": "detail", "first": first, "second": second, "verdict": verdict,
             "reply_first": REPLY[first], "reply_second": REPLY[second]}
            for i, (_, _, verdict, first, second) in enumerate(cases)]


def test_a_real_judge_counts_wins_ties_and_losses_exactly(tmp_path, scripted_judge):
    a, b = judged_files(tmp_path)
    ticks = []
    s = run_judge(a, b, scripted_judge, max_tokens=16, threads=1, parallel=3, progress=lambda k, n: ticks.append((k, n)))
    verdicts = [v for _, _, v, *_ in CASES]
    assert (s.wins, s.ties, s.losses, s.n, s.no_verdict, s.done_now, s.missing) == (4, 5, 2, 11, 2, 11, 1)
    mean, lo, hi = ref_score(verdicts)
    assert s.score == pytest.approx(mean, abs=1e-12) == (4 + 5 / 2) / 11
    assert s.interval == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert ticks == [(k, 11) for k in range(1, 12)]
    records = [json.loads(x) for x in Path(s.verdicts).read_text(encoding="utf-8").splitlines()]
    records.sort(key=lambda r: int(r["key"].split(":")[0]))  # batched: in the order the pairs finished
    assert records == expected_records(run_id(a, b, scripted_judge, max_tokens=16))
    summary = json.loads(Path(s.verdicts + ".summary.json").read_text())
    assert {k: summary[k] for k in ("wins", "ties", "losses", "n", "no_verdict", "missing")} == \
        {"wins": 4, "ties": 5, "losses": 2, "n": 11, "no_verdict": 2, "missing": 1}


def test_a_real_judge_run_resumes_where_the_ledger_stops(tmp_path, scripted_judge):
    a, b = judged_files(tmp_path)
    out = tmp_path / "v.jsonl"
    first = run_judge(a, b, scripted_judge, output=out, max_tokens=16, threads=1, parallel=1)
    full = out.read_text(encoding="utf-8").splitlines(keepends=True)
    assert first.done_now == 11 and [json.loads(x) for x in full] == expected_records(run_id(a, b, scripted_judge, max_tokens=16))
    keep = [full[i] for i in (0, 3, 4, 9)]
    out.write_text("".join(keep) + full[5][:30], encoding="utf-8")  # killed while writing row 5's verdict
    ticks = []
    again = run_judge(a, b, scripted_judge, output=out, max_tokens=16, threads=1, parallel=2,
                      progress=lambda k, n: ticks.append((k, n)))
    assert again.done_now == 7 and ticks == [(k, 11) for k in range(5, 12)]
    assert (again.wins, again.ties, again.losses, again.n, again.no_verdict) == (4, 5, 2, 11, 2)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[:4] == keep and sorted(lines) == sorted(full)  # the same verdicts, none twice
    assert run_judge(a, b, scripted_judge, output=out, max_tokens=16, threads=1).done_now == 0


# row 0's replies ("I cannot tell.") are longer than row 1's: decoded together, row 1 finishes first
ORDER_CASES = [("?a", "-b", "tie", None, None), ("+a", "-b", "A", "A", "B")]


def _keys(path: Path) -> list[str]:
    return [json.loads(x)["key"] for x in path.read_text(encoding="utf-8").splitlines()]


def test_the_batch_size_given_is_the_one_that_runs(tmp_path, scripted_judge, monkeypatch):
    a, b = judged_files(tmp_path, ORDER_CASES)
    monkeypatch.setenv("LOCALAUG_PARALLEL", "4")
    one = run_judge(a, b, scripted_judge, output=tmp_path / "one.jsonl", max_tokens=16, threads=1, parallel=1)
    assert _keys(tmp_path / "one.jsonl") == ["0:0", "1:0"]  # one sequence at a time: in row order
    four = run_judge(a, b, scripted_judge, output=tmp_path / "four.jsonl", max_tokens=16, threads=1, parallel=4)
    assert _keys(tmp_path / "four.jsonl") == ["1:0", "0:0"]  # all four readings together: the short pair first
    assert (one.wins, one.ties, one.losses, one.no_verdict) == (four.wins, four.ties, four.losses, four.no_verdict) \
        == (0, 1, 1, 1)


def test_a_judge_run_takes_its_batch_size_from_this_machines_calibration(tmp_path, scripted_judge, monkeypatch):
    import re as re_mod

    from localaug.family.registry import DEFAULT_CTX
    from localaug.runtime.bench import BATCH_SIZES
    from localaug.runtime.calibrate import affordable
    from localaug.runtime.engine import Engine, EngineOptions
    from localaug.runtime.llama import llama_cpp_version

    monkeypatch.delenv("LOCALAUG_PARALLEL")
    a, b = judged_files(tmp_path, ORDER_CASES)
    cpu = re_mod.search(r"^model name\s*:\s*(.*?)\s*$", Path("/proc/cpuinfo").read_text(), re_mod.M).group(1)
    with Engine(scripted_judge, EngineOptions(threads=1, device="cpu"), context=False) as e:
        top = max(affordable(e, DEFAULT_CTX, BATCH_SIZES))
    key = f"{sha(scripted_judge)}|cpu|0|1|False|{llama_cpp_version()}|{cpu}|{top}"
    cache = tmp_path / "home" / "calibration.json"
    cache.parent.mkdir(parents=True)
    for parallel, order, device in ((4, ["1:0", "0:0"], {}), (1, ["0:0", "1:0"], {"device": "cpu"})):
        entry = {key.replace("|cpu|", f"|{device.get('device', 'auto')}|"): {"parallel": parallel}}  # device auto: the default
        cache.write_text(json.dumps(entry), encoding="utf-8")
        out = tmp_path / f"cal{parallel}.jsonl"
        run_judge(a, b, scripted_judge, output=out, max_tokens=16, threads=1, **device)
        assert _keys(out) == order
        assert json.loads(cache.read_text()) == entry  # found: nothing measured


def test_replies_are_greedy_and_cut_at_max_tokens(tmp_path, scripted_judge):
    a, b = judged_files(tmp_path, ORDER_CASES)
    s = run_judge(a, b, scripted_judge, max_tokens=3, threads=1, parallel=1)
    records = [json.loads(x) for x in Path(s.verdicts).read_text(encoding="utf-8").splitlines()]
    # "I cannot tell." is four tokens: cut after three (the judge could also write other replies for
    # "?" when sampled: greedy, it writes this one); "[[A]]" and " [[B]]" are three
    assert [(r["reply_first"], r["reply_second"]) for r in records] == [("I cannot tell", "I cannot tell"),
                                                                       ("[[A]]", " [[B]]")]
    assert (s.wins, s.ties, s.losses, s.no_verdict) == (0, 1, 1, 1)
    assert records[0]["run_id"] == run_id(a, b, scripted_judge, max_tokens=3)


def test_a_context_too_small_for_a_reply_records_nothing_and_says_so(tmp_path, scripted_judge):
    """A pair whose judge request failed is not recorded (the same command retries it); when no
    pair could be judged the run is an error naming the cause and the count."""
    from localaug.core.errors import JobError

    a, b = judged_files(tmp_path, ORDER_CASES)
    with pytest.raises(JobError) as e:
        run_judge(a, b, scripted_judge, max_tokens=16, threads=1, parallel=2, n_ctx=4)
    msg = str(e.value)
    assert msg.startswith("no pair could be judged (2 failed): ") and "per-sequence context of 4 tokens" in msg, msg
    assert msg.endswith("run the same command again to retry them")
    ledger = Path(str(b) + ".judge-detail.jsonl")
    assert not ledger.exists() or ledger.read_text(encoding="utf-8") == ""
