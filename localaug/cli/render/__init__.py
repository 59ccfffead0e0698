"""Rendering, kept apart from logic: one module per command family (``models``, ``generate``,
``jobs``, ``quality``, ``report``, ``serve``) and the progress displays they share (``progress``).

Every function takes the ``Console`` to draw on, so tests capture it and a run whose output is not a
terminal (CI, pipes, log files) prints plain lines. Data (model output, file names, templates) is
always shown as literal text, never read as Rich markup. This module holds the pieces they share.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def plain(value: object) -> Text:
    """Data as literal text: never read as Rich markup, so a reply holding "[/INST]" or "[bold]"
    prints as written."""
    return Text(str(value))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def print_json(console: Console, data: Any) -> None:
    """``data`` as one strict JSON object (an undefined metric, NaN, is null; paths are text)."""
    from localaug.core.files import dumps_strict

    console.out(dumps_strict(data, indent=2, ensure_ascii=False), highlight=False)


def render_rows(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table of (what, value) lines."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)


def render_warning(console: Console, text: str) -> None:
    """One warning line (``text`` is data: printed as written)."""
    line = Text("warning: ", style="yellow")
    line.append(text)
    console.print(line, highlight=False, soft_wrap=True)
