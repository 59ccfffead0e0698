"""`localaug bench`: prefill and decode speed and time to first token, next to raw llama.cpp decode."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import llama_cpp as L

from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine
from localaug.runtime.llama import TokenBatch
from localaug.runtime.sampling import SamplingParams

# About 60 tokens of instruction text, the size of a typical refine input.
BENCH_PROMPT = (
    "Create a comprehensive travel guide for Hangzhou that covers the major attractions with a "
    "recommended three-day itinerary, local foods and restaurants, accommodation for different budgets, "
    "transport from the airport, and practical tips on seasons and etiquette."
)


@dataclass
class BenchResult:
    model: str
    threads: int
    gpu_layers: int
    load_seconds: float
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    raw_decode_tokens_per_s: float
    repeats: int

    @property
    def decode_vs_raw(self) -> float:
        return self.decode_tokens_per_s / self.raw_decode_tokens_per_s if self.raw_decode_tokens_per_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_vs_raw": round(self.decode_vs_raw, 3)}


def run_bench(engine: Engine, prompt: str, n_tokens: int = 64, repeats: int = 3) -> BenchResult:
    """Median over ``repeats`` of: our greedy generation loop, then a bare llama_decode loop."""
    tokens = engine.tokenize(prompt)
    greedy = SamplingParams(temperature=0.0, max_tokens=n_tokens)
    ttft, prefill, decode, raw = [], [], [], []
    for _ in range(repeats):
        engine.forget()  # a cold prompt every time: prefill and TTFT are measured, not the prefix cache
        gen = engine.generate(tokens, greedy, ignore_eog=True)
        ttft.append(gen.first_token_seconds)
        prefill.append(gen.stats["prefill_tokens_per_s"])
        decode.append(gen.stats["decode_tokens_per_s"])
        raw.append(engine.raw_decode_rate(tokens, n_tokens))
    return BenchResult(
        model=str(engine.path), threads=engine.threads, gpu_layers=engine.gpu_layers, load_seconds=engine.load_seconds,
        prompt_tokens=len(tokens), generated_tokens=n_tokens,
        time_to_first_token_s=statistics.median(ttft), prefill_tokens_per_s=statistics.median(prefill),
        decode_tokens_per_s=statistics.median(decode), raw_decode_tokens_per_s=statistics.median(raw), repeats=repeats,
    )


# --- throughput at batch sizes ------------------------------------------------------------------------

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
GPU_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class BatchPoint:
    """Generated tokens/s with ``parallel`` sequences at a time: localaug's continuous batching
    (sampling, stop handling and all) and a bare llama_decode loop of the same batch shape."""

    parallel: int
    tokens_per_s: float
    raw_tokens_per_s: float | None = None

    @property
    def vs_raw(self) -> float | None:
        return self.tokens_per_s / self.raw_tokens_per_s if self.raw_tokens_per_s else None


def batch_rate(batch: BatchEngine, prompt: list[int], tokens: int) -> float:
    """Generated tokens/s of ``batch.parallel`` sequences decoded together (prefill excluded).

    The sequences are the samples of one request, forked from one prefill (a KV copy): the prompt
    is decoded once, not once per sequence, and every decode step after it is the same as for
    ``parallel`` requests of that prompt."""
    greedy = SamplingParams(temperature=0.0, max_tokens=tokens)
    results = list(batch.run([Request("rate", prompt, greedy, n=batch.parallel, ignore_eog=True)]))
    first = min(r.generation.first_token_seconds + r.generation.stats["started"] for r in results if r.generation)
    done = max(r.generation.seconds + r.generation.stats["started"] for r in results if r.generation)
    generated = sum(r.generation.completion_tokens - 1 for r in results if r.generation)
    return generated / max(done - first, 1e-9)


def raw_batch_rate(engine: Engine, parallel: int, prompt: list[int], tokens: int) -> float:
    """Tokens/s of a bare llama_decode loop that decodes one token for each of ``parallel``
    sequences per call (no sampling): the ceiling of batched decoding at that shape."""
    ctx = engine.new_context((len(prompt) + tokens + 1) * parallel, n_seq_max=parallel, kv_unified=True)
    try:
        with TokenBatch(max(len(prompt), parallel)) as batch:
            for seq in range(parallel):  # the prompt in every sequence
                batch.clear()
                batch.add(prompt, 0, seq, "last")
                if batch.decode(ctx) != 0:
                    raise RuntimeError("llama_decode failed during the benchmark")
            started = time.monotonic()
            for step in range(tokens):
                batch.clear()
                for seq in range(parallel):
                    batch.add(prompt[-1:], len(prompt) + step, seq, "last")
                if batch.decode(ctx) != 0:
                    raise RuntimeError("llama_decode failed during the benchmark")
            return tokens * parallel / (time.monotonic() - started)
    finally:
        L.llama_free(ctx)


def batch_curve(engine: Engine, prompt: list[int], sizes: tuple[int, ...] = BATCH_SIZES, tokens: int = 16,
                raw: bool = True) -> list[BatchPoint]:
    """Throughput at each batch size: localaug's BatchEngine, and (``raw``) bare llama_decode."""
    points = []
    for parallel in sizes:
        with BatchEngine(engine, parallel=parallel, n_ctx=len(prompt) + tokens + 8, share_prefix=False) as batch:
            ours = batch_rate(batch, prompt, tokens)
        points.append(BatchPoint(parallel, ours, raw_batch_rate(engine, parallel, prompt, tokens) if raw else None))
    return points


def fastest(points: list[BatchPoint], tolerance: float = 0.03) -> int:
    """The batch size to run at: the smallest within ``tolerance`` of the best throughput (fewer
    sequences hold less KV memory for the same speed)."""
    best = max(p.tokens_per_s for p in points)
    return min(p.parallel for p in points if p.tokens_per_s >= best * (1 - tolerance))
