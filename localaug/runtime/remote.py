"""A model on an OpenAI-compatible server (vLLM, llama-server, ``localaug serve``), named by URL.

``http://gpu-box:8000/v1#MODEL`` names the model ``MODEL`` served at the base URL
``http://gpu-box:8000/v1`` (as OpenAI clients take it; a URL with no path gets ``/v1``). Without
``#MODEL`` the server's only model (``GET /v1/models``) is used. The key is read from the
environment (``LOCALAUG_REMOTE_API_KEY``, else ``OPENAI_API_KEY``) and sent as a Bearer header;
it is never part of a URL, a message, a record or a manifest (a URL holding credentials is refused).

``RemoteBackend`` is a ``runtime.backend.Backend``: each sample of a request is one
``POST /v1/chat/completions`` with the request's messages (``family.prompts.Chat``: the server
applies its own chat template), ``temperature``, ``top_p``, ``max_tokens``, ``seed`` (sample k:
seed + k) and ``stop``. At most ``parallel`` requests are in flight (threads, one keep-alive
connection each). Each has a connect and a read timeout; a connection error, a 429 or a 5xx is
retried with exponential backoff (``Retry-After`` honoured, bounded), a bounded number of times; any
other answer that is not a 2xx fails that sample at once with the server's own message. A sample
that fails is a ``Result`` with its error: the other requests go on. Replies are read up to a size
limit. HTTP proxies from the environment are not used: the server is reached directly.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from localaug._version import __version__
from localaug.core.errors import RemoteError, UsageError, opt
from localaug.family.prompts import Chat
from localaug.runtime.backend import DEFAULT_PARALLEL, Request, Result
from localaug.runtime.llama import Closing
from localaug.runtime.sampling import SamplingParams, sample_seed
from localaug.runtime.stream import Generation

KEY_ENVS = ("LOCALAUG_REMOTE_API_KEY", "OPENAI_API_KEY")  # the first one set is the key
MAX_MODEL_NAME = 512
MAX_SERVER_MESSAGE = 300  # characters of a server's error message shown


def is_remote(model: object) -> bool:
    """Whether ``model`` names a model on a server (an http:// or https:// URL), not a file or store name."""
    return isinstance(model, str) and model.strip().lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``URL[#MODEL]``: the normalised base URL and the model name, if one was given."""

    base_url: str
    model: str | None


def parse_endpoint(spec: str, param: str = "model") -> Endpoint:
    """``http(s)://host[:port][/path][#MODEL]`` -> Endpoint; anything else is a UsageError naming ``param``."""
    url, _, fragment = spec.strip().partition("#")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"{opt(param)}: not a valid URL ({e}): give e.g. http://gpu-box:8000/v1#MODEL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{opt(param)}: a server URL starts with http:// or https:// and names a host, e.g. "
                         "http://gpu-box:8000/v1#MODEL")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{opt(param)}: the URL holds credentials: remove them and put the key in "
                         f"{KEY_ENVS[0]} (a URL is written into manifests and messages)")
    if parts.query:
        raise UsageError(f"{opt(param)}: the URL has a query (?…): give the base URL, e.g. http://gpu-box:8000/v1")
    if any(ord(c) < 32 or c.isspace() for c in url):
        raise UsageError(f"{opt(param)}: the URL holds spaces or control characters")
    model = urllib.parse.unquote(fragment).strip() or None
    if model is not None and (len(model) > MAX_MODEL_NAME or any(ord(c) < 32 for c in model)):
        raise UsageError(f"{opt(param)}: the model name after # is over {MAX_MODEL_NAME} characters or holds "
                         "control characters")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") or "/v1"
    return Endpoint(f"{parts.scheme.lower()}://{netloc}{path}", model)


def api_key() -> tuple[str | None, str | None]:
    """(the key, the variable it came from): the first of KEY_ENVS that is set, else (None, None)."""
    for name in KEY_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            if not all(33 <= ord(c) < 127 for c in value):
                raise UsageError(f"{name} holds spaces or characters an HTTP header cannot carry: set it to the key alone")
            return value, name
    return None, None


@dataclass(frozen=True)
class RemoteOptions:
    """Timeouts (seconds), retries and the reply size limit of every request to a server."""

    connect_timeout: float = 10.0
    read_timeout: float = 600.0  # a whole generation comes in one answer: time to the first byte
    retries: int = 3  # more attempts after the first, on connection errors, 429 and 5xx
    backoff: float = 0.5  # first wait; doubled each retry, with jitter
    max_backoff: float = 10.0
    max_retry_after: float = 30.0  # a server's Retry-After is honoured up to this
    max_response_bytes: int = 8 << 20


class RemoteFailure(Exception):
    """One request that did not succeed: the HTTP status (None: no answer) and whether to retry.
    The message is ``head`` (what happened) then ``tail`` (the server's words, or advice)."""

    def __init__(self, head: str, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, tail: str = "") -> None:
        super().__init__(head + tail)
        self.head, self.tail = head, tail
        self.status, self.retryable, self.retry_after = status, retryable, retry_after

    def after(self, attempts: int) -> RemoteFailure:
        """The same failure, saying how many attempts it took."""
        return RemoteFailure(f"{self.head} after {attempts} attempts", self.status, tail=self.tail)


@dataclass
class RemoteGeneration(Generation):
    """A reply from a server: its text and the token counts it reported (token ids are not sent)."""

    reported_completion_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return self.reported_completion_tokens


class RemoteClient:
    """Requests to one server, thread-safe: each thread keeps its own keep-alive connection."""

    def __init__(self, base_url: str, options: RemoteOptions | None = None) -> None:
        self.base_url, self.options = base_url, options or RemoteOptions()
        parts = urllib.parse.urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._path = parts.hostname or "", parts.port, parts.path
        self._key, self.key_env = api_key()
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- what callers use ------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The ids of ``GET /models``."""
        data = self.call("GET", "/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise RemoteFailure(f"{self.base_url}/models answered without a data list: is this an OpenAI-compatible server?")
        return [str(e["id"]) for e in entries if isinstance(e, dict) and isinstance(e.get("id"), (str, int))]

    def chat(self, model: str, chat: Chat, sampling: SamplingParams, stop: tuple[str, ...]) -> RemoteGeneration:
        """One chat completion of ``chat`` with ``sampling`` (temperature, top_p, max_tokens, seed) and ``stop``."""
        body: dict[str, Any] = {"model": model, "messages": list(chat.messages), "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if stop:
            body["stop"] = list(stop)
        started = time.monotonic()
        data = self.call("POST", "/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise RemoteFailure(f"{self.base_url}/chat/completions answered without choices[0].message.content "
                                f"({type(e).__name__})") from None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        seconds = time.monotonic() - started
        return RemoteGeneration(text, [], finish, prompt_tokens, seconds, seconds,  # type: ignore[arg-type]
                                reported_completion_tokens=completion_tokens)

    def close(self) -> None:
        """Stop: no more retries, and every open connection is shut (a request in flight fails now)."""
        self._closed.set()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            _shut(conn)

    # -- one request, with retries ---------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of ``method path``; retried on connection errors, 429 and 5xx; a
        RemoteFailure (with the server's message) when it does not succeed."""
        payload = json.dumps(body).encode() if body is not None else None  # ASCII: a lone surrogate stays an escape
        o = self.options
        for attempt in range(o.retries + 1):
            try:
                status, headers, data = self._exchange(method, path, payload)
            except RemoteFailure as failure:
                error = failure
            else:
                if 200 <= status < 300:
                    try:
                        return json.loads(data)
                    except (ValueError, RecursionError):
                        raise RemoteFailure(f"{self.base_url}{path} answered {status} with something that is not JSON",
                                            status) from None
                error = self._http_failure(status, headers, data)
            if not error.retryable or attempt == o.retries or self._closed.is_set():
                raise error.after(attempt + 1) if error.retryable and attempt else error
            wait_s = min(o.max_backoff, o.backoff * 2 ** attempt) * (0.75 + 0.5 * random.random())
            if error.retry_after is not None:
                wait_s = max(wait_s, min(error.retry_after, o.max_retry_after))
            if self._closed.wait(wait_s):
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_failure(self, status: int, headers: http.client.HTTPMessage, data: bytes) -> RemoteFailure:
        said = self._scrub(_server_message(data))
        retry_after = _seconds(headers.get("Retry-After"))
        if status in (401, 403):
            if self.key_env is None:
                why = f"needs an API key ({status}: {said}): set {KEY_ENVS[0]} (or {KEY_ENVS[1]}) to the server's key"
            else:
                why = f"refused the API key in {self.key_env} ({status}: {said}): set {self.key_env} to the server's key"
            return RemoteFailure(f"{self.base_url} {why}", status)
        return RemoteFailure(f"{self.base_url} answered {status}", status, retryable=status == 429 or status >= 500,
                             retry_after=retry_after, tail=f": {said}")

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP exchange on this thread's connection: (status, headers, body up to the limit)."""
        if self._closed.is_set():
            raise RemoteFailure(f"{self.base_url}: the client is closed")
        headers = {"Accept": "application/json", "User-Agent": f"localaug/{__version__}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        limit = self.options.max_response_bytes
        for again in (False, True):
            try:
                conn, reused = self._connection()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from None
            try:
                conn.request(method, self._path + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read(limit + 1)
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                if reused and not again and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                           BrokenPipeError)):
                    continue  # the server closed an idle keep-alive connection: once more on a new one, at once
                raise self._unreachable(e) from None
            if len(data) > limit:
                self._drop(conn)
                raise RemoteFailure(f"{self.base_url}{path} answered with more than {limit >> 20} MiB: lower max_tokens",
                                    response.status)
            if response.will_close:
                self._drop(conn)
            return response.status, response.headers, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it has carried a request before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        o = self.options
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=o.connect_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=o.connect_timeout)
        try:
            conn.connect()  # within the connect timeout; then every read waits up to the read timeout
            assert conn.sock is not None
            conn.sock.settimeout(o.read_timeout)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        _shut(conn)

    def _unreachable(self, e: BaseException) -> RemoteFailure:
        return RemoteFailure(f"cannot reach {self.base_url} ({self._scrub(_reason(e))})", retryable=True,
                             tail=": check the URL and that the server is running")

    def _scrub(self, text: str) -> str:
        """``text`` without the key, should a server echo it."""
        return text.replace(self._key, "***") if self._key else text


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
        except OSError:
            pass
    conn.close()


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return _one_line(str(e)) or type(e).__name__  # e.g. a status line that is not HTTP: the server's own bytes


def _server_message(data: bytes) -> str:
    """The message an error answer carries (OpenAI's error.message, FastAPI's detail, or its text), one line."""
    text = data[:64 << 10].decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        for candidate in (err.get("message") if isinstance(err, dict) else err, body.get("detail"), body.get("message")):
            if isinstance(candidate, str) and candidate.strip():
                text = candidate
                break
    return _one_line(text) or "(no message)"


def _one_line(text: str) -> str:
    """Text a server sent, for a message: one line, at most MAX_SERVER_MESSAGE characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_SERVER_MESSAGE else line[:MAX_SERVER_MESSAGE] + "…"


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


# --- a named model, and the backend -------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteModel:
    """A model on a server: the base URL and the name it is served under (never the key)."""

    base_url: str
    name: str

    def identity(self) -> dict[str, str]:
        """What a run id hashes instead of a GGUF's sha256."""
        return {"url": self.base_url, "model": self.name}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def __str__(self) -> str:
        return f"{self.base_url}#{self.name}"


def connect(endpoint: Endpoint, options: RemoteOptions | None = None) -> RemoteModel:
    """Check the server answers with this key (``GET /models``) and settle the model name: the one
    given (refused when the server lists others only), else the server's only model."""
    client = RemoteClient(endpoint.base_url, options)
    try:
        served: list[str] | None = client.models()
    except RemoteFailure as e:
        if e.status == 404 and endpoint.model is not None:
            served = None  # a server that lists no models: take the name as given
        else:
            raise RemoteError(str(e)) from None
    finally:
        client.close()
    base = endpoint.base_url
    if endpoint.model is None:
        if served is not None and len(served) == 1:
            return RemoteModel(base, served[0])
        listed = f"serves {len(served)} models ({_listing(served)})" if served else "lists no models"
        raise UsageError(f"{base} {listed}: name one as {base}#MODEL")
    if served is not None and endpoint.model not in served:
        raise UsageError(f"{base} does not serve {endpoint.model!r} (it serves {_listing(served)}): name one as "
                         f"{base}#MODEL")
    return RemoteModel(base, endpoint.model)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f", … {len(names) - 10} more" if len(names) > 10 else "")


class RemoteBackend(Closing):
    """``runtime.backend.Backend`` on a server: every sample one chat request, ``parallel`` in flight."""

    def __init__(self, model: RemoteModel, parallel: int = DEFAULT_PARALLEL, options: RemoteOptions | None = None) -> None:
        if parallel < 1:
            raise UsageError(f"{opt('parallel')} must be at least 1")
        self.model, self.parallel = model, parallel
        self.client = RemoteClient(model.base_url, options)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(parallel, thread_name_prefix="localaug-remote")

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        """One Result per sample as it finishes (any order); requests are pulled as room frees up."""
        assert self._pool is not None, "the backend is closed"
        pending = iter(requests)
        samples: deque[tuple[Request, int]] = deque()
        flying: dict[Future[Result], None] = {}
        exhausted = False
        while True:
            while len(flying) < self.parallel and not (exhausted and not samples):
                if not samples:
                    req = next(pending, None)
                    if req is None:
                        exhausted = True
                        break
                    if not isinstance(req.prompt, Chat):
                        yield from (Result(req.id, k, None, "a remote model takes chat messages, not prompt text")
                                    for k in range(max(req.n, 1)))
                        continue
                    samples.extend((req, k) for k in range(req.n))
                    continue
                req, k = samples.popleft()
                flying[self._pool.submit(self._sample, req, k)] = None
            if not flying:
                return
            done, _ = wait(list(flying), return_when=FIRST_COMPLETED)
            for future in done:
                del flying[future]
                yield future.result()

    def _sample(self, req: Request, k: int) -> Result:
        assert isinstance(req.prompt, Chat)
        sampling = replace(req.sampling, seed=sample_seed(req.sampling.seed, k))
        try:
            return Result(req.id, k, self.client.chat(self.model.name, req.prompt, sampling, req.stop))
        except RemoteFailure as e:
            return Result(req.id, k, None, str(e))
        except Exception as e:  # noqa: BLE001 - one sample fails alone
            return Result(req.id, k, None, f"{type(e).__name__}: {e}")

    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            self.client.close()  # requests in flight end now
            pool.shutdown(wait=True, cancel_futures=True)


def open_remote(model: RemoteModel, parallel: int, options: RemoteOptions | None = None) -> RemoteBackend:
    """The backend for ``model``: ``parallel`` requests in flight; ``close()`` ends them."""
    return RemoteBackend(model, parallel, options)
