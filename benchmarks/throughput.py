"""Batch throughput: `localaug run refine` with its DEFAULT flags vs a plain loop over
llama-cpp-python, side by side in one run on the same GGUF and the same prompt strings (default
model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the Qwen2-1.5B stand-in fetched by fetch-test-models).

    python benchmarks/throughput.py [--model PATH] [--mode family teacher] [--rows 64] [--max-tokens 64]
                                    [--threads 2] [--rounds 2] [--parallel N ...]

Two modes, each its own comparison:

- family: the family's Qwen2 ChatML refine prompt (`localaug run --prompt-format qwen2-chatml`);
- teacher: what every user without the family weights runs: the model's own chat template with
  localaug's teacher instructions and in-context examples (~350 tokens shared by every row). The
  loop gets localaug's own teacher prompt string (``styles.build_prompt``), so both sides answer the
  same prompt; llama-cpp-python reuses the prefix it decoded last, as localaug does.

Both sides use the same sampling (temperature 0.5, top_p 0.95, top_k 50, min_p 0, fixed seeds) and
the same limit of new tokens, stopping at end of turn.

- baseline: one `llama_cpp.Llama` and a loop of `create_completion` over the rows, in this process;
- localaug: the real command, `localaug run refine --input rows.jsonl --output out.jsonl` with no
  `--parallel` (the batch size calibrated for the machine, as a user gets it), as a child process:
  its wall time includes start-up and model load, its tokens come from the run manifest, its CPU
  time from the child's rusage. The calibration runs once before the rounds (as on a user's first
  run) and its time is reported apart. `--parallel N` adds sides with a fixed batch size.

Rounds alternate the order (baseline first, then localaug first, ...) so drift of a shared machine
hits both. Reported per side (median over rounds): rows/s, output tokens/s and CPU utilisation =
CPU time / wall / cores; and llama.cpp's raw batched-decode ceiling (bare llama_decode, B
sequences, no sampling) at the batch size localaug chose, measured in this run, with localaug's
share of it. Writes benchmarks/out/throughput.json.
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


def prompt_strings(args: argparse.Namespace, mode: str, rows: list[str]) -> tuple[list[str], list[str]]:
    """The prompt string of every row as localaug builds it in ``mode``, and the stop strings."""
    from localaug.augment.resolve import resolve_style
    from localaug.family.styles import build_prompt

    style = resolve_style(args.model, prompt_format="qwen2-chatml" if mode == "family" else "teacher").style
    return [build_prompt(style, "refine", text) for text in rows], list(style.stop)


def run_baseline(args: argparse.Namespace, texts: list[str], stop: list[str]) -> dict[str, float]:
    import llama_cpp

    c0, t0 = cpu_self(), time.monotonic()
    # every layer on the GPU when llama.cpp was built with one (as localaug's --device auto does)
    llm = llama_cpp.Llama(str(args.model), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                          n_gpu_layers=-1, verbose=False)
    tokens = 0
    for i, prompt in enumerate(texts):
        out = llm.create_completion(prompt, max_tokens=args.max_tokens, stop=stop, seed=args.seed + i, **SAMPLING)
        tokens += out["usage"]["completion_tokens"]
    del llm
    return result(time.monotonic() - t0, cpu_self() - c0, len(texts), tokens)


def run_localaug(args: argparse.Namespace, mode: str, src: Path, work: Path, parallel: int | None) -> dict[str, float]:
    """``localaug run refine`` as a user types it: no --parallel unless ``parallel`` is given."""
    out = work / f"out-{mode}-{parallel or 'default'}.jsonl"
    for p in work.glob(out.name + "*"):
        p.unlink()
    cmd = [sys.executable, "-m", "localaug.cli", "run", "refine", "--input", str(src), "--output", str(out),
           "--model", str(args.model), "--threads", str(args.threads), "--max-tokens", str(args.max_tokens),
           "--seed", str(args.seed), "--temperature", "0.5", "--top-p", "0.95", "--top-k", "50"]
    cmd += ["--prompt-format", "qwen2-chatml"] if mode == "family" else []
    cmd += ["--parallel", str(parallel)] if parallel else []
    env = {k: v for k, v in os.environ.items() if k != "LOCALAUG_PARALLEL"}
    c0, t0 = cpu_children(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "LOCALAUG_HOME": str(work / "home")})
    wall, cpu = time.monotonic() - t0, cpu_children() - c0
    if proc.returncode != 0:
        raise SystemExit(f"localaug run failed: {proc.stderr.strip()}")
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    r = result(wall, cpu, manifest["counts"]["rows"], manifest["tokens"])
    r["parallel"] = manifest["parallel"]
    r["calibration_s"] = manifest.get("calibration_s", 0.0)
    return r


def raw_ceiling(args: argparse.Namespace, prompt: str, parallel: int) -> float:
    """llama.cpp's bare batched llama_decode at ``parallel`` sequences after ``prompt`` (tokens/s)."""
    from localaug.runtime.bench import raw_batch_rate
    from localaug.runtime.engine import Engine, EngineOptions

    with Engine(args.model, EngineOptions(threads=args.threads), context=False) as engine:
        return raw_batch_rate(engine, parallel, engine.tokenize(prompt), args.max_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mode", nargs="+", choices=("family", "teacher"), default=["family", "teacher"])
    ap.add_argument("--parallel", type=int, nargs="*", default=[], help="extra sides with a fixed batch size")
    ap.add_argument("--threads", type=int, default=2)
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

    summary: dict[str, object] = {
        "model": str(args.model), "rows": args.rows, "max_tokens": args.max_tokens, "threads": args.threads,
        "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
        "sampling": {**SAMPLING, "seed": args.seed}, "loadavg_1min_before": os.getloadavg()[0], "modes": {},
    }
    # the first run on a machine calibrates the batch size (cached in LOCALAUG_HOME); as a user's
    # first run pays it once, it is measured apart, on a few rows
    warm = work / "warm.jsonl"
    warm.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in rows[:2]), encoding="utf-8")
    first = run_localaug(args, "family", warm, work, None)
    summary["calibration"] = {"seconds": first["calibration_s"], "parallel": first["parallel"]}
    print(f"calibration: batch size {first['parallel']} in {first['calibration_s']:.1f} s", flush=True)

    table = []
    for mode in args.mode:
        texts, stop = prompt_strings(args, mode, rows)
        sides = ["llama-cpp-python loop", "localaug run (defaults)", *(f"localaug run --parallel {p}" for p in args.parallel)]
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
        for rnd in range(args.rounds):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for side in order:
                if side == sides[0]:
                    r = run_baseline(args, texts, stop)
                else:
                    r = run_localaug(args, mode, src, work, None if side == sides[1] else int(side.rsplit(" ", 1)[1]))
                r["loadavg_1min_after"] = os.getloadavg()[0]  # other work on the machine shows here
                runs[side].append(r)
                print(f"{mode} round {rnd + 1} {side}: {r['tokens_per_s']:.1f} tok/s, {r['rows_per_s']:.3f} rows/s, "
                      f"CPU {r['cpu_utilisation']:.0%}, {r['wall_s']:.1f} s", flush=True)
        med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
        base = med[sides[0]]["tokens_per_s"]
        for s in sides:
            med[s]["speedup_tokens_per_s"] = med[s]["tokens_per_s"] / base
            med[s]["speedups_per_round"] = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(runs[s], runs[sides[0]])]
        chosen = int(med[sides[1]]["parallel"])
        ceiling = raw_ceiling(args, texts[0], chosen)
        for s in sides[1:]:
            med[s]["raw_ceiling_tokens_per_s"] = ceiling if int(med[s]["parallel"]) == chosen else raw_ceiling(args, texts[0], int(med[s]["parallel"]))
            med[s]["share_of_raw_ceiling"] = med[s]["tokens_per_s"] / med[s]["raw_ceiling_tokens_per_s"]
        prompt_tokens = len(_tokenize(args, texts[0]))
        summary["modes"][mode] = {"prompt_tokens_row0": prompt_tokens, "median": med, "runs": runs}  # type: ignore[index]
        table += [(mode, name, r) for name, r in med.items()]

    summary["loadavg_1min_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"load average (1 min) before {summary['loadavg_1min_before']:.2f}, after {summary['loadavg_1min_after']:.2f}")
    print("| mode | side | B | rows/s | output tok/s | vs loop (per round) | of raw llama_decode at B | CPU util | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, name, r in table:
        per = ", ".join(f"{x:.2f}" for x in r["speedups_per_round"])
        share = f"{r['share_of_raw_ceiling']:.0%} of {r['raw_ceiling_tokens_per_s']:.1f}" if "share_of_raw_ceiling" in r else "-"
        b = f"{r['parallel']:.0f}" if "parallel" in r else "1"
        print(f"| {mode} | {name} | {b} | {r['rows_per_s']:.3f} | {r['tokens_per_s']:.1f} | {r['speedup_tokens_per_s']:.2f}x ({per}) | "
              f"{share} | {r['cpu_utilisation']:.0%} | {r['wall_s']:.1f} |")


def _tokenize(args: argparse.Namespace, text: str) -> list[int]:
    from localaug.runtime.engine import Engine, EngineOptions

    with Engine(args.model, EngineOptions(threads=1), context=False) as engine:
        return engine.tokenize(text)


if __name__ == "__main__":
    main()
