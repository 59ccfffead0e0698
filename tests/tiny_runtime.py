"""Helpers of the fast runtime tests: token-list prompts and the expected tokens of a fresh engine.

The tiny F32 Qwen2 fixture with an F32 KV cache decodes many sequences in one context exactly as it
decodes each prompt alone, so the reference for anything the batch engine or the scheduler
generates is ``Engine.generate`` on a cleared context.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import llama_cpp as L
from fixture_cache import cache_root, fingerprint

import localaug.runtime.engine as engine_module
import localaug.runtime.sampling as sampling_module
import localaug.runtime.stream as stream_module
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation

OPTS = EngineOptions(threads=1, n_ctx=256, kv_f32=True)
HOT = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_tokens=3, seed=7)  # samples that differ
HOT2 = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_tokens=2, seed=7)

Fresh = Callable[..., Generation]


def greedy(max_tokens: int = 2, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def toks(seed: int, n: int) -> list[int]:
    """``n`` random ordinary token ids (no control tokens), the same for a seed."""
    rnd = random.Random(seed)
    return [rnd.randrange(300, 100_000) for _ in range(n)]


def make_fresh(engine: Engine) -> Fresh:
    """fresh(tokens, sampling, stop, ignore_eog) -> the Generation of ``engine`` decoding the whole
    prompt from an empty KV cache.

    Memoised, and kept on disk beside the cached fixtures (tests/fixture_cache.py) under a key of the
    model file, the engine's source and llama.cpp's version: mutation testing starts a pytest per
    mutant of the batch engine or the scheduler, and these expected values do not depend on them."""
    memo: dict[str, Generation] = {}
    store = _reference_file(engine)
    if store is not None and store.is_file():
        with contextlib.suppress(ValueError, OSError):
            memo.update({k: Generation(**g) for k, g in json.loads(store.read_text(encoding="utf-8")).items()})

    def get(tokens: list[int], sampling: SamplingParams | None = None, stop: Iterable[str] = (),
            ignore_eog: bool = False) -> Generation:
        sampling = sampling or greedy()
        key = repr((list(tokens), sampling, list(stop), ignore_eog))
        if key not in memo:
            engine.forget()
            memo[key] = engine.generate(list(tokens), sampling, tuple(stop), ignore_eog)
            if store is not None:
                _save(store, key, memo[key])
        return memo[key]

    return get


def _reference_file(engine: Engine) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    st = engine.path.stat()  # a hard link of the cached build: its mtime names the build
    # the modules that make a single-sequence generation; not runtime/llama.py, whose TokenBatch the
    # batch tests pin under mutation: its mutants must meet references made by the code as it was
    sources = [Path(m.__file__) for m in (engine_module, sampling_module, stream_module)]
    key = fingerprint(sources, [st.st_size, st.st_mtime_ns, L.__version__, engine.opts])
    return root / f"references-{key[:20]}.json"


def _save(store: Path, key: str, gen: Generation) -> None:
    """Add one reference (written atomically; a concurrent writer's entries may be lost, not mixed)."""
    try:
        data = json.loads(store.read_text(encoding="utf-8")) if store.is_file() else {}
    except (ValueError, OSError):
        data = {}
    data[key] = {"text": gen.text, "tokens": gen.tokens, "finish_reason": gen.finish_reason,
                 "prompt_tokens": gen.prompt_tokens, "seconds": 0.0, "first_token_seconds": 0.0}
    tmp = store.with_name(f".{store.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, store)


def kv(batch: BatchEngine, seq: int) -> tuple[int, int]:
    """(first, last) position the KV cache holds for sequence ``seq``; (-1, -1) when empty."""
    return L.llama_memory_seq_pos_min(batch.memory, seq), L.llama_memory_seq_pos_max(batch.memory, seq)


def assert_slots_empty(batch: BatchEngine) -> None:
    assert [kv(batch, s) for s in range(batch.parallel)] == [(-1, -1)] * batch.parallel
