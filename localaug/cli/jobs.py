"""Commands for datasets: run a task over every row (resumable, on one machine or Ray), merge outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

try:  # Typer carries its own copy of Click in recent releases
    from typer import _click as click
except ImportError:  # pragma: no cover - older Typer on Click
    import click  # type: ignore[no-redef]
import typer

from localaug.cli import configfile
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

if TYPE_CHECKING:
    from localaug.jobs.options import JobOptions


# run --help: its options in panels, in the order a user decides them
INPUT, MODEL, SAMPLING, FILTERS, OUTPUT = "Input", "Model and prompt", "Sampling", "Filters", "Output and training"
ENGINE, SCALE, RESPOND = "Engine", "Scale-out (shards, Ray)", "Respond and judge (training files with answers)"
SETTINGS = "Settings from files"
RunModelPromptFormat, RunSystem, RunExamples = in_panel(PromptFormatOpt, MODEL), in_panel(SystemOpt, MODEL), in_panel(ExamplesOpt, MODEL)
RunTemp, RunTopP, RunTopK, RunMaxTok = (in_panel(o, SAMPLING) for o in (TempOpt, TopPOpt, TopKOpt, MaxTokOpt))
RunDevice, RunLayers, RunThreads, RunCtx = (in_panel(o, ENGINE) for o in (DeviceOpt, LayersOpt, ThreadsOpt, CtxOpt))
RunJson = in_panel(JsonOpt, OUTPUT)


@handled
def run(
    ctx: typer.Context,
    task: Annotated[Optional[Task], typer.Argument(help="What to do to every row (from --config or --replay when not given).", show_default=False)] = None,  # type: ignore[valid-type]
    # input, and where the output goes (both required: first)
    input: Annotated[Optional[str], typer.Option("--input", "-i", rich_help_panel=INPUT, help="Required. JSONL, JSON array, CSV, Parquet, or a datasets save_to_disk folder (with --ray also a folder of files or a URI Ray reads, e.g. s3://…).")] = None,  # noqa: A002
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT, help="Required. Where results go (JSONL records; or the --format training file; with --ray a folder of part files).")] = None,
    field: Annotated[str, typer.Option("--field", rich_help_panel=INPUT, help="The column with the text (dotted path for nested JSON).")] = "instruction",
    response_field: Annotated[Optional[str], typer.Option("--response-field", rich_help_panel=INPUT, help="pairs: the response column (default: response, else output).")] = None,
    input_field: Annotated[Optional[str], typer.Option("--input-field", rich_help_panel=INPUT, help="A column of context given with the text (Alpaca's input): the prompt is the text, a newline, then it; respond keeps it apart in the record and exports (alpaca input).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", rich_help_panel=INPUT, help="At most this many rows (of this shard).")] = None,
    # model and prompt
    model: Annotated[Optional[str], typer.Option("--model", "-m", envvar="LOCALAUG_MODEL", rich_help_panel=MODEL, help="Family name, Hugging Face repo id, GGUF file or checkpoint folder; or a model on an OpenAI-compatible server, URL#MODEL (key in LOCALAUG_REMOTE_API_KEY).")] = None,
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
    device: RunDevice = Device.auto, gpu_layers: RunLayers = None, threads: RunThreads = None, n_ctx: RunCtx = None,
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
    # where the settings come from besides the flags
    config: Annotated[Optional[Path], typer.Option("--config", rich_help_panel=SETTINGS, help="A TOML file of settings, keyed by the options' names without dashes (max_tokens = 256); flags given here override it. See docs/configuration.md.")] = None,
    replay: Annotated[Optional[Path], typer.Option("--replay", rich_help_panel=SETTINGS, help="Run again with the settings a run's manifest recorded (OUTPUT or OUTPUT.manifest.json): the same run id, so a partial run resumes; flags given here override them.")] = None,
) -> None:
    """Augment a whole dataset: one record per input row, resumable after any interruption.

    Example: [bold]localaug run refine --input prompts.jsonl --output refined.jsonl[/bold]
    or, to a training file: [bold]localaug run refine -i seeds.jsonl -o train.json --respond-with qwen2-instruct:1.5b --format alpaca[/bold]
    """
    request = run_request(ctx)
    if request.replayed is not None:
        err_console().print(f"replaying {request.replayed}: {request.task} {request.input} -> {request.output} with the "
                            "settings it recorded", highlight=False, soft_wrap=True)
    _run(request, as_json=as_json)


@dataclass(frozen=True)
class RunRequest:
    """What ``localaug run`` runs, built from its flags, a config file, a replayed run and the environment."""

    task: str
    input: str
    output: Path
    fmt: str
    options: JobOptions  # the job's settings (engine, sampling, filters ...): what the API builds too
    ray: dict[str, Any]  # on_ray.run_job's own settings (empty: on this machine)
    chain: dict[str, Any]  # respond_with / respond, judge / judging / selection
    replayed: Path | None = None  # the manifest whose settings were taken


def run_request(ctx: click.Context) -> RunRequest:
    """The run the command line asks for (flag > --config file > --replay > environment > default)."""
    given = ctx.params
    files: list[tuple[dict[str, Any], str]] = []
    replayed = None
    if given.get("replay") is not None:
        settings, replayed = configfile.replayed(given["replay"], _manifests(Path(given["replay"])))
        files.append((settings, f"the settings recorded in {replayed}"))
    if given.get("config") is not None:
        files.append((configfile.read_config(given["config"]), f"config file {given['config']}"))
    p = configfile.layered(ctx, files)
    missing = [flag for flag, name in (("TASK", "task"), ("--input", "input"), ("--output", "output")) if p.get(name) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: give {'it' if len(missing) == 1 else 'them'} on the command line "
                         "or in a --config file (or --replay a run)")
    p["output"], p["gpu_layers"] = Path(p["output"]), gpu_layers(p["gpu_layers"])
    ray = _scale_out(p["ray_address"], p["actors"], p["num_cpus"], p["num_gpus"], p["respond_with"], p["judge"],
                     p["samples"], p["input_field"])
    chain = _responder(p["respond_with"], p["respond_system"], p["respond_max_tokens"], p["respond_samples"])
    if p["judge"] is not None:
        chain.update(judge=p["judge"], judging={"max_tokens": p["judge_max_tokens"], "threads": p["threads"], "device": p["device"],
                                                "n_ctx": p["n_ctx"], "parallel": p["parallel"]},
                     selection={"rule": p["rule"], "margin": p["margin"], "min_score": p["min_score"]})
    elif p["min_score"] is not None or p["rule"] != "scores" or p["margin"] != 1.0:
        raise UsageError("--min-score, --rule and --margin choose among judged answers: give --judge")
    from localaug.jobs.options import JobOptions

    job = {name: p[name] for name in job_settings() if name in p}  # min_p, repeat_penalty: the API's alone
    if isinstance(job["examples"], str):
        job["examples"] = Path(job["examples"])
    options = JobOptions.of(p["task"], **job, command=configfile.recordable(p, ctx.command))
    return RunRequest(p["task"], p["input"], p["output"], p["out_format"], options, ray, chain, replayed)


def job_settings() -> tuple[str, ...]:
    """run's parameters that are JobOptions' fields (flat: the engine, sampling and filters settings among them)."""
    from localaug.augment import settings

    return ("model", "field", "response_field", "input_field", "limit", "shard", "prompt_format", "system", "examples", "n",
            "samples", "retry_failed", *settings.field_names(settings.EngineSettings),
            *settings.field_names(settings.SamplingSettings), *settings.field_names(settings.FilterSettings))


def _manifests(path: Path) -> list[Path]:
    """Where the manifest of a run to replay may be: the path itself, the output's, a Ray folder's, or a
    chained run's first phase (killed before its second phase began)."""
    from localaug.jobs import dataio, paths

    if path.name.endswith(paths.MANIFEST_SUFFIX):
        return [path]
    found = [paths.manifest_of(path), paths.folder_manifest(path)]
    return found + [paths.manifest_of(paths.stage_path(path, task)) for task in dataio.INSTRUCTION_TASKS]


def _run(request: RunRequest, as_json: bool) -> None:
    """Run ``request`` and show its summary."""
    from localaug.cli.render import jobs as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import job_progress_for
    from localaug.core.errors import JobError, JobInterrupted
    from localaug.jobs import run as jobs

    console = err_console()
    run_job: Callable[..., Any] = jobs.run_job
    if request.ray:
        from localaug.jobs import on_ray  # the same job on Ray, into a folder of parts

        run_job = on_ray.run_job
    extra = {**request.ray, **request.chain}
    try:
        summary = run_job(request.task, request.input, request.output, fmt=request.fmt, progress=job_progress_for(console),
                          **extra, **request.options.kwargs())
    except JobInterrupted as e:
        draw.render_interrupted(console, message(e))
        raise typer.Exit(e.exit_code) from None
    if as_json:
        print_json(out_console(), draw.job_json(summary, _dataset_info(request.output, request.fmt)))
    else:
        draw.render_job_summary(console, summary)
    for stage in (*summary.stages, summary):  # a job that made nothing is not a success
        failed = stage.all_failed()
        if failed:
            raise JobError(failed)
    if request.ray:
        console.print(f"join the parts into one file: localaug merge {request.output} -o merged.jsonl", highlight=False,
                      soft_wrap=True)


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
