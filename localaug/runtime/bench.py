"""`localaug bench`: prefill and decode speed and time to first token, next to raw llama.cpp decode."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from localaug.runtime.engine import Engine, SamplingParams

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
