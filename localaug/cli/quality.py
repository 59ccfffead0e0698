"""Commands that judge answers and keep the good ones: grade (or judge pairwise) a respond output,
and export a training file from the judged answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from localaug.cli.options import Aspect, CtxOpt, JsonOpt, PreferenceRule, ThreadsOpt, TrainingFormat, value
from localaug.cli.shell import command, err_console, handled, out_console


@handled
def grade(
    output: Annotated[Path, typer.Argument(help="A localaug run respond output (its records, or the training file with its .ledger.jsonl).")],
    judge_model: Annotated[str, typer.Option("--judge", help="The judge: any instruct GGUF or store name, or a model on an OpenAI-compatible server, URL#MODEL (key in LOCALAUG_REMOTE_API_KEY); a larger one judges better.")],
    pairwise: Annotated[bool, typer.Option("--pairwise", help="Judge every two answers of an instruction against each other, in both orders, instead of grading each.")] = False,
    aspect: Annotated[Aspect, typer.Option("--aspect", help="--pairwise: what the verdict weighs (helpfulness: MT-Bench's own criteria).")] = Aspect.helpfulness,  # type: ignore[valid-type,attr-defined]
    ledger: Annotated[Optional[Path], typer.Option("--output", "-o", help="The judgements ledger (default: OUTPUT.grades.jsonl, or OUTPUT.verdicts.jsonl); resumable.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="The longest judge reply.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", help="The judge's sampling (0: greedy, as MT-Bench).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="With --temperature > 0: the seed, offset per answer.")] = 0,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Sequences decoded together (default: calibrated).")] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    ctx: CtxOpt = None,
) -> None:
    """Grade every answer 1-10 with a judge model (MT-Bench's single-answer prompt), keeping its reason; resumable.

    Example: [bold]localaug grade answers.jsonl --judge qwen2-instruct:7b[/bold], then [bold]localaug export answers.jsonl -o dpo.jsonl --format dpo[/bold]
    """
    from localaug.cli.render import print_json
    from localaug.cli.render import quality as draw
    from localaug.jobs.grade import JudgeOptions, run_grade, run_verdicts

    # grading reports its own phase (answers or pairs judged of all, ETA) to the command's display
    opts = JudgeOptions(judge_model, max_tokens=max_tokens, temperature=temperature, seed=seed, aspect=str(value(aspect)),
                        parallel=parallel, threads=threads, n_ctx=ctx)
    summary = (run_verdicts if pairwise else run_grade)(output, opts, ledger=ledger)
    if as_json:
        print_json(out_console(), summary.to_json())
    else:
        draw.render_grades(out_console(), summary, output, pairwise)


@handled
def export(
    output: Annotated[Path, typer.Argument(help="A localaug run respond output whose answers were judged (localaug grade).")],
    dest: Annotated[Path, typer.Option("--output", "-o", help="The training file to write (with DEST.manifest.json, and dataset_info.json beside it).")],
    out_format: Annotated[TrainingFormat, typer.Option("--format", help="alpaca, sharegpt or messages: the best-graded answer; dpo: preference pairs.")],  # type: ignore[valid-type]
    rule: Annotated[PreferenceRule, typer.Option("--rule", help="dpo: pairs from grades (chosen - rejected >= --margin) or from pairwise verdicts in both orders.")] = PreferenceRule.scores,  # type: ignore[valid-type,attr-defined]
    margin: Annotated[float, typer.Option("--margin", help="--rule scores: the least grade difference between chosen and rejected.")] = 1.0,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Keep only instructions whose chosen answer is graded at least this (1-10).")] = None,
    grades: Annotated[Optional[Path], typer.Option("--grades", help="The grades ledger (default: OUTPUT.grades.jsonl).")] = None,
    verdicts: Annotated[Optional[Path], typer.Option("--verdicts", help="The pairwise verdicts ledger (default: OUTPUT.verdicts.jsonl).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a training file from judged answers: the best-graded answer per instruction, or preference pairs.

    Example: [bold]localaug export answers.jsonl -o data/dpo.jsonl --format dpo --margin 2[/bold]
    """
    from localaug.cli.render import print_json
    from localaug.cli.render import quality as draw
    from localaug.jobs.dataio import DATASET_INFO
    from localaug.jobs.preference import Selection, export_output

    summary = export_output(output, dest, str(value(out_format)), Selection(str(value(rule)), margin, min_score),
                            grades=grades, verdicts=verdicts)
    if as_json:
        info = dest.parent / "dataset_info.json" if value(out_format) in DATASET_INFO else None
        print_json(out_console(), draw.export_json(summary, info))
    else:
        draw.render_export(err_console(), summary)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (grade, export):
        command(app, fn, panel="Judge and export")
