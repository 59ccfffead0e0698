"""Continuous batching (localaug.runtime.batch) pinned token for token against a fresh engine.

On the tiny F32 Qwen2 fixture with an F32 KV cache, decoding many sequences in one context gives
exactly the tokens of decoding each prompt alone: a slip in a position, a KV copy, a sequence id
or a sample's seed changes the tokens. So every path below (slots refilled, the shared-prefix
holder filled together, kept, truncated, replaced, evicted; n > 1 forked from one prefill, started
late from a sibling, rewound; stops; admission errors) compares the generated tokens with those of
``Engine.generate`` on a cleared context, never with the batch engine's own output.

Fast on purpose (mutation testing runs them for every mutant of batch.py): prompts are token lists
(a shared prefix is exactly the tokens written here), replies a few tokens long.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import llama_cpp as L
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_runtime import HOT, HOT2, OPTS, Fresh, assert_slots_empty, greedy, kv, make_fresh, toks

import localaug.runtime.batch as batch_module
from localaug.core.errors import EngineError
from localaug.family.registry import DEFAULT_CTX
from localaug.runtime.batch import (
    MIN_SHARE,
    BatchEngine,
    Piece,
    Request,
    Result,
    SequentialBackend,
    Slots,
    open_backend,
)
from localaug.runtime.engine import Engine, EngineOptions, Generation, SamplingParams

@pytest.fixture(scope="module")
def engine(converted) -> Iterator[Engine]:
    with Engine(converted("tied", "F32"), OPTS) as eng:
        yield eng


@pytest.fixture(scope="module")
def fresh(engine: Engine) -> Fresh:
    return make_fresh(engine)


def run_all(batch: BatchEngine, requests: Iterable[Request]) -> dict[tuple[str, int], Result]:
    out: dict[tuple[str, int], Result] = {}
    for r in batch.run(requests):
        assert (r.id, r.index) not in out, f"two results for {(r.id, r.index)}"
        out[(r.id, r.index)] = r
    return out


def assert_holder_matches_prefix(batch: BatchEngine) -> None:
    assert kv(batch, batch.holder) == ((0, len(batch.prefix) - 1) if batch.prefix else (-1, -1))


def assert_same(got: Result, want: Generation, cached: int = 0) -> None:
    """``got`` is ``want`` token for token; ``cached`` of its prompt tokens came from the holder."""
    assert got.ok and got.error is None and got.outcome is got.generation
    g = got.generation
    assert g is not None
    assert (g.tokens, g.text, g.finish_reason, g.prompt_tokens) == (want.tokens, want.text, want.finish_reason,
                                                                    want.prompt_tokens)
    assert g.completion_tokens == len(want.tokens)
    assert g.stats["cached_prompt_tokens"] == cached
    assert 0 < g.first_token_seconds <= g.seconds < 60
    rate = g.stats["prefill_tokens_per_s"]
    assert 0 <= rate < 1e8 and (rate > 0) == (g.prompt_tokens > cached)  # a real prefill time, not the 1e-9 floor


# --- slots ------------------------------------------------------------------------------------------


def test_more_requests_than_slots_refill_and_equal_fresh_decoding(engine: Engine, fresh) -> None:
    prompts = [toks(1, 5), toks(2, 9), toks(3, 12)]
    with BatchEngine(engine, parallel=2, n_ctx=32) as batch:
        got = run_all(batch, [Request(f"r{i}", p, greedy(3)) for i, p in enumerate(prompts)])
        assert_slots_empty(batch)
    assert sorted(got) == [("r0", 0), ("r1", 0), ("r2", 0)]
    for i, p in enumerate(prompts):
        want = fresh(p, greedy(3))
        assert want.finish_reason == "length" and len(want.tokens) == 3
        assert_same(got[(f"r{i}", 0)], want)


def test_requests_are_pulled_only_when_a_slot_is_free(engine: Engine) -> None:
    pulled: list[int] = []

    def requests() -> Iterator[Request]:
        for i in range(5):
            pulled.append(i)
            yield Request(str(i), toks(20 + i, 4), greedy(1 + i % 2))

    with BatchEngine(engine, parallel=2, n_ctx=16) as batch:
        assert list(batch.run([])) == []
        it = batch.run(requests())
        first = next(it)
        assert pulled == [0, 1] and first.id == "0"  # two slots: two requests, nothing more yet
        rest = list(it)
    assert sorted(r.id for r in rest) == ["1", "2", "3", "4"] and pulled == [0, 1, 2, 3, 4]


def test_engine_sizes_and_ownership(engine: Engine, converted) -> None:
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        BatchEngine(engine, parallel=0)
    with BatchEngine(engine, parallel=1) as batch:
        assert (batch.parallel, batch.holder, batch.n_ctx_seq) == (1, 1, 256)  # the engine's n_ctx
        assert L.llama_n_seq_max(batch.ctx) == 2
    with BatchEngine(engine, parallel=2, n_ctx=40_000) as batch:
        assert batch.n_ctx_seq == 32768  # capped at the trained context
    batch = BatchEngine(engine, parallel=2, n_ctx=16)
    batch.close()
    batch.close()  # twice: nothing freed twice
    assert engine.generate(toks(1, 5), greedy(4)).tokens  # a shared engine stays open
    # a model path: the batch engine loads it, with the default context, and frees it
    with BatchEngine(converted("tied", "F32"), EngineOptions(threads=1, kv_f32=True), parallel=1) as own:
        assert own.n_ctx_seq == DEFAULT_CTX
        loaded = own.engine
    assert own.engine is None and loaded._model is None


# --- the shared prefix ---------------------------------------------------------------------------


def test_the_prefix_holder_filled_kept_replaced_truncated_and_evicted(engine: Engine, fresh) -> None:
    """One engine over a server's life: every request's tokens equal a fresh engine's, whatever the
    holder did, and the holder holds exactly the KV of ``batch.prefix``."""
    P = toks(10, 12)
    with BatchEngine(engine, parallel=3, n_ctx=48) as batch:
        stats = batch.prefix_stats

        def one(prompt: list[int], cached: int, prefix: list[int]) -> None:
            [r] = run_all(batch, [Request("x", prompt, greedy(1))]).values()
            assert_same(r, fresh(prompt, greedy(1)), cached)
            assert batch.prefix == prefix
            assert_holder_matches_prefix(batch)
            assert_slots_empty(batch)

        # admitted together, sharing 12 tokens: those are decoded once, into the holder
        together = [P + toks(11, 3), P + toks(12, 4), P + toks(13, 2)]
        got = run_all(batch, [Request(str(i), p, greedy(1)) for i, p in enumerate(together)])
        for i, p in enumerate(together):
            assert_same(got[(str(i), 0)], fresh(p, greedy(1)), cached=12)
        assert batch.prefix == P
        assert_holder_matches_prefix(batch)
        assert (stats.decoded, stats.reused) == (12 + 3 + 4 + 2, 3 * 12)

        one(P + toks(14, 5), 12, P)  # starts with the prefix: kept
        assert (stats.decoded, stats.reused) == (21 + 5, 36 + 12)
        # a new system prompt that shares only its first MIN_SHARE tokens: those are taken, then the
        # new prompt (all but its last token) replaces the holder
        Q = P[:MIN_SHARE] + toks(15, 12)
        one(Q, MIN_SHARE, Q[:-1])
        one(Q[:-1] + toks(16, 2), 19, Q[:-1])  # the new one's next request takes all of it
        # merely starts like the cached prefix (MIN_SHARE - 1 tokens): nothing taken, replaced
        R = Q[:MIN_SHARE - 1] + toks(17, 10)
        one(R, 0, R[:-1])
        # shares most of a shorter prompt: the holder is cut to what they share (10 of 16)
        one(R[:10] + toks(18, 5), 10, R[:10])
        one(R[:10] + toks(19, 11), 10, R[:10])  # shares exactly half of all but its last token: kept
        V = R[:10] + toks(20, 12)
        one(V, 10, V[:-1])  # shares less than half: replaced
        one(toks(21, MIN_SHARE), 0, V[:-1])  # too short to be worth caching: the holder stays
        one(toks(22, MIN_SHARE + 1), 0, toks(22, MIN_SHARE))  # just long enough
        batch.forget_prefix()
        assert batch.prefix == [] and kv(batch, batch.holder) == (-1, -1)
        one(P + toks(14, 5), 0, (P + toks(14, 5))[:-1])  # evicted: decoded whole


def test_without_share_prefix_nothing_is_cached(engine: Engine, fresh) -> None:
    P = toks(10, 12)
    prompts = [P + toks(11, 3), P + toks(12, 4)]
    with BatchEngine(engine, parallel=2, n_ctx=32, share_prefix=False) as batch:
        got = run_all(batch, [Request(str(i), p, greedy()) for i, p in enumerate(prompts)])
        got.update(run_all(batch, [Request("again", prompts[0], greedy())]))
        assert batch.prefix == [] and kv(batch, batch.holder) == (-1, -1)
        assert (batch.prefix_stats.decoded, batch.prefix_stats.reused) == (15 + 16 + 15, 0)
    for key, p in (("0", prompts[0]), ("1", prompts[1]), ("again", prompts[0])):
        assert_same(got[(key, 0)], fresh(p))


def best_prefixes(prompts: list[list[int]]) -> tuple[int, set[tuple[int, ...]]]:
    """The prefixes that save the most prompt decoding when decoded once: length x (the prompts
    that start with it - 1), brute force over every prefix of every prompt (never a whole prompt)."""
    saved: dict[tuple[int, ...], int] = {}
    for p in prompts:
        for n in range(1, len(p)):
            x = tuple(p[:n])
            saved[x] = n * (sum(tuple(q[:n]) == x for q in prompts) - 1)
    best = max(saved.values(), default=0)
    return best, {x for x, s in saved.items() if s == best and best > 0}


def common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def fill_only(batch: BatchEngine, prompts: list[list[int]]) -> list[tuple[int, int]]:
    """Admit ``prompts`` together (no decoding step); the KV each slot then holds."""
    pending = iter([Request(str(i), p, greedy(1)) for i, p in enumerate(prompts)])
    with batch.session() as state:
        assert list(state.fill(lambda: next(pending, None))) == []
        return [kv(batch, s) for s in range(len(prompts))]


@pytest.fixture(scope="module")
def batch6(engine: Engine) -> Iterator[BatchEngine]:
    with BatchEngine(engine, parallel=6, n_ctx=40) as batch:
        yield batch


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stems=st.lists(st.lists(st.sampled_from([1000, 1001, 1002]), max_size=24), min_size=2, max_size=6),
       held=st.integers(0, 20))
def test_requests_admitted_together_cache_the_prefix_that_saves_most(batch6: BatchEngine, stems: list[list[int]],
                                                                     held: int) -> None:
    prompts = [s + [2000 + i] for i, s in enumerate(stems)]  # no prompt is the start of another
    batch6.forget_prefix()
    if held >= MIN_SHARE:  # a holder from earlier requests: the first ``held`` tokens of a prompt, then others
        old = (prompts[0][:held] + [3000] * held)[:held + 2]
        fill_only(batch6, [old + [4000], old + [4001]])
        assert batch6.prefix == old
    before, stats = list(batch6.prefix), replace(batch6.prefix_stats)
    best, winners = best_prefixes(prompts)
    slots = fill_only(batch6, prompts)
    chosen = tuple(batch6.prefix)
    if len(winners) == 1 and len(next(iter(winners))) >= MIN_SHARE:
        [want] = winners
        assert chosen == (want if common(before, list(want)) < len(want) else tuple(before))
    elif chosen != tuple(before):
        assert chosen in winners and len(chosen) >= MIN_SHARE
    assert_holder_matches_prefix(batch6)
    # the holder decoded what it did not hold yet (what it kept of the old prefix: at least MIN_SHARE
    # tokens, or nothing); each slot took from it all it shares with its prompt but the last token
    keep = common(before, batch6.prefix)
    holder = 0 if chosen == tuple(before) else len(chosen) - (keep if keep >= MIN_SHARE else 0)
    shared = [min(common(batch6.prefix, p), len(p) - 1) for p in prompts]
    shared = [n if n >= MIN_SHARE else 0 for n in shared]
    assert slots == [(0, n - 1) if n else (-1, -1) for n in shared]
    assert batch6.prefix_stats.reused - stats.reused == sum(shared)
    assert batch6.prefix_stats.decoded - stats.decoded == holder + sum(len(p) for p in prompts) - sum(shared)


def test_equal_savings_cache_the_first_prefix_in_token_order(batch6: BatchEngine) -> None:
    a, b = [500] * 10, [400] * 10  # each shared by two prompts: 10 tokens saved either way
    batch6.forget_prefix()
    fill_only(batch6, [a + [1], a + [2], b + [3], b + [4]])
    assert batch6.prefix == b  # [400, ...] sorts first
    batch6.forget_prefix()
    fill_only(batch6, [a + [1], a + [2], a[:9] + [5], b + [3], b + [4]])  # a's first 9: 18 saved, more
    assert batch6.prefix == a[:9]


def test_a_prefix_longer_than_a_batch_and_prompts_in_chunks(engine: Engine, fresh) -> None:
    """A 530-token shared prefix is decoded into the holder in two llama_decode calls (n_batch 512);
    prompts that do not fit one batch together are split; a generating slot is never starved."""
    P = toks(60, 530)
    with BatchEngine(engine, parallel=2, n_ctx=600) as batch:
        assert batch.n_batch == 512
        prompts = [P + toks(61, 3), P + toks(62, 2)]
        got = run_all(batch, [Request(str(i), p, greedy()) for i, p in enumerate(prompts)])
        assert batch.prefix == P
        assert_holder_matches_prefix(batch)
        for i, p in enumerate(prompts):
            assert_same(got[(str(i), 0)], fresh(p), cached=530)
        batch.forget_prefix()
        x, short, long = toks(63, 4), toks(64, 4), toks(65, 520)
        with batch.session() as state:
            admit(state, Request("x", x, greedy(1)), Request("short", short, greedy(2)))
            [xr] = list(state.step())
            assert xr.id == "x" and state.last_batch_tokens == 8
            admit(state, Request("long", long, greedy(1)))  # into x's slot, below short's
            [sr] = list(state.step())  # short's next token first, then 511 of the 520-token prompt
            assert sr.id == "short" and state.last_batch_tokens == 512
            [lr] = list(state.step())
            assert lr.id == "long" and state.last_batch_tokens == 9
    assert_same(xr, fresh(x, greedy(1)))
    assert_same(sr, fresh(short, greedy(2)))
    assert_same(lr, fresh(long, greedy(1)))


# --- n > 1 ------------------------------------------------------------------------------------------


def test_samples_fork_from_one_prefill_with_seed_plus_index(engine: Engine, fresh) -> None:
    p = toks(30, 6)
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch:
        got = run_all(batch, [Request("s", p, HOT, n=3)])
        assert batch.prefix_stats.decoded == len(p)  # one prefill for three samples
    assert sorted(got) == [("s", 0), ("s", 1), ("s", 2)]
    for k in range(3):
        assert_same(got[("s", k)], fresh(p, replace(HOT, seed=HOT.seed + k)))
    assert len({tuple(got[("s", k)].generation.tokens) for k in range(3)}) == 3


def test_samples_started_late_from_a_sibling_or_a_rewound_slot(engine: Engine, fresh) -> None:
    p, other = toks(31, 6), toks(32, 4)
    # three slots: "a"'s second sample forks from the prefill, its third starts in "b"'s slot from
    # a running sibling's prompt KV, its fourth and fifth when the first two finish
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch:
        got = run_all(batch, [Request("a", p, HOT2, n=5), Request("b", other, greedy(1))])
    # one slot: each next sample rewinds the finished one's KV to the prompt
    with BatchEngine(engine, parallel=1, n_ctx=16) as batch:
        alone = run_all(batch, [Request("a", p, HOT2, n=3)])
    assert sorted(got) == [("a", k) for k in range(5)] + [("b", 0)] and sorted(alone) == sorted(got)[:3]
    assert_same(got[("b", 0)], fresh(other, greedy(1)))
    for k in range(5):
        want = fresh(p, replace(HOT2, seed=HOT.seed + k))
        assert_same(got[("a", k)], want)
        if k < 3:
            assert_same(alone[("a", k)], want)


# --- stops, max_tokens, end of generation ------------------------------------------------------------


def ascii_pieces(engine: Engine, tokens: list[int]) -> list[str | None]:
    out = []
    for t in tokens:
        b = engine.piece(t)
        out.append(b.decode() if b.isascii() and b.strip() else None)
    return out


def cut_at(engine: Engine, full: Generation, stop: str) -> tuple[str, list[int]]:
    """Where a stop string ends a reply, from the unstopped reply: the text before its first
    appearance, and the tokens up to the one that completes it."""
    for k in range(1, len(full.tokens) + 1):
        text = engine.detokenize(full.tokens[:k])
        if stop in text:
            return text[: text.find(stop)], full.tokens[:k]
    raise AssertionError(f"{stop!r} is not in {full.text!r}")


def test_stops_per_request_across_inside_and_at_the_first_token(engine: Engine, fresh) -> None:
    long = greedy(6)
    pa, pb, pc = toks(2, 6), toks(4, 6), toks(5, 6)
    fa, fb, fc = fresh(pa, long), fresh(pb, long), fresh(pc, long)
    a = ascii_pieces(engine, fa.tokens)
    i = next(i for i in range(len(a) - 1) if a[i] and a[i + 1] and len(a[i]) >= 2 and len(a[i + 1]) >= 2)
    spans = a[i][-2:] + a[i + 1][:2]  # ends two characters into the next token
    b = ascii_pieces(engine, fb.tokens)
    j = next(j for j in range(1, len(b)) if b[j] and len(b[j]) >= 4)
    inside = b[j][1:-1]  # starts and ends inside one token
    first = fc.text[:1]  # the very first character
    stops = {"a": (spans,), "b": ("never there", inside), "c": (first,), "same-as-c": ()}
    prompts = {"a": pa, "b": pb, "c": pc, "same-as-c": pc}
    with BatchEngine(engine, parallel=4, n_ctx=16) as batch:
        pending = iter([Request(k, prompts[k], long, stops[k]) for k in stops])
        events: list[Result | Piece] = []
        with batch.session(stream=True) as state:
            events += state.fill(lambda: next(pending, None))
            while state.active:
                events += state.step()
    results = {e.id: e for e in events if isinstance(e, Result)}
    for key, full in (("a", fa), ("b", fb), ("c", fc)):
        text, tokens = cut_at(engine, full, [s for s in stops[key] if s in full.text][0])
        g = results[key].generation
        assert (g.text, g.tokens, g.finish_reason) == (text, tokens, "stop"), key
        assert_same(results[key], fresh(prompts[key], long, stops[key]))
        streamed = "".join(e.text for e in events if isinstance(e, Piece) and e.id == key)
        assert streamed == text, key  # the pieces never run past a stop
    assert results["c"].generation.text == "" and len(results["c"].generation.tokens) == 1
    assert_same(results["same-as-c"], fc)  # c's stop is c's alone
    assert "".join(e.text for e in events if isinstance(e, Piece) and e.id == "same-as-c") == fc.text


def test_zero_max_tokens_end_of_generation_and_ignore_eog(engine: Engine, fresh) -> None:
    p = toks(40, 5)
    grammar = greedy(4, grammar='root ::= "ab"')  # "ab", then only the end-of-generation token
    reqs = [Request("zero", p, greedy(0)), Request("eog", p, grammar), Request("ignore", p, grammar, ignore_eog=True)]
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch:
        got = run_all(batch, reqs)
    zero = got[("zero", 0)].generation
    assert (zero.tokens, zero.text, zero.finish_reason, zero.prompt_tokens) == ([], "", "length", 5)
    assert_same(got[("eog", 0)], fresh(p, grammar))
    assert got[("eog", 0)].generation.text == "ab" and got[("eog", 0)].generation.finish_reason == "stop"
    assert_same(got[("ignore", 0)], fresh(p, grammar, ignore_eog=True))
    assert len(got[("ignore", 0)].generation.tokens) == 4


# --- requests that cannot run ----------------------------------------------------------------------


def test_a_request_refused_at_admission_fails_alone(engine: Engine, fresh) -> None:
    text = "hello there, world"
    fits, over = toks(41, 21), toks(42, 22)
    reqs = [
        Request("ok1", toks(43, 5), greedy(3)),
        Request("surrogate", "bad \ud800 text", greedy(3)),
        Request("n0", toks(44, 5), greedy(3), n=0),
        Request("empty", [], greedy(3)),
        Request("fits", fits, greedy(3)),  # 21 + 3 = the context exactly
        Request("over", over, greedy(3)),  # one token more
        Request("text", text, greedy(3)),
        Request("ok2", toks(45, 6), greedy(3)),
    ]
    with BatchEngine(engine, parallel=4, n_ctx=24) as batch:
        got = run_all(batch, reqs)
    errors = {key: r.error for key, r in got.items() if not r.ok}
    assert all(got[k].generation is None and got[k].outcome == errors[k] for k in errors)
    assert sorted(errors) == [("empty", 0), ("n0", 0), ("over", 0), ("surrogate", 0)]
    assert errors[("surrogate", 0)].startswith("could not tokenize the prompt: the text holds an unpaired surrogate")
    assert errors[("n0", 0)] == "n must be at least 1"
    assert errors[("empty", 0)] == "empty prompt: give some text"
    assert errors[("over", 0)] == ("prompt of 22 tokens + max_tokens 3 exceeds the per-sequence context of 24 tokens: "
                                   "shorten the input, lower max_tokens or raise the context size")
    for key, p in (("ok1", toks(43, 5)), ("fits", fits), ("text", engine.tokenize(text)), ("ok2", toks(45, 6))):
        assert_same(got[(key, 0)], fresh(p, greedy(3)))


def test_a_huge_text_prompt_is_refused_untokenized(engine: Engine) -> None:
    assert engine.max_piece_bytes == 128
    with BatchEngine(engine, parallel=2, n_ctx=24) as batch, batch.session() as state:
        # 21 tokens (24 - max_tokens) of at most 128 bytes: 2688 bytes could be tokenized, 2689 cannot
        errors = admit(state, Request("huge", "é" * 1344 + "x", greedy(3), n=2), Request("edge", "é" * 1344, greedy(3)))
    assert [(r.id, r.index) for r in errors] == [("huge", 0), ("huge", 1), ("edge", 0)]
    assert errors[0].error == errors[1].error == (
        "the prompt (1345 characters) + max_tokens 3 cannot fit the per-sequence context of 24 tokens: shorten the "
        "input, lower max_tokens or raise the context size")
    assert errors[2].error.startswith("prompt of ") and " tokens + max_tokens 3 exceeds the per-sequence" in errors[2].error


def test_a_request_that_cannot_start_fails_alone(engine: Engine, fresh) -> None:
    bad = greedy(3, grammar="root ::= (")
    reqs = [Request("ok", toks(46, 5), greedy(3)), Request("bad", toks(47, 5), bad, n=2),
            Request("ok2", toks(48, 5), greedy(3))]
    with BatchEngine(engine, parallel=2, n_ctx=16) as batch:
        got = run_all(batch, reqs)
        assert_slots_empty(batch)
    for k in range(2):
        assert got[("bad", k)].error == ("could not start: the grammar (response_format) could not be parsed by llama.cpp: "
                                         "simplify the JSON schema")
    assert_same(got[("ok", 0)], fresh(toks(46, 5), greedy(3)))
    assert_same(got[("ok2", 0)], fresh(toks(48, 5), greedy(3)))


@pytest.fixture
def sampler_fails_for_seed(monkeypatch: pytest.MonkeyPatch):
    """Fault injection: the sampler of the sample with this seed cannot be made (as a binding that
    refuses would), so that a request's later sample fails to start."""
    failing: set[int] = set()
    real = batch_module.make_sampler

    def make(p: SamplingParams, *args: object):
        if p.seed in failing:
            raise RuntimeError("no sampler")
        return real(p, *args)

    monkeypatch.setattr(batch_module, "make_sampler", make)
    return failing


def test_a_sample_that_cannot_start_fails_its_request_only(engine: Engine, fresh, sampler_fails_for_seed) -> None:
    """Each way a later sample starts, failing: the request fails, its slots are freed with their KV
    (the requests that take them next decode as if fresh), the other requests go on."""
    p, other, c, d = toks(50, 5), toks(51, 4), toks(52, 5), toks(53, 6)
    message = "could not start a sample: no sampler"
    sampler_fails_for_seed.add(HOT.seed + 1)
    after = [Request("c", c, greedy(1)), Request("d", d, greedy(1))]
    # forked from the fresh prefill: the whole request fails, its first sample too
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch:
        got = run_all(batch, [Request("a", p, HOT2, n=3), Request("b", other, greedy(2)), *after])
    assert [got[("a", k)].error for k in range(3)] == [message] * 3
    # started late from a running sibling: the sibling is stopped, both fail
    with BatchEngine(engine, parallel=2, n_ctx=16) as batch:
        late = run_all(batch, [Request("a", p, HOT2, n=2), Request("b", other, greedy(1)), *after])
    assert [late[("a", k)].error for k in range(2)] == [message] * 2
    # started by rewinding the finished sibling's slot: the finished sample stays
    with BatchEngine(engine, parallel=1, n_ctx=16) as batch:
        rewound = run_all(batch, [Request("a", p, HOT2, n=3), Request("b", other, greedy(1)), *after])
    assert_same(rewound[("a", 0)], fresh(p, HOT2))
    assert [rewound[("a", k)].error for k in (1, 2)] == [message] * 2
    for results, b_tokens in ((got, 2), (late, 1), (rewound, 1)):
        assert_same(results[("b", 0)], fresh(other, greedy(b_tokens)))
        assert_same(results[("c", 0)], fresh(c, greedy(1)))
        assert_same(results[("d", 0)], fresh(d, greedy(1)))


# --- the run state: cancel, clear ---------------------------------------------------------------------


def admit(state: Slots, *requests: Request) -> list[Result]:
    pending = iter(requests)
    return list(state.fill(lambda: next(pending, None)))


def test_cancel_frees_the_slots_and_kv_of_one_request(engine: Engine, fresh) -> None:
    a, b = toks(52, 5), toks(53, 6)
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch, batch.session() as state:
        assert admit(state, Request("a", a, greedy(5), n=2), Request("b", b, greedy(3))) == []
        assert state.active == 2
        list(state.step())  # a's prompt is in: its second sample forks into the free slot
        assert state.active == 3 and all(kv(batch, s)[1] >= 4 for s in range(3))
        assert state.cancel("a") == 2
        assert state.active == 1 and kv(batch, 0) == kv(batch, 2) == (-1, -1) and kv(batch, 1) == (0, 5)
        assert state.cancel("a") == 0 and state.cancel("nobody") == 0
        events = []
        while state.active:
            events += state.step()
        assert [(e.id, e.index) for e in events] == [("b", 0)]
        assert_same(events[0], fresh(b, greedy(3)))
        # a request whose other samples wait for a slot: cancelled, they never start
        assert admit(state, Request("c", a, greedy(2), n=5)) == []
        list(state.step())
        assert state.active == 3 and [g.request.id for g in state.groups] == ["c"]
        assert state.cancel("c") == 3 and state.groups == [] and state.active == 0
        assert admit(state) == [] and state.active == 0
        assert_slots_empty(batch)


def test_clear_drops_every_sequence_and_the_prefix(engine: Engine) -> None:
    P = toks(54, 10)
    with BatchEngine(engine, parallel=2, n_ctx=24) as batch, batch.session() as state:
        admit(state, Request("a", P + [7], greedy(3)), Request("b", P + [8], greedy(3), n=3))
        assert batch.prefix == P
        list(state.step())
        assert state.clear() == ["a", "b"]
        assert (state.slots, state.groups, state.active, batch.prefix) == ([None, None], [], 0, [])
        assert kv(batch, batch.holder) == (-1, -1)
        assert_slots_empty(batch)


# --- backends ----------------------------------------------------------------------------------------


def test_one_sequence_at_a_time_backend(converted, fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    path = converted("tied", "F32")
    p = toks(56, 5)
    with open_backend(path, OPTS, parallel=1) as seq:
        assert isinstance(seq, SequentialBackend) and seq.engine.n_ctx == 256  # its context is made
        got = {(r.id, r.index): r for r in seq.run([Request("a", p, HOT, n=2), Request("e", [], HOT, n=2)])}
        assert sorted(got) == [("a", 0), ("a", 1), ("e", 0), ("e", 1)]
        for k in range(2):  # the engine decodes the same prompt once: sample 1 reuses all of it
            assert_same(got[("a", k)], fresh(p, replace(HOT, seed=HOT.seed + k)), cached=len(p) if k else 0)
            assert got[("e", k)].error == "empty prompt: give some text"
        real = seq.engine.generate

        def second_fails(prompt, sampling, stop=(), ignore_eog=False):  # fault injection
            if sampling.seed == HOT.seed + 1:
                raise RuntimeError("no memory")
            return real(prompt, sampling, stop, ignore_eog)

        monkeypatch.setattr(seq.engine, "generate", second_fails)
        got = list(seq.run([Request("a", p, HOT, n=3)]))
        assert [(r.index, r.error) for r in got] == [(0, None), (1, "no memory"), (2, "no memory")]
        loaded = seq.engine
    assert seq.engine is None and loaded._model is None
    with Engine(path, OPTS) as shared:
        kept = SequentialBackend(shared)
        kept.close()
        assert kept.engine is shared and shared.generate(p, greedy(1)).tokens == fresh(p, greedy(1)).tokens


def test_a_batch_backend_owns_the_engine_it_is_given(converted) -> None:
    engine = Engine(converted("tied", "F32"), OPTS, context=False)
    with open_backend(engine, OPTS, parallel=2) as many:
        assert isinstance(many, BatchEngine) and many.engine is engine
        assert (many.parallel, many.n_ctx_seq, engine._ctx) == (2, 256, None)
    assert many.engine is None and engine._model is None  # handed over: freed with the backend


def test_a_failed_decode_is_an_engine_error(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with BatchEngine(engine, parallel=2, n_ctx=16) as batch:
        monkeypatch.setattr(L, "llama_decode", lambda ctx, b: 1)  # fault injection: llama.cpp refuses the batch
        with pytest.raises(EngineError) as e:
            run_all(batch, [Request("a", toks(57, 5), greedy(2)), Request("b", toks(58, 3), greedy(2))])
        assert str(e.value) == "llama_decode failed (code 1) on a batch of 8 tokens: lower parallel or n_ctx"
        assert e.value.params == ["parallel", "n_ctx"]
