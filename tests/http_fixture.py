"""The real HTTP server of localaug (uvicorn on a free loopback port, in a thread) for tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from localaug.serve.app import ServerConfig, bind, create_app, url_of
from localaug.serve.scheduler import ServedModel


@contextlib.contextmanager
def running(models: list[ServedModel], config: ServerConfig) -> Iterator[str]:
    """The real server (uvicorn) on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(models, config), log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
