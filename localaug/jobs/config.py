"""What a job's workers need besides the model (``JobConfig``), and the run id: the hash of every
setting that makes a row's result what it is."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from localaug.augment import filters, tasks
from localaug.augment.filters import QualityRules
from localaug.core.errors import UsageError, opt
from localaug.family.prompts import Pair
from localaug.family.registry import TASKS
from localaug.family.styles import PromptStyle
from localaug.jobs import DEDUP_MODES
from localaug.runtime.sampling import SamplingParams

__all__ = ["DEDUP_MODES", "TASKS", "JobConfig", "run_config", "run_id_of"]

MAX_SAMPLES = 16  # respond: answers per instruction at most (pairwise judging grows with its square)


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
    rouge_l: float = filters.DEFAULT_ROUGE_L  # near duplicates within a row (ROUGE-L)
    min_chars: int = filters.DEFAULT_MIN_CHARS
    max_chars: int | None = None
    refusals: bool = True  # drop refusals
    echo: float = filters.DEFAULT_ECHO  # refine: an output this close to its input (ROUGE-L) is an echo
    dedup: str = "exact"  # across rows: "row" (none), "exact", or "minhash" near duplicates
    minhash_threshold: float = filters.DEFAULT_MINHASH
    input_field: str | None = None  # a column of context (Alpaca's input) joined to the text (prompts.user_text)
    samples: int = 1  # respond: answers per instruction (sample k with seed + k)
    system: str | None = None  # respond: the system prompt the answers were given with (kept in records and exports)

    @property
    def rules(self) -> QualityRules:
        return QualityRules(self.min_chars, self.max_chars, self.refusals)

    def validate(self) -> None:
        if self.dedup not in DEDUP_MODES:
            raise UsageError(f"{opt('dedup')} {self.dedup!r}: use {', '.join(DEDUP_MODES)}")
        for name in ("rouge_l", "echo", "minhash_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"{opt(name)} must be in (0, 1]")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < max(self.min_chars, 1)):
            raise UsageError(f"{opt('min_chars')} must be at least 0 and {opt('max_chars')} at least {opt('min_chars')}")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise UsageError(f"{opt('samples')} must be from 1 to {MAX_SAMPLES}")
        if self.samples > 1 and self.task != "respond":
            raise UsageError(f"{opt('samples')} (answers per instruction) goes with respond; with {self.task}, give "
                             f"{opt('respond_samples')} to the responder of {opt('respond_with')}")
        if self.input_field is not None and (not self.input_field or self.input_field == self.field):
            raise UsageError(f"{opt('input_field')} must name a column other than {opt('field')}")

    def draw(self, style: PromptStyle, payload: str | list[Pair], seen: tasks.Seen | None = None) -> tasks.Draw:
        """The sampling loop of one row (``tasks.Draw``) with this job's sampling and filters."""
        n = self.samples if self.task == "respond" else self.n
        return tasks.Draw(style, self.task, payload, n, self.sampling, rules=self.rules, threshold=self.rouge_l,
                          echo=self.echo, max_samples=self.max_samples, seen=seen)

    def new_seen(self) -> tasks.Seen | None:
        """A job-wide memory of accepted texts for the dedup mode (None: within rows only)."""
        if self.task == "refine" or self.dedup == "row":
            return None
        return filters.ExactIndex() if self.dedup == "exact" else filters.MinHashIndex(self.minhash_threshold)


def run_config(cfg: JobConfig, model_sha256: str | None, style: PromptStyle) -> dict[str, Any]:
    """Everything that makes a row's result what it is (the run id is its hash); ``model_sha256`` is
    None for a model on a server, whose URL and name the caller adds."""
    own: dict[str, Any] = {}  # your own system prompt and examples, only when given (older run ids stay)
    if style.system is not None:
        own["system"] = style.system
    if style.examples is not None:
        own["examples_sha256"] = hashlib.sha256(json.dumps(style.examples, ensure_ascii=False).encode()).hexdigest()
    if cfg.input_field is not None:  # like the above: only when given, so that older run ids stay
        own["input_field"] = cfg.input_field
    if cfg.samples > 1:
        own["samples"] = cfg.samples
    # the keys are older than some settings' names (threshold: rouge_l; refusals: drop them), kept so
    # that run ids, and so resuming, stay what they were
    return {**own, "task": cfg.task, "model_sha256": model_sha256, "prompt_format": style.prompt_format,
            "sampling": asdict(cfg.sampling), "seed": cfg.sampling.seed, "n": cfg.n if cfg.task not in tasks.SINGLE_SAMPLE else 1,
            "field": cfg.field, "response_field": cfg.response_field, "max_samples": cfg.max_samples,
            "threshold": cfg.rouge_l, "min_chars": cfg.min_chars, "max_chars": cfg.max_chars, "refusals": cfg.refusals,
            "echo": cfg.echo, "dedup": cfg.dedup, "minhash_threshold": cfg.minhash_threshold}


def run_id_of(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
