"""Text embeddings with llama.cpp's own embedding mode: the mean of a GGUF's last hidden states
over the text's tokens (a chat model or an embedding model alike), no network, no torch.

``embed_texts(engine, texts)`` returns one L2-normalised vector per text and each text's length in
tokens (tokenized once, for both). Texts are decoded many at a time as separate sequences of one
batch (their attention masked apart, so a text's vector is the one it gets alone, within float
rounding); equal texts are decoded once; a text longer than ``max_tokens`` is cut (its beginning
is embedded), so memory stays bounded whatever the input.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import llama_cpp as L
import numpy as np

from localaug.core.errors import EngineError, opt
from localaug.runtime.engine import Engine
from localaug.runtime.llama import TokenBatch

MAX_TOKENS = 256  # tokens of a text that are embedded
BATCH_TOKENS = 2048  # tokens decoded per llama_decode
MAX_SEQS = 16  # sequences per batch


@dataclass
class Embedded:
    vectors: np.ndarray  # (n, dim) float32 unit vectors, one per text
    tokens: list[int]  # each text's length in tokens (all of it, before the cut at max_tokens)


def embed_texts(engine: Engine, texts: Sequence[str], max_tokens: int = MAX_TOKENS,
                progress: Callable[[int], None] | None = None) -> Embedded:
    """Embed ``texts`` (mean pooling); ``progress(k)`` after each batch with the texts done so far."""
    distinct = list(dict.fromkeys(texts))
    toks = [engine.tokenize(t, special=False) for t in distinct]
    place = {t: i for i, t in enumerate(distinct)}
    where = [place[t] for t in texts]
    copies = np.bincount(np.asarray(where, dtype=np.int64), minlength=len(distinct)) if texts else np.zeros(0, np.int64)
    done = np.cumsum(copies).tolist()  # texts done once the first k distinct ones are
    vecs = _decode(engine, [(t or [0])[:max_tokens] for t in toks],
                   (lambda k: progress(int(done[k - 1]) if k else 0)) if progress else None)
    return Embedded(vecs[where] if texts else vecs, [len(toks[i]) for i in where])


def embed(engine: Engine, texts: Sequence[str], max_tokens: int = MAX_TOKENS,
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """An (n, dim) float32 array of unit vectors, one per text (``embed_texts`` without the lengths)."""
    return embed_texts(engine, texts, max_tokens, progress).vectors


def _decode(engine: Engine, toks: list[list[int]], progress: Callable[[int], None] | None) -> np.ndarray:
    """One unit vector per token list, decoded in batches of at most BATCH_TOKENS tokens and
    MAX_SEQS sequences (a list longer than a batch alone gets a batch of its own size)."""
    dim = engine.n_embd
    out = np.zeros((len(toks), dim), dtype=np.float32)
    size = max([BATCH_TOKENS, *map(len, toks)])
    ctx = engine.new_context(size, n_seq_max=MAX_SEQS, kv_unified=True, n_batch=size, embeddings=True)
    try:
        with TokenBatch(size) as batch:
            i = 0
            while i < len(toks):
                group, n = [], 0
                while i < len(toks) and len(group) < MAX_SEQS and (not group or n + len(toks[i]) <= BATCH_TOKENS):
                    group.append(i)
                    n += len(toks[i])
                    i += 1
                batch.clear()
                for seq, idx in enumerate(group):
                    batch.add(toks[idx], 0, seq, "all")
                L.llama_memory_clear(L.llama_get_memory(ctx), True)
                if batch.decode(ctx) != 0:
                    raise EngineError("llama_decode failed while embedding: free memory or shorten the texts")
                for seq, idx in enumerate(group):
                    ptr = L.llama_get_embeddings_seq(ctx, seq)
                    if not ptr:
                        raise EngineError(f"this GGUF gives no pooled embeddings: use another {opt('embed_model')}")
                    vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(dim,)).copy()
                    norm = float(np.linalg.norm(vec))
                    out[idx] = vec / norm if norm > 0 else vec
                if progress:
                    progress(i)
    finally:
        L.llama_free(ctx)
    return out
