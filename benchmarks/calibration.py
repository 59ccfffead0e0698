"""How long the batch-size calibration takes, and what it chooses: the current measurement (one
request of ``parallel`` samples forked from one prefill) next to the previous one (``parallel``
requests, each prompt prefilled), alternating A B B A in one process.

    python benchmarks/calibration.py --model MODEL.gguf [--rounds 2] [--threads N]

Prints one JSON line per measurement and a summary (seconds, chosen size, curve) with the load
average; the figures in docs/benchmarks.md come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from localaug.runtime import bench
from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.bench import BATCH_SIZES, BatchPoint, fastest
from localaug.runtime.calibrate import CALIBRATION_PROMPT, CALIBRATION_TOKENS
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams


def previous_batch_rate(batch: BatchEngine, prompt: list[int], tokens: int) -> float:
    """The measurement before the fork: ``parallel`` requests of the prompt, each prefilled."""
    greedy = SamplingParams(temperature=0.0, max_tokens=tokens)
    results = list(batch.run([Request(str(i), prompt, greedy, ignore_eog=True) for i in range(batch.parallel)]))
    first = min(r.generation.first_token_seconds + r.generation.stats["started"] for r in results if r.generation)
    done = max(r.generation.seconds + r.generation.stats["started"] for r in results if r.generation)
    return sum(r.generation.completion_tokens - 1 for r in results if r.generation) / max(done - first, 1e-9)


def curve(engine: Engine, prompt: list[int], rate, tokens: int) -> list[BatchPoint]:
    points = []
    for parallel in BATCH_SIZES:
        with BatchEngine(engine, parallel=parallel, n_ctx=len(prompt) + tokens + 8, share_prefix=False) as batch:
            points.append(BatchPoint(parallel, rate(batch, prompt, tokens)))
    return points


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=CALIBRATION_TOKENS)
    args = ap.parse_args()
    ways = {"previous": previous_batch_rate, "forked": bench.batch_rate}
    with Engine(args.model, EngineOptions(threads=args.threads), context=False) as engine:
        prompt = engine.tokenize(CALIBRATION_PROMPT)
        order = [w for _ in range(args.rounds) for w in ("previous", "forked", "forked", "previous")][: 2 * args.rounds]
        for way in order:
            load = os.getloadavg()
            started = time.monotonic()
            points = curve(engine, prompt, ways[way], args.tokens)
            seconds = time.monotonic() - started
            print(json.dumps({"way": way, "seconds": round(seconds, 2), "chosen": fastest(points),
                              "curve": {p.parallel: round(p.tokens_per_s, 1) for p in points},
                              "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()]}),
                  flush=True)


if __name__ == "__main__":
    main()
