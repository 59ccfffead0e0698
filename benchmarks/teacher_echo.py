"""Teacher-mode expand: how many samples copy an in-context example, before and after a change.

    python benchmarks/teacher_echo.py --before-tree DIR [--model PATH] [--samples 4] [--threads 2]

For each of 50 varied seed instructions (English and Chinese: writing, coding, maths, advice,
extraction, planning, the README's own examples), each localaug tree builds its teacher-mode
expand prompt for the model (``styles.build_prompt``) and ``--samples`` samples are drawn (seed
0..k-1, temperature 0.7, 64 new tokens, the batching engine). Every sample is then judged the same
way for both trees: an *echo of an example* when its ROUGE-L against any text of the in-context
examples that tree's prompt showed is at least 0.7 (localaug's near-duplicate threshold), an *echo
of the input* when it is that close to the seed. ``--before-tree`` is a checkout of an earlier
localaug (e.g. ``git worktree add /tmp/before <commit>``); the current tree is this one. Writes
benchmarks/out/teacher-echo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(os.environ.get("LOCALAUG_TEST_MODELS", Path.home() / ".cache" / "localaug-test-models")) / \
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

SEEDS = [
    "Plan an in-depth tour itinerary of France that includes Paris, Lyon, and Provence.",
    "Create a travel guide for Hangzhou.",
    "Describe a classic road-trip itinerary along the California coastline in the United States.",
    "Write a Python function that removes duplicates from a list while keeping the order.",
    "Explain the difference between a process and a thread.",
    "Write a SQL query that finds the top five customers by total spending.",
    "How do I center a div horizontally and vertically with CSS?",
    "Solve for x: 2x^2 - 8 = 0.",
    "What is the probability of rolling two sixes with two dice?",
    "Prove that the square root of 2 is irrational.",
    "Give me tips for staying productive while working from home.",
    "How should I prepare for a job interview at a startup?",
    "What are good habits for managing personal finances in your twenties?",
    "Extract all email addresses from the following text.",
    "Summarize the plot of Pride and Prejudice in one paragraph.",
    "Translate 'Where is the train station?' into Spanish and French.",
    "Write a haiku about the first snow of winter.",
    "Write a short story about a robot who learns to paint.",
    "Draft a polite email declining a meeting invitation.",
    "Explain how photosynthesis works to a ten-year-old.",
    "What causes the seasons on Earth?",
    "Compare renewable and non-renewable energy sources.",
    "List the main features of the Renaissance period.",
    "Create a weekly meal plan for a vegetarian athlete.",
    "Design a beginner's three-day-a-week strength training program.",
    "Write a product description for a waterproof hiking backpack.",
    "Write a cover letter for a junior data analyst position.",
    "Explain what a neural network is in simple terms.",
    "How does public-key cryptography work?",
    "Write a bash script that backs up a folder every night.",
    "Give three arguments for and against school uniforms.",
    "Describe the water cycle.",
    "Suggest names for a coffee shop by the sea.",
    "What should I pack for a week-long camping trip?",
    "Explain the rules of chess for a complete beginner.",
    "写一首关于秋天的诗。",
    "解释一下光合作用的过程。",
    "如何提高英语口语水平？",
    "用 Python 写一个计算斐波那契数列的函数。",
    "请介绍一下中国的四大发明。",
    "给一位即将毕业的大学生写一封鼓励信。",
    "总结一下《西游记》的主要情节。",
    "如何制定一个合理的减肥计划？",
    "解释什么是区块链技术。",
    "请列出去北京旅游必去的五个景点。",
    "一个数的三倍加上五等于二十，求这个数。",
    "写一段关于保护环境的演讲开场白。",
    "比较一下高铁和飞机出行的优缺点。",
    "如何培养孩子的阅读习惯？",
    "从下面的文章中提取所有的人名和地名。",
]
THRESHOLD = 0.7


def _shown(style, seed: str) -> list[str]:
    """The example texts this tree's prompt for ``seed`` shows."""
    from localaug.family import prompts, styles

    if hasattr(styles, "examples_for"):
        return [t for ex in styles.examples_for(style, "expand", seed) for t in ex]
    return [t for ex in prompts.TEACHER_EXAMPLES["expand"] for t in ex]  # before: every example, always


def run_tree(args: argparse.Namespace) -> dict:
    from localaug.augment import filters
    from localaug.augment.resolve import resolve_style
    from localaug.family import styles
    from localaug.runtime.backend import Request
    from localaug.runtime.batch import BatchEngine
    from localaug.runtime.engine import Engine, EngineOptions
    from localaug.runtime.sampling import SamplingParams

    style = resolve_style(args.model).style
    assert not style.is_family, "a teacher-mode (non-family) model is needed"
    engine = Engine(args.model, EngineOptions(threads=args.threads), context=False)
    requests, shown = [], {}
    for i, seed in enumerate(SEEDS):
        shown[i] = _shown(style, seed)
        prompt = styles.build_prompt(style, "expand", seed)
        requests.append(Request(str(i), prompt, SamplingParams(temperature=0.7, top_p=0.95, top_k=50, max_tokens=64,
                                                                seed=0), style.stop, args.samples))
    counts = {"samples": 0, "echo_of_example": 0, "echo_of_input": 0, "truncated": 0}
    per_seed = []
    with BatchEngine(engine, parallel=16, n_ctx=1024) as batch:
        for r in batch.run(requests):
            i = int(r.id)
            counts["samples"] += 1
            if r.generation is None or r.generation.finish_reason == "length":
                counts["truncated"] += 1
                continue
            text = str(styles.parse_reply(style, "expand", r.generation.text))
            example = max((filters.rouge_l(text, t) for t in shown[i]), default=0.0) >= THRESHOLD
            echo = filters.rouge_l(text, SEEDS[i]) >= THRESHOLD
            counts["echo_of_example"] += example
            counts["echo_of_input"] += echo and not example
            per_seed.append({"seed": i, "sample": r.index, "text": text, "echo_of_example": example, "echo_of_input": echo})
    engine.close()
    return {"counts": counts, "share_echo_of_example": counts["echo_of_example"] / counts["samples"],
            "share_echo_of_input": counts["echo_of_input"] / counts["samples"], "samples": per_seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--before-tree", type=Path, help="a checkout of the localaug to compare with")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_tree(args), ensure_ascii=False))
        return
    trees = {"before": args.before_tree, "after": ROOT} if args.before_tree else {"after": ROOT}
    results = {}
    for name, tree in trees.items():
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
        cmd = [sys.executable, __file__, "--child", "--model", str(args.model), "--samples", str(args.samples),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: {proc.stderr[-2000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        c = results[name]["counts"]
        print(f"{name}: {c['samples']} samples, echo of an example {c['echo_of_example']} "
              f"({results[name]['share_echo_of_example']:.1%}), echo of the input {c['echo_of_input']}, "
              f"cut at 64 tokens {c['truncated']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(args.model), "seeds": len(SEEDS), "samples_per_seed": args.samples, "threshold": THRESHOLD,
               "loadavg": os.getloadavg(), "results": results}
    (args.out / "teacher-echo.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
