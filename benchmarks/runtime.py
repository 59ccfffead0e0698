"""Single-stream generation speed: localaug vs a bare llama_decode loop vs llama-cpp-python's
create_chat_completion, side by side in one run on the same GGUF (default: Qwen2.5-Coder-1.5B Q4_K_M,
the Qwen2-1.5B stand-in fetched by fetch-test-models).

    python benchmarks/runtime.py [--model PATH] [--tokens 64] [--reps 2] [--threads 2]

Each side generates exactly --tokens tokens greedily from the same ~60-token instruction in the
Qwen2 chat format (end-of-generation tokens are suppressed so lengths match). Order alternates
A B C C B A to spread machine noise; medians are reported. Writes benchmarks/out/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from localaug.family import prompts
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(os.environ.get("LOCALAUG_TEST_MODELS", Path.home() / ".cache" / "localaug-test-models")) / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
INSTRUCTION = (
    "Create a comprehensive travel guide for Hangzhou that covers the major attractions with a recommended "
    "three-day itinerary, local foods and restaurants, accommodation for different budgets, transport from "
    "the airport, and practical tips on the best season to visit and local etiquette."
)


def bench_localaug(engine: Engine, prompt: str, n: int) -> dict[str, float]:
    gen = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=n), ignore_eog=True)
    return {"ttft_s": gen.first_token_seconds, "decode_tok_s": gen.stats["decode_tokens_per_s"],
            "prefill_tok_s": gen.stats["prefill_tokens_per_s"]}


def bench_raw(engine: Engine, prompt: str, n: int) -> dict[str, float]:
    return {"decode_tok_s": engine.raw_decode_rate(engine.tokenize(prompt), n)}


def bench_llama_cpp_python(llm, n: int) -> dict[str, float]:
    started = time.monotonic()
    first = 0.0
    count = 0
    bias = {151643: -1e9, 151645: -1e9}
    for chunk in llm.create_chat_completion([{"role": "user", "content": INSTRUCTION}], max_tokens=n, temperature=0.0,
                                            logit_bias=bias, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            count += 1
            if not first:
                first = time.monotonic() - started
    done = time.monotonic()
    # Streamed chunks can merge tokens; use the requested count, which the biased run always reaches.
    return {"ttft_s": first, "decode_tok_s": (n - 1) / max(done - started - first, 1e-9), "chunks": count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run fetch-test-models qwen25-coder-1.5b or pass --model")

    import llama_cpp

    prompt = prompts.qwen2_chatml([{"role": "user", "content": INSTRUCTION}])
    t0 = time.monotonic()
    engine = Engine(args.model, EngineOptions(threads=args.threads, n_ctx=1024))
    load_localaug = time.monotonic() - t0
    t0 = time.monotonic()
    llm = llama_cpp.Llama(str(args.model), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
                          chat_format="chatml")
    load_lcp = time.monotonic() - t0

    runs: dict[str, list[dict[str, float]]] = {"localaug": [], "raw llama_decode": [], "llama-cpp-python": []}
    sides = {
        "localaug": lambda: bench_localaug(engine, prompt, args.tokens),
        "raw llama_decode": lambda: bench_raw(engine, prompt, args.tokens),
        "llama-cpp-python": lambda: bench_llama_cpp_python(llm, args.tokens),
    }
    order = list(sides)
    for rep in range(args.reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            runs[name].append(sides[name]())
            print(f"rep {rep} {name}: {runs[name][-1]}", flush=True)

    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in runs[name] if key in r]
        return statistics.median(vals) if vals else None

    result = {
        "model": str(args.model), "threads": args.threads, "tokens": args.tokens, "reps": args.reps,
        "prompt_tokens": len(engine.tokenize(prompt)),
        "load_s": {"localaug": load_localaug, "llama-cpp-python": load_lcp},
        "median": {n: {k: med(n, k) for k in ("decode_tok_s", "ttft_s", "prefill_tok_s")} for n in runs},
        "runs": runs,
    }
    raw = result["median"]["raw llama_decode"]["decode_tok_s"]
    ours = result["median"]["localaug"]["decode_tok_s"]
    lcp = result["median"]["llama-cpp-python"]["decode_tok_s"]
    result["ratios"] = {"localaug / raw": ours / raw, "localaug / llama-cpp-python": ours / lcp}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("prompt_tokens", "load_s", "median", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
