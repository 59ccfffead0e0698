"""The public Python API.

    from localaug import Augmenter
    aug = Augmenter.load("qwen2-refine:1.5b")          # a family name, repo id, GGUF path or checkpoint dir
    aug.refine("Create a travel guide for Hangzhou.")
    aug.expand("Plan a tour of France.", n=3)
    aug.pairs([Pair("Name three primary colors.", "Red, yellow and blue.")], n=2)

Each method has a ``*_stream`` twin that yields text as it is generated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from localaug import registry, tasks
from localaug.engine import Engine, EngineOptions, Generation, SamplingParams
from localaug.gguf_info import read_kv
from localaug.prompts import Pair
from localaug.registry import ModelSpec
from localaug.tasks import ExpandResult, PromptStyle
from localaug.jobs import JobSummary, run_job  # noqa: F401 - batch jobs are part of the public API  # noqa: F401 - re-exported

DEFAULT_MODELS = {"refine": "qwen2-refine:1.5b", "expand": "qwen2-exp:1.5b", "pairs": "qwen2-response-exp:7b"}
_SAMPLING_KEYS = {f.name for f in fields(SamplingParams)}


def resolve_model(model: str | os.PathLike[str], quant: str | None = None) -> tuple[Path, ModelSpec | None]:
    """A GGUF path for ``model`` (GGUF path, family name, repo id or checkpoint dir) and its family spec."""
    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return path, None
    from localaug import store

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
    spec = spec or tasks.family_spec_from_metadata(meta)
    return ResolvedModel(path, spec, tasks.style_for(meta, spec, prompt_format), meta)


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


class Augmenter:
    """One loaded model, ready to refine, expand or write pairs."""

    def __init__(self, engine: Engine, style: PromptStyle, spec: ModelSpec | None) -> None:
        self.engine, self.style, self.spec = engine, style, spec

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        quant: str | None = None,
        device: str = "auto",
        gpu_layers: int | str | None = None,
        threads: int | None = None,
        n_ctx: int | None = None,
        kv_f32: bool = False,
        verbose: bool = False,
        prompt_format: str | None = None,
    ) -> Augmenter:
        """Load ``model``. ``prompt_format`` forces a family format id (e.g. "qwen2-chatml") or
        "teacher"; by default it follows the registry and the GGUF's provenance."""
        m = resolve_style(model, quant, prompt_format)
        opts = EngineOptions(device=device, gpu_layers=gpu_layers, threads=threads, n_ctx=n_ctx, kv_f32=kv_f32, verbose=verbose)  # type: ignore[arg-type]
        return cls(Engine(m.path, opts), m.style, m.spec)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Augmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling -------------------------------------------------------------------------------

    def sampling(self, **overrides: Any) -> SamplingParams:
        """The model manifest's sampling (or the family defaults), with non-None overrides applied."""
        return default_sampling(self.spec, **overrides)

    # -- tasks ----------------------------------------------------------------------------------

    def refine_stream(self, text: str, **sampling: Any) -> Iterator[str]:
        """Yield the refined instruction as it is generated (raw model text)."""
        for item in tasks.stream_text(self.engine, self.style, "refine", text, self.sampling(**sampling)):
            if isinstance(item, str):
                yield item

    def refine_full(self, text: str, on_piece: Callable[[str], None] | None = None, **sampling: Any) -> tuple[str, Generation]:
        """The refined instruction and its Generation; ``on_piece`` sees the raw text as it streams."""
        return tasks.refine(self.engine, self.style, text, self.sampling(**sampling), on_piece)

    def refine(self, text: str, **sampling: Any) -> str:
        return self.refine_full(text, **sampling)[0]

    def expand_full(self, text: str, n: int = 3, **sampling: Any) -> ExpandResult:
        return tasks.final(tasks.expand_iter(self.engine, self.style, text, n, self.sampling(**sampling)))

    def expand(self, text: str, n: int = 3, **sampling: Any) -> list[str]:
        return self.expand_full(text, n, **sampling).items

    def expand_stream(self, text: str, n: int = 3, **sampling: Any) -> Iterator[str]:
        """Yield each new instruction as soon as it is accepted."""
        for event in tasks.expand_iter(self.engine, self.style, text, n, self.sampling(**sampling)):
            if isinstance(event, str):
                yield event

    def pairs_full(self, seeds: list[Pair], n: int = 1, **sampling: Any) -> ExpandResult:
        return tasks.final(tasks.pairs_iter(self.engine, self.style, seeds, n, self.sampling(**sampling)))

    def pairs(self, seeds: list[Pair], n: int = 1, **sampling: Any) -> list[Pair]:
        return self.pairs_full(seeds, n, **sampling).items

    def pairs_stream(self, seeds: list[Pair], n: int = 1, **sampling: Any) -> Iterator[Pair]:
        """Yield each new pair as soon as it is accepted."""
        for event in tasks.pairs_iter(self.engine, self.style, seeds, n, self.sampling(**sampling)):
            if isinstance(event, Pair):
                yield event


def doctor() -> dict[str, Any]:
    """Facts about this installation: the llama.cpp build, its backends, threads, memory, the store."""
    import llama_cpp

    from localaug import __version__, store
    from localaug.engine import gpu_offload_supported, system_info

    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    info = system_info()
    entries = store.list_entries()
    return {
        "localaug": __version__,
        "llama-cpp-python": llama_cpp.__version__,
        "gpu offload": "yes" if gpu_offload_supported() else "no (CPU build; see README for CUDA/Metal)",
        "default device": "gpu (all layers)" if gpu_offload_supported() else "cpu",
        "llama.cpp features": info,
        "cpu cores": os.cpu_count(),
        "memory": f"{pages * page_size / 2**30:.1f} GiB",
        "store": str(store.root()),
        "models in store": len(entries),
        "store size": f"{sum(e.size for e in entries) / 2**30:.2f} GiB",
    }
