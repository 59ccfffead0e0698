"""The ``localaug`` command: a thin Typer shell over the API; logic lives elsewhere, drawing in ui.py."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from localaug import __version__
from localaug.errors import LocalaugError

try:  # Typer carries its own copy of Click in recent releases
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on Click
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="localaug",
    help="Offline runtime for the Qwen2 Refine/Exp data-augmentation models: convert, quantize, inspect, run.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def out_console() -> Console:
    return Console()


def err_console() -> Console:
    return Console(stderr=True)


def handled(fn: F) -> F:
    """Turn our errors into one line on stderr and the right exit code (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LocalaugError as e:
            if _state["debug"]:
                import traceback

                traceback.print_exc()
            err_console().print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted: nothing was left half-written", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"localaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
@handled
def convert(
    src: Annotated[Path, typer.Argument(help="A local Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).")],
    quant: Annotated[str, typer.Option("--quant", "-q", help="F32, F16, BF16, Q8_0 or a llama.cpp quantization such as Q4_K_M.")] = "Q4_K_M",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf file or folder (default: ./<folder>.<QUANT>.gguf).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name written into the GGUF metadata.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Quantizer threads (default: all cores).")] = None,
) -> None:
    """Convert a Hugging Face Qwen2 checkpoint to a (quantized) GGUF file.

    Example: [bold]localaug convert ./Qwen2-1.5B-Instruct-Refine --quant Q4_K_M -o refine.gguf[/bold]
    """
    from localaug import ui
    from localaug.convert import convert_checkpoint

    console = err_console()
    progress = ui.progress_for(console)
    try:
        result = convert_checkpoint(src, output, quant, name=name, threads=threads, progress=progress)
    finally:
        progress.close()
    ui.render_convert_done(out_console(), str(result.path), result.quant, result.n_bytes, result.n_parameters, result.seconds)


@app.command()
@handled
def inspect(
    file: Annotated[Path, typer.Argument(help="A .gguf file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show a GGUF file's architecture, size, quant type, tokenizer, chat template and provenance.

    Example: [bold]localaug inspect refine.gguf --json[/bold]
    """
    from localaug import ui
    from localaug.gguf_info import inspect_gguf

    info = inspect_gguf(file)
    if as_json:
        ui.print_json(out_console(), info.to_dict())
    else:
        ui.render_gguf_info(out_console(), info)


@app.command()
@handled
def pull(
    model: Annotated[str, typer.Argument(help="A family name (qwen2-refine:1.5b), a Hugging Face repo id (org/name) or a local checkpoint folder.")],
    revision: Annotated[Optional[str], typer.Option("--revision", "-r", help="Branch, tag or commit of the Hugging Face repo (default: the family's pinned revision, else main).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="F16, Q8_0, Q4_K_M, ... (default: the family's recommended quant, else Q4_K_M).")] = None,
) -> None:
    """Download a model (or take a local checkpoint), convert it to GGUF and keep it in the local store.

    Honours HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN; the store is LOCALAUG_HOME.

    Example: [bold]localaug pull qwen2-refine:1.5b --quant Q4_K_M[/bold]
    """
    from localaug import store, ui

    progress = ui.progress_for(err_console())
    try:
        entry = store.pull(model, revision=revision, quant=quant, progress=progress)
    finally:
        progress.close()
    ui.render_pull_done(out_console(), entry)


@app.command()
@handled
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List the model family and what is in the local store (name, quant, size, origin, sha256).

    Example: [bold]localaug models --json[/bold]
    """
    from localaug import registry, store, ui

    specs, entries = registry.family(), store.list_entries()
    if as_json:
        ui.print_json(out_console(), ui.models_json(specs, entries))
    else:
        ui.render_models(out_console(), specs, entries, store.root())


# --- generation --------------------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Family name, Hugging Face repo id, GGUF file or checkpoint folder.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Force the prompt format: qwen2-chatml, qwen2-response-pairs or teacher.")]
TempOpt = Annotated[Optional[float], typer.Option("--temperature", help="0 = greedy (default: the model manifest's, 0.5).")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling (default 0.95).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Top-k sampling (default 50).")]
MaxTokOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="New tokens at most (default 2048).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Fixed seed: same output on the same build and device.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or metal.")]
LayersOpt = Annotated[Optional[str], typer.Option("--gpu-layers", help="Layers to offload: a number or 'all' (default: all on a GPU).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")]
CtxOpt = Annotated[Optional[int], typer.Option("--ctx", help="Context size (default 4096, grown up to the trained length when needed).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object, no decoration.")]


def _load(task: str, model: str | None, fmt: str | None, device: str, gpu_layers: str | None, threads: int | None, ctx: int | None):
    from localaug.api import DEFAULT_MODELS, Augmenter
    from localaug.errors import UsageError

    if device not in ("auto", "cpu", "cuda", "metal"):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or metal")
    layers: int | str | None = gpu_layers
    if gpu_layers is not None and gpu_layers != "all":
        if not gpu_layers.isdigit():
            raise UsageError(f"--gpu-layers {gpu_layers!r}: give a number or 'all'")
        layers = int(gpu_layers)
    return Augmenter.load(model or DEFAULT_MODELS[task], device=device, gpu_layers=layers, threads=threads, n_ctx=ctx, prompt_format=fmt)


def _drain(events: Any, show: Callable[[int, Any], None] | None) -> Any:
    """Run an expand/pairs event stream: show each accepted item (numbered) and return the ExpandResult."""
    from localaug.tasks import ExpandResult

    shown = 0
    for event in events:
        if isinstance(event, ExpandResult):
            return event
        shown += 1
        if show:
            show(shown, event)
    raise AssertionError("event stream ended without a result")


def _read_input(text: str | None) -> str | None:
    """TEXT, or stdin for '-' or a pipe; None means: interactive."""
    if text == "-" or (text is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    return text


@app.command()
@handled
def refine(
    text: Annotated[Optional[str], typer.Argument(help="The instruction to refine; '-' reads stdin; none on a terminal starts an interactive loop.")] = None,
    model: ModelOpt = None,
    compare: Annotated[bool, typer.Option("--compare", help="Show the original and the refined prompt side by side.")] = False,
    as_json: JsonOpt = False,
    fmt: FormatOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Rewrite an instruction so a model answers it in more detail and more truthfully.

    Example: [bold]localaug refine "Create a travel guide for Hangzhou." --compare[/bold]
    """
    from localaug import ui

    given = _read_input(text)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    console = out_console()
    with _load("refine", model, fmt, device, gpu_layers, threads, ctx) as aug:
        def run(instruction: str) -> None:
            view = ui.StreamView(console, "refining…") if not as_json else None
            try:
                refined, gen = aug.refine_full(instruction, on_piece=view.piece if view else None, **sampling)
            finally:
                if view:
                    view.close()
            if as_json:
                ui.print_json(console, {
                    "input": instruction, "output": refined, "model": str(aug.engine.path), "seed": seed,
                    "finish_reason": gen.finish_reason, "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens, "seconds": round(gen.seconds, 3),
                })
            else:
                footer = f"{gen.completion_tokens} tokens, {gen.stats['decode_tokens_per_s']:.1f} tok/s, {gen.finish_reason}"
                ui.render_refined(console, instruction, refined, compare, footer)

        if given is not None:
            run(given.strip())
            return
        err_console().print("interactive: type an instruction and press Enter; Ctrl-D quits", highlight=False)
        while True:
            try:
                line = console.input("[bold cyan]instruction>[/bold cyan] ")
            except EOFError:
                break
            if line.strip():
                run(line.strip())


@app.command()
@handled
def expand(
    text: Annotated[str, typer.Argument(help="The seed instruction; '-' reads stdin.")],
    n: Annotated[int, typer.Option("-n", help="How many new instructions.")] = 3,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    fmt: FormatOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Write n new instructions of the same task type but different content (duplicates removed).

    Example: [bold]localaug expand "Plan a tour of France that includes Paris and Lyon." -n 5[/bold]
    """
    from localaug import tasks, ui

    seed_text = (_read_input(text) or "").strip()
    console = out_console()
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    with _load("expand", model, fmt, device, gpu_layers, threads, ctx) as aug:
        events = tasks.expand_iter(aug.engine, aug.style, seed_text, n, aug.sampling(**sampling))
        result = _drain(events, None if as_json else lambda i, item: ui.render_item(console, i, item))
    if as_json:
        ui.print_json(console, {"input": seed_text, "instructions": result.items, "samples": result.samples,
                                "rejected": result.rejected, "shortfall": result.shortfall})
    else:
        ui.render_shortfall(err_console(), len(result.items), n, result.samples, result.rejected)
    if result.shortfall:
        raise typer.Exit(1)



@app.command()
@handled
def pairs(
    file: Annotated[str, typer.Argument(help="Seed pairs: JSON/JSONL of {instruction, response} (or Alpaca), or ### blocks; '-' reads stdin.")],
    n: Annotated[int, typer.Option("-n", help="How many new pairs.")] = 1,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    fmt: FormatOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Write new instruction-response pairs from seed pairs (Response-Exp).

    Example: [bold]localaug pairs seeds.jsonl -n 3 --json[/bold]
    """
    from localaug import prompts, tasks, ui
    from localaug.errors import UsageError

    if file == "-":
        raw = sys.stdin.read()
    else:
        try:
            raw = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read {file}: {e.strerror}") from e
    seeds = prompts.read_seed_pairs(raw)
    console = out_console()
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    with _load("pairs", model, fmt, device, gpu_layers, threads, ctx) as aug:
        events = tasks.pairs_iter(aug.engine, aug.style, seeds, n, aug.sampling(**sampling))
        result = _drain(events, None if as_json else lambda i, p: ui.render_pair(console, i, p.instruction, p.response))
    if as_json:
        ui.print_json(console, {"pairs": [{"instruction": p.instruction, "response": p.response} for p in result.items],
                                "samples": result.samples, "rejected": result.rejected, "shortfall": result.shortfall})
    else:
        ui.render_shortfall(err_console(), len(result.items), n, result.samples, result.rejected)
    if result.shortfall:
        raise typer.Exit(1)


@app.command()
@handled
def run(
    task: Annotated[str, typer.Argument(help="refine, expand or pairs.")],
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL, JSON array, CSV, Parquet, or a datasets save_to_disk folder (with --ray also a folder of files or a URI Ray reads, e.g. s3://…).")],  # noqa: A002
    output: Annotated[Path, typer.Option("--output", "-o", help="Where results go (JSONL records; or the --format training file; with --ray a folder of part files).")],
    field: Annotated[str, typer.Option("--field", help="The column with the text (dotted path for nested JSON).")] = "instruction",
    response_field: Annotated[Optional[str], typer.Option("--response-field", help="pairs: the response column (default: response, else output).")] = None,
    n: Annotated[int, typer.Option("-n", help="expand/pairs: new items per row.")] = 3,
    model: ModelOpt = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Sequences decoded together (continuous batching); 1: one at a time.")] = 8,
    out_format: Annotated[str, typer.Option("--format", help="jsonl or parquet (records), or a training file: alpaca, sharegpt, messages.")] = "jsonl",
    prompt_format: Annotated[Optional[str], typer.Option("--prompt-format", help="Force the prompt format: qwen2-chatml, qwen2-response-pairs or teacher.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/N: only the rows whose key falls in shard i of N (join with localaug merge).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many rows (of this shard).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run again the rows recorded as failed.")] = False,
    dedup: Annotated[str, typer.Option("--dedup", help="Duplicates across rows: row (within a row only), exact, or minhash near duplicates.")] = "exact",
    minhash_threshold: Annotated[float, typer.Option("--minhash-threshold", help="--dedup minhash: Jaccard similarity counted as a duplicate.")] = 0.8,
    rouge_l: Annotated[float, typer.Option("--rouge-l", help="Near duplicates within a row: ROUGE-L at or above this.")] = 0.7,
    echo: Annotated[float, typer.Option("--echo", help="refine: an output this close (ROUGE-L) to its input is an echo.")] = 0.9,
    min_chars: Annotated[int, typer.Option("--min-chars", help="Drop new texts shorter than this.")] = 4,
    max_chars: Annotated[Optional[int], typer.Option("--max-chars", help="Drop new texts longer than this.")] = None,
    keep_refusals: Annotated[bool, typer.Option("--keep-refusals", help="Keep replies that are refusals.")] = False,
    max_samples: Annotated[Optional[int], typer.Option("--max-samples", help="expand/pairs: samples drawn per row at most (default max(3n, n+4)).")] = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every row (sample k uses seed+k).")] = 0,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray", help="Run on Ray: auto, local, or a cluster address; --output is then a folder of part files (needs the ray extra).")] = None,
    actors: Annotated[Optional[int], typer.Option("--actors", help="--ray: actors, each loading the model once (default: as many as the nodes fit).")] = None,
    num_cpus: Annotated[Optional[float], typer.Option("--num-cpus", help="--ray: CPUs per actor, and its llama.cpp threads (default: 1 with --num-gpus, else a whole node).")] = None,
    num_gpus: Annotated[Optional[float], typer.Option("--num-gpus", help="--ray: GPUs per actor (all layers offloaded).")] = None,
) -> None:
    """Augment a whole dataset: one record per input row, resumable after any interruption.

    Example: [bold]localaug run refine --input prompts.jsonl --output refined.jsonl --parallel 8[/bold]
    """
    from localaug import ui
    from localaug.errors import JobInterrupted, UsageError
    from localaug import jobs

    run_job: Callable[..., Any] = jobs.run_job
    extra: dict[str, Any] = {}
    if ray_address is not None:
        from localaug import ray as on_ray  # the same job on Ray, into a folder of parts

        run_job = on_ray.run_job
        extra = dict(address=ray_address, actors=actors, num_cpus=num_cpus, num_gpus=num_gpus)
    elif actors is not None or num_cpus is not None or num_gpus is not None:
        raise UsageError("--actors, --num-cpus and --num-gpus go with --ray")

    if device not in ("auto", "cpu", "cuda", "metal"):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or metal")
    if gpu_layers is not None and gpu_layers != "all" and not gpu_layers.isdigit():
        raise UsageError(f"--gpu-layers {gpu_layers!r}: give a number or 'all'")
    layers = int(gpu_layers) if gpu_layers is not None and gpu_layers.isdigit() else gpu_layers
    console = err_console()
    try:
        summary = run_job(
            task, input, output, model=model, field=field, response_field=response_field, n=n, fmt=out_format,
            limit=limit, shard=shard, seed=seed, temperature=temperature, top_p=top_p, top_k=top_k,
            max_tokens=max_tokens, prompt_format=prompt_format, device=device, gpu_layers=layers, threads=threads,
            n_ctx=ctx, parallel=parallel, retry_failed=retry_failed, dedup=dedup, minhash_threshold=minhash_threshold,
            threshold=rouge_l, echo=echo, min_chars=min_chars, max_chars=max_chars, refusals=not keep_refusals,
            max_samples=max_samples, progress=ui.job_progress_for(console), **extra,
        )
    except JobInterrupted as e:
        ui.render_interrupted(console, str(e))
        raise typer.Exit(e.exit_code) from None
    ui.render_job_summary(console, summary)
    if ray_address is not None:
        console.print(f"join the parts into one file: localaug merge {output} -o merged.jsonl", highlight=False, soft_wrap=True)


@app.command()
@handled
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Job outputs (or folders of .jsonl parts) to join, e.g. out.*.jsonl.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged file.")],
    out_format: Annotated[str, typer.Option("--format", help="jsonl or parquet (records), or alpaca, sharegpt, messages.")] = "jsonl",
    dedup: Annotated[str, typer.Option("--dedup", help="New items repeated across inputs: none, exact, or minhash near duplicates.")] = "exact",
    minhash_threshold: Annotated[float, typer.Option("--minhash-threshold", help="--dedup minhash: Jaccard similarity counted as a duplicate.")] = 0.8,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Join outputs of different runs anyway.")] = False,
) -> None:
    """Join shard outputs into one file: one record per row, in input order, duplicates across shards removed.

    Example: [bold]localaug merge out.0.jsonl out.1.jsonl out.2.jsonl -o merged.jsonl[/bold]
    """
    from localaug import ui
    from localaug.merge import merge_outputs

    summary = merge_outputs(inputs, output, fmt=out_format, dedup=dedup, minhash_threshold=minhash_threshold,
                            allow_mixed=allow_mixed)
    ui.render_merge_summary(err_console(), summary)


@app.command()
@handled
def doctor(as_json: JsonOpt = False) -> None:
    """Report the llama.cpp build (backends, GPU offload, CPU features), threads, memory and the store.

    Example: [bold]localaug doctor[/bold]
    """
    from localaug import ui
    from localaug.api import doctor as report

    data = report()
    if as_json:
        ui.print_json(out_console(), data)
    else:
        ui.render_doctor(out_console(), data)



@app.command()
@handled
def bench(
    model: ModelOpt = None,
    tokens: Annotated[int, typer.Option("--tokens", help="Tokens to generate per run.")] = 64,
    repeats: Annotated[int, typer.Option("--repeats", help="Runs; the median is reported.")] = 3,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Measure load time, time to first token, prefill and decode tokens/s, next to raw llama.cpp decode.

    Example: [bold]localaug bench --model qwen2-refine:1.5b --tokens 128[/bold]
    """
    from localaug import tasks, ui
    from localaug.bench import BENCH_PROMPT, run_bench

    with _load("refine", model, None, device, gpu_layers, threads, ctx) as aug:
        result = run_bench(aug.engine, tasks.build_prompt(aug.style, "refine", BENCH_PROMPT), tokens, repeats)
    if as_json:
        ui.print_json(out_console(), result.to_dict())
    else:
        ui.render_bench(out_console(), result)


# --- carrying models: bundles and Ollama Modelfiles ---------------------------------------------

bundle_app = typer.Typer(
    help="Carry stored models to another machine (an air-gapped one) as one verified tar archive.",
    no_args_is_help=True,
)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("export")
@handled
def bundle_export(
    models: Annotated[list[str], typer.Argument(help="Stored models: family names, repo ids or store names (`localaug models`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle to write, e.g. models.tar.")],
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Only this quantization (default: every stored one).")] = None,
) -> None:
    """Write stored models (GGUF files, sha256 manifests, provenance) into one tar archive.

    Example: [bold]localaug bundle export qwen2-refine:1.5b qwen2-exp:1.5b -o models.tar[/bold]
    """
    from localaug import ui
    from localaug.bundle import export_bundle

    progress = ui.progress_for(err_console(), noun="files")
    try:
        result = export_bundle(models, output, quant=quant, progress=progress)
    finally:
        progress.close()
    ui.render_bundle_exported(out_console(), result)


@bundle_app.command("import")
@handled
def bundle_import(
    archive: Annotated[Path, typer.Argument(help="A bundle written by `localaug bundle export`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace stored files that have a different sha256.")] = False,
) -> None:
    """Verify every file of a bundle, then add its models to the store (all or nothing).

    Example: [bold]localaug bundle import models.tar[/bold]
    """
    from localaug import ui
    from localaug.bundle import import_bundle

    progress = ui.progress_for(err_console(), noun="files")
    try:
        result = import_bundle(archive, force=force, progress=progress)
    finally:
        progress.close()
    ui.render_bundle_imported(out_console(), result)


@app.command()
@handled
def export_modelfile(
    model: Annotated[str, typer.Argument(help="A stored family model (name, repo id) or a family GGUF file.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (default: print to stdout).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Which stored quantization (default: the recommended one).")] = None,
) -> None:
    """Write an Ollama Modelfile: the stored GGUF, its exact prompt template, stop strings and sampling.

    Example: [bold]localaug export-modelfile qwen2-refine:1.5b -o Modelfile && ollama create qwen2-refine:1.5b -f Modelfile[/bold]
    """
    from localaug import modelfile

    result = modelfile.for_model(model, quant)
    if output is None:
        out_console().out(result.text, highlight=False, end="")
        return
    modelfile.write(result, output)
    err_console().print(f"wrote {output} for {result.gguf}: [bold]ollama create {result.spec.name} -f {output}[/bold]",
                        highlight=False, soft_wrap=True)


@app.command()
@handled
def serve(
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="A model to serve (family name, repo id, GGUF file or checkpoint folder); repeat for several. The first is the default.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LOCALAUG_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Sequences decoded together per model (continuous batching).")] = 8,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for a slot; past it: 429.")] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most new tokens one request may ask for.")] = 2048,
    max_n: Annotated[int, typer.Option("--max-n", help="Most samples (n) one request may ask for.")] = 16,
    ctx: Annotated[Optional[int], typer.Option("--ctx", help="Context of one sequence, prompt + completion (default 4096); the KV cache holds --parallel of them.")] = None,
    device: DeviceOpt = "auto", gpu_layers: LayersOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models,
    and /v1/refine, /v1/expand, /v1/pairs; /health and /metrics.

    Example: [bold]localaug serve --model qwen2-refine:1.5b --model qwen2-exp:1.5b --port 8000[/bold]
    """
    from localaug.api import DEFAULT_MODELS
    from localaug.engine import EngineOptions
    from localaug.errors import UsageError
    from localaug.server import Limits, ServerConfig, bind, run_server, url_of
    from localaug.serving import load_models

    if device not in ("auto", "cpu", "cuda", "metal"):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or metal")
    if gpu_layers is not None and gpu_layers != "all" and not gpu_layers.isdigit():
        raise UsageError(f"--gpu-layers {gpu_layers!r}: give a number or 'all'")
    if min(parallel, max_tokens, max_n) < 1 or max_queue < 0:
        raise UsageError("--parallel, --max-tokens and --max-n must be at least 1, --max-queue at least 0")
    layers = int(gpu_layers) if gpu_layers is not None and gpu_layers.isdigit() else gpu_layers
    console = err_console()
    sock = bind(host, port)  # before loading, so a busy port fails at once
    try:
        opts = EngineOptions(device=device, gpu_layers=layers, threads=threads, n_ctx=ctx)  # type: ignore[arg-type]
        sources = list(dict.fromkeys(model or [DEFAULT_MODELS["refine"]]))
        console.print(f"loading {', '.join(sources)}…", highlight=False)
        served = load_models(sources, opts=opts, parallel=parallel, n_ctx=ctx, max_queue=max_queue)
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    console.print(f"[bold]localaug serve[/bold] on [bold]{url}/v1[/bold]  (OpenAI base_url)", highlight=False)
    for m in served:
        console.print(f"  model [bold]{m.id}[/bold]: {m.path} ({m.style.prompt_format}, {parallel} slots x {m.n_ctx} tokens)",
                      highlight=False, soft_wrap=True)
    console.print(f"  auth: {'on (Bearer key)' if api_key else 'off'}; limits: max_tokens {max_tokens}, n {max_n}, "
                  f"queue {max_queue}; Ctrl-C stops", highlight=False)
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[bold yellow]warning:[/bold yellow] listening on {host} without --api-key: anyone who can "
                      "reach this port can use the models", highlight=False)
    config = ServerConfig(api_key=api_key or None, limits=Limits(max_tokens=max_tokens, max_n=max_n))
    try:
        run_server(served, config, sock)
    except KeyboardInterrupt:
        pass
    finally:
        for m in served:
            m.close()
        sock.close()
    console.print("server stopped", highlight=False)


def main() -> None:
    """The console script: usage errors (unknown option, missing argument) are one line and exit 2,
    like every other error."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="localaug", standalone_mode=False)
    except getattr(click_errors, "NoArgsIsHelpError", ()) as e:  # type: ignore[misc]
        e.show()
        sys.exit(e.exit_code)
    except click_errors.UsageError as e:
        where = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
        err_console().print(f"[bold red]error:[/bold red] {escape(e.format_message())}{where}", highlight=False,
                            soft_wrap=True)
        sys.exit(e.exit_code)
    except (click_errors.Abort, KeyboardInterrupt):
        err_console().print("interrupted", highlight=False)
        sys.exit(130)
    except click_errors.ClickException as e:
        err_console().print(f"[bold red]error:[/bold red] {escape(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
