"""The ``localaug`` app: the root command, the commands added explicitly, one-line errors with the
right exit code, and ``main``.

Commands live by family in ``models`` (convert, inspect, pull, models/list/ls, rm, bundle,
export-modelfile), ``generate`` (refine, expand, pairs, bench, doctor), ``jobs`` (run, merge),
``quality`` (grade, export), ``report`` (report, judge) and ``serve``; each module defines its
commands and a ``register(app)`` that adds them here (they never import this module). Each command
is a thin shell over the API, drawing through ``localaug.cli.render``."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape

from localaug._version import __version__
from localaug.cli import generate, jobs, models, quality, report, serve
from localaug.cli.shell import HELP_OPTIONS, Group, err_console, state

try:  # Typer carries its own copy of Click in recent releases
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on Click
    from click import exceptions as click_errors  # type: ignore[no-redef]

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
    except (typer.Abort, KeyboardInterrupt):
        err_console().print("interrupted", highlight=False)
        sys.exit(130)
    except click_errors.ClickException as e:
        err_console().print(f"[bold red]error:[/bold red] {escape(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
