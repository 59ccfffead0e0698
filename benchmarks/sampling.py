"""The per-token cost of sampling: llama.cpp's ``llama_sampler_sample`` (a candidate array of the
whole vocabulary per sequence per token) next to ``sampling.pick`` (an argmax for greedy; a top-k
chain on the few logits that can reach its top k), on real logits of shape [B, n_vocab].

    python benchmarks/sampling.py --model qwen2.5-1.5b-instruct-q4_k_m.gguf [--batch 16] [--steps 30]
    python benchmarks/sampling.py --model MODEL.gguf --rows 200 [--max-tokens 32] [--parallel 8]

The first form decodes B prompts once and samples their logits ``--steps`` times each way, in
the order A B B A; the tokens of both ways are compared. The second runs ``--rows`` requests
through the batch engine twice each way (A B B A), sampling with ``pick`` or with
``llama_sampler_sample``, and reports the whole run's seconds and the share spent sampling.
Every figure is printed with the load average (``os.getloadavg``) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import llama_cpp as L

import localaug.runtime.batch as batch_module
from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import TokenBatch
from localaug.runtime.sampling import SamplingParams, make_sampler, pick, shortcut

SETTINGS = {"greedy": SamplingParams(temperature=0.0),
            "top_k50_p0.95_t0.7": SamplingParams(temperature=0.7, top_k=50, top_p=0.95, seed=1)}
PROMPTS = ["Write a short haiku about the sea.", "List three uses of a paperclip.", "Explain photosynthesis simply.",
           "Translate 'good morning' into French.", "Give a tip for learning to code."]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def micro(engine: Engine, batch: int, steps: int) -> None:
    ctx = engine.new_context(64 * batch, n_seq_max=batch, kv_unified=True)
    try:
        prompts = [engine.tokenize(PROMPTS[s % len(PROMPTS)] + f" ({s})") for s in range(batch)]
        with TokenBatch(sum(map(len, prompts))) as b:
            idx = [b.add(p, 0, s, "last") for s, p in enumerate(prompts)]
            assert b.decode(ctx) == 0
        for name, p in SETTINGS.items():
            how, times, tokens = shortcut(p), {"llama_sampler_sample": [], "pick": []}, {}
            for way in ("llama_sampler_sample", "pick", "pick", "llama_sampler_sample"):
                chains = [make_sampler(p, engine.n_vocab) for _ in range(batch)]  # the same seeds each way
                drawn = []
                started = time.perf_counter()
                for _ in range(steps):
                    for s in range(batch):
                        if way == "pick":
                            drawn.append(pick(chains[s], how, ctx, idx[s], engine.n_vocab))
                        else:
                            drawn.append(L.llama_sampler_sample(chains[s], ctx, idx[s]))
                times[way].append((time.perf_counter() - started) / (steps * batch) * 1e3)
                tokens.setdefault(way, drawn)
                for c in chains:
                    L.llama_sampler_free(c)
            best = {w: min(t) for w, t in times.items()}
            print(json.dumps({"setting": name, "shape": [batch, engine.n_vocab], "ms_per_sequence_token": best,
                              "all_ms": times, "speedup": round(best["llama_sampler_sample"] / best["pick"], 1),
                              "same_tokens": tokens["pick"] == tokens["llama_sampler_sample"], "load": load()}), flush=True)
    finally:
        L.llama_free(ctx)


def rows(engine: Engine, n_rows: int, max_tokens: int, parallel: int) -> None:
    """A run of ``n_rows`` requests each way; the seconds inside the sampler counted apart."""
    real_pick = batch_module.pick

    def full(chain: object, how: int, ctx: object, idx: int, n_vocab: int) -> int:
        return L.llama_sampler_sample(chain, ctx, idx)

    for name, p in SETTINGS.items():
        p = SamplingParams(**{**p.__dict__, "max_tokens": max_tokens})
        requests = [Request(str(i), PROMPTS[i % len(PROMPTS)] + f" ({i})", p, ignore_eog=True) for i in range(n_rows)]
        for way, fn in (("llama_sampler_sample", full), ("pick", real_pick), ("pick", real_pick),
                        ("llama_sampler_sample", full)):
            spent = [0.0, 0]

            def timed(*args, fn=fn):
                t = time.perf_counter()
                tok = fn(*args)
                spent[0] += time.perf_counter() - t
                spent[1] += 1
                return tok

            batch_module.pick = timed
            try:
                with BatchEngine(engine, parallel=parallel, n_ctx=128) as batch:
                    before, started = load(), time.perf_counter()
                    results = list(batch.run(requests))
                    seconds = time.perf_counter() - started
            finally:
                batch_module.pick = real_pick
            print(json.dumps({"setting": name, "way": way, "rows": n_rows, "ok": sum(r.ok for r in results),
                              "seconds": round(seconds, 2), "sampling_s": round(spent[0], 2), "samples": spent[1],
                              "ms_per_sample": round(spent[0] / max(spent[1], 1) * 1e3, 3), "load_before": before,
                              "load_after": load()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=0, help="run this many requests through the batch engine instead")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    with Engine(args.model, EngineOptions(threads=args.threads), context=False) as engine:
        if args.rows:
            rows(engine, args.rows, args.max_tokens, args.parallel)
        else:
            micro(engine, args.batch, args.steps)


if __name__ == "__main__":
    main()
