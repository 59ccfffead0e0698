"""One generation's tokens -> its text: stop handling, UTF-8-safe streaming, the finished Generation.

Shared by the single-sequence ``Engine`` and the batch engine's ``Slots``, so both finish and cut
text identically.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    seconds: float
    first_token_seconds: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Piece:
    """Streamed text of one sample: new text that no stop string can still cut."""

    id: str
    index: int
    text: str


class Vocabulary(Protocol):
    """What a TextStream needs of a loaded model (``Engine``)."""

    def control_stop_ids(self, stop: Sequence[str]) -> dict[int, str]: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int, special: bool = False) -> bytes: ...


class TextStream:
    """One generation's tokens -> text: end-of-generation and stop handling, UTF-8-safe incremental
    detokenisation, and holding back text that could still turn into a stop string.

    Stop strings are matched in the decoded text, across token boundaries: ``"\\n"`` stops at the
    newline inside a merged token such as ``"],\\n\\n"``, and the text is cut just before the
    stop string (OpenAI's ``stop``). A stop string that is one control token (``<|im_end|>``) is
    matched by its id instead, because control tokens decode to no text."""

    def __init__(self, vocab: Vocabulary, stop: Sequence[str], ignore_eog: bool = False) -> None:
        self._vocab = vocab
        self._ignore_eog = ignore_eog
        self._stop_ids = vocab.control_stop_ids(stop)
        self._text_stops = tuple(s for s in stop if s and s not in self._stop_ids.values())
        self._hold = max((len(s) - 1 for s in self._text_stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens: list[int] = []
        self.text = ""
        self.finish: Literal["stop", "length"] = "length"
        self._emitted = 0

    def push(self, tok: int) -> bool:
        """Take one sampled token; True when it ends the generation (an end-of-generation or
        control stop token is then not kept; a text stop keeps its token and cuts the text)."""
        if not self._ignore_eog and (self._vocab.is_eog(tok) or tok in self._stop_ids):
            self.finish = "stop"
            return True
        self.tokens.append(tok)
        # only text that the new piece could complete a stop string in needs searching
        start = max(0, len(self.text) - self._hold)
        self.text += self._decoder.decode(self._vocab.piece(tok))
        cut = self._find_stop(start)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"
            return True
        return False

    def _find_stop(self, start: int) -> int:
        found = [i for i in (self.text.find(s, start) for s in self._text_stops) if i >= 0]
        return min(found, default=-1)

    def safe_piece(self) -> str:
        """New text that no stop string can still cut ("" if none)."""
        safe = len(self.text) - self._hold
        if safe <= self._emitted:
            return ""
        piece, self._emitted = self.text[self._emitted : safe], safe
        return piece

    def end_of_length(self) -> None:
        """max_tokens reached: flush a trailing incomplete UTF-8 sequence."""
        self.text += self._decoder.decode(b"", final=True)

    def rest(self) -> str:
        piece, self._emitted = self.text[self._emitted :], len(self.text)
        return piece

    def generation(self, prompt_tokens: int, started: float, first: float, prefill_seconds: float,
                   cached: int = 0) -> Generation:
        """The finished generation; ``cached`` prompt tokens came from a cached prefix (not decoded)."""
        done = time.monotonic()
        n_gen = len(self.tokens)
        return Generation(
            text=self.text,
            tokens=self.tokens,
            finish_reason=self.finish,
            prompt_tokens=prompt_tokens,
            seconds=done - started,
            first_token_seconds=first,
            stats={
                "prefill_tokens_per_s": (prompt_tokens - cached) / max(prefill_seconds, 1e-9),
                "started": started,  # time.monotonic() at the start (for throughput over many generations)
                "cached_prompt_tokens": float(cached),
                "decode_tokens_per_s": max(n_gen - 1, 0) / max(done - started - first, 1e-9) if n_gen > 1 else 0.0,
            },
        )
