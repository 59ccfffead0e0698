"""Diversity and length figures for sources vs new texts (text only; embeddings come from the caller).

- distinct-n: distinct word n-grams / all word n-grams (Li et al., 2016), each CJK character a word;
- mean pairwise cosine similarity of embeddings (lower = more varied);
- ROUGE-L of each new text to its nearest neighbour among all other texts (sources and new),
  the measure Self-Instruct plots; a new text at or above 0.7 counts as a near duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from localaug.augment.filters import DEFAULT_ROUGE_L
from localaug.family.text import rouge_l, tokens

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


def nearest_rouge(new: Sequence[str], others: Sequence[str], seed: int) -> list[float]:
    """For each new text, the highest ROUGE-L against the other texts (itself excluded: ``others``
    may hold the new texts themselves, as the same objects); past MAX_NEIGHBOURS others, each new
    text meets a sample of them drawn from one generator seeded with ``seed``."""
    rng = random.Random(seed)
    toks = {t: tokens(t) for t in {*new, *others}}
    out = []
    for text in new:
        # one occurrence of this very object is the text itself; another one is a duplicate (equal
        # strings may be one object: one-character and empty strings, literals)
        candidates = list(others)
        mine = next((i for i, o in enumerate(candidates) if o is text), None)
        if mine is not None:
            del candidates[mine]
        if len(candidates) > MAX_NEIGHBOURS:
            candidates = rng.sample(candidates, MAX_NEIGHBOURS)
        out.append(max((rouge_l(toks[text], toks[o]) for o in candidates), default=0.0))
    return out


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
