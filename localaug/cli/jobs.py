"""Commands for datasets: run a task over every row (resumable, on one machine or Ray), merge outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from localaug.cli._errors import message
from localaug.cli.shell import command, err_console, handled, out_console
from localaug.cli.options import (
    CtxOpt,
    Dedup,
    Device,
    DeviceOpt,
    ExamplesOpt,
    JsonOpt,
    LayersOpt,
    MaxTokOpt,
    MergeDedup,
    OutputFormat,
    PreferenceRule,
    PromptFormatOpt,
    SystemOpt,
    Task,
    TempOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    gpu_layers,
    value,
)


@handled
def run(
    task: Annotated[Task, typer.Argument(help="What to do to every row.")],  # type: ignore[valid-type]
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL, JSON array, CSV, Parquet, or a datasets save_to_disk folder (with --ray also a folder of files or a URI Ray reads, e.g. s3://…).")],  # noqa: A002
    output: Annotated[Path, typer.Option("--output", "-o", help="Where results go (JSONL records; or the --format training file; with --ray a folder of part files).")],
    field: Annotated[str, typer.Option("--field", help="The column with the text (dotted path for nested JSON).")] = "instruction",
    response_field: Annotated[Optional[str], typer.Option("--response-field", help="pairs: the response column (default: response, else output).")] = None,
    n: Annotated[int, typer.Option("-n", help="expand/pairs: new items per row.")] = 3,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Family name, Hugging Face repo id, GGUF file or checkpoint folder; or a model on an OpenAI-compatible server, URL#MODEL (key in LOCALAUG_REMOTE_API_KEY).")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Sequences decoded together (continuous batching); 1: one at a time (default: the fastest for this machine, measured once and cached). A model at a URL: requests in flight (default 8).")] = None,
    out_format: Annotated[OutputFormat, typer.Option("--format", help="jsonl or parquet (records), or a training file.")] = OutputFormat.jsonl,  # type: ignore[valid-type,attr-defined]
    prompt_format: PromptFormatOpt = None,
    system: SystemOpt = None, examples: ExamplesOpt = None,
    respond_with: Annotated[Optional[str], typer.Option("--respond-with", help="refine/expand: then answer every new instruction with this model (a GGUF, store name, e.g. qwen2-instruct:1.5b, or a model on an OpenAI-compatible server, URL#MODEL), so --format alpaca|sharegpt|messages has responses.")] = None,
    respond_system: Annotated[Optional[str], typer.Option("--respond-system", help="--respond-with: the responder's system prompt.")] = None,
    respond_max_tokens: Annotated[Optional[int], typer.Option("--respond-max-tokens", help="--respond-with: the longest answer, in tokens (default: the responder's, 2048).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="respond: answers per instruction, sample k with seed+k (all kept in the record's responses).")] = 1,
    respond_samples: Annotated[Optional[int], typer.Option("--respond-samples", help="--respond-with: answers per new instruction (as --samples).")] = None,
    input_field: Annotated[Optional[str], typer.Option("--input-field", help="A column of context given with the text (Alpaca's input): the prompt is the text, a newline, then it; respond keeps it apart in the record and exports (alpaca input).")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge", help="Grade every answer 1-10 with this model (MT-Bench's prompt; respond or --respond-with), then write --format from the judged answers: the best-graded, --min-score, or dpo pairs.")] = None,
    rule: Annotated[PreferenceRule, typer.Option("--rule", help="--format dpo: pairs from grades (chosen - rejected >= --margin) or from pairwise verdicts in both orders.")] = PreferenceRule.scores,  # type: ignore[valid-type,attr-defined]
    margin: Annotated[float, typer.Option("--margin", help="--rule scores: the least grade difference between chosen and rejected.")] = 1.0,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="--judge: keep only instructions whose chosen answer is graded at least this (1-10).")] = None,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", help="--judge: the longest judge reply.")] = 512,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/N: only the rows whose key falls in shard i of N (join with localaug merge).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many rows (of this shard).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run again the rows recorded as failed.")] = False,
    dedup: Annotated[Dedup, typer.Option("--dedup", help="Duplicates across rows: row (within a row only), exact, or minhash near duplicates.")] = Dedup.exact,  # type: ignore[valid-type,attr-defined]
    minhash_threshold: Annotated[float, typer.Option("--minhash-threshold", help="--dedup minhash: Jaccard similarity counted as a duplicate.")] = 0.8,
    rouge_l: Annotated[float, typer.Option("--rouge-l", help="Near duplicates within a row: ROUGE-L at or above this.")] = 0.7,
    echo: Annotated[float, typer.Option("--echo", help="refine: an output this close (ROUGE-L) to its input is an echo.")] = 0.9,
    min_chars: Annotated[int, typer.Option("--min-chars", help="Drop new texts shorter than this.")] = 4,
    max_chars: Annotated[Optional[int], typer.Option("--max-chars", help="Drop new texts longer than this.")] = None,
    keep_refusals: Annotated[bool, typer.Option("--keep-refusals", help="Keep replies that are refusals.")] = False,
    max_samples: Annotated[Optional[int], typer.Option("--max-samples", help="expand/pairs: samples drawn per row at most (default max(3n, n+4)).")] = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every row (sample k uses seed+k).")] = 0,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray", help="Run on Ray: auto, local, or a cluster address; --output is then a folder of part files (needs the ray extra).")] = None,
    actors: Annotated[Optional[int], typer.Option("--actors", help="--ray: actors, each loading the model once (default: as many as the nodes fit).")] = None,
    num_cpus: Annotated[Optional[float], typer.Option("--num-cpus", help="--ray: CPUs per actor, and its llama.cpp threads (default: 1 with --num-gpus, else a whole node).")] = None,
    num_gpus: Annotated[Optional[float], typer.Option("--num-gpus", help="--ray: GPUs per actor (all layers offloaded).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Augment a whole dataset: one record per input row, resumable after any interruption.

    Example: [bold]localaug run refine --input prompts.jsonl --output refined.jsonl[/bold]
    or, to a training file: [bold]localaug run refine -i seeds.jsonl -o train.json --respond-with qwen2-instruct:1.5b --format alpaca[/bold]
    """
    from localaug.cli.render import jobs as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import counter, job_progress_for
    from localaug.core.errors import JobError, JobInterrupted, UsageError
    from localaug.jobs import run as jobs

    run_job: Callable[..., Any] = jobs.run_job
    extra: dict[str, Any] = {}
    console = err_console()
    if ray_address is not None:
        from localaug.jobs import on_ray  # the same job on Ray, into a folder of parts

        run_job = on_ray.run_job
        extra = dict(address=ray_address, actors=actors, num_cpus=num_cpus, num_gpus=num_gpus)
        if respond_with is not None:
            raise UsageError("--respond-with with --ray: run refine/expand with --ray, then localaug run respond --ray "
                             "on its output folder")
    elif actors is not None or num_cpus is not None or num_gpus is not None:
        raise UsageError("--actors, --num-cpus and --num-gpus go with --ray")
    if respond_with is not None:
        responder = {k: v for k, v in (("system", respond_system), ("max_tokens", respond_max_tokens),
                                       ("samples", respond_samples)) if v is not None}
        extra = dict(respond_with=respond_with, respond=responder)
    elif respond_system is not None or respond_max_tokens is not None or respond_samples is not None:
        raise UsageError("--respond-system, --respond-max-tokens and --respond-samples go with --respond-with")
    if ray_address is not None and (judge is not None or samples != 1 or input_field is not None):
        raise UsageError("--judge, --samples and --input-field run on one machine: drop --ray")
    if judge is not None:
        extra.update(judge=judge, judging={"max_tokens": judge_max_tokens, "threads": threads, "device": value(device),
                                           "n_ctx": ctx, "parallel": parallel, "progress": counter(console, "judging").tick},
                     selection={"rule": value(rule), "margin": margin, "min_score": min_score})
    elif min_score is not None or value(rule) != "scores" or margin != 1.0:
        raise UsageError("--min-score, --rule and --margin choose among judged answers: give --judge")
    if samples != 1 or input_field is not None:
        extra.update(samples=samples, input_field=input_field)

    try:
        summary = run_job(
            value(task), input, output, model=model, field=field, response_field=response_field, n=n, fmt=value(out_format),
            limit=limit, shard=shard, seed=seed, temperature=temperature, top_p=top_p, top_k=top_k,
            max_tokens=max_tokens, prompt_format=value(prompt_format), device=value(device), gpu_layers=gpu_layers(layers),
            threads=threads, n_ctx=ctx, parallel=parallel, retry_failed=retry_failed, dedup=value(dedup),
            minhash_threshold=minhash_threshold,
            threshold=rouge_l, echo=echo, min_chars=min_chars, max_chars=max_chars, refusals=not keep_refusals,
            max_samples=max_samples, system=system, examples=examples, progress=job_progress_for(console), **extra,
        )
    except JobInterrupted as e:
        draw.render_interrupted(console, message(e))
        raise typer.Exit(e.exit_code) from None
    if as_json:
        print_json(out_console(), draw.job_json(summary, _dataset_info(output, value(out_format))))
    else:
        draw.render_job_summary(console, summary)
    for stage in (*summary.stages, summary):  # a job that made nothing is not a success
        failed = stage.all_failed()
        if failed:
            raise JobError(failed)
    if ray_address is not None:
        console.print(f"join the parts into one file: localaug merge {output} -o merged.jsonl", highlight=False, soft_wrap=True)


@handled
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Job outputs (or folders of .jsonl parts) to join, e.g. out.*.jsonl.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged file.")],
    out_format: Annotated[OutputFormat, typer.Option("--format", help="jsonl or parquet (records), or a training file.")] = OutputFormat.jsonl,  # type: ignore[valid-type,attr-defined]
    dedup: Annotated[MergeDedup, typer.Option("--dedup", help="New items repeated across inputs: none, exact, or minhash near duplicates.")] = MergeDedup.exact,  # type: ignore[valid-type,attr-defined]
    minhash_threshold: Annotated[float, typer.Option("--minhash-threshold", help="--dedup minhash: Jaccard similarity counted as a duplicate.")] = 0.8,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Join outputs of different runs anyway.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Join shard outputs into one file: one record per row, in input order, duplicates across shards removed.

    Example: [bold]localaug merge out.0.jsonl out.1.jsonl out.2.jsonl -o merged.jsonl[/bold]
    """
    from localaug.cli.render import jobs as draw
    from localaug.cli.render import print_json
    from localaug.jobs.merge import merge_outputs

    summary = merge_outputs(inputs, output, fmt=value(out_format), dedup=value(dedup), minhash_threshold=minhash_threshold,
                            allow_mixed=allow_mixed)
    if as_json:
        print_json(out_console(), draw.merge_json(summary, _dataset_info(output, value(out_format))))
    else:
        draw.render_merge_summary(err_console(), summary)


def _dataset_info(output: Path, fmt: str | None) -> Path | None:
    """The dataset_info.json a training format registers its file in (beside it), else None."""
    from localaug.jobs.dataio import DATASET_INFO

    return output.parent / "dataset_info.json" if fmt in DATASET_INFO else None


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (run, merge):
        command(app, fn, panel="Datasets")
