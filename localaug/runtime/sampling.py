"""Sampling: the settings of one sample, its seed, and llama.cpp's native sampler chain for them.

Sampling is llama.cpp's own (``llama_sampler_chain``), so that a sample is exactly what llama.cpp
would draw and nothing is done per token in Python that llama.cpp can do. Sample k of an input uses
seed + k, whether it is drawn alone, forked from one prefill or sent to a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import llama_cpp as L

from localaug.core.errors import UsageError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 50
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None  # None: a random seed
    grammar: str | None = None  # a GBNF grammar (root rule "root") the reply must follow, e.g. JSON


def sample_seed(base: int | None, k: int) -> int | None:
    """Sample k of an input uses seed + k (None stays random): the same samples whether they are
    drawn one by one or forked from one prefill."""
    return None if base is None else base + k


REPEAT_LAST_N = 64  # tokens a repeat penalty looks back over (llama.cpp's default)


def grammar_sampler(vocab: object, grammar: str):
    """llama.cpp's grammar sampler for a GBNF text; a UsageError when llama.cpp cannot parse it."""
    try:
        sampler = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    except UnicodeEncodeError:
        sampler = None
    if not sampler:
        raise UsageError("the grammar (response_format) could not be parsed by llama.cpp: simplify the JSON schema")
    return sampler


def make_sampler(p: SamplingParams, n_vocab: int, vocab: object = None):
    """llama.cpp's native sampler chain for ``p`` (the caller frees it with ``llama_sampler_free``);
    ``vocab`` is needed when ``p.grammar`` is set."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = lambda s: L.llama_sampler_chain_add(chain, s)  # noqa: E731
    if p.grammar:
        try:
            add(grammar_sampler(vocab, p.grammar))  # first: every later sampler sees only allowed tokens
        except BaseException:
            L.llama_sampler_free(chain)
            raise
    if p.repeat_penalty and p.repeat_penalty != 1.0:
        add(L.llama_sampler_init_penalties(n_vocab, REPEAT_LAST_N, p.repeat_penalty, 0.0, 0.0))
    if p.temperature <= 0:
        add(L.llama_sampler_init_greedy())
        return chain
    if p.top_k > 0:
        add(L.llama_sampler_init_top_k(p.top_k))
    if 0 < p.top_p < 1:
        add(L.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        add(L.llama_sampler_init_min_p(p.min_p, 1))
    add(L.llama_sampler_init_temp(p.temperature))
    seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(4), "little")
    add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
