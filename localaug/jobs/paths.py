"""The names of every file a job writes beside its output, in one place.

For an output ``OUT`` (``localaug run ... -o OUT``):

    OUT                      the records (jsonl), or the training file / parquet written at the end
    OUT.ledger.jsonl         the records of a run whose output is not jsonl (the ledger)
    OUT.manifest.json        the run's manifest: run id, settings, counts
    OUT.lock                 held while a run writes OUT (beside OUT's real path)
    OUT.<task>.jsonl         the augmenter's records of a chained run (--respond-with): its stage
    LEDGER.stale             records of rows no longer in the input, moved out of the ledger
    LEDGER.dedup(.json)      the job-wide duplicate index and its header
    OUT.grades.jsonl         a judge's grades of OUT's answers (OUT.verdicts.jsonl: pairwise verdicts)
    JUDGED.summary.json      what a grades or verdicts ledger holds, summed up

A Ray run writes a folder instead: part files, ``manifest.json`` and ``records.stale``.

Files a job names by hand drift apart (one module adding ``.ledger.jsonl``, another stripping
it); every reader and writer of job outputs names them through these functions instead.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "FOLDER_MANIFEST", "GRADES", "LEDGER_SUFFIX", "MANIFEST_SUFFIX", "STALE_SUFFIX", "VERDICTS", "folder_manifest",
    "index_paths", "job_paths", "judged_path", "ledger_of", "lock_path", "manifest_of", "manifest_paths", "output_of",
    "records_candidates", "stage_path", "stale_path", "summary_path",
]

LEDGER_SUFFIX = ".ledger.jsonl"
MANIFEST_SUFFIX = ".manifest.json"
STALE_SUFFIX = ".stale"  # OUT.stale: records of rows no longer in the input, moved out of the ledger
GRADES, VERDICTS = ".grades.jsonl", ".verdicts.jsonl"  # the judge's ledgers: OUT + suffix
FOLDER_MANIFEST = "manifest.json"  # a Ray run's folder


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def output_of(path: Path) -> Path:
    """The output a path stands for: ``OUT`` for ``OUT.ledger.jsonl``, else the path itself."""
    return path.with_name(path.name.removesuffix(LEDGER_SUFFIX))


def ledger_of(output: Path, fmt: str) -> Path:
    """Where a run's records go: the output itself for jsonl, else ``OUT.ledger.jsonl``."""
    return output if fmt == "jsonl" else _beside(output, LEDGER_SUFFIX)


def manifest_of(output: Path) -> Path:
    return _beside(output, MANIFEST_SUFFIX)


def folder_manifest(folder: Path) -> Path:
    """The manifest of a Ray run's folder of parts."""
    return folder / FOLDER_MANIFEST


def manifest_paths(path: Path) -> tuple[Path, Path]:
    """Where the manifest of an output (or of its ledger) may be."""
    return manifest_of(path), manifest_of(output_of(path))


def lock_path(output: Path) -> Path:
    """The lock of an output, beside its real path: a symlink to it takes the same lock."""
    real = output.resolve()
    return _beside(real, ".lock")


def job_paths(output: Path, fmt: str) -> tuple[Path, Path, Path]:
    """(ledger, manifest, lock) for an output: the ledger is the output itself for jsonl."""
    return ledger_of(output, fmt), manifest_of(output), lock_path(output)


def stage_path(output: Path, task: str) -> Path:
    """Where the augmenter's records of a chained run go: beside the output, named after the task."""
    return _beside(output, f".{task}.jsonl")


def stale_path(ledger: Path) -> Path:
    """Where the records of rows no longer in the input go: LEDGER.stale beside the ledger's real
    path (a name no reader of job outputs takes for records)."""
    return _beside(ledger.resolve(), STALE_SUFFIX)


def index_paths(ledger: Path) -> tuple[Path, Path]:
    """The job-wide duplicate index: (entries, header) beside the ledger's real path."""
    real = ledger.resolve()
    return _beside(real, ".dedup"), _beside(real, ".dedup.json")


def judged_path(output: Path, suffix: str) -> Path:
    """Where the grades (``GRADES``) or verdicts (``VERDICTS``) of an output go: beside it, named
    after it (a ledger given as ``OUT.ledger.jsonl`` counts as OUT)."""
    return _beside(output_of(output), suffix)


def summary_path(judged: Path) -> Path:
    """The summary written beside a grades or verdicts ledger."""
    return judged.with_name(judged.name.removesuffix(".jsonl") + ".summary.json")


def judge_ledger(answers: Path, aspect: str) -> Path:
    """``localaug judge``'s default verdicts ledger: beside answers B, named after B and the aspect."""
    return _beside(answers, f".judge-{aspect}.jsonl")


def judge_summary(ledger: Path) -> Path:
    """The summary ``localaug judge`` writes beside its verdicts ledger (``LEDGER.summary.json``)."""
    return _beside(ledger, ".summary.json")


def records_candidates(output: Path) -> list[Path]:
    """Where the records behind an output may be, after the ledger its manifest names:
    ``OUT.ledger.jsonl`` beside a training file."""
    return [_beside(output, LEDGER_SUFFIX)]
