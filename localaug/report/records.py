"""A finished job's records, read for the report: the source texts, the new texts, statuses and
rejections. An output is a ledger (``localaug run``'s JSONL, or ``OUT.ledger.jsonl`` beside a
training file), a merged file, or a ``--ray`` folder of part files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaug.core.errors import JobError, UsageError
from localaug.core.files import read_json
from localaug.jobs import parts, paths
from localaug.jobs.dataio import get_field
from localaug.jobs.grade import answers_of
from localaug.jobs.ledger import accepted_texts, best_records, iter_ledger, record_counts
from localaug.jobs.schema import EXPECTED, Skipped


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
    skipped: Skipped = field(default_factory=Skipped)  # lines that are not job records
    read: list[Path] = field(default_factory=list)  # every file read (no output may be one of them)

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
    ledger = paths.records_candidates(path)[0]
    if not path.name.endswith(".jsonl") and ledger.is_file():
        path = ledger  # a training file: its records are beside it
    manifest = next((m for m in map(read_json, _manifests(path)) if m is not None), None)
    return path, manifest


def _manifests(path: Path) -> list[Path]:
    """Where the manifest of a records file (or folder) may be."""
    if path.is_dir():
        return [paths.folder_manifest(path)]
    return list(paths.manifest_paths(path))


def _new_texts(rec: dict[str, Any]) -> list[str]:
    if rec.get("status") != "ok":
        return []
    if rec.get("task") == "respond":  # the answers (every kept one, with several samples)
        return [a.text for a in answers_of(rec)]
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
    skipped = Skipped()
    try:
        if records_path.is_dir():
            best = best_records(parts.part_files(records_path))
            skipped.count = best.unreadable
            skipped.first = next((s.first for _, s in best.per_file if s.first), None)
            records = list(parts.records(records_path))
        else:
            records = list(iter_ledger(records_path, skipped=skipped))
    except OSError as e:
        raise JobError(f"cannot read {records_path}: {e.strerror or e}", path=str(records_path)) from None
    if not records:
        why = f" ({skipped.first})" if skipped.first else " (it is empty)"
        raise UsageError(f"{records_path} holds no localaug job records{why}: expected {EXPECTED}")
    tasks = {r["task"] for r in records}
    if tasks == {"respond"}:  # a --respond-with run: its augmenter's records are beside it
        for task in ("refine", "expand"):
            stage = paths.stage_path(paths.output_of(records_path), task)
            if stage.is_file():
                inner = collect(stage, max_rows, seed)
                inner.read += [records_path, *_manifests(records_path)]
                return inner
    if len(tasks) > 1:
        raise UsageError(f"{records_path}: the report covers one refine, expand, pairs or respond output (found {', '.join(sorted(tasks))})")
    manifest = manifest or {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    field_name = config["field"] if isinstance(config.get("field"), str) and config["field"] else "instruction"
    if tasks == {"respond"}:  # its records name what they answered "instruction", whatever the column was
        field_name = "instruction"
    rows = [(src, _new_texts(r)) for r in records if (src := _source(r, field_name)) is not None]
    total = len(rows)
    sampled = total > max_rows
    if sampled:
        rows = random.Random(seed).sample(rows, max_rows)
    model_info = manifest.get("model")
    model = model_info.get("path") if isinstance(model_info, dict) and isinstance(model_info.get("path"), str) else None
    return Collected(records_path, tasks.pop(), model, record_counts(records), rows, sampled, total, field_name,
                     {"manifest": json.loads(json.dumps(manifest, default=str))}, skipped,
                     [records_path, *_manifests(records_path)])
