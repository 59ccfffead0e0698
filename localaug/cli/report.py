"""Commands that look back at a job: the report page, and pairwise judging of two response files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from localaug.cli.shell import command, handled, out_console
from localaug.cli.options import Aspect, JsonOpt, ThreadsOpt, value


@handled
def report(
    output: Annotated[Path, typer.Argument(help="A localaug run output: JSONL records, a training file (its .ledger.jsonl beside it) or a --ray folder.")],
    html: Annotated[Optional[Path], typer.Option("--html", help="Where the page goes (default: OUTPUT.report.html; the PNG figures beside it).")] = None,
    embed_model: Annotated[Optional[str], typer.Option("--embed-model", help="The GGUF that embeds the texts for the map (default: the job's model).")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Rows drawn at most (sampled with --seed beyond this).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling and of the t-SNE map.")] = 0,
    judge: Annotated[Optional[Path], typer.Option("--judge", help="A localaug judge summary (.summary.json) to add as a table.")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """See what augmentation did: a 2-D map of sources vs new texts, lengths, rejections, diversity, samples.

    Example: [bold]localaug report refined.jsonl[/bold] (needs the report extra: pip install 'localaug[report]', or pip install -e '.[report]' from a checkout)
    """
    from localaug.cli.render import print_json
    from localaug.cli.render import report as draw
    from localaug.report.build import make_report

    result = make_report(output, html, embed_model, max_rows=max_rows, seed=seed, threads=threads, judge=judge)
    if as_json:
        print_json(out_console(), draw.report_json(result))
    else:
        draw.render_report(out_console(), result)


@handled
def judge(
    a: Annotated[Path, typer.Argument(help="Responses A (a localaug run respond output), e.g. answers to the seed instructions.")],
    b: Annotated[Path, typer.Argument(help="Responses B, e.g. answers to the refined instructions.")],
    judge_model: Annotated[str, typer.Option("--judge", help="The judge: any instruct GGUF or store name, or a model on an OpenAI-compatible server, URL#MODEL (key in LOCALAUG_REMOTE_API_KEY); a larger one judges better.")],
    aspect: Annotated[Aspect, typer.Option("--aspect", help="What the verdict weighs.")] = Aspect.detail,  # type: ignore[valid-type,attr-defined]
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The verdicts ledger (default: B.judge-ASPECT.jsonl); resumable.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="The longest judge reply.")] = 512,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Sequences decoded together (default: calibrated); a judge at a URL: requests in flight (default 8).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Add the table to this report page (made by localaug report), or write one.")] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Pairwise LLM-as-judge: does B answer better than A? Each pair judged in both orders; win/tie/loss with a 95% interval.

    Example: [bold]localaug judge seeds.answers.jsonl refined.answers.jsonl --judge qwen2-instruct:7b --aspect detail[/bold]
    """
    from localaug.cli.render import print_json
    from localaug.cli.render import report as draw
    from localaug.cli.render.progress import ticker
    from localaug.report.judge import run_judge

    with ticker("judging pairs", "pairs") as tick:
        summary = run_judge(a, b, judge_model, aspect=str(value(aspect)), output=output, threads=threads, parallel=parallel,
                            max_tokens=max_tokens, progress=tick, html=html)
    if as_json:
        print_json(out_console(), summary.to_json())
    else:
        draw.render_judge(out_console(), summary)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (report, judge):
        command(app, fn, panel="Judge and export")
