"""The job-wide duplicate index of a ``localaug run`` (``--dedup exact|minhash``), kept beside its
ledger so that a resumed run does not rebuild it text by text before its first new row.

The ledger stays the source of truth. The index holds the accepted texts of the ledger's records
(``ledger.accepted_texts`` of the latest record of each row key, in ledger order, each checked as
``check`` would: what ``ledger.remember`` builds), and two files beside the ledger keep it:

- ``LEDGER.dedup``: one fixed-size entry per text the index holds, appended as records are
  written: 8 bytes naming the record's row key, the text's 16-byte key and, for MinHash, its
  signature (little-endian 32-bit slots);
- ``LEDGER.dedup.json``: what the first ``entries`` entries cover: the index settings and run id,
  the blake2b of those entries, and the length and blake2b of the ledger prefix they were read
  from. It is replaced whole (temporary file + rename) every ``SAVE_EVERY_S`` seconds of a run and
  at its end.

A run reads the header, checks both hashes, takes the entries as they are, and reads only the
records written after the prefix (what a kill left unsaved), checking their texts one by one. A
header that is missing, unreadable, of other settings, or whose hashes do not match (the ledger was
cut, compacted or edited) is ignored and the index rebuilt from the whole ledger in bulk; so is
one whose later records replace a record whose texts it holds. Entries past the header's count
(appended before a kill) are never read. A kill at any moment leaves a header that describes its
files, or one that does not match them: never a wrong index.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localaug.core.files import read_json, temp_beside, write_json_atomic
from localaug.jobs.ledger import accepted_texts, records_in
from localaug.jobs.paths import index_paths

FORMAT = 1
SAVE_EVERY_S = 30.0
RECORD_BYTES, KEY_BYTES = 8, 16
_READ = 1 << 20
_ENCODE_AT_ONCE = 4096  # texts encoded together while a ledger is read


def settings_of(index: Any) -> dict[str, Any]:
    """What an index's entries depend on besides the texts."""
    if not index.width:
        return {"kind": "exact"}
    return {"kind": "minhash", "threshold": index.threshold, "num_perm": index.num_perm, "seed": index.seed}


def record_key(source_id: str) -> bytes:
    return hashlib.blake2b(source_id.encode("utf-8", "surrogatepass"), digest_size=RECORD_BYTES).digest()


def hash_range(path: Path, start: int, end: int, h: Any) -> Any | None:
    """``h`` updated with the bytes of ``path`` from ``start`` to ``end`` (None: the file is shorter)."""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0 and (block := f.read(min(_READ, left))):
            h.update(block)
            left -= len(block)
    return None if left else h


class _Stale(Exception):
    """The saved index does not describe this ledger: rebuild it."""


@dataclass
class Loaded:
    """How the index came to be: ``saved`` entries taken as kept, ``tail`` texts of later records
    checked one by one, or ``rebuilt`` texts checked in bulk (why, in ``reason``)."""

    saved: int = 0
    tail: int = 0
    rebuilt: int = 0
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class _Mark:
    """What the entries written so far cover (replaced whole, never changed in place)."""

    entries: int
    entries_hash: Any
    covered: int  # ledger bytes whose records' texts the entries hold


class SeenBook:
    """The index of one run and its two files (see the module doc): ``load`` before the first row,
    ``written`` after each record is in the ledger, ``close`` at the end."""

    def __init__(self, ledger: Path, run_id: str, index: Any) -> None:
        self.ledger, self.run_id, self.index = ledger, run_id, index
        self.entries_path, self.header_path = index_paths(ledger)
        self.width = int(index.width)
        self.row_bytes = RECORD_BYTES + KEY_BYTES + 4 * self.width
        self._fd = -1
        self._mark = _Mark(0, hashlib.blake2b(), 0)
        self._saved = self._mark
        self._hashed: tuple[int, Any] = (0, hashlib.blake2b())  # (ledger bytes, their running hash)
        self._last_save = time.monotonic()

    # --- reading ---

    def load(self) -> Loaded:
        """Fill the index from the saved entries and the ledger's later records, or rebuild it."""
        t0 = time.monotonic()
        try:
            loaded = self._resume()
        except _Stale as e:
            loaded = self._rebuild(str(e))
        self.index.keep_added()
        self._last_save = time.monotonic()
        loaded.seconds = time.monotonic() - t0
        return loaded

    def _header(self) -> dict[str, Any]:
        header = read_json(self.header_path)
        if header is None:
            raise _Stale("no saved index")
        want = {"format": FORMAT, "run_id": self.run_id, "index": settings_of(self.index)}
        if any(header.get(k) != v for k, v in want.items()):
            raise _Stale("the saved index is of other settings")
        for name in ("entries", "ledger_bytes"):
            if not isinstance(header.get(name), int) or header[name] < 0:
                raise _Stale("the saved index header is damaged")
        return header

    def _resume(self) -> Loaded:
        header = self._header()
        count, covered = header["entries"], header["ledger_bytes"]
        size = count * self.row_bytes
        try:
            if self.ledger.stat().st_size < covered or self.entries_path.stat().st_size < size:
                raise _Stale("the saved index covers more than is there")
            with open(self.entries_path, "rb") as f:
                data = f.read(size)
        except OSError:
            raise _Stale("the saved index cannot be read") from None
        entries_hash = hashlib.blake2b(data)
        if len(data) != size or entries_hash.hexdigest() != header.get("entries_blake2b"):
            raise _Stale("the saved entries do not match their header")
        hashed = hash_range(self.ledger, 0, covered, hashlib.blake2b())
        if hashed is None or hashed.hexdigest() != header.get("ledger_blake2b"):
            raise _Stale("the ledger changed since the index was saved")
        rows = np.frombuffer(data, np.uint8).reshape(count, self.row_bytes)
        owners = rows[:, :RECORD_BYTES].tobytes()
        ledger_size = self.ledger.stat().st_size
        texts, tail_owners = self._tail(covered, {owners[i:i + RECORD_BYTES] for i in range(0, len(owners), RECORD_BYTES)})
        self.index.extend(*_unpack(rows, self.width), trusted=True)  # all is checked: the index is filled from here
        self._open_entries(size)
        self._mark = self._saved = _Mark(count, entries_hash, covered)
        self._hashed = (covered, hashed)
        keys, sigs = self.index.encode(texts)
        pick = self.index.extend(keys, sigs).tolist()  # one by one, as check would
        self._append([o for o, a in zip(tail_owners, pick) if a], [k for k, a in zip(keys, pick) if a],
                     sigs[np.array(pick, bool)], covered=ledger_size)
        self.save()
        return Loaded(saved=count, tail=len(texts))

    def _tail(self, start: int, held: set[bytes]) -> tuple[list[str], list[bytes]]:
        """The texts of the latest record of each key after ``start``, with their records' keys; a
        record replacing one whose texts are ``held``: _Stale (those texts would no longer count)."""
        found: list[tuple[str, bytes, list[str]]] = []
        for _, _, rec in records_in(self.ledger, start=start):
            rkey = record_key(rec["source_id"])
            if rkey in held:
                raise _Stale("a later record replaces one whose texts the index holds")
            found.append((rec["source_id"], rkey, accepted_texts(rec)))
        last = {sid: i for i, (sid, _, _) in enumerate(found)}
        texts, owners = [], []
        for i, (sid, rkey, got) in enumerate(found):
            if last[sid] == i:
                texts += got
                owners += [rkey] * len(got)
        return texts, owners

    def _rebuild(self, reason: str) -> Loaded:
        """The index from the whole ledger: the texts of the latest record of each key, encoded and
        checked in bulk; then its files written anew (the header first removed)."""
        assert not len(self.index), "a rebuild starts from an empty index"
        with contextlib.suppress(FileNotFoundError):
            self.header_path.unlink()
        size = self.ledger.stat().st_size  # the run created it (LedgerTarget.prepare)
        marks: list[tuple[str, int]] = []  # (source id, record number) of each text
        keys: list[bytes] = []
        parts = [np.empty((0, self.width), np.uint32)]
        last: dict[str, int] = {}
        for chunk, texts in self._ledger_texts(last, size):
            k, sigs = self.index.encode(texts)
            marks += chunk
            keys += k
            parts.append(sigs)
        latest = [last[sid] == n for sid, n in marks]
        owners = [record_key(sid) for (sid, _), a in zip(marks, latest) if a]
        keys, sigs = [k for k, a in zip(keys, latest) if a], np.concatenate(parts)[np.array(latest, bool)]
        pick = self.index.extend(keys, sigs).tolist()
        rows = _pack([o for o, a in zip(owners, pick) if a], [k for k, a in zip(keys, pick) if a],
                     sigs[np.array(pick, bool)], self.width)
        with temp_beside(self.entries_path) as tmp:
            tmp.write_bytes(rows)
            os.replace(tmp, self.entries_path)
        self._open_entries(len(rows))
        hashed = hash_range(self.ledger, 0, size, hashlib.blake2b())
        if hashed is None:
            raise OSError(f"{self.ledger} was cut while it was read")
        self._mark = _Mark(len(rows) // self.row_bytes, hashlib.blake2b(rows), size)
        self._hashed = (size, hashed)
        self.save(force=True)
        return Loaded(rebuilt=len(keys), reason=reason)

    def _ledger_texts(self, last: dict[str, int], size: int) -> Iterator[tuple[list[tuple[str, int]], list[str]]]:
        """The accepted texts of every ok record in the ledger's first ``size`` bytes, in chunks:
        ([(source id, record number)], [text]); ``last`` gets each key's last record number."""
        if not size:
            return
        marks: list[tuple[str, int]] = []
        texts: list[str] = []
        for n, (_, offset, rec) in enumerate(records_in(self.ledger)):
            if offset >= size:
                break
            sid = rec["source_id"]
            last[sid] = n
            got = accepted_texts(rec)
            marks += [(sid, n)] * len(got)
            texts += got
            if len(texts) >= _ENCODE_AT_ONCE:
                yield marks, texts
                marks, texts = [], []
        if texts:
            yield marks, texts

    # --- writing ---

    def _open_entries(self, keep: int) -> None:
        """Open the entries file for appending after its first ``keep`` bytes (cutting the rest)."""
        self._fd = os.open(self.entries_path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, keep)
        os.lseek(self._fd, keep, os.SEEK_SET)

    def _append(self, owners: list[bytes], keys: list[bytes], sigs: np.ndarray, covered: int) -> None:
        rows = _pack(owners, keys, sigs, self.width)
        view = memoryview(rows)
        while view:
            view = view[os.write(self._fd, view):]
        h = self._mark.entries_hash.copy()
        h.update(rows)
        self._mark = _Mark(self._mark.entries + len(keys), h, covered)  # one assignment: never half-updated

    def written(self, rec: dict[str, Any]) -> None:
        """A record is in the ledger: keep its texts' entries (``check`` added them)."""
        if self._fd < 0:
            return
        texts = accepted_texts(rec)
        entries = [self.index.take_added(t) for t in texts]
        sigs = np.array([s for _, s in entries], np.uint32).reshape(len(entries), self.width)
        self._append([record_key(rec["source_id"])] * len(entries), [k for k, _ in entries], sigs,
                     covered=self.ledger.stat().st_size)
        if time.monotonic() - self._last_save >= SAVE_EVERY_S:
            self.save()

    def save(self, force: bool = False) -> None:
        """Replace the header with one covering what is written (after the entries are on disk)."""
        mark = self._mark
        if self._fd < 0 or (mark == self._saved and not force):
            return
        os.fsync(self._fd)
        at, h = self._hashed
        h = hash_range(self.ledger, at, mark.covered, h.copy())
        if h is None:
            raise OSError(f"{self.ledger} is shorter than the records written to it")
        write_json_atomic(self.header_path, {
            "format": FORMAT, "run_id": self.run_id, "index": settings_of(self.index), "entries": mark.entries,
            "entries_blake2b": mark.entries_hash.hexdigest(), "ledger_bytes": mark.covered,
            "ledger_blake2b": h.hexdigest()})
        self._hashed, self._saved, self._last_save = (mark.covered, h), mark, time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.save()
            finally:
                fd, self._fd = self._fd, -1
                os.close(fd)


def compact_keeping_index(ledger: Path, compact: Callable[[], Any]) -> None:
    """Run ``compact`` (the ledger rewritten with the latest record of each key, in order: the same
    texts) and point a saved index that covered the whole ledger at the new one."""
    _, header_path = index_paths(ledger)
    header = read_json(header_path)
    size = ledger.stat().st_size
    h = hash_range(ledger, 0, size, hashlib.blake2b()) if header and header.get("ledger_bytes") == size else None
    compact()
    if header is not None and h is not None and h.hexdigest() == header.get("ledger_blake2b"):
        size = ledger.stat().st_size
        h = hash_range(ledger, 0, size, hashlib.blake2b())
        if h is not None:
            header.update(ledger_bytes=size, ledger_blake2b=h.hexdigest())
            write_json_atomic(header_path, header)


def _pack(owners: list[bytes], keys: list[bytes], sigs: np.ndarray, width: int) -> bytes:
    n = len(keys)
    rows = np.empty((n, RECORD_BYTES + KEY_BYTES + 4 * width), np.uint8)
    if n:
        rows[:, :RECORD_BYTES] = np.frombuffer(b"".join(owners), np.uint8).reshape(n, RECORD_BYTES)
        rows[:, RECORD_BYTES:RECORD_BYTES + KEY_BYTES] = np.frombuffer(b"".join(keys), np.uint8).reshape(n, KEY_BYTES)
        rows[:, RECORD_BYTES + KEY_BYTES:] = np.ascontiguousarray(sigs, "<u4").view(np.uint8).reshape(n, 4 * width)
    return rows.tobytes()


def _unpack(rows: np.ndarray, width: int) -> tuple[list[bytes], np.ndarray]:
    n = len(rows)
    flat = np.ascontiguousarray(rows[:, RECORD_BYTES:RECORD_BYTES + KEY_BYTES]).tobytes()
    keys = [flat[i:i + KEY_BYTES] for i in range(0, n * KEY_BYTES, KEY_BYTES)]
    sigs = np.ascontiguousarray(rows[:, RECORD_BYTES + KEY_BYTES:]).view("<u4").reshape(n, width).astype(np.uint32)
    return keys, sigs
