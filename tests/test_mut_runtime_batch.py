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

import ctypes
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
from localaug.runtime.backend import Request, Result, SequentialBackend
from localaug.runtime.batch import BatchEngine, Slots
from localaug.runtime.calibrate import Parallel, open_calibrated
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.prefix import MIN_SHARE
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation, Piece

@pytest.fixture(scope="module")
def engine(converted) -> Iterator[Engine]:
    with Engine(converted("tied", "F32"), OPTS) as eng:
        yield eng


@pytest.fixture(scope="module")
def fresh(engine: Engine) -> Fresh:
    return make_fresh(engine)


@pytest.fixture(autouse=True)
def every_native_object_is_freed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A spy on what the batch engine allocates in llama.cpp (samplers, its context, its batch):
    each is freed by the end of the test (finished, cancelled, failed, left running when a session
    ends, or with the engine), none leaks."""
    live: dict[int, str] = {}
    address = lambda p: ctypes.cast(p, ctypes.c_void_p).value  # noqa: E731
    make, free, new_context = batch_module.make_sampler, L.llama_sampler_free, Engine.new_context
    batch_init, batch_free, llama_free = L.llama_batch_init, L.llama_batch_free, L.llama_free

    def made(*args: object):
        sampler = make(*args)
        live[address(sampler)] = "sampler"
        return sampler

    def context(self: Engine, *args: object, **kwargs: object):
        ctx = new_context(self, *args, **kwargs)
        if kwargs.get("kv_unified"):  # the batch engine's (an Engine's own contexts live with it)
            live[address(ctx)] = "context"
        return ctx

    def batch(*args: object):
        b = batch_init(*args)
        live[address(b.token)] = "batch"
        return b

    def forget(key: int | None, real, obj: object) -> None:
        live.pop(key, None)  # type: ignore[arg-type]
        real(obj)

    monkeypatch.setattr(batch_module, "make_sampler", made)
    monkeypatch.setattr(L, "llama_sampler_free", lambda s: forget(address(s), free, s))
    monkeypatch.setattr(Engine, "new_context", context)
    monkeypatch.setattr(L, "llama_free", lambda c: forget(address(c), llama_free, c))
    monkeypatch.setattr(L, "llama_batch_init", batch)
    monkeypatch.setattr(L, "llama_batch_free", lambda b: forget(address(b.token), batch_free, b))
    yield
    assert not live, f"never freed: {sorted(live.values())}"


def run_all(batch: BatchEngine, requests: Iterable[Request]) -> dict[tuple[str, int], Result]:
    out: dict[tuple[str, int], Result] = {}
    for r in batch.run(requests):
        assert (r.id, r.index) not in out, f"two results for {(r.id, r.index)}"
        out[(r.id, r.index)] = r
    return out


def assert_holder_matches_prefix(batch: BatchEngine) -> None:
    assert kv(batch, batch.prefix.holder) == ((0, len(batch.prefix.tokens) - 1) if batch.prefix.tokens else (-1, -1))


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
    rate, decoded = g.stats["prefill_tokens_per_s"], g.prompt_tokens - cached
    assert (rate > 0) == (decoded > 0)
    if decoded:  # the prefill took a real time (not the 1e-9 floor), within the whole generation's
        assert 0 < decoded / rate <= g.seconds and rate < 1e8


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
    half = BatchEngine.__new__(BatchEngine)
    with pytest.raises(ValueError, match="^parallel must be at least 1$"):
        half.__init__(engine, parallel=0)  # type: ignore[misc]
    half.close()  # what a failed constructor leaves closes cleanly (as __del__ does), the engine untouched
    with BatchEngine(engine, n_ctx=16) as batch:
        assert batch.parallel == 8  # the default
    with BatchEngine(engine, parallel=1) as batch:
        assert (batch.parallel, batch.prefix.holder, batch.n_ctx_seq) == (1, 1, 256)  # the engine's n_ctx
        assert L.llama_n_seq_max(batch.ctx) == 2
    with BatchEngine(engine, parallel=3, n_ctx=64) as batch:  # 3 slots and the holder: 4 x 64 cells
        assert (L.llama_n_ctx(batch.ctx), batch.n_batch, batch.token_batch.size) == (256, 256, 0)
        assert L.llama_n_ctx_seq(batch.ctx) == 256  # one unified pool: any sequence may use any cell
    with BatchEngine(engine, parallel=2, n_ctx=40_000) as batch:
        assert batch.n_ctx_seq == 32768  # capped at the trained context
    batch = BatchEngine(engine, parallel=2, n_ctx=16)
    batch.close()
    assert batch.ctx is None and batch.token_batch is None and batch.engine is engine
    batch.close()  # twice: nothing freed twice
    assert engine.generate(toks(1, 5), greedy(4)).tokens  # a shared engine stays open
    # a model path: the batch engine loads it, with the default context, and frees it
    opts = EngineOptions(threads=1, kv_f32=True)
    with BatchEngine(converted("tied", "F32"), opts, parallel=1) as own:
        assert own.n_ctx_seq == DEFAULT_CTX
        assert own.engine.opts is opts and own.engine._ctx is None  # no single-sequence context of its own
        loaded = own.engine
    assert own.engine is None and loaded._model is None
    own.close()


# --- the shared prefix ---------------------------------------------------------------------------


def test_the_prefix_holder_filled_kept_replaced_truncated_and_evicted(engine: Engine, fresh) -> None:
    """One engine over a server's life: every request's tokens equal a fresh engine's, whatever the
    holder did, and the holder holds exactly the KV of ``batch.prefix.tokens``."""
    P = toks(10, 12)
    with BatchEngine(engine, parallel=3, n_ctx=48) as batch:
        stats = batch.prefix.stats

        def one(prompt: list[int], cached: int, prefix: list[int]) -> None:
            [r] = run_all(batch, [Request("x", prompt, greedy(1))]).values()
            assert_same(r, fresh(prompt, greedy(1)), cached)
            assert batch.prefix.tokens == prefix
            assert_holder_matches_prefix(batch)
            assert_slots_empty(batch)

        # admitted together, sharing 12 tokens: those are decoded once, into the holder
        together = [P + toks(11, 3), P + toks(12, 4), P + toks(13, 2)]
        got = run_all(batch, [Request(str(i), p, greedy(1)) for i, p in enumerate(together)])
        for i, p in enumerate(together):
            assert_same(got[(str(i), 0)], fresh(p, greedy(1)), cached=12)
        assert batch.prefix.tokens == P
        assert_holder_matches_prefix(batch)
        assert (stats.decoded, stats.reused) == (12 + 3 + 4 + 2, 3 * 12)

        one(P + toks(14, 5), 12, P)  # starts with the prefix: kept
        assert (stats.decoded, stats.reused) == (21 + 5, 36 + 12)
        # shares exactly MIN_SHARE tokens, half of all but its last: the holder is cut to those
        one(P[:MIN_SHARE] + toks(23, 9), MIN_SHARE, P[:MIN_SHARE])
        # a new system prompt that shares only its first MIN_SHARE tokens: those are taken, then the
        # new prompt (all but its last token) replaces the holder
        Q = P[:MIN_SHARE] + toks(15, 12)
        one(Q, MIN_SHARE, Q[:-1])
        one(Q[:-1] + toks(16, 2), 19, Q[:-1])  # the new one's next request takes all of it
        one(Q[:-1], 18, Q[:-1])  # exactly the cached prefix: all but its last token
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
        X = [toks(22, 1)[0] + 1] + toks(22, MIN_SHARE)[1:] + toks(24, 3)  # all but the first token in common
        one(X, 0, X[:-1])
        batch.prefix.forget()
        assert batch.prefix.tokens == [] and kv(batch, batch.prefix.holder) == (-1, -1)
        one(P + toks(14, 5), 0, (P + toks(14, 5))[:-1])  # evicted: decoded whole


def test_without_share_prefix_nothing_is_cached(engine: Engine, fresh) -> None:
    P = toks(10, 12)
    prompts = [P + toks(11, 3), P + toks(12, 4)]
    with BatchEngine(engine, parallel=2, n_ctx=32, share_prefix=False) as batch:
        got = run_all(batch, [Request(str(i), p, greedy()) for i, p in enumerate(prompts)])
        got.update(run_all(batch, [Request("again", prompts[0], greedy())]))
        assert batch.prefix.tokens == [] and kv(batch, batch.prefix.holder) == (-1, -1)
        assert (batch.prefix.stats.decoded, batch.prefix.stats.reused) == (15 + 16 + 15, 0)
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


@st.composite
def nested_prompts(draw: st.DrawFn) -> list[list[int]]:
    """2 to 6 prompts, each the start of one of two random texts plus a few tokens of its own: groups
    of prompts sharing prefixes, nested within one another. None is the start of another."""
    texts = draw(st.lists(st.lists(st.sampled_from([1000, 1001]), min_size=24, max_size=24), min_size=2, max_size=2))
    prompts = []
    for i in range(draw(st.integers(2, 6))):
        start = draw(st.sampled_from(texts))[:draw(st.integers(0, 24))]
        prompts.append(start + draw(st.lists(st.sampled_from([1000, 1001, 1002]), max_size=3)) + [2000 + i])
    return prompts


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=nested_prompts(), held=st.integers(0, 20))
def test_requests_admitted_together_cache_the_prefix_that_saves_most(batch6: BatchEngine, prompts: list[list[int]],
                                                                     held: int) -> None:
    batch6.prefix.forget()
    if held >= MIN_SHARE:  # a holder from earlier requests: the first ``held`` tokens of a prompt, then others
        old = (prompts[0][:held] + [3000] * held)[:held + 2]
        fill_only(batch6, [old + [4000], old + [4001]])
        assert batch6.prefix.tokens == old
    before, stats = list(batch6.prefix.tokens), replace(batch6.prefix.stats)
    best, winners = best_prefixes(prompts)
    slots = fill_only(batch6, prompts)
    chosen = tuple(batch6.prefix.tokens)
    if len(winners) == 1 and len(next(iter(winners))) >= MIN_SHARE:
        [want] = winners
        assert chosen == (want if common(before, list(want)) < len(want) else tuple(before))
    elif chosen != tuple(before):
        assert chosen in winners and len(chosen) >= MIN_SHARE
    assert_holder_matches_prefix(batch6)
    # the holder decoded what it did not hold yet (what it kept of the old prefix: at least MIN_SHARE
    # tokens, or nothing); each slot took from it all it shares with its prompt but the last token
    keep = common(before, batch6.prefix.tokens)
    holder = 0 if chosen == tuple(before) else len(chosen) - (keep if keep >= MIN_SHARE else 0)
    shared = [min(common(batch6.prefix.tokens, p), len(p) - 1) for p in prompts]
    shared = [n if n >= MIN_SHARE else 0 for n in shared]
    assert slots == [(0, n - 1) if n else (-1, -1) for n in shared]
    assert batch6.prefix.stats.reused - stats.reused == sum(shared)
    assert batch6.prefix.stats.decoded - stats.decoded == holder + sum(len(p) for p in prompts) - sum(shared)


def test_prefix_choices_worked_out_by_hand(batch6: BatchEngine) -> None:
    a, b = [500] * 10, [400] * 10  # each shared by two prompts: 10 tokens saved either way
    batch6.prefix.forget()
    fill_only(batch6, [a + [1], a + [2], b + [3], b + [4]])
    assert batch6.prefix.tokens == b  # [400, ...] sorts first
    batch6.prefix.forget()
    fill_only(batch6, [a + [1], a + [2], a[:9] + [5], b + [3], b + [4]])  # a's first 9: 18 saved, more
    assert batch6.prefix.tokens == a[:9]
    batch6.prefix.forget()
    fill_only(batch6, [a, a + [1], a + [2]])  # the whole of a prompt: all but its last token
    assert batch6.prefix.tokens == a[:-1]
    batch6.prefix.forget()
    fill_only(batch6, [b[:MIN_SHARE - 1] + [1], b[:MIN_SHARE - 1] + [2]])  # too short to cache
    assert batch6.prefix.tokens == []
    fill_only(batch6, [b[:MIN_SHARE] + [1], b[:MIN_SHARE] + [2]])  # just long enough
    assert batch6.prefix.tokens == b[:MIN_SHARE]
    fill_only(batch6, [a + [1], a + [2]])
    fill_only(batch6, [a[:9] + [5], a[:9] + [6]])  # the holder holds all of it and more: kept whole
    assert batch6.prefix.tokens == a
    fill_only(batch6, [[7, 7, 7], [8, 8, 8]])  # two prompts sharing nothing: the holder stays
    assert batch6.prefix.tokens == a
    # a new prefix sharing exactly MIN_SHARE tokens with the holder's: those are kept, 4 decoded
    x = a[:MIN_SHARE] + [9] * 4
    before = batch6.prefix.stats.decoded
    fill_only(batch6, [x + [1], x + [2]])
    assert batch6.prefix.tokens == x and batch6.prefix.stats.decoded - before == 4 + 1 + 1
    assert_holder_matches_prefix(batch6)


def test_a_prefix_longer_than_a_batch_and_prompts_in_chunks(engine: Engine, fresh) -> None:
    """A 530-token shared prefix is decoded into the holder in two llama_decode calls (n_batch 512);
    prompts that do not fit one batch together are split; a generating slot is never starved."""
    P = toks(60, 530)
    with BatchEngine(engine, parallel=3, n_ctx=600) as batch:
        assert batch.n_batch == 512
        prompts = [P + toks(61, 3), P + toks(62, 2)]
        got = run_all(batch, [Request(str(i), p, greedy()) for i, p in enumerate(prompts)])
        assert batch.prefix.tokens == P
        assert_holder_matches_prefix(batch)
        for i, p in enumerate(prompts):
            assert_same(got[(str(i), 0)], fresh(p), cached=530)
        batch.prefix.forget()
        x, short, long = toks(63, 4), toks(64, 4), toks(65, 520)
        with batch.session() as state:
            admit(state, Request("x", x, greedy(1)), Request("short", short, greedy(2)))
            [xr] = list(state.step())
            assert xr.id == "x" and state.last_batch_tokens == 8
            admit(state, Request("long", long, greedy(1), n=2))  # into x's slot, below short's
            [sr] = list(state.step())  # short's next token first, then 511 of the 520-token prompt
            assert sr.id == "short" and state.last_batch_tokens == 512
            assert admit(state) == [] and schedule(state) == [("long", 0), None, None]  # not forked half-decoded
            lr, lr1 = state.step()
            assert (lr.id, lr.index, lr1.id, lr1.index) == ("long", 0, "long", 1) and state.last_batch_tokens == 9
            # 511 + 1 tokens: the batch is full to its last token, the third prompt waits a step
            full, tiny, tiny2 = toks(66, 511), toks(67, 5), toks(68, 3)
            admit(state, *(Request(str(i), p, greedy(1)) for i, p in enumerate((full, tiny, tiny2))))
            [r0] = list(state.step())
            assert r0.id == "0" and state.last_batch_tokens == 512
            r1, r2 = state.step()
            assert {r1.id, r2.id} == {"1", "2"} and state.last_batch_tokens == 4 + 3
    assert_same(r0, fresh(full, greedy(1)))
    assert_same(r1 if r1.id == "1" else r2, fresh(tiny, greedy(1)))
    assert_same(r2 if r2.id == "2" else r1, fresh(tiny2, greedy(1)))
    assert_same(xr, fresh(x, greedy(1)))
    assert_same(sr, fresh(short, greedy(2)))
    assert_same(lr, fresh(long, greedy(1)))
    assert_same(lr1, fresh(long, greedy(1)))


# --- n > 1 ------------------------------------------------------------------------------------------


def test_samples_fork_from_one_prefill_with_seed_plus_index(engine: Engine, fresh) -> None:
    p = toks(30, 6)
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch:
        got = run_all(batch, [Request("s", p, HOT, n=3)])
        assert batch.prefix.stats.decoded == len(p)  # one prefill for three samples
    assert sorted(got) == [("s", 0), ("s", 1), ("s", 2)]
    for k in range(3):
        assert_same(got[("s", k)], fresh(p, replace(HOT, seed=HOT.seed + k)))
    assert len({tuple(got[("s", k)].generation.tokens) for k in range(3)}) == 3


def schedule(state: Slots) -> list[tuple[str, int] | None]:
    """Which sample of which request each slot runs."""
    return [(s.group.request.id, s.index) if s is not None else None for s in state.slots]


def results_of(events: Iterable[Result | Piece]) -> dict[tuple[str, int], Result]:
    return {(e.id, e.index): e for e in events if isinstance(e, Result)}


def test_samples_started_late_from_a_sibling_or_a_rewound_slot(engine: Engine, fresh) -> None:
    p, other = toks(31, 6), toks(32, 4)
    events: list[Result | Piece] = []
    # three slots: "a"'s second sample forks from the prefill; the third starts in "b"'s slot from a
    # running sibling's prompt KV; the fourth and fifth, together, when the first two finish
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch, batch.session() as state:
        admit(state, Request("a", p, HOT2, n=5), Request("b", other, greedy(1)))
        events += state.step()
        assert schedule(state) == [("a", 0), None, ("a", 1)]
        assert admit(state) == [] and schedule(state) == [("a", 0), ("a", 2), ("a", 1)]
        events += state.step()
        assert schedule(state) == [None, ("a", 2), None]
        assert admit(state) == [] and schedule(state) == [("a", 3), ("a", 2), ("a", 4)] and state.groups == []
        while state.active:
            events += state.step()
            assert admit(state) == []
    got = results_of(events)
    # two slots: the second sample forks from the prefill; the third starts by rewinding the KV of
    # the sibling that finishes last to the prompt, the fourth from that one's prompt KV
    with BatchEngine(engine, parallel=2, n_ctx=16) as batch, batch.session() as state:
        admit(state, Request("a", p, HOT2, n=4))
        alone = list(state.step()) + list(state.step())
        assert schedule(state) == [None, ("a", 2)] and len(state.groups) == 1
        assert admit(state) == [] and schedule(state) == [("a", 3), ("a", 2)] and state.groups == []
        while state.active:
            alone += state.step()
    alone = results_of(alone)
    assert sorted(got) == [("a", k) for k in range(5)] + [("b", 0)] and sorted(alone) == sorted(got)[:4]
    assert_same(got[("b", 0)], fresh(other, greedy(1)))
    for k in range(5):
        want = fresh(p, replace(HOT2, seed=HOT.seed + k))
        assert_same(got[("a", k)], want)
        if k < 4:
            assert_same(alone[("a", k)], want)


def test_a_failed_fork_leaves_the_slot_to_the_next_request_with_samples_to_start(engine: Engine, fresh,
                                                                                 sampler_fails_for_seed) -> None:
    sampler_fails_for_seed.add(HOT.seed + 1)
    pa, pb, pc, pd = toks(33, 5), toks(34, 6), toks(35, 4), toks(36, 5)
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch, batch.session() as state:
        admit(state, Request("a", pa, HOT2, n=2), Request("b", pb, greedy(2), n=2), Request("c", pc, greedy(1)))
        events = list(state.step())
        assert schedule(state) == [("a", 0), ("b", 0), None]
        errors = admit(state, Request("d", pd, greedy(2)))  # a's fork fails: b's takes the slot, d a's
        assert [(e.id, e.index) for e in errors] == [("a", 0), ("a", 1)]
        assert schedule(state) == [("d", 0), ("b", 0), ("b", 1)]
        while state.active:
            events += state.step()
    got = results_of(events)
    assert sorted(got) == [("b", 0), ("b", 1), ("c", 0), ("d", 0)]
    for key, prompt, sampling in ((("b", 0), pb, greedy(2)), (("b", 1), pb, greedy(2)), (("c", 0), pc, greedy(1)),
                                  (("d", 0), pd, greedy(2))):
        assert_same(got[key], fresh(prompt, sampling))


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
        streamed = [e for e in events if isinstance(e, Piece) and e.id == key]
        assert "".join(e.text for e in streamed) == text, key  # the pieces never run past a stop
        assert all(e.index == 0 for e in streamed)
    assert results["c"].generation.text == "" and len(results["c"].generation.tokens) == 1
    assert_same(results["same-as-c"], fc)  # c's stop is c's alone
    # no stop to hold text back for: each token's text streams at its step, before the Result
    assert [(e.text if isinstance(e, Piece) else None, e.index) for e in events if e.id == "same-as-c"] == [
        *((engine.piece(t).decode("utf-8"), 0) for t in fc.tokens), (None, 0)]


def test_zero_max_tokens_end_of_generation_and_ignore_eog(engine: Engine, fresh) -> None:
    p = toks(40, 5)
    grammar = greedy(4, grammar='root ::= "ab"')  # "ab", then only the end-of-generation token
    penalty = greedy(3, repeat_penalty=1.5)
    words = greedy(5, grammar='root ::= [a-z]+ " " [0-9]+ "!"')
    reqs = [Request("zero", p, greedy(0)), Request("eog", p, grammar), Request("ignore", p, grammar, ignore_eog=True),
            Request("penalty", p, penalty), Request("words", p, words)]
    with BatchEngine(engine, parallel=5, n_ctx=16) as batch:
        got = run_all(batch, reqs)
    assert_same(got[("penalty", 0)], fresh(p, penalty))
    assert_same(got[("words", 0)], fresh(p, words))
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
    # the only slot's request fails to start, and nothing runs: the next ones are still pulled
    with BatchEngine(engine, parallel=1, n_ctx=16) as batch:
        got = run_all(batch, [Request("bad", toks(47, 5), bad), Request("ok", toks(46, 5), greedy(3))])
    assert sorted(got) == [("bad", 0), ("ok", 0)] and not got[("bad", 0)].ok
    assert_same(got[("ok", 0)], fresh(toks(46, 5), greedy(3)))


def test_a_request_sharing_the_cached_prefix_that_cannot_start_leaves_its_slot_empty(engine: Engine, fresh) -> None:
    P = toks(70, 10)
    with BatchEngine(engine, parallel=1, n_ctx=24) as batch:
        run_all(batch, [Request("warm", P + [7], greedy(1))])
        assert batch.prefix.tokens == P
        with batch.session() as state:
            [error] = admit(state, Request("bad", P + [8], greedy(1, grammar="root ::= (")))
            assert error.id == "bad" and error.error.startswith("could not start:")
            assert kv(batch, 0) == (-1, -1) and state.active == 0  # the prefix KV it took is dropped
        [ok] = run_all(batch, [Request("ok", P + [9], greedy(1))]).values()
    assert_same(ok, fresh(P + [9], greedy(1)), cached=10)


def test_a_shared_prefix_llama_cpp_refuses_is_not_cached(engine: Engine, fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    real = L.llama_decode

    def refuse_the_holder(ctx, b):  # fault injection: the holder's batch is refused
        return 1 if b.seq_id and b.seq_id[0][0] == 2 else real(ctx, b)

    P = toks(71, 12)
    prompts = [P + toks(72, 2), P + toks(73, 3)]
    with BatchEngine(engine, parallel=2, n_ctx=24) as batch:
        run_all(batch, [Request("warm", P + [5], greedy(1))])  # the holder holds P
        monkeypatch.setattr(L, "llama_decode", refuse_the_holder)
        batch.prefix.forget()
        got = run_all(batch, [Request(str(i), p, greedy(1)) for i, p in enumerate(prompts)])
        assert batch.prefix.stats.decoded == 13 + 14 + 15  # the warm-up's prompt, then both whole
    for i, p in enumerate(prompts):
        assert_same(got[(str(i), 0)], fresh(p, greedy(1)))


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
    # forked from the fresh prefill: the whole request fails, its first sample too; both slots are
    # freed with their KV, and the next requests take them
    with BatchEngine(engine, parallel=3, n_ctx=16) as batch, batch.session() as state:
        admit(state, Request("a", p, HOT2, n=3), Request("b", other, greedy(2)))
        events = list(state.step())
        assert [(e.id, e.index, e.error) for e in events] == [("a", k, message) for k in range(3)]
        assert [kv(batch, s) for s in range(3)] == [(-1, -1), (0, 3), (-1, -1)] and state.groups == []
        admit(state, *after)
        while state.active:
            events += state.step()
    got = {(e.id, e.index): e for e in events}
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
        assert batch.prefix.tokens == P
        list(state.step())
        assert state.clear() == ["a", "b"]
        assert (state.slots, state.groups, state.active, batch.prefix.tokens) == ([None, None], [], 0, [])
        assert kv(batch, batch.prefix.holder) == (-1, -1)
        assert_slots_empty(batch)


# --- backends ----------------------------------------------------------------------------------------


def test_one_sequence_at_a_time_backend(converted, fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    path = converted("tied", "F32")
    p = toks(56, 5)
    seq, chosen = open_calibrated(path, OPTS, 1)
    with seq:
        assert chosen == Parallel(1, "given") and isinstance(seq, SequentialBackend) and seq.engine.n_ctx == 256  # its context is made
        stop = (fresh(p, HOT).text[2:4],)
        reqs = [Request("a", p, HOT, n=2), Request("e", [], HOT, n=2), Request("s", p, HOT, stop)]
        got = {(r.id, r.index): r for r in seq.run(reqs)}
        assert sorted(got) == [("a", 0), ("a", 1), ("e", 0), ("e", 1), ("s", 0)]
        for k in range(2):  # the engine decodes the same prompt once: sample 1 reuses all of it
            assert_same(got[("a", k)], fresh(p, replace(HOT, seed=HOT.seed + k)), cached=len(p) if k else 0)
            assert got[("e", k)].error == "empty prompt: give some text"
        assert_same(got[("s", 0)], fresh(p, HOT, stop), cached=len(p))
        assert got[("s", 0)].generation.text == fresh(p, HOT).text[:2]
        real = seq.engine.generate

        def second_fails(prompt, sampling, stop=(), ignore_eog=False):  # fault injection
            if sampling.seed == HOT.seed + 1:
                raise RuntimeError("no memory")
            return real(prompt, sampling, stop, ignore_eog)

        monkeypatch.setattr(seq.engine, "generate", second_fails)
        got = list(seq.run([Request("a", p, HOT, n=3), Request("next", p, greedy(1))]))
        assert [(r.id, r.index, r.error) for r in got] == [("a", 0, None), ("a", 1, "no memory"), ("a", 2, "no memory"),
                                                           ("next", 0, None)]
        loaded = seq.engine
    assert seq.engine is None and loaded._model is None
    with Engine(path, OPTS) as shared:
        kept = SequentialBackend(shared)
        kept.close()
        assert kept.engine is shared and shared.generate(p, greedy(1)).tokens == fresh(p, greedy(1)).tokens


def test_a_batch_backend_owns_the_engine_it_is_given(converted) -> None:
    engine = Engine(converted("tied", "F32"), OPTS, context=False)
    many, chosen = open_calibrated(engine, replace(OPTS, n_ctx=128), 2)
    with many:  # the options' context
        assert chosen == Parallel(2, "given") and isinstance(many, BatchEngine) and many.engine is engine
        assert (many.parallel, many.n_ctx_seq, engine._ctx) == (2, 128, None)
    assert many.engine is None and engine._model is None  # handed over: freed with the backend
    loaded, _ = open_calibrated(converted("tied", "F32"), OPTS, 2)
    with loaded:
        assert loaded.engine._ctx is None and loaded.n_ctx_seq == 256  # no single-sequence context made
        own = loaded.engine
    assert own._model is None


def test_a_failed_decode_is_an_engine_error(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with BatchEngine(engine, parallel=2, n_ctx=16) as batch:
        monkeypatch.setattr(L, "llama_decode", lambda ctx, b: 1)  # fault injection: llama.cpp refuses the batch
        with pytest.raises(EngineError) as e:
            run_all(batch, [Request("a", toks(57, 5), greedy(2)), Request("b", toks(58, 3), greedy(2))])
        assert str(e.value) == "llama_decode failed (code 1) on a batch of 8 tokens: lower parallel or n_ctx"
        assert e.value.params == ["parallel", "n_ctx"]
