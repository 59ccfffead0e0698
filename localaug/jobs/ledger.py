"""The job ledger: the append-only JSONL of a run's records, and what keeps it whole.

Each row's record is appended with one ``write()`` and fsync'd at least every second
(``Appender``); a kill at any moment leaves at most a torn last line, which ``repair_ledger`` cuts
on the next start. ``scan_ledger`` tells a restart which row keys are done; a retried row appends
a newer record and ``compact_ledger`` (temp file + rename) keeps only the latest one per key.
``output_lock`` refuses a second process on the same output (the lock sits beside the output's real
path, so a second name for it through a symlink cannot start a second writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaug.augment import filters
from localaug.core.errors import JobLockedError, opt
from localaug.core.files import exclusive_lock
from localaug.jobs.dataio import json_line

FSYNC_EVERY_S = 1.0


def job_paths(output: Path, fmt: str) -> tuple[Path, Path, Path]:
    """(ledger, manifest, lock) for an output: the ledger is the output itself for jsonl."""
    ledger = output if fmt == "jsonl" else output.with_name(output.name + ".ledger.jsonl")
    return ledger, output.with_name(output.name + ".manifest.json"), lock_path(output)

def lock_path(output: Path) -> Path:
    """The lock of an output, beside its real path: a symlink to it takes the same lock."""
    real = output.resolve()
    return real.with_name(real.name + ".lock")


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


def scan_ledger(ledger: Path) -> tuple[dict[str, str], int]:
    """(row key -> status of its latest record, lines that are superseded or unreadable)."""
    status: dict[str, str] = {}
    extra = 0
    if not ledger.exists():
        return status, 0
    with open(ledger, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                key = rec["source_id"]
            except (ValueError, KeyError, TypeError):
                extra += 1
                continue
            extra += key in status
            status[key] = rec.get("status", "failed")
    return status, extra


def iter_ledger(ledger: Path, latest_only: bool = True) -> Iterator[dict[str, Any]]:
    """The ledger's records; with ``latest_only`` one per row key (its last), in ledger order."""
    last: dict[str, int] = {}
    if latest_only:
        with open(ledger, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    last[json.loads(line)["source_id"]] = i
    with open(ledger, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not latest_only or last.get(rec.get("source_id")) == i:
                yield rec


def compact_ledger(ledger: Path) -> None:
    """Rewrite the ledger with one record per row key (temp file + rename)."""
    tmp = ledger.with_name(ledger.name + ".compact.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in iter_ledger(ledger):
            f.write(json_line(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ledger)


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
    unreadable: int = 0  # non-blank lines that are not JSON records with a source_id


def best_records(paths: Sequence[Path]) -> BestRecords:
    """One pass over JSONL record files: the best record of each row key (ok, then filtered, then
    failed; the later of equals), remembered by position rather than kept in memory."""
    best = BestRecords()
    for fi, path in enumerate(paths):
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                here, offset = offset, offset + len(line)
                try:
                    rec = json.loads(line)
                    key = rec["source_id"]
                except (ValueError, KeyError, TypeError):
                    best.unreadable += bool(line.strip())
                    continue
                best.read += 1
                rank = RANK.get(rec.get("status"), 0)
                old = best.where.get(key)
                if old is not None:
                    best.superseded += 1
                    if old[0] > rank:
                        continue
                row = rec.get("row")
                best.where[key] = (rank, fi, here, row if isinstance(row, int) else NO_ROW)
    return best


def read_at(paths: Sequence[Path], places: Sequence[tuple[int, int, int, int]]) -> Iterator[dict[str, Any]]:
    """The records at ``places`` (BestRecords values), in the order given."""
    handles: dict[int, Any] = {}
    try:
        for _, fi, offset, _ in places:
            if fi not in handles:
                handles[fi] = open(paths[fi], "rb")  # noqa: SIM115 - closed below
            handles[fi].seek(offset)
            yield json.loads(handles[fi].readline())
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
    """Fill a job-wide duplicate index with the accepted texts of earlier records (a resumed run)."""
    for rec in records:
        for text in accepted_texts(rec):
            seen.check(text)


def output_counts(ledger: Path) -> dict[str, Any]:
    """Counts over every record of an output: rows by status, rejections by reason, new items."""
    return record_counts(iter_ledger(ledger) if ledger.exists() else iter(()))


def record_counts(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts over records (one per row key): rows by status, rejections by reason, new items."""
    counts: dict[str, Any] = {"rows": 0, "ok": 0, "filtered": 0, "failed": 0, "items": 0, "duplicates": 0}
    reasons: dict[str, int] = {}
    for rec in records:
        counts["rows"] += 1
        status = rec.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
        counts["items"] += len(accepted_texts(rec)) or (status == "ok" and rec.get("output") is not None)
        for reason, k in (rec.get("rejected") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(k)
    counts["duplicates"] = sum(reasons.get(r, 0) for r in filters.DUPLICATE_REASONS)
    counts["rejected_by_reason"] = dict(sorted(reasons.items()))
    return counts
