"""Sampling: the settings of one sample, its seed, llama.cpp's native sampler chain for them, and
``pick``, which draws a token with that chain without paying for the whole vocabulary each time.

Sampling is llama.cpp's own (``llama_sampler_chain``), so that a sample is exactly what llama.cpp
would draw. Sample k of an input uses seed + k, whether it is drawn alone, forked from one prefill
or sent to a server.

``llama_sampler_sample`` builds a candidate array of the whole vocabulary (152k entries for Qwen2)
for every token of every sequence: about 1 ms on a CPU core, as much as a decode step of a small
model. ``pick`` gives the same token for less (``Shortcut``): greedy is the first largest logit
(``np.argmax``, as llama.cpp's greedy sampler picks); a chain that starts with top-k is applied to
the few logits that can be among the top k (``top_candidates``: one pass over the row), so the
chain's top-k, top-p, min-p, temperature and seeded draw run on the same k tokens in the same
order with the same random state as before. A grammar, a repeat penalty, no top-k, or equal logits
among the top k (``tied``) keep llama.cpp's full-vocabulary ``llama_sampler_sample``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import llama_cpp as L
import numpy as np

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


# --- picking a token ---------------------------------------------------------------------------------

GREEDY = 0  # Shortcut: the first largest logit
FULL = -1  # Shortcut: llama.cpp's llama_sampler_sample over the whole vocabulary
GROUPS = 2048  # columns whose maxima bound the top-k threshold (see top_candidates)
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data, 12 bytes
assert TOKEN_DATA.itemsize == ctypes.sizeof(L.llama_token_data)


def shortcut(p: SamplingParams) -> int:
    """How ``pick`` draws for ``p``: GREEDY, k > 0 (the chain on the top-k candidates only: the
    chain's first sampler is top-k), or FULL (a grammar or repeat penalty sees every token and keeps
    state; without top-k, top-p needs the whole distribution)."""
    if p.grammar or (p.repeat_penalty and p.repeat_penalty != 1.0):
        return FULL
    if p.temperature <= 0:
        return GREEDY
    return p.top_k if p.top_k > 0 else FULL


def logits_row(ctx: object, idx: int, n_vocab: int) -> np.ndarray:
    """The logits of output ``idx`` of the last decode, as a float32 view (no copy: read it before
    the next decode)."""
    ptr = L.llama_get_logits_ith(ctx, idx)
    if not ptr:
        raise ValueError(f"no logits for output {idx} of the last decode")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


def top_candidates(row: np.ndarray, k: int) -> np.ndarray | None:
    """The ids (ascending) of every logit >= a threshold that is at most the k-th largest logit: a
    superset of the top k, ties included; None when no such cut helps (a small vocabulary, a large
    k, or a row holding NaN).

    The row's first ``r * G`` logits are read as a grid of r rows by G columns; the threshold is the
    k-th largest of the G column maxima: k distinct columns each hold a logit at least that large,
    so at least k logits reach it, and only the columns whose maximum reaches it are searched (about
    k of them: one vectorised pass over the row, not a sort)."""
    n = row.size
    groups = GROUPS if n >= 8 * GROUPS else n // 8
    if groups < 4 * k:
        return None
    r = n // groups
    whole = r * groups
    grid = row[:whole].reshape(r, groups)
    maxima = grid.max(axis=0)
    threshold = np.partition(maxima, groups - k)[groups - k]
    if np.isnan(threshold):
        return None
    cols = np.flatnonzero(maxima >= threshold)
    rows, at = np.nonzero(grid[:, cols] >= threshold)
    ids = rows * groups + cols[at]  # ascending: np.nonzero walks row by row
    tail = np.flatnonzero(row[whole:] >= threshold)
    if tail.size:
        ids = np.concatenate((ids, tail + whole))
    return ids if ids.size >= k else None


def apply_chain(chain: object, row: np.ndarray, ids: np.ndarray) -> int:
    """The token llama.cpp's ``chain`` draws from candidates ``ids`` of ``row`` (and accepts, as
    llama_sampler_sample does)."""
    data = np.empty(ids.size, TOKEN_DATA)
    data["id"], data["logit"], data["p"] = ids, row[ids], 0.0
    cur = L.llama_token_data_array(data.ctypes.data_as(L.llama_token_data_p), ids.size, -1, False)
    L.llama_sampler_apply(chain, ctypes.byref(cur))
    if not 0 <= cur.selected < cur.size:
        raise RuntimeError("the sampler chain selected no token")
    token = int(cur.data[cur.selected].id)
    L.llama_sampler_accept(chain, token)
    return token


def pick(chain: object, how: int, ctx: object, idx: int, n_vocab: int) -> int:
    """The next token from output ``idx`` of the last decode: what ``llama_sampler_sample(chain, ctx,
    idx)`` gives, drawn the ``how`` (``shortcut``) way."""
    if how == FULL:
        return L.llama_sampler_sample(chain, ctx, idx)
    row = logits_row(ctx, idx, n_vocab)
    if how == GREEDY:
        return int(row.argmax())
    ids = top_candidates(row, how)
    if ids is None or tied(row[ids], how):
        return L.llama_sampler_sample(chain, ctx, idx)
    return apply_chain(chain, row, ids)


def tied(values: np.ndarray, k: int) -> bool:
    """Whether two of the k largest ``values`` are equal, or the k-th is equal to the next: which of
    tied tokens llama.cpp's top-k keeps, and in which order, depends on where they sit in the array
    it sorts, so such a row is left to llama.cpp's whole-vocabulary sample (exact float ties are
    rare in real logits)."""
    top = np.partition(values, values.size - k)[values.size - k:]
    return np.unique(top).size < k or int(np.count_nonzero(values >= top.min())) > k
