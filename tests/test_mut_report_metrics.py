"""The report's diversity figures (localaug/report/metrics.py), pinned with values computed by hand
and against reference formulas written here: distinct-n, mean pairwise cosine, nearest-neighbour
ROUGE-L and the summary table."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.core.files import dumps_strict
from localaug.report import metrics
from localaug.report.metrics import distinct_n, mean_pairwise_cosine, nearest_rouge, summary

PROPS = settings(max_examples=120, deadline=None, derandomize=True)


# --- references written here ------------------------------------------------------------------------


def ref_lcs(a: list[str], b: list[str]) -> int:
    """The textbook LCS table."""
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            t[i][j] = t[i - 1][j - 1] + 1 if x == y else max(t[i - 1][j], t[i][j - 1])
    return t[-1][-1]


def ref_rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over whitespace words (the texts here are lower-case ASCII words)."""
    wa, wb = a.split(), b.split()
    lcs = ref_lcs(wa, wb) if wa and wb else 0
    return 0.0 if lcs == 0 else 2 * lcs / (len(wa) + len(wb))  # F1 = 2PR/(P+R) = 2 lcs / (|a| + |b|)


def ref_distinct(texts: list[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


WORDS = st.sampled_from(["a", "b", "c", "sea", "blue", "tea"])
TEXTS = st.lists(st.lists(WORDS, max_size=7).map(" ".join), max_size=8)


# --- distinct-n -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "n", "expected"), [
    (["a b a b"], 1, 2 / 4),
    (["a b a b"], 2, 2 / 3),           # (a b) (b a) (a b)
    (["a b", "b a"], 2, 1.0),          # n-grams stay inside a text: no (b b)
    (["a b", "a b"], 2, 1 / 2),
    (["The cat", "the CAT!"], 1, 2 / 4),  # case and punctuation do not make words differ
    (["我爱你我"], 1, 3 / 4),            # each CJK character a word
    (["我爱你我"], 2, 3 / 3),
    (["東京は晴れ"], 1, 5 / 5),
    (["a b c"], 3, 1.0),
    (["a"], 2, 0.0),                   # shorter than n: no n-gram at all
    (["a", "b c"], 2, 1.0),            # only the second text has a bigram
    (["", "  "], 1, 0.0),
    ([], 1, 0.0),
    ([], 2, 0.0),
])
def test_distinct_n_by_hand(texts, n, expected):
    assert distinct_n(texts, n) == expected


@PROPS
@given(TEXTS, st.integers(1, 3))
def test_distinct_n_is_distinct_over_all_word_ngrams(texts, n):
    assert distinct_n(texts, n) == pytest.approx(ref_distinct(texts, n), abs=1e-12)


# --- mean pairwise cosine -----------------------------------------------------------------------------


def unit(*rows: list[float]) -> np.ndarray:
    v = np.array(rows, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize(("vectors", "expected"), [
    (unit([1, 0], [0, 1]), 0.0),
    (unit([1, 0], [1, 0]), 1.0),
    (unit([1, 0], [-1, 0]), -1.0),
    (unit([1, 0], [1, 0], [0, 1]), 1 / 3),      # pairs: 1, 0, 0
    (unit([1, 0], [1, 1]), math.sqrt(0.5)),
    (unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]), (0 + 0 + math.sqrt(0.5) + 0 + math.sqrt(0.5) + 0) / 6),
])
def test_mean_pairwise_cosine_by_hand(vectors, expected):
    assert mean_pairwise_cosine(vectors) == pytest.approx(expected, abs=1e-12)
    assert mean_pairwise_cosine(vectors.astype(np.float32)) == pytest.approx(expected, abs=1e-6)


def test_mean_pairwise_cosine_of_fewer_than_two_is_undefined():
    assert math.isnan(mean_pairwise_cosine(unit([1, 0])))
    assert math.isnan(mean_pairwise_cosine(np.zeros((0, 4))))
    assert isinstance(mean_pairwise_cosine(unit([1, 0], [0, 1])), float)


@PROPS
@given(st.integers(2, 9), st.integers(1, 6), st.integers(0, 2 ** 32 - 1))
def test_mean_pairwise_cosine_is_the_mean_over_distinct_pairs(n, dim, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pairs = [float(v[i] @ v[j]) for i, j in itertools.combinations(range(n), 2)]
    assert mean_pairwise_cosine(v) == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)


# --- nearest-neighbour ROUGE-L ------------------------------------------------------------------------


def test_nearest_rouge_by_hand():
    new = ["a b c", "x y"]
    others = ["a x c d", "q", *new]
    # "a b c" vs "a x c d": LCS a c = 2, F1 = 2*2/(3+4) = 4/7; vs "x y": 0; itself left out
    # "x y" vs "a x c d": LCS x = 1, F1 = 2/6; vs "a b c": 0
    assert nearest_rouge(new, others, 0) == pytest.approx([4 / 7, 1 / 3], abs=1e-12)


def test_nearest_rouge_of_cjk_counts_characters():
    new = ["我爱北京", "晴れ"]
    others = ["我爱上海", *new]
    # 我爱北京 / 我爱上海: LCS 我爱 = 2 of 4 and 4: 0.5; 晴れ shares nothing with either
    assert nearest_rouge(new, others, 0) == [0.5, 0.0]


def test_a_duplicate_is_a_neighbour_even_as_the_same_object():
    text = "a"  # one-character strings are one object in Python, as equal literals are
    assert nearest_rouge([text, text], [text, text], 0) == [1.0, 1.0]
    assert nearest_rouge(["a b"], ["a b"], 0) == [0.0]  # itself alone: no neighbour
    assert nearest_rouge(["a b"], ["a b".upper().lower()], 0) == [1.0]  # an equal text, another object
    assert nearest_rouge(["a b", "c"], [], 0) == [0.0, 0.0]
    assert nearest_rouge([], ["a"], 0) == []


def test_nearest_rouge_compares_at_most_400_sampled_neighbours_with_a_fixed_seed():
    assert metrics.MAX_NEIGHBOURS == 400
    text = "w0 w1 w2 w3"
    fillers = [f"f{i} g{i}" for i in range(400)]
    match = "w0 w1 w2 w3 w4 w5"  # F1 = 8/10
    # 400 other texts: all compared, the match found wherever it stands
    for pos in (0, 200, 399):
        others = [*fillers[:399]]
        others.insert(pos, match)
        assert nearest_rouge([text], [text, *others], 0) == [pytest.approx(0.8)]
    # 401 other texts: the 400 that random.Random(seed).sample keeps (the match is left out by 1 seed in 401)
    others = [*fillers, match]
    dropped = [s for s in range(3000) if match not in random.Random(s).sample(others, 400)][:2]
    kept = [s for s in range(3000) if s not in dropped][:3]
    assert len(dropped) == 2
    for s in dropped:
        assert nearest_rouge([text], [text, *others], seed=s) == [0.0]
        assert nearest_rouge([text], [text, *others[:-2], match], seed=s) == [pytest.approx(0.8)]  # 400: all
    for s in kept:
        assert nearest_rouge([text], [text, *others], seed=s) == [pytest.approx(0.8)]


def test_exactly_400_others_are_all_compared_and_draw_nothing_from_the_generator():
    text, match = "w0 w1 w2 w3", "w0 w1 w2 w3 w4 w5"  # F1 = 8/10
    inside = "p q"  # one of the others: 400 others but itself
    others = [inside, *(f"f{i} g{i}" for i in range(399)), match]
    assert len(others) == 401
    # ``text`` is not among the others: 401 of them, sampled; the generator is fresh for it only if
    # ``inside`` (exactly 400 others) drew nothing
    seeds = [s for s in range(3000) if match not in random.Random(s).sample(others, 400)][:2]
    for s in seeds:
        assert nearest_rouge([inside, text], others, s) == [0.0, 0.0]
        assert nearest_rouge([text], others, s) == [0.0]


def test_each_new_text_draws_its_own_sample_from_one_seeded_generator():
    texts = [f"w{i} v{i}" for i in range(3)]
    fillers = [f"f{i} g{i}" for i in range(399)]
    matches = [t + " z" for t in texts]  # F1 = 4/5 each
    others = [*texts, *fillers, *matches]  # 401 candidates for each new text (itself out)
    rng = random.Random(5)
    expected = []
    for t, m in zip(texts, matches):
        kept = rng.sample([o for o in others if o is not t], 400)
        expected.append(0.8 if m in kept else 0.0)
    assert nearest_rouge(texts, others, seed=5) == pytest.approx(expected)


@PROPS
@given(TEXTS, TEXTS, st.data())
def test_nearest_rouge_is_the_best_f1_over_the_others_but_itself(sources, new, data):
    others = [*sources, *new]
    got = nearest_rouge(new, others, seed=data.draw(st.integers(0, 5)))
    for text, value in zip(new, got, strict=True):
        rest = list(others)
        rest.remove(text)  # one occurrence of an equal text: itself
        assert value == pytest.approx(max((ref_rouge_l(text, o) for o in rest), default=0.0), abs=1e-12)


# --- the summary table ---------------------------------------------------------------------------------


def test_the_summary_table_by_hand():
    sources = ["a b", "c d e"]
    outputs = ["a b a", "x", "我爱"]
    src = unit([1, 0], [0, 1])
    out = unit([1, 0], [1, 0], [0, 1])
    table = summary(sources, outputs, src, out, [0.7, 0.69, 1.0, 0.2])
    assert table == {
        "sources": {"texts": 2.0, "distinct-1": 5 / 5, "distinct-2": 3 / 3, "mean pairwise cosine": 0.0,
                    "mean characters": (3 + 5) / 2},
        "new": {"texts": 3.0, "distinct-1": 5 / 6, "distinct-2": 3 / 3, "mean pairwise cosine": pytest.approx(1 / 3),
                "mean characters": (5 + 1 + 2) / 3, "near-duplicate share": 2 / 4},  # ROUGE-L >= 0.7
    }
    assert list(table) == ["sources", "new"]
    assert list(table["new"]) == ["texts", "distinct-1", "distinct-2", "mean pairwise cosine", "mean characters",
                                  "near-duplicate share"]


def test_the_summary_of_nothing_and_of_one_text_has_no_nan_but_the_undefined_cosine():
    empty = summary([], [], None, None, [])
    assert empty == {
        "sources": {"texts": 0.0, "distinct-1": 0.0, "distinct-2": 0.0, "mean pairwise cosine": pytest.approx(math.nan, nan_ok=True),
                    "mean characters": 0.0},
        "new": {"texts": 0.0, "distinct-1": 0.0, "distinct-2": 0.0, "mean pairwise cosine": pytest.approx(math.nan, nan_ok=True),
                "mean characters": 0.0, "near-duplicate share": 0.0},
    }
    one = summary(["only source"], ["只有一个"], unit([0.6, 0.8]), np.zeros((0, 2)), [0.0])
    assert math.isnan(one["sources"]["mean pairwise cosine"]) and math.isnan(one["new"]["mean pairwise cosine"])
    assert one["sources"]["distinct-2"] == 1.0 and one["new"]["distinct-1"] == 1.0 and one["new"]["mean characters"] == 4.0
    assert one["new"]["near-duplicate share"] == 0.0
    for table in (empty, one):
        others = [v for side in table.values() for k, v in side.items() if k != "mean pairwise cosine"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in others)
        # written as strict JSON: the undefined cosine is null, never a bare NaN
        text = dumps_strict(table)
        parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
        assert parsed["sources"]["mean pairwise cosine"] is None and parsed["new"]["mean pairwise cosine"] is None


def test_two_vectors_make_a_cosine_and_none_or_one_do_not():
    two = summary(["a", "b"], ["c", "d"], unit([1, 0], [0, 1]), unit([1, 0], [1, 0]), [])
    assert two["sources"]["mean pairwise cosine"] == 0.0 and two["new"]["mean pairwise cosine"] == pytest.approx(1.0)
    assert two["new"]["near-duplicate share"] == 0.0
