"""What a running job counts (``JobStats``), how it reports progress (``JobProgress``, drawn by
``localaug.cli.render``) and what it returns (``JobSummary``)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from localaug.augment import filters
from localaug.core.errors import opt

RECENT = 3  # results the live display shows


@dataclass
class JobStats:
    """Live counters of one job (what progress displays and the manifest keeps)."""

    total: int = 0  # rows selected (after --shard / --limit)
    skipped: int = 0  # already in the output from an earlier run
    done: int = 0  # finished in this run
    ok: int = 0
    filtered: int = 0
    failed: int = 0
    duplicates: int = 0  # samples rejected as duplicates or near duplicates
    stale: int = 0  # records of rows no longer in the input, moved out of the output at the start
    stale_where: str = ""  # the file they were moved to
    tokens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # rejected samples / filtered refine rows, by reason
    recent: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=RECENT))  # (status, text)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rows_per_s(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.skipped - self.done)

    @property
    def eta_s(self) -> float | None:
        return self.remaining / self.rows_per_s if self.done else None

    def count(self, rec: dict[str, Any]) -> None:
        self.done += 1
        status = rec["status"]
        setattr(self, status, getattr(self, status) + 1)
        self.tokens += int(rec.get("completion_tokens") or 0)
        for reason, k in (rec.get("rejected") or {}).items():
            self.reasons[reason] = self.reasons.get(reason, 0) + k
            self.duplicates += k if reason in filters.DUPLICATE_REASONS else 0
        self.recent.append((status, preview(rec)))

    def manifest_fields(self, complete: bool, wall0: float) -> dict[str, Any]:
        """What a run manifest says of this run (besides the counts over the whole output)."""
        return {"complete": complete, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "this_run": {"rows": self.total, "skipped": self.skipped, "done": self.done, "ok": self.ok,
                             "filtered": self.filtered, "duplicates": self.duplicates, "failed": self.failed,
                             "rejected_by_reason": dict(sorted(self.reasons.items())), "stale_dropped": self.stale},
                "wall_seconds": round(time.monotonic() - wall0, 3), "tokens": self.tokens,
                "tokens_per_s": round(self.tokens_per_s, 2)}


def preview(rec: dict[str, Any]) -> str:
    """A record's result in one line (its output, first new instruction, or error)."""
    if rec.get("status") != "ok":
        return str(rec.get("error") or rec.get("status"))
    if rec.get("output") is not None:
        text = str(rec["output"])
    elif rec.get("outputs"):
        text = str(rec["outputs"][0])
    elif rec.get("pairs"):
        text = str(rec["pairs"][0]["instruction"])
    else:
        text = ""
    return " ".join(text.split())


class JobProgress(Protocol):
    def start(self, stats: JobStats, message: str) -> None: ...
    def update(self, stats: JobStats) -> None: ...
    def close(self) -> None: ...


@dataclass
class JobSummary:
    output: Path
    ledger: Path
    manifest: Path
    run_id: str
    stats: JobStats
    exported: int | None = None  # training examples written for --format alpaca|sharegpt|messages
    counts: dict[str, Any] | None = None  # over the whole output (earlier runs too), see output_counts
    stages: list[JobSummary] = field(default_factory=list)  # --respond-with: the augmenter's run before this one
    task: str = ""
    judging: list[Any] = field(default_factory=list)  # --judge: the grade and verdict summaries (jobs.grade)
    selection: dict[str, Any] | None = None  # --judge: how the training file's answers were chosen (jobs.preference)

    @property
    def complete(self) -> bool:
        return self.stats.remaining == 0

    def all_failed(self) -> str | None:
        """When every row of a finished output failed: one line saying so, with the most common
        error (a job that made nothing must not look like a success); else None."""
        counts = self.counts or {}
        rows, failed = counts.get("rows") or 0, counts.get("failed") or 0
        if not (self.complete and rows and failed == rows):
            return None
        common = counts.get("most_common_error") or {}
        n = common.get("rows", 0)
        where = f" of the {self.task} phase" if self.task else ""
        return (f"every row{where} failed ({rows} of {rows}); the most common error ({n} row{'s' if n != 1 else ''}): "
                f"{common.get('error', 'none recorded')}; fix the cause and rerun with {opt('retry_failed')}")
