"""Rich rendering, kept apart from logic: every function takes the Console to draw on.

On a TTY long work shows a live progress bar; otherwise (CI, pipes, log files) it prints plain,
periodic lines so logs stay readable.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from localaug.gguf_info import GGUFInfo


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class RichProgress:
    """A ConvertProgress for terminals: one bar per stage (bytes or tensors), with speed and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[counter]}"),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[item]}"),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._unit = "bytes"
        self._items: set[str] = set()
        self._progress.start()

    def stage(self, name: str, total: int, unit: str) -> None:
        self._finish_task()
        self._unit = unit
        self._items = set()
        self._task = self._progress.add_task(name, total=total, counter="", item="")

    def advance(self, amount: int, item: str) -> None:
        if self._task is None:
            return
        self._progress.advance(self._task, amount)
        self._items.add(item)
        t = self._progress.tasks[-1]
        if self._unit == "bytes":
            counter = f"{human_bytes(t.completed)}/{human_bytes(t.total or 0)} · {len(self._items)} tensors"
        else:
            counter = f"{int(t.completed)}/{int(t.total or 0)} {self._unit}"
        self._progress.update(self._task, counter=counter, item=item)

    def _finish_task(self) -> None:
        if self._task is not None:
            t = self._progress.tasks[-1]
            self._progress.update(self._task, completed=t.total, item="")

    def finish(self) -> None:
        self._finish_task()
        self._progress.stop()

    def close(self) -> None:
        self._progress.stop()


class PlainProgress:
    """A ConvertProgress for logs: a line per stage and one at most every ``every`` seconds."""

    def __init__(self, console: Console, every: float = 5.0) -> None:
        self._console, self._every = console, every
        self._name, self._total, self._done, self._unit = "", 0, 0, ""
        self._last = 0.0
        self._start = 0.0

    def stage(self, name: str, total: int, unit: str) -> None:
        if self._name:
            self.finish()
        self._name, self._total, self._done, self._unit = name, total, 0, unit
        self._start = self._last = time.monotonic()
        self._console.print(f"{name}: {self._fmt(total)}", highlight=False)

    def _fmt(self, n: int) -> str:
        return human_bytes(n) if self._unit == "bytes" else f"{n} {self._unit}"

    def advance(self, amount: int, item: str) -> None:
        self._done += amount
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            pct = 100.0 * self._done / self._total if self._total else 100.0
            self._console.print(f"{self._name}: {pct:5.1f}% ({self._fmt(self._done)}) {item}", highlight=False)

    def finish(self) -> None:
        if self._name:
            self._console.print(f"{self._name}: done in {time.monotonic() - self._start:.1f}s", highlight=False)
        self._name = ""

    def close(self) -> None:
        pass


def progress_for(console: Console) -> RichProgress | PlainProgress:
    return RichProgress(console) if console.is_terminal else PlainProgress(console)


def print_json(console: Console, data: Any) -> None:
    console.out(json.dumps(data, indent=2, ensure_ascii=False, default=str), highlight=False)


def render_gguf_info(console: Console, info: GGUFInfo) -> None:
    table = Table(title=info.path, show_header=False, title_justify="left")
    table.add_column("key", style="bold cyan")
    table.add_column("value", overflow="fold")
    table.add_row("architecture", info.architecture)
    table.add_row("name", info.name or "-")
    table.add_row("size", human_bytes(info.size_bytes))
    table.add_row("quant type", info.file_type or "-")
    table.add_row("parameters", f"{info.parameter_count / 1e6:,.1f} M")
    table.add_row("tensors", f"{info.tensor_count} (" + ", ".join(f"{k}: {v}" for k, v in info.tensor_types.items()) + ")")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base"):
        if key in info.hparams:
            table.add_row(key, str(info.hparams[key]))
    tok = info.tokenizer
    table.add_row(
        "tokenizer",
        f"{tok.get('model', '?')} (pre {tok.get('pre', '?')}), {tok.get('tokens', 0)} tokens, {tok.get('merges', 0)} merges",
    )
    table.add_row("special ids", ", ".join(f"{k.removesuffix('_token_id')}={v}" for k, v in tok.items() if k.endswith("_id")) or "-")
    table.add_row("add bos", str(tok.get("add_bos_token", "-")))
    template = info.chat_template
    table.add_row("chat template", (template[:200] + ("…" if len(template) > 200 else "")) if template else "none")
    for k, v in info.provenance.items():
        table.add_row(k, str(v))
    console.print(table)


def render_convert_done(console: Console, path: str, quant: str, size: int, params: int, seconds: float) -> None:
    console.print(
        f"[green]wrote[/green] {path} ({quant}, {human_bytes(size)}, {params / 1e6:,.1f} M parameters) in {seconds:.1f}s",
        highlight=False,
    )
