"""From what a user names (a family name, a repo id, a GGUF file, a checkpoint folder) to a GGUF path,
its family spec, its prompt style and its metadata; and the sampling defaults of a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from localaug.family import registry
from localaug.family.registry import ModelSpec
from localaug.family.styles import PromptStyle, family_spec_from_metadata, style_for
from localaug.runtime.engine import SamplingParams
from localaug.store.gguf_info import read_kv

DEFAULT_MODELS = {"refine": "qwen2-refine:1.5b", "expand": "qwen2-exp:1.5b", "pairs": "qwen2-response-exp:7b"}
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
