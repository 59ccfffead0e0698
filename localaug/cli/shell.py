"""What every command shares: the consoles it draws on, the handler that turns our errors into one
line and an exit code, and the Click classes that render on/off options as bare flags.

Command modules import this (never ``cli.main``); ``cli.main`` adds their commands to the app."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from localaug.cli._errors import message
from localaug.core.errors import LocalaugError

try:  # Typer carries its own copy of Click in recent releases
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on Click
    from click import exceptions as click_errors  # type: ignore[no-redef]

# Ctrl-C at a prompt: Click's Abort, or Typer's own where Typer carries its copy of Click
_ABORT = tuple({getattr(click_errors, "Abort", KeyboardInterrupt), typer.Abort, KeyboardInterrupt})

F = TypeVar("F", bound=Callable[..., Any])
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # -h everywhere (child contexts inherit it)

state = {"debug": False}  # --debug, set by the root command


def out_console() -> Console:
    return Console()


_err: list[Console] = []  # the stderr console of the command running (``handled``)


def err_console() -> Console:
    """stderr's console: while a command runs, the one its progress draws on, so that a live
    display of the command (a spinner) and a phase's live line nest instead of fighting."""
    return _err[-1] if _err else Console(stderr=True)


def handled(fn: F) -> F:
    """Turn our errors into one line on stderr and the right exit code (traceback only with --debug);
    the long phases below (pulls, conversions, hashing, model loads, counting, grading) draw on
    stderr meanwhile (``render.progress.PhaseProgress``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from localaug.cli.render.progress import PhaseProgress
        from localaug.core.progress import reporting

        _err.append(Console(stderr=True))
        phases = PhaseProgress(_err[-1])
        try:
            with reporting(phases):
                return fn(*args, **kwargs)
        except LocalaugError as e:
            phases.close()  # a live line cut short ends before the error line
            if state["debug"]:
                import traceback

                traceback.print_exc()
            _one_line(message(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            phases.close()
            err_console().print("interrupted: nothing was left half-written", highlight=False)
            raise typer.Exit(130) from None
        finally:
            phases.close()
            _err.pop()

    return wrapper  # type: ignore[return-value]


def _bare_flags(params: list[Any]) -> list[Any]:
    # Typer's rich help shows a type for every option, "<bool>" for on/off ones, which reads as if
    # --retry-failed took a value; an empty metavar shows the flag alone.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose flags show as flags in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


class Group(TyperGroup):
    """A group (the app, ``bundle``) whose flags show as flags in --help, and whose usage errors
    (unknown option, missing argument, a value not among the choices) are one line and exit 2, like
    every other error: through the console script and a test's runner alike."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(click_errors, "NoArgsIsHelpError", ()) as e:  # type: ignore[misc]
            e.show()
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
            _one_line(f"{e.format_message()}{where}")
            sys.exit(e.exit_code)
        except _ABORT:
            err_console().print("interrupted", highlight=False)
            sys.exit(130)
        except click_errors.ClickException as e:
            _one_line(e.format_message())
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> None:
    text = text.replace(": Value error, ", ": ")  # how Typer words a value not among the choices
    err_console().print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)


def command(app: typer.Typer, fn: Callable[..., Any], name: str | None = None, *, panel: str | None = None,
            hidden: bool = False) -> None:
    """Add ``fn`` to ``app`` as a command (named after the function unless ``name``), under the
    --help panel ``panel``."""
    app.command(name, cls=Command, rich_help_panel=panel, hidden=hidden)(fn)


def sub_app(help: str) -> typer.Typer:  # noqa: A002 - Typer's own word
    """A group of commands (``localaug bundle ...``)."""
    return typer.Typer(cls=Group, help=help, no_args_is_help=True, context_settings=HELP_OPTIONS)
