"""Quality filters pinned against independent references: a textbook LCS table for ROUGE-L,
hand-typed CJK-aware tokens, thresholds at exactly the threshold and just below, MinHash
signatures recomputed from their documented formula, LSH banding worked out by hand.

Fast and pure: these guard ``localaug/augment/filters.py`` in ``tools/mutation.py``.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.augment import filters
from localaug.augment.filters import (
    DedupFilter,
    ExactIndex,
    MinHashIndex,
    QualityRules,
    is_refusal,
    jaccard,
    lsh_bands,
    shingles,
)

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)


# --- a textbook reference -----------------------------------------------------------------------


def lcs_table(a: list[str], b: list[str]) -> int:
    """Longest common subsequence, the full (len(a)+1) x (len(b)+1) table."""
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
    return t[len(a)][len(b)]


def rouge_ref(a: list[str], b: list[str]) -> Fraction:
    """ROUGE-L F1 = 2 * LCS / (|a| + |b|), exact (the harmonic mean of LCS/|a| and LCS/|b|)."""
    if not a or not b:
        return Fraction(0)
    return Fraction(2 * lcs_table(a, b), len(a) + len(b))


# --- tokens and ROUGE-L ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("写一首诗 about AI_2!", ["写", "一", "首", "诗", "about", "ai", "2"]),
    ("Ｗｒｉｔｅ　ＡＢＣ。", ["write", "abc"]),  # full-width letters and spaces fold (NFKC)
    ("こんにちは世界", ["こ", "ん", "に", "ち", "は", "世", "界"]),
    ("안녕 하세요", ["안", "녕", "하", "세", "요"]),
    ("  ", []),
])
def test_tokens_split_cjk_characters_and_fold_case(text, expected):
    assert filters.tokens(text) == expected
    assert filters.normalize(text) == " ".join(expected)


WORDS = st.lists(st.sampled_from(["a", "b", "c", "的", "诗", "sea"]), max_size=9)


@SETTINGS
@given(WORDS, WORDS)
def test_rouge_l_is_the_lcs_f_measure(a, b):
    want = rouge_ref(a, b)
    assert filters.rouge_l(a, b) == pytest.approx(float(want), abs=1e-12)
    assert filters.rouge_l(" ".join(a), "".join(b) if all(len(w) == 1 and w >= "\u4e00" for w in b) else " ".join(b)) \
        == pytest.approx(float(want), abs=1e-12)


# --- quality rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"), (" \n\t ", "empty"),
    ("abc", "too-short"), ("  abc  ", "too-short"),  # min_chars 4 counts the stripped text
    ("abcd", None), ("  abcd  ", None),                 # exactly min_chars is kept
    ("写一首诗", None), ("写首诗", "too-short"),
    ("I'm sorry, I can't help with that.", "refusal"),
    ("抱歉，我无法完成。", "refusal"),
])
def test_default_rules(text, expected):
    assert QualityRules().check(text) == expected


def test_length_bounds_at_exactly_the_limit_and_one_past():
    rules = QualityRules(min_chars=5, max_chars=8)
    assert rules.check("a" * 4) == "too-short"
    assert rules.check("a" * 5) is None
    assert rules.check("a" * 8) is None
    assert rules.check(" " + "a" * 8 + " ") is None
    assert rules.check("a" * 9) == "too-long"
    assert QualityRules(max_chars=None).check("a" * 100_000) is None
    # too-short is checked before refusals, too-long before them as well
    assert QualityRules(min_chars=50).check("I'm sorry, I can't help.") == "too-short"
    assert QualityRules(max_chars=10).check("I'm sorry, I can't help.") == "too-long"
    assert QualityRules(refusals=False).check("I'm sorry, I can't help.") is None


def test_check_response_only_judges_emptiness_and_refusals():
    rules = QualityRules(min_chars=50, max_chars=3)
    assert rules.check_response("") == "empty"
    assert rules.check_response("   \n") == "empty"
    assert rules.check_response("4") is None  # short answers are fine
    assert rules.check_response("a long answer " * 10) is None  # the length is the task's
    assert rules.check_response("I'm sorry, but I can't help with that.") == "refusal"
    assert rules.check_response("对不起，我不能回答这个问题。") == "refusal"
    assert QualityRules(refusals=False).check_response("I'm sorry, but I can't help with that.") is None
    assert rules.check_response("Sorry for the wait: here is the answer.") is None


@pytest.mark.parametrize(("text", "refusal"), [
    ("I'm so sorry, but no.", True),
    ("I am really sorry about that", True),
    ("sorry, i can't", True),
    ("My apologies, that is not possible.", True),
    ("I won't generate that.", True),
    ("I'm unable to help with that.", True),
    ("Im not able to provide that.", True),
    ("I am not able to answer.", True),
    ("I’m sorry, but I can’t help with that.", True),  # typographic apostrophes
    ("I can’t assist with this request.", True),
    ("Ｉ’ｍ ｓｏｒｒｙ", True),  # full width (NFKC)
    ("As a language model, I cannot browse.", True),
    ("I'm just an AI.", True),
    ("非常抱歉", True),
    ("不好意思我帮不了", True),
    ("我没有办法提供这些信息", True),
    ("作为一名人工智能，我不能", True),
    ("作为老师，请写一段评语", False),
    ("As an artist, paint a scene.", False),
    ("I cannot believe how tall giraffes are: explain why.", False),
    ("I'm unable to sleep: list ten ways to relax.", False),
    ("Write a story whose hero says “I’m sorry”.", False),
])
def test_refusal_openings(text, refusal):
    assert is_refusal(text) == refusal


# --- the per-input duplicate filter -----------------------------------------------------------------


def test_dedup_reasons_in_order():
    d = DedupFilter(0.7)
    d.add_reference(["Write a poem about the sea.", "写一首关于大海的诗。"])
    assert d.check("") == "empty"
    assert d.check("  \n") == "empty"
    assert d.check("WRITE a poem about the sea") == "echo"
    assert d.check("写一首关于大海的诗") == "echo"
    assert d.check("Name three rivers in Europe.") is None
    assert d.check("name three rivers in europe!") == "duplicate"
    assert d.check("Name three long rivers in Europe.") == "near-duplicate"
    # the exact echo check holds even where the near-duplicate one cannot fire
    exact_only = DedupFilter(1.01)
    exact_only.add_reference(["Write a poem about the sea."])
    assert exact_only.check("write a poem about the sea") == "echo"
    assert exact_only.check("Write a poem about the blue sea.") is None
    assert exact_only.check("write a poem about the BLUE sea") == "duplicate"
    assert exact_only.check("Write a poem about the sea, please.") is None


def test_dedup_threshold_at_exactly_the_threshold_and_just_below():
    base = "a b c d e f g h i j"
    at = "a b c d e f g x y z"        # LCS 7 of 10 and 10: ROUGE-L exactly 0.7
    below = "a b c d e f w x y z"     # LCS 6: 0.6
    assert rouge_ref(base.split(), at.split()) == Fraction(7, 10)
    d = DedupFilter(0.7)
    assert d.check(base) is None
    assert d.check(at) == "near-duplicate"
    assert d.check(below) is None
    ref = DedupFilter(0.7)
    ref.add_reference([base])
    assert ref.check(at) == "echo"
    assert ref.check(below) is None
    half = DedupFilter(0.5)
    assert half.check("a b c d") is None
    assert half.check("a b x y") == "near-duplicate"  # exactly 0.5
    assert half.check("a x y z") is None              # 0.25


TEXTS = st.lists(st.sampled_from(["a", "b", "c", "d", "诗", "海", "!", "A"]), min_size=0, max_size=6).map(" ".join)


@SETTINGS
@given(st.lists(TEXTS, max_size=3), st.lists(TEXTS, max_size=8), st.sampled_from([0.5, 0.7, 0.9]))
def test_dedup_against_a_brute_force_oracle(refs, texts, threshold):
    d = DedupFilter(threshold)
    d.add_reference(refs)
    ref_keys = [(" ".join(filters.tokens(r)), filters.tokens(r)) for r in refs]
    accepted: list[tuple[str, list[str]]] = []
    for text in texts:
        toks = filters.tokens(text)
        key = " ".join(toks)
        if not text.strip():
            want = "empty"
        elif any(k == key for k, _ in ref_keys):
            want = "echo"
        elif any(k == key for k, _ in accepted):
            want = "duplicate"
        elif any(rouge_ref(toks, t) >= Fraction(threshold).limit_denominator(100) for _, t in ref_keys):
            want = "echo"
        elif any(rouge_ref(toks, t) >= Fraction(threshold).limit_denominator(100) for _, t in accepted):
            want = "near-duplicate"
        else:
            want = None
            accepted.append((key, toks))
        assert d.check(text) == want, (refs, texts, text)


# --- across a job: exact index ------------------------------------------------------------------------


def test_exact_index_counts_and_add_false():
    idx = ExactIndex()
    assert len(idx) == 0
    assert idx.check("Name three rivers.", add=False) is None
    assert len(idx) == 0
    assert idx.check("Name three rivers.", add=False) is None  # not remembered
    assert idx.check("Name three rivers.") is None
    assert len(idx) == 1
    assert idx.check("NAME three rivers") == "duplicate"
    assert idx.check("写一首诗") is None
    assert idx.check("写 一 首 诗！") == "duplicate"
    assert len(idx) == 2


# --- shingles, Jaccard, LSH banding ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", set()),
    ("!!", set()),
    ("Hello", {"hello"}),
    ("one two", {"one two"}),
    ("one two three", {"one two three"}),
    ("one two three four", {"one two three", "two three four"}),
    ("a b c d e", {"a b c", "b c d", "c d e"}),
    ("写一首诗", {"写 一 首", "一 首 诗"}),
])
def test_shingles_are_word_trigrams(text, expected):
    assert shingles(text) == expected


def test_shingles_other_k():
    assert shingles("a b c d", k=2) == {"a b", "b c", "c d"}
    assert shingles("a b", k=2) == {"a b"}
    assert shingles("a b c", k=1) == {"a", "b", "c"}


def test_jaccard():
    assert jaccard(set(), set()) == 0.0
    assert jaccard({"a"}, set()) == 0.0
    assert jaccard(set(), {"a"}) == 0.0
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard({"a"}, {"a"}) == 1.0


@pytest.mark.parametrize(("num_perm", "threshold", "expected"), [
    # worked by hand from the S-curve midpoint (1/b)^(1/r), b = num_perm // r, with a 0.05 penalty
    # for midpoints above the threshold; the first r wins a tie
    (4, 0.01, (4, 1)),    # r=1: mid 0.25, the lowest there is
    (4, 0.5, (4, 1)),     # r=1: |0.25-0.5| = 0.25 < r=2: 0.207 + 0.05
    (4, 0.86, (2, 2)),    # r=2: 0.153 < r=3: mid 1, 0.14 + 0.05 (the penalty decides)
    (4, 0.9, (1, 3)),     # r=3: 0.1 + 0.05 < r=2: 0.193
    (4, 1.0, (1, 3)),     # r=3 and r=4 both hit mid 1 exactly: the first wins
    (8, 0.5, (4, 2)),     # r=2: mid exactly 0.5
    (8, 0.9, (2, 4)),     # r=4: 0.5^(1/4) = 0.841 -> 0.059 < r=3: 0.106, r=5: 0.15
    (128, 0.01, (128, 1)),
    (128, 1.0, (1, 65)),  # r = 65..128 all have b = 1 (mid 1): the first
])
def test_lsh_bands(num_perm, threshold, expected):
    assert lsh_bands(num_perm, threshold) == expected


def test_lsh_bands_threshold_exactly_at_a_midpoint():
    mid = (1 / 12) ** (1 / 10)  # 128 perms, r = 10: b = 12
    assert lsh_bands(128, mid) == (12, 10)  # cost 0, no penalty at equality


# --- MinHash: signatures from the documented formula -------------------------------------------------


M61 = (1 << 61) - 1


def ref_params(num_perm: int, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    a = [int(v) for v in rng.integers(1, M61, num_perm, dtype=np.uint64)]
    b = [int(v) for v in rng.integers(0, M61, num_perm, dtype=np.uint64)]
    return a, b


def ref_signature(text: str, num_perm: int = 128, seed: int = 1) -> list[int]:
    """datasketch's permutations: h = ((a*x mod 2^64 + b) mod 2^64) mod (2^61-1), cut to 32 bits, min
    over the 32-bit blake2b hashes x (little-endian) of the word 3-gram shingles."""
    words = filters.normalize(text).split()
    grams = {" ".join(words)} if 0 < len(words) <= 3 else {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}
    if not words:
        return [0xFFFFFFFF] * num_perm
    xs = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams]
    a, b = ref_params(num_perm, seed)
    return [min((((ai * x) % 2**64 + bi) % 2**64 % M61) & 0xFFFFFFFF for x in xs) for ai, bi in zip(a, b)]


@pytest.mark.parametrize("text", ["", "word", "Name three rivers", "a b c d e f g", "写一首关于大海的诗"])
def test_signature_matches_the_formula(text):
    index = MinHashIndex()
    sig = index.signature(text)
    assert sig.dtype == np.uint64 and sig.shape == (128,)
    assert [int(v) for v in sig] == ref_signature(text)


def test_signature_with_other_settings():
    index = MinHashIndex(0.5, num_perm=16, seed=7)
    assert index.num_perm == 16 and index.threshold == 0.5
    assert (index.bands, index.rows) == lsh_bands(16, 0.5)
    assert [int(v) for v in index.signature("one two three four")] == ref_signature("one two three four", 16, 7)


def test_minhash_threshold_bounds():
    assert MinHashIndex(1.0).threshold == 1.0
    assert MinHashIndex(0.01).threshold == 0.01
    for bad in (0.0, -0.1, 1.0001, 2.0):
        with pytest.raises(ValueError, match=r"^the MinHash threshold is a Jaccard similarity in \(0, 1\]$"):
            MinHashIndex(bad)


def _oracle_check(items, text, threshold, bands, rows, num_perm, seed):
    key = filters.normalize(text)
    if any(k == key for k, _ in items):
        return "duplicate"
    sig = ref_signature(text, num_perm, seed)
    for _, other in items:
        band_hit = any(sig[i * rows:(i + 1) * rows] == other[i * rows:(i + 1) * rows] for i in range(bands))
        agree = Fraction(sum(x == y for x, y in zip(sig, other)), num_perm)
        if band_hit and agree >= Fraction(threshold).limit_denominator(1000):
            return "near-duplicate"
    return None


POOL = ["a", "b", "c", "d", "e", "诗"]


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(POOL), min_size=1, max_size=7).map(" ".join), min_size=1, max_size=10),
       st.sampled_from([(8, 0.5), (4, 0.5), (8, 0.25), (16, 0.75)]), st.lists(st.booleans(), min_size=10, max_size=10))
def test_minhash_index_against_an_oracle(texts, setting, adds):
    """Candidates only from a whole band in common, then the signatures' agreement >= threshold
    (at exactly the threshold too); ``add=False`` remembers nothing."""
    num_perm, threshold = setting
    index = MinHashIndex(threshold, num_perm=num_perm, seed=3)
    bands, rows = index.bands, index.rows
    items: list[tuple[str, list[int]]] = []
    for text, add in zip(texts, adds):
        want = _oracle_check(items, text, threshold, bands, rows, num_perm, 3)
        assert index.check(text, add=add) == want, (texts, text)
        if want is None and add:
            items.append((filters.normalize(text), ref_signature(text, num_perm, 3)))
        assert len(index) == len(items)


def test_minhash_near_duplicate_at_exactly_the_threshold():
    """Agreement of exactly 4 of 8 with a band in common is a near duplicate at 0.5; a band in common
    below the threshold is not; agreement at the threshold with no band in common is not."""
    found = {}
    words = ["a", "b", "c", "d", "e", "f", "g"]
    texts = [" ".join(words[i:j]) for i in range(7) for j in range(i + 1, 8)]
    texts += [" ".join(reversed(words[i:j])) for i in range(7) for j in range(i + 4, 8)]
    for x in texts:
        for y in texts:
            if filters.normalize(x) == filters.normalize(y):
                continue
            sx, sy = ref_signature(x, 8, 3), ref_signature(y, 8, 3)
            agree = sum(p == q for p, q in zip(sx, sy))
            band = any(sx[i * 2:(i + 1) * 2] == sy[i * 2:(i + 1) * 2] for i in range(4))
            found.setdefault((agree, band), (x, y))
    assert lsh_bands(8, 0.5) == (4, 2)
    for (agree, band), (x, y) in found.items():
        index = MinHashIndex(0.5, num_perm=8, seed=3)
        assert index.check(x) is None
        want = "near-duplicate" if band and agree >= 4 else None
        assert index.check(y, add=False) == want, (agree, band, x, y)
    assert (4, True) in found  # exactly at the threshold, reachable
