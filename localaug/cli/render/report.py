"""What ``localaug report`` and ``localaug judge`` show: diversity, counts and where the page went;
the pairwise verdicts (the judge's table rows are ``JudgeSummary.rows``, the same rows the report
page gets); and the report as a JSON value."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from localaug.cli.render import render_rows

if TYPE_CHECKING:
    from localaug.report.build import Report
    from localaug.report.judge import JudgeSummary


def _metric(key: str, v: float | None) -> str:
    return "—" if v is None or v != v else (f"{v:.0f}" if key == "texts" else f"{v:.3f}")


def render_report(console: Console, report: Report) -> None:
    d, c = report.collected, report.collected.counts
    table = Table(title=f"localaug report: {d.path.name}", title_justify="left")
    table.add_column("")
    table.add_column("sources", justify="right")
    table.add_column("new", justify="right")
    for key in report.diversity["new"]:
        table.add_row(key, *(_metric(key, report.diversity[side].get(key)) for side in ("sources", "new")))
    console.print(table)
    reasons = " · ".join(f"{k} {v}" for k, v in sorted((c.get("rejected_by_reason") or {}).items())) or "none"
    console.print(f"rows {c['rows']} (ok {c['ok']}, filtered {c['filtered']}, failed {c['failed']}); rejected: {escape(reasons)}",
                  highlight=False, soft_wrap=True)
    if report.grades:
        g = report.grades
        shown = " ".join(f"{k}:{v}" for k, v in g["distribution"].items())
        mean = "—" if g["mean"] is None else f"{g['mean']:.2f}"
        console.print(f"grades: {g['graded']} answers, mean {mean}, by rating {shown} ({g['no_rating']} without a rating)",
                      highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"[dim]{escape(note)}[/dim]", highlight=False)
    console.print(f"map: {report.projection}; page: {report.html}; figures: {report.figures['map'].parent}",
                  highlight=False, soft_wrap=True)


def report_json(report: Report) -> dict[str, Any]:
    """The report's numbers and files (an undefined metric is null once printed as strict JSON)."""
    d = report.collected
    return {"output": str(d.path), "task": d.task, "rows_shown": len(d.rows), "sampled": d.sampled,
            "counts": d.counts, "diversity": report.diversity, "projection": report.projection,
            "embed_model": report.embed_model, "grades": report.grades, "judge": report.judge, "notes": report.notes,
            "files": {"html": str(report.html), "summary": str(report.html.with_suffix(".json")),
                      "figures": {k: str(v) for k, v in report.figures.items()}}}


def render_judge(console: Console, s: JudgeSummary) -> None:
    render_rows(console, f"localaug judge: {Path(s.b).name} vs {Path(s.a).name}", s.rows())
    console.print("[dim]a small judge is weak: use a larger judge model for decisions[/dim]", highlight=False)
