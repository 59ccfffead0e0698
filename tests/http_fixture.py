"""The real HTTP server of localaug (uvicorn on a free loopback port, in a thread) for tests."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def keyed_env(key: str) -> dict[str, str]:
    """The environment of a localaug subprocess that talks to a server with ``key`` (no other key
    leaks in from the machine)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "LOCALAUG_REMOTE_API_KEY": key}
    env.pop("OPENAI_API_KEY", None)
    return env


def use_key(monkeypatch: Any, home: Path, key: str, env: dict[str, str]) -> None:
    """This process and ``env`` (its subprocesses') use ``home`` as LOCALAUG_HOME and send ``key``."""
    monkeypatch.setenv("LOCALAUG_HOME", str(home))
    monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", key)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    env["LOCALAUG_HOME"] = str(home)


@contextlib.contextmanager
def one_at_a_time(gguf: Path, name: str = "smol") -> Iterator[ServedModel]:
    """``gguf`` served one request at a time with no shared-prefix cache: the same messages always
    decode the same way, so a reply can be compared with a direct request's."""
    from localaug.runtime.engine import EngineOptions
    from localaug.serve.scheduler import load_model

    m = load_model(gguf, name=name, opts=EngineOptions(threads=1), parallel=1, n_ctx=2048)
    m.batch.prefix.enabled = False
    try:
        yield m
    finally:
        m.close()
