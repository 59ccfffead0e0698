"""The job-wide duplicate indexes (localaug/augment/filters.py) against the MinHash index they
replaced, kept here verbatim as the oracle: the same decision for every text, one by one or added
in bulk, in an index refilled from its own entries, at any threshold; signatures bit for bit.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaug.augment import filters
from localaug.augment.filters import ExactIndex, MinHashIndex, lsh_bands, normalize, shingles

PROPS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
_MERSENNE = (1 << 61) - 1


class OldMinHashIndex:
    """The index as it was: blake2b per shingle, one (a*x + b) mod p matrix per text, band keys as
    bytes in dicts, candidates compared one at a time."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64)
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs: list[np.ndarray] = []
        self._exact: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sigs)

    def signature(self, text: str) -> np.ndarray:
        sh = shingles(text)
        if not sh:
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint64)
        x = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in sh],
                     dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = (self._a[:, None] * x[None, :] + self._b[:, None]) % np.uint64(_MERSENNE)
        return (h & np.uint64(0xFFFFFFFF)).min(axis=1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    def check(self, text: str, add: bool = True) -> str | None:
        key = hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()
        if key in self._exact:
            return "duplicate"
        sig = self.signature(text)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for band, k in zip(self._buckets, keys):
            for j in band.get(k, ()):
                if j not in seen:
                    seen.add(j)
                    if self.similarity(sig, self._sigs[j]) >= self.threshold:
                        return "near-duplicate"
        if add:
            self._exact.add(key)
            idx = len(self._sigs)
            self._sigs.append(sig)
            for band, k in zip(self._buckets, keys):
                band.setdefault(k, []).append(idx)
        return None


# few words, so that texts share shingles, whole bands and keys often
WORDS = ["rivers", "China", "name", "three", "the", "of", "a", "写", "诗", "Plan", "trip", "!"]
TEXT = st.lists(st.sampled_from(WORDS), max_size=9).map(" ".join)
SETTING = st.sampled_from([(0.8, 128, 1), (0.5, 16, 3), (0.3, 32, 7), (1.0, 8, 2), (0.9, 64, 5)])


@PROPS
@given(st.lists(st.tuples(TEXT, st.booleans()), max_size=40), SETTING)
def test_check_decides_as_the_old_index(calls, setting):
    old, new = OldMinHashIndex(*setting), MinHashIndex(*setting)
    for text, add in calls:
        assert new.check(text, add) == old.check(text, add), text
        assert len(new) == len(old)
        assert [int(v) for v in new.signature(text)] == [int(v) for v in old.signature(text)]


@PROPS
@given(st.lists(TEXT, max_size=60), SETTING, st.lists(TEXT, max_size=10))
def test_bulk_extend_adds_what_checking_one_by_one_adds(texts, setting, probes):
    old = OldMinHashIndex(*setting)
    want = [old.check(t) is None for t in texts]
    bulk = MinHashIndex(*setting)
    keys, sigs = bulk.encode(texts)
    assert sigs.dtype == np.uint32 and [[int(v) for v in s] for s in sigs] == [[int(v) for v in old.signature(t)] for t in texts]
    assert bulk.extend(keys, sigs).tolist() == want
    refilled = MinHashIndex(*setting)  # from the entries an index gives back, as a resumed job does
    assert refilled.extend(*bulk.entries(), trusted=True).all()
    for probe in probes:
        decision = old.check(probe, add=False)
        assert bulk.check(probe, add=False) == refilled.check(probe, add=False) == decision, probe
    later = MinHashIndex(*setting)  # into an index that holds entries already: one at a time
    later.extend(*later.encode(texts[:len(texts) // 2]))
    k2, s2 = later.encode(texts[len(texts) // 2:])
    assert later.extend(k2, s2).tolist() == want[len(texts) // 2:]


@pytest.mark.parametrize("limit", ["MAX_BULK_PAIRS", "MAX_RUN"])
def test_bulk_extend_past_the_pair_limit_checks_one_at_a_time(monkeypatch, limit):
    texts = ["a b c d", "a b c d e", "a b c d e f", "a b c x", "a b c d"] * 3
    idx = MinHashIndex(0.5, 16, 3)
    assert idx._band_pairs(idx._band_hashes(idx.encode(texts)[1]).ravel()) is not None
    monkeypatch.setattr(filters, limit, 3)
    assert idx._band_pairs(idx._band_hashes(idx.encode(texts)[1]).ravel()) is None
    old = OldMinHashIndex(0.5, 16, 3)
    assert idx.extend(*idx.encode(texts)).tolist() == [old.check(t) is None for t in texts]


def test_decisions_at_scale_match_the_old_index():
    rng = random.Random(5)
    words = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(3000)]
    texts += [t + " " + rng.choice(words) for t in texts[:1500]]  # near duplicates, Jaccard about 0.8
    texts += [t.upper() for t in texts[:300]]  # exact duplicates once normalised
    rng.shuffle(texts)
    old, new = OldMinHashIndex(), MinHashIndex()
    decisions = [old.check(t) for t in texts]
    assert [new.check(t) for t in texts] == decisions
    assert {"near-duplicate", "duplicate", None} <= set(decisions)
    bulk = MinHashIndex()
    assert bulk.extend(*bulk.encode(texts)).tolist() == [d is None for d in decisions]


def test_an_accepted_text_is_handed_over_once():
    idx = MinHashIndex()
    idx.keep_added()
    assert idx.check("Plan a trip to Kyoto in spring") is None
    assert idx.check("plan a trip to kyoto in spring!") == "duplicate"
    key, sig = idx.take_added("Plan a trip to Kyoto in spring")
    assert key == hashlib.blake2b(b"plan a trip to kyoto in spring", digest_size=16).digest()
    assert [int(v) for v in sig] == [int(v) for v in OldMinHashIndex().signature("Plan a trip to Kyoto in spring")]
    assert idx._added == {}  # forgotten once handed over
    assert idx.take_added("Plan a trip to Kyoto in spring")[0] == key  # encoded afresh if asked again


@PROPS
@given(st.lists(TEXT, max_size=30))
def test_exact_index_extend_and_entries(texts):
    one_by_one = ExactIndex()
    want = [one_by_one.check(t) is None for t in texts]
    bulk = ExactIndex()
    keys, sigs = bulk.encode(texts)
    assert keys == [hashlib.blake2b(normalize(t).encode(), digest_size=16).digest() for t in texts]
    assert sigs.shape == (len(texts), 0)
    assert bulk.extend(keys, sigs).tolist() == want
    assert bulk.extend(keys, sigs).tolist() == [False] * len(texts)  # all there already
    refilled = ExactIndex()
    assert refilled.extend(*bulk.entries(), trusted=True).all()
    assert refilled.entries()[0] == one_by_one.entries()[0] and len(refilled) == len(set(keys))
    assert all(refilled.check(t, add=False) == "duplicate" for t in texts)


@pytest.mark.parametrize("threshold", [0.3, 0.8, 1.0])
def test_an_entry_checked_after_encoding_decides_as_check(threshold):
    texts = ["Name three rivers in China", "name three rivers in china!", "Name three rivers in China please",
             "Plan a trip", "写一首诗"]
    a, b = MinHashIndex(threshold), MinHashIndex(threshold)
    keys, sigs = b.encode(texts)
    assert [a.check(t) for t in texts] == [b.check_entry(k, s) for k, s in zip(keys, sigs)]
