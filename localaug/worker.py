"""The per-batch function of a job: rows in, one record per row out, the model loaded once.

``augment`` turns input rows into records through a *backend* with
``run(requests) -> Iterator[Result]`` (results in any order): ``localaug.batch.BatchEngine``
(continuous batching) when ``parallel > 1``, else ``SequentialBackend`` on one ``Engine``.
For expand and pairs it draws samples until ``n`` pass the filters (``localaug.filters``: length,
refusal, echo of the input, duplicates within the row and, optionally, across the job) or a cap is
hit, and counts every rejection by reason. ``Worker`` wraps it for other schedulers (e.g. Ray
``map_batches``): stateless to call, one model per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from localaug import dataio, filters, tasks
from localaug.batch import Request, Result
from localaug.dataio import InputRow
from localaug.engine import Engine, EngineOptions, SamplingParams
from localaug.errors import LocalaugError, UsageError
from localaug.filters import DedupFilter, QualityRules
from localaug.prompts import Pair
from localaug.tasks import PromptStyle

TASKS = ("refine", "expand", "pairs")
DEDUP_MODES = ("row", "exact", "minhash")
# Result keys a record sets; input columns with these names are kept as source_<name>.
RESULT_KEYS = ("output", "outputs", "pairs", "task", "model", "seed", "status", "finish_reason", "error",
               "source_id", "row", "samples", "rejected", "shortfall", "prompt_tokens", "completion_tokens", "raw")


class Backend(Protocol):
    def run(self, requests: Iterable[Request]) -> Iterator[Result]: ...


class SequentialBackend:
    """One request at a time on one Engine; sample k of a request uses seed + k."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        for req in requests:
            for k in range(req.n):
                try:
                    gen = self.engine.generate(req.prompt, replace(req.sampling, seed=tasks.sample_seed(req.sampling.seed, k)), req.stop)
                except LocalaugError as e:  # a bad row must not stop the job
                    for j in range(k, req.n):
                        yield Result(req.id, j, None, str(e))
                    break
                yield Result(req.id, k, gen)


# --- one batch: rows in, records out --------------------------------------------------------------


@dataclass(frozen=True)
class JobConfig:
    """What a worker needs besides the model: the task, the input field(s) and the sampling."""

    task: str
    sampling: SamplingParams
    field: str = "instruction"
    response_field: str | None = None  # pairs: default "response", else "output"
    n: int = 1
    model_name: str = ""
    max_samples: int | None = None
    threshold: float = filters.DEFAULT_ROUGE_L  # near duplicates within a row (ROUGE-L)
    min_chars: int = filters.DEFAULT_MIN_CHARS
    max_chars: int | None = None
    refusals: bool = True  # drop refusals
    echo: float = filters.DEFAULT_ECHO  # refine: an output this close to its input (ROUGE-L) is an echo
    dedup: str = "exact"  # across rows: "row" (none), "exact", or "minhash" near duplicates
    minhash_threshold: float = filters.DEFAULT_MINHASH

    @property
    def rules(self) -> QualityRules:
        return QualityRules(self.min_chars, self.max_chars, self.refusals)

    def validate(self) -> None:
        if self.dedup not in DEDUP_MODES:
            raise UsageError(f"--dedup {self.dedup!r}: use {', '.join(DEDUP_MODES)}")
        for name in ("threshold", "echo", "minhash_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"{name.replace('_', '-')} must be in (0, 1]")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < max(self.min_chars, 1)):
            raise UsageError("--min-chars must be at least 0 and --max-chars at least --min-chars")

    def new_seen(self) -> tasks.Seen | None:
        """A job-wide memory of accepted texts for the dedup mode (None: within rows only)."""
        if self.task == "refine" or self.dedup == "row":
            return None
        return filters.ExactIndex() if self.dedup == "exact" else filters.MinHashIndex(self.minhash_threshold)


@dataclass
class _RowRun:
    row: InputRow
    payload: str | list[Pair]
    prompt: str
    dedup: DedupFilter
    items: list[Any] = field(default_factory=list)
    samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waiting: dict[int, Result] = field(default_factory=dict)
    asked: int = 0


def row_payload(cfg: JobConfig, row: InputRow) -> str | list[Pair]:
    """The text (or seed pair) of a row; raises ValueError with the reason it cannot be used."""
    if row.error:
        raise ValueError(row.error)
    try:
        text = dataio.get_field(row.record, cfg.field)
    except KeyError:
        raise ValueError(f"no field {cfg.field!r} in this row") from None
    if not isinstance(text, str):
        raise ValueError(f"field {cfg.field!r} is not text")
    if not text.strip():
        raise ValueError("empty text")
    if cfg.task != "pairs":
        return text
    names = [cfg.response_field] if cfg.response_field else ["response", "output"]
    for name in names:
        with contextlib.suppress(KeyError):
            response = dataio.get_field(row.record, name)
            if isinstance(response, str) and response.strip():
                return [Pair(text, response)]
    raise ValueError(f"pairs needs a response: no non-empty {' or '.join(repr(n) for n in names)} field")


def row_identity(cfg: JobConfig, row: InputRow) -> str:
    try:
        payload = row_payload(cfg, row)
    except ValueError:
        return "bad:" + (row.raw if row.raw is not None else json.dumps(row.record, sort_keys=True, ensure_ascii=False, default=str))
    return payload if isinstance(payload, str) else f"{payload[0].instruction}\0{payload[0].response}"


def run_config(cfg: JobConfig, model_sha256: str, style: PromptStyle) -> dict[str, Any]:
    """Everything that makes a row's result what it is (the run id is its hash)."""
    return {"task": cfg.task, "model_sha256": model_sha256, "prompt_format": style.prompt_format,
            "sampling": asdict(cfg.sampling), "seed": cfg.sampling.seed, "n": cfg.n if cfg.task != "refine" else 1,
            "field": cfg.field, "response_field": cfg.response_field, "max_samples": cfg.max_samples,
            "threshold": cfg.threshold, "min_chars": cfg.min_chars, "max_chars": cfg.max_chars, "refusals": cfg.refusals,
            "echo": cfg.echo, "dedup": cfg.dedup, "minhash_threshold": cfg.minhash_threshold}


def run_id_of(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def make_key(run_id: str, identity: str, occurrence: int) -> str:
    return hashlib.sha256(f"{run_id}\0{identity}\0{occurrence}".encode()).hexdigest()


def augment(backend: Backend, style: PromptStyle, cfg: JobConfig, rows: Iterable[InputRow],
            seen: tasks.Seen | None = None) -> Iterator[dict[str, Any]]:
    """Each row's record, as soon as it is finished (any order). Rows must carry ``key``.

    ``seen`` is the job-wide memory of accepted texts (``cfg.new_seen()``), shared by calls."""
    runs: dict[str, _RowRun] = {}
    for row in rows:
        try:
            payload = row_payload(cfg, row)
            prompt = tasks.build_prompt(style, cfg.task, payload)
        except (ValueError, LocalaugError) as e:
            yield _record(cfg, row, "failed", str(e))
            continue
        dedup = tasks.new_dedup(style, cfg.task, payload, cfg.threshold)
        runs[row.key] = _RowRun(row, payload, prompt, dedup)
    cap = 1 if cfg.task == "refine" else (cfg.max_samples or max(3 * cfg.n, cfg.n + 4))
    todo = list(runs.values())
    while todo:
        requests = []
        for r in todo:
            need = 1 if cfg.task == "refine" else min(cfg.n - len(r.items), cap - r.samples)
            r.asked, r.waiting = need, {}
            requests.append(Request(r.row.key, r.prompt, replace(cfg.sampling, seed=tasks.sample_seed(cfg.sampling.seed, r.samples)), style.stop, need))
        todo = []
        for result in backend.run(requests):
            r = runs[result.id]
            r.waiting[result.index] = result
            if len(r.waiting) < r.asked:
                continue
            for k in sorted(r.waiting):  # accept in sample order, as the sequential loop does
                _take(style, cfg, r, r.waiting[k], seen)
            if cfg.task != "refine" and len(r.items) < cfg.n and r.samples < cap and not r.errors:
                todo.append(r)
            else:
                del runs[result.id]
                yield _finish(style, cfg, r)


def _take(style: PromptStyle, cfg: JobConfig, r: _RowRun, result: Result, seen: tasks.Seen | None) -> None:
    r.samples += 1
    if result.error is not None or result.generation is None:
        r.errors.append(result.error or "no generation")
        return
    gen = result.generation
    r.finish.append(gen.finish_reason)
    r.prompt_tokens = gen.prompt_tokens
    r.completion_tokens += gen.completion_tokens
    if cfg.task == "refine":
        r.items.append(gen)
        return
    accepted, reasons = tasks.accept(style, cfg.task, gen, r.dedup, cfg.rules, seen, room=cfg.n - len(r.items))
    for reason in reasons:
        r.rejected[reason] = r.rejected.get(reason, 0) + 1
    r.items.extend(accepted)


def _finish(style: PromptStyle, cfg: JobConfig, r: _RowRun) -> dict[str, Any]:
    finish = "length" if "length" in r.finish else ("stop" if r.finish else None)
    extra: dict[str, Any] = {"finish_reason": finish, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
    if cfg.task == "refine":
        if r.errors:
            return _record(cfg, r.row, "failed", r.errors[0], extra)
        gen = r.items[0]
        style_text = str(tasks.parse_reply(style, "refine", gen.text))
        extra["output"] = style_text
        if gen.finish_reason == "length":
            return _record(cfg, r.row, "failed", f"max_tokens hit ({gen.completion_tokens} tokens): raise --max-tokens", extra)
        reason = tasks.refine_reason(style_text, str(r.payload), cfg.rules, cfg.echo)
        if reason is not None:
            extra["rejected"] = {reason: 1}
            return _record(cfg, r.row, "filtered", f"{reason}: {filters.REASONS[reason]}", extra)
        return _record(cfg, r.row, "ok", None, extra)
    extra.update(samples=r.samples, rejected=r.rejected, shortfall=max(0, cfg.n - len(r.items)))
    if cfg.task == "expand":
        extra["outputs"] = list(r.items)
    else:
        extra["pairs"] = [{"instruction": p.instruction, "response": p.response} for p in r.items]
    if r.items:
        return _record(cfg, r.row, "ok", None, extra)
    if r.errors:
        return _record(cfg, r.row, "failed", r.errors[0], extra)
    reasons = set(r.rejected)
    if reasons <= {"truncated", "unparseable"}:
        why = "max_tokens hit on every sample: raise --max-tokens" if reasons == {"truncated"} else "unparseable reply"
        return _record(cfg, r.row, "failed", why, extra)
    return _record(cfg, r.row, "filtered", "every sample rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items())), extra)


def _record(cfg: JobConfig, row: InputRow, status: str, error: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rec = {(f"source_{k}" if k in RESULT_KEYS else k): v for k, v in row.record.items()}
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
    ``run_rows`` takes rows whose keys were numbered over the whole input (``jobs.select_rows``).
    Job-wide duplicates (``cfg.dedup``) are those among the rows this worker has seen.
    ``style`` (a style resolved elsewhere, e.g. on a Ray driver) overrides ``prompt_format``."""

    def __init__(self, model: str | os.PathLike[str], cfg: JobConfig, *, options: EngineOptions | None = None,
                 prompt_format: str | None = None, quant: str | None = None, parallel: int = 8,
                 style: PromptStyle | None = None) -> None:
        from localaug import api

        m = api.resolve_style(model, quant, style.prompt_format if style else prompt_format)
        path, spec, self.style = m.path, m.spec, style or m.style
        self.cfg = replace(cfg, model_name=cfg.model_name or (spec.name if spec else path.name))
        self.path = path
        self.cfg.validate()
        from localaug.ledger import model_sha256

        self.run_id = run_id_of(run_config(self.cfg, model_sha256(path), self.style))
        self.seen = self.cfg.new_seen()
        self.backend, self._closers = make_backend(path, options or EngineOptions(), parallel)

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
        for close in self._closers:
            close()


def make_backend(path: Path, options: EngineOptions, parallel: int) -> tuple[Backend, list[Any]]:
    """BatchEngine when parallel > 1 and localaug.batch imports, else SequentialBackend."""
    if parallel > 1:
        try:
            from localaug.batch import BatchEngine
        except Exception:  # pragma: no cover - the batching engine is optional
            BatchEngine = None  # type: ignore[assignment,misc]  # noqa: N806
        if BatchEngine is not None:
            engine = Engine(path, options, context=False)
            batch = BatchEngine(engine, parallel=parallel, n_ctx=options.n_ctx)
            return batch, [batch.close, engine.close]
    engine = Engine(path, options)
    return SequentialBackend(engine), [engine.close]
