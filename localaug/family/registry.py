"""The model family: the TOML manifests in ``localaug.models`` read into ``ModelSpec`` records."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from localaug.core.errors import ModelNotFoundError

TASKS = ("refine", "expand", "pairs", "respond")
AUGMENT_TASKS = TASKS[:3]  # the tasks that make new instructions (respond answers them)
DEFAULT_CTX = 4096  # the context (tokens) a model starts with; grown on demand up to its trained length


def context_size(requested: int | None, trained: int) -> int:
    """The context (tokens of one sequence) a model runs with: ``requested``, else DEFAULT_CTX, never
    more than the context it was trained for. The engines size their KV cache by it, and the
    calibration measures the batch sizes that cache affords."""
    return min(requested or DEFAULT_CTX, trained)


@dataclass(frozen=True)
class Architecture:
    arch: str
    layers: int
    hidden_size: int
    ffn_size: int
    heads: int
    kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    rms_norm_eps: float
    rope_theta: float
    context_length: int


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    repo: str
    revision: str
    task: str
    parameters: str
    license: str
    default_quant: str
    prompt_format: str
    architecture: Architecture
    sampling: Sampling
    stop: tuple[str, ...] = field(default_factory=tuple)


def _parse(data: dict) -> ModelSpec:
    return ModelSpec(
        name=data["name"],
        repo=data["repo"],
        revision=data.get("revision", "main"),
        task=data["task"],
        parameters=data["parameters"],
        license=data.get("license", "unknown"),
        default_quant=data["default_quant"],
        prompt_format=data["prompt_format"],
        architecture=Architecture(**data["architecture"]),
        sampling=Sampling(**data["sampling"]),
        stop=tuple(data["stop"]["tokens"]),
    )


@lru_cache(maxsize=1)
def family() -> tuple[ModelSpec, ...]:
    """Every model of the family, sorted by name."""
    specs = []
    for entry in resources.files("localaug.models").iterdir():
        if entry.name.endswith(".toml"):
            specs.append(_parse(tomllib.loads(entry.read_text(encoding="utf-8"))))
    return tuple(sorted(specs, key=lambda s: s.name))


def find(name_or_repo: str) -> ModelSpec | None:
    """The family model called ``name_or_repo`` (our name or its Hugging Face repo id), if any."""
    key = name_or_repo.strip().lower()
    for spec in family():
        if key in (spec.name.lower(), spec.repo.lower()):
            return spec
    return None


def get(name_or_repo: str) -> ModelSpec:
    spec = find(name_or_repo)
    if spec is None:
        names = ", ".join(s.name for s in family())
        raise ModelNotFoundError(
            f"unknown model {name_or_repo!r}: use one of {names}, a Hugging Face repo id, "
            "a GGUF file or a local checkpoint directory"
        )
    return spec
