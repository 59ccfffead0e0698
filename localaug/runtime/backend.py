"""The seam every generator sits behind: a ``Backend`` takes Requests and gives one Result per sample.

Three backends: ``batch.BatchEngine`` decodes many sequences together in one llama.cpp context,
``SequentialBackend`` one at a time on an ``Engine``, ``remote.RemoteBackend`` sends chat requests
to a server. ``calibrate.open_calibrated`` opens the right one at the right batch size; callers
hand it ``rows_per_chunk`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from localaug.family.prompts import Chat
from localaug.runtime.engine import Engine
from localaug.runtime.llama import Closing
from localaug.runtime.sampling import SamplingParams, sample_seed
from localaug.runtime.stream import Generation

DEFAULT_PARALLEL = 8  # sequences (or requests in flight) at a time when none is given nor calibrated


def rows_per_chunk(parallel: int) -> int:
    """Rows a caller hands a backend at a time: enough to keep ``parallel`` sequences busy while
    rows finish unevenly, few enough that memory stays flat whatever the input's size."""
    return max(4 * parallel, 8)


@dataclass(frozen=True)
class Request:
    id: str
    prompt: str | list[int] | Chat  # Chat: messages, for a model on a server (runtime.remote)
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eog: bool = False  # decode exactly max_tokens (benchmarks)


@dataclass
class Result:
    """One finished sample: ``generation`` or, when the request could not run, ``error``."""

    id: str
    index: int  # 0..n-1
    generation: Generation | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> Generation | str:
        """The generation, or why there is none."""
        return self.generation if self.generation is not None else (self.error or "no generation")


class Backend(Protocol):
    """What runs requests: ``run(requests)`` yields one Result per sample as it finishes (any
    order); ``close()`` frees what the backend loaded."""

    def run(self, requests: Iterable[Request]) -> Iterator[Result]: ...

    def close(self) -> None: ...


class SequentialBackend(Closing):
    """One request at a time on one Engine; sample k of a request uses seed + k."""

    def __init__(self, engine: Engine, owns: bool = False) -> None:
        self.engine, self._owns = engine, owns

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        for req in requests:
            for k in range(req.n):
                try:
                    gen = self.engine.generate(req.prompt, replace(req.sampling, seed=sample_seed(req.sampling.seed, k)), req.stop)
                except Exception as e:  # noqa: BLE001 - a bad row must not stop the others
                    for j in range(k, req.n):
                        yield Result(req.id, j, None, str(e))
                    break
                yield Result(req.id, k, gen)

    def close(self) -> None:
        if self._owns and self.engine is not None:
            self.engine.close()
            self.engine = None  # type: ignore[assignment]
