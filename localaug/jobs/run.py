"""Batch jobs: a dataset in, one augmented record per input row out, never losing work.

One skeleton (``execute``) runs every job, on one machine or on Ray: it validates the options,
takes the output's lock, resolves the model and the run id, reads the input once to count and key
its rows, writes the run manifest, reports progress, turns Ctrl-C into a resumable stop, and ends
with the summary. Two seams vary:

- a *target* is where records go: the ledger of ``localaug run`` (``LedgerTarget``: an
  append-only JSONL, ``localaug.jobs.ledger``) or a folder of part files on Ray
  (``localaug.jobs.on_ray``);
- an *executor* is how pending rows become records: the continuous-batching engine in this process
  (``LocalExecutor``, through ``localaug.jobs.worker``) or Ray actors.

Every record carries its row key (``source_id``, ``localaug.jobs.keys``): the hash of the run id
(task, model file sha256, prompt format, sampling, seed, n, filters) and the row's text with its
occurrence number. A restart with the same arguments skips rows whose key is already in the
output, so a job killed at any moment (even ``kill -9``) is completed by running the same command
again. Changing any of those settings is a different run: it is refused on the same output with
the list of what changed. ``limit`` and ``shard`` only select rows; ``merge`` joins shards.

An input edited between two runs changes the keys of the rows edited: while counting, the whole
input is keyed (past ``limit`` and outside ``shard`` too, until every key of the output is met),
and the records whose key no row of the input has any more are moved out of the output into
``OUT.stale`` before the run goes on, so the output keeps one record per current input row. A
record of a row that is in the input but outside this run's shard or limit is kept.

Before the model loads, the rows are read until the column the job needs is met as text
(``columns.check_columns``): a ``field`` no row has, or one that holds no text, is refused with
the columns the rows do have. No output may be one of the files a run reads. The model loads only
once the rows are counted and one is left to do (``Executor.load``): the run id needs the model's
sha256 and prompt style, both cached by the file's path, size and mtime, so rerunning a finished
job answers at once, with the batch size its manifest had.

Counting keeps where each row still to do is in a text input (``localaug.jobs.pending``): a row is
read again from its place when its turn comes, so no row is read from the start or keyed twice. The
job-wide duplicate index (``dedup`` exact or minhash) is kept beside the ledger
(``localaug.jobs.seen``): a resumed run takes it as saved and checks only the texts of records
written after it was saved, so its first new row starts at once whatever the ledger holds.

A bad row (invalid JSON line, empty text, prompt too long, max tokens hit, unparseable reply) is
recorded with ``status: failed`` and its ``error``; ``retry_failed`` reruns only those, and a
finished job rewrites the ledger so that a retried row's new record supersedes the old one:
exactly one record per input row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from localaug._version import __version__
from localaug.augment.tasks import SINGLE_SAMPLE
from localaug.core.errors import JobError, JobInterrupted, LocalaugError, UsageError, opt
from localaug.core.files import read_json, refuse_overwriting_inputs, write_json_atomic
from localaug.core.progress import current
from localaug.jobs import dataio
from localaug.jobs.columns import check_columns
from localaug.jobs.dataio import InputRow
from localaug.jobs.keys import KeysMet, select_rows
from localaug.jobs.ledger import (
    Appender,
    changed_keys,
    compact_ledger,
    iter_ledger,
    output_counts,
    output_lock,
    repair_ledger,
    scan_ledger,
)
from localaug.jobs.options import OUTPUT_FORMATS, JobOptions, JobPlan
from localaug.jobs.pending import PendingRows
from localaug.jobs.paths import index_paths, job_paths, stale_path
from localaug.jobs.seen import Loaded, SeenBook, compact_keeping_index
from localaug.jobs.stats import JobProgress, JobStats, JobSummary
from localaug.jobs.worker import augment
from localaug.runtime.backend import Backend, rows_per_chunk
from localaug.runtime.calibrate import Parallel, open_calibrated
from localaug.runtime.llama import llama_cpp_version

__all__ = ["OUTPUT_FORMATS", "JobOptions", "JobPlan", "JobStats", "JobSummary", "execute", "run_job"]

# --- the seams --------------------------------------------------------------------------------------


class Target(Protocol):
    """Where a run's records go, and what is already there."""

    where: Path  # named in messages
    manifest_path: Path
    lock: Path
    statuses: dict[str, str]  # row key -> status of the record that counts (filled by prepare)

    def prepare(self) -> str: ...  # read what is there (repairing it); a note for the start message
    def drop(self, keys: set[str]) -> tuple[int, Path]: ...  # move these keys' records aside: (how many, where)
    def records(self) -> Iterator[dict[str, Any]]: ...  # the records that count, one per row key
    def write(self, records: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...
    def finish(self) -> int | None: ...  # after the last record: compaction, exports (examples written)
    def counts(self) -> dict[str, Any]: ...
    def manifest_fields(self) -> dict[str, Any]: ...
    def summary(self, run_id: str, stats: JobStats) -> JobSummary: ...


class Executor(Protocol):
    """How pending rows become records."""

    where: str  # " on Ray (4 actors)" or ""
    note: str  # what the start message adds about the executor ("batch size 16, calibrated ...") or ""

    def plan(self, opts: JobOptions) -> JobPlan: ...  # resolve the model and the run (nothing loaded yet)
    def load(self, plan: JobPlan) -> None: ...  # ready to make records: called only when a row is left to do
    def rows(self) -> Iterator[InputRow]: ...  # every row of the input, in order
    def column_rows(self) -> Iterator[InputRow] | None: ...  # rows readable before plan() (None: not here)
    def stage(self, row: InputRow) -> None: ...  # a row to do, met while counting
    def run(self, plan: JobPlan, pending: Callable[[], Iterator[InputRow]], target: Target) -> Iterator[list[dict[str, Any]]]: ...
    def manifest_fields(self, plan: JobPlan) -> dict[str, Any]: ...
    def close(self) -> None: ...


# --- the skeleton -----------------------------------------------------------------------------------


def execute(opts: JobOptions, input_name: str, target: Target, executor: Executor,
            progress: JobProgress | None = None) -> JobSummary:
    """Run a job (see the module doc); the executor is closed at the end."""
    shard = opts.check()
    wall0, started_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        rows = executor.column_rows()
        if rows is not None:  # before the model loads: a column no row has would fail every row
            check_columns(rows, opts.task, opts.field, opts.response_field, input_name)
        with output_lock(target.lock):
            plan = executor.plan(opts)
            note = target.prepare()
            previous = _refuse_another_run(target, plan)
            stats, todo = JobStats(), _todo(target.statuses, opts.retry_failed)
            met = KeysMet(target.statuses)
            counting = _Counting(input_name)
            for row in select_rows(executor.rows(), plan.job_config, plan.run_id, shard, opts.limit, met):
                stats.total += 1
                counting.met(row, stats.total)
                if todo(row):
                    executor.stage(row)
                else:
                    stats.skipped += 1
            counting.finish(stats.total)
            note += _drop_stale(target, met, stats)
            if stats.remaining:
                executor.load(plan)
            manifest: dict[str, Any] = {
                "run_id": plan.run_id, "complete": False, "input": input_name, **target.manifest_fields(),
                "model": plan.model_fields(), "localaug": __version__, "llama_cpp_python": llama_cpp_version(),
                "config": plan.run_config, "shard": list(shard) if shard else None, "limit": opts.limit,
                "started": started_at, **_kept(previous, stats), **executor.manifest_fields(plan)}
            if opts.command is not None:  # what localaug run --replay runs again
                manifest["settings"] = opts.command

            def save(complete: bool) -> None:
                manifest.update(stats.manifest_fields(complete, wall0), counts=target.counts() if complete else None)
                write_json_atomic(target.manifest_path, manifest)

            save(False)
            if progress:
                note += f" ({executor.note})" if executor.note else ""
                progress.start(stats, _start_message(plan.run_id, executor.where, stats, opts.retry_failed, note))

            def pending() -> Iterator[InputRow]:
                return (row for row in select_rows(executor.rows(), plan.job_config, plan.run_id, shard, opts.limit) if todo(row))

            _drive(plan, executor, target, stats, pending, progress, save)
            exported = target.finish()
            if exported is not None:
                manifest["exported"] = exported
            save(stats.remaining == 0)
            summary = target.summary(plan.run_id, stats)
            summary.exported, summary.counts = exported, manifest["counts"]
            return summary
    finally:
        executor.close()


class _Counting:
    """The counting pass as a phase: bytes of the input read (from the rows' places) of its size,
    and rows counted. Reported every ``EVERY`` rows: a report per row would cost more than the row."""

    EVERY = 512

    def __init__(self, input_name: str) -> None:
        self.progress = current()
        self.read = 0
        self.last: InputRow | None = None
        size = os.path.getsize(input_name) if os.path.isfile(input_name) else None
        self.progress.stage(f"counting rows of {input_name}", size, "bytes")

    def met(self, row: InputRow, n: int) -> None:
        self.last = row
        if n % self.EVERY == 0:
            self._report(n)

    def _report(self, n: int) -> None:
        row = self.last
        end = row.place[0] + max(0, row.place[1]) if row is not None and row.place is not None else self.read
        self.progress.advance(max(0, end - self.read), f"{n} row{'s' if n != 1 else ''}")
        self.read = max(self.read, end)

    def finish(self, n: int) -> None:
        self._report(n)
        self.progress.finish()


def _drive(plan: JobPlan, executor: Executor, target: Target, stats: JobStats, pending: Callable[[], Iterator[InputRow]],
           progress: JobProgress | None, save: Callable[[bool], None]) -> None:
    """Turn the pending rows into records in the target; Ctrl-C stops with what finished saved."""
    stats.started = time.monotonic()
    try:
        if stats.remaining:
            for records in executor.run(plan, pending, target):
                target.write(records)
                for rec in records:
                    stats.count(rec)
                if progress:
                    progress.update(stats)
    except KeyboardInterrupt:
        _quietly(target.close)
        _quietly(lambda: save(False))
        raise JobInterrupted(f"interrupted: {stats.skipped + stats.done} of {stats.total} rows are saved in "
                             f"{target.where}; run the same command again to finish the rest") from None
    except BaseException:
        _quietly(target.close)  # the error that stopped the run is the one to report, not a second one
        _quietly(lambda: save(False))
        raise
    finally:
        target.close()
        if progress:
            progress.close()


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (OSError, LocalaugError):
        pass


def _drop_stale(target: Target, met: KeysMet, stats: JobStats) -> str:
    """Move the records of rows no longer in the input out of the output; a note saying so."""
    stale = met.stale()
    if not stale:
        return ""
    stats.stale, where = target.drop(stale)
    stats.stale_where = str(where)
    what = "1 record of a row" if stats.stale == 1 else f"{stats.stale} records of rows"
    return f"; {what} no longer in the input {'was' if stats.stale == 1 else 'were'} dropped (kept in {where})"


def _todo(statuses: dict[str, str], retry_failed: bool) -> Callable[[InputRow], bool]:
    def todo(row: InputRow) -> bool:
        status = statuses.get(row.key)
        return status is None or (retry_failed and status == "failed")

    return todo


def _refuse_another_run(target: Target, plan: JobPlan) -> dict[str, Any]:
    """The manifest already there (empty: none), refusing it when it is another run's."""
    old = read_json(target.manifest_path) or {}
    if target.statuses and old and old.get("run_id") != plan.run_id:
        changed = ", ".join(changed_keys(old.get("config", {}), plan.run_config)) or "the run settings"
        raise JobError(f"{target.where} holds a different run ({changed} changed): rerun with the same arguments to "
                       f"resume, or choose another {opt('output')}", path=str(target.where))
    return old


def _kept(previous: dict[str, Any], stats: JobStats) -> dict[str, Any]:
    """What an earlier manifest said of how records were made (the batch size), kept by a run that
    had nothing left to do and so loaded no model."""
    if stats.remaining:
        return {}
    return {k: previous[k] for k in ("parallel", "parallel_chosen", "calibration_s") if k in previous}


def _start_message(run_id: str, where: str, stats: JobStats, retry_failed: bool, note: str) -> str:
    head = f"run {run_id[:12]}{where}"
    if stats.skipped and retry_failed:
        message = f"{head}: retrying failed rows, {stats.remaining} of {stats.total} to do"
    elif stats.skipped:
        message = f"{head}: resuming, {stats.skipped} of {stats.total} rows already done"
    else:
        message = f"{head}: new, {stats.total} rows"
    return message + note


# --- one machine: a ledger file, the engine in this process ----------------------------------------


class LedgerTarget:
    """The output of ``localaug run``: the ledger (the output itself for jsonl, else OUT.ledger.jsonl
    beside the training file written at the end), its manifest and its lock."""

    def __init__(self, output: Path, fmt: str, export: bool = True) -> None:
        self.output, self.fmt, self.export = output, fmt, export
        self.where, self.manifest_path, self.lock = job_paths(output, fmt)
        self.statuses: dict[str, str] = {}
        self._superseded = 0
        self._appender: Appender | None = None

    def prepare(self) -> str:
        repaired = repair_ledger(self.where)
        self.statuses, self._superseded = scan_ledger(self.where)
        self._appender = Appender(self.where)  # the output exists from here on, even for a run with no rows
        return f" (cut a torn last line of {repaired} bytes)" if repaired else ""

    def drop(self, keys: set[str]) -> tuple[int, Path]:
        assert self._appender is not None, "prepare() opens the ledger"
        self._appender.close()  # the ledger is rewritten under its name: append to the new file
        moved = compact_ledger(self.where, keys)
        self._appender = Appender(self.where)
        self.statuses = {k: v for k, v in self.statuses.items() if k not in keys}
        self._superseded = 0
        return moved, stale_path(self.where)

    def records(self) -> Iterator[dict[str, Any]]:
        return iter_ledger(self.where)

    def write(self, records: list[dict[str, Any]]) -> None:
        assert self._appender is not None, "prepare() opens the ledger"
        try:
            for rec in records:
                self._appender.write(rec)
                self._superseded += rec["source_id"] in self.statuses
        except OSError as e:  # disk full, a volume gone: what was appended stays, the same command resumes
            raise JobError(f"could not append to {self.where} ({e.strerror or e}): free space (or fix the disk) and "
                           "run the same command again; the rows written so far are kept", path=str(self.where)) from None

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()

    def finish(self) -> int | None:
        if self._superseded:  # the job-wide duplicate index beside it holds the same texts after
            compact_keeping_index(self.where, lambda: compact_ledger(self.where))
        if self.fmt == "jsonl" or not self.export:  # not export: the caller writes it (from judged answers)
            return None
        return dataio.write_records(iter_ledger(self.where, latest_only=False), self.fmt, self.output)

    def counts(self) -> dict[str, Any]:
        return output_counts(self.where)

    def manifest_fields(self) -> dict[str, Any]:
        return {"output": str(self.output), "ledger": str(self.where), "format": self.fmt}

    def summary(self, run_id: str, stats: JobStats) -> JobSummary:
        return JobSummary(self.output, self.where, self.manifest_path, run_id, stats)


class LocalExecutor:
    """Rows read from a local file; records made in this process by the continuous-batching engine
    (``parallel`` sequences at a time: given, or calibrated for this machine), in chunks of rows so
    memory stays flat."""

    where = ""

    def __init__(self, input_path: Path, opts: JobOptions) -> None:
        self.input_path, self.opts = input_path, opts
        text_file = input_path.is_file() and dataio.input_kind(input_path) in dataio.TEXT_KINDS
        self.pending = PendingRows(input_path if text_file else None)  # the rows to do, met while counting
        self.backend: Backend | None = None
        self.parallel: Parallel | None = None
        self.note = ""
        self.loaded: Loaded | None = None  # how the job-wide duplicate index was filled

    def plan(self, opts: JobOptions) -> JobPlan:
        return opts.plan()

    def load(self, plan: JobPlan) -> None:
        model = plan.remote if plan.remote is not None else plan.path
        assert model is not None
        self.backend, self.parallel = open_calibrated(model, self.opts.engine.options(), self.opts.engine.parallel)
        if plan.remote is not None:  # nothing loaded: requests in flight instead of sequences decoded
            self.note = f"{self.parallel.value} requests in flight to {plan.remote}"
        else:
            self.note = self.parallel.describe() if self.parallel.source in ("calibrated", "cached") else ""

    def rows(self) -> Iterator[InputRow]:
        rows = dataio.read_rows(self.input_path)
        return dataio.instruction_rows(rows) if self.opts.task == "respond" else rows

    def column_rows(self) -> Iterator[InputRow]:
        return self.rows()

    def stage(self, row: InputRow) -> None:
        self.pending.add(row)  # where it is (read again when its turn comes), or the row itself

    def run(self, plan: JobPlan, pending: Callable[[], Iterator[InputRow]], target: Target) -> Iterator[list[dict[str, Any]]]:
        assert self.backend is not None and self.parallel is not None, "load() opens the backend"
        backend, self.backend = self.backend, None  # closed below
        seen = plan.job_config.new_seen()
        # kept beside the ledger for the tasks whose records hold new instructions
        book = SeenBook(target.where, plan.run_id, seen) if seen is not None and plan.job_config.task not in SINGLE_SAMPLE else None
        try:
            if book is not None:
                self.loaded = book.load()
            for chunk in dataio.chunked(self.pending.rows(pending), rows_per_chunk(self.parallel.value)):
                for rec in augment(backend, plan.style, plan.job_config, chunk, seen):
                    yield [rec]
                    if book is not None:  # the record is in the ledger now
                        book.written(rec)
        finally:
            try:
                backend.close()
            finally:
                if book is not None:
                    book.close()

    def manifest_fields(self, plan: JobPlan) -> dict[str, Any]:
        if self.parallel is None:  # nothing was left to do: no model loaded, no batch size chosen
            return {}
        fields: dict[str, Any] = {"parallel": self.parallel.value, "parallel_chosen": self.parallel.source}
        if self.parallel.source == "calibrated":
            fields["calibration_s"] = round(self.parallel.seconds, 2)
        return fields

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def run_job(task: str, input: str | os.PathLike[str], output: str | os.PathLike[str], *,  # noqa: A002 - the CLI's --input
            fmt: str = "jsonl", progress: JobProgress | None = None, respond_with: str | os.PathLike[str] | None = None,
            respond: dict[str, Any] | None = None, judge: str | os.PathLike[str] | None = None,
            judging: dict[str, Any] | None = None, selection: dict[str, Any] | None = None, export: bool = True,
            **options: Any) -> JobSummary:
    """Run ``task`` over every row of ``input`` into ``output`` on this machine; resumable (see the
    module doc). ``options`` are ``JobOptions.of``'s keywords: its fields (model, field, n, …) and
    the engine, sampling and filters settings, flat (``threads=2, rouge_l=0.5``) or as the objects
    (``engine=EngineSettings(threads=2)``); ``command``: the settings to record for ``--replay``.

    ``respond_with`` (refine, expand): then answer every new instruction with that model (one model
    in memory at a time): the augmenter's records go to ``OUTPUT.<task>.jsonl``, the answered ones
    to ``output`` (``respond``: the responder's own JobOptions fields, e.g. system, max_tokens,
    samples). The summary is the responder's, with the augmenter's in ``summary.stages``.

    ``judge``: then judge the answers and write the training file from them (``chain.run_judged``);
    ``export`` False leaves the training file to the caller."""
    if judge is not None or selection or respond_with is not None:
        # imported here, not at the top, so that a plain job starts light (an all-done rerun answers at
        # once); chain never imports this module: it runs its phases through the run_job handed to it
        from localaug.jobs import chain

        if judge is not None or selection:
            return chain.run_judged(task, input, output, judge, fmt=fmt, progress=progress, respond_with=respond_with,
                                    respond=respond or {}, judging=judging or {}, selection=selection or {},
                                    run=run_job, **options)
        return chain.run_chain(task, input, output, respond_with, fmt=fmt, progress=progress, respond=respond or {},
                               export=export, run=run_job, **options)
    opts = JobOptions.of(task, **options)
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"{opt('fmt')} {fmt!r}: use {', '.join(OUTPUT_FORMATS)}")
    if task in dataio.INSTRUCTION_TASKS and fmt in dataio.RESPONSE_FORMATS:
        raise dataio.no_responses(f"{task}'s output")
    if fmt in dataio.PREFERENCE_FORMATS and export:
        raise UsageError(f"{opt('fmt')} {fmt} pairs judged answers: give {opt('judge')} (and two answers per instruction)")
    opts.check()
    input_path, out = Path(input), Path(output)
    if not input_path.exists():
        raise UsageError(f"input {input_path} does not exist")
    dataio.input_kind(input_path)
    if input_path.is_file() and dataio.is_blank(input_path):
        raise UsageError(f"input {input_path} is empty: give a file with at least one row")
    out.parent.mkdir(parents=True, exist_ok=True)
    target = LedgerTarget(out, fmt, export)
    refuse_overwriting_inputs(written_by(target, fmt), read_by(input_path, opts))
    return execute(opts, str(input_path), target, LocalExecutor(input_path, opts), progress)


def written_by(target: LedgerTarget, fmt: str) -> list[Path]:
    """Every file a ``localaug run`` into ``target`` may write."""
    written = [target.output, target.where, target.manifest_path, stale_path(target.where), *index_paths(target.where)]
    if fmt in dataio.DATASET_INFO:
        written.append(target.output.parent / "dataset_info.json")
    return written


def read_by(input_path: Path, opts: JobOptions) -> list[Path]:
    """Every file a run reads: the input (each file of a folder), the model and the examples files."""
    read = [input_path] if input_path.is_file() else [p for p in input_path.glob("*") if p.is_file()]
    for given in (opts.model, opts.examples):
        if isinstance(given, (str, os.PathLike)) and Path(given).is_file():
            read.append(Path(given))
    return read
