"""Commands that bring models in, describe them, carry them and remove them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from localaug.cli.options import QUANTS, JsonOpt, StoredQuantOpt
from localaug.cli.shell import command, err_console, handled, out_console, sub_app

PANEL = "Models"


@handled
def convert(
    src: Annotated[Path, typer.Argument(help="A local Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).")],
    quant: Annotated[str, typer.Option("--quant", "-q", help=f"The GGUF type, {QUANTS}: F32, F16, BF16 and Q8_0 are written directly, the others by llama.cpp's quantizer.")] = "Q4_K_M",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf file or folder (default: ./<folder>.<QUANT>.gguf).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name written into the GGUF metadata.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Quantizer threads (default: all cores).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a Hugging Face Qwen2 checkpoint to a (quantized) GGUF file.

    Example: [bold]localaug convert ./Qwen2-1.5B-Instruct-Refine --quant Q4_K_M -o refine.gguf[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import progress_for
    from localaug.convert import convert_checkpoint
    from localaug.core.files import sha256_file

    progress = progress_for(err_console())
    try:
        result = convert_checkpoint(src, output, quant, name=name, threads=threads, progress=progress)
    finally:
        progress.close()
    if as_json:
        print_json(out_console(), draw.convert_json(result, sha256_file(result.path)))
    else:
        draw.render_convert_done(out_console(), result)


@handled
def inspect(
    model: Annotated[str, typer.Argument(help="A .gguf file, or a stored model: family name, repo id or store name (localaug models).")],
    quant: StoredQuantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a GGUF file's architecture, size, quant type, tokenizer, chat template and provenance.

    Example: [bold]localaug inspect qwen2-refine:1.5b[/bold] or [bold]localaug inspect refine.gguf --json[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.store.gguf_info import inspect_gguf

    info = inspect_gguf(_gguf_of(model, quant.strip().upper() if quant else None))
    if as_json:
        print_json(out_console(), info.to_dict())
    else:
        draw.render_gguf_info(out_console(), info)


def _gguf_of(model: str, quant: str | None) -> Path:
    """A GGUF path as given (a file, or a name ending in .gguf), else the stored file of that name:
    the quant asked for, else the family's recommended one, else the newest. Nothing is pulled."""
    from localaug.core.errors import ModelNotFoundError
    from localaug.family import registry
    from localaug.store import local as store

    path = Path(model).expanduser()
    if path.suffix == ".gguf" or path.exists():
        return path
    spec = registry.find(model)
    names = {model, spec.name} if spec else {model}
    found = [e for e in store.list_entries()
             if (e.name in names or e.source.repo == model) and (quant is None or e.quant == quant)]
    if not found:
        what = f"{model} {quant}" if quant else model
        raise ModelNotFoundError(f"{what} is neither a file nor in the store: localaug pull {model} brings it in "
                                 "(localaug models lists what is stored)")
    default = spec.default_quant if spec else None
    return (next((e for e in found if e.quant == default), None) or max(found, key=lambda e: e.created)).path


@handled
def pull(
    model: Annotated[str, typer.Argument(help="A family name (qwen2-refine:1.5b), a Hugging Face repo id (org/name) or a local checkpoint folder.")],
    revision: Annotated[Optional[str], typer.Option("--revision", "-r", help="Branch, tag or commit of the Hugging Face repo (default: the family's pinned revision, else main).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help=f"Which quantization, {QUANTS} (default: the family's recommended one, else Q4_K_M).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a model (or take a local checkpoint), convert it to GGUF and keep it in the local store.

    Honours HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN; the store is LOCALAUG_HOME.

    Example: [bold]localaug pull qwen2-refine:1.5b --quant Q4_K_M[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import progress_for
    from localaug.store import local as store

    progress = progress_for(err_console())
    try:
        entry = store.pull(model, revision=revision, quant=quant, progress=progress)
    finally:
        progress.close()
    if as_json:
        print_json(out_console(), draw.pull_json(entry))
    else:
        draw.render_pull_done(out_console(), entry)


@handled
def models(as_json: JsonOpt = False) -> None:
    """List the model family and what is in the local store (name, quant, size, origin, sha256).
    Also [bold]localaug list[/bold] and [bold]localaug ls[/bold].

    Example: [bold]localaug ls --json[/bold]
    """
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
def rm(
    model: Annotated[str, typer.Argument(help="A stored model: family name, repo id or store name (localaug models).")],
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help=f"Only this quantization, {QUANTS} (default: every stored one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a stored model's GGUF files (one quantization, or all) and their store records.

    Example: [bold]localaug rm qwen2-refine:1.5b --quant Q8_0[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.store import local as store

    removed = store.remove(model, quant)
    if as_json:
        print_json(out_console(), {"removed": [draw.entry_json(e) for e in removed]})
    else:
        draw.render_removed(out_console(), removed)


@handled
def bundle_export(
    models: Annotated[list[str], typer.Argument(help="Stored models: family names, repo ids or store names (`localaug models`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle to write, e.g. models.tar.")],
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help=f"Only this quantization, {QUANTS} (default: every stored one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write stored models (GGUF files, sha256 manifests, provenance) into one tar archive.

    Example: [bold]localaug bundle export qwen2-refine:1.5b qwen2-exp:1.5b -o models.tar[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import progress_for
    from localaug.store.bundle import export_bundle

    progress = progress_for(err_console(), noun="files")
    try:
        result = export_bundle(models, output, quant=quant, progress=progress)
    finally:
        progress.close()
    if as_json:
        print_json(out_console(), draw.bundle_exported_json(result))
    else:
        draw.render_bundle_exported(out_console(), result)


@handled
def bundle_import(
    archive: Annotated[Path, typer.Argument(help="A bundle written by `localaug bundle export`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace stored files that have a different sha256.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify every file of a bundle, then add its models to the store (all or nothing).

    Example: [bold]localaug bundle import models.tar[/bold]
    """
    from localaug.cli.render import models as draw
    from localaug.cli.render import print_json
    from localaug.cli.render.progress import progress_for
    from localaug.store.bundle import import_bundle

    progress = progress_for(err_console(), noun="files")
    try:
        result = import_bundle(archive, force=force, progress=progress)
    finally:
        progress.close()
    if as_json:
        print_json(out_console(), draw.bundle_imported_json(result))
    else:
        draw.render_bundle_imported(out_console(), result)


@handled
def export_modelfile(
    model: Annotated[str, typer.Argument(help="A stored family model (name, repo id) or a family GGUF file.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (default: print to stdout).")] = None,
    quant: StoredQuantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write an Ollama Modelfile: the stored GGUF, its exact prompt template, stop strings and sampling.

    Example: [bold]localaug export-modelfile qwen2-refine:1.5b -o Modelfile && ollama create qwen2-refine:1.5b -f Modelfile[/bold]
    """
    from localaug.cli.render import print_json
    from localaug.store import modelfile

    result = modelfile.for_model(model, quant)
    if output is not None:
        modelfile.write(result, output)
    if as_json:
        print_json(out_console(), {"model": result.spec.name, "gguf": str(result.gguf),
                                   "output": None if output is None else str(output),
                                   "modelfile": result.text if output is None else None})
    elif output is None:
        out_console().out(result.text, highlight=False, end="")
    else:
        err_console().print(f"wrote {output} for {result.gguf}: [bold]ollama create {result.spec.name} -f {output}[/bold]",
                            highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (convert, inspect, pull, models):
        command(app, fn, panel=PANEL)
    for alias in ("list", "ls"):  # what users of ollama, huggingface-cli and llm type
        command(app, models, alias, panel=PANEL, hidden=True)
    for fn in (rm, export_modelfile):
        command(app, fn, panel=PANEL)
    bundle = sub_app("Carry stored models to another machine (an air-gapped one) as one verified tar archive.")
    command(bundle, bundle_export, "export")
    command(bundle, bundle_import, "import")
    app.add_typer(bundle, name="bundle", rich_help_panel=PANEL)
