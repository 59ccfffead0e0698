"""The settings objects every entry point builds: the engine, sampling and filters of a run.

``localaug run`` (its flags, a ``--config`` file, environment defaults or a ``--replay``), the
Python API (``run_job``'s keyword arguments, or these objects themselves) and ``localaug serve``
all build the same objects, and each setting has one name everywhere: the field name here is the
API's keyword, the config file's key, the name errors give (``opt('rouge_l')``) and, with dashes,
the flag (``--rouge-l``). The engine's ``n_ctx`` keeps ``--ctx`` as a flag alias.

``split`` turns flat keyword arguments into these objects and the rest; ``flat`` goes back, so the
job plumbing (chained phases, Ray) can pass a job's settings along as keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from localaug.augment import filters
from localaug.core.errors import UsageError
from localaug.runtime.engine import EngineOptions

__all__ = ["ALIASES", "EngineSettings", "FilterSettings", "SamplingSettings", "canonical", "field_names", "flat", "split"]


@dataclass(frozen=True)
class EngineSettings:
    """Where and how a model runs (what people set once per machine: see docs/configuration.md)."""

    device: str = "auto"
    gpu_layers: int | str | None = None  # a number, "all", or None: all on a GPU, 0 on CPU
    threads: int | None = None  # None: all cores
    n_ctx: int | None = None  # context of one sequence; None: the family's default, grown on demand
    parallel: int | None = None  # sequences decoded together; None: calibrated for the machine

    def options(self, threads_default: int | None = None) -> EngineOptions:
        """What the runtime loads a model with (``parallel`` is the batch engine's, given apart)."""
        return EngineOptions(device=self.device, gpu_layers=self.gpu_layers, threads=self.threads or threads_default,  # type: ignore[arg-type]
                             n_ctx=self.n_ctx)


@dataclass(frozen=True)
class SamplingSettings:
    """How replies are sampled; None takes the model manifest's value (``resolve.default_sampling``)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None
    seed: int = 0  # sample k of a row uses seed + k

    def overrides(self) -> dict[str, Any]:
        """The sampling settings ``default_sampling`` applies over the manifest's (seed included)."""
        return asdict(self)


@dataclass(frozen=True)
class FilterSettings:
    """Which new texts are kept: duplicates (within a row and across rows), echoes, refusals, lengths."""

    max_samples: int | None = None  # expand/pairs: samples drawn per row at most
    rouge_l: float = filters.DEFAULT_ROUGE_L  # near duplicates within a row: ROUGE-L at or above this
    echo: float = filters.DEFAULT_ECHO  # refine: an output this close to its input is an echo
    min_chars: int = filters.DEFAULT_MIN_CHARS
    max_chars: int | None = None
    keep_refusals: bool = False
    dedup: str = "exact"  # across rows: row (none), exact, or minhash near duplicates
    minhash_threshold: float = filters.DEFAULT_MINHASH


# Older keyword names the Python API still takes: (new name, how the old value becomes the new one).
ALIASES: dict[str, tuple[str, Any]] = {
    "threshold": ("rouge_l", lambda v: v),
    "refusals": ("keep_refusals", lambda drop: not drop),  # refusals=True dropped them
}
GROUPS: dict[str, type] = {"engine": EngineSettings, "sampling": SamplingSettings, "filters": FilterSettings}


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def split(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``{"engine": EngineSettings, "sampling": ..., "filters": ...}``, the other keywords) from flat
    keywords (``threads=2, rouge_l=0.5``), settings objects given whole (``engine=EngineSettings()``)
    or both (a flat keyword then overrides the object's field). Older names (``ALIASES``) are taken."""
    rest: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    whole: dict[str, Any] = {}
    for key, value in given.items():
        if key in ALIASES:
            new, convert = ALIASES[key]
            if new in given:
                raise UsageError(f"{key} and {new} name one setting: give {new} alone")
            key, value = new, convert(value)
        if key in GROUPS:
            if value is not None and not isinstance(value, GROUPS[key]):
                raise UsageError(f"{key} must be a {GROUPS[key].__name__}")
            whole[key] = value
            continue
        group = next((g for g, cls in GROUPS.items() if key in field_names(cls)), None)
        if group is None:
            rest[key] = value
        else:
            flat[group][key] = value
    made = {}
    for group, cls in GROUPS.items():
        base = whole.get(group) or cls()
        made[group] = cls(**{**asdict(base), **flat[group]})
    return made, rest


def canonical(given: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keywords under today's names: settings objects given whole are spread into their fields
    (a flat keyword given too overrides its field), older names renamed; nothing is added."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key in GROUPS and isinstance(value, GROUPS[key]):
            out.update({k: v for k, v in asdict(value).items() if k not in given})
        elif key in ALIASES:
            new, convert = ALIASES[key]
            out[new] = convert(value)
        else:
            out[key] = value
    return out


def flat(*settings: Any) -> dict[str, Any]:
    """The settings objects' fields as flat keywords (``split``'s inverse)."""
    out: dict[str, Any] = {}
    for s in settings:
        out.update(asdict(s))
    return out
