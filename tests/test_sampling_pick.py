"""``sampling.pick`` draws the token llama.cpp's own ``llama_sampler_sample`` draws.

Greedy is an argmax in numpy and a top-k chain is applied to a preselection of the logits instead of
the whole vocabulary: both must give exactly llama.cpp's token, on every path a token is sampled on
(the single-sequence engine cold, with its KV reused, with the last prompt's logits written back;
the batch engine with the prefix holder filled, kept and replaced, samples forked from one
prefill). The reference is llama.cpp itself, never our own output: a spy samples each step's logits
with a clone of the very chain (same seed, same random state) through ``llama_sampler_sample``
before ``pick`` draws, and a plain llama.cpp decode loop gives whole generations.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp as L
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_runtime import OPTS, greedy, toks

import localaug.runtime.batch as batch_module
import localaug.runtime.engine as engine_module
from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import TokenBatch
from localaug.runtime.sampling import (FULL, GREEDY, GROUPS, SamplingParams, apply_chain, make_sampler, sample_seed,
                                       shortcut,
                                       top_candidates)
import localaug.runtime.sampling as sampling_module

WARM = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.02, max_tokens=6, seed=11)
WIDE = SamplingParams(temperature=1.3, top_k=200, top_p=1.0, max_tokens=6, seed=5)  # k > 128: llama.cpp's bucket sort


# --- the rule ----------------------------------------------------------------------------------------


def test_which_settings_take_which_way() -> None:
    assert shortcut(SamplingParams(temperature=0.0)) == GREEDY
    assert shortcut(SamplingParams(temperature=0.0, top_k=0)) == GREEDY
    assert shortcut(SamplingParams(temperature=0.7, top_k=50)) == 50
    assert shortcut(SamplingParams(temperature=0.7, top_k=0)) == FULL  # top-p over the whole vocabulary
    assert shortcut(SamplingParams(temperature=0.0, repeat_penalty=1.1)) == FULL  # the penalty keeps state
    assert shortcut(SamplingParams(temperature=0.7, top_k=50, repeat_penalty=1.1)) == FULL
    assert shortcut(SamplingParams(temperature=0.0, grammar='root ::= "a"')) == FULL
    assert shortcut(SamplingParams(temperature=0.7, repeat_penalty=1.0, top_k=3)) == 3


# --- the preselection --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=st.integers(8 * GROUPS, 8 * GROUPS + 3000), k=st.integers(1, GROUPS // 4), levels=st.integers(2, 100000),
       seed=st.integers(0, 2**32 - 1))
def test_the_candidates_hold_every_logit_as_large_as_the_kth(n: int, k: int, levels: int, seed: int) -> None:
    """Rows with few distinct values (ties at the cut) and many: the ids are ascending and hold every
    logit >= the k-th largest (computed here by a full sort) and nothing below the threshold."""
    rng = np.random.default_rng(seed)
    row = (rng.integers(0, levels, n) / levels * 20 - 10).astype(np.float32)
    ids = top_candidates(row, k)
    kth = np.sort(row)[::-1][k - 1]
    assert ids is not None
    assert ids.dtype.kind == "i" and (np.diff(ids) > 0).all()
    assert set(np.flatnonzero(row >= kth)) <= set(ids.tolist())
    # and nothing outside: every id kept is at least as large as the smallest kept one, which no
    # id left out reaches
    left_out = np.setdiff1d(np.arange(n), ids)
    assert left_out.size == 0 or row[left_out].max() < row[ids].min()


def test_no_preselection_when_it_would_not_help_or_a_row_is_nan() -> None:
    row = np.arange(8 * GROUPS, dtype=np.float32)
    assert top_candidates(row, GROUPS // 4 + 1) is None  # k too large for the columns
    assert top_candidates(row[: 8 * GROUPS - 8 * 4], 1) is not None  # smaller rows use fewer columns
    assert top_candidates(np.zeros(100, np.float32), 5) is None  # a tiny vocabulary: the whole chain
    nan = row.copy()
    nan[::7] = np.nan
    assert top_candidates(nan, 10) is None
    ids = top_candidates(row, 3)
    assert ids is not None and ids.tolist() == [8 * GROUPS - 3, 8 * GROUPS - 2, 8 * GROUPS - 1]


# --- the distribution --------------------------------------------------------------------------------


def reference_distribution(logits: np.ndarray, k: int, top_p: float, min_p: float, temperature: float) -> dict[int, float]:
    """llama.cpp's chain order worked out by hand: top-k by logit; top-p keeps the shortest head
    whose probability (softmax of the logits, before temperature) reaches p; min-p drops tokens
    under min_p x the largest probability; the draw is the softmax of the logits / temperature."""
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))[:k]
    x = np.array([float(logits[i]) for i in order])
    p = np.exp(x - x.max())
    p /= p.sum()
    keep = int(np.searchsorted(np.cumsum(p), top_p) + 1) if top_p < 1 else len(order)
    order, x, p = order[:keep], x[:keep], p[:keep]
    if min_p > 0:
        mask = p >= min_p * p.max()
        order, x = [o for o, m in zip(order, mask) if m], x[mask]
    q = np.exp((x - x.max()) / temperature)
    return dict(zip(order, (q / q.sum()).tolist()))


def test_top_k_top_p_draws_follow_the_exact_distribution() -> None:
    """A row with 9 strong logits among 16k: the tokens drawn over 3000 seeds are exactly the set
    the chain allows (computed by hand), at frequencies within 4.5 standard errors of its
    probabilities; and each draw is the one llama.cpp's chain makes over the whole row."""
    n, draws = 2 * 8 * GROUPS, 3000
    row = np.full(n, -12.0, np.float32)
    strong = {101: 3.0, 7000: 2.6, 15000: 2.5, 9: 2.0, 12345: 1.7, 4096: 1.2, 333: 0.4, 16383: 0.1, 2048: -1.0}
    for i, v in strong.items():
        row[i] = v
    p = SamplingParams(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05)
    want = reference_distribution(row, 6, 0.9, 0.05, 0.8)
    assert set(want) == {101, 7000, 15000, 9, 12345}  # the hand-worked set: top-p cuts the 6th
    ids = top_candidates(row, shortcut(p))
    assert ids is not None and set(ids.tolist()) == {101, 7000, 15000, 9, 12345, 4096}  # the top 6, no more here
    counts: dict[int, int] = {}
    full = np.arange(n)
    for seed in range(draws):
        chain, twin = (make_sampler(replace(p, seed=seed), n) for _ in range(2))
        try:
            tok = apply_chain(chain, row, ids)
            assert tok == apply_chain(twin, row, full)  # the whole row through llama.cpp: the same draw
        finally:
            L.llama_sampler_free(chain)
            L.llama_sampler_free(twin)
        counts[tok] = counts.get(tok, 0) + 1
    assert set(counts) <= set(want)
    for tok, prob in want.items():
        freq = counts.get(tok, 0) / draws
        assert abs(freq - prob) < 4.5 * (prob * (1 - prob) / draws) ** 0.5 + 1e-9, (tok, freq, prob)


# --- against llama.cpp on real logits ----------------------------------------------------------------


@pytest.fixture
def checked_picks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int, int]]]:
    """Every token ``pick`` draws in the engines, next to the one ``llama_sampler_sample`` draws from
    the same logits with a clone of the same chain (the same random state)."""
    seen: list[tuple[int, int, int]] = []
    real = sampling_module.pick

    def spy(chain: object, how: int, ctx: object, idx: int, n_vocab: int) -> int:
        twin = L.llama_sampler_clone(chain)
        try:
            want = L.llama_sampler_sample(twin, ctx, idx)
        finally:
            L.llama_sampler_free(twin)
        got = real(chain, how, ctx, idx, n_vocab)
        seen.append((got, want, how))
        return got

    monkeypatch.setattr(batch_module, "pick", spy)
    monkeypatch.setattr(engine_module, "pick", spy)
    yield seen  # type: ignore[misc]
    assert seen, "nothing was sampled"
    assert [(g, h) for g, w, h in seen if g != w] == []
    assert {h for _, _, h in seen} >= {GREEDY}


def every_path(engine: Engine, samplings: list[SamplingParams]) -> None:
    """Generate on each path a token is sampled on, with each of ``samplings``."""
    ids = lambda seed, n: [t % engine.n_vocab for t in toks(seed, n)]  # noqa: E731
    P = ids(40, 14)
    prompts = [P + ids(41, 3), P + ids(42, 5), ids(43, 7)]
    for s in samplings:
        engine.forget()
        engine.generate(prompts[0], s)  # cold
        engine.generate(prompts[0], s)  # the same prompt: its logits written back
        engine.generate(prompts[1], s)  # the shared beginning's KV reused
        with BatchEngine(engine, parallel=3, n_ctx=48) as batch:
            list(batch.run([Request(str(i), p, s) for i, p in enumerate(prompts)]))  # holder filled together
            list(batch.run([Request("kept", P + ids(44, 4), s, n=2)]))  # kept; two samples forked
            list(batch.run([Request("new", ids(45, 16), s)]))  # replaced


def test_tiny_model_every_path_draws_llama_cpps_token(converted, checked_picks) -> None:
    with Engine(converted("tied", "F32"), OPTS) as engine:
        every_path(engine, [greedy(4), WARM, WIDE])
    assert {h for _, _, h in checked_picks} == {GREEDY, 40, 200}


def test_smollm2_every_path_draws_llama_cpps_token(smollm2: Path, checked_picks) -> None:
    with Engine(smollm2, EngineOptions(threads=1, n_ctx=256)) as engine:
        every_path(engine, [greedy(4), WARM])
    assert {h for _, _, h in checked_picks} == {GREEDY, 40}


def llama_cpp_generate(engine: Engine, prompt: list[int], p: SamplingParams) -> list[int]:
    """Tokens of a plain llama.cpp loop in a context of its own: decode, ``llama_sampler_sample``
    with the chain of ``p``, decode that token, until max_tokens (end-of-generation included)."""
    ctx = engine.new_context(64)
    chain = make_sampler(p, engine.n_vocab)
    out: list[int] = []
    try:
        with TokenBatch(64) as b:
            b.add(prompt, 0, 0, "last")
            for _ in range(p.max_tokens):
                assert b.decode(ctx) == 0
                tok = L.llama_sampler_sample(chain, ctx, -1)
                out.append(tok)
                b.clear()
                b.add([tok], len(prompt) + len(out) - 1, 0, "last")
    finally:
        L.llama_sampler_free(chain)
        L.llama_free(ctx)
    return out


def test_whole_generations_equal_a_plain_llama_cpp_loop(converted) -> None:
    """The tiny F32 model with an F32 KV cache decodes a sequence alone or batched to the same
    logits, so whole generations (greedy and seeded top-k) are llama.cpp's loop token for token,
    whether generated alone or batched with others, sample k with seed + k."""
    prompts = [toks(60, 6), toks(61, 11), toks(62, 4)]
    samplings = [greedy(5), SamplingParams(temperature=1.2, top_k=30, top_p=0.9, max_tokens=5, seed=3)]
    with Engine(converted("tied", "F32"), OPTS) as engine:
        for s in samplings:
            want = {(str(i), k): llama_cpp_generate(engine, p, replace(s, seed=sample_seed(s.seed, k)))
                    for i, p in enumerate(prompts) for k in range(2)}
            for i, p in enumerate(prompts):
                engine.forget()
                assert engine.generate(p, s, ignore_eog=True).tokens == want[(str(i), 0)]
            with BatchEngine(engine, parallel=2, n_ctx=32) as batch:
                got = {(r.id, r.index): r.generation.tokens
                       for r in batch.run([Request(str(i), p, s, n=2, ignore_eog=True) for i, p in enumerate(prompts)])}
            assert got == want


def test_seeded_samples_do_not_depend_on_batch_size_or_order(converted) -> None:
    """The same seeded requests at 1, 2 and 4 sequences at a time, in two orders: every sample's
    tokens are the same (sample k of a request draws with seed + k, from its own chain)."""
    s = SamplingParams(temperature=1.4, top_k=60, top_p=0.97, max_tokens=6, seed=21)
    requests = [Request(str(i), toks(70 + i, 5 + i), s, n=1 + i % 3, ignore_eog=True) for i in range(5)]
    runs = []
    with Engine(converted("tied", "F32"), OPTS) as engine:
        for parallel, order in [(1, 1), (2, -1), (4, 1), (4, -1)]:
            with BatchEngine(engine, parallel=parallel, n_ctx=32) as batch:
                runs.append({(r.id, r.index): r.generation.tokens for r in batch.run(requests[::order])})
    assert len(runs[0]) == sum(r.n for r in requests)
    assert all(run == runs[0] for run in runs[1:])
    assert len({tuple(t) for t in runs[0].values()}) > 1  # the samples do differ


@pytest.fixture(scope="module")
def written_logits(converted) -> Iterator:
    """write(row) -> (ctx, idx): a context whose last decode's logits are ``row`` (written over the
    real ones, as the engine writes back a kept prompt's logits), for crafted rows llama.cpp then
    samples."""
    with Engine(converted("tied", "F32"), OPTS) as engine:
        ctx = engine.new_context(64)
        try:
            with TokenBatch(8) as b:
                b.add(toks(80, 4), 0, 0, "last")
                assert b.decode(ctx) == 0

            def write(row: np.ndarray) -> tuple[object, int]:
                assert row.dtype == np.float32 and row.size == engine.n_vocab
                ctypes.memmove(L.llama_get_logits_ith(ctx, -1), row.ctypes.data, row.nbytes)
                return ctx, engine.n_vocab

            yield write
        finally:
            L.llama_free(ctx)


@settings(max_examples=60, deadline=None)
@given(levels=st.integers(2, 40), seed=st.integers(0, 2**31), k=st.sampled_from([1, 2, 5, 40, 128, 129, 300]),
       above=st.sampled_from([0, -1, 1, 50]), temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
       top_p=st.sampled_from([1.0, 0.9, 0.5]))
def test_ties_draw_llama_cpps_token(written_logits, levels: int, seed: int, k: int, above: int, temperature: float,
                                    top_p: float) -> None:
    """Rows of few distinct logits (ties everywhere) under k + ``above`` distinct larger ones (0: none;
    -1: k - 1, so the cut falls in the ties): greedy takes the first of the largest, as llama.cpp
    does, and a seeded top-k chain draws llama.cpp's token, draw after draw (the chain's random
    state advancing alike) -- through the preselection when the top k are distinct, through
    llama.cpp's whole row when not."""
    rng = np.random.default_rng(seed)
    row = (rng.integers(0, levels, 151936) - levels).astype(np.float32)
    n_top = 0 if above == 0 else k + above
    if n_top:
        row[rng.choice(row.size, n_top, replace=False)] = 1.0 + rng.permutation(n_top).astype(np.float32) / 8
    ctx, n_vocab = written_logits(row)
    p = SamplingParams(temperature=temperature, top_k=k, top_p=top_p, seed=seed)
    chain = make_sampler(p, n_vocab)
    try:
        for _ in range(3):
            twin = L.llama_sampler_clone(chain)
            want = L.llama_sampler_sample(twin, ctx, -1)
            L.llama_sampler_free(twin)
            assert sampling_module.pick(chain, shortcut(p), ctx, -1, n_vocab) == want
    finally:
        L.llama_sampler_free(chain)
    if temperature == 0:
        assert want == int(np.flatnonzero(row == row.max())[0])
    ids = top_candidates(row, k)
    fast = ids is not None and not sampling_module.tied(row[ids], k)
    assert fast == (above >= 1 and 4 * k <= GROUPS)  # the preselection is taken exactly when the top k are distinct


def test_tied_is_about_the_top_k_and_the_cut() -> None:
    v = np.array([5, 4, 3, 3, 1, 1], np.float32)
    assert not sampling_module.tied(v, 1) and not sampling_module.tied(v, 2)
    assert sampling_module.tied(v, 3)  # the 3rd equals the 4th: which one is kept depends on the sort
    assert sampling_module.tied(v, 4)  # two equal among the top 4
    assert sampling_module.tied(v, 6)  # 1 and 1
    assert sampling_module.tied(v[:5], 5)  # 3 and 3
    assert not sampling_module.tied(np.array([2, 9, 7], np.float32), 3)
