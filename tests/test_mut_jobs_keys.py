"""Row keys, shards and --limit/--shard selection (localaug/jobs/keys.py), pinned against
independent references: keys recomputed here with hashlib, shards by brute force.

Fast pure-logic tests (no model): they guard keys.py in tools/mutation.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.core.errors import UsageError, opt
from localaug.family.prompts import Pair
from localaug.jobs.config import JobConfig
from localaug.jobs.dataio import InputRow
from localaug.jobs.keys import KeysMet, RowKeys, make_key, parse_shard, row_identity, row_payload, select_rows, shard_of
from localaug.runtime.sampling import SamplingParams

PROPS = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
REFINE = JobConfig("refine", SamplingParams())
PAIRS = JobConfig("pairs", SamplingParams())
RUN = "run-1"


def sha(run_id: str, identity: str, occurrence: int) -> str:
    """The key as the docs define it: sha256 of run id, identity and occurrence, NUL-separated."""
    return hashlib.sha256(run_id.encode() + b"\x00" + identity.encode("utf-8", "surrogatepass") + b"\x00"
                          + str(occurrence).encode()).hexdigest()


def rows_of(texts: list[str], field: str = "instruction") -> list[InputRow]:
    return [InputRow(i, {field: t}) for i, t in enumerate(texts)]


def expected_keys(identities: list[str], run_id: str = RUN) -> list[str]:
    """Occurrences counted by brute force: the k-th time an identity appears is occurrence k."""
    return [sha(run_id, ident, identities[: i + 1].count(ident)) for i, ident in enumerate(identities)]


# --- payloads and identities -----------------------------------------------------------------------


def test_payload_of_a_text_row_is_its_field():
    assert row_payload(REFINE, InputRow(0, {"instruction": "  Write a poem.  "})) == "  Write a poem.  "
    nested = JobConfig("refine", SamplingParams(), field="q.text")
    assert row_payload(nested, InputRow(0, {"q": {"text": "你好"}})) == "你好"


@pytest.mark.parametrize("row, words", [
    (InputRow(0, {}, "invalid JSON on line 3: Expecting value"), "invalid JSON on line 3: Expecting value"),
    (InputRow(0, {"prompt": "x"}), "no field 'instruction' in this row"),
    (InputRow(0, {"instruction": 7}), "field 'instruction' is not text"),
    (InputRow(0, {"instruction": " \n\t"}), "empty text"),
    (InputRow(0, {"instruction": ""}), "empty text"),
])
def test_payload_refuses_with_the_reason(row, words):
    with pytest.raises(ValueError) as e:
        row_payload(REFINE, row)
    assert str(e.value) == words


def test_pairs_payload_takes_response_then_output():
    assert row_payload(PAIRS, InputRow(0, {"instruction": "Q", "response": "R", "output": "O"})) == [Pair("Q", "R")]
    assert row_payload(PAIRS, InputRow(0, {"instruction": "Q", "response": "  ", "output": "O"})) == [Pair("Q", "O")]
    assert row_payload(PAIRS, InputRow(0, {"instruction": "Q", "response": 3, "output": "O"})) == [Pair("Q", "O")]
    assert row_payload(PAIRS, InputRow(0, {"instruction": "Q", "output": "O"})) == [Pair("Q", "O")]
    own = JobConfig("pairs", SamplingParams(), response_field="answer")
    assert row_payload(own, InputRow(0, {"instruction": "Q", "answer": "A", "response": "R"})) == [Pair("Q", "A")]
    with pytest.raises(ValueError) as e:
        row_payload(own, InputRow(0, {"instruction": "Q", "response": "R"}))
    assert str(e.value) == "pairs needs a response: no non-empty 'answer' field"
    with pytest.raises(ValueError) as e:
        row_payload(PAIRS, InputRow(0, {"instruction": "Q", "response": "", "output": None}))
    assert str(e.value) == "pairs needs a response: no non-empty 'response' or 'output' field"


def test_identity_of_good_and_bad_rows():
    assert row_identity(REFINE, InputRow(0, {"instruction": "Hi"})) == "Hi"
    assert row_identity(PAIRS, InputRow(0, {"instruction": "Q", "response": "R"})) == "Q\x00R"
    # a bad row: its raw line when there is one, else its columns as sorted JSON, readable text
    assert row_identity(REFINE, InputRow(0, {}, "invalid JSON", raw='{"x": ')) == 'bad:{"x": '
    assert row_identity(REFINE, InputRow(0, {"b": "é", "a": 1})) == 'bad:{"a": 1, "b": "é"}'
    assert row_identity(REFINE, InputRow(0, {"b": "é", "a": 1}, "broken", raw="")) == "bad:"
    assert row_identity(REFINE, InputRow(0, {"d": date(2024, 5, 1)})) == 'bad:{"d": "2024-05-01"}'


# --- keys --------------------------------------------------------------------------------------------


def test_make_key_is_the_documented_sha256():
    assert make_key("r", "hello", 1) == hashlib.sha256(b"r\x00hello\x001").hexdigest()
    # text that is not valid Unicode (a lone surrogate) still has a key
    assert make_key("r", "a\ud800b", 2) == hashlib.sha256(b"r\x00a\xed\xa0\x80b\x002").hexdigest()


def test_repeated_texts_are_distinct_rows_counted_over_the_whole_input():
    texts = ["a", "b", "a", "a", "b", "c"]
    keys = [RowKeys(REFINE, RUN).key(r) for r in rows_of(["a"])]
    assert keys == [sha(RUN, "a", 1)]
    rk = RowKeys(REFINE, RUN)
    assert [rk.key(r) for r in rows_of(texts)] == [sha(RUN, "a", 1), sha(RUN, "b", 1), sha(RUN, "a", 2),
                                                  sha(RUN, "a", 3), sha(RUN, "b", 2), sha(RUN, "c", 1)]
    # bad rows are keyed by their raw line, counted like texts; a surrogate text is keyed too
    rk = RowKeys(REFINE, RUN)
    bad = [InputRow(0, {}, "x", raw="{"), InputRow(1, {}, "x", raw="{"), InputRow(2, {"instruction": "\udcff"})]
    assert [rk.key(r) for r in bad] == [sha(RUN, "bad:{", 1), sha(RUN, "bad:{", 2), sha(RUN, "\udcff", 1)]


def test_occurrences_are_counted_in_16_bytes_a_distinct_text():
    rk = RowKeys(REFINE, RUN)
    for row in rows_of(["a", "b", "a", "长" * 500]):
        rk.key(row)
    assert sorted(rk.seen.values()) == [1, 1, 2] and {len(d) for d in rk.seen} == {16}


def test_the_run_id_is_part_of_every_key():
    a = [r.key for r in select_rows(rows_of(["x", "y"]), REFINE, "run-a")]
    b = [r.key for r in select_rows(rows_of(["x", "y"]), REFINE, "run-b")]
    assert a == [sha("run-a", "x", 1), sha("run-a", "y", 1)] and b == [sha("run-b", "x", 1), sha("run-b", "y", 1)]


@PROPS
@given(st.lists(st.sampled_from(["a", "b", "语", "😀", "a\x00b", " c "]), max_size=30))
def test_keys_match_a_brute_force_count_of_occurrences(texts):
    got = [r.key for r in select_rows(rows_of(texts), REFINE, RUN)]
    assert got == expected_keys(texts)
    assert len(set(got)) == len(got)  # every row distinct, repeats included


# --- shards ---------------------------------------------------------------------------------------------


def test_shard_of_is_the_first_64_bits_modulo_n():
    key = "00000000000000ff" + "f" * 48  # 255 in the first 16 hex digits
    assert [shard_of(key, n) for n in (1, 2, 4, 7, 256, 1000)] == [0, 1, 3, 3, 255, 255]
    assert shard_of("0000000000000100" + "f" * 48, 256) == 0  # 256: the 17th digit is not read
    assert shard_of("0123456789abcdef" + "0" * 48, 10) == 0x0123456789ABCDEF % 10 == 5


@pytest.mark.parametrize("text, want", [("0/1", (0, 1)), ("0/4", (0, 4)), ("3/4", (3, 4)), ("12/100", (12, 100))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["4/4", "5/4", "0/0", "-1/4", "1", "1/", "/4", "a/4", "1/b", "1-4", "", "1/4/2"])
def test_parse_shard_refuses_with_the_advice(text):
    with pytest.raises(UsageError) as e:
        parse_shard(text)
    assert e.value.template == f"{opt('shard')} {text!r}: give i/N with 0 <= i < N, e.g. 0/4"


def test_parse_shard_passes_none_and_tuples_through():
    assert parse_shard(None) is None
    assert parse_shard((2, 3)) == (2, 3)


@PROPS
@given(st.lists(st.text(alphabet="abcxyz语😀", min_size=1, max_size=4), max_size=40), st.integers(1, 5), st.randoms())
def test_every_row_in_exactly_one_shard_and_stable_under_reordering(texts, n, rnd):
    keys = expected_keys(texts)
    shards = [[r.key for r in select_rows(rows_of(texts), REFINE, RUN, (i, n))] for i in range(n)]
    assert sorted(k for s in shards for k in s) == sorted(keys)  # a partition: every row once
    for i, got in enumerate(shards):  # in input order, each where its first 64 bits say
        assert got == [k for k in keys if int(k[:16], 16) % n == i]
    shuffled = texts[:]
    rnd.shuffle(shuffled)
    again = [{r.key for r in select_rows(rows_of(shuffled), REFINE, RUN, (i, n))} for i in range(n)]
    assert again == [set(s) for s in shards]  # the same rows (occurrences included) in the same shards


def test_shard_string_selection_matches_tuple():
    texts = [f"t{i}" for i in range(20)]
    keys = expected_keys(texts)
    got = [r.index for r in select_rows(rows_of(texts), REFINE, RUN, (1, 3))]
    assert got == [i for i, k in enumerate(keys) if int(k[:16], 16) % 3 == 1]


# --- --limit and --shard, and the rows a rerun drops or keeps ---------------------------------------------


class Counted:
    """An input that counts how many rows were read from it."""

    def __init__(self, rows: list[InputRow]) -> None:
        self.rows, self.read = rows, 0

    def __iter__(self):
        for row in self.rows:
            self.read += 1
            yield row


def test_selected_rows_carry_their_key_and_index():
    rows = rows_of(["p", "q", "p"])
    got = list(select_rows(rows, REFINE, RUN))
    assert [(r.index, r.key) for r in got] == [(0, sha(RUN, "p", 1)), (1, sha(RUN, "q", 1)), (2, sha(RUN, "p", 2))]


@pytest.mark.parametrize("limit", [0, 1, 2, 5, 9])
def test_limit_takes_the_first_rows_and_reads_one_row_past_them(limit):
    src = Counted(rows_of([f"r{i}" for i in range(5)]))
    got = [r.index for r in select_rows(src, REFINE, RUN, limit=limit)]
    assert got == list(range(min(limit, 5)))
    assert src.read == min(limit + 1, 5)


def test_limit_counts_the_rows_of_the_shard():
    texts = [f"row {i}" for i in range(30)]
    keys = expected_keys(texts)
    mine = [i for i, k in enumerate(keys) if int(k[:16], 16) % 2 == 1]
    assert len(mine) > 4
    assert [r.index for r in select_rows(rows_of(texts), REFINE, RUN, (1, 2), 4)] == mine[:4]
    assert [r.index for r in select_rows(rows_of(texts), REFINE, RUN, (1, 2), 1)] == mine[:1]


def test_keys_met_reads_until_every_output_key_is_met_then_stops():
    texts = [f"row {i}" for i in range(10)]
    keys = expected_keys(texts)
    met = KeysMet({keys[1]: "ok", keys[6]: "failed"})
    src = Counted(rows_of(texts))
    got = [r.index for r in select_rows(src, REFINE, RUN, limit=2, meet=met)]
    assert got == [0, 1]
    assert met.done and met.stale() == set()
    assert src.read == 7  # read up to the last key of the output (row 6), no further


def test_keys_met_with_nothing_to_meet_is_done_at_once():
    met = KeysMet({})
    assert met.done and met.stale() == set()
    src = Counted(rows_of(["a", "b", "c"]))
    assert [r.index for r in select_rows(src, REFINE, RUN, limit=1, meet=met)] == [0]
    assert src.read == 2


def test_keys_met_counts_each_key_once():
    met = KeysMet({"k1": "ok", "k2": "ok"})
    met("k1")
    met("k1")
    met("other")
    assert not met.done and met.met == {"k1"} and met.stale() == {"k2"}
    met("k2")
    assert met.done and met.stale() == set()


@PROPS
@given(st.lists(st.sampled_from("abcdefgh"), max_size=25), st.lists(st.sampled_from("abcdefghij"), max_size=12),
       st.one_of(st.none(), st.integers(0, 8)), st.one_of(st.none(), st.tuples(st.integers(0, 2), st.just(3))),
       st.sets(st.integers(0, 40), max_size=6))
def test_stale_rule_against_brute_force(texts, earlier, limit, shard, extra):
    """Records of rows outside the limit or shard are kept; records of rows gone from the input are
    dropped (the output's keys come from an earlier version of the input, plus foreign ones)."""
    now = expected_keys(texts)
    output = {k: "ok" for k in expected_keys(earlier)} | {sha(RUN, "gone", x): "failed" for x in extra}
    met = KeysMet(output)
    got = [r.key for r in select_rows(rows_of(texts), REFINE, RUN, shard, limit, met)]
    in_shard = [k for k in now if shard is None or int(k[:16], 16) % shard[1] == shard[0]]
    assert got == (in_shard if limit is None else in_shard[:limit])
    assert met.stale() == set(output) - set(now)
    assert met.done == (set(output) <= set(now))


def test_a_reordered_input_keeps_every_record():
    texts = ["a", "b", "a", "c"]
    output = {k: "ok" for k in expected_keys(texts)}
    reordered = ["c", "a", "b", "a"]
    met = KeysMet(output)
    list(select_rows(rows_of(reordered), REFINE, RUN, limit=1, meet=met))
    assert met.done and met.stale() == set()


def test_an_edited_row_is_stale_and_its_neighbours_are_not():
    before = ["first", "middle", "last"]
    output = {k: "ok" for k in expected_keys(before)}
    after = ["first", "middle (edited)", "last"]
    met = KeysMet(output)
    got = [r.index for r in select_rows(rows_of(after), REFINE, RUN, (0, 1), 1, met)]
    assert got == [0]
    assert met.stale() == {sha(RUN, "middle", 1)}
    # the first and the last row of the input are met too
    for i in (0, 2):
        assert sha(RUN, before[i], 1) in met.met


def test_select_rows_over_an_empty_input():
    met = KeysMet({"k": "ok"})
    assert list(select_rows([], REFINE, RUN, (0, 2), 3, met)) == []
    assert met.stale() == {"k"}
    assert list(select_rows([], REFINE, RUN)) == []


def test_rows_with_equal_columns_in_another_order_are_one_text():
    rows = [InputRow(0, {"b": 1, "a": 2}), InputRow(1, {"a": 2, "b": 1})]
    keys = [r.key for r in select_rows(rows, REFINE, RUN)]
    ident = "bad:" + json.dumps({"a": 2, "b": 1})
    assert keys == [sha(RUN, ident, 1), sha(RUN, ident, 2)]


def test_shards_of_a_large_input_are_balanced():
    texts = [f"instruction number {i}" for i in range(400)]
    sizes = [sum(1 for _ in select_rows(rows_of(texts), REFINE, RUN, (i, 4))) for i in range(4)]
    assert sum(sizes) == 400 and min(sizes) > 70  # a hash, not a range of rows
    rnd = random.Random(3)
    rnd.shuffle(texts)
    assert [sum(1 for _ in select_rows(rows_of(texts), REFINE, RUN, (i, 4))) for i in range(4)] == sizes


@pytest.mark.parametrize("record, want", [
    ({"instruction": "q", "input": "A table of prices."}, "A table of prices."),
    ({"instruction": "q", "input": "  padded  "}, "  padded  "),  # kept as written
    ({"instruction": "q", "input": " \n\t"}, ""),  # blank
    ({"instruction": "q", "input": None}, ""),  # null
    ({"instruction": "q"}, ""),  # absent
    ({"instruction": "q", "ctx": {"text": "nested"}}, None),  # the field named is absent; another is there
])
def test_the_rows_context(record, want):
    from localaug.jobs.keys import row_context

    cfg = JobConfig("refine", SamplingParams(), input_field="input")
    assert row_context(cfg, InputRow(0, record)) == ("" if want is None else want)
    nested = JobConfig("refine", SamplingParams(), input_field="ctx.text")
    assert row_context(nested, InputRow(0, {"instruction": "q", "ctx": {"text": "deep"}})) == "deep"
    assert row_context(REFINE, InputRow(0, record)) == ""  # no context asked for


@pytest.mark.parametrize("value", [3, ["a"], {"text": "x"}, True])
def test_a_context_that_is_not_text_is_refused_naming_the_field(value):
    from localaug.jobs.keys import row_context

    cfg = JobConfig("refine", SamplingParams(), input_field="input")
    with pytest.raises(ValueError) as e:
        row_context(cfg, InputRow(0, {"instruction": "q", "input": value}))
    assert str(e.value) == "field 'input' is not text"
