"""Rich rendering, kept apart from logic: every function takes the Console to draw on.

On a TTY long work shows a live progress bar; otherwise (CI, pipes, log files) it prints plain,
periodic lines so logs stay readable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from localaug.store.gguf_info import GGUFInfo

if TYPE_CHECKING:
    from localaug.family.registry import ModelSpec
    from localaug.store.local import StoreEntry


def plain(value: object) -> Text:
    """Data (model output, file names, templates) as literal text: never read as Rich markup, so a
    reply holding "[/INST]" or "[bold]" prints as written."""
    return Text(str(value))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class RichProgress:
    """A ConvertProgress for terminals: one bar per stage (bytes or tensors), with speed and ETA."""

    def __init__(self, console: Console, noun: str = "tensors") -> None:
        self._noun = noun  # what the items of a byte stage are: tensors, files
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
            counter = f"{human_bytes(t.completed)}/{human_bytes(t.total or 0)} · {len(self._items)} {self._noun}"
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
        self._console.print(f"{name}: {self._fmt(total)}", highlight=False, soft_wrap=True)

    def _fmt(self, n: int) -> str:
        return human_bytes(n) if self._unit == "bytes" else f"{n} {self._unit}"

    def advance(self, amount: int, item: str) -> None:
        self._done += amount
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            pct = 100.0 * self._done / self._total if self._total else 100.0
            self._console.print(f"{self._name}: {pct:5.1f}% ({self._fmt(self._done)}) {item}", highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._name:
            self._console.print(f"{self._name}: done in {time.monotonic() - self._start:.1f}s", highlight=False, soft_wrap=True)
        self._name = ""

    def close(self) -> None:
        pass


def progress_for(console: Console, noun: str = "tensors") -> RichProgress | PlainProgress:
    return RichProgress(console, noun) if console.is_terminal else PlainProgress(console)


def print_json(console: Console, data: Any) -> None:
    """``data`` as strict JSON (an undefined metric, NaN, is null)."""
    from localaug.core.files import dumps_strict

    console.out(dumps_strict(data, indent=2, ensure_ascii=False), highlight=False)


def render_gguf_info(console: Console, info: GGUFInfo) -> None:
    table = Table(title=plain(info.path), show_header=False, title_justify="left")
    table.add_column("key", style="bold cyan")
    table.add_column("value", overflow="fold")
    table.add_row("architecture", plain(info.architecture))
    table.add_row("name", plain(info.name or "-"))
    table.add_row("size", human_bytes(info.size_bytes))
    table.add_row("quant type", info.file_type or "-")
    table.add_row("parameters", f"{info.parameter_count / 1e6:,.1f} M")
    table.add_row("tensors", f"{info.tensor_count} (" + ", ".join(f"{k}: {v}" for k, v in info.tensor_types.items()) + ")")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base"):
        if key in info.hparams:
            table.add_row(key, plain(info.hparams[key]))
    tok = info.tokenizer
    table.add_row(
        "tokenizer",
        plain(f"{tok.get('model', '?')} (pre {tok.get('pre', '?')}), {tok.get('tokens', 0)} tokens, {tok.get('merges', 0)} merges"),
    )
    table.add_row("special ids", ", ".join(f"{k.removesuffix('_token_id')}={v}" for k, v in tok.items() if k.endswith("_id")) or "-")
    table.add_row("add bos", str(tok.get("add_bos_token", "-")))
    template = info.chat_template
    table.add_row("chat template", plain((template[:200] + ("…" if len(template) > 200 else "")) if template else "none"))
    for k, v in info.provenance.items():
        table.add_row(plain(k), plain(v))
    console.print(table)


def render_convert_done(console: Console, path: str, quant: str, size: int, params: int, seconds: float) -> None:
    console.print(
        f"[green]wrote[/green] {escape(path)} ({quant}, {human_bytes(size)}, {params / 1e6:,.1f} M parameters) in {seconds:.1f}s",
        highlight=False,
        soft_wrap=True,  # one line in logs and pipes, however long the path
    )


def render_pull_done(console: Console, entry: StoreEntry) -> None:
    what = f"{entry.name} {entry.quant}"
    detail = f"{human_bytes(entry.size)}, sha256 {entry.sha256[:12]}, from {entry.source.describe()}"
    if entry.reused:
        console.print(f"[green]{escape(what)} is already in the store[/green] and intact: {escape(str(entry.path))} "
                      f"({escape(detail)})", highlight=False)
    else:
        console.print(f"[green]pulled[/green] {escape(what)} -> {escape(str(entry.path))} ({escape(detail)})", highlight=False)


def _pulled(spec: ModelSpec, entries: list[StoreEntry]) -> list[str]:
    return [e.quant for e in entries if e.family == spec.name]


def models_json(specs: tuple[ModelSpec, ...], entries: list[StoreEntry]) -> dict[str, Any]:
    return {
        "family": [
            {"name": s.name, "repo": s.repo, "task": s.task, "parameters": s.parameters,
             "default_quant": s.default_quant, "pulled": _pulled(s, entries)}
            for s in specs
        ],
        "store": [{**e.to_dict(), "origin": e.source.origin()} for e in entries],
    }


def render_models(console: Console, specs: tuple[ModelSpec, ...], entries: list[StoreEntry], store_root: Path) -> None:
    family = Table(title="model family", title_justify="left")
    family.add_column("name", no_wrap=True)
    for col in ("task", "size", "Hugging Face repo", "default quant", "pulled"):
        family.add_column(col, overflow="fold")
    for s in specs:
        family.add_row(*map(plain, (s.name, s.task, s.parameters, s.repo, s.default_quant, ", ".join(_pulled(s, entries)) or "-")))
    console.print(family)
    if not entries:
        console.print(f"the store ({escape(str(store_root))}) is empty: [bold]localaug pull NAME[/bold] brings a model in",
                      highlight=False)
        return
    stored = Table(title=plain(f"local store ({store_root})"), title_justify="left")
    for col in ("name", "quant", "size", "origin", "sha256"):
        stored.add_column(col, overflow="fold")
    for e in entries:
        stored.add_row(*map(plain, (e.name, e.quant, human_bytes(e.size), e.source.origin(), e.sha256[:12])))
    console.print(stored)


def render_removed(console: Console, entries: list[StoreEntry]) -> None:
    for e in entries:
        console.print(f"[green]removed[/green] {escape(e.name)} {escape(e.quant)} ({human_bytes(e.size)}, "
                      f"{escape(str(e.path))})", highlight=False, soft_wrap=True)


def render_bundle_exported(console: Console, result: Any) -> None:
    for e in result.entries:
        console.print(f"  {e.name} {e.quant} ({human_bytes(e.size)}, sha256 {e.sha256[:12]}, {e.source.origin()})",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"[green]wrote[/green] {escape(str(result.path))} ({len(result.entries)} file(s), {human_bytes(result.size)}) "
                  f"in {result.seconds:.1f}s: carry it over and run "
                  f"[bold]localaug bundle import {escape(result.path.name)}[/bold]", highlight=False, soft_wrap=True)


def render_bundle_imported(console: Console, result: Any) -> None:
    for label, entries in (("added", result.added), ("replaced", result.replaced), ("already in the store", result.unchanged)):
        for e in entries:
            console.print(f"  {label}: {e.name} {e.quant} -> {e.path} ({human_bytes(e.size)}, sha256 {e.sha256[:12]})",
                          markup=False, highlight=False, soft_wrap=True)
    landed = len(result.added) + len(result.replaced)
    console.print(f"[green]imported[/green] {escape(result.archive.name)}: {landed} file(s) landed, {len(result.unchanged)} already "
                  "there; every sha256 verified", highlight=False, soft_wrap=True)


# --- generation ---------------------------------------------------------------------------------


class StreamView:
    """Shows a reply as it streams: a live panel on a TTY; nothing until the end otherwise."""

    def __init__(self, console: Console, title: str) -> None:
        from rich.live import Live
        from rich.panel import Panel

        self._console, self._title, self._text = console, title, ""
        self._panel = Panel
        self._live = Live(Panel("", title=title), console=console, refresh_per_second=12, transient=True) if console.is_terminal else None
        if self._live:
            self._live.start()

    def piece(self, text: str) -> None:
        self._text += text
        if self._live:
            self._live.update(self._panel(plain(self._text), title=self._title, border_style="cyan"))

    def close(self) -> None:
        if self._live:
            self._live.stop()
            self._live = None


def render_refined(console: Console, original: str, refined: str, compare: bool, footer: str) -> None:
    from rich.panel import Panel

    if compare:
        table = Table(show_lines=True, expand=True)
        table.add_column("original", ratio=1)
        table.add_column("refined", ratio=2)
        table.add_row(plain(original), plain(refined))
        console.print(table)
    elif console.is_terminal:
        console.print(Panel(plain(refined), title="refined", border_style="green"))
    else:
        console.out(refined, highlight=False)
    if console.is_terminal:
        console.print(f"[dim]{footer}[/dim]", highlight=False)


def render_rejected_refinement(console: Console, refined: str, reason: str) -> None:
    """A refine reply a job would not keep: why, and what the model wrote, on stderr."""
    from localaug.augment.filters import REASONS

    console.print(f"[yellow]not a refinement:[/yellow] {REASONS.get(reason, reason)} ({reason}); the model wrote: "
                  f"{escape(refined[:200])}", highlight=False, soft_wrap=True)
    console.print("try another --seed or --temperature, or a larger model", highlight=False)


def render_item(console: Console, index: int, text: str) -> None:
    if console.is_terminal:
        console.print(f"[bold]{index}.[/bold] {escape(text)}", highlight=False, soft_wrap=True)
    else:
        console.out(f"{index}. {text}", highlight=False)


def render_pair(console: Console, index: int, instruction: str, response: str) -> None:
    from rich.panel import Panel

    if console.is_terminal:
        console.print(Panel(f"[bold]Instruction[/bold]\n{escape(instruction)}\n\n[bold]Response[/bold]\n{escape(response)}",
                            title=f"pair {index}"))
    else:
        console.out(f"### Instruction\n{instruction}\n\n### Response\n{response}\n", highlight=False)


def render_shortfall(console: Console, found: int, requested: int, samples: int, rejected: dict[str, int]) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    msg = f"{found}/{requested} from {samples} samples (rejected: {reasons})"
    if found < requested:
        console.print(f"[yellow]warning:[/yellow] only {msg}; raise --max-tokens or try another --seed", highlight=False, soft_wrap=True)
    else:
        console.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True)


def render_doctor(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="localaug doctor", show_header=False, title_justify="left")
    table.add_column("check", style="bold cyan")
    table.add_column("value", overflow="fold")
    for k, v in report.items():
        table.add_row(k, plain(v))
    console.print(table)


def render_batch_curve(console: Console, data: dict[str, Any]) -> None:
    table = Table(title=plain(f"localaug bench --batch: {data['model']}"), title_justify="left")
    for col in ("sequences", "localaug tok/s", "raw llama_decode tok/s", "localaug / raw"):
        table.add_column(col, justify="right")
    for p in data["curve"]:
        mark = " ◀" if p["parallel"] == data["chosen"] else ""
        table.add_row(f"{p['parallel']}{mark}", f"{p['tokens_per_s']:.1f}", f"{p['raw_tokens_per_s']:.1f}", f"{p['vs_raw']:.2f}×")
    console.print(table)
    console.print(f"[dim]{data['tokens']} generated tokens per sequence, {data['threads']} threads, GPU layers "
                  f"{data['gpu_layers']}; ◀ the batch size localaug runs at (the smallest within 3 % of the best)[/dim]",
                  highlight=False)


def render_bench(console: Console, r: Any) -> None:
    table = Table(title=f"localaug bench: {r.model}", title_justify="left")
    table.add_column("measure", style="bold cyan")
    table.add_column("value", justify="right")
    rows = [
        ("threads / GPU layers", f"{r.threads} / {r.gpu_layers}"),
        ("model load", f"{r.load_seconds:.2f} s"),
        ("prompt", f"{r.prompt_tokens} tokens"),
        ("time to first token", f"{r.time_to_first_token_s * 1000:.0f} ms"),
        ("prefill", f"{r.prefill_tokens_per_s:.1f} tok/s"),
        ("decode (localaug, sampling included)", f"{r.decode_tokens_per_s:.1f} tok/s"),
        ("decode (raw llama_decode loop)", f"{r.raw_decode_tokens_per_s:.1f} tok/s"),
        ("localaug / raw", f"{r.decode_vs_raw:.2f}×"),
    ]
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)
    console.print(f"[dim]median of {r.repeats} runs of {r.generated_tokens} tokens[/dim]", highlight=False)


# --- batch jobs ---------------------------------------------------------------------------------


def _job_counts(s: Any) -> str:
    eta = f"{s.eta_s:.0f}s" if s.eta_s is not None else "?"
    return (f"{s.skipped + s.done}/{s.total} rows · {s.rows_per_s:.2f} rows/s · {s.tokens_per_s:.1f} tok/s · ETA {eta} · "
            f"ok {s.ok} · filtered {s.filtered} · failed {s.failed}")


class JobLiveProgress:
    """A JobProgress for terminals: a live bar with rows, rates, ETA and the status counters, and
    the last few results under it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                  console=console)
        self._live: Live | None = None
        self._task: TaskID | None = None
        self._stats: Any = None

    def _view(self) -> Group:
        recent = Table.grid(padding=(0, 1))
        recent.add_column(style="dim", no_wrap=True)
        recent.add_column(overflow="ellipsis", no_wrap=True)
        style = {"ok": "green", "filtered": "yellow", "failed": "red"}
        for status, text in list(self._stats.recent if self._stats else ()):
            recent.add_row(f"[{style.get(status, 'white')}]{status}[/]", plain(text))
        return Group(self._progress, recent)

    def start(self, stats: Any, message: str) -> None:
        self._console.print(message, highlight=False, soft_wrap=True)
        self._stats = stats
        self._task = self._progress.add_task("augmenting", total=stats.total, completed=stats.skipped, counts=_job_counts(stats))
        self._live = Live(self._view(), console=self._console, refresh_per_second=4)
        self._live.start()

    def update(self, stats: Any) -> None:
        if self._task is not None and self._live is not None:
            self._progress.update(self._task, completed=stats.skipped + stats.done, counts=_job_counts(stats))
            self._live.update(self._view())

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class JobPlainProgress:
    """A JobProgress for logs: the start line, then one line at most every ``every`` seconds."""

    def __init__(self, console: Console, every: float = 10.0) -> None:
        self._console, self._every, self._last = console, every, 0.0

    def start(self, stats: Any, message: str) -> None:
        self._console.print(message, highlight=False, soft_wrap=True)
        self._last = time.monotonic()

    def update(self, stats: Any) -> None:
        if time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            self._console.print(_job_counts(stats), highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def job_progress_for(console: Console) -> JobLiveProgress | JobPlainProgress:
    return JobLiveProgress(console) if console.is_terminal else JobPlainProgress(console)


def render_job_summary(console: Console, summary: Any) -> None:
    for stage in getattr(summary, "stages", ()):  # --respond-with: the augmenter's run first
        render_job_summary(console, stage)
    s = summary.stats
    task = f"{summary.task} " if getattr(summary, "task", "") else ""
    table = Table(title=f"localaug run {task}{summary.run_id[:12]}", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    rows = [
        ("rows", str(s.total)), ("already done (skipped)", str(s.skipped)), ("done now", str(s.done)),
        ("ok", str(s.ok)), ("filtered", str(s.filtered)), ("duplicates rejected", str(s.duplicates)),
        ("failed", str(s.failed)), ("time", f"{s.seconds:.1f} s"), ("rows/s", f"{s.rows_per_s:.2f}"),
        ("tokens/s", f"{s.tokens_per_s:.1f}"), ("records", str(summary.ledger)), ("manifest", str(summary.manifest)),
    ]
    counts = summary.counts or {}
    if counts and (counts.get("rows") != s.done or s.skipped):
        rows.append(("whole output", f"{counts['rows']} rows: ok {counts['ok']} · filtered {counts['filtered']} · "
                                     f"failed {counts['failed']} · {counts['items']} new items"))
    reasons = counts.get("rejected_by_reason") or s.reasons
    if reasons:
        rows.append(("rejected, by reason", " · ".join(f"{k} {v}" for k, v in sorted(reasons.items()))))
    if s.stale:
        rows.append(("dropped (rows no longer in the input)", f"{s.stale} records, kept in {s.stale_where}"))
    for judged in getattr(summary, "judging", ()):  # --judge: the grades or verdicts
        rows.append((judged_line(judged), judged.ledger))
    if getattr(summary, "selection", None):
        rows.append(("kept (judged)", kept_line(summary.selection)))
    if summary.exported is not None:
        what = "records" if str(summary.output).endswith(".parquet") else "examples"
        rows.append(("written", f"{summary.output} ({summary.exported} {what})"))
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)
    if s.failed and not summary.all_failed():  # when every row failed, the command's error line says so
        console.print("[yellow]some rows failed[/yellow] (see their 'error'): fix the cause and rerun with --retry-failed",
                      highlight=False, soft_wrap=True)


def render_merge_summary(console: Console, summary: Any) -> None:
    table = Table(title="localaug merge", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    status = " · ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items())) or "none"
    for k, v in [
        ("inputs", f"{len(summary.inputs)} files, {summary.records_read} records"), ("rows written", f"{summary.rows} ({status})"),
        ("superseded records", str(summary.superseded)), ("items removed as duplicates", str(summary.items_removed)),
        ("unreadable lines", str(summary.unreadable)), ("output", f"{summary.output} ({summary.written} written)"),
        ("manifest", str(summary.manifest)),
    ]:
        table.add_row(k, plain(v))
    console.print(table)
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False, soft_wrap=True)


def judged_line(judged: Any) -> str:
    """One line on a grade or verdict run (jobs.grade summaries)."""
    if hasattr(judged, "distribution"):
        mean = "—" if judged.mean is None else f"{judged.mean:.2f}"
        return f"graded {judged.graded} of {judged.answers} answers (mean {mean}, {judged.done_now} now)"
    return f"judged {judged.judged} of {judged.pairs} pairs of answers in both orders ({judged.done_now} now)"


def kept_line(selection: dict[str, Any]) -> str:
    """How many instructions a judged export kept, and why the others were left out."""
    rule = f"rule {selection['rule']}" + (f", margin {selection['margin']:g}" if selection.get("margin") is not None else "") \
        if selection.get("rule") else "the best-graded answer"
    floor = f", min score {selection['min_score']:g}" if selection.get("min_score") is not None else ""
    dropped = " · ".join(f"{k}: {v}" for k, v in selection.get("dropped", {}).items())
    return f"{selection['kept']} instructions ({rule}{floor})" + (f"; left out: {dropped}" if dropped else "")


def render_rows(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table of (what, value) lines."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)


def render_export(console: Console, summary: Any) -> None:
    render_rows(console, f"localaug export ({summary.fmt})", [
        ("answers from", str(summary.records)), ("kept", kept_line(summary.selection)),
        ("written", f"{summary.output} ({summary.written} examples)"), ("manifest", str(summary.manifest))])


def render_interrupted(console: Console, message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True)


# --- report and judge ------------------------------------------------------------------------------


def render_report(console: Console, report: Any) -> None:
    d, c = report.collected, report.collected.counts
    table = Table(title=f"localaug report: {d.path.name}", title_justify="left")
    table.add_column("")
    table.add_column("sources", justify="right")
    table.add_column("new", justify="right")
    for key in report.diversity["new"]:
        row = []
        for side in ("sources", "new"):
            v = report.diversity[side].get(key)
            row.append("—" if v is None or v != v else (f"{v:.0f}" if key == "texts" else f"{v:.3f}"))
        table.add_row(key, *row)
    console.print(table)
    reasons = " · ".join(f"{k} {v}" for k, v in sorted((c.get("rejected_by_reason") or {}).items())) or "none"
    console.print(f"rows {c['rows']} (ok {c['ok']}, filtered {c['filtered']}, failed {c['failed']}); rejected: {escape(reasons)}",
                  highlight=False, soft_wrap=True)
    if report.grades:
        g = report.grades
        shown = " ".join(f"{k}:{v}" for k, v in g["distribution"].items())
        mean = "—" if g["mean"] is None else f"{g['mean']:.2f}"
        console.print(f"grades: {g['graded']} answers, mean {mean}, by rating {shown} ({g['no_rating']} without a rating)",
                      highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"[dim]{escape(note)}[/dim]", highlight=False)
    console.print(f"map: {report.projection}; page: {report.html}; figures: {report.figures['map'].parent}",
                  highlight=False, soft_wrap=True)


class _Counter:
    def __init__(self, console: Console, noun: str) -> None:
        self.console, self.noun, self.last = console, noun, 0.0

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.last >= (0.2 if self.console.is_terminal else 10):
            self.last = time.monotonic()
            self.console.print(f"{self.noun}: {done}/{total}", highlight=False)


class counter:  # noqa: N801 - used as a context manager: with counter(console, "judging") as tick
    """A ``progress(done, total)`` callback that prints a line now and then."""

    def __init__(self, console: Console, noun: str) -> None:
        self.tick = _Counter(console, noun)

    def __enter__(self) -> _Counter:
        return self.tick

    def __exit__(self, *exc: object) -> None:
        pass


def render_judge(console: Console, s: Any) -> None:
    table = Table(title=f"localaug judge: {Path(s.b).name} vs {Path(s.a).name}", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    for k, v in s.rows():
        table.add_row(k, plain(v))
    console.print(table)
    console.print("[dim]a small judge is weak: use a larger judge model for decisions[/dim]", highlight=False)


