"""Batch throughput: `localaug run refine --parallel N` (continuous batching) vs a plain loop over
llama-cpp-python, side by side in one run on the same GGUF and prompts (default model:
Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the Qwen2-1.5B stand-in fetched by fetch-test-models).

    python benchmarks/throughput.py [--model PATH] [--rows 64] [--max-tokens 64] [--parallel 8] [--threads 2] [--rounds 2]

Both sides answer the same rows (64 realistic instructions, English and Chinese) with the same
prompt string (the family's Qwen2 ChatML refine prompt, which `localaug run --prompt-format
qwen2-chatml` builds), the same sampling (temperature 0.5, top_p 0.95, top_k 50, min_p 0, fixed
seeds) and the same limit of new tokens, stopping at end of turn.

- baseline: one `llama_cpp.Llama` and a loop of `create_completion` over the rows, in this process;
- localaug: the real command, `localaug run refine --input rows.jsonl --output out.jsonl --parallel N`,
  as a child process: its wall time includes start-up and model load, its tokens come from the
  run manifest, its CPU time from the child's rusage.

Rounds alternate the order (baseline first, then localaug first, ...) so drift of a shared machine
hits both. Reported per side (median over rounds): rows/s, output tokens/s and CPU utilisation =
CPU time / wall / cores. Writes benchmarks/out/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from localaug.family import prompts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(os.environ.get("LOCALAUG_TEST_MODELS", Path.home() / ".cache" / "localaug-test-models")) / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

INSTRUCTIONS = [
    "Create a travel guide for Hangzhou.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between TCP and UDP to a new network engineer.",
    "Summarize the main causes of the French Revolution in five bullet points.",
    "Draft a polite email asking my landlord to fix a leaking kitchen tap.",
    "Give me a weekly meal plan for a vegetarian athlete.",
    "What are the pros and cons of remote work for small startups?",
    "Write a SQL query that returns the top five customers by total order value.",
    "Explain how a hash map handles collisions.",
    "Suggest ten names for a coffee shop near a university campus.",
    "Describe the water cycle for a ten-year-old.",
    "Write a short poem about autumn rain in the city.",
    "How do I set up a Python virtual environment on Windows?",
    "Compare electric cars and hybrid cars for a family of four.",
    "Outline a 30-minute beginner workout that needs no equipment.",
    "Explain what a p-value means in plain language.",
    "Write a bash script that backs up a folder to a dated tar.gz archive.",
    "List the key steps to prepare for a job interview at a tech company.",
    "What should I check before buying a used laptop?",
    "Explain recursion with a simple example in JavaScript.",
    "Write a product description for a stainless steel water bottle.",
    "Plan a three-day itinerary for first-time visitors to Kyoto.",
    "How does compound interest work? Give a numeric example.",
    "Write unit tests for a function that merges two sorted lists.",
    "Explain the greenhouse effect and its impact on global temperatures.",
    "Give tips for keeping houseplants alive in a dark apartment.",
    "Write a cover letter opening paragraph for a data analyst position.",
    "What is the difference between a process and a thread?",
    "Create a study schedule for learning basic Spanish in two months.",
    "Explain how vaccines train the immune system.",
    "Write a regular expression that validates an email address and explain it.",
    "Describe three strategies for resolving conflict within a team.",
    "写一份杭州三日游的旅游攻略。",
    "用简单的语言解释什么是区块链。",
    "写一个Python函数，计算列表中所有偶数的和。",
    "列出提高睡眠质量的五个方法。",
    "给一家新开的奶茶店写一段宣传文案。",
    "解释一下机器学习中的过拟合以及如何避免。",
    "写一封向客户道歉延迟发货的邮件。",
    "介绍一下中国四大发明及其影响。",
    "如何在家中做一道正宗的宫保鸡丁？",
    "比较一下Java和Go在后端开发中的优缺点。",
    "为大学新生写一份时间管理建议。",
    "解释光合作用的过程，适合初中生理解。",
    "写一首关于春天的现代诗。",
    "如何用Excel制作一个月度预算表？",
    "总结《红楼梦》的主要人物关系。",
    "给出五个适合团队建设的室内活动。",
    "解释HTTP状态码404和500的区别。",
    "写一个SQL语句，查询每个部门工资最高的员工。",
    "介绍一下如何准备马拉松比赛。",
    "用通俗的语言解释通货膨胀对普通人的影响。",
    "为一款智能手表写产品介绍。",
    "列出学习编程时常见的五个误区。",
    "如何给小学生讲解分数的加法？",
    "写一段Linux命令，统计一个目录下所有文件的行数。",
    "解释一下什么是微服务架构，以及它适合什么场景。",
    "推荐五本适合初学者的经济学书籍并说明理由。",
    "写一个关于环保的三分钟演讲开头。",
    "描述一下如何在面试中回答“你最大的缺点是什么”。",
    "解释JavaScript中的闭包，并给出一个例子。",
    "为一次家庭露营列一份装备清单。",
    "如何提高英语口语的流利度？",
    "写一个故事开头：一位程序员在深夜发现了一个神秘的bug。",
]
assert len(INSTRUCTIONS) == 64
SAMPLING = dict(temperature=0.5, top_p=0.95, top_k=50, min_p=0.0, repeat_penalty=1.0)


def cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def result(wall: float, cpu: float, rows: int, tokens: int) -> dict[str, float]:
    cores = os.cpu_count() or 1
    return {"wall_s": wall, "rows": rows, "tokens": tokens, "tokens_per_s": tokens / wall, "rows_per_s": rows / wall,
            "cpu_s": cpu, "cpu_utilisation": cpu / wall / cores}


def run_baseline(args: argparse.Namespace, rows: list[str]) -> dict[str, float]:
    import llama_cpp

    c0, t0 = cpu_self(), time.monotonic()
    llm = llama_cpp.Llama(str(args.model), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    tokens = 0
    for i, text in enumerate(rows):
        prompt = prompts.family_prompt("qwen2-chatml", text)
        out = llm.create_completion(prompt, max_tokens=args.max_tokens, stop=list(prompts.QWEN2_STOP), seed=args.seed + i,
                                    **SAMPLING)
        tokens += out["usage"]["completion_tokens"]
    del llm
    return result(time.monotonic() - t0, cpu_self() - c0, len(rows), tokens)


def run_localaug(args: argparse.Namespace, src: Path, work: Path, parallel: int) -> dict[str, float]:
    out = work / f"out-{parallel}.jsonl"
    for p in work.glob(f"out-{parallel}.jsonl*"):
        p.unlink()
    cmd = [sys.executable, "-m", "localaug.cli", "run", "refine", "--input", str(src), "--output", str(out),
           "--model", str(args.model), "--prompt-format", "qwen2-chatml", "--parallel", str(parallel),
           "--threads", str(args.threads), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
           "--temperature", "0.5", "--top-p", "0.95", "--top-k", "50", "--ctx", "1024"]
    c0, t0 = cpu_children(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LOCALAUG_HOME": str(work / "home")})
    wall, cpu = time.monotonic() - t0, cpu_children() - c0
    if proc.returncode != 0:
        raise SystemExit(f"localaug run failed: {proc.stderr.strip()}")
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    return result(wall, cpu, manifest["counts"]["rows"], manifest["tokens"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, nargs="+", default=[8])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (baseline first, then localaug first, ...)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run fetch-test-models qwen25-coder-1.5b or pass --model")

    rows = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.rows)]
    work = args.out / "throughput-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "rows.jsonl"
    src.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")

    sides = ["llama-cpp-python loop", *(f"localaug run --parallel {p}" for p in args.parallel)]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for side in order:
            if side == sides[0]:
                r = run_baseline(args, rows)
            else:
                r = run_localaug(args, src, work, int(side.rsplit(" ", 1)[1]))
            r["loadavg_1min_after"] = os.getloadavg()[0]  # other work on the machine shows here
            runs[side].append(r)
            print(f"round {rnd + 1} {side}: {r['tokens_per_s']:.1f} tok/s, {r['rows_per_s']:.3f} rows/s, "
                  f"CPU {r['cpu_utilisation']:.0%}, {r['wall_s']:.1f} s", flush=True)

    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    base = med[sides[0]]["tokens_per_s"]
    for s in sides:
        med[s]["speedup_tokens_per_s"] = med[s]["tokens_per_s"] / base
        med[s]["speedups_per_round"] = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(runs[s], runs[sides[0]])]
    summary = {
        "model": str(args.model), "rows": args.rows, "max_tokens": args.max_tokens, "threads": args.threads,
        "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
        "sampling": {**SAMPLING, "seed": args.seed}, "median": med, "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print("| side | rows/s | output tok/s | vs loop (per round) | CPU util | wall s | tokens |")
    print("|---|---|---|---|---|---|---|")
    for name, r in med.items():
        per = ", ".join(f"{x:.2f}" for x in r["speedups_per_round"])
        print(f"| {name} | {r['rows_per_s']:.3f} | {r['tokens_per_s']:.1f} | {r['speedup_tokens_per_s']:.2f}x ({per}) | "
              f"{r['cpu_utilisation']:.0%} | {r['wall_s']:.1f} | {r['tokens']:.0f} |")


if __name__ == "__main__":
    main()
