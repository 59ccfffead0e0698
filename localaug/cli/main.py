"""The ``localaug`` app: the root command, the commands added explicitly, and ``main``.

Commands live by family in ``models`` (convert, inspect, pull, models/list/ls, rm, bundle,
export-modelfile), ``generate`` (refine, expand, pairs, bench, doctor), ``jobs`` (run, merge),
``quality`` (grade, export), ``report`` (report, judge) and ``serve``; each module defines its
commands and a ``register(app)`` that adds them here (they never import this module). Each command
is a thin shell over the API, drawing through ``localaug.cli.render``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from localaug._version import __version__
from localaug.cli import generate, jobs, models, quality, report, serve
from localaug.cli.shell import HELP_OPTIONS, Group, state

app = typer.Typer(
    name="localaug",
    cls=Group,
    help="Offline runtime for the Qwen2 Refine/Exp data-augmentation models: convert, quantize, inspect, run.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings=HELP_OPTIONS,
)


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
    state["debug"] = debug


for _module in (models, generate, jobs, quality, report, serve):  # the order of the panels in --help
    _module.register(app)


def main() -> None:
    """The console script (errors of every kind are one line with their exit code: ``shell.Group``)."""
    typer.main.get_command(app).main(prog_name="localaug")
