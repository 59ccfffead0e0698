"""A finished job's records, read for the report: the source texts, the new texts, statuses and
rejections. An output is a ledger (``localaug run``'s JSONL, or ``OUT.ledger.jsonl`` beside a
training file), a merged file, or a ``--ray`` folder of part files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError
from localaug.core.files import read_json
from localaug.jobs import parts
from localaug.jobs.dataio import get_field
from localaug.jobs.ledger import accepted_texts, iter_ledger, record_counts


@dataclass
class Collected:
    """What the report shows, from one output."""

    path: Path
    task: str
    model: str | None  # the GGUF the job ran, from its manifest (None: unknown)
    counts: dict[str, Any]
    rows: list[tuple[str, list[str]]]  # (source text, its new texts), every row that has a source
    sampled: bool = False  # rows were sampled down to max_rows (fixed seed)
    total_rows: int = 0
    field_name: str = "instruction"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return [s for s, _ in self.rows]

    @property
    def outputs(self) -> list[str]:
        return [t for _, new in self.rows for t in new]


def _ledger_of(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(the records file, its manifest) for an output named as written (OUT or OUT.ledger.jsonl)."""
    if path.is_dir():
        return path, parts.read_manifest(path)
    ledger = path.with_name(path.name + ".ledger.jsonl")
    if not path.name.endswith(".jsonl") and ledger.is_file():
        path = ledger  # a training file: its records are beside it
    manifest = read_json(path.with_name(path.name + ".manifest.json"))
    if manifest is None and path.name.endswith(".ledger.jsonl"):
        manifest = read_json(path.with_name(path.name.removesuffix(".ledger.jsonl") + ".manifest.json"))
    return path, manifest


def _new_texts(rec: dict[str, Any]) -> list[str]:
    if rec.get("status") != "ok":
        return []
    if rec.get("task") == "refine":
        return [str(rec["output"])] if rec.get("output") else []
    return accepted_texts(rec)


def _source(rec: dict[str, Any], field_name: str) -> str | None:
    if rec.get("task") == "pairs":
        for key in (field_name, "instruction"):
            value = rec.get(key)
            if isinstance(value, str):
                return value
    try:
        value = get_field(rec, field_name)
    except KeyError:
        return None
    return value if isinstance(value, str) and value.strip() else None


def collect(path: str | Path, max_rows: int = 2000, seed: int = 0) -> Collected:
    """The records of the output at ``path`` (rows sampled down to ``max_rows`` with ``seed``)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist: give a localaug run output (JSONL records, a training file with "
                         "its .ledger.jsonl, or a --ray folder)")
    records_path, manifest = _ledger_of(path)
    try:
        records = list(parts.records(records_path) if records_path.is_dir() else iter_ledger(records_path))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {records_path}: {e}") from None
    records = [r for r in records if isinstance(r, dict) and "status" in r and "task" in r]
    if not records:
        raise UsageError(f"{records_path} holds no localaug job records (need 'task' and 'status'): give a job's output")
    tasks = {r["task"] for r in records}
    if tasks == {"respond"}:  # a --respond-with run: its augmenter's records are beside it
        base = records_path.name.removesuffix(".ledger.jsonl")
        for task in ("refine", "expand"):
            stage = records_path.with_name(f"{base}.{task}.jsonl")
            if stage.is_file():
                return collect(stage, max_rows, seed)
    if len(tasks) > 1 or tasks <= {"respond"}:
        raise UsageError(f"{records_path}: the report covers one refine, expand or pairs output (found {', '.join(sorted(tasks))})")
    config = (manifest or {}).get("config") or {}
    field_name = str(config.get("field") or "instruction")
    rows = [(src, _new_texts(r)) for r in records if (src := _source(r, field_name)) is not None]
    total = len(rows)
    sampled = total > max_rows
    if sampled:
        rows = random.Random(seed).sample(rows, max_rows)
    model = ((manifest or {}).get("model") or {}).get("path")
    return Collected(records_path, tasks.pop(), model, record_counts(records), rows, sampled, total, field_name,
                     {"manifest": json.loads(json.dumps(manifest or {}, default=str))})
