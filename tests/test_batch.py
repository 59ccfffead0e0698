"""BatchEngine (continuous batching in one llama.cpp context) against the single-sequence Engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localaug.family import prompts
from localaug.runtime.backend import Request, Result
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.prefix import MIN_SHARE
from localaug.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=20)
SEEDED = SamplingParams(temperature=0.8, top_p=0.95, top_k=50, max_tokens=16, seed=1234)

TEXTS = [
    "Create a travel guide for Hangzhou.",
    "写一份杭州旅游指南。",
    "Explain rainbows to a child. 🌈",
    "a poem about rain",
    "the history of tea",
    "how do magnets work",
    "解释量子纠缠",
    "List three primary colors.",
    "Write a Python function that reverses a linked list, with tests and a docstring explaining complexity.",
    "Summarise the causes of the First World War in five bullet points for a high-school class.",
    "给我推荐五本适合初学者的机器学习书籍，并说明理由。",
    "x",
    "Translate 'good morning' into French, German, Japanese and Korean. " * 3,
    "Plan a two-week road trip across California covering national parks, coastal towns and food stops. " * 6,
]


def chat(text: str) -> str:
    return prompts.qwen2_chatml([{"role": "user", "content": text}])


@pytest.fixture(scope="module", params=[("tied", "F32"), ("tied", "Q8_0")], ids=["F32", "Q8_0"])
def engine(request, converted) -> Engine:
    kind, quant = request.param
    eng = Engine(converted(kind, quant), EngineOptions(threads=1, n_ctx=1024, kv_f32=True))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def expected(engine: Engine) -> dict[str, list[int]]:
    return {t: engine.generate(chat(t), GREEDY, prompts.QWEN2_STOP).tokens for t in TEXTS}


def run_all(batch: BatchEngine, requests: list[Request]) -> dict[tuple[str, int], Result]:
    out: dict[tuple[str, int], Result] = {}
    for r in batch.run(requests):
        assert (r.id, r.index) not in out
        out[(r.id, r.index)] = r
    return out


@pytest.mark.parametrize("parallel", [4, 1])
def test_greedy_batched_equals_single_sequence(engine: Engine, expected: dict[str, list[int]], parallel: int) -> None:
    requests = [Request(str(i), chat(t), GREEDY, prompts.QWEN2_STOP) for i, t in enumerate(TEXTS)]
    with BatchEngine(engine, parallel=parallel, n_ctx=1024) as batch:
        got = run_all(batch, requests)
    assert len(got) == len(TEXTS)  # more requests than slots: slots were refilled
    for i, t in enumerate(TEXTS):
        r = got[(str(i), 0)]
        assert r.ok and r.generation is not None
        gen = r.generation
        assert gen.tokens == expected[t], f"prompt {i} ({t[:30]!r}) differs"
        assert gen.text == engine.detokenize(gen.tokens) or gen.finish_reason == "stop"
        assert gen.prompt_tokens == len(engine.tokenize(chat(t)))


def test_text_and_stop_handling_match_engine(engine: Engine) -> None:
    # a stop string taken from the middle of each unstopped reply (it starts and ends inside tokens,
    # so it must be found in the text): the batch cuts there, as the single engine does
    texts = TEXTS[:6]
    full = [engine.generate(chat(t), GREEDY, prompts.QWEN2_STOP).text for t in texts]
    stops = [(*prompts.QWEN2_STOP, f[len(f) // 3: len(f) // 3 + 3]) for f in full]
    assert all(len(s[-1]) == 3 for s in stops)
    want = [engine.generate(chat(t), GREEDY, stop) for t, stop in zip(texts, stops)]
    with BatchEngine(engine, parallel=3, n_ctx=512) as batch:
        got = run_all(batch, [Request(str(i), chat(t), GREEDY, stop) for i, (t, stop) in enumerate(zip(texts, stops))])
    for i, w in enumerate(want):
        g = got[(str(i), 0)].generation
        assert g is not None
        assert g.text == full[i][: full[i].find(stops[i][-1])] and g.finish_reason == "stop"
        assert (g.text, g.tokens, g.finish_reason) == (w.text, w.tokens, w.finish_reason)


@pytest.mark.parametrize("parallel", [6, 4])
def test_seeded_samples_fork_the_prompt_and_are_reproducible(engine: Engine, parallel: int) -> None:
    reqs = [Request("a", chat(TEXTS[0]), SEEDED, prompts.QWEN2_STOP, n=3),
            Request("b", chat(TEXTS[1]), SEEDED, prompts.QWEN2_STOP, n=3)]
    # parallel 6: every sample forks from the freshly prefilled prompt (llama_memory_seq_cp);
    # parallel 4: b's last two samples start later from a sibling's KV (prompt's last token re-decoded)
    with BatchEngine(engine, parallel=parallel, n_ctx=512) as batch:
        first = run_all(batch, reqs)
        second = run_all(batch, reqs)
    assert sorted(first) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert all(r.ok for r in first.values())
    tokens = {k: r.generation.tokens for k, r in first.items()}
    assert tokens == {k: r.generation.tokens for k, r in second.items()}
    assert len({tuple(tokens[("a", k)]) for k in range(3)}) == 3
    if parallel == 6:
        # sample k is seeded seed + k, like tasks._sample: the same as the single-sequence engine's.
        # (Late-started samples re-decode the prompt's last token alone: reproducible, but the logits
        # may differ from a prefill's by float rounding, ~1e-5, so they are not compared here.)
        for rid, text in (("a", TEXTS[0]), ("b", TEXTS[1])):
            for k in range(3):
                single = engine.generate(chat(text), replace(SEEDED, seed=SEEDED.seed + k), prompts.QWEN2_STOP)
                assert tokens[(rid, k)] == single.tokens, (rid, k)


def test_too_long_prompt_is_an_error_result_and_the_rest_complete(engine: Engine) -> None:
    reqs = [Request("ok1", chat(TEXTS[2]), GREEDY, prompts.QWEN2_STOP),
            Request("long", chat("word " * 400), GREEDY, prompts.QWEN2_STOP, n=2),
            Request("empty", "", GREEDY),
            Request("ok2", chat(TEXTS[3]), GREEDY, prompts.QWEN2_STOP)]
    with BatchEngine(engine, parallel=2, n_ctx=256) as batch:
        got = run_all(batch, reqs)
    assert got[("long", 0)].generation is None and "exceeds the per-sequence context of 256" in got[("long", 0)].error
    assert not got[("long", 1)].ok
    assert not got[("empty", 0)].ok
    for rid, t in (("ok1", TEXTS[2]), ("ok2", TEXTS[3])):
        assert got[(rid, 0)].ok and got[(rid, 0)].generation.tokens == engine.generate(chat(t), GREEDY, prompts.QWEN2_STOP).tokens


def test_requests_are_pulled_lazily(engine: Engine) -> None:
    pulled = []

    def gen():
        for i in range(10):
            pulled.append(i)
            yield Request(str(i), chat(TEXTS[i]), SamplingParams(temperature=0.0, max_tokens=4))

    with BatchEngine(engine, parallel=2, n_ctx=256) as batch:
        it = batch.run(gen())
        next(it)
        assert len(pulled) <= 3  # two slots filled, at most one refill before the first result
        rest = list(it)
    assert len(rest) == 9 and len(pulled) == 10


def test_batch_engine_loads_its_own_model(converted) -> None:
    path = converted("tied", "Q8_0")
    opts = EngineOptions(threads=1, kv_f32=True)
    with Engine(path, opts) as single:
        want = single.generate(chat(TEXTS[0]), GREEDY, prompts.QWEN2_STOP).tokens
    with BatchEngine(path, opts, parallel=2, n_ctx=256) as batch:
        got = list(batch.run([Request("x", chat(TEXTS[0]), GREEDY, prompts.QWEN2_STOP)]))
    assert [r.generation.tokens for r in got] == [want]


# --- shared prefixes ---------------------------------------------------------------------------------

SYSTEM = ("You rewrite instructions so that an AI assistant answers them in more detail and more truthfully. "
          "Keep the user's intent, language and all given facts; make the request specific. ") * 3


def system_chat(text: str) -> str:
    return prompts.qwen2_chatml([{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])


def test_a_shared_prefix_is_decoded_once_and_changes_nothing(engine: Engine) -> None:
    """Requests that share a long system turn: the prefix's KV is decoded once and copied, and the
    greedy tokens are those of decoding every prompt whole, alone (F32 KV)."""
    texts = TEXTS[:8]
    want = {t: engine.generate(system_chat(t), GREEDY, prompts.QWEN2_STOP).tokens for t in texts}
    n_system = len(engine.tokenize(system_chat("")[: system_chat("").index("<|im_start|>user")]))
    for share in (True, False):
        with BatchEngine(engine, parallel=3, n_ctx=1024, share_prefix=share) as batch:
            got = run_all(batch, [Request(str(i), system_chat(t), GREEDY, prompts.QWEN2_STOP) for i, t in enumerate(texts)])
            stats = batch.prefix.stats
        for i, t in enumerate(texts):
            assert got[(str(i), 0)].generation.tokens == want[t], (share, t)
        total = sum(len(engine.tokenize(system_chat(t))) for t in texts)
        if share:
            # the first three start together: their common system turn is decoded once, into the
            # holder, and every request takes the system turn (and more) from it
            cached = [got[(str(i), 0)].generation.stats["cached_prompt_tokens"] for i in range(len(texts))]
            assert min(cached) >= n_system and stats.reused == sum(cached)
            assert stats.decoded <= total - (len(texts) - 1) * n_system  # the system turn once, not 8 times
        else:
            assert stats.reused == 0 and stats.decoded == total


def test_a_new_system_prompt_that_starts_like_the_old_one_is_cached_in_its_place(engine: Engine) -> None:
    """A server's next client: its system prompt shares only a first few words with the cached one,
    so the holder takes the new prompt, and that client's second request reuses all of it."""
    def chat(team: int, text: str) -> str:
        return prompts.qwen2_chatml([{"role": "system", "content": f"You are the writing assistant of the team number {team}. " + SYSTEM},
                                     {"role": "user", "content": text}])

    n_system = len(engine.tokenize(chat(2, "")[: chat(2, "").index("<|im_start|>user")]))
    with BatchEngine(engine, parallel=2, n_ctx=1024) as batch:
        cached = []
        for team, text in ((1, TEXTS[0]), (2, TEXTS[1]), (2, TEXTS[2])):
            [r] = run_all(batch, [Request(text, chat(team, text), GREEDY, prompts.QWEN2_STOP)]).values()
            cached.append(r.generation.stats["cached_prompt_tokens"])
    # team 2's first request: only "<|im_start|>system\nYou are the writing assistant of the team number" in common,
    # enough to be taken from the holder (at least MIN_SHARE tokens), far from the whole system turn
    assert MIN_SHARE <= cached[1] < n_system // 4
    assert cached[2] >= n_system  # team 2's second request: its whole system turn comes from the holder


def test_the_single_engine_reuses_the_prompt_it_decoded_last(converted) -> None:
    path = converted("tied", "F32")
    opts = EngineOptions(threads=1, n_ctx=1024, kv_f32=True)
    with Engine(path, opts) as warm, Engine(path, opts) as cold:
        for text in ("a poem about rain", "a poem about snow", "a poem about snow"):
            cold.forget()
            want = cold.generate(system_chat(text), GREEDY, prompts.QWEN2_STOP)
            got = warm.generate(system_chat(text), GREEDY, prompts.QWEN2_STOP)
            assert got.tokens == want.tokens and want.stats["cached_prompt_tokens"] == 0
        n = len(warm.tokenize(system_chat("a poem about snow")))
        assert got.stats["cached_prompt_tokens"] == n  # the same prompt again: nothing decoded, same tokens
