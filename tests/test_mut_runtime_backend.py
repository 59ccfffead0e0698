"""The runtime's shared rules and small parts, pinned exactly: the token batch every llama_decode
caller fills, the shared-prefix choice against a brute-force oracle, the context, chunk and batch
size rules, and ``open_calibrated`` (the one way a model is opened to run requests).

Fast on purpose (mutation testing runs them for every mutant of runtime/llama.py, prefix.py,
backend.py and calibrate.py): no decoding beyond what the tiny fixture does in a few ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp as L
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_runtime import OPTS

from localaug.core.files import cached_sha256, write_json_atomic
from localaug.family.registry import DEFAULT_CTX, context_size
from localaug.runtime import calibrate
from localaug.runtime.backend import DEFAULT_PARALLEL, Result, SequentialBackend, rows_per_chunk
from localaug.runtime.batch import BatchEngine
from localaug.runtime.calibrate import Parallel, open_calibrated
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import TokenBatch, drop_sequence
from localaug.runtime.prefix import MIN_SHARE, best_shared_prefix, common_length
from localaug.runtime.remote import RemoteBackend, RemoteModel
from localaug.runtime.stream import Generation

TRAINED = 32768  # the tiny fixture's trained context


# --- the token batch ------------------------------------------------------------------------------


def rows(b: TokenBatch) -> list[tuple[int, int, int, int, int]]:
    """(token, position, number of sequence ids, sequence id, logits flag) of every token in the batch."""
    r = b.raw
    return [(r.token[i], r.pos[i], r.n_seq_id[i], r.seq_id[i][0], r.logits[i]) for i in range(r.n_tokens)]


def test_a_token_batch_is_filled_run_by_run() -> None:
    b = TokenBatch(8)
    assert (b.capacity, b.size, rows(b)) == (8, 0, [])
    assert b.add([11, 12, 13], 5, 2, "none") == 2  # the index of the run's last token
    assert b.add([21, 22], 0, 0, "last") == 4
    assert b.add([31], 9, 7, "all") == 5
    assert b.add([], 3, 1, "last") == 5  # an empty run adds nothing, sets no logits
    assert b.size == 6
    assert rows(b) == [(11, 5, 1, 2, 0), (12, 6, 1, 2, 0), (13, 7, 1, 2, 0),
                       (21, 0, 1, 0, 0), (22, 1, 1, 0, 1),
                       (31, 9, 1, 7, 1)]
    assert b.add([41, 42], 100, 3, "all") == 7  # exactly full
    assert rows(b)[6:] == [(41, 100, 1, 3, 1), (42, 101, 1, 3, 1)]
    b.clear()
    assert (b.size, rows(b)) == (0, [])
    assert b.add([51, 52, 53], 4, 1, "last") == 2  # filled again from the start
    assert rows(b) == [(51, 4, 1, 1, 0), (52, 5, 1, 1, 0), (53, 6, 1, 1, 1)]
    b.close()
    assert b.raw is None
    b.close()  # twice: nothing freed twice


def test_a_run_that_does_not_fit_is_refused_whole() -> None:
    with TokenBatch(4) as b:
        b.add([1, 2, 3], 0, 0, "last")
        with pytest.raises(ValueError) as e:
            b.add([4, 5], 3, 0, "last")
        assert str(e.value) == "2 more tokens do not fit a batch of 4 holding 3"
        assert rows(b) == [(1, 0, 1, 0, 0), (2, 1, 1, 0, 0), (3, 2, 1, 0, 1)]  # nothing written
        assert b.add([4], 3, 0, "last") == 3
    assert b.raw is None  # freed by the with block


@pytest.fixture(scope="module")
def model(converted) -> Path:
    return converted("tied", "F32")


@pytest.fixture(scope="module")
def engine(model: Path) -> Iterator[Engine]:
    with Engine(model, OPTS, context=False) as eng:
        yield eng


def test_a_filled_batch_decodes_and_a_sequence_is_dropped(engine: Engine) -> None:
    ctx = engine.new_context(64, n_seq_max=2, kv_unified=True)
    try:
        memory = L.llama_get_memory(ctx)
        with TokenBatch(16) as b:
            b.add([400, 401, 402], 0, 0, "last")
            b.add([500, 501], 0, 1, "last")
            assert b.decode(ctx) == 0
        assert [(L.llama_memory_seq_pos_min(memory, s), L.llama_memory_seq_pos_max(memory, s)) for s in (0, 1)] == \
            [(0, 2), (0, 1)]
        drop_sequence(memory, 0)
        assert [(L.llama_memory_seq_pos_min(memory, s), L.llama_memory_seq_pos_max(memory, s)) for s in (0, 1)] == \
            [(-1, -1), (0, 1)]
    finally:
        L.llama_free(ctx)


# --- the shared prefix ----------------------------------------------------------------------------


def test_common_length() -> None:
    assert common_length([], []) == 0
    assert common_length([1, 2, 3], [1, 2, 3]) == 3
    assert common_length([1, 2, 3], [1, 2]) == 2
    assert common_length([1, 2], [1, 2, 3]) == 2
    assert common_length([1, 2, 3], [1, 9, 3]) == 1
    assert common_length([7], [8]) == 0


@st.composite
def prompts_sharing_beginnings(draw: st.DrawFn) -> list[list[int]]:
    """2 to 6 prompts, each the start of one of two random texts plus a few tokens of its own and a
    last token of its own: none is the start of another."""
    texts = draw(st.lists(st.lists(st.sampled_from([1000, 1001]), min_size=12, max_size=12), min_size=2, max_size=2))
    prompts = []
    for i in range(draw(st.integers(2, 6))):
        start = draw(st.sampled_from(texts))[:draw(st.integers(0, 12))]
        prompts.append(start + draw(st.lists(st.sampled_from([1000, 1001, 1002]), max_size=3)) + [2000 + i])
    return prompts


def oracle(prompts: list[list[int]]) -> tuple[int, set[tuple[int, ...]]]:
    """The tokens the best prefixes save (length x (prompts starting with it - 1)) and those prefixes,
    brute force over every prefix of every prompt but the whole prompt."""
    saved = {tuple(p[:n]): n * (sum(q[:n] == p[:n] for q in prompts) - 1) for p in prompts for n in range(1, len(p))}
    best = max(saved.values(), default=0)
    return best, {x for x, s in saved.items() if s == best and best > 0}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(prompts=prompts_sharing_beginnings())
def test_the_prefix_chosen_saves_the_most(prompts: list[list[int]]) -> None:
    best, winners = oracle(prompts)
    chosen = tuple(best_shared_prefix(prompts))
    if best == 0:
        assert chosen == ()
    elif len(winners) == 1:
        assert {chosen} == winners
    else:
        assert chosen in winners


def test_prefix_choices_by_hand() -> None:
    a, b = [5] * 10, [4] * 10
    assert best_shared_prefix([a + [1], a + [2], b + [3], b + [4]]) == b  # 10 saved either way: the first sorted
    assert best_shared_prefix([a + [1], a + [2], a[:9] + [3]]) == a[:9]  # 9 x 2 saved beat 10 x 1
    assert best_shared_prefix([a, a + [1], a + [2]]) == a[:-1]  # never a whole prompt
    assert best_shared_prefix([[1, 2], [3, 4]]) == []
    assert best_shared_prefix([[1, 2, 3], [1, 2, 4], [1, 5]]) == [1, 2]  # 2 x 1 saved, or 1 x 2 by all three: a tie, the first run wins
    assert MIN_SHARE == 8


# --- the rules ------------------------------------------------------------------------------------


def test_the_context_rule() -> None:
    assert DEFAULT_CTX == 4096
    assert context_size(None, TRAINED) == 4096  # the default
    assert context_size(None, 2048) == 2048  # never more than the trained context
    assert context_size(100, TRAINED) == 100  # as requested
    assert context_size(40_000, TRAINED) == TRAINED
    assert context_size(TRAINED, TRAINED) == TRAINED
    assert context_size(0, 50) == 50


def test_the_chunk_rule_and_the_default_batch_size() -> None:
    assert [rows_per_chunk(p) for p in (1, 2, 3, 8, 64)] == [8, 8, 12, 32, 256]
    assert DEFAULT_PARALLEL == 8


def test_a_result_is_a_generation_or_why_there_is_none() -> None:
    gen = Generation("hi", [1], "stop", 3, 0.1, 0.05)
    assert (Result("a", 0, gen).ok, Result("a", 0, gen).outcome) == (True, gen)
    failed = Result("a", 1, None, "boom")
    assert (failed.ok, failed.outcome) == (False, "boom")
    assert Result("a", 2, None).outcome == "no generation"


# --- open_calibrated ------------------------------------------------------------------------------


def test_a_model_on_a_server_gets_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = RemoteModel("http://127.0.0.1:9/v1", "m")  # nothing is sent until a request runs
    monkeypatch.delenv("LOCALAUG_PARALLEL", raising=False)
    for given, want in ((None, Parallel(8, "default")), (3, Parallel(3, "given"))):
        backend, chosen = open_calibrated(remote, EngineOptions(), given)
        with backend:
            assert chosen == want and isinstance(backend, RemoteBackend)
            assert (backend.model, backend.parallel) == (remote, want.value)
    monkeypatch.setenv("LOCALAUG_PARALLEL", "5")
    backend, chosen = open_calibrated(remote, EngineOptions())
    backend.close()
    assert chosen == Parallel(5, "LOCALAUG_PARALLEL") and backend.parallel == 5


def test_a_gguf_opens_at_the_batch_size_and_context_chosen(model: Path) -> None:
    # LOCALAUG_PARALLEL=4 in the tests (conftest)
    many, chosen = open_calibrated(model, replace(OPTS, n_ctx=None))
    with many:
        assert chosen == Parallel(4, "LOCALAUG_PARALLEL") and isinstance(many, BatchEngine)
        assert (many.parallel, many.n_ctx_seq, many.engine.opts.n_ctx) == (4, DEFAULT_CTX, None)
        assert many.engine._ctx is None  # no single-sequence context made
    one, chosen = open_calibrated(model, OPTS, 1, batching=True)  # a server's scheduler: slots even for one
    with one:
        assert chosen == Parallel(1, "given") and isinstance(one, BatchEngine)
        assert (one.parallel, one.n_ctx_seq, one.engine._ctx) == (1, 256, None)
    seq, chosen = open_calibrated(model, replace(OPTS, n_ctx=40_000), 1)
    with seq:
        assert chosen == Parallel(1, "given") and isinstance(seq, SequentialBackend)
        assert seq.engine.n_ctx == TRAINED  # the request clamped to the trained context
    assert seq.engine is None  # freed with the backend


def test_two_sequences_batch_and_the_batch_engine_owns_the_engine(model: Path) -> None:
    two, chosen = open_calibrated(model, OPTS, 2)
    with two:
        assert chosen == Parallel(2, "given") and isinstance(two, BatchEngine) and two.parallel == 2
    assert two.engine is None  # freed with the backend


def test_an_engine_handed_over_runs_at_the_options_context(model: Path) -> None:
    # the options say the context, not the options the engine was loaded with
    engine = Engine(model, replace(OPTS, n_ctx=512), context=False)
    backend, chosen = open_calibrated(engine, replace(OPTS, n_ctx=128), 2)
    with backend:
        assert isinstance(backend, BatchEngine) and (backend.parallel, backend.n_ctx_seq) == (2, 128)
        assert backend.engine is engine
    assert engine._model is None  # handed over: freed with the backend


def test_an_engine_handed_over_is_freed_when_opening_fails(model: Path) -> None:
    engine = Engine(model, OPTS, context=False)
    with pytest.raises(ValueError, match="^parallel must be at least 1$"):
        open_calibrated(engine, OPTS, 0, batching=True)
    assert engine._model is None


def test_the_calibration_sizes_the_context_the_engine_builds(model: Path, engine: Engine, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A context asked over the trained one is calibrated as the engine builds it (clamped): the
    cached choice for the clamped size is found, nothing is measured."""
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LOCALAUG_PARALLEL")
    per_seq = TRAINED * engine.kv_bytes_per_token
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 4 * 3 * per_seq)  # 1 + 2 sequences of the trained context
    assert calibrate.affordable(engine, TRAINED, (1, 2, 4)) == (1, 2)
    assert calibrate.affordable(engine, 40_000, (1, 2, 4)) == (1,)  # what an unclamped request would afford

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured although the choice is cached")

    monkeypatch.setattr(calibrate, "batch_curve", never)
    key = f"{calibrate._key(cached_sha256(model), engine)}|2"  # the largest size the clamped context affords
    write_json_atomic(tmp_path / "home" / "calibration.json", {key: {"parallel": 1}})
    backend, chosen = open_calibrated(model, replace(OPTS, n_ctx=40_000))
    with backend:
        assert chosen == Parallel(1, "cached") and isinstance(backend, SequentialBackend)
        assert backend.engine.n_ctx == TRAINED
