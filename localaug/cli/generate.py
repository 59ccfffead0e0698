"""Commands that generate: refine, expand and pairs in the terminal, and the speed and install checks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from localaug.cli.shell import command, err_console, handled, out_console
from localaug.cli.options import (
    CtxOpt,
    Device,
    DeviceOpt,
    ExamplesOpt,
    JsonOpt,
    LayersOpt,
    MaxTokOpt,
    ModelOpt,
    PromptFormatOpt,
    SeedOpt,
    SystemOpt,
    TempOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    gpu_layers,
    value,
)


def _load(task: str, model: str | None, prompt_format: Any, device: Any, layers: str | None, threads: int | None,
          ctx: int | None, system: str | None = None, examples: Path | None = None) -> Any:
    from localaug.api import DEFAULT_MODELS, Augmenter

    return Augmenter.load(model or DEFAULT_MODELS[task], device=value(device), gpu_layers=gpu_layers(layers), threads=threads,
                          n_ctx=ctx, prompt_format=value(prompt_format), system=system, examples=examples)


def _drain(events: Any, show: Callable[[int, Any], None] | None) -> Any:
    """Run an expand/pairs event stream: show each accepted item (numbered) and return the ExpandResult."""
    from localaug.augment.tasks import ExpandResult

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


@handled
def refine(
    text: Annotated[Optional[str], typer.Argument(help="The instruction to refine; '-' reads stdin; none on a terminal starts an interactive loop.")] = None,
    model: ModelOpt = None,
    compare: Annotated[bool, typer.Option("--compare", help="Show the original and the refined prompt side by side.")] = False,
    as_json: JsonOpt = False,
    prompt_format: PromptFormatOpt = None,
    system: SystemOpt = None, examples: ExamplesOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Rewrite an instruction so a model answers it in more detail and more truthfully.

    The reply is judged as a job judges it: an echo of the input (or of an in-context example), a
    refusal, an empty or cut-off reply is reported as such and the command exits 1.

    Example: [bold]localaug refine "Create a travel guide for Hangzhou." --compare[/bold]
    """
    from localaug.cli.render import generate as draw
    from localaug.cli.render import print_json

    given = _read_input(text)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    console = out_console()
    with _load("refine", model, prompt_format, device, layers, threads, ctx, system, examples) as aug:
        def run(instruction: str) -> bool:
            view = draw.StreamView(console, "refining…") if not as_json else None
            try:
                refined, gen = aug.refine_full(instruction, on_piece=view.piece if view else None, **sampling)
            finally:
                if view:
                    view.close()
            reason = aug.verdict(instruction, refined, gen)
            if as_json:
                print_json(console, draw.refined_json(instruction, refined, reason, gen, aug.engine.path, seed))
            elif reason:
                draw.render_rejected_refinement(err_console(), refined, reason)
            else:
                footer = f"{gen.completion_tokens} tokens, {gen.stats['decode_tokens_per_s']:.1f} tok/s, {gen.finish_reason}"
                draw.render_refined(console, instruction, refined, compare, footer)
            return reason is None

        if given is not None:
            if not run(given.strip()):
                raise typer.Exit(1)
            return
        err_console().print("interactive: type an instruction and press Enter; Ctrl-D quits", highlight=False)
        while True:
            try:
                line = console.input("[bold cyan]instruction>[/bold cyan] ")
            except EOFError:
                break
            if line.strip():
                run(line.strip())


@handled
def expand(
    text: Annotated[str, typer.Argument(help="The seed instruction; '-' reads stdin.")],
    n: Annotated[int, typer.Option("-n", help="How many new instructions.")] = 3,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    prompt_format: PromptFormatOpt = None,
    system: SystemOpt = None, examples: ExamplesOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Write n new instructions of the same task type but different content (duplicates removed).

    Example: [bold]localaug expand "Plan a tour of France that includes Paris and Lyon." -n 5[/bold]
    """
    from localaug.cli.render import generate as draw
    from localaug.cli.render import print_json
    from localaug.augment import tasks

    seed_text = (_read_input(text) or "").strip()
    console = out_console()
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    with _load("expand", model, prompt_format, device, layers, threads, ctx, system, examples) as aug:
        events = tasks.expand_iter(aug.engine, aug.style, seed_text, n, aug.sampling(**sampling))
        result = _drain(events, None if as_json else lambda i, item: draw.render_item(console, i, item))
    if as_json:
        print_json(console, draw.expanded_json(seed_text, result))
    else:
        draw.render_shortfall(err_console(), len(result.items), n, result.samples, result.rejected)
    if result.shortfall:
        raise typer.Exit(1)


@handled
def pairs(
    file: Annotated[str, typer.Argument(help="Seed pairs: JSON/JSONL of {instruction, response} (or Alpaca), or ### blocks; '-' reads stdin.")],
    n: Annotated[int, typer.Option("-n", help="How many new pairs.")] = 1,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    prompt_format: PromptFormatOpt = None,
    system: SystemOpt = None, examples: ExamplesOpt = None,
    temperature: TempOpt = None, top_p: TopPOpt = None, top_k: TopKOpt = None, max_tokens: MaxTokOpt = None, seed: SeedOpt = None,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Write new instruction-response pairs from seed pairs (Response-Exp).

    Example: [bold]localaug pairs seeds.jsonl -n 3 --json[/bold]
    """
    from localaug.cli.render import generate as draw
    from localaug.cli.render import print_json
    from localaug.augment import tasks
    from localaug.core.errors import UsageError
    from localaug.family import prompts

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
    with _load("pairs", model, prompt_format, device, layers, threads, ctx, system, examples) as aug:
        events = tasks.pairs_iter(aug.engine, aug.style, seeds, n, aug.sampling(**sampling))
        result = _drain(events, None if as_json else lambda i, p: draw.render_pair(console, i, p.instruction, p.response))
    if as_json:
        print_json(console, draw.pairs_json(result))
    else:
        draw.render_shortfall(err_console(), len(result.items), n, result.samples, result.rejected)
    if result.shortfall:
        raise typer.Exit(1)


@handled
def doctor(as_json: JsonOpt = False) -> None:
    """Report the llama.cpp build (backends, GPU offload, CPU features), threads, memory and the store.

    Example: [bold]localaug doctor[/bold]
    """
    from localaug.cli.render import generate as draw
    from localaug.cli.render import print_json
    from localaug.api import doctor as report

    data = report()
    if as_json:
        print_json(out_console(), data)
    else:
        draw.render_doctor(out_console(), data)



@handled
def bench(
    model: ModelOpt = None,
    tokens: Annotated[int, typer.Option("--tokens", help="Tokens to generate per run.")] = 64,
    repeats: Annotated[int, typer.Option("--repeats", help="Runs; the median is reported.")] = 3,
    batch: Annotated[bool, typer.Option("--batch", help="Measure generated tokens/s at batch sizes 1, 2, 4, ... (localaug's continuous batching next to a bare llama_decode loop) and say which batch size localaug picks.")] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None, ctx: CtxOpt = None,
) -> None:
    """Measure load time, time to first token, prefill and decode tokens/s, next to raw llama.cpp decode.

    Example: [bold]localaug bench --model qwen2-refine:1.5b --tokens 128[/bold] or [bold]localaug bench --batch[/bold]
    """
    from localaug.cli.render import generate as draw
    from localaug.cli.render import print_json
    from localaug.family import styles
    from localaug.runtime.bench import BENCH_PROMPT, run_bench

    with _load("refine", model, None, device, layers, threads, ctx) as aug:
        if batch:
            curve = _batch_curve(aug, min(tokens, 32))
        else:
            result = run_bench(aug.engine, styles.build_prompt(aug.style, "refine", BENCH_PROMPT), tokens, repeats)
    if batch:
        if as_json:
            print_json(out_console(), curve)
        else:
            draw.render_batch_curve(out_console(), curve)
    elif as_json:
        print_json(out_console(), result.to_dict())
    else:
        draw.render_bench(out_console(), result)


def _batch_curve(aug: Any, tokens: int) -> dict[str, Any]:
    from localaug.family.registry import context_size
    from localaug.runtime.bench import BATCH_SIZES, GPU_BATCH_SIZES, batch_curve, fastest
    from localaug.runtime.calibrate import CALIBRATION_PROMPT, affordable

    engine = aug.engine
    n_ctx = context_size(engine.opts.n_ctx, engine.n_ctx_train)
    sizes = affordable(engine, n_ctx, GPU_BATCH_SIZES if engine.gpu_layers else BATCH_SIZES)
    points = batch_curve(engine, engine.tokenize(CALIBRATION_PROMPT), sizes, tokens)
    return {"model": str(engine.path), "threads": engine.threads, "gpu_layers": engine.gpu_layers, "tokens": tokens,
            "curve": [{"parallel": p.parallel, "tokens_per_s": round(p.tokens_per_s, 2),
                       "raw_tokens_per_s": round(p.raw_tokens_per_s or 0, 2),
                       "vs_raw": round(p.vs_raw or 0, 3)} for p in points],
            "chosen": fastest(points)}


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (refine, expand, pairs):
        command(app, fn, panel="Generate")
    for fn in (doctor, bench):
        command(app, fn, panel="This machine")
