"""The duplicate indexes' bulk paths pinned against independent references: an index filled in bulk
(``extend``) decides exactly as one filled a text at a time and as a brute-force oracle; band pairs
against every pair enumerated; encodings against hashlib and the MinHash formula; entries and the
kept additions round-tripped; growth past the first capacity.

Fast and pure: these guard ``localaug/augment/filters.py`` in ``tools/mutation.py``.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaug.augment import filters
from localaug.augment.filters import ExactIndex, MinHashIndex

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
M61 = (1 << 61) - 1
POOL = ["a", "b", "c", "d", "e", "诗"]
TEXTS = st.lists(st.sampled_from(POOL), min_size=0, max_size=6).map(" ".join)


def key_of(text: str) -> bytes:
    return hashlib.blake2b(" ".join(filters.normalize(text).split()).encode(), digest_size=16).digest()


def ref_signature(text: str, num_perm: int, seed: int) -> list[int]:
    """datasketch's permutations over the 32-bit little-endian blake2b hashes of word 3-grams."""
    words = filters.normalize(text).split()
    if not words:
        return [0xFFFFFFFF] * num_perm
    grams = {" ".join(words)} if len(words) <= 3 else {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}
    xs = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams]
    rng = np.random.default_rng(seed)
    a = [int(v) for v in rng.integers(1, M61, num_perm, dtype=np.uint64)]
    b = [int(v) for v in rng.integers(0, M61, num_perm, dtype=np.uint64)]
    return [min(((ai * x + bi) % 2**64 % M61) & 0xFFFFFFFF for x in xs) for ai, bi in zip(a, b)]


def oracle_added(texts, threshold, num_perm, seed, bands, rows):
    """Which texts ``check`` one by one would add: not the key of an added one, and no added one
    sharing a whole band and agreeing on >= threshold of the slots."""
    kept: list[tuple[bytes, list[int]]] = []
    out = []
    for t in texts:
        k, s = key_of(t), ref_signature(t, num_perm, seed)
        dup = any(k == k2 for k2, _ in kept) or any(
            any(s[i * rows:(i + 1) * rows] == s2[i * rows:(i + 1) * rows] for i in range(bands))
            and sum(x == y for x, y in zip(s, s2)) >= threshold * num_perm for _, s2 in kept)
        out.append(not dup)
        if not dup:
            kept.append((k, s))
    return out


# --- encodings ---------------------------------------------------------------------------------


def test_exact_encode_and_entries_are_hashlib_keys_and_empty_uint32_columns():
    texts = ["Hello  World", "hello world", "写诗", ""]
    keys, sigs = ExactIndex().encode(texts)
    assert keys == [hashlib.blake2b(filters.normalize(t).encode(), digest_size=16).digest() for t in texts]
    assert filters.text_key("a b") == hashlib.blake2b(b"a b", digest_size=16).digest()
    assert sigs.dtype == np.uint32 and sigs.shape == (4, 0)
    index = ExactIndex()
    assert index.extend(keys).tolist() == [True, False, True, True]
    got_keys, got_sigs = index.entries()
    assert got_keys == [keys[0], keys[2], keys[3]]
    assert got_sigs.dtype == np.uint32 and got_sigs.shape == (3, 0)
    assert len(index) == 3


def test_exact_extend_trusted_and_untrusted():
    k = [bytes([i]) * 16 for i in range(3)]
    index = ExactIndex()
    added = index.extend([k[0], k[1], k[0]])  # untrusted by default: the repeat is left out
    assert added.dtype == bool and added.tolist() == [True, True, False]
    assert index.extend([k[1], k[2]]).tolist() == [False, True]
    assert index.entries()[0] == [k[0], k[1], k[2]]
    assert index.check("x", add=False) is None
    trusted = ExactIndex()
    assert trusted.extend([k[0], k[0]], trusted=True).tolist() == [True, True]
    assert trusted.entries()[0] == [k[0], k[0]]
    assert ExactIndex().extend([]).tolist() == []


def test_exact_take_added():
    index = ExactIndex()
    key, sig = index.take_added("never kept")  # without keep_added: a fresh encoding
    assert key == filters.text_key("never kept") and sig.dtype == np.uint32 and sig.shape == (0,)
    index.keep_added()
    assert index.check("One two") is None and index.check("one  TWO") == "duplicate"
    for text in ("One two", "One two", "one  TWO", "unseen"):
        key, sig = index.take_added(text)
        assert key == filters.text_key(text) and sig.dtype == np.uint32 and sig.shape == (0,)
    assert index.entries()[0] == [filters.text_key("one two")]


@pytest.mark.parametrize(("num_perm", "seed"), [(16, 3), (128, 1)])
def test_minhash_encode_matches_the_formula_across_chunks(num_perm, seed):
    """Enough shingles to fill several permutation chunks; texts without words between and last."""
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(words[i % 7:i % 7 + 30]) + f" t{i}" for i in range(90)]
    texts[5] = ""
    texts[40] = "   "
    texts.append("")
    texts.append("写一首诗")
    index = MinHashIndex(0.5, num_perm=num_perm, seed=seed)
    keys, sigs = index.encode(texts)
    assert sigs.dtype == np.uint32 and sigs.shape == (len(texts), num_perm)
    assert keys == [key_of(t) for t in texts]
    for t, s in zip(texts, sigs):
        assert s.tolist() == ref_signature(t, num_perm, seed), t
    one_keys, one_sigs = index.encode(["a b c d"])
    assert one_keys == [key_of("a b c d")] and one_sigs[0].tolist() == ref_signature("a b c d", num_perm, seed)
    assert index.encode([])[1].shape == (0, num_perm)


def test_permute_folds_exactly_at_the_modulus():
    """x chosen so that a*x + b (mod 2^64) is 2^61-1 exactly, and 2^61, and 2^64-1."""
    index = MinHashIndex(0.5, num_perm=16, seed=3)
    a, b = [int(v) for v in index._a], [int(v) for v in index._b]
    col = next(i for i in range(16) if a[i] % 2)
    inv = pow(a[col], -1, 2**64)
    xs = [((target - b[col]) * inv) % 2**64 for target in (M61, M61 + 1, 2**64 - 1, M61 - 1)] + [0, 1, 2**32 - 1]
    got = index._permute(np.array(xs, np.uint64))
    want = [[((ai * x + bi) % 2**64 % M61) & 0xFFFFFFFF for ai, bi in zip(a, b)] for x in xs]
    assert got.tolist() == want
    assert got[0, col] == 0 and got[1, col] == 1


# --- band pairs --------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(1, 4), st.data())
def test_band_pairs_against_every_pair(bands, data):
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    index.bands = bands
    n = data.draw(st.integers(0, 9))
    values = data.draw(st.lists(st.integers(0, 5), min_size=n * bands, max_size=n * bands))
    got = index._band_pairs(np.array(values, np.uint64))
    rows = [set(values[i * bands:(i + 1) * bands]) for i in range(n)]
    want = [[i, j] for i, j in itertools.combinations(range(n), 2) if rows[i] & rows[j]]
    assert got.dtype == np.int64 and got.shape == (len(want), 2)
    assert got.tolist() == want


def test_band_pairs_limits(monkeypatch):
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    index.bands = 1
    monkeypatch.setattr(filters, "MAX_RUN", 3)
    assert index._band_pairs(np.array([7, 7, 7], np.uint64)).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert index._band_pairs(np.array([7, 7, 7, 7], np.uint64)) is None
    monkeypatch.setattr(filters, "MAX_RUN", 256)
    monkeypatch.setattr(filters, "MAX_BULK_PAIRS", 3)
    assert index._band_pairs(np.array([1, 1, 2, 2, 3, 3], np.uint64)).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert index._band_pairs(np.array([1, 1, 2, 2, 3, 3, 4, 4], np.uint64)) is None
    assert index._band_pairs(np.array([1, 1, 1], np.uint64)).tolist() == [[0, 1], [0, 2], [1, 2]]


def test_bulk_extend_over_the_pair_limit_falls_back_to_one_at_a_time(monkeypatch):
    texts = ["a b c", "a b c d", "a b c", "e d c b", "a b c d"]
    monkeypatch.setattr(filters, "MAX_BULK_PAIRS", 0)
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    want = oracle_added(texts, 0.5, 8, 3, index.bands, index.rows)
    assert index.extend(*index.encode(texts)).tolist() == want
    assert len(index) == sum(want)


# --- bulk extend against one at a time and an oracle ------------------------------------------


SETTINGS_EXT = [(8, 0.5), (4, 0.5), (8, 0.25), (16, 0.75), (8, 1.0)]


@SETTINGS
@given(st.lists(TEXTS, min_size=0, max_size=12), st.sampled_from(SETTINGS_EXT), st.lists(TEXTS, max_size=4),
       st.integers(1, 3))
def test_bulk_extend_decides_as_one_at_a_time(texts, setting, probes, chunk):
    num_perm, threshold = setting
    bulk = MinHashIndex(threshold, num_perm=num_perm, seed=3)
    keys, sigs = bulk.encode(texts)
    want = oracle_added(texts, threshold, num_perm, 3, bulk.bands, bulk.rows)
    added = bulk.extend(keys, sigs)
    assert added.dtype == bool and added.tolist() == want
    one = MinHashIndex(threshold, num_perm=num_perm, seed=3)
    assert [one.check(t) is None for t in texts] == want
    assert len(bulk) == len(one) == sum(want)
    assert bulk.entries()[0] == one.entries()[0]
    assert bulk.entries()[1].dtype == np.uint32 and np.array_equal(bulk.entries()[1], one.entries()[1])
    assert bulk.entries()[0] == [k for k, a in zip(keys, want) if a]
    # later texts (one at a time onto the bulk entries) decide the same in both and as the oracle
    later = probes + texts[:2]
    assert [bulk.check(t, add=False) for t in later] == [one.check(t, add=False) for t in later]
    for t in later:
        assert (bulk.check(t, add=False) is None) == oracle_added(
            [x for x, a in zip(texts, want) if a] + [t], threshold, num_perm, 3, bulk.bands, bulk.rows)[-1]
    # a second extend in chunks (one at a time: the index is no longer empty) and a trusted reload
    more = probes + texts
    mk, ms = bulk.encode(more)
    got = np.concatenate([bulk.extend(mk[i:i + chunk], ms[i:i + chunk]) for i in range(0, len(more), chunk)] or [[]])
    assert got.tolist() == [one.check(t) is None for t in more]
    reload = MinHashIndex(threshold, num_perm=num_perm, seed=3)
    ek, es = bulk.entries()
    assert reload.extend(ek, es, trusted=True).tolist() == [True] * len(ek)
    assert reload.entries()[0] == ek and np.array_equal(reload.entries()[1], es)
    assert [reload.check(t, add=False) for t in later] == [one.check(t, add=False) for t in later]


def test_bulk_extend_then_check_finds_bulk_entries():
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    texts = ["a b c d e", "x y z", "one two three four"]
    assert index.extend(*index.encode(texts)).tolist() == [True, True, True]
    assert [index.check(t, add=False) for t in texts] == ["duplicate"] * 3
    for t in texts:  # the same shingles, another key: found through the sorted band hashes
        k, s = index.encode([t + "!"])
        assert index.check_entry(b"\0" * 16, s[0], add=False) == "near-duplicate"
    assert index.check("fresh words here") is None and len(index) == 4
    assert index.check_entry(b"\1" * 16, index.encode(["fresh words here"])[1][0]) == "near-duplicate"
    # check_entry adds by default
    k, s = index.encode(["entirely new text"])
    assert index.check_entry(k[0], s[0]) is None and len(index) == 5
    assert index.check("entirely new text", add=False) == "duplicate"


def test_check_and_encode_share_keys():
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    assert index.check("Hello  big World") is None
    k, s = index.encode(["hello big world"])
    assert index.check_entry(k[0], s[0], add=False) == "duplicate"
    assert index.entries()[0] == [key_of("hello big world")]


def test_growth_past_the_first_capacity_keeps_every_entry():
    rng = np.random.default_rng(5)
    index = MinHashIndex(0.5, num_perm=4, seed=3)
    sigs = rng.integers(0, 2**32, (3000, 4), dtype=np.uint64).astype(np.uint32)
    keys = [i.to_bytes(16, "little") for i in range(3000)]
    for i in range(1020):
        assert index.check_entry(keys[i], sigs[i]) is None
    assert index.extend(keys[1020:1030], sigs[1020:1030], trusted=True).tolist() == [True] * 10
    assert index.extend(keys[1030:], sigs[1030:], trusted=True).all()
    got_keys, got_sigs = index.entries()
    assert got_keys == keys and got_sigs.dtype == np.uint32 and np.array_equal(got_sigs, sigs)
    assert len(index) == 3000
    for i in (0, 1019, 1020, 1029, 1030, 2999):
        assert index.check_entry(keys[i], sigs[i], add=False) == "duplicate"
        assert index.check_entry(b"\xff" * 16, sigs[i], add=False) == "near-duplicate"


# --- kept additions ----------------------------------------------------------------------------


def test_minhash_take_added():
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    key, sig = index.take_added("never kept")
    assert key == key_of("never kept") and sig.tolist() == ref_signature("never kept", 8, 3)
    index.keep_added()
    texts = ["a b c d", "e d c b a", "x y z", "A b  c d"]
    assert [index.check(t) for t in texts] == [None, None, None, "duplicate"]
    for t in ["x y z", "a b c d", "e d c b a", "A b  c d", "x y z", "new one"]:
        key, sig = index.take_added(t)
        assert key == key_of(t) and sig.dtype == np.uint32 and sig.tolist() == ref_signature(t, 8, 3), t
    key, sig = index.take_added("a b c d")
    sig[:] = 0  # a copy: the index keeps its own
    assert index.check("a b c d", add=False) == "duplicate"
    assert index.entries()[1][0].tolist() == ref_signature("a b c d", 8, 3)


# --- the bulk comparison itself ----------------------------------------------------------------


def ref_near(x: list[int], y: list[int], bands: int, rows: int, threshold: float) -> bool:
    band = any(x[i * rows:(i + 1) * rows] == y[i * rows:(i + 1) * rows] for i in range(bands))
    return band and sum(p == q for p, q in zip(x, y)) >= threshold * len(x)


@SETTINGS
@given(st.sampled_from(SETTINGS_EXT), st.data())
def test_near_pairs_and_bulk_added_against_the_oracle(setting, data):
    """Signatures of few distinct values, so bands and agreements at the threshold are common."""
    num_perm, threshold = setting
    index = MinHashIndex(threshold, num_perm=num_perm, seed=3)
    n = data.draw(st.integers(1, 8))
    sigs = np.array(data.draw(st.lists(st.lists(st.integers(0, 2), min_size=num_perm, max_size=num_perm),
                                       min_size=n, max_size=n)), np.uint32)
    keys = [bytes([data.draw(st.integers(0, 3))]) * 16 for _ in range(n)]
    pairs = list(itertools.combinations(range(n), 2))
    if pairs:
        a, b = sigs[[i for i, _ in pairs]], sigs[[j for _, j in pairs]]
        got = index._near_pairs(a, b)
        assert got.dtype == bool and got.tolist() == [
            ref_near(sigs[i].tolist(), sigs[j].tolist(), index.bands, index.rows, threshold) for i, j in pairs]
    kept: list[int] = []
    for j in range(n):
        if not any(keys[i] == keys[j] or ref_near(sigs[i].tolist(), sigs[j].tolist(), index.bands, index.rows,
                                                  threshold) for i in kept):
            kept.append(j)
    want = [j in kept for j in range(n)]
    bulk = index._bulk_added(keys, sigs)
    assert bulk is not None and bulk.dtype == bool and bulk.tolist() == want
    assert index.extend(keys, sigs).tolist() == want


def test_bulk_extend_into_an_empty_index_compares_in_bulk(monkeypatch):
    """Into an empty index nothing goes one entry at a time; once it has entries, everything does."""
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    keys, sigs = index.encode(["a b c d", "a b c d e", "x y z", "a b c d"])

    def one_at_a_time(*args, **kwargs):
        raise AssertionError("compared one at a time")

    monkeypatch.setattr(index, "check_entry", one_at_a_time)
    assert index.extend(keys, sigs).tolist() == oracle_added(["a b c d", "a b c d e", "x y z", "a b c d"],
                                                             0.5, 8, 3, index.bands, index.rows)
    with pytest.raises(AssertionError, match="one at a time"):
        index.extend(keys[:1], sigs[:1])


def test_near_agreement_is_per_candidate():
    """Two entries share a band with the text and agree on 2 of 8 slots each: 4 of 8 together, but
    neither alone reaches 0.5."""
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    assert (index.bands, index.rows) == (4, 2)
    a = np.array([1, 1, 10, 11, 12, 13, 14, 15], np.uint32)
    c = np.array([1, 1, 20, 21, 22, 23, 24, 25], np.uint32)
    p = np.array([1, 1, 30, 31, 32, 33, 34, 35], np.uint32)
    assert index.check_entry(b"a" * 16, a) is None and index.check_entry(b"c" * 16, c) is None
    assert index.check_entry(b"p" * 16, p, add=False) is None
    q = np.array([1, 1, 10, 11, 32, 33, 34, 35], np.uint32)  # 4 of 8 with a: at the threshold
    assert index.check_entry(b"q" * 16, q, add=False) == "near-duplicate"
    bulk = MinHashIndex(0.5, num_perm=8, seed=3)
    assert bulk.extend([b"a" * 16, b"c" * 16], np.stack([a, c])).tolist() == [True, True]
    assert bulk.check_entry(b"p" * 16, p, add=False) is None
    assert bulk.check_entry(b"q" * 16, q, add=False) == "near-duplicate"


def test_trusted_extend_returns_a_bool_mask():
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    added = index.extend(*index.encode(["a b", "a b"]), trusted=True)
    assert added.dtype == bool and added.tolist() == [True, True]


def test_a_kept_addition_is_not_encoded_again(monkeypatch):
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    index.keep_added()
    assert index.check("a b c d") is None and index.check("x y z") is None
    want = {t: (key_of(t), ref_signature(t, 8, 3)) for t in ("a b c d", "x y z")}

    def encode(texts):
        raise AssertionError("encoded again")

    monkeypatch.setattr(index, "encode", encode)
    for t in ("x y z", "a b c d"):
        key, sig = index.take_added(t)
        assert (key, sig.tolist()) == want[t]
    with pytest.raises(AssertionError, match="encoded again"):  # taken once: forgotten
        index.take_added("x y z")


def test_extend_of_nothing_onto_entries_is_an_empty_bool_mask():
    index = MinHashIndex(0.5, num_perm=8, seed=3)
    assert index.check("a b c") is None
    added = index.extend([], np.empty((0, 8), np.uint32))
    assert added.dtype == bool and added.shape == (0,) and len(index) == 1
