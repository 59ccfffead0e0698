"""How a long phase reports what it does: the ``Progress`` protocol, and the one a command installs.

A phase (a conversion, a model load, hashing, the counting pass over an input, judging) calls
``stage(name, total, unit)`` once, ``advance(amount, item)`` as it goes and ``finish()`` at the
end; ``total`` None means the size is unknown (a display then shows the time spent, not an ETA).
The layers below the CLI never draw anything: ``localaug.cli.render.progress`` implements the
protocol (a live Rich line on a terminal, plain lines at intervals otherwise) and the CLI installs
it for the length of a command with ``reporting``; phases that are not handed one explicitly ask
``current()``, which is silent when nothing is installed (the Python API, tests, Ray workers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

# an input or model file under this many bytes is read so fast that a phase for it would be noise
QUIET_BELOW = 64 << 20


class Progress(Protocol):
    """What a long phase reports; ``localaug.cli.render.progress`` draws it."""

    def stage(self, name: str, total: int | None, unit: str, done: int = 0) -> None:
        """A phase begins: ``name`` says what it does, ``total`` of ``unit`` ("bytes", "tensors",
        "rows", ...; None: unknown), ``done`` of them already done before it (a resumed job)."""
        ...

    def advance(self, amount: int, item: str = "") -> None:
        """``amount`` more units done; ``item`` names the last one (a tensor, "1,024 rows")."""
        ...

    def finish(self) -> None:
        """The phase has ended (a display shows how long it took)."""
        ...


class Silent:
    """A ``Progress`` that shows nothing."""

    def stage(self, name: str, total: int | None, unit: str, done: int = 0) -> None:
        pass

    def advance(self, amount: int, item: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


SILENT = Silent()
_installed: list[Progress] = []  # a stack: the innermost ``reporting`` wins
_lock = threading.Lock()


def current() -> Progress:
    """The display a command installed (``reporting``), or a silent one."""
    with _lock:
        return _installed[-1] if _installed else SILENT


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Phases that ask ``current()`` report to ``progress`` until the block ends. Process-wide on
    purpose: a model may load in a worker thread of the command."""
    with _lock:
        _installed.append(progress)
    try:
        yield progress
    finally:
        with _lock:
            _installed.remove(progress)


@contextlib.contextmanager
def phase(name: str, total: int | None, unit: str, progress: Progress | None = None) -> Iterator[Progress]:
    """``stage`` now and ``finish`` when the block ends well (a phase that failed has no "done":
    the error says what happened, and the command closes its display)."""
    p = progress if progress is not None else current()
    p.stage(name, total, unit)
    yield p
    p.finish()


class PhaseProgress(Protocol):
    """Work of several phases in one callback: ``progress(phase, done, total)``, the phase named each
    time; a phase starts at 0 of ``total`` and ends at ``total`` of ``total`` (the report's phases). A
    phase that cannot count its items is one item: 0 of 1, then 1 of 1 (or n of n once known)."""

    def __call__(self, phase: str, done: int, total: int) -> None: ...


def no_progress(phase: str, done: int, total: int) -> None:
    """A PhaseProgress that shows nothing."""


class Phases:
    """A PhaseProgress drawn through a ``Progress``: each new phase name is a stage of ``total``
    ``units[phase]`` (default "items"), its counts advance it, and the next phase (or ``close``)
    finishes it. ``progress`` None: the display a command installed (``current()``)."""

    def __init__(self, units: dict[str, str] | None = None, progress: Progress | None = None) -> None:
        self._units, self._shown = units or {}, progress
        self._on: Progress | None = None
        self._phase: str | None = None
        self._done = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self.close()
            self._on = self._shown if self._shown is not None else current()
            # a phase that cannot count its items says 0 of 1, then 1 of 1 (or n of n): no total to show
            self._on.stage(phase, total if total > 1 else None, self._units.get(phase, "items"))
            self._phase, self._done = phase, 0
        if done > self._done and self._on is not None:
            self._on.advance(done - self._done)
            self._done = done

    def close(self) -> None:
        """The phase under way (if any) has ended."""
        if self._on is not None and self._phase is not None:
            self._on.finish()
        self._on, self._phase = None, None
