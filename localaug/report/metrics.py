"""Diversity and length figures for sources vs new texts (text only; embeddings come from the caller).

- distinct-n: distinct word n-grams / all word n-grams (Li et al., 2016), each CJK character a word;
- mean pairwise cosine similarity of embeddings (lower = more varied);
- ROUGE-L of each new text to its nearest neighbour among all other texts (sources and new),
  the measure Self-Instruct plots; a new text at or above 0.7 counts as a near duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from localaug.augment.filters import DEFAULT_ROUGE_L
from localaug.family.text import tokens

MAX_NEIGHBOURS = 400  # texts each new text is compared with (sampled, fixed seed) for ROUGE-L


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = tokens(t)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of unit vectors."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = vectors.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def nearest_rouge(new: Sequence[str], others: Sequence[str], seed: int, *, threads: int | None = None,
                  progress: Callable[[int], None] | None = None) -> list[float]:
    """For each new text, the highest ROUGE-L against the other texts (itself excluded: ``others``
    may hold the new texts themselves, as the same objects); past MAX_NEIGHBOURS others, each new
    text meets a sample of them drawn from one generator seeded with ``seed``.

    The values are ``family.text.rouge_l``'s, bit for bit: the same tokens (each CJK character one),
    the longest common subsequence counted by rapidfuzz's compiled LCS on ``threads`` threads (every
    distinct token one character, so an LCS of characters is one of tokens), then the same F1
    formula in float64. ``progress(k)`` after each chunk, with the new texts done."""
    rng = random.Random(seed)
    coded = _coded([*new, *others])
    first: dict[int, int] = {}  # id of an object in others -> its first place (the text itself)
    for i, o in enumerate(others):
        first.setdefault(id(o), i)
    n, out = len(others), []
    for start in range(0, len(new), _CHUNK):
        chunk = new[start:start + _CHUNK]
        picks: list[np.ndarray] = []
        for text in chunk:
            mine = first.get(id(text))
            m = n - (mine is not None)
            # sampling positions of the list without the text draws what sampling the list draws
            pick = np.asarray(rng.sample(range(m), MAX_NEIGHBOURS) if m > MAX_NEIGHBOURS else range(m), dtype=np.int64)
            if mine is not None:
                pick += pick >= mine
            picks.append(pick)
        sizes = [len(p) for p in picks]
        queries = [coded[t] for t, k in zip(chunk, sizes) for _ in range(k)]
        choices = [coded[others[j]] for p in picks for j in p.tolist()]
        out += _best(queries, choices, sizes, threads)
        if progress:
            progress(start + len(chunk))
    return out


_CHUNK = 256  # new texts per call into rapidfuzz (a chunk holds up to 256 * MAX_NEIGHBOURS pairs)
_SURROGATES = 0xD800  # code points 0xD800..0xDFFF are not characters: token ids skip them
_MAX_CHARS = 0x110000 - 0x800  # characters Unicode has, surrogates left out


def _coded(texts: Sequence[str]) -> dict[str, str | list[int]]:
    """Each text as a string of one character per token (the same token, the same character), or a
    list of token ids when there are more distinct tokens than Unicode has characters."""
    ids: dict[str, int] = {}
    seqs = {t: [ids.setdefault(w, len(ids)) for w in tokens(t)] for t in dict.fromkeys(texts)}
    if len(ids) > _MAX_CHARS:
        return dict(seqs)
    return {t: "".join(chr(i if i < _SURROGATES else i + 0x800) for i in seq) for t, seq in seqs.items()}


def _best(queries: list, choices: list, sizes: list[int], threads: int | None) -> list[float]:
    """Per new text (``sizes[k]`` consecutive pairs each), the highest ROUGE-L F1 of its pairs."""
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cpdist

    if not queries:
        return [0.0] * len(sizes)
    lcs = cpdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int64, workers=threads or -1).astype(np.float64)
    la = np.fromiter(map(len, queries), np.float64, len(queries))
    lb = np.fromiter(map(len, choices), np.float64, len(choices))
    with np.errstate(divide="ignore", invalid="ignore"):
        p, r = lcs / lb, lcs / la
        f1 = np.where(lcs > 0, 2 * p * r / (p + r), 0.0)  # rouge_l: 0 when either is empty or nothing is shared
    ends = np.cumsum(sizes)
    return [float(f1[e - k:e].max()) if k else 0.0 for k, e in zip(sizes, ends.tolist())]


def summary(sources: Sequence[str], outputs: Sequence[str], src_vecs: np.ndarray | None, out_vecs: np.ndarray | None,
            nn: Sequence[float]) -> dict[str, dict[str, float]]:
    """The diversity table: one column per side."""
    table: dict[str, dict[str, float]] = {}
    for name, texts, vecs in (("sources", sources, src_vecs), ("new", outputs, out_vecs)):
        table[name] = {
            "texts": float(len(texts)),
            "distinct-1": distinct_n(texts, 1),
            "distinct-2": distinct_n(texts, 2),
            "mean pairwise cosine": mean_pairwise_cosine(vecs) if vecs is not None and len(vecs) else float("nan"),
            "mean characters": float(np.mean([len(t) for t in texts])) if texts else 0.0,
        }
    table["new"]["near-duplicate share"] = float(np.mean([v >= DEFAULT_ROUGE_L for v in nn])) if nn else 0.0
    return table
