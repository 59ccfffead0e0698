"""Does batching change results? Greedy outputs of BatchEngine (continuous batching, N sequences in
one llama.cpp context) vs the single-sequence Engine, on the same prompts and model.

    python benchmarks/agreement.py [--model PATH] [--rows 32] [--max-tokens 64] [--parallel 8] [--threads 2] [--kv-f32]
    python benchmarks/agreement.py --compare prefix [...]

``--compare prefix`` asks the same of prefix sharing: BatchEngine with the shared-prefix KV cache
(the default) vs BatchEngine with ``share_prefix=False``, on teacher-mode refine prompts (the
~350-token fixed system prompt and examples, then the row's own instruction), same batch size.

Both sides load the same GGUF with the same options (F16 KV cache and llama.cpp's default
attention, as `localaug run` uses; ``--kv-f32`` switches both to the F32 reference mode without
flash attention) and decode the same family refine prompts (Qwen2 ChatML) greedily. Reported: rows
whose token sequences are identical, and for the others the position of the first different token
and the single engine's top-2 logit margin there (a small margin means a near tie that float
rounding can flip). Writes benchmarks/out/agreement.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
from pathlib import Path

import llama_cpp as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import DEFAULT_MODEL, INSTRUCTIONS, ROOT, prompt_strings  # noqa: E402

from localaug.family import prompts  # noqa: E402
from localaug.runtime.batch import BatchEngine, Request  # noqa: E402
from localaug.runtime.engine import Engine, EngineOptions, SamplingParams  # noqa: E402


def margin_at(engine: Engine, prompt: list[int], prefix: list[int]) -> float:
    """Top-1 minus top-2 logit of the single engine after ``prompt + prefix`` (one fresh decode)."""
    ctx = engine.new_context(len(prompt) + len(prefix) + 8)
    try:
        toks = (ctypes.c_int32 * (len(prompt) + len(prefix)))(*prompt, *prefix)  # kept alive through the decode
        if L.llama_decode(ctx, L.llama_batch_get_one(toks, len(toks))) != 0:
            return float("nan")
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(engine.n_vocab,))
        top = np.sort(logits)[-2:]
        return float(top[1] - top[0])
    finally:
        L.llama_free(ctx)


def run_batch(engine: Engine, chat: list[str], stop: list[str], greedy: SamplingParams, parallel: int,
              share: bool) -> list[list[int]]:
    with BatchEngine(engine, parallel=parallel, n_ctx=1024, share_prefix=share) as batch:
        got = {r.id: r.generation.tokens for r in batch.run(Request(str(i), c, greedy, stop)
                                                            for i, c in enumerate(chat)) if r.generation}
    return [got[str(i)] for i in range(len(chat))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--kv-f32", action="store_true")
    ap.add_argument("--compare", choices=("batch", "prefix"), default="batch",
                    help="batch: BatchEngine vs Engine on ChatML prompts; prefix: shared vs unshared prefix KV "
                         "on teacher prompts")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run fetch-test-models qwen25-coder-1.5b or pass --model")

    rows = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.rows)]
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    engine = Engine(args.model, EngineOptions(threads=args.threads, n_ctx=1024, kv_f32=args.kv_f32))
    if args.compare == "prefix":
        chat, stop = prompt_strings(argparse.Namespace(model=args.model), "teacher", rows)
        single, batched = (run_batch(engine, chat, stop, greedy, args.parallel, share) for share in (False, True))
        labels = ("unshared", "shared")
    else:
        chat, stop = [prompts.family_prompt("qwen2-chatml", t) for t in rows], list(prompts.QWEN2_STOP)
        single = [engine.generate(c, greedy, stop).tokens for c in chat]
        batched = run_batch(engine, chat, stop, greedy, args.parallel, True)
        labels = ("single", "batched")
    diffs = []
    for i, (a, b) in enumerate(zip(single, batched)):
        if a == b:
            continue
        k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        diffs.append({"row": i, "first_diff": k, "single_len": len(a), "batched_len": len(b),
                      "margin": margin_at(engine, engine.tokenize(chat[i]), a[:k])})
    engine.close()
    same = len(rows) - len(diffs)
    summary = {"model": str(args.model), "compare": f"{labels[1]} vs {labels[0]}", "rows": len(rows), "max_tokens": args.max_tokens, "parallel": args.parallel,
               "kv": "f32, no flash attention" if args.kv_f32 else "f16 (default)", "identical_rows": same,
               "agreement": same / len(rows), "differences": diffs,
               "median_margin_at_first_diff": statistics.median(d["margin"] for d in diffs) if diffs else None}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"agreement-{args.compare}-p{args.parallel}{'-f32' if args.kv_f32 else ''}.json"
    (args.out / name).write_text(json.dumps(summary, indent=2))
    print(f"{labels[1]} vs {labels[0]}: identical greedy outputs: {same}/{len(rows)} ({same / len(rows):.0%}), KV {summary['kv']}")
    for d in diffs:
        print(f"  row {d['row']}: first different token at {d['first_diff']} of {d['single_len']}, "
              f"top-2 margin there {d['margin']:.3f}")


if __name__ == "__main__":
    main()
