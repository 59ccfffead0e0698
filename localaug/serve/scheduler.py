"""Serving: one long-running continuous-batching scheduler per loaded model.

A ``Scheduler`` is a background thread that owns a ``BatchEngine`` (its llama.cpp context) for its
whole life and runs the batching loop of ``batch.Slots``: between two ``llama_decode`` steps it
takes cancellations, then admits queued requests into free slots, so a new request joins the
running batch without pausing the sequences already generating. With nothing to do it waits on a
condition variable (no spinning). Other threads call ``submit`` (thread-safe) and get a ``Handle``:
text pieces and finished samples arrive through callbacks run on the scheduler thread (keep them
short: the server only hands them to its event loop), and ``Handle.cancel`` frees the slots.
The queue of requests not yet admitted is bounded: past it ``submit`` raises ``QueueFullError``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from localaug.augment.resolve import resolve_style
from localaug.core.errors import EngineError, PromptTooLongError, QueueFullError, UsageError, opt
from localaug.family.registry import ModelSpec
from localaug.family.styles import PromptStyle
from localaug.runtime.backend import DEFAULT_PARALLEL, Request, Result
from localaug.runtime.batch import BatchEngine, Slots
from localaug.runtime.calibrate import open_calibrated
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.stream import Piece

log = logging.getLogger("localaug.serve.scheduler")

CANCELLED = "cancelled"
SHUTTING_DOWN = "the server is shutting down: retry against a running server"
STOPPED = "this model's scheduler stopped after repeated internal errors: restart the server"
MAX_RESTARTS = 5  # within RESTART_WINDOW_S; past it the scheduler gives up (health 503, the server exits)
RESTART_WINDOW_S = 60.0


@dataclass
class SchedulerStats:
    """Counters read by /metrics (plain ints written by the scheduler thread only)."""

    slots: int
    active: int = 0
    peak_active: int = 0
    decode_steps: int = 0
    batch_tokens: int = 0
    requests_done: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0  # requests failed by an internal error (not the client's)
    restarts: int = 0  # the scheduler loop was restarted after an internal error
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Handle:
    """One submitted request: its finished samples by index, and a way to stop it."""

    def __init__(self, scheduler: Scheduler, request: Request, on_piece: Callable[[Piece], None] | None,
                 on_result: Callable[[Result], None] | None) -> None:
        self.request = request
        self.results: dict[int, Result] = {}
        self.done = threading.Event()
        self.cancelled = False
        self._scheduler = scheduler
        self._on_piece = on_piece
        self._on_result = on_result

    def cancel(self) -> None:
        """Stop generating (no-op once done); pending samples finish with the error "cancelled"."""
        if not self.done.is_set():
            self._scheduler._cancel(self)

    def wait(self, timeout: float | None = None) -> list[Result]:
        """Block until every sample is finished (or failed, or cancelled); results by index."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.request.id} still running after {timeout}s")
        return [self.results[k] for k in sorted(self.results)]

    # -- called on the scheduler thread ---------------------------------------------------------

    def _piece(self, piece: Piece) -> None:
        if self._on_piece is not None:
            _safely(self._on_piece, piece)

    def _result(self, result: Result) -> bool:
        """Record one sample; True when the request is complete."""
        if result.index in self.results:
            return False
        self.results[result.index] = result
        if self._on_result is not None:
            _safely(self._on_result, result)
        if len(self.results) >= self.request.n:
            self.done.set()
            return True
        return False

    def _fail(self, message: str) -> None:
        for k in range(self.request.n):
            self._result(Result(self.request.id, k, None, message))
        self.done.set()


def _safely(fn: Callable[[Any], None], arg: Any) -> None:
    # a consumer that went away (closed event loop) must not take the scheduler down
    try:
        fn(arg)
    except Exception:  # noqa: BLE001
        log.debug("a result callback failed", exc_info=True)


class Scheduler:
    """A thread running continuous batching on ``batch`` for requests submitted from any thread."""

    def __init__(self, batch: BatchEngine, max_queue: int = 64, name: str = "model") -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.batch = batch
        self.max_queue = max_queue
        self.stats = SchedulerStats(slots=batch.parallel)
        self._cond = threading.Condition()
        self._queue: deque[Handle] = deque()
        self._cancels: list[Handle] = []
        self._handles: dict[str, Handle] = {}  # admitted, by request id
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=f"localaug-scheduler-{name}", daemon=True)
        self._started = False
        self.failure: str | None = None  # why the scheduler stopped for good (None: running, or stopped on request)
        self.busy_since: float | None = None  # monotonic start of the admission or decode step running now

    def busy_for(self, now: float | None = None) -> float:
        """Seconds the step running now (admitting requests, or one decode) has taken so far; 0 when idle."""
        since = self.busy_since
        return 0.0 if since is None else (time.monotonic() if now is None else now) - since

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """The scheduler thread runs (or was never started) and has not given up."""
        return self.failure is None and (not self._started or self._thread.is_alive() or self._stopping)

    def start(self) -> Scheduler:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, request: Request, on_piece: Callable[[Piece], None] | None = None,
               on_result: Callable[[Result], None] | None = None) -> Handle:
        """Queue a request (its ``id`` must be unique among running ones); callbacks run on the
        scheduler thread. Raises QueueFullError past the queue bound."""
        handle = Handle(self, request, on_piece, on_result)
        with self._cond:
            if self.failure is not None:
                raise QueueFullError(STOPPED)
            if self._stopping:
                raise QueueFullError(SHUTTING_DOWN)
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(
                    f"all {self.batch.parallel} slots are busy and {len(self._queue)} requests are waiting: retry later")
            self._queue.append(handle)
            self._cond.notify()
        return handle

    def stop(self, timeout: float | None = 30.0) -> None:
        """Cancel what is queued or running and end the thread (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._started and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the scheduler thread --------------------------------------------------------------------

    def _cancel(self, handle: Handle) -> None:
        with self._cond:
            handle.cancelled = True
            self._cancels.append(handle)
            self._cond.notify()

    def _pull(self) -> Request | None:
        with self._cond:
            while self._queue:
                handle = self._queue.popleft()
                if handle.cancelled:  # cancelled while the loop was admitting: counted here, never started
                    self.stats.requests_cancelled += 1
                    handle._fail(CANCELLED)
                    continue
                self._handles[handle.request.id] = handle
                return handle.request
        return None

    def _main(self) -> None:
        """Run the loop; after an internal error fail the requests it held and start again from an
        empty KV cache, unless it keeps failing (then give up: ``failure`` says why)."""
        failures: deque[float] = deque(maxlen=MAX_RESTARTS + 1)
        message = SHUTTING_DOWN
        try:
            while True:
                try:
                    with self.batch.session(stream=True) as state:
                        self._loop(state)
                    return
                except Exception as e:  # noqa: BLE001 - keep serving: fail what was admitted, start again
                    log.error("the scheduler loop failed: %s", e, exc_info=True)
                    self._fail_admitted("internal error while decoding: see the server log")
                    failures.append(time.monotonic())
                    if len(failures) > MAX_RESTARTS and failures[-1] - failures[0] < RESTART_WINDOW_S:
                        self.failure, message = f"{type(e).__name__}: {e}", STOPPED
                        return
                    self.stats.restarts += 1
        finally:
            with self._cond:
                leftover = list(self._queue) + list(self._handles.values())
                self._queue.clear()
                self._handles.clear()
            for handle in leftover:
                handle._fail(message)
            self.stats.active = 0

    def _fail_admitted(self, message: str) -> None:
        with self._cond:
            admitted = list(self._handles.values())
            self._handles.clear()
        for handle in admitted:
            self.stats.requests_failed += not handle.done.is_set()
            handle._fail(message)

    def _loop(self, state: Slots) -> None:
        stats = self.stats
        while True:
            with self._cond:
                while not (self._stopping or self._queue or self._cancels or state.active):
                    self._cond.wait()
                if self._stopping:
                    return
                cancels, self._cancels = self._cancels, []
            for handle in cancels:
                if self._handles.pop(handle.request.id, None) is not None:
                    state.cancel(handle.request.id)
                else:  # still queued: free its place in the queue now
                    with self._cond:
                        if handle in self._queue:
                            self._queue.remove(handle)
                stats.requests_cancelled += not handle.done.is_set()
                handle._fail(CANCELLED)
            self.busy_since = time.monotonic()  # read by /health: a step stuck past its budget shows there
            try:
                for result in state.fill(self._pull):
                    self._deliver(result)
            finally:
                self.busy_since = None
            stats.active = state.active
            stats.peak_active = max(stats.peak_active, stats.active)
            if not state.active:
                continue
            self.busy_since = time.monotonic()
            try:
                for event in state.step():
                    self._deliver(event)
            except Exception as e:  # noqa: BLE001 - fail the running requests, keep serving the next ones
                log.error("decode step failed: %s", e, exc_info=not isinstance(e, EngineError))
                message = str(e) if isinstance(e, EngineError) else "internal error while decoding: see the server log"
                for rid in state.clear():
                    handle = self._handles.pop(rid, None)
                    if handle is not None:
                        stats.requests_failed += 1
                        handle._fail(message)
            finally:
                self.busy_since = None
            stats.decode_steps += 1
            stats.batch_tokens += state.last_batch_tokens
            stats.active = state.active

    def _deliver(self, event: Result | Piece) -> None:
        handle = self._handles.get(event.id)
        if handle is None:
            return
        if isinstance(event, Piece):
            handle._piece(event)
            return
        if event.generation is not None:
            self.stats.completion_tokens += event.generation.completion_tokens
        if handle._result(event):
            del self._handles[event.id]
            self.stats.requests_done += 1
            first = handle.results.get(0)
            if first is not None and first.generation is not None:
                self.stats.prompt_tokens += first.generation.prompt_tokens


# --- served models ----------------------------------------------------------------------------


@dataclass
class ServedModel:
    """One model loaded once for serving: its name(s), prompt style and running scheduler. The HTTP
    layer uses its interface (``tokenize``, ``submit``, ``n_ctx``, ``style``, ``spec``) and nothing
    of the engine behind it."""

    id: str
    path: Path
    style: PromptStyle
    spec: ModelSpec | None
    engine: Engine
    batch: BatchEngine
    scheduler: Scheduler
    aliases: set[str] = field(default_factory=set)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_ctx(self) -> int:
        """Tokens one sequence may hold (prompt + completion)."""
        return self.batch.n_ctx_seq

    def tokenize(self, text: str) -> list[int]:
        """The prompt tokens of ``text`` (special tokens parsed). A text whose bytes cannot fit one
        sequence's context is refused untokenized (a PromptTooLongError): tokenizing costs time and
        token buffers in proportion to the text, whatever the context."""
        if self.engine.surely_too_long(text, self.n_ctx):
            raise PromptTooLongError(f"the prompt ({len(text)} characters) cannot fit the context of {self.n_ctx} "
                                     "tokens per sequence: shorten it")
        return self.engine.tokenize(text)

    def check_grammar(self, grammar: str) -> None:
        """A UsageError when llama.cpp cannot parse ``grammar`` against this model's vocabulary."""
        self.engine.check_grammar(grammar)

    def submit(self, request: Request, on_piece: Callable[[Piece], None] | None = None,
               on_result: Callable[[Result], None] | None = None) -> Handle:
        """Queue ``request`` on this model's scheduler (see ``Scheduler.submit``)."""
        return self.scheduler.submit(request, on_piece, on_result)

    def close(self) -> None:
        self.scheduler.stop()
        self.batch.close()  # and the engine it owns


def model_id(source: str, path: Path, spec: ModelSpec | None) -> str:
    """The name clients use: the family name, else the file name without .gguf."""
    if spec is not None:
        return spec.name
    if Path(source).suffix == ".gguf" or os.sep in source:
        return path.name.removesuffix(".gguf")
    return source


def load_model(source: str | os.PathLike[str], *, name: str | None = None, quant: str | None = None,
               prompt_format: str | None = None, opts: EngineOptions | None = None,
               parallel: int | None = DEFAULT_PARALLEL, n_ctx: int | None = None, max_queue: int = 64) -> ServedModel:
    """Resolve ``source`` (family name, repo id, GGUF path or checkpoint dir), load it once and start
    its scheduler. ``n_ctx`` (else the options') is the context of one sequence; the KV cache holds
    ``parallel`` of them (None: the batch size calibrated for this machine, see
    ``runtime.calibrate``)."""
    if parallel is not None and parallel < 1:
        raise UsageError(f"{opt('parallel')} must be at least 1")
    m = resolve_style(source, quant, prompt_format)
    options = opts or EngineOptions()
    batch, _ = open_calibrated(m.path, replace(options, n_ctx=n_ctx or options.n_ctx), parallel, batching=True)
    engine = batch.engine
    ident = name or model_id(str(source), m.path, m.spec)
    aliases = {ident, str(source), m.path.name.removesuffix(".gguf")} | ({m.spec.name} if m.spec else set())
    scheduler = Scheduler(batch, max_queue, ident).start()
    return ServedModel(ident, m.path, m.style, m.spec, engine, batch, scheduler, aliases, m.meta)


def load_models(sources: list[str], **kwargs: Any) -> list[ServedModel]:
    """``load_model`` for each source; on a failure the ones already loaded are freed."""
    loaded: list[ServedModel] = []
    try:
        for source in sources:
            loaded.append(load_model(source, **kwargs))
    except BaseException:
        for m in loaded:
            m.close()
        raise
    return loaded
