"""A folder of JSONL part files as a job output (``localaug run --ray``), kept exactly once.

Each part is one batch's records, named by the hash of its row keys and written whole (temporary
file, then rename): a batch run again (a retry after a lost worker) replaces its own part instead
of adding one, and a part is either complete or absent. A key can still appear in two parts (a
row rerun with ``--retry-failed``); readers take its best record, as ``localaug merge`` does
(ok, then filtered, then failed; the later of equals).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localaug.core.files import read_json, temp_beside
from localaug.jobs.ledger import RANK, best_records, read_at, read_record, record_lines
from localaug.jobs.paths import folder_manifest

_STATUS = {rank: status for status, rank in RANK.items()}


def write_part(out: Path, keys: list[str], lines: list[str]) -> Path:
    """One batch's records (JSON lines) as ``part-<hash of its row keys>.jsonl`` in ``out``."""
    path = out / f"part-{hashlib.sha256(chr(10).join(sorted(keys)).encode()).hexdigest()[:32]}.jsonl"
    with temp_beside(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def part_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.jsonl"))


def statuses(out: Path) -> dict[str, str]:
    """Row key -> the status of its best record in ``out``."""
    return {key: _STATUS[rank] for key, (rank, _, _, _) in best_records(part_files(out)).where.items()}


def records(out: Path) -> Iterator[dict[str, Any]]:
    """The best record of each row key in ``out`` (part by part, in file order)."""
    parts = part_files(out)
    return read_at(parts, sorted(best_records(parts).where.values(), key=lambda v: (v[1], v[2])))


STALE = "records.stale"  # records of rows no longer in the input, moved out of the parts


def drop_keys(out: Path, keys: set[str]) -> int:
    """Move the records of ``keys`` out of the parts into ``out/records.stale`` (appended first,
    then each part that held one is rewritten without it, or removed when nothing is left); the
    number of records moved."""
    moved = 0
    for part in part_files(out):
        keep, drop = [], []
        with open(part, "rb") as f:
            for _, _, line in record_lines(f):
                rec, _ = read_record(line)
                (drop if rec is not None and rec["source_id"] in keys else keep).append(line)
        if not drop:
            continue
        with open(out / STALE, "ab") as f:
            f.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in drop if line is not None))
            f.flush()
            os.fsync(f.fileno())
        moved += len(drop)
        if not any(line is not None and line.strip() for line in keep):
            part.unlink()
            continue
        with temp_beside(part) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"".join(line for line in keep if line is not None))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, part)
    return moved


def read_manifest(out: Path) -> dict[str, Any] | None:
    """``out/manifest.json``, or None when it is missing or unreadable."""
    return read_json(folder_manifest(out))
