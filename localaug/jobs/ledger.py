"""The job ledger: the append-only JSONL of a run's records, and what keeps it whole.

Each row's record is appended with one ``write()`` and fsync'd at least every second
(``Appender``); a kill at any moment leaves at most a torn last line, which ``repair_ledger`` cuts
on the next start. ``scan_ledger`` tells a restart which row keys are done; a retried row appends
a newer record and ``compact_ledger`` (temp file + rename) keeps only the latest one per key, and
leaves out the records of rows that are no longer in the input (moved to ``OUT.stale``). Every
reader checks each line (``localaug.jobs.schema``) and reads at most ``MAX_RECORD_BYTES`` of it:
a line that is not a job record is skipped, whatever the file holds.
``output_lock`` refuses a second process on the same output (the lock sits beside the output's real
path, so a second name for it through a symlink cannot start a second writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from localaug.augment import filters
from localaug.core.errors import JobLockedError, opt
from localaug.core.files import exclusive_lock, temp_beside
from localaug.jobs.dataio import json_line
from localaug.jobs.paths import STALE_SUFFIX, job_paths, lock_path, stale_path  # noqa: F401 - named here before jobs.paths
from localaug.jobs.schema import Skipped, record_problem

FSYNC_EVERY_S = 1.0
MAX_RECORD_BYTES = 256 << 20  # a records line longer than this is skipped unread (a record carries rows up to 64 M characters)
MAX_ERROR_KINDS = 1000  # distinct errors counted for the most common one
_DIGITS = re.compile(r"\d+")


@contextlib.contextmanager
def output_lock(lock: Path) -> Iterator[None]:
    """Hold ``lock`` for a whole job; another process holding it is a JobLockedError."""
    with exclusive_lock(lock) as held:
        if not held:
            raise JobLockedError(f"another localaug run is writing {lock.with_suffix('')}: wait for it or choose another "
                                 f"{opt('output')}", path=str(lock.with_suffix("")))
        yield


def repair_ledger(ledger: Path) -> int:
    """Cut a torn last line (a write cut short by a kill); return the bytes removed."""
    if not ledger.exists():
        return 0
    size = ledger.stat().st_size
    if size == 0:
        return 0
    with open(ledger, "rb+") as f:
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0:  # find the last newline, reading backwards in blocks
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def record_lines(f: BinaryIO, start: int = 0) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, byte offset, line) of a records file opened in binary mode (and read from
    byte ``start``, where a line begins; numbered from there); a line over MAX_RECORD_BYTES is
    (number, offset, None), skipped without being read into memory."""
    lineno, offset = 0, start
    if start:
        f.seek(start)
    while line := f.readline(MAX_RECORD_BYTES + 1):
        lineno += 1
        here, offset = offset, offset + len(line)
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while more := f.readline(1 << 20):
                offset += len(more)
                if more.endswith(b"\n"):
                    break
            yield lineno, here, None
        else:
            yield lineno, here, line


def parse_line(line: bytes | None) -> tuple[Any, str | None]:
    """(the JSON value of a line, None) or (None, why it has none)."""
    if line is None:
        return None, f"a line over {MAX_RECORD_BYTES >> 20} MiB"
    try:
        return json.loads(line.decode("utf-8", "replace")), None
    except RecursionError:
        return None, "nested too deep to read"
    except ValueError:
        return None, "not JSON"


def read_record(line: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the job record on a line, None) or (None, why it is not one)."""
    rec, why = parse_line(line)
    if why is None:
        why = record_problem(rec)
    return (rec, None) if why is None else (None, why)


def records_in(path: Path, skipped: Skipped | None = None, start: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line number, byte offset, record) of every job record in ``path`` (from byte ``start``, where
    a line begins), in file order; the other non-blank lines are counted in ``skipped``."""
    with open(path, "rb") as f:
        for lineno, offset, line in record_lines(f, start):
            if line is not None and not line.strip():
                continue
            rec, why = read_record(line)
            if rec is not None:
                yield lineno, offset, rec
            elif skipped is not None:
                skipped.add(lineno, why or "")


def scan_ledger(ledger: Path) -> tuple[dict[str, str], int]:
    """(row key -> status of its latest record, lines that are superseded or not records)."""
    status: dict[str, str] = {}
    if not ledger.exists():
        return status, 0
    skipped = Skipped()
    extra = 0
    for _, _, rec in records_in(ledger, skipped):
        key = rec["source_id"]
        extra += key in status
        status[key] = rec["status"]
    return status, extra + skipped.count


def iter_ledger(ledger: Path, latest_only: bool = True, skipped: Skipped | None = None) -> Iterator[dict[str, Any]]:
    """The ledger's job records; with ``latest_only`` one per row key (its last), in ledger order.
    Lines that are not job records are left out (and counted in ``skipped``)."""
    if not latest_only:
        yield from (rec for _, _, rec in records_in(ledger, skipped))
        return
    last: dict[str, int] = {rec["source_id"]: lineno for lineno, _, rec in records_in(ledger, skipped)}
    for lineno, _, rec in records_in(ledger):
        if last.get(rec["source_id"]) == lineno:
            yield rec


def compact_ledger(ledger: Path, drop: Collection[str] = ()) -> int:
    """Rewrite the ledger with one record per row key (temp file + rename, at the ledger's real
    path so that a symlink to it stays one); the records of the keys in ``drop`` are first appended
    to ``OUT.stale`` beside it and left out. Returns how many were moved."""
    real = ledger.resolve()
    moved = 0
    if drop:
        with open(stale_path(real), "a", encoding="utf-8") as f:
            for rec in iter_ledger(real):
                if rec["source_id"] in drop:
                    f.write(json_line(rec) + "\n")
                    moved += 1
            f.flush()
            os.fsync(f.fileno())
    with temp_beside(real) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in iter_ledger(real):
                if rec["source_id"] not in drop:
                    f.write(json_line(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
    return moved


class Appender:
    """Whole-line appends with one write() each; fsync at most every FSYNC_EVERY_S."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.synced = time.monotonic()

    def write(self, rec: dict[str, Any]) -> None:
        data = (json_line(rec) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]
        if time.monotonic() - self.synced >= FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.fd)
        self.synced = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The (dotted) keys whose values differ between two run configs."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in changed_keys(a, b)]
        elif a != b:
            out.append(k)
    return out


# --- the best record of each row key across several record files ---------------------------------

RANK = {"ok": 2, "filtered": 1, "failed": 0}  # which record of a key wins; the later of equals
NO_ROW = 1 << 62  # sorts records without an input position last


@dataclass
class BestRecords:
    """Where the best record of each row key is: key -> (rank, file index, byte offset, row)."""

    where: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    read: int = 0  # records read
    superseded: int = 0  # records of a key seen before
    unreadable: int = 0  # non-blank lines that are not job records
    per_file: list[tuple[int, Skipped]] = field(default_factory=list)  # (records, lines skipped) of each file


def best_records(paths: Sequence[Path]) -> BestRecords:
    """One pass over JSONL record files: the best record of each row key (ok, then filtered, then
    failed; the later of equals), remembered by position rather than kept in memory."""
    best = BestRecords()
    for fi, path in enumerate(paths):
        skipped, read = Skipped(), 0
        for _, here, rec in records_in(path, skipped):
            read += 1
            key = rec["source_id"]
            rank = RANK[rec["status"]]
            old = best.where.get(key)
            if old is not None:
                best.superseded += 1
                if old[0] > rank:
                    continue
            row = rec.get("row")
            best.where[key] = (rank, fi, here, row if isinstance(row, int) else NO_ROW)
        best.read += read
        best.unreadable += skipped.count
        best.per_file.append((read, skipped))
    return best


def read_at(paths: Sequence[Path], places: Sequence[tuple[int, int, int, int]]) -> Iterator[dict[str, Any]]:
    """The records at ``places`` (BestRecords values), in the order given."""
    handles: dict[int, Any] = {}
    try:
        for _, fi, offset, _ in places:
            if fi not in handles:
                handles[fi] = open(paths[fi], "rb")  # noqa: SIM115 - closed below
            handles[fi].seek(offset)
            rec, _ = read_record(handles[fi].readline(MAX_RECORD_BYTES + 1))
            if rec is not None:  # it was one when best_records read it
                yield rec
    finally:
        for h in handles.values():
            h.close()


# --- counts over records ---------------------------------------------------------------------------


def accepted_texts(rec: dict[str, Any]) -> list[str]:
    """The texts a record's job-wide duplicate check remembered (new instructions)."""
    if rec.get("status") != "ok":
        return []
    if rec.get("outputs"):
        return [str(t) for t in rec["outputs"]]
    return [str(p["instruction"]) for p in rec.get("pairs") or []]


def remember(seen: Any, records: Iterable[dict[str, Any]]) -> None:
    """Fill a job-wide duplicate index with the accepted texts of earlier records, each checked as
    ``check`` would one after another (in bulk for the indexes of ``augment.filters``). A run keeps
    this index beside its ledger instead (``localaug.jobs.seen``)."""
    texts = [text for rec in records for text in accepted_texts(rec)]
    if hasattr(seen, "encode"):
        seen.extend(*seen.encode(texts))
    else:
        for text in texts:
            seen.check(text)


def output_counts(ledger: Path) -> dict[str, Any]:
    """Counts over every record of an output: rows by status, rejections by reason, new items."""
    return record_counts(iter_ledger(ledger) if ledger.exists() else iter(()))


def record_counts(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts over records (one per row key): rows by status, rejections by reason, new items."""
    counts: dict[str, Any] = {"rows": 0, "ok": 0, "filtered": 0, "failed": 0, "items": 0, "duplicates": 0}
    reasons: dict[str, int] = {}
    errors: dict[str, list[Any]] = {}  # an error with its numbers blanked -> [rows, its first wording]
    for rec in records:
        counts["rows"] += 1
        status = rec.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
        counts["items"] += len(accepted_texts(rec)) or (status == "ok" and rec.get("output") is not None)
        for reason, k in (rec.get("rejected") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(k)
        if status == "failed":
            text = str(rec.get("error") or "no reason recorded")
            same = _DIGITS.sub("#", text[:500])  # "invalid JSON on line 3" and "... line 9" are one error
            if same in errors:
                errors[same][0] += 1
            elif len(errors) < MAX_ERROR_KINDS:
                errors[same] = [1, text]
    counts["duplicates"] = sum(reasons.get(r, 0) for r in filters.DUPLICATE_REASONS)
    counts["rejected_by_reason"] = dict(sorted(reasons.items()))
    if errors:
        rows, text = max(errors.values(), key=lambda v: v[0])
        counts["most_common_error"] = {"error": text, "rows": rows}
    return counts
