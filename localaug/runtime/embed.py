"""Text embeddings with llama.cpp's own embedding mode: the mean of a GGUF's last hidden states
over the text's tokens (a chat model or an embedding model alike), no network, no torch.

``embed(engine, texts)`` returns one L2-normalised vector per text. Texts are decoded several at a
time as separate sequences of one batch; a text longer than ``max_tokens`` is cut (its beginning is
embedded), so memory stays bounded whatever the input.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import llama_cpp as L
import numpy as np

from localaug.core.errors import EngineError
from localaug.runtime.engine import Engine
from localaug.runtime.llama import TokenBatch

MAX_TOKENS = 256  # tokens of a text that are embedded
BATCH_TOKENS = 2048  # tokens decoded per llama_decode
MAX_SEQS = 16


def embed(engine: Engine, texts: Sequence[str], max_tokens: int = MAX_TOKENS,
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """An (n, dim) float32 array of unit vectors, one per text (mean pooling); ``progress(k)`` after
    each batch with the texts done so far."""
    dim = engine.n_embd
    out = np.zeros((len(texts), dim), dtype=np.float32)
    ctx = engine.new_context(BATCH_TOKENS, n_seq_max=MAX_SEQS, kv_unified=True, n_batch=BATCH_TOKENS, embeddings=True)
    try:
        with TokenBatch(BATCH_TOKENS) as batch:
            toks = [(engine.tokenize(t, special=False) or [0])[:max_tokens] for t in texts]
            i = 0
            while i < len(texts):
                group, n = [], 0
                while i < len(texts) and len(group) < MAX_SEQS and n + len(toks[i]) <= BATCH_TOKENS:
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
                        raise EngineError("this GGUF gives no pooled embeddings: use another --embed-model")
                    vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(dim,)).copy()
                    norm = float(np.linalg.norm(vec))
                    out[idx] = vec / norm if norm > 0 else vec
                if progress:
                    progress(i)
    finally:
        L.llama_free(ctx)
    return out

