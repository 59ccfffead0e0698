"""What the server's endpoints do, apart from the HTTP wiring in ``server.py``.

Prompt building (exact Qwen2 ChatML for family models, the GGUF's chat template otherwise), limits
and sampling, submitting ``batch.Request``s to a model's scheduler and awaiting or streaming their
results on the event loop, OpenAI response shapes, and expand / pairs sampling rounds.
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse

from localaug.augment import tasks
from localaug.augment.resolve import default_sampling
from localaug.core.errors import QueueFullError
from localaug.family import prompts, styles
from localaug.family.prompts import Pair
from localaug.runtime.backend import Request, Result
from localaug.runtime.grammar import GrammarLimitError, GrammarLimits, json_grammar
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Piece
from localaug.serve import schemas
from localaug.serve.scheduler import SHUTTING_DOWN, STOPPED, Handle, ServedModel


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; past these the server answers 4xx with the limit in the message."""

    max_tokens: int = 2048  # new tokens per sample
    max_prompt_tokens: int | None = None  # None: whatever fits one sequence's context
    max_n: int = 16  # samples per request (choices, or expand/pairs items)
    max_body_bytes: int = 1 << 20
    max_stop: int = 16
    grammar: GrammarLimits = field(default_factory=GrammarLimits)  # what a response_format schema may ask


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    retry_after_s: int = 1
    # Host and Origin headers a request may carry (besides the loopback names; "*": any). Without an
    # API key a web page could otherwise reach a loopback server through DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    check_host: bool | None = None  # None: checked when no api_key is set (or allowed_hosts are given)
    docs: bool = False  # /docs: the API described in plain HTML (no scripts); /openapi.json is always served
    stall_after_s: float = 60.0  # /health answers 503 "degraded" while one scheduler step runs longer

    @property
    def host_check(self) -> bool:
        if self.check_host is not None:
            return self.check_host
        return self.api_key is None or bool(self.allowed_hosts)


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


# --- work off the event loop ---------------------------------------------------------------------

T = TypeVar("T")
# Prompt rendering, tokenizing and grammar building run on worker threads, at most this many at once
# (each is bounded: a template or a grammar by its 2 s budget). Enough that a few slow ones leave
# threads for the others; few enough that CPU-bound Python threads, which share the GIL with the
# event loop, keep /health answering within tens of milliseconds. The rest wait in order.
PREP_THREADS = 8
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` on a worker thread (one of ``PREP_THREADS``), the event loop free meanwhile."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(PREP_THREADS)
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


# --- prompts and sampling -------------------------------------------------------------------------


def chat_prompt(m: ServedModel, messages: list[dict[str, str]]) -> str:
    """Messages rendered as the model expects: exact Qwen2 ChatML for the family, else the GGUF's template."""
    if m.style.is_family:
        # NFC, as the Qwen2 tokenizer normalises (llama.cpp's does not)
        return prompts.qwen2_chatml([{**x, "content": unicodedata.normalize("NFC", x["content"])} for x in messages])
    assert m.style.chat_template is not None
    return prompts.render_chat_template(m.style.chat_template, messages, bos_token=m.style.bos_token,
                                        eos_token=m.style.eos_token)


async def task_tokens(m: ServedModel, task: str, payload: str | list[Pair]) -> list[int]:
    """The prompt tokens of a task input, built off the event loop (a teacher prompt renders the GGUF's
    template, bounded in time but not free). An empty input is a UsageError (400)."""
    return await off_loop(lambda: m.tokenize(styles.build_prompt(m.style, task, payload)))


def check_openai(body: schemas.OpenAIBody, limits: Limits) -> None:
    why = body.unsupported()
    if why:
        raise ApiError(400, why, code="unsupported_parameter")
    if body.n > limits.max_n:
        raise ApiError(400, f"n={body.n} is over this server's limit of {limits.max_n}: ask for fewer choices",
                       param="n")
    if len(body.stops()) > limits.max_stop or any(not s for s in body.stops()):
        raise ApiError(400, f"stop takes 1 to {limits.max_stop} non-empty strings", param="stop")


def _max_tokens(m: ServedModel, n_prompt: int, requested: int | None, default: int, limits: Limits) -> int:
    max_prompt = min(limits.max_prompt_tokens or m.n_ctx - 1, m.n_ctx - 1)
    if n_prompt > max_prompt:
        raise ApiError(400, f"the prompt is {n_prompt} tokens, over this server's limit of {max_prompt}: shorten it",
                       code="context_length_exceeded")
    if requested is not None:
        if requested > limits.max_tokens:
            raise ApiError(400, f"max_tokens {requested} is over this server's limit of {limits.max_tokens}: "
                                "lower it", param="max_tokens")
        if n_prompt + requested > m.n_ctx:
            raise ApiError(400, f"prompt of {n_prompt} tokens + max_tokens {requested} exceeds the context of "
                                f"{m.n_ctx} tokens per sequence: lower max_tokens or shorten the prompt",
                           code="context_length_exceeded", param="max_tokens")
        return requested
    return max(1, min(default, limits.max_tokens, m.n_ctx - n_prompt))


def sampling_for(m: ServedModel, body: schemas.Sampling, n_prompt: int, limits: Limits, requested: int | None) -> SamplingParams:
    base = default_sampling(m.spec, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            min_p=body.min_p, repeat_penalty=body.repeat_penalty, seed=body.seed)
    return replace(base, max_tokens=_max_tokens(m, n_prompt, requested, base.max_tokens, limits))


async def with_format(m: ServedModel, body: schemas.OpenAIBody, sampling: SamplingParams,
                      limits: GrammarLimits) -> SamplingParams:
    """``sampling`` under the grammar ``response_format`` asks for (JSON), checked against the model."""
    rf = body.response_format
    if rf is None or rf.type == "text":
        return sampling
    schema = rf.json_schema["schema"] if rf.type == "json_schema" and rf.json_schema else None

    def build() -> str:
        grammar = json_grammar(schema, limits)
        m.check_grammar(grammar)
        return grammar

    try:
        grammar = await off_loop(build)
    except GrammarLimitError as e:
        raise ApiError(400, f"response_format: {e}", code="response_format_too_complex", param="response_format") from None
    return replace(sampling, grammar=grammar)


def task_sampling(m: ServedModel, body: schemas.Sampling, n_prompt: int, limits: Limits) -> SamplingParams:
    return sampling_for(m, body, n_prompt, limits, body.max_tokens)


# --- running requests -----------------------------------------------------------------------------


class _Events:
    """Scheduler callbacks (on its thread) -> an asyncio queue on the server's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Piece | Result] = asyncio.Queue()

    def put(self, event: Piece | Result) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _submit(m: ServedModel, reqs: list[Request], config: ServerConfig,
            stream: bool) -> tuple[_Events, list[Handle]]:
    """Queue ``reqs`` on the model's scheduler; text pieces are forwarded only when streaming (each
    one wakes the event loop)."""
    events = _Events()
    handles: list[Handle] = []
    try:
        for r in reqs:
            handles.append(m.submit(r, events.put if stream else None, events.put))
    except QueueFullError as e:
        for h in handles:
            h.cancel()
        if str(e) == SHUTTING_DOWN:
            raise ApiError(503, str(e), "server_error", "shutting_down") from None
        if str(e) == STOPPED:
            raise ApiError(503, str(e), "server_error", "model_unavailable") from None
        raise ApiError(429, str(e), "rate_limit_error", "queue_full",
                       headers={"Retry-After": str(config.retry_after_s)}) from None
    return events, handles


def failed(result: Result) -> ApiError:
    if result.error == SHUTTING_DOWN:
        return ApiError(503, result.error, "server_error", "shutting_down")
    if result.error == STOPPED:
        return ApiError(503, result.error, "server_error", "model_unavailable")
    return ApiError(500, f"generation failed: {result.error}", "server_error")


async def run_requests(http: HTTPRequest, m: ServedModel, reqs: list[Request], config: ServerConfig) -> list[Result]:
    """Submit, wait for every sample (cancelling if the client goes away), results in order."""
    events, handles = _submit(m, reqs, config, stream=False)
    remaining = sum(r.n for r in reqs)
    results: list[Result] = []
    try:
        while remaining:
            try:
                event = await asyncio.wait_for(events.queue.get(), 0.5)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    raise ApiError(499, "client closed the request") from None
                continue
            if isinstance(event, Result):
                remaining -= 1
                if not event.ok:
                    raise failed(event)
                results.append(event)
    finally:
        if remaining:
            for h in handles:
                h.cancel()
    order = {r.id: i for i, r in enumerate(reqs)}
    return sorted(results, key=lambda r: (order[r.id], r.index))


def usage_of(results: Sequence[Result]) -> dict[str, int]:
    prompt = {r.id: r.generation.prompt_tokens for r in results if r.generation is not None}
    completion = sum(r.generation.completion_tokens for r in results if r.generation is not None)
    return {"prompt_tokens": sum(prompt.values()), "completion_tokens": completion,
            "total_tokens": sum(prompt.values()) + completion}


def sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False, allow_nan=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def stream_events(m: ServedModel, reqs: list[Request], config: ServerConfig) -> AsyncIterator[Piece | Result]:
    """Submit now (so a full queue is a 429 before the stream starts); then every Piece and Result as
    they come. What is unfinished is cancelled when the consumer stops (the client disconnected)."""
    events, handles = _submit(m, reqs, config, stream=True)

    async def stream() -> AsyncIterator[Piece | Result]:
        remaining = sum(r.n for r in reqs)
        try:
            while remaining:
                event = await events.queue.get()
                if isinstance(event, Result):
                    remaining -= 1
                yield event
        finally:
            if remaining:
                for h in handles:
                    h.cancel()

    return stream()


async def stream_chat(events: AsyncIterator[Piece | Result], m: ServedModel, rid: str, created: int,
                       body: schemas.ChatBody) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": m.id,
                "system_fingerprint": None,
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    results: list[Result] = []
    for k in range(body.n):
        yield chunk(k, {"role": "assistant", "content": ""})
    async for event in events:
        if isinstance(event, Piece):
            yield chunk(event.index, {"content": event.text})
        elif event.generation is None:
            yield failed(event).body()
            return
        else:
            results.append(event)
            yield chunk(event.index, {}, event.generation.finish_reason)
    if body.stream_options and body.stream_options.include_usage:
        yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": m.id, "choices": [],
               "usage": usage_of(results)}


async def stream_completion(events: AsyncIterator[Piece | Result], m: ServedModel, reqs: list[Request], rid: str, created: int,
                             body: schemas.CompletionBody, prefix: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    order = {r.id: i for i, r in enumerate(reqs)}

    def chunk(req_id: str, index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": created, "model": m.id,
                "choices": [{"index": order[req_id] * body.n + index, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    results: list[Result] = []
    for r in reqs:
        if prefix[r.id]:
            for k in range(r.n):
                yield chunk(r.id, k, prefix[r.id])
    async for event in events:
        if isinstance(event, Piece):
            yield chunk(event.id, event.index, event.text)
        elif event.generation is None:
            yield failed(event).body()
            return
        else:
            results.append(event)
            yield chunk(event.id, event.index, "", event.generation.finish_reason)
    if body.stream_options and body.stream_options.include_usage:
        yield {"id": rid, "object": "text_completion", "created": created, "model": m.id, "choices": [],
               "usage": usage_of(results)}


# --- what the routes do ------------------------------------------------------------------------------


def created_now() -> int:
    return int(time.time())


async def chat(m: ServedModel, body: schemas.ChatBody, http: HTTPRequest, config: ServerConfig) -> Any:
    """POST /v1/chat/completions: the messages rendered as the model expects, n choices."""
    check_openai(body, config.limits)
    messages = [{"role": "system" if x.role == "developer" else x.role, "content": x.text()} for x in body.messages]
    tokens = await off_loop(lambda: m.tokenize(chat_prompt(m, messages)))
    sampling = await with_format(m, body, sampling_for(m, body, len(tokens), config.limits,
                                                       body.max_completion_tokens or body.max_tokens),
                                 config.limits.grammar)
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    reqs = [Request(rid, tokens, sampling, tuple(dict.fromkeys((*m.style.stop, *body.stops()))), body.n)]
    if body.stream:
        return sse(stream_chat(stream_events(m, reqs, config), m, rid, created_now(), body))
    results = await run_requests(http, m, reqs, config)
    choices = [{"index": r.index, "message": {"role": "assistant", "content": r.generation.text},
                "logprobs": None, "finish_reason": r.generation.finish_reason} for r in results]
    return {"id": rid, "object": "chat.completion", "created": created_now(), "model": m.id, "choices": choices,
            "usage": usage_of(results), "system_fingerprint": None}


async def complete(m: ServedModel, body: schemas.CompletionBody, http: HTTPRequest, config: ServerConfig) -> Any:
    """POST /v1/completions: raw prompts (one or a list), n choices each."""
    check_openai(body, config.limits)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts or len(texts) * body.n > config.limits.max_n:
        raise ApiError(400, f"give 1 to {config.limits.max_n} prompts x n in one request (got {len(texts)} x "
                            f"{body.n}): split it", param="prompt")
    if any(not t for t in texts):
        raise ApiError(400, "a prompt is empty: give some text", param="prompt")
    token_lists = await off_loop(lambda: [m.tokenize(t) for t in texts])
    longest = max(len(t) for t in token_lists)
    sampling = await with_format(m, body, sampling_for(m, body, longest, config.limits,
                                                       body.max_completion_tokens or body.max_tokens),
                                 config.limits.grammar)
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    reqs = [Request(f"{rid}-{i}", toks, sampling, body.stops(), body.n) for i, toks in enumerate(token_lists)]
    prefix = {r.id: (texts[i] if body.echo else "") for i, r in enumerate(reqs)}
    if body.stream:
        return sse(stream_completion(stream_events(m, reqs, config), m, reqs, rid, created_now(), body, prefix))
    results = await run_requests(http, m, reqs, config)
    order = {r.id: i for i, r in enumerate(reqs)}
    choices = [{"index": order[r.id] * body.n + r.index, "text": prefix[r.id] + r.generation.text,
                "logprobs": None, "finish_reason": r.generation.finish_reason} for r in results]
    choices.sort(key=lambda c: c["index"])
    return {"id": rid, "object": "text_completion", "created": created_now(), "model": m.id, "choices": choices,
            "usage": usage_of(results), "system_fingerprint": None}


async def refine(m: ServedModel, body: schemas.RefineBody, http: HTTPRequest, config: ServerConfig) -> dict[str, Any]:
    """POST /v1/refine: the refined instruction, as ``localaug refine --json`` gives it."""
    tokens = await task_tokens(m, "refine", body.text)
    sampling = task_sampling(m, body, len(tokens), config.limits)
    request = Request(f"refine-{uuid.uuid4().hex[:24]}", tokens, sampling, m.style.stop)
    results = await run_requests(http, m, [request], config)
    gen = results[0].generation
    assert gen is not None
    return {"model": m.id, "input": body.text, "output": styles.parse_reply(m.style, "refine", gen.text),
            "finish_reason": gen.finish_reason, "usage": usage_of(results)}


# --- expand / pairs: sample until n pass the filters ----------------------------------------------


def tally(result: tasks.ExpandResult) -> dict[str, Any]:
    return {"samples": result.samples, "rejected": result.rejected, "shortfall": result.shortfall}


async def sample_task(http: HTTPRequest, m: ServedModel, config: ServerConfig, task: str,
                      payload: str | list[Pair], body: schemas.ExpandBody | schemas.PairsBody) -> tuple[tasks.ExpandResult, dict[str, int]]:
    """``tasks.Draw`` with the samples of each round decoded together: sample k still uses seed + k
    and samples are judged in order, so the result is the sequential one."""
    limits = config.limits
    if body.n > limits.max_n:
        raise ApiError(400, f"n={body.n} is over this server's limit of {limits.max_n}: ask for fewer", param="n")
    if body.max_samples is not None and body.max_samples > 4 * limits.max_n:
        raise ApiError(400, f"max_samples is at most {4 * limits.max_n} here", param="max_samples")
    tokens = await task_tokens(m, task, payload)
    draw = tasks.Draw(m.style, task, payload, body.n, task_sampling(m, body, len(tokens), limits),
                      max_samples=body.max_samples)
    rid = f"{task}-{uuid.uuid4().hex[:24]}"
    round_ = 0
    while draw.want:
        round_ += 1
        request = Request(f"{rid}-{round_}", tokens, draw.sampling_for_next(), m.style.stop, draw.want)
        draw.take_all(r.outcome for r in await run_requests(http, m, [request], config))
    usage = {"prompt_tokens": len(tokens), "completion_tokens": draw.completion_tokens,
             "total_tokens": len(tokens) + draw.completion_tokens}
    return draw.result, usage
