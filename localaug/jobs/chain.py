"""From seed instructions to training examples in one command: an augmenter, then a responder.

``run_job(task, ..., respond_with=M)`` runs refine or expand over every row into
``OUTPUT.<task>.jsonl`` (a normal, resumable job), frees that model, then runs ``respond`` with
``M`` over the new instructions in it (one row per new instruction, ``dataio.instruction_rows``)
into ``output`` in the asked format. Both phases are ordinary jobs with their own ledger, manifest
and lock, so a run killed at any moment is finished by the same command: the first phase skips
every row it has, the second every instruction it has answered, and each new instruction ends as
exactly one example.

``run_job(..., judge=J)`` (``run_judged``) goes on from the answers: the judge grades every answer
(or judges an instruction's answers pairwise) into a resumable ledger beside the output
(``jobs.grade``), and the training file is written from the judged answers at the end
(``jobs.preference``: the best-graded answer, a minimum score, or preference pairs), the rule in
the manifest. Every phase resumes on its own, so the same command finishes a run killed anywhere.

Each phase is run through ``run`` (``jobs.run.run_job``, which hands itself over): this module
never imports the job skeleton, which imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localaug.augment import settings
from localaug.core.errors import UsageError, opt
from localaug.core.files import read_json, refuse_overwriting_inputs, write_json_atomic
from localaug.jobs import dataio
from localaug.jobs.exports import PREFERENCE_FORMATS
from localaug.jobs.grade import JudgeOptions, resolve_judge, run_grade, run_verdicts
from localaug.jobs.ledger import iter_ledger
from localaug.jobs.options import OUTPUT_FORMATS, JobOptions
from localaug.jobs.paths import GRADES, VERDICTS, judged_path, stage_path, summary_path
from localaug.jobs.preference import Judged, Selection, selection_fields, write_export
from localaug.jobs.stats import JobProgress, JobSummary

JobRunner = Callable[..., JobSummary]  # run_job: (task, input, output, *, fmt, progress, **options) -> summary

# settings the responder takes from the job as given (the rest are the augmenter's alone)
SHARED = ("seed", "device", "gpu_layers", "threads", "n_ctx", "retry_failed", "max_chars", "keep_refusals")


def responder_options(task: str, options: dict[str, Any], respond: dict[str, Any]) -> dict[str, Any]:
    """The responder's JobOptions fields (besides its model): the settings it shares with the
    augmenter's job (``SHARED``, and ``parallel`` unless ``respond`` sets its own), then ``respond``."""
    if task not in dataio.INSTRUCTION_TASKS:
        raise UsageError(f"{opt('respond_with')} goes with refine and expand ({task} makes its own responses)")
    unknown = set(respond) - {"system", "max_tokens", "temperature", "top_p", "top_k", "parallel", "prompt_format", "samples"}
    if unknown:
        raise UsageError(f"unknown responder setting(s): {', '.join(sorted(unknown))}")
    options = settings.canonical(options)  # flat, whatever form the settings were given in
    shared = {k: options[k] for k in (*SHARED, "parallel", "command") if k in options}
    return {**shared, **respond}


def run_chain(task: str, input: str | os.PathLike[str], output: str | os.PathLike[str],
              respond_with: str | os.PathLike[str], *, fmt: str, progress: JobProgress | None,
              respond: dict[str, Any], run: JobRunner, export: bool = True, **options: Any) -> JobSummary:
    answer = responder_options(task, options, respond)
    if fmt == "parquet":
        raise UsageError(f"{opt('respond_with')} writes jsonl or a training file: use --format jsonl and convert")
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"{opt('fmt')} {fmt!r}: use {', '.join(OUTPUT_FORMATS)}")
    out = Path(output)
    stage = stage_path(out, task)
    responder = JobOptions.of("respond", model=respond_with, **answer)
    responder.check()
    responder.plan()  # the responder resolves (pulled on first use) before the augmenter's run, not after it
    first = run(task, input, stage, fmt="jsonl", progress=progress, **options)
    first.task = task
    if not first.complete:
        return first
    second = run("respond", stage, out, fmt=fmt, progress=progress, model=respond_with, export=export, **answer)
    second.task = "respond"
    second.stages = [first]
    return second


def run_judged(task: str, input: str | os.PathLike[str], output: str | os.PathLike[str],
               judge: str | os.PathLike[str] | None, *, fmt: str, progress: JobProgress | None,
               respond_with: str | os.PathLike[str] | None, respond: dict[str, Any], judging: dict[str, Any],
               selection: dict[str, Any], run: JobRunner, **options: Any) -> JobSummary:
    """Answers (respond, or an augmenter then respond_with), then a judge, then the training file
    from the judged answers (see the module doc)."""
    sel = Selection(**selection)
    sel.check()
    if judge is None:
        raise UsageError(f"{opt('min_score')}, {opt('margin')} and {opt('rule')} choose among judged answers: give {opt('judge')}")
    opts = JudgeOptions(judge, **judging)
    opts.check()
    samples = (respond if respond_with is not None else options).get("samples", 1)
    _refuse_unjudgeable(task, fmt, respond_with, samples, sel)
    out = Path(output)
    ledgers = [judged_path(out, GRADES), judged_path(out, VERDICTS)]
    refuse_overwriting_inputs([*ledgers, *map(summary_path, ledgers)], [Path(input)])
    resolve_judge(judge)  # resolved (pulled on first use) before the answers are made, not after
    summary = run(task, input, output, fmt=fmt, progress=progress, respond_with=respond_with, respond=respond,
                      export=False, **options)
    if not summary.complete:
        return summary
    want_grades, want_verdicts = sel.needs(fmt) if fmt in dataio.EXPORT_FORMATS else (True, False)
    summary.judging = [judge_with(out, opts) for judge_with, wanted in ((run_grade, want_grades), (run_verdicts, want_verdicts))
                       if wanted]
    if fmt in dataio.EXPORT_FORMATS:
        judged = Judged.load(*(ledger if wanted else None for ledger, wanted in zip(ledgers, (want_grades, want_verdicts))))
        summary.exported, tally = write_export(iter_ledger(summary.ledger), fmt, out, judged, sel)
        summary.selection = selection_fields(fmt, sel, tally, ledgers[0] if want_grades else None,
                                             ledgers[1] if want_verdicts else None)
        manifest = read_json(summary.manifest) or {}
        manifest.update(exported=summary.exported, selection={**summary.selection, "judge": summary.judging[0].judge})
        write_json_atomic(summary.manifest, manifest)
    return summary


def _refuse_unjudgeable(task: str, fmt: str, respond_with: Any, samples: int, sel: Any) -> None:
    """A judged run that could not make what it is asked for is refused before anything runs."""
    if task != "respond" and respond_with is None:
        raise UsageError(f"{opt('judge')} grades answers: give {opt('respond_with')} with {task} (or run respond)")
    if fmt in ("prompts", "parquet"):
        raise UsageError(f"{opt('judge')} with {opt('fmt')} {fmt}: judged answers go to jsonl records or a training file "
                         f"({', '.join(dataio.RESPONSE_FORMATS)})")
    if fmt in PREFERENCE_FORMATS and samples < 2:
        what = opt("respond_samples") if respond_with is not None else opt("samples")
        raise UsageError(f"{fmt} pairs two answers to one instruction: give {what} 2 or more")
    if fmt in dataio.RECORD_FORMATS and (sel.min_score is not None):
        raise UsageError(f"{opt('min_score')} chooses what a training file keeps: give {opt('fmt')} "
                         f"{', '.join(dataio.RESPONSE_FORMATS)}")
