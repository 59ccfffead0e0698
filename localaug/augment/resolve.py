"""From what a user names (a family name, a repo id, a GGUF file, a checkpoint folder) to a GGUF path,
its family spec, its prompt style (with your own system prompt and examples, if given) and its
metadata; and the sampling defaults of a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError, opt
from localaug.core.files import read_bounded
from localaug.family import registry
from localaug.family.prompts import read_examples
from localaug.family.registry import ModelSpec
from localaug.family.styles import PromptStyle, check_overrides, family_spec_from_metadata, style_for
from localaug.runtime.engine import SamplingParams
from localaug.store.gguf_info import read_kv

DEFAULT_MODELS = {"refine": "qwen2-refine:1.5b", "expand": "qwen2-exp:1.5b", "pairs": "qwen2-response-exp:7b",
                  "respond": "qwen2-instruct:1.5b"}
_SAMPLING_KEYS = {f.name for f in fields(SamplingParams)}


def resolve_model(model: str | os.PathLike[str], quant: str | None = None) -> tuple[Path, ModelSpec | None]:
    """A GGUF path for ``model`` (GGUF path, family name, repo id or checkpoint dir) and its family spec."""
    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return path, None
    from localaug.store import local as store

    return store.resolve(str(model), quant), registry.find(str(model))


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    spec: ModelSpec | None
    style: PromptStyle
    meta: dict[str, Any]


def resolve_style(
    model: str | os.PathLike[str], quant: str | None = None, prompt_format: str | None = None
) -> ResolvedModel:
    """The GGUF path, family spec, prompt style and metadata for ``model`` (tensors are not read)."""
    path, spec = resolve_model(model, quant)
    meta = read_kv(path)
    spec = spec or family_spec_from_metadata(meta)
    return ResolvedModel(path, spec, style_for(meta, spec, prompt_format), meta)


def default_sampling(spec: ModelSpec | None, **overrides: Any) -> SamplingParams:
    """The model manifest's sampling (or the family defaults), with non-None overrides applied."""
    unknown = set(overrides) - _SAMPLING_KEYS
    if unknown:
        raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    base = SamplingParams()
    if spec is not None:
        s = spec.sampling
        base = replace(base, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


MAX_EXAMPLES_BYTES = 4 << 20


def with_overrides(style: PromptStyle, task: str | None, system: str | None,
                   examples: str | os.PathLike[str] | tuple[tuple[str, str], ...] | None) -> PromptStyle:
    """``style`` with your own system prompt and in-context examples (a JSON/JSONL file or pairs)."""
    if isinstance(examples, (str, os.PathLike)):
        path = Path(examples)
        try:
            text = read_bounded(path, MAX_EXAMPLES_BYTES)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{opt('examples')} {path}: cannot read it ({e}): give a JSON/JSONL file of "
                             "{\"input\", \"output\"} objects") from None
        examples = read_examples(text, str(path))
    elif examples is not None:
        examples = tuple((str(a), str(b)) for a, b in examples)
    if system is not None and not system.strip():
        raise UsageError(f"{opt('system')} is empty: give the system prompt's text")
    style = replace(style, system=system, examples=examples)
    check_overrides(style, task)
    return style
