"""Progress displays: a live Rich bar on a terminal, plain periodic lines otherwise (CI, pipes, log
files), for conversions and copies (``ConvertProgress``), jobs (``JobProgress``), judging (a
``progress(done, total)`` callback) and the report's phases (a ``core.progress.PhaseProgress``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from localaug.cli.render import human_bytes, plain

if TYPE_CHECKING:
    from localaug.jobs.stats import JobStats


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


def _job_counts(s: JobStats) -> str:
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
        self._stats: JobStats = None

    def _view(self) -> Group:
        recent = Table.grid(padding=(0, 1))
        recent.add_column(style="dim", no_wrap=True)
        recent.add_column(overflow="ellipsis", no_wrap=True)
        style = {"ok": "green", "filtered": "yellow", "failed": "red"}
        for status, text in list(self._stats.recent if self._stats else ()):
            recent.add_row(f"[{style.get(status, 'white')}]{status}[/]", plain(text))
        return Group(self._progress, recent)

    def start(self, stats: JobStats, message: str) -> None:
        self._console.print(message, highlight=False, soft_wrap=True)
        self._stats = stats
        self._task = self._progress.add_task("augmenting", total=stats.total, completed=stats.skipped, counts=_job_counts(stats))
        self._live = Live(self._view(), console=self._console, refresh_per_second=4)
        self._live.start()

    def update(self, stats: JobStats) -> None:
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

    def start(self, stats: JobStats, message: str) -> None:
        self._console.print(message, highlight=False, soft_wrap=True)
        self._last = time.monotonic()

    def update(self, stats: JobStats) -> None:
        if time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            self._console.print(_job_counts(stats), highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def job_progress_for(console: Console) -> JobLiveProgress | JobPlainProgress:
    return JobLiveProgress(console) if console.is_terminal else JobPlainProgress(console)


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


def hms(seconds: float) -> str:
    """A duration as h:mm:ss (what Rich's time columns show)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class PhaseBars:
    """A PhaseProgress for terminals: one Rich line per phase with its counts, elapsed time and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(TextColumn("[bold]{task.description:<20}"), BarColumn(),
                                  TextColumn("{task.completed:>7.0f}/{task.total:<7.0f}"), TimeElapsedColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self._tasks:
            for task in self._tasks.values():  # the phase before is over
                self._progress.update(task, completed=self._progress.tasks[task].total)
            self._tasks[phase] = self._progress.add_task(phase, total=max(total, 1))
        self._progress.update(self._tasks[phase], completed=done, total=max(total, 1))

    def __enter__(self) -> PhaseBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


class PhaseLines:
    """A PhaseProgress for logs: a line at most every ``every`` seconds with the phase's counts and
    ETA (h:mm:ss), and one when a phase that lasted ``every`` seconds or more is done. A short phase
    says nothing, so an error found early (a bad file, a bad option) stays one line."""

    def __init__(self, console: Console, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._console, self._every, self._clock = console, every, clock
        self._phase, self._start, self._last, self._total, self._done = "", 0.0, 0.0, 0, 0
        self._over: set[str] = set()  # phases already said done

    def _say(self, text: str) -> None:
        self._console.print(text, highlight=False, soft_wrap=True)

    def _end(self) -> None:
        took = self._clock() - self._start
        if self._phase and took >= self._every:
            self._say(f"{self._phase}: {self._done}/{self._total} done in {hms(took)}")
        self._over.add(self._phase)
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self._clock()
        if phase in self._over:
            return
        if phase != self._phase:
            self._end()
            self._phase, self._start, self._last = phase, now, now
        self._total, self._done = total, done
        if done >= total:
            self._end()
        elif now - self._last >= self._every:
            self._last = now
            eta = hms((now - self._start) * (total - done) / done) if done else "-:--:--"
            self._say(f"{phase}: {done}/{total} · {hms(now - self._start)} · ETA {eta}")

    def __enter__(self) -> PhaseLines:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is None:
            self._end()


def phase_progress_for(console: Console) -> PhaseBars | PhaseLines:
    """Rich lines on a terminal, plain lines otherwise; use it as a context manager."""
    return PhaseBars(console) if console.is_terminal else PhaseLines(console)
