"""``Augmenter``: one loaded model, ready to refine, expand or write pairs (the public Python API's
object; ``localaug.api`` re-exports it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from localaug.augment import tasks
from localaug.augment.resolve import default_sampling, resolve_style, with_overrides
from localaug.augment.tasks import ExpandResult
from localaug.family.prompts import Pair
from localaug.family.registry import ModelSpec
from localaug.family.styles import PromptStyle
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation


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
        system: str | None = None,
        examples: str | os.PathLike[str] | tuple[tuple[str, str], ...] | None = None,
    ) -> Augmenter:
        """Load ``model``. ``prompt_format`` forces a family format id (e.g. "qwen2-chatml") or
        "teacher"; by default it follows the registry and the GGUF's provenance. Teacher mode takes
        your own ``system`` prompt and in-context ``examples`` (a JSON/JSONL file or (input, output)
        pairs) instead of localaug's."""
        m = resolve_style(model, quant, prompt_format)
        style = with_overrides(m.style, None, system, examples)
        opts = EngineOptions(device=device, gpu_layers=gpu_layers, threads=threads, n_ctx=n_ctx, kv_f32=kv_f32, verbose=verbose)  # type: ignore[arg-type]
        return cls(Engine(m.path, opts), style, m.spec)

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

    def verdict(self, text: str, refined: str, gen: Generation) -> str | None:
        """Why a refined instruction would not be kept by a job (``filters.REASONS``), or None."""
        return tasks.single_reason(self.style, "refine", text, refined, gen)

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
