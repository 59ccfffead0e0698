"""The ``localaug`` app: the root command, one-line errors with the right exit code, and ``main``.

Commands live by family in ``models`` (convert, inspect, pull, models/list, rm, bundle,
export-modelfile), ``generate`` (refine, expand, pairs, bench, doctor), ``jobs`` (run, merge),
``report`` (report, judge), ``quality`` (grade, export) and ``serve``; each is a thin shell over the API, drawing through ``localaug.ui``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from localaug import __version__
from localaug.cli._errors import message
from localaug.core.errors import LocalaugError

try:  # Typer carries its own copy of Click in recent releases
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on Click
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="localaug",
    help="Offline runtime for the Qwen2 Refine/Exp data-augmentation models: convert, quantize, inspect, run.",
    no_args_is_help=True,
    add_completion=True,
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
            err_console().print(f"[bold red]error:[/bold red] {escape(message(e))}", highlight=False, soft_wrap=True)
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


# the commands register themselves on ``app``
from localaug.cli import generate, jobs, models, quality, report, serve  # noqa: E402,F401
