"""Commands that bring models in, describe them, carry them and remove them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from localaug.cli.shell import command, err_console, handled, out_console, sub_app


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
    from localaug.cli.render import models as draw
    from localaug.cli.render.progress import progress_for
    from localaug.convert import convert_checkpoint

    console = err_console()
    progress = progress_for(console)
    try:
        result = convert_checkpoint(src, output, quant, name=name, threads=threads, progress=progress)
    finally:
        progress.close()
    draw.render_convert_done(out_console(), result)


@handled
def inspect(
    file: Annotated[Path, typer.Argument(help="A .gguf file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show a GGUF file's architecture, size, quant type, tokenizer, chat template and provenance.

    Example: [bold]localaug inspect refine.gguf --json[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.store.gguf_info import inspect_gguf

    info = inspect_gguf(file)
    if as_json:
        print_json(out_console(), info.to_dict())
    else:
        draw.render_gguf_info(out_console(), info)


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
    from localaug.cli.render import models as draw
    from localaug.cli.render.progress import progress_for
    from localaug.store import local as store

    progress = progress_for(err_console())
    try:
        entry = store.pull(model, revision=revision, quant=quant, progress=progress)
    finally:
        progress.close()
    draw.render_pull_done(out_console(), entry)


@handled
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List the model family and what is in the local store (name, quant, size, origin, sha256).

    Example: [bold]localaug models --json[/bold]
    """
    _list_models(as_json)


@handled
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """The same as [bold]localaug models[/bold]: the family and the local store.

    Example: [bold]localaug list[/bold]
    """
    _list_models(as_json)


@handled
def rm(
    model: Annotated[str, typer.Argument(help="A stored model: family name, repo id or store name (localaug models).")],
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Only this quantization (default: every stored one).")] = None,
) -> None:
    """Delete a stored model's GGUF files (one quantization, or all) and their store records.

    Example: [bold]localaug rm qwen2-refine:1.5b --quant Q8_0[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.store import local as store

    draw.render_removed(out_console(), store.remove(model, quant))


def _list_models(as_json: bool) -> None:
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.family import registry
    from localaug.store import local as store

    specs, entries = registry.family(), store.list_entries()
    if as_json:
        print_json(out_console(), draw.models_json(specs, entries))
    else:
        draw.render_models(out_console(), specs, entries, store.root())




@handled
def bundle_export(
    models: Annotated[list[str], typer.Argument(help="Stored models: family names, repo ids or store names (`localaug models`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle to write, e.g. models.tar.")],
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Only this quantization (default: every stored one).")] = None,
) -> None:
    """Write stored models (GGUF files, sha256 manifests, provenance) into one tar archive.

    Example: [bold]localaug bundle export qwen2-refine:1.5b qwen2-exp:1.5b -o models.tar[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render.progress import progress_for
    from localaug.store.bundle import export_bundle

    progress = progress_for(err_console(), noun="files")
    try:
        result = export_bundle(models, output, quant=quant, progress=progress)
    finally:
        progress.close()
    draw.render_bundle_exported(out_console(), result)


@handled
def bundle_import(
    archive: Annotated[Path, typer.Argument(help="A bundle written by `localaug bundle export`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace stored files that have a different sha256.")] = False,
) -> None:
    """Verify every file of a bundle, then add its models to the store (all or nothing).

    Example: [bold]localaug bundle import models.tar[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render.progress import progress_for
    from localaug.store.bundle import import_bundle

    progress = progress_for(err_console(), noun="files")
    try:
        result = import_bundle(archive, force=force, progress=progress)
    finally:
        progress.close()
    draw.render_bundle_imported(out_console(), result)


@handled
def export_modelfile(
    model: Annotated[str, typer.Argument(help="A stored family model (name, repo id) or a family GGUF file.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (default: print to stdout).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Which stored quantization (default: the recommended one).")] = None,
) -> None:
    """Write an Ollama Modelfile: the stored GGUF, its exact prompt template, stop strings and sampling.

    Example: [bold]localaug export-modelfile qwen2-refine:1.5b -o Modelfile && ollama create qwen2-refine:1.5b -f Modelfile[/bold]
    """
    from localaug.store import modelfile

    result = modelfile.for_model(model, quant)
    if output is None:
        out_console().out(result.text, highlight=False, end="")
        return
    modelfile.write(result, output)
    err_console().print(f"wrote {output} for {result.gguf}: [bold]ollama create {result.spec.name} -f {output}[/bold]",
                        highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (convert, inspect, pull, models):
        command(app, fn, panel="Models")
    command(app, list_, "list", panel="Models")
    bundle = sub_app("Carry stored models to another machine (an air-gapped one) as one verified tar archive.")
    command(bundle, bundle_export, "export")
    command(bundle, bundle_import, "import")
    app.add_typer(bundle, name="bundle", rich_help_panel="Models")
    for fn in (rm, export_modelfile):
        command(app, fn, panel="Models")
