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
from collections.abc import Iterable
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


class ExactIndex:
    """Exact duplicates (normalised text) across a job, in 16 bytes per accepted text."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, text: str, add: bool = True) -> str | None:
        key = hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()
        if key in self._seen:
            return "duplicate"
        if add:
            self._seen.add(key)
        return None

_MERSENNE = (1 << 61) - 1


def shingles(text: str, k: int = 3) -> set[str]:
    """Word k-grams of the normalised text (the whole text when it has fewer than k words)."""
    toks = tokens(text)
    if len(toks) <= k:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i:i + k]) for i in range(len(toks) - k + 1)}


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
    for candidates, then the signatures' agreement (an estimate of Jaccard) against ``threshold``."""

    def __init__(self, threshold: float = DEFAULT_MINHASH, num_perm: int = 128, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("the MinHash threshold is a Jaccard similarity in (0, 1]")
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
        # the universal-hash permutations datasketch uses: (a*x + b) mod 2^61-1 on 32-bit shingle
        # hashes, the product wrapping modulo 2^64, the result cut to 32 bits
        x = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in sh],
                     dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = (self._a[:, None] * x[None, :] + self._b[:, None]) % np.uint64(_MERSENNE)
        return (h & np.uint64(0xFFFFFFFF)).min(axis=1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    def check(self, text: str, add: bool = True) -> str | None:
        """None if ``text`` is new (and remember it when ``add``), else "duplicate"/"near-duplicate"."""
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

