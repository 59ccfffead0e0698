"""The ``localaug`` command: a thin Typer shell over the API; logic lives elsewhere, drawing in ui.py."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from localaug import __version__
from localaug.errors import LocalaugError

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
                raise
            err_console().print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
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
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the model family (and what is in the local store).

    Example: [bold]localaug models[/bold]
    """
    from localaug import registry, ui

    specs = registry.family()
    if as_json:
        ui.print_json(out_console(), [
            {"name": s.name, "repo": s.repo, "task": s.task, "parameters": s.parameters, "default_quant": s.default_quant}
            for s in specs
        ])
        return
    from rich.table import Table

    table = Table(title="model family")
    for col in ("name", "task", "size", "Hugging Face repo", "default quant"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, s.task, s.parameters, s.repo, s.default_quant)
    out_console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
