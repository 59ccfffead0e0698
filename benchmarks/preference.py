"""How much preference data survives a judge, on a real model, offline.

    python benchmarks/preference.py [--model PATH] [--judge PATH] [--seeds 24] [--samples 2] [--threads 2] [--input SEEDS.jsonl]

K answers (``--samples``) to each of the English seed instructions of benchmarks/teacher_echo.py by
the responder (``--model``, default the Qwen2.5-Coder-1.5B-Instruct Q4_K_M stand-in from
``../shared/tools/fetch-test-models qwen25-coder-1.5b``), sampled (temperature 0.7, sample k with
seed k); then the judge (``--judge``, default the same model) grades every answer 1-10 (MT-Bench's
single-answer prompt, greedy) and judges each instruction's two answers against each other in both
orders (MT-Bench's pairwise prompt). Reported, as a Markdown block for docs/benchmarks.md:

- the grade distribution (answers per rating, replies with no rating, mean);
- preference pairs that survive: by grades at margins 1, 2 and 3, and by pairwise verdicts in both
  orders, each with the instructions left out by reason (``localaug export``'s own counts);
- the judge's position bias: with one order only (answer 1 shown first), how often its reading named
  the answer shown first and how many pairs it would decide; with both orders, how many pairs stay
  decided (the same answer preferred both times) and how many readings disagree.

Everything goes through the localaug API and lands in benchmarks/out/preference/ (resumable: a second
run with the same arguments reuses what is there). Not for the test machine at scale: a 1.5B model
answering and judging 24 x 2 answers takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_echo import SEEDS  # noqa: E402
from throughput import DEFAULT_MODEL, ROOT  # noqa: E402

from localaug.jobs.grade import JudgeOptions, run_grade, run_verdicts  # noqa: E402
from localaug.jobs.preference import Selection, export_output  # noqa: E402
from localaug.jobs.run import run_job  # noqa: E402

MARGINS = (1.0, 2.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the responder GGUF")
    ap.add_argument("--judge", default=None, help="the judge GGUF (default: the responder)")
    ap.add_argument("--seeds", type=int, default=24, help="how many seed instructions")
    ap.add_argument("--input", default=None, help="seed instructions of your own (JSON Lines of {instruction}); default: "
                                                  "the English seeds of benchmarks/teacher_echo.py")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=384, help="the longest answer")
    ap.add_argument("--judge-max-tokens", type=int, default=384)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "preference"))
    args = ap.parse_args()
    model, judge = Path(args.model), Path(args.judge or args.model)
    for path in (model, judge):
        if not path.is_file():
            sys.exit(f"{path} does not exist: ../shared/tools/fetch-test-models qwen25-coder-1.5b (or give --model)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.input:
        seeds = [json.loads(x)["instruction"] for x in Path(args.input).read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        seeds = [s for s in SEEDS if all(ord(c) < 0x3000 for c in s)]
    seeds = seeds[: args.seeds]
    src = out / "seeds.jsonl"
    src.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds), encoding="utf-8")

    t0 = time.monotonic()
    answers = out / "answers.jsonl"
    run_job("respond", src, answers, model=model, samples=args.samples, temperature=0.7, max_tokens=args.max_tokens,
            threads=args.threads, seed=0)
    t_answer = time.monotonic() - t0
    opts = JudgeOptions(judge, max_tokens=args.judge_max_tokens, threads=args.threads)
    t0 = time.monotonic()
    grades = run_grade(answers, opts)
    t_grade = time.monotonic() - t0
    t0 = time.monotonic()
    verdicts = run_verdicts(answers, opts)
    t_verdict = time.monotonic() - t0

    kept = {f"grades, margin {m:g}": export_output(answers, out / f"dpo-m{m:g}.jsonl", "dpo", Selection("scores", m))
            for m in MARGINS}
    kept["pairwise, both orders"] = export_output(answers, out / "dpo-pairwise.jsonl", "dpo", Selection("pairwise"))
    lines = [json.loads(x) for x in (out / "answers.jsonl.verdicts.jsonl").read_text().splitlines() if x.strip()]
    print(markdown(model, judge, len(seeds), args.samples, grades, verdicts, kept, lines,
                   {"answer": t_answer, "grade": t_grade, "pairwise": t_verdict}))


def markdown(model: Path, judge: Path, n_seeds: int, samples: int, grades, verdicts, kept, lines, seconds) -> str:  # noqa: ANN001
    one_order = Counter(v["first"] for v in lines)  # answer 1 shown first, the reading alone
    decided_one = one_order["A"] + one_order["B"]
    second = Counter(v["second"] for v in lines)
    outcomes = verdicts.outcomes
    mean = "—" if grades.mean is None else f"{grades.mean:.2f}"
    rows = [
        f"**Preference data from a judge** — responder `{model.name}`, judge `{judge.name}`, {n_seeds} seed "
        f"instructions × {samples} answers (temperature 0.7, answer k with seed k), greedy judge, "
        f"{os.cpu_count()} CPU cores; `python benchmarks/preference.py`.",
        "",
        f"Grades (MT-Bench single-answer, 1–10): {grades.graded} of {grades.answers} answers graded, "
        f"{grades.no_rating} replies with no rating, mean {mean}.",
        "",
        "| rating | " + " | ".join(grades.distribution) + " |",
        "|---|" + "---:|" * len(grades.distribution),
        "| answers | " + " | ".join(str(v) for v in grades.distribution.values()) + " |",
        "",
        "| pairs by | kept | left out (by reason) |",
        "|---|---:|---|",
        *(f"| {name} | {e.written} of {n_seeds} | "
          + (", ".join(f"{k}: {v}" for k, v in e.tally.dropped.items()) or "—") + " |" for name, e in kept.items()),
        "",
        "| position bias | pairs | decided | named the answer shown first |",
        "|---|---:|---:|---:|",
        f"| one order (answer 1 first) | {len(lines)} | {decided_one} | {one_order['A']} of {decided_one} |",
        f"| the other order (answer 2 first) | {len(lines)} | {second['A'] + second['B']} | {second['A']} of {second['A'] + second['B']} |",
        f"| both orders | {verdicts.judged} | {outcomes['A'] + outcomes['B']} (ties {outcomes['tie']}, disagree "
        f"{outcomes['inconsistent']}, no verdict {outcomes['no-verdict']}) | {verdicts.first_shown_preferred} of "
        f"{verdicts.decided_readings} readings |",
        "",
        f"Time: answers {seconds['answer']:.0f} s, grades {seconds['grade']:.0f} s, pairwise {seconds['pairwise']:.0f} s "
        "(0 s when resumed from an earlier run).",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
