"""Progress displays: a live Rich line on a terminal, plain lines at intervals otherwise (CI, pipes,
log files). ``PhaseProgress`` draws every ``localaug.core.progress.Progress`` phase (conversion,
hashing, model loads, the counting pass, judging and grading through ``ticker``); jobs have their
own (``JobProgress``: rows, rates, counters). Durations read h:mm:ss (``clock``) everywhere; plain
lines come at most every ``LOCALAUG_PROGRESS_INTERVAL`` seconds (``core.settings``)."""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from localaug.cli.render import human_bytes, plain
from localaug.core.progress import Progress as PhaseReport
from localaug.core.progress import current
from localaug.core.settings import progress_interval

if TYPE_CHECKING:
    from localaug.jobs.stats import JobStats

UNKNOWN = "-:--:--"  # an ETA not known yet (nothing done, or no total)


def clock(seconds: float | None) -> str:
    """A duration as h:mm:ss, hours unbounded (90061 s: "25:01:01"), whole seconds rounded down;
    ``UNKNOWN`` for None, NaN or infinity; a negative one is 0:00:00."""
    if seconds is None or not math.isfinite(seconds):
        return UNKNOWN
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class _Phase:
    """One phase's numbers: what both displays print."""

    def __init__(self, name: str, total: int | None, unit: str, done: int, noun: str | None) -> None:
        self.name, self.total, self.unit, self.noun = name, total, unit, noun
        self.done = self.first = done  # ``first``: done before this phase began (not part of its rate)
        self.items: set[str] = set()
        self.item = ""
        self.started = time.monotonic()

    def advance(self, amount: int, item: str) -> None:
        self.done += amount
        if item:
            self.item = item
            if self.noun:
                self.items.add(item)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def eta(self) -> float | None:
        rate = (self.done - self.first) / max(self.elapsed, 1e-9)
        if not self.total or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def amount(self, n: int | None) -> str:
        if n is None:
            return "size unknown"
        return human_bytes(n) if self.unit == "bytes" else f"{n} {self.unit}"

    def counter(self) -> str:
        if self.unit == "bytes":
            text = human_bytes(self.done) + (f" of {human_bytes(self.total)}" if self.total else "")
            return text + (f" · {len(self.items)} {self.noun}" if self.noun else "")
        return f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"

    def line(self) -> str:
        pct = f"{100.0 * self.done / self.total:5.1f}% · " if self.total else ""
        item = f" · {self.item}" if self.item else ""
        eta = f" · ETA {clock(self.eta)}" if self.total else ""
        return f"{self.name}: {pct}{self.counter()}{item} · elapsed {clock(self.elapsed)}{eta}"

    def done_line(self) -> str:
        # an item that is a count ("4 rows") is a result worth repeating; a name (a tensor) is not
        count = f" · {self.item}" if self.item[:1].isdigit() else ""
        return f"{self.name}: done in {clock(self.elapsed)} · {self.amount(self.done)}{count}"


class _Clock(ProgressColumn):
    """ETA h:mm:ss while a phase with a total runs, the time spent otherwise and once it is done."""

    def render(self, task: Task) -> Text:
        if task.finished or task.total is None:
            return Text(f"{'done in' if task.finished else 'elapsed'} {clock(task.finished_time if task.finished else task.elapsed)}",
                        style="progress.elapsed")
        return Text(f"ETA {clock(task.time_remaining)}", style="progress.remaining")


class PhaseProgress:
    """A ``Progress`` for every phase of a command: a live Rich line per phase on a terminal (with
    its bar, counter, ETA), plain lines otherwise: the phase's first line, then one at most every
    interval as it goes, then its "done" line. In plain lines, a phase of a longer command (a model
    load, counting an input) says itself only once it has run for one interval, so a quick one
    leaves a log as it was; with ``announce`` (``convert``, ``pull``, bundles: the command is the
    phase) its first line comes at once. ``noun`` counts the distinct items of a byte phase
    ("tensors" written, "files" copied); a phase that begins ends the one before it."""

    def __init__(self, console: Console, noun: str | None = None, *, live: bool | None = None,
                 every: float | None = None, announce: bool = False) -> None:
        self._console, self._noun, self._announce = console, noun, announce
        self._live = console.is_terminal if live is None else live
        self._every = progress_interval() if every is None else every
        self._phase: _Phase | None = None
        self._said = False  # the phase's first plain line is out
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last = 0.0

    def _say(self, text: str) -> None:
        self._console.print(text, highlight=False, soft_wrap=True, markup=False)

    def _first_line(self, phase: _Phase) -> bool:
        """Print the phase's first line when it is due; whether it is out."""
        if not self._said and (self._announce or phase.elapsed >= self._every):
            self._said = True
            self._say(f"{phase.name}: {phase.amount(phase.total)}")
            return True
        return False

    def stage(self, name: str, total: int | None, unit: str, done: int = 0) -> None:
        self.finish()
        self._phase = _Phase(name, total, unit, done, self._noun)
        self._last, self._said = time.monotonic(), False
        if not self._live:
            self._first_line(self._phase)
            return
        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             TextColumn("{task.percentage:>5.1f}%" if total else ""), TextColumn("{task.fields[counter]}"),
                             _Clock(), TextColumn("[dim]{task.fields[item]}"), console=self._console, transient=False)
        self._task = self._bar.add_task(name, total=total, completed=done, counter=self._phase.counter(), item="")
        self._bar.start()

    def advance(self, amount: int, item: str = "") -> None:
        phase = self._phase
        if phase is None:
            return
        phase.advance(amount, item)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=amount, counter=phase.counter(), item=phase.item)
            return
        late = self._first_line(phase)
        if self._said and (late or time.monotonic() - self._last >= self._every):
            self._last = time.monotonic()
            self._say(phase.line())

    def finish(self) -> None:
        phase, self._phase = self._phase, None
        if phase is None:
            return
        if self._bar is not None and self._task is not None:
            if phase.total:
                self._bar.update(self._task, completed=phase.total, counter=phase.counter(), item="")
            self._bar.stop_task(self._task)
            self._bar.stop()
            self._bar = self._task = None
            return
        self._first_line(phase)
        if self._said:
            self._say(phase.done_line())

    def close(self) -> None:
        """Stop drawing (a phase cut short by an error gets no "done" line)."""
        self._phase = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


def progress_for(console: Console, noun: str | None = "tensors") -> PhaseProgress:
    """The display of a command that is itself the phase (convert, pull, bundles)."""
    return PhaseProgress(console, noun, announce=True)


class ticker:  # noqa: N801 - used as a context manager: with ticker("judging", "pairs") as tick
    """A ``progress(done, total)`` callback (what judging and grading report) drawn as a phase of
    the display the command installed: one live line on a terminal, a line per interval otherwise.
    A call whose total differs, or whose count went back, begins the next pass (run --judge grades,
    then judges pairs)."""

    def __init__(self, name: str, unit: str, progress: PhaseReport | None = None) -> None:
        self.name, self.unit = name, unit
        self.progress = progress if progress is not None else current()
        self.total: int | None = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.total != total or done < self.done:
            self.progress.stage(self.name, total, self.unit, done=done)
            self.total, self.done = total, done
            return
        self.progress.advance(done - self.done)
        self.done = done

    def __enter__(self) -> ticker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.total is not None and kind is None:
            self.progress.finish()
        self.total = None


def _job_counts(s: JobStats) -> str:
    return (f"{s.skipped + s.done}/{s.total} rows · {s.rows_per_s:.2f} rows/s · {s.tokens_per_s:.1f} tok/s · "
            f"elapsed {clock(s.seconds)} · ETA {clock(s.eta_s)} · "
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
    """A JobProgress for logs: the start line, then one line at most every interval."""

    def __init__(self, console: Console, every: float | None = None) -> None:
        self._console, self._last = console, 0.0
        self._every = progress_interval() if every is None else every

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
