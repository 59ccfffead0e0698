"""What every command shares: the consoles it draws on, the handler that turns our errors into one
line and an exit code, and the Click classes that render on/off options as bare flags.

Command modules import this (never ``cli.main``); ``cli.main`` adds their commands to the app."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from localaug.cli._errors import message
from localaug.core.errors import LocalaugError

F = TypeVar("F", bound=Callable[..., Any])
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # -h everywhere (child contexts inherit it)

state = {"debug": False}  # --debug, set by the root command


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
            if state["debug"]:
                import traceback

                traceback.print_exc()
            err_console().print(f"[bold red]error:[/bold red] {escape(message(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted: nothing was left half-written", highlight=False)
            raise typer.Exit(130) from None

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
    """A group (the app, ``bundle``) whose flags show as flags in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


def command(app: typer.Typer, fn: Callable[..., Any], name: str | None = None, *, panel: str | None = None,
            hidden: bool = False) -> None:
    """Add ``fn`` to ``app`` as a command (named after the function unless ``name``), under the
    --help panel ``panel``."""
    app.command(name, cls=Command, rich_help_panel=panel, hidden=hidden)(fn)


def sub_app(help: str) -> typer.Typer:  # noqa: A002 - Typer's own word
    """A group of commands (``localaug bundle ...``)."""
    return typer.Typer(cls=Group, help=help, no_args_is_help=True, context_settings=HELP_OPTIONS)
