"""Quality filters: refusals, length, echo vs duplicates, ROUGE-L, MinHash against exact Jaccard."""

from __future__ import annotations

import random

import pytest

from localaug.augment import filters
from localaug.augment.filters import DedupFilter, ExactIndex, MinHashIndex, QualityRules, is_refusal, jaccard, rouge_l, shingles
from localaug.augment.tasks import refine_reason

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I am sorry, I cannot provide that information.",
    "Sorry, but I won't write that.",
    "I cannot assist with this request.",
    "As an AI language model, I do not have opinions.",
    "  **I apologize**, but this is not something I can do.",
    "抱歉，我无法完成这个请求。",
    "对不起，我不能回答这个问题。",
    "作为一个AI，我没有个人观点。",
    "很抱歉，这超出了我的能力。",
]
NOT_REFUSALS = [
    "Write an apology letter that begins with \"I'm sorry\".",
    "Sorry for the delay: draft a polite follow-up email to a client.",
    "Explain why I cannot divide by zero in arithmetic.",
    "As an airline pilot, describe your pre-flight checklist.",
    "写一封道歉信，开头是“对不起”。",
    "Describe how an AI language model is trained.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_caught(text):
    assert is_refusal(text)
    assert QualityRules().check(text) == "refusal"
    assert QualityRules(refusals=False).check(text) is None


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_instructions_that_mention_apologies_are_kept(text):
    assert not is_refusal(text)


def test_length_bounds_and_empty():
    rules = QualityRules(min_chars=10, max_chars=40)
    assert rules.check("   ") == "empty"
    assert rules.check("Hi there") == "too-short"
    assert rules.check("Write a haiku about rain.") is None
    assert rules.check("Write " * 20) == "too-long"
    assert set(filters.REASONS) >= {"empty", "too-short", "too-long", "refusal", "echo", "duplicate", "near-duplicate"}


def test_echo_of_the_seed_differs_from_a_duplicate_of_an_accepted_text():
    d = DedupFilter(0.7)
    d.add_reference(["Write a poem about the sea."])
    assert d.check("write a POEM about the sea!") == "echo"  # the input, normalised
    assert d.check("Write a short poem about the sea.") == "echo"  # ROUGE-L >= 0.7 with the input
    assert d.check("List three facts about volcanoes.") is None
    assert d.check("List three facts about volcanoes") == "duplicate"
    assert d.check("List three interesting facts about volcanoes.") == "near-duplicate"
    assert d.check("请写一首关于大海的诗。") is None


def test_refine_echo_is_judged_against_the_input():
    rules = QualityRules()
    src = "Create a travel guide for Hangzhou."
    assert refine_reason("Create a travel guide for Hangzhou", src, rules) == "echo"
    assert refine_reason("Create a travel guide for Hangzhou, please.", src, rules, echo=0.9) == "echo"
    longer = "Create a detailed travel guide for Hangzhou covering West Lake, food, transport and a three-day plan."
    assert refine_reason(longer, src, rules) is None
    assert refine_reason("I'm sorry, I can't do that.", src, rules) == "refusal"


def _lcs_brute(a, b):
    # independent reference: the classic full DP table
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_matches_the_textbook_definition():
    rng = random.Random(3)
    for _ in range(200):
        a = [rng.choice("abcdef") for _ in range(rng.randint(1, 12))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(1, 12))]
        lcs = _lcs_brute(a, b)
        want = 0.0 if lcs == 0 else 2 * (lcs / len(b)) * (lcs / len(a)) / ((lcs / len(b)) + (lcs / len(a)))
        assert rouge_l(a, b) == pytest.approx(want)


def test_minhash_estimates_jaccard_and_finds_near_duplicates():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choices(words, k=40)) for _ in range(1000)]
    index = MinHashIndex(0.8, num_perm=128)
    assert all(index.check(t) is None for t in base)
    assert len(index) == 1000
    errors = []
    for i in range(300):
        a, b = base[i].split(), base[i + 1].split()
        k = rng.randint(1, 39)
        mixed = " ".join(a[:k] + b[k:])
        exact = jaccard(shingles(mixed), shingles(base[i]))
        errors.append(abs(exact - index.similarity(index.signature(mixed), index.signature(base[i]))))
    assert sum(errors) / len(errors) < 0.05 and max(errors) < 0.2  # 128 permutations: std <= 0.045
    found = 0
    for i in range(100):  # one word changed out of 40: Jaccard about 0.86
        w = base[i].split()
        w[rng.randrange(40)] = "changed"
        found += index.check(" ".join(w), add=False) == "near-duplicate"
    assert found >= 90
    unrelated = [" ".join(rng.choices(words, k=40)) for _ in range(200)]
    assert sum(index.check(t, add=False) is not None for t in unrelated) == 0
    assert index.check(base[3].upper()) == "duplicate"


def test_exact_index_normalises():
    idx = ExactIndex()
    assert idx.check("Name three rivers in China.") is None
    assert idx.check("name three rivers in china") == "duplicate"
    assert idx.check("Name four rivers in China.") is None
