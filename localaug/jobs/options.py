"""What one job is: its settings (``JobOptions``, ``run_job``'s keyword arguments, checked before
anything is read or written) and, once its model is resolved, the run they make (``JobPlan``: the
model, its prompt style, the worker config and the run id).

The job skeleton (``jobs.run``) and the chained runs (``jobs.chain``: augmenter then responder,
then judge) both build on these, so neither imports the other's module."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from dataclasses import field as default
from pathlib import Path
from typing import Any

from localaug.augment import settings
from localaug.augment.resolve import DEFAULT_MODELS, default_sampling, resolve_remote, resolve_style, with_overrides
from localaug.augment.settings import EngineSettings, FilterSettings, SamplingSettings
from localaug.augment.tasks import SINGLE_SAMPLE
from localaug.core.errors import UsageError, opt
from localaug.core.files import cached_sha256
from localaug.family.registry import TASKS, ModelSpec
from localaug.family.styles import PromptStyle
from localaug.jobs import dataio
from localaug.jobs.config import JobConfig, run_config, run_id_of
from localaug.jobs.keys import parse_shard
from localaug.runtime.engine import EngineOptions
from localaug.runtime.remote import RemoteModel, is_remote
from localaug.store.gguf_info import file_type_name

__all__ = ["OUTPUT_FORMATS", "JobOptions", "JobPlan"]

OUTPUT_FORMATS = (*dataio.RECORD_FORMATS, *dataio.EXPORT_FORMATS)


@dataclass(frozen=True)
class JobOptions:
    """One job's settings: what it reads and makes, and its engine, sampling and filters settings
    (``augment.settings``; sampling settings left None take the model manifest's values).
    ``JobOptions.of`` builds it from ``run_job``'s keyword arguments."""

    task: str
    model: str | os.PathLike[str] | None = None
    field: str = "instruction"
    response_field: str | None = None
    n: int = 3
    limit: int | None = None
    shard: str | tuple[int, int] | None = None
    quant: str | None = None
    prompt_format: str | None = None
    retry_failed: bool = False
    system: str | None = None  # your own system prompt (teacher mode; respond: the responder's)
    examples: str | os.PathLike[str] | tuple[tuple[str, str], ...] | None = None  # teacher mode: a JSON/JSONL file or pairs
    input_field: str | None = None  # a column of context (Alpaca's input) joined to the text
    samples: int = 1  # respond: answers per instruction
    engine: EngineSettings = default(default_factory=EngineSettings)
    sampling: SamplingSettings = default(default_factory=SamplingSettings)
    filters: FilterSettings = default(default_factory=FilterSettings)
    # the settings of the command that started the run, as its --config keys: kept in the manifest
    # for ``localaug run --replay`` (not part of the run id)
    command: dict[str, Any] | None = default(default=None, compare=False)

    @classmethod
    def of(cls, task: str, **given: Any) -> JobOptions:
        """From flat keywords (``threads=2, rouge_l=0.5``), settings objects (``engine=...``) or both."""
        groups, rest = settings.split(given)
        return cls(task, **rest, **groups)

    def kwargs(self) -> dict[str, Any]:
        """The keywords ``of`` takes back (flat), without the task."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("task", *settings.GROUPS)}
        return {**own, **settings.flat(self.engine, self.sampling, self.filters)}

    def check(self) -> tuple[int, int] | None:
        """Refuse bad settings before anything is read or written; the parsed shard."""
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}: use {', '.join(TASKS)}")
        parallel, max_samples = self.engine.parallel, self.filters.max_samples
        if self.n < 1 or (parallel is not None and parallel < 1) or (self.limit is not None and self.limit < 0) or (
                max_samples is not None and max_samples < self.n):
            raise UsageError(f"{opt('n')} and {opt('parallel')} must be at least 1, {opt('limit')} at least 0, "
                             f"{opt('max_samples')} at least {opt('n')}")
        self.config(PromptStyle("qwen2-chatml"), None, "").validate()
        unsent = [name for name in ("top_k", "min_p", "repeat_penalty") if getattr(self.sampling, name) is not None]
        if unsent and is_remote(self.model):  # a chat completions request does not carry them
            raise UsageError(f"{', '.join(map(opt, unsent))}: not sent to a model on a server (it takes temperature, "
                             "top_p, max_tokens, seed and stop): drop them")
        return parse_shard(self.shard)

    def config(self, style: PromptStyle, spec: ModelSpec | None, model_name: str) -> JobConfig:
        sampling = default_sampling(spec, **self.sampling.overrides())
        f = self.filters
        return JobConfig(self.task, sampling, self.field, self.response_field, 1 if self.task in SINGLE_SAMPLE else self.n,
                         model_name, max_samples=f.max_samples, rouge_l=f.rouge_l, min_chars=f.min_chars,
                         max_chars=f.max_chars, refusals=not f.keep_refusals, echo=f.echo, dedup=f.dedup,
                         minhash_threshold=f.minhash_threshold, input_field=self.input_field, samples=self.samples,
                         system=style.system if self.task == "respond" else None)

    def engine_options(self, threads_default: int | None = None) -> EngineOptions:
        return self.engine.options(threads_default)

    def plan(self) -> JobPlan:
        """Resolve the model (pulling it on first use; a URL: asking its server) and the run it makes."""
        if is_remote(self.model):
            return self._remote_plan(str(self.model))
        m = resolve_style(self.model or DEFAULT_MODELS[self.task], self.quant, self.prompt_format)
        style = with_overrides(m.style, self.task, self.system, self.examples)
        cfg = self.config(style, m.spec, m.spec.name if m.spec else m.path.name)
        cfg.validate()
        sha = cached_sha256(m.path)
        config = run_config(cfg, sha, style)
        return JobPlan(m.path, m.spec, style, m.meta, sha, cfg, config, run_id_of(config))

    def _remote_plan(self, model: str) -> JobPlan:
        """A model on a server: the run id hashes its base URL and name instead of a file's sha256."""
        r = resolve_remote(model, self.prompt_format)
        style = with_overrides(r.style, self.task, self.system, self.examples)
        cfg = self.config(style, r.spec, r.model.name)
        cfg.validate()
        config = {**run_config(cfg, None, style), "remote": r.model.identity()}
        return JobPlan(None, r.spec, style, {}, None, cfg, config, run_id_of(config), remote=r.model)


@dataclass(frozen=True)
class JobPlan:
    """A resolved run: the model file (or on a server) and its style, the worker config and the run id."""

    path: Path | None  # None: a remote model
    spec: ModelSpec | None
    style: PromptStyle
    meta: dict[str, Any]
    sha256: str | None
    job_config: JobConfig  # what the worker runs each row with
    run_config: dict[str, Any]  # what the run id hashes (in the manifest, to name what changed)
    run_id: str
    remote: RemoteModel | None = None

    def model_fields(self) -> dict[str, Any]:
        if self.remote is not None:  # the endpoint and the model's name; the key is never written
            return {"remote": self.remote.base_url, "name": self.remote.name,
                    "family": self.spec.name if self.spec else None}
        return {"path": str(self.path), "sha256": self.sha256, "quant": file_type_name(self.meta),
                "family": self.spec.name if self.spec else None}
