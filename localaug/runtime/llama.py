"""What every user of llama.cpp here shares: the library's own facts, releasing what it allocated,
and the one way a batch of tokens is handed to ``llama_decode``.

A ``TokenBatch`` is filled run by run: each run is consecutive tokens of one sequence at
consecutive positions, with logits for none of them, the last one or all of them. The single
sequence engine, continuous batching, the shared-prefix cache, embeddings and the raw-decode
benchmarks all build their batches through it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, TypeVar

import llama_cpp as L

Logits = Literal["none", "last", "all"]  # which tokens of a run give logits (or embeddings)


def llama_cpp_version() -> str:
    return str(L.__version__)


def gpu_offload_supported() -> bool:
    return bool(L.llama_supports_gpu_offload())


def system_info() -> str:
    return L.llama_print_system_info().decode("utf-8", "replace").strip()


def quiet_llama(verbose: bool) -> None:
    # llama-cpp-python forwards llama.cpp's log through this logger; silence it unless asked.
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


class Closing:
    """Context-manager support for objects that own llama.cpp resources released by ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


_C = TypeVar("_C", bound=Closing)


def drop_sequence(memory: object, seq: int) -> None:
    """Remove every KV cell of sequence ``seq``."""
    L.llama_memory_seq_rm(memory, seq, -1, -1)


class TokenBatch(Closing):
    """A ``llama_batch`` of up to ``capacity`` tokens, each in one sequence, filled run by run."""

    def __init__(self, capacity: int) -> None:
        self.raw = None  # what close() frees, first
        self.capacity = capacity
        self.raw = L.llama_batch_init(capacity, 0, 1)

    @property
    def size(self) -> int:
        """Tokens in the batch now."""
        return self.raw.n_tokens

    def clear(self) -> None:
        self.raw.n_tokens = 0

    def add(self, tokens: Sequence[int], pos: int, seq: int, logits: Logits) -> int:
        """Append ``tokens`` of sequence ``seq`` at positions ``pos``, ``pos + 1``, …; the batch index
        of the last one (where its logits are read). A run that does not fit is refused whole."""
        b, start = self.raw, self.raw.n_tokens
        if start + len(tokens) > self.capacity:
            raise ValueError(f"{len(tokens)} more tokens do not fit a batch of {self.capacity} holding {start}")
        every = int(logits == "all")
        for j, tok in enumerate(tokens):
            i = start + j
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos + j, 1, every
            b.seq_id[i][0] = seq
        end = start + len(tokens)
        if logits == "last" and tokens:
            b.logits[end - 1] = 1
        b.n_tokens = end
        return end - 1

    def decode(self, ctx: object) -> int:
        """``llama_decode`` of what the batch holds: 0 on success, llama.cpp's code otherwise."""
        return L.llama_decode(ctx, self.raw)

    def close(self) -> None:
        if self.raw is not None:
            L.llama_batch_free(self.raw)
            self.raw = None
