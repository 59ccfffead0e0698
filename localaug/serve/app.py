"""The HTTP server behind ``localaug serve``: the FastAPI app, its routes and how it runs.

Routes hand each request to ``handlers`` (what the endpoints do: prompt tokens, a
``runtime.batch.Request`` submitted to the model's scheduler so concurrent requests are decoded
together, results shaped as the OpenAI API or as the Python API). An outer ASGI ``Gate`` checks the API key and the body size before anything is
parsed and records every response for /metrics; without an API key it also refuses requests whose
Host or Origin header is not a loopback name (or one of ``allowed_hosts``): a web page cannot reach
a loopback server through DNS rebinding. Every error is one JSON object in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from localaug.core.errors import EngineError, LocalaugError, PromptTooLongError, UsageError, opt
from localaug.family.prompts import Pair
from localaug.serve import handlers, openapi, schemas
from localaug.serve.handlers import LOOPBACK_NAMES, ApiError, Limits, ServerConfig
from localaug.serve.metrics import Metrics
from localaug.serve.scheduler import ServedModel

__all__ = ["ApiError", "Limits", "ServerConfig", "bind", "create_app", "run_server", "url_of"]

log = logging.getLogger("localaug.serve.app")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/refine", "/v1/expand", "/v1/pairs",
             "/health", "/metrics")
OPEN_PATHS = frozenset({"/health"})


# --- the gate: host, auth, body size, metrics ---------------------------------------------------


def host_name(value: str) -> str:
    """The name in a Host header: lowercased, without the port, brackets or a final dot."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return (v.rsplit(":", 1)[0] if v.count(":") == 1 else v).rstrip(".")


def origin_name(value: str) -> str | None:
    """The host name of an Origin header (None for "null" or anything unreadable)."""
    try:
        name = urlsplit(value.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


class Gate:
    """Outermost ASGI layer: Host/Origin, API key and body-size checks before any parsing; metrics for
    every response."""

    def __init__(self, app: Any, config: ServerConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self._key = config.api_key.encode() if config.api_key else None
        self._hosts = (None if not config.host_check or "*" in config.allowed_hosts
                       else frozenset(LOOPBACK_NAMES) | {host_name(h) for h in config.allowed_hosts})

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = "/v1/models" if path.startswith("/v1/models/") else path if path in ENDPOINTS else "other"
        started = time.monotonic()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._check(scope, path)
            if refusal is not None:
                await refusal.response()(scope, receive, send_status)
                return
            await self.app(scope, self._limited(receive), send_status)
        finally:
            self.metrics.observe(endpoint, status, time.monotonic() - started)

    def _foreign(self, headers: dict[str, bytes]) -> ApiError | None:
        """A 403 for a Host or Origin this server does not answer to (when it checks them)."""
        if self._hosts is None:
            return None
        host, origin = headers.get("host"), headers.get("origin")
        if host is not None and host_name(host.decode("latin-1")) not in self._hosts:
            return ApiError(403, f"Host {host.decode('latin-1')[:100]!r} is not a name this server answers to: reach it "
                                 "as localhost, 127.0.0.1 or [::1], or add that name to its allowed_hosts",
                            code="host_not_allowed")
        if origin is not None and origin_name(origin.decode("latin-1")) not in self._hosts:
            return ApiError(403, f"requests from the web page {origin.decode('latin-1')[:100]!r} are refused: add its "
                                 "host to the server's allowed_hosts to let it in", code="origin_not_allowed")
        return None

    def _check(self, scope: dict[str, Any], path: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        foreign = self._foreign(headers)
        if foreign is not None:
            return foreign
        if self._key is not None and path not in OPEN_PATHS:
            auth = headers.get("authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._key):
                return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                "invalid_request_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.limits.max_body_bytes):
            return _too_large(self.config.limits.max_body_bytes)
        return None

    def _limited(self, receive: Callable[..., Any]) -> Callable[..., Any]:
        limit, seen = self.config.limits.max_body_bytes, 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body without Content-Length
                    raise HTTPException(413, _too_large(limit).message)
            return message

        return limited


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over this server's limit of {limit} bytes: send less text per request",
                    code="request_too_large")


# --- the app --------------------------------------------------------------------------------------


class Models:
    """The models given at start, by name; nothing else can be named."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise UsageError(f"no model to serve: pass {opt('model')}")
        self.all = list(models)
        ids = [m.id for m in self.all]
        if len(set(ids)) != len(ids):
            raise UsageError(f"two models are named the same ({', '.join(ids)}): give each model once")

    def get(self, name: str | None) -> ServedModel:
        if not name:
            return self.all[0]
        for m in self.all:
            if name == m.id:
                return m
        for m in self.all:
            if name in m.aliases:
                return m
        raise ApiError(404, f"model {name!r} is not served here: use one of {', '.join(m.id for m in self.all)} "
                            "(GET /v1/models)", code="model_not_found", param="model")


def create_app(models: Sequence[ServedModel], config: ServerConfig | None = None, owns_models: bool = False) -> Gate:
    """The ASGI app serving ``models`` (already loaded, schedulers running). With ``owns_models`` the
    models are closed when the server shuts down."""
    config = config or ServerConfig()
    pool = Models(models)
    metrics = Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_models:
                for m in pool.all:
                    m.close()

    app = FastAPI(title="localaug", summary="OpenAI-compatible and task endpoints for the localaug models",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # FastAPI's pages load scripts from a CDN
    app.openapi = openapi.describe(app)  # type: ignore[method-assign]
    _errors(app)

    @app.get("/health")
    async def health() -> Any:
        down = unhealthy(pool.all)
        if down:
            return JSONResponse({"status": "error", "models": down}, 503)
        slow = stalled(pool.all, config.stall_after_s)
        if slow:
            return JSONResponse({"status": "degraded", "models": slow}, 503)
        return {"status": "ok"}

    if config.docs:
        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return HTMLResponse(openapi.docs_page(app.openapi()),
                                headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(pool.all), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(m, created) for m in pool.all]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_card(pool.get(name), created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schemas.ChatBody, http: HTTPRequest) -> Any:
        return await handlers.chat(pool.get(body.model), body, http, config)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionBody, http: HTTPRequest) -> Any:
        return await handlers.complete(pool.get(body.model), body, http, config)

    @app.post("/v1/refine")
    async def refine(body: schemas.RefineBody, http: HTTPRequest) -> dict[str, Any]:
        return await handlers.refine(pool.get(body.model), body, http, config)

    @app.post("/v1/expand")
    async def expand(body: schemas.ExpandBody, http: HTTPRequest) -> dict[str, Any]:
        m = pool.get(body.model)
        result, usage = await handlers.sample_task(http, m, config, "expand", body.text, body)
        return {"model": m.id, "input": body.text, "instructions": result.items, **handlers.tally(result), "usage": usage}

    @app.post("/v1/pairs")
    async def pairs(body: schemas.PairsBody, http: HTTPRequest) -> dict[str, Any]:
        m = pool.get(body.model)
        seeds = [Pair(p.instruction, p.response) for p in body.seeds]
        result, usage = await handlers.sample_task(http, m, config, "pairs", seeds, body)
        items = [{"instruction": p.instruction, "response": p.response} for p in result.items]
        return {"model": m.id, "pairs": items, **handlers.tally(result), "usage": usage}

    return Gate(app, config, metrics)


def unhealthy(models: Sequence[ServedModel]) -> dict[str, str]:
    """Models whose scheduler stopped for good, and why."""
    return {m.id: m.scheduler.failure or "its scheduler thread is not running" for m in models if not m.scheduler.healthy}


def stalled(models: Sequence[ServedModel], limit_s: float) -> dict[str, str]:
    """Models whose scheduler has been on one step (admitting requests, or one decode) over ``limit_s``."""
    now = time.monotonic()
    return {m.id: f"its scheduler has been on one step for {busy:.1f} s (over {limit_s:g} s): it answers late or not "
                  "at all" for m in models if (busy := m.scheduler.busy_for(now)) > limit_s}


def _model_card(m: ServedModel, created: int) -> dict[str, Any]:
    return {"id": m.id, "object": "model", "created": created, "owned_by": "localaug",
            "context_length": m.n_ctx, "prompt_format": m.style.prompt_format}


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: HTTPRequest, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        return _validation_error(e.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: HTTPRequest, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(e.status_code)
        message = e.detail if e.status_code != 404 else "no such endpoint: see GET /v1/models and the README"
        return ApiError(e.status_code, str(message), code=code, headers=getattr(e, "headers", None)).response()

    @app.exception_handler(LocalaugError)
    async def localaug_error(_: HTTPRequest, e: LocalaugError) -> JSONResponse:
        # the message names settings as the JSON fields a client sends; a server-side fault is a 5xx
        kind = "invalid_request_error" if e.http_status < 500 else "server_error"
        code = "context_length_exceeded" if isinstance(e, PromptTooLongError) else None
        return ApiError(e.http_status, str(e), kind, code, param=next(iter(e.params), None)).response()

    @app.exception_handler(Exception)
    async def internal(_: HTTPRequest, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return ApiError(500, "internal server error: see the server log", "server_error").response()


def _validation_error(errors: Sequence[Any]) -> ApiError:
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')}):"
                             " send a JSON object", code="invalid_json")
    where = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, f"invalid request: {where}: {first.get('msg', 'invalid value')}{more}",
                    code="invalid_value", param=where)


# --- running the server ---------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, made before the models load so a busy port fails fast."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"{opt('host')} {host!r} is not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}): pick another {opt('port')}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Terminated(Exception):
    """SIGTERM arrived: the server has drained and is stopping (an orderly exit, status 0)."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def run_server(models: Sequence[ServedModel], config: ServerConfig, sock: socket.socket,
               shutdown_timeout: float = 10.0) -> None:
    """Serve until Ctrl-C / SIGTERM; in-flight requests get ``shutdown_timeout`` seconds to finish,
    then are cancelled, and the models are freed. Returns normally after SIGTERM."""
    import signal

    import uvicorn

    app = create_app(models, config, owns_models=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=int(shutdown_timeout)))
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found: make that
    # an orderly return (exit 0, models freed by the caller) instead of death by the signal
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main else None
    watchdog = _Watchdog(models, server)
    try:
        server.run(sockets=[sock])
    except _Terminated:
        pass
    finally:
        watchdog.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)
    if watchdog.down:
        name, why = next(iter(watchdog.down.items()))
        raise EngineError(f"model {name} stopped serving ({why}): the server exited so that a supervisor restarts it")


class _Watchdog:
    """Stops the server when a model's scheduler gives up, so the process exits non-zero and a
    supervisor (systemd, Kubernetes) restarts it; /health says 503 meanwhile."""

    def __init__(self, models: Sequence[ServedModel], server: Any, every: float = 0.5) -> None:
        self.models, self.server, self.every = models, server, every
        self.down: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="localaug-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.down = unhealthy(self.models)
            if self.down:
                log.error("stopping: %s", "; ".join(f"{k}: {v}" for k, v in self.down.items()))
                self.server.should_exit = True
                return

    def stop(self) -> None:
        self._stop.set()
