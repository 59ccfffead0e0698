"""A tiny HTTP/1.1 server on 127.0.0.1, in a thread, that answers each request as a test says: the
real other end of localaug's OpenAI-compatible client (runtime/remote.py), with what it was sent
(method, path, headers, body, which connection, when) kept for the test to check.

    with Loopback(lambda seen: Reply(200, {"data": []})) as server:
        ... server.url ... server.seen ...
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # 1, 2, ...: which TCP connection carried it
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What to answer: a status, a body (bytes, text, or a value sent as JSON) and headers;
    ``hang_up``: close the connection after answering without saying so (an idle keep-alive
    connection the server drops); ``drop``: close it without answering at all."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False
    drop: bool = False

    def data(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


class Loopback:
    """``answer(seen) -> Reply`` for every request (called on the server's threads)."""

    def __init__(self, answer: Callable[[Seen], Reply]) -> None:
        self.seen: list[Seen] = []
        self.connections = 0
        self.in_flight = self.most_in_flight = 0
        self.unsent = 0  # answers the client hung up on before taking them whole
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1
                    self.connection_id = server.connections

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(self.command, self.path, dict(self.headers.items()), body, self.connection_id, time.monotonic())
                with server._lock:
                    server.seen.append(seen)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    reply = answer(seen)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if reply.drop:
                    self.close_connection = True
                    return
                data = reply.data()
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    with server._lock:
                        server.unsent += 1
                    raise
                if reply.hang_up:
                    self.close_connection = True

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that hung up mid-answer: nothing to say
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def completion(text: str | None, finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI chat completion answer holding ``text``."""
    answer: dict[str, Any] = {"id": "x", "object": "chat.completion",
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
    if usage is not None:
        answer["usage"] = usage
    return answer
