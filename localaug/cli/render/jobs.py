"""What ``localaug run`` and ``localaug merge`` show: the summary table (and the chained phases', the
judging, what a judged export kept), a resumable stop; and the same results as JSON values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from localaug.cli.render import plain, render_warning

if TYPE_CHECKING:
    from localaug.jobs.grade import GradeSummary, VerdictSummary
    from localaug.jobs.merge import MergeSummary
    from localaug.jobs.stats import JobSummary


def render_job_summary(console: Console, summary: JobSummary) -> None:
    for stage in summary.stages:  # --respond-with: the augmenter's run first
        render_job_summary(console, stage)
    s = summary.stats
    task = f"{summary.task} " if summary.task else ""
    table = Table(title=f"localaug run {task}{summary.run_id[:12]}", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    rows = [
        ("rows", str(s.total)), ("already done (skipped)", str(s.skipped)), ("done now", str(s.done)),
        ("ok", str(s.ok)), ("filtered", str(s.filtered)), ("duplicates rejected", str(s.duplicates)),
        ("failed", str(s.failed)), ("time", f"{s.seconds:.1f} s"), ("rows/s", f"{s.rows_per_s:.2f}"),
        ("tokens/s", f"{s.tokens_per_s:.1f}"), ("records", str(summary.ledger)), ("manifest", str(summary.manifest)),
    ]
    counts = summary.counts or {}
    if counts and (counts.get("rows") != s.done or s.skipped):
        rows.append(("whole output", f"{counts['rows']} rows: ok {counts['ok']} · filtered {counts['filtered']} · "
                                     f"failed {counts['failed']} · {counts['items']} new items"))
    reasons = counts.get("rejected_by_reason") or s.reasons
    if reasons:
        rows.append(("rejected, by reason", " · ".join(f"{k} {v}" for k, v in sorted(reasons.items()))))
    if s.stale:
        rows.append(("dropped (rows no longer in the input)", f"{s.stale} records, kept in {s.stale_where}"))
    for judged in summary.judging:  # --judge: the grades or verdicts
        rows.append((judged_line(judged), judged.ledger))
    if summary.selection:
        rows.append(("kept (judged)", kept_line(summary.selection)))
    if summary.exported is not None:
        what = "records" if str(summary.output).endswith(".parquet") else "examples"
        rows.append(("written", f"{summary.output} ({summary.exported} {what})"))
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)
    if s.failed and not summary.all_failed():  # when every row failed, the command's error line says so
        console.print("[yellow]some rows failed[/yellow] (see their 'error'): fix the cause and rerun with --retry-failed",
                      highlight=False, soft_wrap=True)


def job_json(summary: JobSummary, dataset_info: Path | None = None) -> dict[str, Any]:
    """A run's summary: this run's counts, the whole output's, and the files written (the training
    file's ``dataset_info.json`` when given); a chained run has the augmenter's phase in ``stages``."""
    s = summary.stats
    files: dict[str, Any] = {"output": str(summary.output), "records": str(summary.ledger), "manifest": str(summary.manifest)}
    if summary.exported is not None and dataset_info is not None:
        files["dataset_info"] = str(dataset_info)
    if s.stale:
        files["stale"] = s.stale_where
    return {
        "task": summary.task or None, "run_id": summary.run_id, "complete": summary.complete,
        "this_run": {"rows": s.total, "skipped": s.skipped, "done": s.done, "ok": s.ok, "filtered": s.filtered,
                     "failed": s.failed, "duplicates": s.duplicates, "stale_dropped": s.stale, "tokens": s.tokens,
                     "seconds": round(s.seconds, 3), "rows_per_s": round(s.rows_per_s, 3),
                     "tokens_per_s": round(s.tokens_per_s, 2), "rejected_by_reason": dict(sorted(s.reasons.items()))},
        "output_counts": summary.counts, "exported": summary.exported, "files": files,
        "judging": [j.to_json() for j in summary.judging], "selection": summary.selection,
        "stages": [job_json(stage) for stage in summary.stages],
    }


def render_merge_summary(console: Console, summary: MergeSummary) -> None:
    table = Table(title="localaug merge", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("value", overflow="fold")
    status = " · ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items())) or "none"
    for k, v in [
        ("inputs", f"{len(summary.inputs)} files, {summary.records_read} records"), ("rows written", f"{summary.rows} ({status})"),
        ("superseded records", str(summary.superseded)), ("items removed as duplicates", str(summary.items_removed)),
        ("unreadable lines", str(summary.unreadable)), ("output", f"{summary.output} ({summary.written} written)"),
        ("manifest", str(summary.manifest)),
    ]:
        table.add_row(k, plain(v))
    console.print(table)
    for w in summary.warnings:
        render_warning(console, w)


def merge_json(summary: MergeSummary, dataset_info: Path | None = None) -> dict[str, Any]:
    files = {"output": str(summary.output), "manifest": str(summary.manifest)}
    if dataset_info is not None:
        files["dataset_info"] = str(dataset_info)
    return {"inputs": [str(p) for p in summary.inputs], "records_read": summary.records_read, "rows": summary.rows,
            "by_status": dict(sorted(summary.by_status.items())), "superseded": summary.superseded,
            "items_removed": summary.items_removed, "unreadable": summary.unreadable, "written": summary.written,
            "run_ids": summary.run_ids, "warnings": summary.warnings, "files": files}


def judged_line(judged: GradeSummary | VerdictSummary) -> str:
    """One line on a grade or verdict run (jobs.grade summaries)."""
    from localaug.jobs.grade import GradeSummary

    if isinstance(judged, GradeSummary):
        mean = "—" if judged.mean is None else f"{judged.mean:.2f}"
        return f"graded {judged.graded} of {judged.answers} answers (mean {mean}, {judged.done_now} now)"
    return f"judged {judged.judged} of {judged.pairs} pairs of answers in both orders ({judged.done_now} now)"


def kept_line(selection: dict[str, Any]) -> str:
    """How many instructions a judged export kept, and why the others were left out."""
    rule = f"rule {selection['rule']}" + (f", margin {selection['margin']:g}" if selection.get("margin") is not None else "") \
        if selection.get("rule") else "the best-graded answer"
    floor = f", min score {selection['min_score']:g}" if selection.get("min_score") is not None else ""
    dropped = " · ".join(f"{k}: {v}" for k, v in selection.get("dropped", {}).items())
    return f"{selection['kept']} instructions ({rule}{floor})" + (f"; left out: {dropped}" if dropped else "")


def render_interrupted(console: Console, message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True)
