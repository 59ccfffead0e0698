"""The per-batch function of a job: rows in, one record per row out, the model loaded once.

``augment`` turns input rows into records through a *backend* (``localaug.runtime.backend``: the
continuous-batching engine when ``parallel > 1``, else one sequence at a time, or a model on a
server). Each row is driven
by ``augment.tasks.Draw``, the sampling loop the terminal and the server drive too: samples until
``n`` pass the filters (length, refusal, echo of the input, duplicates within the row and,
optionally, across the job) or a cap is hit, every rejection counted by reason. ``Worker`` wraps it for other schedulers (e.g. Ray
``map_batches``): stateless to call, one model per worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from localaug.augment import filters, tasks
from localaug.augment.resolve import resolve_style
from localaug.core.errors import LocalaugError
from localaug.core.files import cached_sha256
from localaug.family.styles import PromptStyle
from localaug.jobs.config import JobConfig, run_config, run_id_of
from localaug.jobs.dataio import InputRow, get_field
from localaug.jobs.keys import make_key, row_context, row_identity, row_payload
from localaug.runtime.backend import DEFAULT_PARALLEL, Backend, Request, Result
from localaug.runtime.calibrate import open_calibrated
from localaug.runtime.engine import EngineOptions
from localaug.runtime.sampling import sample_seed

# Result keys a record sets; input columns with these names are kept as source_<name>.
RESULT_KEYS = ("output", "outputs", "pairs", "task", "model", "seed", "status", "finish_reason", "error",
               "source_id", "row", "samples", "rejected", "shortfall", "prompt_tokens", "completion_tokens", "raw")


def result_keys(task: str, field_name: str = "instruction", input_field: str | None = None) -> tuple[str, ...]:
    """The keys a record of ``task`` sets: respond also sets ``response``, ``responses``, ``system``,
    ``instruction`` (the text it answered) and ``input`` (the context it was given with it, with an
    input field), so that these always mean what the responder saw; an input column of one of those
    names is kept as ``source_<name>``, unless it is the answered field (or the context) itself."""
    if task != "respond":
        return RESULT_KEYS
    return (RESULT_KEYS + ("response", "responses", "system") + (("instruction",) if field_name != "instruction" else ())
            + (("input",) if input_field != "input" else ()))


@dataclass
class _RowRun:
    row: InputRow
    draw: tasks.Draw
    waiting: dict[int, Result] = field(default_factory=dict)  # this round's samples, by index
    asked: int = 0


def augment(backend: Backend, style: PromptStyle, cfg: JobConfig, rows: Iterable[InputRow],
            seen: tasks.Seen | None = None) -> Iterator[dict[str, Any]]:
    """Each row's record, as soon as it is finished (any order). Rows must carry ``key``.

    Every row is a ``tasks.Draw``; each round asks the backend for the samples every unfinished
    row wants (decoded together), then judges each row's samples in sample order. ``seen`` is the
    job-wide memory of accepted texts (``cfg.new_seen()``), shared by calls."""
    runs: dict[str, _RowRun] = {}
    for row in rows:
        try:
            runs[row.key] = _RowRun(row, cfg.draw(style, row_payload(cfg, row), seen))
        except (ValueError, LocalaugError) as e:
            yield _record(cfg, row, "failed", str(e))
        except Exception as e:  # noqa: BLE001 - whatever a row does to its prompt, it fails alone
            yield _record(cfg, row, "failed", f"{type(e).__name__}: {e}")
    todo = list(runs.values())
    while todo:
        requests = []
        for r in todo:
            r.asked, r.waiting = r.draw.want, {}
            requests.append(Request(r.row.key, r.draw.prompt, r.draw.sampling_for_next(), style.stop, r.asked))
        todo = []
        for result in backend.run(requests):
            r = runs[result.id]
            r.waiting[result.index] = result
            if len(r.waiting) < r.asked:
                continue
            r.draw.take_all(r.waiting[k].outcome for k in sorted(r.waiting))
            if r.draw.want:
                todo.append(r)
            else:
                del runs[result.id]
                yield _finish(cfg, r)


def _finish(cfg: JobConfig, r: _RowRun) -> dict[str, Any]:
    """A finished row's record: ok, filtered (every sample rejected) or failed."""
    draw, res = r.draw, r.draw.result
    finishes = [g.finish_reason for g in res.generations]
    extra: dict[str, Any] = {"finish_reason": "length" if "length" in finishes else ("stop" if finishes else None),
                             "prompt_tokens": draw.last.prompt_tokens if draw.last else 0,
                             "completion_tokens": draw.completion_tokens}
    if cfg.task == "respond":
        extra.update(_answered(cfg, r))
        if cfg.samples > 1:
            return _answers_record(cfg, r, extra)
    if draw.errors:
        if cfg.task not in tasks.SINGLE_SAMPLE:
            extra.update(_items(cfg, draw))
        return _record(cfg, r.row, "ok" if res.items else "failed", None if res.items else draw.errors[0], extra)
    if cfg.task in tasks.SINGLE_SAMPLE:
        if cfg.task != "respond":
            extra["output"] = draw.refined
        reason = next(iter(res.rejected), None)
        if reason == "truncated":
            tokens = draw.last.completion_tokens if draw.last else 0
            return _record(cfg, r.row, "failed", f"max_tokens hit ({tokens} tokens): raise max_tokens", extra)
        if reason is not None:
            extra["rejected"] = {reason: 1}
            return _record(cfg, r.row, "filtered", f"{reason}: {filters.REASONS[reason]}", extra)
        return _record(cfg, r.row, "ok", None, extra)
    extra.update(_items(cfg, draw))
    if res.items:
        return _record(cfg, r.row, "ok", None, extra)
    reasons = set(res.rejected)
    if reasons <= {"truncated", "unparseable"}:
        why = "max_tokens hit on every sample: raise max_tokens" if reasons == {"truncated"} else "unparseable reply"
        return _record(cfg, r.row, "failed", why, extra)
    return _record(cfg, r.row, "filtered", "every sample rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(res.rejected.items())), extra)


def _answered(cfg: JobConfig, r: _RowRun) -> dict[str, Any]:
    """What a respond record says it answered: the instruction (and, with an input field, its
    context apart), the system prompt it was given, and the (first kept) response."""
    fields: dict[str, Any] = {"instruction": r.draw.payload, "response": r.draw.refined}
    if cfg.input_field is not None:  # the prompt joined them (prompts.user_text); the record keeps them apart
        fields.update(instruction=get_field(r.row.record, cfg.field), input=row_context(cfg, r.row))
    if cfg.system is not None:
        fields["system"] = cfg.system
    return fields


def _answers_record(cfg: JobConfig, r: _RowRun, extra: dict[str, Any]) -> dict[str, Any]:
    """respond with several samples: every answer in ``responses`` (its text, sample index, seed,
    model, status and why it was not kept), ``response`` the first kept one; ok when one was kept."""
    draw = r.draw
    answers = []
    for k, ((text, reason), gen) in enumerate(zip(draw.answers, draw.result.generations)):
        status = "ok" if reason is None else "failed" if reason == "truncated" else "filtered"
        answers.append({"text": text, "sample": k, "seed": sample_seed(cfg.sampling.seed, k), "model": cfg.model_name,
                        "status": status, "reason": reason, "finish_reason": gen.finish_reason,
                        "completion_tokens": gen.completion_tokens})
    kept = [a["text"] for a in answers if a["status"] == "ok"]
    extra.update(responses=answers, response=kept[0] if kept else None, samples=len(answers))
    if draw.result.rejected:
        extra["rejected"] = dict(draw.result.rejected)
    if kept:
        return _record(cfg, r.row, "ok", None, extra)
    if draw.errors:
        return _record(cfg, r.row, "failed", draw.errors[0], extra)
    reasons = draw.result.rejected
    if set(reasons) == {"truncated"}:
        return _record(cfg, r.row, "failed", "max_tokens hit on every answer: raise max_tokens", extra)
    return _record(cfg, r.row, "filtered", "every answer rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())), extra)


def _items(cfg: JobConfig, draw: tasks.Draw) -> dict[str, Any]:
    res = draw.result
    items: dict[str, Any] = {"samples": res.samples, "rejected": res.rejected, "shortfall": res.shortfall}
    if cfg.task == "expand":
        items["outputs"] = list(res.items)
    else:
        items["pairs"] = [{"instruction": p.instruction, "response": p.response} for p in res.items]
    return items


def _record(cfg: JobConfig, row: InputRow, status: str, error: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    reserved = result_keys(cfg.task, cfg.field, cfg.input_field)
    rec = {(f"source_{k}" if k in reserved else k): v for k, v in row.record.items()}
    if row.raw is not None:
        rec["raw"] = row.raw
    rec.update(extra or {})
    rec.setdefault("finish_reason", None)
    rec.update(task=cfg.task, model=cfg.model_name, seed=cfg.sampling.seed, status=status, error=error,
               source_id=row.key, row=row.index)
    return rec


class Worker:
    """The per-batch function for any scheduler: the model is loaded once, then
    ``worker(records) -> records`` (one output record per input dict, in input order).

    Row keys are those ``run_job`` gives the same rows with the same arguments, when a batch
    holds all occurrences of a repeated text (occurrences are counted within the batch);
    ``run_rows`` takes rows whose keys were numbered over the whole input (``keys.select_rows``).
    Job-wide duplicates (``cfg.dedup``) are those among the rows this worker has seen.
    ``style`` (a style resolved elsewhere, e.g. on a Ray driver) overrides ``prompt_format``."""

    def __init__(self, model: str | os.PathLike[str], cfg: JobConfig, *, options: EngineOptions | None = None,
                 prompt_format: str | None = None, quant: str | None = None, parallel: int | None = DEFAULT_PARALLEL,
                 style: PromptStyle | None = None) -> None:
        m = resolve_style(model, quant, style.prompt_format if style else prompt_format)
        path, spec, self.style = m.path, m.spec, style or m.style
        self.cfg = replace(cfg, model_name=cfg.model_name or (spec.name if spec else path.name))
        self.path = path
        self.cfg.validate()
        self.run_id = run_id_of(run_config(self.cfg, cached_sha256(path), self.style))
        self.seen = self.cfg.new_seen()
        self.backend, chosen = open_calibrated(path, options or EngineOptions(), parallel)  # None: calibrated
        self.parallel = chosen.value

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: dict[str, int] = {}
        rows = []
        for i, rec in enumerate(records):
            row = InputRow(i, rec)
            ident = row_identity(self.cfg, row)
            seen[ident] = seen.get(ident, 0) + 1
            row.key = make_key(self.run_id, ident, seen[ident])
            rows.append(row)
        return self.run_rows(rows)

    def run_rows(self, rows: list[InputRow]) -> list[dict[str, Any]]:
        """The records of rows that carry their keys already (distinct), in input order."""
        out = {r["source_id"]: r for r in augment(self.backend, self.style, self.cfg, rows, self.seen)}
        return [out[row.key] for row in rows]

    def close(self) -> None:
        self.backend.close()
