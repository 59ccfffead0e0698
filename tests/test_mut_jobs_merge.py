"""``localaug merge`` (localaug/jobs/merge.py): which file each input names, the checks on the runs
and shards, one record per key in input order, de-duplication across inputs, the manifest, and
the exact bytes written. Expected values typed out here.

Fast tests over small files (no model): they guard merge.py in tools/mutation.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localaug.core.errors import JobError, UsageError, opt
from localaug.jobs.merge import _is_shard, ledgers_of, merge_outputs
from localaug.jobs.paths import manifest_paths
from localaug.jobs.schema import EXPECTED

RUN = "a" * 64


def rec(key: str, row: int | None, status: str = "ok", task: str = "refine", **extra) -> dict:
    r = {"source_id": key, "task": task, "status": status}
    if row is not None:
        r["row"] = row
    if status == "ok" and task == "refine" and "output" not in extra:
        r["output"] = f"refined {key}"
    return {**r, **extra}


def expand(key: str, row: int, outputs: list[str], **extra) -> dict:
    return rec(key, row, "ok", "expand", outputs=outputs, **extra)


def line(r: dict) -> bytes:
    return (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")


def output(path: Path, recs: list[dict], run_id: str | None = RUN, complete: bool = True, shard=None, **fields) -> Path:
    """A job output (jsonl) with its manifest beside it."""
    path.write_bytes(b"".join(line(r) for r in recs))
    if run_id is not None or fields:
        manifest = {"run_id": run_id, "complete": complete, "shard": shard, **fields}
        path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest))
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# --- shards joined -----------------------------------------------------------------------------------


def test_two_shards_join_in_input_order_with_exact_bytes_and_manifest(tmp_path):
    a = output(tmp_path / "out.0.jsonl", [rec("k2", 2), rec("k0", 0, output="零 😀")], shard=[0, 2])
    b = output(tmp_path / "out.1.jsonl", [rec("k1", 1, "failed", error="boom"), rec("k3", 3, "filtered"),
                                          rec("k1", 1)], shard=[1, 2])
    out = tmp_path / "merged.jsonl"
    s = merge_outputs([a, b], out)
    assert out.read_bytes() == (
        '{"source_id": "k0", "task": "refine", "status": "ok", "row": 0, "output": "零 😀"}\n'
        '{"source_id": "k1", "task": "refine", "status": "ok", "row": 1, "output": "refined k1"}\n'
        '{"source_id": "k2", "task": "refine", "status": "ok", "row": 2, "output": "refined k2"}\n'
        '{"source_id": "k3", "task": "refine", "status": "filtered", "row": 3}\n').encode("utf-8")
    assert (s.records_read, s.rows, s.superseded, s.unreadable, s.items_removed, s.written) == (5, 4, 1, 0, 0, 4)
    assert s.by_status == {"ok": 3, "filtered": 1} and s.run_ids == [RUN] and s.warnings == []
    assert s.output == out and s.manifest == tmp_path / "merged.jsonl.manifest.json" and s.inputs == [a, b]
    manifest = json.loads(s.manifest.read_text())
    assert re.fullmatch(r"20\d\d-[01]\d-[0-3]\dT[0-2]\d:[0-5]\d:[0-6]\d[+-]\d{4}", manifest.pop("finished"))
    assert manifest == {
        "merged": [str(a), str(b)], "output": str(out), "format": "jsonl", "run_ids": [RUN], "dedup": "exact",
        "minhash_threshold": None,
        "counts": {"records_read": 5, "rows": 4, "superseded": 1, "unreadable": 0, "items_removed_as_duplicates": 0,
                   "ok": 3, "filtered": 1},
        "written": 4, "warnings": [],
    }


def test_records_without_a_row_come_last_and_equal_rows_by_file(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("x", None), rec("b0", 5)])
    b = output(tmp_path / "b.jsonl", [rec("y", None), rec("b1", 5), rec("c", 0)])
    out = tmp_path / "m.jsonl"
    merge_outputs([b, a], out)
    assert [r["source_id"] for r in lines_of(out)] == ["c", "b1", "b0", "y", "x"]


def test_best_record_wins_across_files_later_of_equals(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k", 0, output="from a"), rec("j", 1, "failed", error="a")])
    b = output(tmp_path / "b.jsonl", [rec("k", 0, "failed", error="b"), rec("j", 1, "failed", error="b")])
    c = output(tmp_path / "c.jsonl", [rec("k", 0, output="from c"), rec("j", 1, "filtered")])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a, b], out)
    assert lines_of(out) == [rec("k", 0, output="from a"), rec("j", 1, "failed", error="b")]
    assert s.by_status == {"ok": 1, "failed": 1}
    merge_outputs([a, b, c], out)
    assert lines_of(out) == [rec("k", 0, output="from c"), rec("j", 1, "filtered")]


def test_one_input_of_one_row(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("only", 0)])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a], out)
    assert out.read_bytes() == line(rec("only", 0)) and (s.rows, s.written) == (1, 1)


def test_unreadable_lines_are_counted(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k", 0)])
    with open(a, "ab") as f:
        f.write(b"not json\n[1]\n\n")
    s = merge_outputs([a], tmp_path / "m.jsonl")
    assert (s.records_read, s.unreadable, s.rows) == (1, 2, 1)


# --- what each input names ------------------------------------------------------------------------------


def test_manifest_paths():
    assert manifest_paths(Path("/d/out.jsonl")) == (Path("/d/out.jsonl.manifest.json"), Path("/d/out.jsonl.manifest.json"))
    assert manifest_paths(Path("/d/train.json.ledger.jsonl")) == (Path("/d/train.json.ledger.jsonl.manifest.json"),
                                                                 Path("/d/train.json.manifest.json"))


def test_a_training_file_output_is_read_through_its_ledger(tmp_path):
    train = tmp_path / "train.json"
    train.write_text("[]\n")
    ledger = output(tmp_path / "train.json.ledger.jsonl", [rec("k", 0)], run_id=None)
    (tmp_path / "train.json.manifest.json").write_text(json.dumps({"run_id": RUN, "complete": True, "ledger": str(ledger)}))
    [src] = ledgers_of([train])
    assert src.path == ledger and src.manifest["run_id"] == RUN and src.folder is None
    [src] = ledgers_of([ledger])  # the ledger itself: its manifest is the training file's
    assert src.path == ledger and src.manifest["run_id"] == RUN


def test_a_moved_output_finds_its_ledger_beside_it(tmp_path):
    (tmp_path / "new").mkdir()
    train = tmp_path / "new" / "train.json"
    train.write_text("[]\n")
    ledger = output(tmp_path / "new" / "train.json.ledger.jsonl", [rec("k", 0)], run_id=None)
    (tmp_path / "new" / "train.json.manifest.json").write_text(json.dumps({"run_id": RUN, "ledger": "old/train.json.ledger.jsonl"}))
    assert [s.path for s in ledgers_of([train])] == [ledger]
    (tmp_path / "new" / "train.json.manifest.json").write_text(json.dumps({"run_id": RUN, "ledger": ""}))
    assert [s.path for s in ledgers_of([train])] == [train]  # no ledger named: the file itself
    (tmp_path / "new" / "train.json.manifest.json").write_text(json.dumps({"run_id": RUN, "ledger": 3}))
    assert [s.path for s in ledgers_of([train])] == [train]


def test_an_absolute_ledger_that_is_gone_is_refused(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("[]")
    (tmp_path / "out.json.manifest.json").write_text(json.dumps({"run_id": RUN, "ledger": str(tmp_path / "gone.jsonl")}))
    with pytest.raises(UsageError) as e:
        ledgers_of([out])
    assert str(e.value) == f"{out} does not exist (give job outputs, or folders of .jsonl parts)"


def test_a_relative_ledger_name_that_exists_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    ledger = output(tmp_path / "sub" / "led.jsonl", [rec("k", 0)], run_id=None)
    out = tmp_path / "sub" / "out.json"
    out.write_text("[]")
    (tmp_path / "sub" / "out.json.manifest.json").write_text(json.dumps({"run_id": RUN, "ledger": "sub/led.jsonl"}))
    assert [s.path for s in ledgers_of([out])] == [Path("sub/led.jsonl")]
    assert Path("sub/led.jsonl").resolve() == ledger.resolve()


def test_missing_input_and_empty_folder_are_refused(tmp_path):
    with pytest.raises(UsageError) as e:
        ledgers_of([tmp_path / "nope.jsonl"])
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'} does not exist (give job outputs, or folders of .jsonl parts)"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    (tmp_path / "empty" / "dir.jsonl").mkdir()  # a folder named like a part is no part
    with pytest.raises(UsageError) as e:
        ledgers_of([tmp_path / "empty"])
    assert str(e.value) == f"{tmp_path / 'empty'} holds no .jsonl part files"


def test_a_folder_of_parts_with_its_manifest(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    p1 = output(d / "part-b.jsonl", [rec("k1", 1)], run_id=None)
    p0 = output(d / "part-a.jsonl", [rec("k0", 0)], run_id=None)
    (d / "manifest.json").write_text(json.dumps({"run_id": RUN, "complete": False}))
    (d / "records.stale").write_bytes(line(rec("old", 9)))
    srcs = ledgers_of([d])
    assert [(s.path, s.folder, s.manifest["run_id"]) for s in srcs] == [(p0, d, RUN), (p1, d, RUN)]
    out = tmp_path / "m.jsonl"
    s = merge_outputs([d], out)
    assert [r["source_id"] for r in lines_of(out)] == ["k0", "k1"]
    assert s.warnings == [f"{d} is unfinished: rerun its command to complete it, then merge again"]  # once for the folder


def test_a_folder_without_manifest_uses_each_parts_own(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    p0 = output(d / "a.jsonl", [rec("k0", 0)], run_id="r0", complete=False)
    p1 = output(d / "b.jsonl", [rec("k1", 1)], run_id=None)
    srcs = ledgers_of([d])
    assert [(s.path, s.folder) for s in srcs] == [(p0, None), (p1, None)]
    assert srcs[0].manifest == {"run_id": "r0", "complete": False, "shard": None} and srcs[1].manifest is None
    s = merge_outputs([d], tmp_path / "m.jsonl")
    assert s.warnings == [f"{p0} is unfinished: rerun its command to complete it, then merge again"]


def test_folders_and_files_together_in_any_order(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    output(d / "part-0.jsonl", [rec("k1", 1)], run_id=None)
    (d / "manifest.json").write_text(json.dumps({"run_id": RUN, "complete": True}))
    d2 = tmp_path / "run2"
    d2.mkdir()
    output(d2 / "part-0.jsonl", [rec("k3", 3)], run_id=None)
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    b = output(tmp_path / "b.jsonl", [rec("k2", 2)])
    for inputs in ([a, d, b, d2], [d, a, d2, b], [d2, d, a, b]):
        out = tmp_path / "m.jsonl"
        s = merge_outputs(inputs, out)
        assert [r["source_id"] for r in lines_of(out)] == ["k0", "k1", "k2", "k3"] and len(s.inputs) == 4


def test_the_output_folder_is_made(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    out = tmp_path / "new" / "deeper" / "m.jsonl"
    merge_outputs([a], out)
    assert out.read_bytes() == line(rec("k0", 0))


def test_the_same_file_given_twice_is_read_once(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k", 0)])
    link = tmp_path / "link.jsonl"
    link.symlink_to(a)
    assert [s.path for s in ledgers_of([a, link, a])] == [a]
    s = merge_outputs([a, link], tmp_path / "m.jsonl")
    assert (s.records_read, s.superseded) == (1, 0)


# --- runs and shards -----------------------------------------------------------------------------------------


def test_different_runs_are_refused_unless_asked(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)], run_id="r2")
    b = output(tmp_path / "b.jsonl", [rec("k1", 1)], run_id="r1")
    c = output(tmp_path / "c.jsonl", [rec("k2", 2)], run_id=None, complete=True, other=1)
    with pytest.raises(JobError) as e:
        merge_outputs([a, b, c], tmp_path / "m.jsonl")
    assert e.value.template == ("these outputs are from 2 different runs (different task, model, sampling or filters): merge "
                                f"each run separately, or pass {opt('allow_mixed')} to join them anyway")
    assert not (tmp_path / "m.jsonl").exists()
    s = merge_outputs([a, b, c], tmp_path / "m.jsonl", allow_mixed=True)
    assert s.run_ids == ["r1", "r2"] and s.rows == 3
    assert json.loads(s.manifest.read_text())["run_ids"] == ["r1", "r2"]


def test_one_run_twice_is_one_run(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)], run_id="r1")
    b = output(tmp_path / "b.jsonl", [rec("k1", 1)], run_id="r1")
    assert merge_outputs([a, b], tmp_path / "m.jsonl").run_ids == ["r1"]


@pytest.mark.parametrize("shards, warning", [
    ([[0, 3], [2, 3]], "missing shard 1/3: the merge covers only part of the input"),
    ([[1, 4], [2, 4]], "missing shards 0/4, 3/4: the merge covers only part of the input"),
    ([[0, 2], [1, 3]], "shards of different splits (/2, /3)"),
    ([[0, 3], [1, 2], [0, 2]], "shards of different splits (/2, /3)"),
    ([[0, 2], [1, 2]], None),
    ([[0, 1]], None),
    ([[1, 2], [1, 2]], "missing shard 0/2: the merge covers only part of the input"),
    ([[0, 2], [True, 2]], "missing shard 1/2: the merge covers only part of the input"),  # true is no shard number
    ([[0, 2], "1/2"], "missing shard 1/2: the merge covers only part of the input"),
])
def test_missing_and_mixed_shards_are_reported(tmp_path, shards, warning):
    files = [output(tmp_path / f"out.{i}.jsonl", [rec(f"k{i}", i)], shard=sh) for i, sh in enumerate(shards)]
    s = merge_outputs(files, tmp_path / "m.jsonl")
    assert s.warnings == ([warning] if warning else [])
    assert json.loads(s.manifest.read_text())["warnings"] == s.warnings


@pytest.mark.parametrize("value, ok", [
    ([0, 1], True), ([2, 3], True), ([0, 4], True), ([3, 3], False), ([4, 3], False), ([-1, 3], False), ([0, 0], False),
    ([False, 2], False), ([0, True], False), ([0, 1, 2], False), ([0], False), ((0, 2), False), ("0/2", False),
    ([0.0, 2], False), ([0, 2.0], False), (None, False),
])
def test_is_shard(value, ok):
    assert _is_shard(value) is ok


def test_unfinished_outputs_are_each_named_once(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)], complete=False)
    b = output(tmp_path / "b.jsonl", [rec("k1", 1)], complete=True)
    c = output(tmp_path / "c.jsonl", [rec("k2", 2)], complete=None)
    s = merge_outputs([a, b, c], tmp_path / "m.jsonl")
    assert s.warnings == [f"{a} is unfinished: rerun its command to complete it, then merge again",
                          f"{c} is unfinished: rerun its command to complete it, then merge again"]


# --- what is not a job output -------------------------------------------------------------------------------


def test_a_file_of_other_json_is_refused_with_the_first_reason(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    other = tmp_path / "other.jsonl"
    other.write_text('\n{"instruction": "hi"}\n[1]\n')
    with pytest.raises(UsageError) as e:
        merge_outputs([a, other], tmp_path / "m.jsonl")
    assert str(e.value) == f"{other} is not a localaug job output (line 2: no source_id (the row key)): expected {EXPECTED}"
    assert not (tmp_path / "m.jsonl").exists()


def test_an_empty_file_is_an_output_only_with_a_manifest(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(UsageError) as e:
        merge_outputs([a, empty], tmp_path / "m.jsonl")
    assert str(e.value) == (f"{empty} is not a localaug job output (an empty file with no manifest beside it): "
                            f"expected {EXPECTED}")
    shard = output(tmp_path / "s.jsonl", [], shard=[1, 2])  # a shard that had no rows
    s = merge_outputs([a, shard], tmp_path / "m.jsonl")
    assert s.rows == 1 and s.records_read == 1
    junk = output(tmp_path / "j.jsonl", [])
    junk.write_bytes(b"junk\n")  # a manifest does not make other lines records
    with pytest.raises(UsageError) as e:
        merge_outputs([a, junk], tmp_path / "m2.jsonl")
    assert "(line 1: not JSON)" in str(e.value)


# --- arguments -----------------------------------------------------------------------------------------------


def test_bad_arguments(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    with pytest.raises(UsageError) as e:
        merge_outputs([a], tmp_path / "m.jsonl", dedup="fuzzy")
    assert e.value.template == f"{opt('dedup')} 'fuzzy': use none, exact, minhash"
    with pytest.raises(UsageError) as e:
        merge_outputs([a], tmp_path / "m.jsonl", fmt="csv")
    assert e.value.template == f"{opt('fmt')} 'csv': use jsonl, parquet, alpaca, sharegpt, messages, prompts, dpo"
    with pytest.raises(UsageError) as e:
        merge_outputs([], tmp_path / "m.jsonl")
    assert str(e.value) == "give the outputs to merge, e.g. localaug merge out.*.jsonl -o merged.jsonl"


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.manifest.json", "m.jsonl"])
def test_the_merge_never_writes_onto_what_it_reads(tmp_path, name):
    a = output(tmp_path / "a.jsonl", [rec("k0", 0)])
    target = tmp_path / name
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if name == "m.jsonl":  # the output's manifest would overwrite an input's manifest
        (tmp_path / "m.jsonl.manifest.json").symlink_to(tmp_path / "a.jsonl.manifest.json")
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UsageError) as e:
        merge_outputs([a], target)
    assert "is one of the files this reads" in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_dataset_info_of_an_input_folder_is_not_overwritten(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    output(d / "part-0.jsonl", [rec("k0", 0, "ok", "respond", instruction="q", response="r")], run_id=None)
    (d / "manifest.json").write_text(json.dumps({"run_id": RUN, "complete": True}))
    (d / "dataset_info.json").symlink_to(d / "manifest.json")
    with pytest.raises(UsageError):
        merge_outputs([d], d / "train.json", fmt="alpaca")
    s = merge_outputs([d], tmp_path / "train.json", fmt="alpaca")
    assert s.written == 1 and (tmp_path / "dataset_info.json").exists()
    # jsonl writes no dataset_info.json: one beside the output that is an input is no conflict
    s = merge_outputs([d], d / "merged.jsonl")
    assert s.written == 1


# --- de-duplication across inputs ----------------------------------------------------------------------------


def test_exact_duplicates_across_inputs_are_dropped_from_later_rows(tmp_path):
    a = output(tmp_path / "a.jsonl", [expand("k0", 0, ["Alpha task", "Beta task"], rejected={"too short": 1}, shortfall=1),
                                      expand("k2", 2, ["beta task ", "Gamma task"])])
    b = output(tmp_path / "b.jsonl", [expand("k1", 1, ["ALPHA TASK", "alpha task"]),
                                      rec("k3", 3, "filtered", "expand", outputs=["Alpha task"]),
                                      expand("k4", 4, ["Delta task", "gamma task"], shortfall=2)])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a, b], out)
    got = lines_of(out)
    assert got[0] == expand("k0", 0, ["Alpha task", "Beta task"], rejected={"too short": 1}, shortfall=1)
    assert got[1] == rec("k1", 1, "filtered", "expand", outputs=[], rejected={"duplicate": 2}, shortfall=2,
                         error="every new item duplicates another row's (merge)")
    assert got[2] == expand("k2", 2, ["Gamma task"], rejected={"duplicate": 1}, shortfall=1)
    assert got[3] == rec("k3", 3, "filtered", "expand", outputs=["Alpha task"])  # not ok: left alone
    assert got[4] == expand("k4", 4, ["Delta task"], shortfall=3, rejected={"duplicate": 1})  # 2 short, 1 more now
    assert s.items_removed == 4 and s.by_status == {"ok": 3, "filtered": 2}
    assert json.loads(s.manifest.read_text())["counts"]["items_removed_as_duplicates"] == 4
    s = merge_outputs([a, b], tmp_path / "none.jsonl", dedup="none")
    assert s.items_removed == 0 and lines_of(tmp_path / "none.jsonl")[1] == expand("k1", 1, ["ALPHA TASK", "alpha task"])


def test_pairs_are_deduplicated_by_instruction(tmp_path):
    pairs = lambda *qs: [{"instruction": q, "response": f"answer to {q}"} for q in qs]  # noqa: E731
    a = output(tmp_path / "a.jsonl", [rec("k0", 0, "ok", "pairs", pairs=pairs("What is rain?", "What is snow?")),
                                      rec("k1", 1, "ok", "pairs", pairs=pairs("what is rain?", "What is hail?"),
                                          rejected={"duplicate": 1})])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a], out)
    got = lines_of(out)
    assert got[1] == rec("k1", 1, "ok", "pairs", pairs=pairs("What is hail?"), rejected={"duplicate": 2}, shortfall=1)
    assert s.items_removed == 1


def test_near_duplicates_with_minhash(tmp_path):
    base = "Write a detailed guide on how to plant tomatoes in a small garden during spring"
    a = output(tmp_path / "a.jsonl", [expand("k0", 0, [base]),
                                      expand("k1", 1, [base + " season", "Explain photosynthesis to a child in simple words"])])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a], out, dedup="minhash", minhash_threshold=0.7)
    got = lines_of(out)
    assert got[1]["outputs"] == ["Explain photosynthesis to a child in simple words"]
    assert got[1]["rejected"] == {"near-duplicate": 1} and got[1]["shortfall"] == 1 and s.items_removed == 1
    manifest = json.loads(s.manifest.read_text())
    assert (manifest["dedup"], manifest["minhash_threshold"]) == ("minhash", 0.7)
    s = merge_outputs([a], tmp_path / "exact.jsonl", dedup="exact")
    assert s.items_removed == 0  # not the same text


def test_a_record_without_items_is_left_alone(tmp_path):
    a = output(tmp_path / "a.jsonl", [expand("k0", 0, ["Same"]), expand("k1", 1, []), rec("k2", 2, output="Same")])
    out = tmp_path / "m.jsonl"
    s = merge_outputs([a], out)
    assert lines_of(out)[1:] == [expand("k1", 1, []), rec("k2", 2, output="Same")] and s.items_removed == 0


# --- training formats ----------------------------------------------------------------------------------------


def test_merge_into_a_training_file(tmp_path):
    a = output(tmp_path / "a.jsonl", [rec("k1", 1, "ok", "respond", instruction="Q2", response="A2"),
                                      rec("k0", 0, "ok", "respond", instruction="Q1 你好", response="A1 😀"),
                                      rec("k2", 2, "failed", "respond", error="x")])
    out = tmp_path / "train.json"
    s = merge_outputs([a], out, fmt="alpaca")
    assert out.read_bytes() == ('[\n{"instruction": "Q1 你好", "input": "", "output": "A1 😀"},\n'
                                '{"instruction": "Q2", "input": "", "output": "A2"}\n]\n').encode("utf-8")
    assert (s.rows, s.written) == (3, 2)
    assert json.loads((tmp_path / "dataset_info.json").read_text())["train"]["file_name"] == "train.json"
    manifest = json.loads(s.manifest.read_text())
    assert (manifest["format"], manifest["written"], manifest["counts"]["rows"]) == ("alpaca", 2, 3)
