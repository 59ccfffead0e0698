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
