"""The rows a run has still to do, kept as they are met while the input is counted and keyed
(``run.execute``), so that a run reads its input once.

A row of a text file (JSON Lines, JSON array, CSV) is kept as its place in the file, its index and
its key (about 70 bytes), and read again from there when its turn comes: rows already done are
never read again, and no row is keyed twice. The bytes read again must be those counted (a CRC-32
of them is kept): an input edited while its job runs stops the job, which the same command then
resumes. A row without a place (Parquet, a datasets folder, the instructions of a refine or expand
output) is kept whole while the rows kept so take less than ``MEMORY_BUDGET``; past it, the rest
are read again from the input (and keyed again), as every row was before.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from localaug.core.errors import JobError
from localaug.jobs import dataio
from localaug.jobs.dataio import InputRow

MEMORY_BUDGET = 128 << 20  # bytes (estimated) of rows without a place kept in memory


def _size(value: Any) -> int:
    """A rough count of the bytes a parsed value takes in memory."""
    if isinstance(value, str):
        return 50 + len(value)
    if isinstance(value, dict):
        return 64 + sum(_size(k) + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return 56 + sum(_size(v) for v in value)
    return 32


class PendingRows:
    """The rows to do, in input order (``add`` while counting, then ``rows`` once)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # the text file the places are in (None: rows have none)
        self._offsets, self._lengths, self._numbers = array("q"), array("q"), array("q")
        self._crcs, self._indexes = array("Q"), array("q")
        self._keys = bytearray()  # 32 bytes each (a row key is a sha256 in hex)
        self._held: dict[int, InputRow] = {}  # rows kept whole, by position
        self._held_bytes = 0
        self.count = 0  # rows kept
        self.overflow = False  # rows past the budget were not kept: read them again

    def __len__(self) -> int:
        return self.count

    def add(self, row: InputRow) -> None:
        if self.overflow:
            return
        if row.place is not None and self.path is not None and len(row.key) == 64:
            offset, length, number, crc = row.place
            self._offsets.append(offset)
            self._lengths.append(length)
            self._numbers.append(number)
            self._crcs.append(crc)
            self._indexes.append(row.index)
            self._keys += bytes.fromhex(row.key)
        else:
            self._held_bytes += _size(row.record) + len(row.raw or "") + 200
            if self._held_bytes > MEMORY_BUDGET:
                self.overflow = True
                return
            self._held[self.count] = row
        self.count += 1

    def rows(self, again: Callable[[], Iterator[InputRow]]) -> Iterator[InputRow]:
        """The rows kept, in order (each read again from its place, or as kept), then, past the
        budget, the rows ``again`` gives (every row to do, from the start) after those."""
        placed = self._placed()
        for position in range(self.count):
            row = self._held.pop(position, None)
            yield row if row is not None else next(placed)
        if self.overflow:
            yield from islice(again(), self.count, None)

    def _placed(self) -> Iterator[InputRow]:
        # a generator: the input is opened at the first row kept as a place, if any
        assert self.path is not None
        places = zip(self._offsets, self._lengths, self._numbers, self._crcs)
        for k, row in enumerate(dataio.read_again(self.path, places)):
            if row is None:
                raise JobError(f"{self.path} changed while this job ran (row {self._indexes[k]} is no longer what was "
                               "counted): run the same command again; the rows done so far are kept", path=str(self.path))
            row.index, row.key = self._indexes[k], self._keys[32 * k:32 * k + 32].hex()
            yield row
