"""How many sequences to decode together: measured, not a constant.

llama.cpp's batched decode is not monotonic in the batch size on CPUs (on one 2-core EPYC:
B=4 38, B=8 35, B=16 59, B=32 68 tokens/s), so a fixed ``parallel`` is fast on one machine and
slow on the next. The first time a model runs on a machine with ``parallel`` left to localaug,
a short calibration measures localaug's own batched throughput at B = 1, 2, 4, … (up to what the
KV cache may take of the memory) and picks the fastest (the smallest within 3 % of the best). At
each B the B sequences are samples forked from one prefill of the calibration prompt (the prompt
is decoded once, not B times: prefill is not what is measured). The
choice is cached in ``LOCALAUG_HOME/calibration.json`` by model file, device, GPU layers, threads,
llama.cpp version and CPU, so later runs start at once; ``localaug bench --batch`` prints the whole
curve next to raw ``llama_decode``.

``open_calibrated`` is the one way a model is opened to run requests: load it, choose the batch
size (for the context ``family.registry.context_size`` gives one sequence, the context the engine
is then built with), open the backend at that size. A model on a server gets ``parallel`` requests
in flight instead, nothing measured.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from localaug.core.files import cached_sha256, read_json, write_json_atomic
from localaug.core.progress import phase
from localaug.core.settings import default_parallel, localaug_home
from localaug.family.registry import context_size
from localaug.runtime.backend import DEFAULT_PARALLEL, Backend, SequentialBackend
from localaug.runtime.batch import BatchEngine
from localaug.runtime.bench import BATCH_SIZES, GPU_BATCH_SIZES, BatchPoint, batch_curve, fastest
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import llama_cpp_version
from localaug.runtime.remote import RemoteModel, open_remote

KV_SHARE_OF_MEMORY = 0.25  # the KV cache of all sequences may take at most this share of RAM
CALIBRATION_TOKENS = 12
CALIBRATION_PROMPT = "Write a short haiku about the sea."
CPUINFO = Path("/proc/cpuinfo")  # where Linux names the CPU (a calibration holds for one CPU model)


@dataclass(frozen=True)
class Parallel:
    """The batch size a run uses and how it was chosen: given, calibrated now, or cached."""

    value: int
    source: str  # "given" | "LOCALAUG_PARALLEL" | "calibrated" | "cached" | "default" (a remote model)
    seconds: float = 0.0

    def describe(self) -> str:
        if self.source == "calibrated":
            return f"batch size {self.value}, calibrated for this machine in {self.seconds:.0f} s"
        if self.source == "cached":
            return f"batch size {self.value}, calibrated for this machine earlier"
        return f"batch size {self.value}"


def _cpu() -> str:
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _key(sha256: str, engine: Engine) -> str:
    o = engine.opts
    return "|".join(map(str, (sha256, o.device, engine.gpu_layers, engine.threads, o.kv_f32, llama_cpp_version(), _cpu())))


def affordable(engine: Engine, n_ctx: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The batch sizes whose KV cache (``parallel + 1`` sequences of ``n_ctx``) fits the budget."""
    budget = _memory_bytes() * KV_SHARE_OF_MEMORY
    fits = tuple(b for b in sizes if (b + 1) * n_ctx * engine.kv_bytes_per_token <= budget)
    return fits or sizes[:1]


CALIBRATING = ("calibrating: decode speed at each batch size this memory affords, to choose how many sequences "
               "to decode together (once per model and machine)")


def measure_batch_sizes(engine: Engine, sizes: tuple[int, ...]) -> list[BatchPoint]:
    """localaug's own batched throughput at each of ``sizes`` (no raw llama_decode curve: only the
    pick is needed)."""
    return batch_curve(engine, engine.tokenize(CALIBRATION_PROMPT), sizes, CALIBRATION_TOKENS, raw=False)


def choose_parallel(engine: Engine, sha256: str | None, n_ctx: int, given: int | None = None, *,
                    measure: Callable[[Engine, tuple[int, ...]], list[BatchPoint]] = measure_batch_sizes) -> Parallel:
    """``given`` if set (or LOCALAUG_PARALLEL); else the cached calibration for this model (``sha256``,
    None: the engine's file's) and machine; else ``measure`` the batch sizes the memory affords for
    sequences of ``n_ctx`` tokens and keep the fastest."""
    if given is not None:
        return Parallel(given, "given")
    if default_parallel() is not None:
        return Parallel(default_parallel(), "LOCALAUG_PARALLEL")  # type: ignore[arg-type]
    cache_file = localaug_home() / "calibration.json"
    cache = read_json(cache_file) or {}
    sizes = affordable(engine, n_ctx, GPU_BATCH_SIZES if engine.gpu_layers else BATCH_SIZES)
    key = f"{_key(sha256 or cached_sha256(engine.path), engine)}|{max(sizes)}"
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("parallel"), int) and hit["parallel"] >= 1:
        return Parallel(hit["parallel"], "cached")
    started = time.monotonic()
    points: list[BatchPoint] = []
    with phase(CALIBRATING, len(sizes), "batch sizes") as shown:
        for b in sizes:  # one size at a time, so the display moves (each size prefills its own prompt anyway)
            points += measure(engine, (b,))
            shown.advance(1, f"{b} at a time")
    choice = Parallel(fastest(points), "calibrated", time.monotonic() - started)
    cache[key] = {"parallel": choice.value, "tokens_per_s": {str(p.parallel): round(p.tokens_per_s, 2) for p in points},
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    except Exception:  # noqa: BLE001 - a read-only home: measure again next time
        pass
    return choice


def remote_parallel(given: int | None = None) -> Parallel:
    """Requests in flight to a model on a server: ``given``, else LOCALAUG_PARALLEL, else a fixed
    default (the server batches them; nothing here to measure)."""
    if given is not None:
        return Parallel(given, "given")
    if default_parallel() is not None:
        return Parallel(default_parallel(), "LOCALAUG_PARALLEL")  # type: ignore[arg-type]
    return Parallel(DEFAULT_PARALLEL, "default")


@overload
def open_calibrated(model: str | os.PathLike[str] | Engine, options: EngineOptions, parallel: int | None = None, *,
                    batching: Literal[True]) -> tuple[BatchEngine, Parallel]: ...
@overload
def open_calibrated(model: str | os.PathLike[str] | Engine | RemoteModel, options: EngineOptions,
                    parallel: int | None = None, *, batching: bool = False) -> tuple[Backend, Parallel]: ...
def open_calibrated(model: str | os.PathLike[str] | Engine | RemoteModel, options: EngineOptions,
                    parallel: int | None = None, *, batching: bool = False) -> tuple[Backend, Parallel]:
    """A backend on ``model`` and the batch size it runs at (``choose_parallel``: ``parallel`` if
    given; a model on a server: ``remote_parallel``); ``close()`` frees it.

    ``model`` is a GGUF path (loaded here with ``options``), a loaded Engine (the backend owns it
    from now on: it is closed with it, or at once if this fails) or a RemoteModel. One sequence
    holds ``context_size(options.n_ctx, trained context)`` tokens: the calibration measures the
    batch sizes a KV cache of that size affords, and the engine is built with it. Several
    sequences run on a BatchEngine, one on a SequentialBackend, unless ``batching`` asks for a
    BatchEngine whatever the size (a server's scheduler drives its Slots)."""
    if isinstance(model, RemoteModel):
        chosen = remote_parallel(parallel)
        return open_remote(model, chosen.value), chosen
    engine = model if isinstance(model, Engine) else Engine(model, options, context=False)
    try:
        n_ctx = context_size(options.n_ctx, engine.n_ctx_train)
        chosen = choose_parallel(engine, None, n_ctx, parallel)
        if batching or chosen.value > 1:
            return BatchEngine(engine, parallel=chosen.value, n_ctx=n_ctx, owns_engine=True), chosen
        engine.ensure_context()
        return SequentialBackend(engine, owns=True), chosen
    except BaseException:
        engine.close()
        raise
