"""The shared-prefix cache of a batch engine: one prompt beginning whose KV is decoded once.

One more sequence id of the batch context (``holder``) holds the KV of a cached prefix: after a
prompt is decoded, the holder keeps the part it shares with the previous cached prompt when that is
most of the prompt (else this prompt); requests admitted together that share a beginning (a job's
first rows) have it decoded into the holder first. A new prompt that starts with at least
``MIN_SHARE`` tokens of it copies their KV (``llama_memory_seq_cp``: cells are shared, nothing is
recomputed) and prefills only its own suffix. So the system turn, teacher-mode instructions and
examples, Response-Exp seed pairs or a client's system prompt are decoded once per engine, for
every row of a job and across the requests of a server. With F32 weights and KV the results are
token-identical to decoding every prompt whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp as L

from localaug.runtime.llama import TokenBatch, drop_sequence

MIN_SHARE = 8  # prompt tokens a request must share with the cached prefix to start from it


def common_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def best_shared_prefix(prompts: list[list[int]]) -> list[int]:
    """Of two or more prompts, the beginning that saves the most tokens when decoded once: shared by
    a run of them, its length times the run's size; never a whole prompt (each needs the logits of
    its last token)."""
    ordered = sorted(prompts)
    adjacent = [common_length(a, b) for a, b in zip(ordered, ordered[1:])]
    best, best_saved = 0, 0
    for i, length in enumerate(adjacent):
        lo = hi = i  # the run of neighbours sharing at least ``length`` tokens
        while lo > 0 and adjacent[lo - 1] >= length:
            lo -= 1
        while hi + 1 < len(adjacent) and adjacent[hi + 1] >= length:
            hi += 1
        saved = length * (hi - lo + 1)  # every member of the run but one skips ``length`` tokens
        if saved > best_saved:
            best, best_saved = i, saved
    length = min(adjacent[best], *(len(t) - 1 for t in ordered[best:best + 2]))
    return ordered[best][:length]


@dataclass
class PrefixStats:
    """Prompt tokens decoded (a shared prefix once, into the holder), and prompt tokens whose KV came
    from the cached prefix instead."""

    decoded: int = 0
    reused: int = 0


@dataclass
class PrefixCache:
    """The cached prefix of one batch context: its tokens, whose KV sequence ``holder`` keeps.

    ``enabled`` False: nothing is cached, every prompt is decoded whole."""

    ctx: object
    memory: object
    batch: TokenBatch  # the engine's batch, borrowed to decode a common prefix between steps
    holder: int
    enabled: bool = True
    tokens: list[int] = field(default_factory=list)
    stats: PrefixStats = field(default_factory=PrefixStats)

    def forget(self) -> None:
        """Drop the cached prefix (after a failed step, or to measure cold prompts)."""
        drop_sequence(self.memory, self.holder)
        self.tokens = []

    def take(self, slot: int, tokens: list[int]) -> int:
        """Copy into ``slot`` the KV of the cached prefix ``tokens`` starts with; how many tokens it
        holds (0: none). Never the last token, whose logits the request needs."""
        if not self.enabled:
            return 0
        shared = min(common_length(self.tokens, tokens), len(tokens) - 1)
        if shared < MIN_SHARE:
            return 0
        L.llama_memory_seq_cp(self.memory, self.holder, slot, 0, shared)
        return shared

    def cache_common(self, prompts: list[list[int]]) -> None:
        """Prompts admitted together that share a beginning (a job's first rows, a burst of requests
        with one system prompt): decode that beginning once, into the holder, so that each of them
        prefills only its own part. When llama.cpp refuses to decode it, nothing is cached: each
        prompt is then decoded whole. ``prompts`` holds at least two."""
        if not self.enabled:
            return
        prefix = best_shared_prefix(prompts)
        length = len(prefix)
        if length < MIN_SHARE or common_length(self.tokens, prefix) >= length:
            return  # too short, or cached already
        keep = common_length(self.tokens, prefix)
        if keep < MIN_SHARE:
            keep = 0
        L.llama_memory_seq_rm(self.memory, self.holder, keep, -1)
        b = self.batch
        for start in range(keep, length, b.capacity):
            b.clear()
            b.add(prefix[start:start + b.capacity], start, self.holder, "none")
            if b.decode(self.ctx) != 0:
                self.forget()  # the holder's KV is incomplete: cache nothing
                return
        self.tokens = prefix
        self.stats.decoded += length - keep

    def remember(self, slot: int, tokens: list[int]) -> None:
        """A prompt has just been decoded in ``slot``: keep in the holder what it shares with the
        cached prefix when that is most of it (rows of one job: the fixed part of their prompt),
        else this prompt, all but its last token (a new conversation: a client's new system prompt
        that merely starts like the old one)."""
        if not self.enabled:
            return
        common = common_length(self.tokens, tokens)
        if common >= MIN_SHARE and 2 * common >= len(tokens) - 1:
            if common < len(self.tokens):
                L.llama_memory_seq_rm(self.memory, self.holder, common, -1)
                del self.tokens[common:]
            return
        if len(tokens) - 1 < MIN_SHARE:
            return  # too short to be worth a cached copy
        drop_sequence(self.memory, self.holder)
        L.llama_memory_seq_cp(self.memory, slot, self.holder, 0, len(tokens) - 1)
        self.tokens = tokens[:-1]
