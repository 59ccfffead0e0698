"""What ``localaug grade`` and ``localaug export`` show: the judge's grades or verdicts, and the
training file written from the judged answers; and the export as a JSON value."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from localaug.cli.render import render_rows
from localaug.cli.render.jobs import kept_line

if TYPE_CHECKING:
    from localaug.jobs.grade import GradeSummary, VerdictSummary
    from localaug.jobs.preference import ExportSummary


def render_grades(console: Console, summary: GradeSummary | VerdictSummary, output: Path, pairwise: bool) -> None:
    render_rows(console, f"localaug grade{' --pairwise' if pairwise else ''}: {output.name}", summary.rows())


def render_export(console: Console, summary: ExportSummary) -> None:
    render_rows(console, f"localaug export ({summary.fmt})", [
        ("answers from", str(summary.records)), ("kept", kept_line(summary.selection)),
        ("written", f"{summary.output} ({summary.written} examples)"), ("manifest", str(summary.manifest))])


def export_json(summary: ExportSummary, dataset_info: Path | None = None) -> dict[str, Any]:
    files = {"output": str(summary.output), "manifest": str(summary.manifest)}
    if dataset_info is not None:
        files["dataset_info"] = str(dataset_info)
    return {"format": summary.fmt, "records": str(summary.records), "written": summary.written,
            "selection": summary.selection, "files": files}
