"""Progress of long work below the CLI, through one small callback the CLI renders: the work names
its phase, how many of its items are done and how many there are in all.

A phase starts with ``progress(phase, 0, total)`` and ends with ``progress(phase, total, total)``;
the calls in between come as often as the work can say (after each batch, chunk, figure). A phase
that cannot count its items is one item: 0 of 1, then 1 of 1.
"""

from __future__ import annotations

from typing import Protocol


class PhaseProgress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None: ...


def no_progress(phase: str, done: int, total: int) -> None:
    """A PhaseProgress that shows nothing."""
