"""From seed instructions to training examples in one command: an augmenter, then a responder.

``run_job(task, ..., respond_with=M)`` runs refine or expand over every row into
``OUTPUT.<task>.jsonl`` (a normal, resumable job), frees that model, then runs ``respond`` with
``M`` over the new instructions in it (one row per new instruction, ``dataio.instruction_rows``)
into ``output`` in the asked format. Both phases are ordinary jobs with their own ledger, manifest
and lock, so a run killed at any moment is finished by the same command: the first phase skips
every row it has, the second every instruction it has answered, and each new instruction ends as
exactly one example.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError, opt
from localaug.jobs import dataio
from localaug.jobs.stats import JobProgress, JobSummary

# settings the responder takes from the job as given (the rest are the augmenter's alone)
SHARED = ("seed", "device", "gpu_layers", "threads", "n_ctx", "retry_failed", "max_chars", "refusals")


def stage_path(output: Path, task: str) -> Path:
    """Where the augmenter's records go: beside the output, named after the task."""
    return output.with_name(f"{output.name}.{task}.jsonl")


def responder_options(task: str, options: dict[str, Any], respond: dict[str, Any]) -> dict[str, Any]:
    """The responder's JobOptions fields (besides its model): the settings it shares with the
    augmenter's job (``SHARED``, and ``parallel`` unless ``respond`` sets its own), then ``respond``."""
    if task not in dataio.INSTRUCTION_TASKS:
        raise UsageError(f"{opt('respond_with')} goes with refine and expand ({task} makes its own responses)")
    unknown = set(respond) - {"system", "max_tokens", "temperature", "top_p", "top_k", "parallel", "prompt_format"}
    if unknown:
        raise UsageError(f"unknown responder setting(s): {', '.join(sorted(unknown))}")
    shared = {k: options[k] for k in (*SHARED, "parallel") if k in options}
    return {**shared, **respond}


def run_chain(task: str, input: str | os.PathLike[str], output: str | os.PathLike[str],
              respond_with: str | os.PathLike[str], *, fmt: str, progress: JobProgress | None,
              respond: dict[str, Any], **options: Any) -> JobSummary:
    from localaug.jobs.run import OUTPUT_FORMATS, JobOptions, run_job

    answer = responder_options(task, options, respond)
    if fmt == "parquet":
        raise UsageError(f"{opt('respond_with')} writes jsonl or a training file: use --format jsonl and convert")
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"{opt('fmt')} {fmt!r}: use {', '.join(OUTPUT_FORMATS)}")
    out = Path(output)
    stage = stage_path(out, task)
    responder = JobOptions("respond", model=respond_with, **answer)
    responder.check()
    responder.plan()  # the responder resolves (pulled on first use) before the augmenter's run, not after it
    first = run_job(task, input, stage, fmt="jsonl", progress=progress, **options)
    first.task = task
    if not first.complete:
        return first
    second = run_job("respond", stage, out, fmt=fmt, progress=progress, model=respond_with, **answer)
    second.task = "respond"
    second.stages = [first]
    return second
