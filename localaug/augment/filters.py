"""Quality filters for generated text: duplicates, echoes, refusals, length.

Exact duplicates are caught on normalised text; near duplicates with ROUGE-L (F-measure of the
longest common subsequence), the measure Self-Instruct uses with a 0.7 threshold, or, across a
whole job where comparing every pair is too slow, with MinHash signatures and LSH banding
(Jaccard similarity of word shingles). Text is split into words, with each CJK character its own
token, so Chinese is compared sensibly too.

Every rejection has a reason from ``REASONS``; jobs count them per reason.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from localaug.family.text import normalize, rouge_l, tokens  # noqa: F401 - part of the filters' API

DEFAULT_ROUGE_L = 0.7
DEFAULT_ECHO = 0.9
DEFAULT_MINHASH = 0.8
DEFAULT_MIN_CHARS = 4

# Why a sample (or a refine output) was not kept: the keys of every per-reason count.
REASONS = {
    "empty": "nothing left after cleaning the reply",
    "too-short": "shorter than the minimum length (min_chars)",
    "too-long": "longer than the maximum length (max_chars)",
    "refusal": "a refusal (\"I'm sorry, I can't ...\", \"抱歉，我无法……\")",
    "echo": "(nearly) the input itself, or one of the prompt's in-context examples",
    "duplicate": "the same normalised text was already accepted",
    "near-duplicate": "too similar to an accepted text (ROUGE-L, or MinHash across the job)",
    "truncated": "max tokens hit before the reply ended",
    "unparseable": "the reply is not in the model's output format",
}
DUPLICATE_REASONS = ("duplicate", "near-duplicate")

# Opening phrases of refusals (matched at the start of the text, case-folded, after NFKC, with
# typographic apostrophes read as ASCII ones: models write "I’m sorry" as often as "I'm sorry").
_REFUSAL = re.compile(
    r"^\W*(?:"
    r"(?:i'?m|i am) (?:so |very |really )?sorry\b|sorry,? (?:but )?i\b|i apologi[sz]e\b|my apologies\b"
    r"|(?:i (?:can ?not|can't|won't|will not)|(?:i'?m|i am) (?:unable to|not able to)) "
    r"(?:help|assist|provide|comply|fulfil|fulfill|do that|create|write|generate|answer|complete)"
    r"|as an ai\b|as a language model\b|as an ai language model\b|i'?m just an ai\b"
    r"|(?:很|非常)?抱歉|对不起|不好意思，?我|我(?:无法|不能|没有办法)(?:帮助|协助|提供|完成|回答|满足|生成|创作)"
    r"|作为(?:一[个名])?(?:ai|人工智能|语言模型|ai语言模型)"
    r")"
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def is_refusal(text: str) -> bool:
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    return bool(_REFUSAL.match(text.strip().casefold()))


@dataclass(frozen=True)
class QualityRules:
    """Checks on one text that need no memory of other texts."""

    min_chars: int = DEFAULT_MIN_CHARS
    max_chars: int | None = None
    refusals: bool = True

    def check(self, text: str) -> str | None:
        stripped = text.strip()
        if not stripped:
            return "empty"
        if len(stripped) < self.min_chars:
            return "too-short"
        if self.max_chars is not None and len(stripped) > self.max_chars:
            return "too-long"
        if self.refusals and is_refusal(stripped):
            return "refusal"
        return None

    def check_response(self, text: str) -> str | None:
        """A generated response (pairs): only emptiness and refusals; its length is the task's."""
        if not text.strip():
            return "empty"
        return "refusal" if self.refusals and is_refusal(text) else None


@dataclass
class DedupFilter:
    """Accepts texts that are neither exact nor near duplicates of the references (the input
    seeds: an *echo*) or of earlier accepts (a *duplicate* / *near-duplicate*)."""

    threshold: float = DEFAULT_ROUGE_L
    seen_exact: dict[str, str] = field(default_factory=dict)  # normalised text -> the reason if seen again
    seen_tokens: list[tuple[list[str], str]] = field(default_factory=list)  # tokens -> the reason if near

    def add_reference(self, texts: Iterable[str]) -> None:
        for t in texts:
            self.seen_exact.setdefault(normalize(t), "echo")
            self.seen_tokens.append((tokens(t), "echo"))

    def check(self, text: str) -> str | None:
        """None if ``text`` is new (and remember it), else the reason it was rejected."""
        if not text.strip():
            return "empty"
        key = normalize(text)
        if key in self.seen_exact:
            return self.seen_exact[key]
        toks = tokens(text)
        for other, reason in self.seen_tokens:
            if rouge_l(toks, other) >= self.threshold:
                return reason
        self.seen_exact[key] = "duplicate"
        self.seen_tokens.append((toks, "near-duplicate"))
        return None


# --- across a whole job ---------------------------------------------------------------------------
#
# Both job-wide indexes (``ExactIndex``, ``MinHashIndex``) share one shape, so that a job can keep
# them beside its ledger (``localaug.jobs.seen``): ``encode`` turns texts into entries in bulk (a
# 16-byte key of the normalised text, and for MinHash its signature), ``extend`` adds entries as
# ``check`` would one by one, ``entries`` gives back what was added, in order, and ``take_added``
# hands over the entry of a text ``check`` accepted (once ``keep_added`` is set).

_MERSENNE = (1 << 61) - 1
_M61, _LOW32, _SHIFT61 = np.uint64(_MERSENNE), np.uint64(0xFFFFFFFF), np.uint64(61)
_NO_SHINGLE = 0xFFFFFFFF  # every slot of the signature of a text without words
_CHUNK = 1024  # shingles permuted at once: 1 MiB temporaries stay in the cache (4x faster than 4096)
_PAIRS_AT_ONCE = 1 << 16
MAX_BULK_PAIRS = 1 << 22  # candidate pairs a bulk extend checks; past it, one entry at a time
MAX_RUN = 256  # entries sharing one band hash a bulk extend pairs up; past it, one entry at a time


def text_key(text: str) -> bytes:
    """The 16-byte key of a text's normalised form (what exact duplicates share)."""
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


class ExactIndex:
    """Exact duplicates (normalised text) across a job, in 16 bytes per accepted text."""

    width = 0  # signature columns of an entry

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._order: list[bytes] = []
        self._added: dict[str, bytes] | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, text: str, add: bool = True) -> str | None:
        key = text_key(text)
        if key in self._seen:
            return "duplicate"
        if add:
            self._add(key)
            if self._added is not None:
                self._added[text] = key
        return None

    def _add(self, key: bytes) -> None:
        self._seen.add(key)
        self._order.append(key)

    def encode(self, texts: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
        return [text_key(t) for t in texts], np.empty((len(texts), 0), np.uint32)

    def extend(self, keys: Sequence[bytes], sigs: np.ndarray | None = None, trusted: bool = False) -> np.ndarray:
        """Add entries as ``check`` would, in order; which were added (``trusted``: all are)."""
        added = np.zeros(len(keys), bool)
        for i, key in enumerate(keys):
            if trusted or key not in self._seen:
                self._add(key)
                added[i] = True
        return added

    def entries(self) -> tuple[list[bytes], np.ndarray]:
        return list(self._order), np.empty((len(self._order), 0), np.uint32)

    def keep_added(self) -> None:
        self._added = {}

    def take_added(self, text: str) -> tuple[bytes, np.ndarray]:
        """The entry ``check`` added for ``text`` (forgotten here), or a fresh encoding."""
        key = self._added.pop(text, None) if self._added is not None else None
        return (key if key is not None else text_key(text)), np.empty(0, np.uint32)


def _grams(toks: list[str], k: int = 3) -> set[str]:
    if len(toks) <= k:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i:i + k]) for i in range(len(toks) - k + 1)}


def shingles(text: str, k: int = 3) -> set[str]:
    """Word k-grams of the normalised text (the whole text when it has fewer than k words)."""
    return _grams(tokens(text), k)


def _gram_hashes(grams: Iterable[str]) -> bytes:
    """The 32-bit blake2b hash of each shingle, little-endian, one after another."""
    blake = hashlib.blake2b
    return b"".join([blake(g.encode(), digest_size=4).digest() for g in grams])


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm whose S-curve midpoint (1/b)^(1/r) is nearest
    the threshold, preferring fewer missed pairs (a lower midpoint)."""

    def cost(r: int) -> float:
        mid = (1 / (num_perm // r)) ** (1 / r)
        return abs(mid - threshold) + (0.05 if mid > threshold else 0.0)

    rows = min(range(1, num_perm + 1), key=cost)  # the first of equal costs
    return num_perm // rows, rows


class MinHashIndex:
    """Near-duplicate search over many texts: MinHash signatures of word 3-gram shingles, LSH bands
    for candidates, then the signatures' agreement (an estimate of Jaccard) against ``threshold``.

    A candidate shares a whole band with the text (the same values in the same slots); it is a
    near duplicate when the share of equal slots is at least ``threshold``. Bands are found by a
    64-bit hash of their values (a sorted array for entries added in bulk, a dict for the rest),
    and every candidate is then compared slot by slot, so a hash collision changes nothing."""

    def __init__(self, threshold: float = DEFAULT_MINHASH, num_perm: int = 128, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("the MinHash threshold is a Jaccard similarity in (0, 1]")
        self.threshold, self.num_perm, self.width, self.seed = threshold, num_perm, num_perm, seed
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64)
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        mix = np.random.default_rng(0x5EED).integers(1, 1 << 63, self.rows + self.bands, dtype=np.uint64) | np.uint64(1)
        self._mix, self._salt = mix[:self.rows], mix[self.rows:]
        self._sigs = np.empty((0, num_perm), np.uint32)
        self._n = 0
        self._exact: set[bytes] = set()
        self._keys: list[bytes] = []
        self._frozen_hash = np.empty(0, np.uint64)  # band hashes of entries added in bulk, sorted
        self._frozen_at = np.empty(0, np.int64)  # ... and the entry each belongs to
        self._live: dict[int, list[int]] = {}  # band hash -> entries added one by one
        self._added: dict[str, int] | None = None

    def __len__(self) -> int:
        return self._n

    # --- signatures ---

    def _permute(self, x: np.ndarray) -> np.ndarray:
        """(len(x), num_perm): the universal-hash permutations datasketch uses, (a*x + b) mod 2^61-1
        with the product and sum wrapping modulo 2^64, cut to 32 bits. The modulo folds the bits
        above 61 onto the rest (2^61 = 1 mod 2^61-1), which is exact and cheaper than a division."""
        h = x[:, None] * self._a
        h += self._b
        r = h & _M61
        h >>= _SHIFT61
        r += h
        np.subtract(r, _M61, out=r, where=r >= _M61)
        r &= _LOW32
        return r

    def _sign(self, toks: list[str]) -> np.ndarray:
        grams = _grams(toks)
        if not grams:
            return np.full(self.num_perm, _NO_SHINGLE, np.uint32)
        x = np.frombuffer(_gram_hashes(grams), dtype="<u4").astype(np.uint64)
        return self._permute(x).min(axis=0).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        return self._sign(tokens(text)).astype(np.uint64)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    def encode(self, texts: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
        """The key and signature of each text, the shingles of many texts permuted together."""
        keys: list[bytes] = []
        sigs = np.full((len(texts), self.num_perm), _NO_SHINGLE, np.uint32)
        hashed, starts, rows = bytearray(), [], []
        for i, text in enumerate(texts):
            toks = tokens(text)
            keys.append(hashlib.blake2b(" ".join(toks).encode(), digest_size=16).digest())
            grams = _grams(toks)
            if grams:
                starts.append(len(hashed) // 4)
                rows.append(i)
                hashed += _gram_hashes(grams)
            if len(hashed) >= 4 * _CHUNK or (i == len(texts) - 1 and rows):
                x = np.frombuffer(hashed, dtype="<u4").astype(np.uint64)
                sigs[rows] = np.minimum.reduceat(self._permute(x), starts, axis=0)
                hashed, starts, rows = bytearray(), [], []
        return keys, sigs

    # --- the index ---

    def _band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """(len(sigs), bands) 64-bit hashes of each band's values: a sum of the values times random
        odd numbers, wrapping, plus a number of the band's own (a collision only adds a candidate)."""
        s = sigs[:, :self.bands * self.rows].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        return s @ self._mix + self._salt

    def _candidates(self, bands: np.ndarray) -> list[np.ndarray | list[int]]:
        found: list[np.ndarray | list[int]] = []
        if len(self._frozen_hash):
            lo = np.searchsorted(self._frozen_hash, bands)
            hi = np.searchsorted(self._frozen_hash, bands, side="right")
            found += [self._frozen_at[lo[i]:hi[i]] for i in np.flatnonzero(hi > lo).tolist()]
        if self._live:
            found += [got for got in map(self._live.get, bands.tolist()) if got]
        return found

    def _near(self, sig: np.ndarray, others: np.ndarray) -> bool:
        """Whether one of ``others`` (entry numbers) shares a whole band with ``sig`` and agrees on
        at least ``threshold`` of its slots (the float share, as np.mean gives it)."""
        s = self._sigs[others]
        cut = self.bands * self.rows
        same_band = (s[:, :cut].reshape(len(s), self.bands, self.rows)
                     == sig[:cut].reshape(self.bands, self.rows)).all(axis=2).any(axis=1)
        agree = (s == sig).sum(axis=1) / self.num_perm
        return bool((same_band & (agree >= self.threshold)).any())

    def check_entry(self, key: bytes, sig: np.ndarray, add: bool = True) -> str | None:
        """``check`` of an encoded text."""
        if key in self._exact:
            return "duplicate"
        bands = self._band_hashes(sig[None, :])[0]
        found = self._candidates(bands)
        if found and self._near(sig, np.unique(np.concatenate(found))):
            return "near-duplicate"
        if add:
            self._grow(1)
            self._sigs[self._n] = sig
            for h in bands.tolist():
                self._live.setdefault(h, []).append(self._n)
            self._exact.add(key)
            self._keys.append(key)
            self._n += 1
        return None

    def check(self, text: str, add: bool = True) -> str | None:
        """None if ``text`` is new (and remember it when ``add``), else "duplicate"/"near-duplicate"."""
        toks = tokens(text)
        key = hashlib.blake2b(" ".join(toks).encode(), digest_size=16).digest()
        if key in self._exact:
            return "duplicate"
        reason = self.check_entry(key, self._sign(toks), add)
        if reason is None and add and self._added is not None:
            self._added[text] = self._n - 1
        return reason

    def _grow(self, more: int) -> None:
        if self._n + more > len(self._sigs):
            bigger = np.empty((max(2 * len(self._sigs), self._n + more, 1024), self.num_perm), np.uint32)
            bigger[:self._n] = self._sigs[:self._n]
            self._sigs = bigger

    def extend(self, keys: Sequence[bytes], sigs: np.ndarray, trusted: bool = False) -> np.ndarray:
        """Add entries (``encode``) as ``check`` would one after another; which were added.
        ``trusted``: all are (entries an index gave back). Into an empty index, the entries are
        compared in bulk (the pairs that share a band hash or a key); else one at a time."""
        keys = list(keys)
        if not trusted:
            added = self._bulk_added(keys, sigs) if self._n == 0 else None
            if added is None:
                return np.array([self.check_entry(k, s) is None for k, s in zip(keys, sigs)], bool)
            keys, sigs = [k for k, a in zip(keys, added.tolist()) if a], sigs[added]
        else:
            added = np.ones(len(keys), bool)
        self._grow(len(keys))
        first = self._n
        self._sigs[first:first + len(keys)] = sigs
        self._n += len(keys)
        self._exact.update(keys)
        self._keys += keys
        bands = self._band_hashes(sigs).ravel()
        at = np.repeat(np.arange(first, first + len(keys), dtype=np.int64), self.bands)
        hashes, where = np.concatenate([self._frozen_hash, bands]), np.concatenate([self._frozen_at, at])
        order = np.argsort(hashes, kind="stable")
        self._frozen_hash, self._frozen_at = hashes[order], where[order]
        return added

    def _bulk_added(self, keys: list[bytes], sigs: np.ndarray) -> np.ndarray | None:
        """Which entries ``check`` one by one would add to an empty index (None: too many pairs to
        compare in bulk): entry j is left out when an earlier entry that was added has its key, or
        shares a band with it and agrees on ``threshold`` of the slots."""
        n = len(keys)
        earlier: dict[int, list[int]] = {}
        first: dict[bytes, int] = {}
        for j, key in enumerate(keys):
            i = first.setdefault(key, j)
            if i != j:
                earlier.setdefault(j, []).append(i)  # the first of a key stands for all: same outcome
        pairs = self._band_pairs(self._band_hashes(sigs).ravel())
        if pairs is None:
            return None
        for c in range(0, len(pairs), _PAIRS_AT_ONCE):
            part = pairs[c:c + _PAIRS_AT_ONCE]
            near = self._near_pairs(sigs[part[:, 0]], sigs[part[:, 1]])
            for i, j in part[near].tolist():
                earlier.setdefault(j, []).append(i)
        added = np.ones(n, bool)
        for j in sorted(earlier):
            added[j] = not added[earlier[j]].any()
        return added

    def _band_pairs(self, bands: np.ndarray) -> np.ndarray | None:
        """The distinct pairs (i < j) of entries with a band hash in common (``bands``: each entry's
        hashes one after another), as an (n, 2) array; None when there are too many."""
        order = np.argsort(bands, kind="stable")
        hashes, entry = bands[order], order // self.bands
        run = np.cumsum(np.concatenate([[True], hashes[1:] != hashes[:-1]]))  # the run of equal hashes of each
        sizes = np.bincount(run)
        if int((sizes * (sizes - 1) // 2).sum()) > MAX_BULK_PAIRS or sizes.max() > MAX_RUN:
            return None
        found = [np.empty((0, 2), np.int64)]
        for d in range(1, int(sizes.max())):  # each member with the one d places after it in its run
            same = run[d:] == run[:-d]
            a, b = entry[:-d][same], entry[d:][same]
            keep = a != b
            found.append(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], axis=1))
        return np.unique(np.concatenate(found), axis=0)

    def _near_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cut = self.bands * self.rows
        same_band = (a[:, :cut].reshape(len(a), self.bands, self.rows)
                     == b[:, :cut].reshape(len(b), self.bands, self.rows)).all(axis=2).any(axis=1)
        return same_band & ((a == b).sum(axis=1) / self.num_perm >= self.threshold)

    def entries(self) -> tuple[list[bytes], np.ndarray]:
        """The added entries, in the order they were added."""
        return list(self._keys), self._sigs[:self._n].copy()

    def keep_added(self) -> None:
        self._added = {}

    def take_added(self, text: str) -> tuple[bytes, np.ndarray]:
        """The entry ``check`` added for ``text`` (forgotten here), or a fresh encoding."""
        at = self._added.pop(text, None) if self._added is not None else None
        if at is not None:
            return self._keys[at], self._sigs[at].copy()
        keys, sigs = self.encode([text])
        return keys[0], sigs[0]
