"""The report's nearest-neighbour ROUGE-L (rapidfuzz's compiled LCS over the report's own tokens)
gives the previous pure-Python values bit for bit: on generated texts with CJK, full-width and
case-folded letters, duplicates and the same objects, past the 400-neighbour sample, and by hand."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.family.text import rouge_l, tokens
from localaug.report import metrics
from localaug.report.metrics import nearest_rouge

PROPS = settings(max_examples=150, deadline=None, derandomize=True)


def previous_nearest_rouge(new: Sequence[str], others: Sequence[str], seed: int) -> list[float]:
    """The report's nearest_rouge before the compiled LCS, verbatim (pure-Python rouge_l)."""
    rng = random.Random(seed)
    toks = {t: tokens(t) for t in {*new, *others}}
    out = []
    for text in new:
        candidates = list(others)
        mine = next((i for i, o in enumerate(candidates) if o is text), None)
        if mine is not None:
            del candidates[mine]
        if len(candidates) > metrics.MAX_NEIGHBOURS:
            candidates = rng.sample(candidates, metrics.MAX_NEIGHBOURS)
        out.append(max((rouge_l(toks[text], toks[o]) for o in candidates), default=0.0))
    return out


# words that tokenize in every way the report's tokens do: CJK characters one token each (kana,
# hangul, CJK compatibility), words that NFKC or case folding make equal, punctuation that is no token
PIECES = st.sampled_from(["a", "b", "sea", "Sea", "SEA", "ｓｅａ", "straße", "STRASSE", "猫", "狗", "我喜欢", "かな",
                          "한국", "﨑", "x_y", "42", "٣", "!", "—", " ", "😀", "e\u0301", "é"])
TEXT = st.lists(PIECES, max_size=9).map(" ".join) | st.lists(PIECES, max_size=9).map("".join)


@PROPS
@given(st.lists(TEXT, max_size=8), st.lists(TEXT, max_size=8), st.integers(0, 5), st.booleans())
def test_values_are_the_previous_ones_bit_for_bit(sources, new, seed, shared):
    others = [*sources, *new] if shared else [*sources, *(t.encode().decode() for t in new)]  # the same objects, or equal copies
    assert nearest_rouge(new, others, seed) == previous_nearest_rouge(new, others, seed)


def test_past_400_neighbours_the_same_sample_and_values():
    seed = 7
    rng = random.Random(99)
    vocab = ["the", "cat", "sat", "on", "mat", "猫", "在", "垫", "子", "上", "Ｃａｔ", "坐"]
    def text():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
    sources = [text() for _ in range(500)]
    new = [text() for _ in range(260)]  # more than one chunk of new texts
    others = [*sources, *new, new[3]]  # new[3] twice: its second occurrence is a neighbour
    got = nearest_rouge(new, others, seed, threads=2)
    assert got == previous_nearest_rouge(new, others, seed)
    assert len(got) == 260 and max(got) == 1.0 and 0.0 in got  # empty texts share nothing


@pytest.mark.parametrize(("text", "other", "expected"), [
    ("我喜欢猫", "我喜欢狗", 0.75),            # 4 characters each, 3 in common: P = R = 3/4
    ("I like 猫", "i LIKE 狗 and", 2 * 2 / 7),  # case folds; 猫 and 狗 differ: LCS 2 of 3 and 4 tokens
    ("ｓｅａ blue", "sea, blue!", 1.0),          # NFKC: full-width letters are the ASCII ones
    ("한국 어", "한 국어", 1.0),                  # each hangul syllable is a token: spaces between them do not count
    ("a b c d", "d c b a", 0.25),              # one in order
    ("", "a", 0.0),
    ("!!", "!!", 0.0),                          # punctuation only: no tokens
])
def test_by_hand(text, other, expected):
    assert nearest_rouge([text], [other], 0) == [pytest.approx(expected, rel=1e-15, abs=0)]
    assert nearest_rouge([text], [other], 0) == previous_nearest_rouge([text], [other], 0)


def test_every_distinct_token_is_one_character_and_none_a_surrogate():
    words = [f"w{i}" for i in range(0xD800 + 50)]  # past the surrogate code points
    text = " ".join(words)
    coded = metrics._coded([text, "w0 w1", f"w{0xD800 + 3} w0"])
    assert len(coded[text]) == len(words) == len(set(coded[text]))
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in coded[text])
    assert coded["w0 w1"] == coded[text][:2]
    assert coded[f"w{0xD800 + 3} w0"] == coded[text][0xD800 + 3] + coded[text][0]


def test_past_the_characters_unicode_has_token_ids_give_the_same_values(monkeypatch):
    monkeypatch.setattr(metrics, "_MAX_CHARS", 3)  # a vocabulary of more than 3 tokens: lists of ids
    new, others = ["a b c d", "猫 狗 a"], ["a c d", "狗 猫 a b", "e"]
    assert isinstance(metrics._coded(new + others)["e"], list)
    assert nearest_rouge(new, [*others, *new], 0) == previous_nearest_rouge(new, [*others, *new], 0)
