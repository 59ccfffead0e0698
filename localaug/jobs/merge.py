"""``localaug merge``: join the outputs of shards (or of repeated runs) into one file.

Every record carries its row key (``source_id``), so joining is exact: one record per key, the
best one when a key appears more than once (ok, then filtered, then failed; the later of equals).
Records are written in input order (their ``row``). For expand and pairs, new items are then
de-duplicated *across* the inputs too (exact, or MinHash near duplicates), since each shard only
saw its own rows; what is dropped is counted in each record's ``rejected`` and in the summary.

Inputs are job outputs (their ledger is found through the manifest beside them) or folders of
JSONL part files. The run ids in their manifests must agree (a merge of different runs is refused
unless asked for), and shards that are missing or unfinished are reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaug.augment import filters
from localaug.core.errors import JobError, UsageError, opt
from localaug.core.files import read_json, refuse_overwriting_inputs, write_json_atomic
from localaug.jobs import MERGE_DEDUP, dataio
from localaug.jobs.ledger import BestRecords, best_records, read_at
from localaug.jobs.paths import folder_manifest, manifest_of, manifest_paths
from localaug.jobs.schema import EXPECTED


@dataclass
class MergeSummary:
    output: Path
    manifest: Path
    inputs: list[Path]
    records_read: int = 0
    rows: int = 0  # records written (one per row key)
    superseded: int = 0  # records dropped because their key appeared again
    unreadable: int = 0  # lines that are not JSON records with a source_id
    items_removed: int = 0  # new items dropped as duplicates across the inputs
    by_status: dict[str, int] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: int = 0  # records, or training examples for a training format


@dataclass
class _Source:
    path: Path
    manifest: dict[str, Any] | None
    folder: Path | None = None  # the folder of part files it is one of


def ledgers_of(inputs: Sequence[str | os.PathLike[str]]) -> list[_Source]:
    """The JSONL record files behind the given outputs or folders."""
    found: list[_Source] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            parts = sorted(q for q in p.glob("*.jsonl") if q.is_file())
            if not parts:
                raise UsageError(f"{p} holds no .jsonl part files")
            manifest = read_json(folder_manifest(p))  # a folder's run (localaug run --ray)
            found += [_Source(q, manifest or _manifest_of(q), p if manifest else None) for q in parts]
            continue
        manifest = _manifest_of(p)
        named = manifest.get("ledger") if manifest else None
        ledger = Path(named) if isinstance(named, str) and named else p
        if not ledger.is_absolute() and not ledger.exists():
            ledger = p.parent / ledger.name
        if not ledger.is_file():
            raise UsageError(f"{p} does not exist (give job outputs, or folders of .jsonl parts)")
        found.append(_Source(ledger, manifest))
    seen: set[Path] = set()
    unique = []
    for src in found:
        if src.path.resolve() not in seen:
            seen.add(src.path.resolve())
            unique.append(src)
    return unique


def _manifest_of(path: Path) -> dict[str, Any] | None:
    for cand in manifest_paths(path):
        manifest = read_json(cand)
        if manifest is not None:
            return manifest
    return None


def merge_outputs(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    fmt: str = "jsonl",
    dedup: str = "exact",
    minhash_threshold: float = filters.DEFAULT_MINHASH,
    allow_mixed: bool = False,
) -> MergeSummary:
    """Join job outputs into ``output`` (one record per row key, in input order); see the module doc."""
    if dedup not in MERGE_DEDUP:
        raise UsageError(f"{opt('dedup')} {dedup!r}: use {', '.join(MERGE_DEDUP)}")
    if fmt not in (*dataio.RECORD_FORMATS, *dataio.EXPORT_FORMATS):
        raise UsageError(f"{opt('fmt')} {fmt!r}: use {', '.join((*dataio.RECORD_FORMATS, *dataio.EXPORT_FORMATS))}")
    if fmt in dataio.PREFERENCE_FORMATS:
        raise UsageError(f"{opt('fmt')} {fmt} is made from judged answers: merge to jsonl, then localaug grade and "
                         "localaug export the merged file")
    if not inputs:
        raise UsageError("give the outputs to merge, e.g. localaug merge out.*.jsonl -o merged.jsonl")
    out = Path(output)
    sources = ledgers_of(inputs)
    summary = MergeSummary(out, manifest_of(out), [s.path for s in sources])
    written = [out, summary.manifest] + ([out.parent / "dataset_info.json"] if fmt in dataio.DATASET_INFO else [])
    read = [p for s in sources for p in (s.path, *manifest_paths(s.path), *([folder_manifest(s.folder)] if s.folder else []))]
    refuse_overwriting_inputs(written, read)
    _check_runs(sources, summary, allow_mixed)

    # pass 1: the best record of each row key, remembered by where it is; then read in input order
    paths = [src.path for src in sources]
    best = best_records(paths)
    _refuse_foreign(sources, best)
    summary.records_read, summary.superseded, summary.unreadable = best.read, best.superseded, best.unreadable
    order = sorted(best.where.values(), key=lambda v: (v[3], v[1], v[2]))

    seen = None if dedup == "none" else filters.ExactIndex() if dedup == "exact" else filters.MinHashIndex(minhash_threshold)

    def records() -> Iterator[dict[str, Any]]:
        for rec in read_at(paths, order):
            if seen is not None:
                summary.items_removed += _dedup_items(rec, seen)
            summary.rows += 1
            summary.by_status[rec["status"]] = summary.by_status.get(rec["status"], 0) + 1  # a checked record: it has one
            yield rec

    out.parent.mkdir(parents=True, exist_ok=True)
    summary.written = dataio.write_records(records(), fmt, out)
    write_json_atomic(summary.manifest, {
        "merged": [str(p) for p in summary.inputs], "output": str(out), "format": fmt, "run_ids": summary.run_ids,
        "dedup": dedup, "minhash_threshold": minhash_threshold if dedup == "minhash" else None,
        "counts": {"records_read": summary.records_read, "rows": summary.rows, "superseded": summary.superseded,
                   "unreadable": summary.unreadable, "items_removed_as_duplicates": summary.items_removed,
                   **summary.by_status},
        "written": summary.written, "warnings": summary.warnings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return summary


def _refuse_foreign(sources: list[_Source], best: BestRecords) -> None:
    """A file with no job record is not a job output (an empty one is, when a manifest says so:
    a shard that had no rows)."""
    for src, (read, skipped) in zip(sources, best.per_file):
        if not read and (skipped.count or src.manifest is None):
            why = skipped.first or "an empty file with no manifest beside it"
            raise UsageError(f"{src.path} is not a localaug job output ({why}): expected {EXPECTED}")


def _check_runs(sources: list[_Source], summary: MergeSummary, allow_mixed: bool) -> None:
    manifests = [s.manifest for s in sources if s.manifest]
    summary.run_ids = sorted({m["run_id"] for m in manifests if isinstance(m.get("run_id"), str)})
    if len(summary.run_ids) > 1 and not allow_mixed:
        raise JobError(f"these outputs are from {len(summary.run_ids)} different runs (different task, model, sampling "
                       f"or filters): merge each run separately, or pass {opt('allow_mixed')} to join them anyway")
    for s in sources:
        warning = f"{s.folder or s.path} is unfinished: rerun its command to complete it, then merge again"
        if s.manifest and not s.manifest.get("complete") and warning not in summary.warnings:
            summary.warnings.append(warning)
    shards = {(m["shard"][0], m["shard"][1]) for m in manifests if _is_shard(m.get("shard"))}
    counts = {n for _, n in shards}
    if len(counts) > 1:
        summary.warnings.append(f"shards of different splits ({', '.join(f'/{n}' for n in sorted(counts))})")
    elif counts:
        n = counts.pop()
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        if missing:
            summary.warnings.append(f"missing shard{'s' if len(missing) > 1 else ''} "
                                    f"{', '.join(f'{i}/{n}' for i in missing)}: the merge covers only part of the input")


def _is_shard(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] < value[1])


def _dedup_items(rec: dict[str, Any], seen: Any) -> int:
    """Drop a record's new items already seen in earlier records; return how many were dropped."""
    if rec.get("status") != "ok" or not (rec.get("outputs") or rec.get("pairs")):
        return 0
    field_name = "outputs" if rec.get("outputs") else "pairs"
    kept, removed = [], {"duplicate": 0, "near-duplicate": 0}
    for item in rec[field_name]:
        reason = seen.check(item if isinstance(item, str) else item["instruction"])
        if reason is None:
            kept.append(item)
        else:
            removed[reason] += 1
    dropped = sum(removed.values())
    if dropped:
        rec[field_name] = kept
        rejected = dict(rec.get("rejected") or {})
        for reason, k in removed.items():
            if k:
                rejected[reason] = rejected.get(reason, 0) + k
        rec["rejected"] = rejected
        rec["shortfall"] = int(rec.get("shortfall") or 0) + dropped
        if not kept:
            rec["status"], rec["error"] = "filtered", "every new item duplicates another row's (merge)"
    return dropped
