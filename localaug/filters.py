"""Duplicate and quality filters for generated instructions.

Exact duplicates are caught on normalised text; near duplicates with ROUGE-L (F-measure of the
longest common subsequence), the measure Self-Instruct uses with a 0.7 threshold. Text is split
into words, with each CJK character its own token, so Chinese is compared sensibly too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_ROUGE_L = 0.7
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_TOKEN.findall(text))


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: str | list[str], b: str | list[str]) -> float:
    ta = tokens(a) if isinstance(a, str) else a
    tb = tokens(b) if isinstance(b, str) else b
    if not ta or not tb:
        return 0.0
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(tb), lcs / len(ta)
    return 2 * p * r / (p + r)


@dataclass
class DedupFilter:
    """Accepts texts that are neither exact nor near duplicates of the seeds or earlier accepts."""

    threshold: float = DEFAULT_ROUGE_L
    seen_exact: set[str] = field(default_factory=set)
    seen_tokens: list[list[str]] = field(default_factory=list)

    def add_reference(self, texts: Iterable[str]) -> None:
        for t in texts:
            self.seen_exact.add(normalize(t))
            self.seen_tokens.append(tokens(t))

    def check(self, text: str) -> str | None:
        """None if ``text`` is new (and remember it), else the reason it was rejected."""
        if not text.strip():
            return "empty"
        key = normalize(text)
        if key in self.seen_exact:
            return "duplicate"
        toks = tokens(text)
        if any(rouge_l(toks, other) >= self.threshold for other in self.seen_tokens):
            return "near-duplicate"
        self.seen_exact.add(key)
        self.seen_tokens.append(toks)
        return None
