"""Commands for datasets: run a task over every row (resumable, on one machine or Ray), merge outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from localaug.cli._errors import message
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
    in_panel,
    value,
)
from localaug.cli.shell import command, err_console, handled, out_console
from localaug.core.errors import UsageError


# run --help: its options in panels, in the order a user decides them
INPUT, MODEL, SAMPLING, FILTERS, OUTPUT = "Input", "Model and prompt", "Sampling", "Filters", "Output and training"
ENGINE, SCALE, RESPOND = "Engine", "Scale-out (shards, Ray)", "Respond and judge (training files with answers)"
RunModelPromptFormat, RunSystem, RunExamples = in_panel(PromptFormatOpt, MODEL), in_panel(SystemOpt, MODEL), in_panel(ExamplesOpt, MODEL)
RunTemp, RunTopP, RunTopK, RunMaxTok = (in_panel(o, SAMPLING) for o in (TempOpt, TopPOpt, TopKOpt, MaxTokOpt))
RunDevice, RunLayers, RunThreads, RunCtx = (in_panel(o, ENGINE) for o in (DeviceOpt, LayersOpt, ThreadsOpt, CtxOpt))
RunJson = in_panel(JsonOpt, OUTPUT)


@handled
def run(
    task: Annotated[Task, typer.Argument(help="What to do to every row.")],  # type: ignore[valid-type]
    # input, and where the output goes (both required: first)
    input: Annotated[str, typer.Option("--input", "-i", rich_help_panel=INPUT, help="JSONL, JSON array, CSV, Parquet, or a datasets save_to_disk folder (with --ray also a folder of files or a URI Ray reads, e.g. s3://…).")],  # noqa: A002
    output: Annotated[Path, typer.Option("--output", "-o", rich_help_panel=OUTPUT, help="Where results go (JSONL records; or the --format training file; with --ray a folder of part files).")],
    field: Annotated[str, typer.Option("--field", rich_help_panel=INPUT, help="The column with the text (dotted path for nested JSON).")] = "instruction",
    response_field: Annotated[Optional[str], typer.Option("--response-field", rich_help_panel=INPUT, help="pairs: the response column (default: response, else output).")] = None,
    input_field: Annotated[Optional[str], typer.Option("--input-field", rich_help_panel=INPUT, help="A column of context given with the text (Alpaca's input): the prompt is the text, a newline, then it; respond keeps it apart in the record and exports (alpaca input).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", rich_help_panel=INPUT, help="At most this many rows (of this shard).")] = None,
    # model and prompt
    model: Annotated[Optional[str], typer.Option("--model", "-m", rich_help_panel=MODEL, help="Family name, Hugging Face repo id, GGUF file or checkpoint folder; or a model on an OpenAI-compatible server, URL#MODEL (key in LOCALAUG_REMOTE_API_KEY).")] = None,
    prompt_format: RunModelPromptFormat = None,
    system: RunSystem = None,
    examples: RunExamples = None,
    # sampling
    n: Annotated[int, typer.Option("-n", rich_help_panel=SAMPLING, help="expand/pairs: new items per row.")] = 3,
    samples: Annotated[int, typer.Option("--samples", rich_help_panel=SAMPLING, help="respond: answers per instruction, sample k with seed+k (all kept in the record's responses).")] = 1,
    max_samples: Annotated[Optional[int], typer.Option("--max-samples", rich_help_panel=SAMPLING, help="expand/pairs: samples drawn per row at most (default max(3n, n+4)).")] = None,
    temperature: RunTemp = None, top_p: RunTopP = None, top_k: RunTopK = None, max_tokens: RunMaxTok = None,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=SAMPLING, help="Seed of every row (sample k uses seed+k).")] = 0,
    # filters
    dedup: Annotated[Dedup, typer.Option("--dedup", rich_help_panel=FILTERS, help="Duplicates across rows: row (within a row only), exact, or minhash near duplicates.")] = Dedup.exact,  # type: ignore[valid-type,attr-defined]
    minhash_threshold: Annotated[float, typer.Option("--minhash-threshold", rich_help_panel=FILTERS, help="--dedup minhash: Jaccard similarity counted as a duplicate.")] = 0.8,
    rouge_l: Annotated[float, typer.Option("--rouge-l", rich_help_panel=FILTERS, help="Near duplicates within a row: ROUGE-L at or above this.")] = 0.7,
    echo: Annotated[float, typer.Option("--echo", rich_help_panel=FILTERS, help="refine: an output this close (ROUGE-L) to its input is an echo.")] = 0.9,
    min_chars: Annotated[int, typer.Option("--min-chars", rich_help_panel=FILTERS, help="Drop new texts shorter than this.")] = 4,
    max_chars: Annotated[Optional[int], typer.Option("--max-chars", rich_help_panel=FILTERS, help="Drop new texts longer than this.")] = None,
    keep_refusals: Annotated[bool, typer.Option("--keep-refusals", rich_help_panel=FILTERS, help="Keep replies that are refusals.")] = False,
    # output and training
    out_format: Annotated[OutputFormat, typer.Option("--format", rich_help_panel=OUTPUT, help="jsonl or parquet (records), or a training file.")] = OutputFormat.jsonl,  # type: ignore[valid-type,attr-defined]
    retry_failed: Annotated[bool, typer.Option("--retry-failed", rich_help_panel=OUTPUT, help="Run again the rows recorded as failed.")] = False,
    as_json: RunJson = False,
    # engine
    device: RunDevice = Device.auto, layers: RunLayers = None, threads: RunThreads = None, ctx: RunCtx = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", rich_help_panel=ENGINE, help="Sequences decoded together (continuous batching); 1: one at a time (default: the fastest for this machine, measured once and cached). A model at a URL: requests in flight (default 8).")] = None,
    # scale-out
    shard: Annotated[Optional[str], typer.Option("--shard", rich_help_panel=SCALE, help="i/N: only the rows whose key falls in shard i of N (join with localaug merge).")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray", rich_help_panel=SCALE, help="Run on Ray: auto, local, or a cluster address; --output is then a folder of part files (needs the ray extra).")] = None,
    actors: Annotated[Optional[int], typer.Option("--actors", rich_help_panel=SCALE, help="--ray: actors, each loading the model once (default: as many as the nodes fit).")] = None,
    num_cpus: Annotated[Optional[float], typer.Option("--num-cpus", rich_help_panel=SCALE, help="--ray: CPUs per actor, and its llama.cpp threads (default: 1 with --num-gpus, else a whole node).")] = None,
    num_gpus: Annotated[Optional[float], typer.Option("--num-gpus", rich_help_panel=SCALE, help="--ray: GPUs per actor (all layers offloaded).")] = None,
    # respond and judge
    respond_with: Annotated[Optional[str], typer.Option("--respond-with", rich_help_panel=RESPOND, help="refine/expand: then answer every new instruction with this model (a GGUF, store name, e.g. qwen2-instruct:1.5b, or a model on an OpenAI-compatible server, URL#MODEL), so --format alpaca|sharegpt|messages has responses.")] = None,
    respond_system: Annotated[Optional[str], typer.Option("--respond-system", rich_help_panel=RESPOND, help="--respond-with: the responder's system prompt.")] = None,
    respond_max_tokens: Annotated[Optional[int], typer.Option("--respond-max-tokens", rich_help_panel=RESPOND, help="--respond-with: the longest answer, in tokens (default: the responder's, 2048).")] = None,
    respond_samples: Annotated[Optional[int], typer.Option("--respond-samples", rich_help_panel=RESPOND, help="--respond-with: answers per new instruction (as --samples).")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge", rich_help_panel=RESPOND, help="Grade every answer 1-10 with this model (MT-Bench's prompt; respond or --respond-with), then write --format from the judged answers: the best-graded, --min-score, or dpo pairs.")] = None,
    rule: Annotated[PreferenceRule, typer.Option("--rule", rich_help_panel=RESPOND, help="--format dpo: pairs from grades (chosen - rejected >= --margin) or from pairwise verdicts in both orders.")] = PreferenceRule.scores,  # type: ignore[valid-type,attr-defined]
    margin: Annotated[float, typer.Option("--margin", rich_help_panel=RESPOND, help="--rule scores: the least grade difference between chosen and rejected.")] = 1.0,
    min_score: Annotated[Optional[float], typer.Option("--min-score", rich_help_panel=RESPOND, help="--judge: keep only instructions whose chosen answer is graded at least this (1-10).")] = None,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", rich_help_panel=RESPOND, help="--judge: the longest judge reply.")] = 512,
) -> None:
    """Augment a whole dataset: one record per input row, resumable after any interruption.

    Example: [bold]localaug run refine --input prompts.jsonl --output refined.jsonl[/bold]
    or, to a training file: [bold]localaug run refine -i seeds.jsonl -o train.json --respond-with qwen2-instruct:1.5b --format alpaca[/bold]
    """
    from localaug.cli.render import jobs as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import job_progress_for
    from localaug.core.errors import JobError, JobInterrupted
    from localaug.jobs import run as jobs

    console = err_console()
    run_job: Callable[..., Any] = jobs.run_job
    if ray_address is not None:
        from localaug.jobs import on_ray  # the same job on Ray, into a folder of parts

        run_job = on_ray.run_job
    extra = _scale_out(ray_address, actors, num_cpus, num_gpus, respond_with, judge, samples, input_field)
    extra.update(_responder(respond_with, respond_system, respond_max_tokens, respond_samples))
    if judge is not None:
        extra.update(judge=judge, judging={"max_tokens": judge_max_tokens, "threads": threads, "device": value(device),
                                           "n_ctx": ctx, "parallel": parallel},
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


def _scale_out(ray_address: str | None, actors: int | None, num_cpus: float | None, num_gpus: float | None,
               respond_with: str | None, judge: str | None, samples: int, input_field: str | None) -> dict[str, Any]:
    """on_ray.run_job's own settings; what does not go with --ray (or needs it) is refused."""
    if ray_address is None:
        if actors is not None or num_cpus is not None or num_gpus is not None:
            raise UsageError("--actors, --num-cpus and --num-gpus go with --ray")
        return {}
    if respond_with is not None:
        raise UsageError("--respond-with with --ray: run refine/expand with --ray, then localaug run respond --ray "
                         "on its output folder")
    if judge is not None or samples != 1 or input_field is not None:
        raise UsageError("--judge, --samples and --input-field run on one machine: drop --ray")
    return dict(address=ray_address, actors=actors, num_cpus=num_cpus, num_gpus=num_gpus)


def _responder(respond_with: str | None, system: str | None, max_tokens: int | None, samples: int | None) -> dict[str, Any]:
    """--respond-with and the responder's own settings (refused without it)."""
    if respond_with is None:
        if system is not None or max_tokens is not None or samples is not None:
            raise UsageError("--respond-system, --respond-max-tokens and --respond-samples go with --respond-with")
        return {}
    responder = {k: v for k, v in (("system", system), ("max_tokens", max_tokens), ("samples", samples)) if v is not None}
    return dict(respond_with=respond_with, respond=responder)


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
