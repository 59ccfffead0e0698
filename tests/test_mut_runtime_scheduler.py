"""The serving scheduler (localaug.serve.scheduler) at its boundaries, on real llama.cpp.

A thread per model drives ``batch.Slots``: requests queue (bounded: past it a 429), are admitted
into free slots between decoding steps, stream pieces, can be cancelled queued or mid-decode, and a
loop that fails is restarted (and given up after repeated failures). Every generated reply is
compared token for token with a fresh single-sequence engine (tiny F32 fixture), so a slip that
corrupts another request's KV or order shows; counters are pinned to exact values worked out from
the schedule (which requests share a step).

Fast on purpose (mutation testing runs them for every mutant of scheduler.py): replies are a few
tokens; a scheduler that hangs fails a short ``wait`` instead of stalling the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tiny_runtime import HOT, HOT2, OPTS, Fresh, assert_slots_empty, greedy, kv, make_fresh, toks

import localaug.serve.scheduler as scheduler_module
from localaug.convert import convert_checkpoint
from localaug.core.errors import ModelNotFoundError, PromptTooLongError, QueueFullError, UsageError
from localaug.family import registry
from localaug.family.registry import DEFAULT_CTX
from localaug.runtime import calibrate
from localaug.runtime.backend import Request, Result
from localaug.runtime.batch import BatchEngine
from localaug.runtime.bench import BATCH_SIZES
from localaug.runtime.calibrate import affordable
from localaug.runtime.engine import Engine
from localaug.runtime.stream import Piece
from localaug.serve.scheduler import (
    CANCELLED,
    MAX_RESTARTS,
    SHUTTING_DOWN,
    STOPPED,
    Handle,
    Scheduler,
    load_model,
    load_models,
    model_id,
)

WAIT = 20.0  # seconds a test waits for a reply before failing


@pytest.fixture(scope="module")
def engine(converted) -> Iterator[Engine]:
    with Engine(converted("tied", "F32"), OPTS) as eng:
        yield eng


@pytest.fixture(scope="module")
def fresh(engine: Engine) -> Fresh:
    return make_fresh(engine)


@contextlib.contextmanager
def scheduler(engine: Engine, parallel: int = 2, max_queue: int = 8, n_ctx: int = 32) -> Iterator[Scheduler]:
    """A scheduler (not started) on its own BatchEngine; stopped and freed at the end."""
    with BatchEngine(engine, parallel=parallel, n_ctx=n_ctx) as batch:
        sched = Scheduler(batch, max_queue=max_queue, name="test")
        try:
            yield sched
        finally:
            sched.stop(WAIT)
            assert not sched._thread.is_alive()


def tokens_of(handle: Handle) -> list[list[int] | str]:
    """Each sample's tokens (or its error), by index."""
    results = handle.wait(WAIT)
    assert [(r.id, r.index) for r in results] == [(handle.request.id, k) for k in range(len(results))]
    return [r.generation.tokens if r.generation is not None else str(r.error) for r in results]


def idle(sched: Scheduler) -> None:
    """Wait until the scheduler thread has nothing left to do (queue and slots empty)."""
    deadline = time.monotonic() + WAIT
    while sched.queued or sched.stats.active or sched.busy_since is not None or sched._cancels:
        assert time.monotonic() < deadline, "the scheduler did not go idle"
        time.sleep(0.002)


# --- requests in, replies out -----------------------------------------------------------------------


def test_replies_equal_fresh_decoding_and_the_counters_add_up(engine: Engine, fresh: Fresh) -> None:
    a, b, c = toks(1, 5), toks(2, 7), toks(3, 4)
    pieces: dict[str, list[Piece]] = {"a": [], "b": []}
    results: list[Result] = []
    with scheduler(engine, parallel=2) as sched:
        assert sched.healthy and sched.queued == 0 and sched.busy_for() == 0.0
        ha = sched.submit(Request("a", a, greedy(3)), on_piece=pieces["a"].append, on_result=results.append)
        hb = sched.submit(Request("b", b, greedy(3)), on_piece=pieces["b"].append)
        assert sched.queued == 2
        sched.start()
        assert sched.start() is sched  # started once
        assert tokens_of(ha) == [fresh(a, greedy(3)).tokens] and tokens_of(hb) == [fresh(b, greedy(3)).tokens]
        hc = sched.submit(Request("c", c, HOT, n=2))
        assert tokens_of(hc) == [fresh(c, HOT).tokens, fresh(c, replace(HOT, seed=HOT.seed + 1)).tokens]
        assert [r.index for r in hc.wait(WAIT)] == [0, 1]
        idle(sched)
        stats = sched.stats
        assert (stats.active, stats.peak_active) == (0, 2)  # read while the scheduler still runs
    for key, h in (("a", ha), ("b", hb)):
        assert "".join(p.text for p in pieces[key]) == h.wait(0)[0].generation.text
        assert {(p.id, p.index) for p in pieces[key]} == {(key, 0)}
    assert results == ha.wait(0)  # the callback saw each sample once
    # a and b share every step: prompts (5 + 7), then two single tokens twice; c: its prompt, then
    # its two samples (forked from the prefill) one token each, twice
    assert (stats.slots, stats.decode_steps, stats.batch_tokens) == (2, 3 + 3, 12 + 2 + 2 + 4 + 2 + 2)
    assert (stats.prompt_tokens, stats.completion_tokens) == (5 + 7 + 4, 3 + 3 + 3 + 3)
    assert (stats.requests_done, stats.requests_cancelled, stats.requests_failed, stats.restarts) == (3, 0, 0, 0)
    assert (stats.active, stats.peak_active) == (0, 2)


def test_scheduler_defaults(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with BatchEngine(engine, parallel=1, n_ctx=16) as batch:
        sched = Scheduler(batch)
        assert (sched.max_queue, sched._thread.name, sched.stats.slots) == (64, "localaug-scheduler-model", 1)
        assert sched._thread.daemon  # a process may end without stopping it
        joined: list[float | None] = []
        real_join = sched._thread.join
        monkeypatch.setattr(sched._thread, "join", lambda timeout=None: (joined.append(timeout), real_join(timeout)))
        sched.start().stop()
        assert joined == [30.0]  # waits up to 30 s for a step to end


def test_stop_from_a_callback_does_not_wait_for_itself(engine: Engine) -> None:
    after: list[str] = []
    with scheduler(engine, parallel=1) as sched:
        def on_result(r: Result) -> None:  # runs on the scheduler thread: it cannot join itself
            sched.stop()
            after.append(r.id)

        h = sched.submit(Request("a", toks(37, 5), greedy(1)), on_result=on_result)
        sched.start()
        h.wait(WAIT)
        sched._thread.join(WAIT)
        assert after == ["a"] and not sched._thread.is_alive()


def test_a_full_queue_refuses_the_next_request_and_admits_the_one_before(engine: Engine, fresh: Fresh) -> None:
    with pytest.raises(ValueError, match="^max_queue must be >= 0$"):
        Scheduler(None, max_queue=-1)  # type: ignore[arg-type]
    started = threading.Event()
    long, q1, q2 = toks(4, 5), toks(5, 5), toks(6, 5)
    with scheduler(engine, parallel=1, max_queue=2, n_ctx=80) as sched:
        sched.start()
        running = sched.submit(Request("long", long, greedy(60)), on_piece=lambda p: started.set())
        assert started.wait(WAIT)  # admitted: the only slot is busy
        first = sched.submit(Request("q1", q1, greedy(2)))
        second = sched.submit(Request("q2", q2, greedy(2)))  # the queue is now exactly full
        assert sched.queued == 2
        with pytest.raises(QueueFullError) as refused:
            sched.submit(Request("q3", q1, greedy(2)))
        assert str(refused.value) == "all 1 slots are busy and 2 requests are waiting: retry later"
        assert refused.value.http_status == 429 and sched.queued == 2
        running.cancel()
        assert tokens_of(first) == [fresh(q1, greedy(2)).tokens] and tokens_of(second) == [fresh(q2, greedy(2)).tokens]
        idle(sched)
        assert tokens_of(sched.submit(Request("q3", q1, greedy(2)))) == [fresh(q1, greedy(2)).tokens]  # room again
    with scheduler(engine, parallel=1, max_queue=0) as sched:
        with pytest.raises(QueueFullError, match="all 1 slots are busy and 0 requests are waiting: retry later"):
            sched.submit(Request("x", q1, greedy(2)))


# --- cancelling -----------------------------------------------------------------------------------


def test_cancel_before_admission_and_mid_decode_frees_the_slot(engine: Engine, fresh: Fresh) -> None:
    long, waiting, after = toks(7, 12), toks(8, 5), toks(9, 6)
    pieces: list[Piece] = []
    with scheduler(engine, parallel=1, n_ctx=64) as sched:
        def on_piece(p: Piece) -> None:  # the first piece cancels it: mid-decode, deterministically
            pieces.append(p)
            h_long.cancel()

        h_long = sched.submit(Request("long", long, greedy(50)), on_piece=on_piece)
        h_wait = sched.submit(Request("waiting", waiting, greedy(3)))
        h_wait.cancel()  # still queued
        assert h_wait.cancelled and sched.queued == 2
        sched.start()
        assert tokens_of(h_wait) == [CANCELLED] and tokens_of(h_long) == [CANCELLED]
        idle(sched)
        assert len(pieces) == 1 and pieces[0].text == engine.detokenize(fresh(long, greedy(1)).tokens)
        assert kv(sched.batch, 0) == (-1, -1) and sched.stats.active == 0  # the slot and its KV are free
        assert (sched.stats.requests_cancelled, sched.stats.requests_done, sched.queued) == (2, 0, 0)
        # it stopped at once: the one step that wrote its first piece, nothing after it
        assert (sched.stats.decode_steps, sched.stats.completion_tokens, sched.stats.restarts) == (1, 0, 0)
        h_after = sched.submit(Request("after", after, greedy(3)))
        assert tokens_of(h_after) == [fresh(after, greedy(3)).tokens]
        h_after.cancel()  # done already: nothing to cancel
        assert h_after.cancelled is False
        idle(sched)
        assert (sched.stats.requests_cancelled, sched.stats.requests_done) == (2, 1)
        assert_slots_empty(sched.batch)


def test_cancelling_after_a_first_sample_keeps_that_sample(engine: Engine, fresh: Fresh) -> None:
    p = toks(32, 5)
    with scheduler(engine, parallel=1) as sched:  # one slot: the second sample starts when the first ends
        h = sched.submit(Request("two", p, HOT2, n=2), on_result=lambda r: h.cancel())
        sched.start()
        assert tokens_of(h) == [fresh(p, HOT2).tokens, CANCELLED]
        idle(sched)
        assert (sched.stats.requests_cancelled, sched.stats.requests_done) == (1, 0)
        assert_slots_empty(sched.batch)


def test_a_request_cancelled_while_requests_are_admitted_is_never_started(engine: Engine, fresh: Fresh) -> None:
    """Cancelled between being queued and being pulled (here from a callback run while the
    scheduler admits): each fails "cancelled", is counted, and the request after them is admitted
    in the same step as the one before them."""
    first, other = toks(12, 5), toks(10, 5)
    with scheduler(engine, parallel=2) as sched:
        victims: list[Handle] = []
        h_first = sched.submit(Request("first", first, greedy(2)))
        bad = sched.submit(Request("bad", [], greedy(2)), on_result=lambda r: [v.cancel() for v in victims])
        victims += [sched.submit(Request(f"victim{i}", toks(11, 5), greedy(2))) for i in range(2)]
        h_other = sched.submit(Request("other", other, greedy(2)))
        sched.start()
        assert tokens_of(bad) == ["empty prompt: give some text"]
        assert [tokens_of(v) for v in victims] == [[CANCELLED], [CANCELLED]]
        assert tokens_of(h_first) == [fresh(first, greedy(2)).tokens]
        assert tokens_of(h_other) == [fresh(other, greedy(2)).tokens]
        idle(sched)
        stats = sched.stats
        assert (stats.requests_cancelled, stats.requests_done, stats.peak_active) == (2, 3, 2)
        assert (stats.decode_steps, stats.batch_tokens) == (2, 5 + 5 + 2)  # first and other together


# --- failures --------------------------------------------------------------------------------------


def test_a_request_failing_at_admission_leaves_the_others_bit_identical(engine: Engine, fresh: Fresh) -> None:
    ok1, ok2 = toks(12, 5), toks(13, 6)
    with scheduler(engine, parallel=2, n_ctx=24) as sched:
        handles = [sched.submit(Request("ok1", ok1, greedy(3))),
                   sched.submit(Request("long", toks(14, 22), greedy(3), n=2)),
                   sched.submit(Request("n0", ok1, greedy(3), n=0)),
                   sched.submit(Request("ok2", ok2, greedy(3)))]
        sched.start()
        too_long = ("prompt of 22 tokens + max_tokens 3 exceeds the per-sequence context of 24 tokens: shorten the "
                    "input, lower max_tokens or raise the context size")
        assert [tokens_of(h) for h in handles] == [[fresh(ok1, greedy(3)).tokens], [too_long, too_long],
                                                   ["n must be at least 1"], [fresh(ok2, greedy(3)).tokens]]
        idle(sched)
        assert (sched.stats.requests_done, sched.stats.requests_failed, sched.stats.restarts) == (4, 0, 0)
        assert (sched.stats.prompt_tokens, sched.stats.completion_tokens) == (5 + 6, 3 + 3)


def bad_request(i: int) -> Request:
    """A request the loop itself trips on (no sampling parameters): an internal error, not the client's."""
    return Request(f"bad{i}", toks(20 + i, 5), None)  # type: ignore[arg-type]


INTERNAL = "internal error while decoding: see the server log"


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, type | None]]:
    """The scheduler's log records: (level, message, exception type logged with its traceback)."""
    return [(r.levelname, r.getMessage(), r.exc_info[0] if r.exc_info else None)
            for r in caplog.records if r.name == "localaug.serve.scheduler"]


def test_an_internal_error_fails_what_was_admitted_and_the_loop_restarts(engine: Engine, fresh: Fresh,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="localaug.serve.scheduler")
    good = toks(15, 5)
    with scheduler(engine, parallel=2) as sched:
        bad = sched.submit(bad_request(0))
        h = sched.submit(Request("good", good, greedy(3)))
        sched.start()
        assert tokens_of(bad) == [INTERNAL]
        assert tokens_of(h) == [fresh(good, greedy(3)).tokens]
        idle(sched)
        assert (sched.stats.restarts, sched.stats.requests_failed, sched.stats.requests_done) == (1, 1, 1)
        assert sched.healthy and sched.failure is None
    # the reply says "see the server log": the error is there, with its traceback
    assert logged(caplog) == [("ERROR", "the scheduler loop failed: 'NoneType' object has no attribute 'max_tokens'",
                               AttributeError)]


@pytest.mark.parametrize("failures", [MAX_RESTARTS, MAX_RESTARTS + 1])
def test_repeated_internal_errors_give_up(engine: Engine, fresh: Fresh, failures: int) -> None:
    good = toks(16, 5)
    with scheduler(engine, parallel=1) as sched:
        bad = [sched.submit(bad_request(i)) for i in range(failures)]
        h = sched.submit(Request("good", good, greedy(2)))
        sched.start()
        assert [tokens_of(b) for b in bad] == [[INTERNAL]] * failures
        if failures == MAX_RESTARTS:  # five in a row: still serving
            assert tokens_of(h) == [fresh(good, greedy(2)).tokens]
            idle(sched)
            assert sched.healthy and sched.failure is None and sched.stats.restarts == MAX_RESTARTS
            assert sched.stats.requests_failed == failures
            return
        assert tokens_of(h) == [STOPPED]  # the sixth within the window: it gives up
        sched._thread.join(WAIT)
        assert sched.failure == "AttributeError: 'NoneType' object has no attribute 'max_tokens'"
        assert not sched.healthy and sched.stats.restarts == MAX_RESTARTS and sched.stats.active == 0
        with pytest.raises(QueueFullError) as refused:
            sched.submit(Request("late", good, greedy(2)))
        assert str(refused.value) == STOPPED == ("this model's scheduler stopped after repeated internal errors: "
                                                 "restart the server")


class Clock:
    """The scheduler's monotonic clock, set by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_only_failures_within_the_window_of_the_last_ones_give_up(engine: Engine, fresh: Fresh,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Five failures, then RESTART_WINDOW_S later six more: the scheduler restarts as long as the
    last MAX_RESTARTS + 1 failures span the window (or more), and gives up once they do not."""
    clock = Clock()
    monkeypatch.setattr(scheduler_module, "time", clock)
    with scheduler(engine, parallel=1) as sched:
        sched.start()
        first = [sched.submit(bad_request(i)) for i in range(MAX_RESTARTS)]
        assert [tokens_of(b) for b in first] == [[INTERNAL]] * MAX_RESTARTS
        clock.now += scheduler_module.RESTART_WINDOW_S  # exactly the window: not within it
        later = [sched.submit(bad_request(i)) for i in range(MAX_RESTARTS, 2 * MAX_RESTARTS + 1)]
        h = sched.submit(Request("good", toks(17, 5), greedy(2)))
        assert [tokens_of(b) for b in later] == [[INTERNAL]] * (MAX_RESTARTS + 1)
        assert tokens_of(h) == [STOPPED]  # the last six all came at once
        sched._thread.join(WAIT)
        assert sched.failure is not None and sched.stats.restarts == 2 * MAX_RESTARTS
        assert sched.stats.requests_failed == 2 * MAX_RESTARTS + 1


def test_a_failed_decode_step_fails_the_running_requests_and_serving_goes_on(engine: Engine, fresh: Fresh,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    import llama_cpp as L

    real = L.llama_decode
    fail = threading.Event()
    fail.set()

    def decode(ctx, batch):  # fault injection: llama.cpp refuses one batch
        if fail.is_set():
            fail.clear()
            return 1
        return real(ctx, batch)

    later = toks(19, 5)
    with scheduler(engine, parallel=2) as sched:
        hs = [sched.submit(Request("a", toks(18, 5), greedy(2))), sched.submit(Request("b", toks(24, 6), greedy(2)))]
        monkeypatch.setattr(L, "llama_decode", decode)
        sched.start()
        caplog.set_level(logging.ERROR, logger="localaug.serve.scheduler")
        message = "llama_decode failed (code 1) on a batch of 11 tokens: lower parallel or n_ctx"
        assert [tokens_of(h) for h in hs] == [[message], [message]]
        assert tokens_of(sched.submit(Request("later", later, greedy(2)))) == [fresh(later, greedy(2)).tokens]
        idle(sched)
        assert (sched.stats.requests_failed, sched.stats.restarts, sched.stats.decode_steps) == (2, 0, 3)
        assert sched.batch.prefix.tokens == []  # the cache was dropped with the failed step

        def broken(ctx, batch):  # not llama.cpp's answer: a bug of ours, reported as internal
            raise RuntimeError("a bug")

        monkeypatch.setattr(L, "llama_decode", broken)
        assert tokens_of(sched.submit(Request("c", later, greedy(2)))) == [INTERNAL]
        monkeypatch.setattr(L, "llama_decode", real)
        assert tokens_of(sched.submit(Request("d", later, greedy(2)))) == [fresh(later, greedy(2)).tokens]
        idle(sched)
        assert (sched.stats.requests_failed, sched.stats.restarts, sched.stats.requests_done) == (3, 0, 2)
    # llama.cpp's refusal is logged as it is told to the client; a bug of ours with its traceback
    assert logged(caplog) == [("ERROR", f"decode step failed: {message}", None),
                              ("ERROR", "decode step failed: a bug", RuntimeError)]


def test_a_failing_callback_does_not_stop_the_scheduler(engine: Engine, fresh: Fresh,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="localaug.serve.scheduler")
    a, b = toks(25, 5), toks(26, 5)

    def boom(_: object) -> None:
        raise RuntimeError("the client went away")

    with scheduler(engine, parallel=2) as sched:
        ha = sched.submit(Request("a", a, greedy(2)), on_piece=boom, on_result=boom)
        hb = sched.submit(Request("b", b, greedy(2)))
        sched.start()
        assert tokens_of(ha) == [fresh(a, greedy(2)).tokens] and tokens_of(hb) == [fresh(b, greedy(2)).tokens]
        idle(sched)
        assert sched.healthy and sched.stats.requests_done == 2
    pieces = len(fresh(a, greedy(2)).tokens)  # one piece a token (no stop holds text back)
    assert logged(caplog) == [("DEBUG", "a result callback failed", RuntimeError)] * (pieces + 1)


# --- stopping, waiting, the stall report --------------------------------------------------------------


def test_stop_fails_queued_and_running_requests_and_refuses_new_ones(engine: Engine) -> None:
    started = threading.Event()
    with scheduler(engine, parallel=1, n_ctx=80) as sched:
        sched.start()
        running = sched.submit(Request("long", toks(27, 5), greedy(60)), on_piece=lambda p: started.set())
        assert started.wait(WAIT)
        queued = sched.submit(Request("queued", toks(28, 5), greedy(2)))
        sched.stop(WAIT)
        assert tokens_of(running) == [SHUTTING_DOWN] and tokens_of(queued) == [SHUTTING_DOWN]
        assert not sched._thread.is_alive() and sched.healthy and sched.failure is None  # stopped, not failed
        assert (sched.stats.active, sched.queued) == (0, 0)
        with pytest.raises(QueueFullError, match="^the server is shutting down: retry against a running server$"):
            sched.submit(Request("late", toks(28, 5), greedy(2)))
        sched.stop(WAIT)  # again: nothing to do
    with scheduler(engine, parallel=1) as never:
        never.stop()  # never started
        assert never.healthy and not never._thread.is_alive()
        with pytest.raises(QueueFullError, match="shutting down"):
            never.submit(Request("x", toks(28, 5), greedy(2)))


def test_wait_gives_up_after_its_timeout(engine: Engine) -> None:
    with scheduler(engine, parallel=1) as sched:
        h = sched.submit(Request("slow", toks(29, 5), greedy(2)))
        with pytest.raises(TimeoutError, match=r"^request slow still running after 0.01s$"):
            h.wait(0.01)


def test_busy_for_reports_the_step_running_now(engine: Engine) -> None:
    seen: list[tuple[float | None, float]] = []
    with scheduler(engine, parallel=1) as sched:
        assert sched.busy_for(now=123.0) == 0.0
        sched.busy_since = 100.0
        assert sched.busy_for(now=102.5) == 2.5
        assert 0 < sched.busy_for() == pytest.approx(time.monotonic() - 100.0, abs=1.0)
        sched.busy_since = None
        # seen from inside the loop: while admitting (an error result) and while decoding (a piece)
        record = lambda _: seen.append((sched.busy_since, sched.busy_for()))  # noqa: E731
        bad = sched.submit(Request("bad", [], greedy(2)), on_result=record)
        ok = sched.submit(Request("ok", toks(30, 5), greedy(2)), on_piece=record)
        sched.start()
        ok.wait(WAIT)
        bad.wait(WAIT)
        idle(sched)
        assert sched.busy_since is None and sched.busy_for() == 0.0
    now = time.monotonic()
    assert len(seen) >= 2 and all(since is not None and 0 < now - since < WAIT and busy > 0 for since, busy in seen)


# --- served models ------------------------------------------------------------------------------------


@dataclass
class Named:
    name: str


def test_model_id_is_the_family_name_else_the_file_name() -> None:
    gguf = Path("/models/refine-1.5b.Q4_K_M.gguf")
    assert model_id("anything", gguf, Named("qwen2-refine:1.5b")) == "qwen2-refine:1.5b"  # type: ignore[arg-type]
    assert model_id("refine-1.5b.Q4_K_M.gguf", gguf, None) == "refine-1.5b.Q4_K_M"
    assert model_id(f"models{os.sep}refine", gguf, None) == "refine-1.5b.Q4_K_M"  # a path
    assert model_id("my-model", gguf, None) == "my-model"  # a name from the store


def test_a_loaded_model_serves_and_closes(converted, qwen2_tied: Path, engine: Engine, fresh: Fresh, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path))  # the store, and the model's sha256 and batch size
    path = converted("tied", "F32")
    with pytest.raises(UsageError) as e:
        load_model(path, parallel=0)
    assert str(e.value) == "parallel must be at least 1" and e.value.params == ["parallel"]
    # parallel None: the batch size calibrated for this model on this machine (planted: 3), for the
    # sequences' context (the options' 256 tokens: with 16 MiB of memory, KV room for 4 of them)
    monkeypatch.delenv("LOCALAUG_PARALLEL")
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 16 << 20)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert affordable(engine, 256, BATCH_SIZES) == (1, 2, 4) and affordable(engine, DEFAULT_CTX, BATCH_SIZES) == (1,)
    key = f"{calibrate._key(sha, engine)}|4"
    (tmp_path / "calibration.json").write_text(json.dumps({key: {"parallel": 3}}), encoding="utf-8")
    [m] = load_models([path], prompt_format="qwen2-chatml", opts=OPTS, parallel=None, max_queue=3)
    try:
        assert (m.id, m.path, m.spec, m.engine.opts, m.engine._ctx) == ("tied.F32", path, None, OPTS, None)
        assert m.aliases == {"tied.F32", str(path)}
        assert (m.n_ctx, m.batch.parallel, m.scheduler.max_queue, m.scheduler.healthy) == (256, 3, 3, True)
        assert m.scheduler._thread.name == "localaug-scheduler-tied.F32" and m.scheduler._thread.is_alive()
        assert m.style.prompt_format == "qwen2-chatml" and m.meta["general.name"] == "tiny-qwen2-tied"
        assert m.tokenize("hello there") == engine.tokenize("hello there")
        with pytest.raises(PromptTooLongError) as too_long:
            m.tokenize("é" * 20000)
        assert str(too_long.value) == ("the prompt (20000 characters) cannot fit the context of 256 tokens per "
                                       "sequence: shorten it")
        with pytest.raises(UsageError, match="could not be parsed"):
            m.check_grammar("root ::= (")
        m.check_grammar('root ::= "ab"')
        p = toks(31, 5)
        pieces: list[Piece] = []
        results: list[Result] = []
        h = m.submit(Request("a", p, greedy(3)), on_piece=pieces.append, on_result=results.append)
        assert tokens_of(h) == [fresh(p, greedy(3)).tokens] and results == h.wait(0)
        assert "".join(x.text for x in pieces) == results[0].generation.text
    finally:
        m.close()
    assert not m.scheduler._thread.is_alive() and m.batch.ctx is None and m.engine._model is None
    # a checkpoint folder, converted into the store at the quant asked; the defaults: 8 slots, 64 waiting
    named = load_model(str(qwen2_tied), quant="F32", name="tiny", opts=OPTS, n_ctx=16)
    try:
        assert named.path.name == "F32.gguf" and named.path.is_relative_to(tmp_path)  # the store's F32 file
        assert (named.id, named.batch.parallel, named.scheduler.max_queue, named.n_ctx) == ("tiny", 8, 64, 16)
        assert named.aliases == {"tiny", str(qwen2_tied), "F32"}
    finally:
        named.close()
    # a GGUF converted from a family repository: named after the family model
    spec = registry.get("qwen2-refine:1.5b")
    family = convert_checkpoint(qwen2_tied, tmp_path / "refine.Q8_0.gguf", "Q8_0", source_repo=spec.repo).path
    known = load_model(family, opts=OPTS, parallel=1, n_ctx=16)
    try:
        assert (known.id, known.spec) == (spec.name, spec)
        assert known.aliases == {spec.name, str(family), "refine.Q8_0"}
    finally:
        known.close()
    renamed = load_model(family, name="mine", opts=OPTS, parallel=1, n_ctx=16)
    try:  # named otherwise: the family name is still one of its names
        assert (renamed.id, renamed.aliases) == ("mine", {"mine", str(family), "refine.Q8_0", spec.name})
    finally:
        renamed.close()


def test_loading_several_models_frees_the_loaded_ones_when_one_fails(converted) -> None:
    path = str(converted("tied", "F32"))
    with pytest.raises(ModelNotFoundError, match=r"\.missing\.gguf does not exist"):  # one slot each is fine
        load_models([path, path + ".missing.gguf"], opts=OPTS, parallel=1, n_ctx=16)
    assert "localaug-scheduler-tied.F32" not in [t.name for t in threading.enumerate()]
