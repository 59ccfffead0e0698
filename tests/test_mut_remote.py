"""A model on an OpenAI-compatible server (localaug/runtime/remote.py), against its real other end:
a tiny HTTP server on loopback (tests/loopback_server.py) that answers each case exactly as that
case needs — an error status, a Retry-After, a dropped keep-alive connection, a reply too large,
a server that never answers — and keeps what it was sent.

Pinned: how ``URL#MODEL`` is read and refused; which key is sent and that it never shows; the JSON
body of a chat request and how its answer is read; which statuses are retried and the exact backoff
schedule (the jitter drawn from a seeded ``random``; the waits read from the client's stop event,
so no test sleeps through them); the size limit; the server's message in errors; the model chosen
by ``connect``; the backend's seeds, bounded concurrency and failures that stay in their sample.
They guard remote.py in tools/mutation.py: each case a few milliseconds of loopback traffic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from loopback_server import Loopback, Reply, Seen, completion

from localaug._version import __version__
from localaug.core.errors import RemoteError, UsageError, opt
from localaug.family.prompts import Chat
from localaug.runtime import remote as R
from localaug.runtime.batch import Request
from localaug.runtime.engine import SamplingParams
from localaug.runtime.remote import Endpoint, RemoteClient, RemoteFailure, RemoteModel, RemoteOptions

KEY = "sk-loopback-4e1d"


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    for name in R.KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


class Waits(threading.Event):
    """The client's stop event, keeping each backoff it is asked to wait instead of waiting it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def client(server: Loopback, **options) -> tuple[RemoteClient, Waits]:
    c = RemoteClient(f"{server.url}/v1", RemoteOptions(**options))
    c._closed = waits = Waits()
    return c, waits


def jitter(seed: int, n: int) -> list[float]:
    """The jitter factors a client draws after random.seed(seed): 0.75 to 1.25."""
    rng = random.Random(seed)
    return [0.75 + 0.5 * rng.random() for _ in range(n)]


def always(status: int, body=b"", headers: dict[str, str] | None = None):
    return lambda seen: Reply(status, body, headers or {})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- URL#MODEL -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "base", "model"), [
    ("http://GPU-Box:8000/v1/#Qwen/Qwen2-7B-Instruct", "http://gpu-box:8000/v1", "Qwen/Qwen2-7B-Instruct"),
    ("  HTTPS://h  ", "https://h/v1", None),
    ("https://[::1]:8443", "https://[::1]:8443/v1", None),
    ("http://[FE80::1]/llm", "http://[fe80::1]/llm", None),
    ("http://h/llm/v1#qwen2-instruct%3A7b", "http://h/llm/v1", "qwen2-instruct:7b"),
    ("http://h:8000/v1#", "http://h:8000/v1", None),
    ("http://h/v1# %20 ", "http://h/v1", None),
    ("http://h//", "http://h/v1", None),
    ("http://h/v1///#m", "http://h/v1", "m"),
    ("http://h:80/a#b#c", "http://h:80/a", "b#c"),
    ("http://h/v1#" + "m" * 512, "http://h/v1", "m" * 512),
    ("http://h/v1#my model", "http://h/v1", "my model"),
    ("http://h/llmX/", "http://h/llmX", None),  # a space inside a name is the server's business
])
def test_a_url_names_a_base_and_a_model(spec, base, model):
    assert R.parse_endpoint(spec) == Endpoint(base, model)


@pytest.mark.parametrize(("spec", "template"), [
    ("ftp://h/v1", "{p}: a server URL starts with http:// or https:// and names a host, e.g. http://gpu-box:8000/v1#MODEL"),
    ("http:///v1", "{p}: a server URL starts with http:// or https:// and names a host, e.g. http://gpu-box:8000/v1#MODEL"),
    ("gpu-box:8000/v1", "{p}: a server URL starts with http:// or https:// and names a host, e.g. http://gpu-box:8000/v1#MODEL"),
    ("http://user:pa55@h/v1", "{p}: the URL holds credentials: remove them and put the key in LOCALAUG_REMOTE_API_KEY "
                              "(a URL is written into manifests and messages)"),
    ("http://user@h/v1", "{p}: the URL holds credentials: remove them and put the key in LOCALAUG_REMOTE_API_KEY "
                         "(a URL is written into manifests and messages)"),
    ("http://:pa55@h/v1", "{p}: the URL holds credentials: remove them and put the key in LOCALAUG_REMOTE_API_KEY "
                          "(a URL is written into manifests and messages)"),
    ("http://h/v1?key=x", "{p}: the URL has a query (?…): give the base URL, e.g. http://gpu-box:8000/v1"),
    ("http://h/v 1", "{p}: the URL holds spaces or control characters"),
    ("http://h/v1\x07", "{p}: the URL holds spaces or control characters"),
    ("http://h/v1#" + "m" * 513, "{p}: the model name after # is over 512 characters or holds control characters"),
    ("http://h/v1#a%01b", "{p}: the model name after # is over 512 characters or holds control characters"),
    ("http://h/v1#a%1Fb", "{p}: the model name after # is over 512 characters or holds control characters"),
])
def test_a_url_that_cannot_name_a_server_is_refused(spec, template):
    with pytest.raises(UsageError) as e:
        R.parse_endpoint(spec, "judge")
    assert e.value.template == template.format(p=opt("judge")) and "pa55" not in str(e.value)
    with pytest.raises(UsageError) as e:
        R.parse_endpoint(spec)
    assert e.value.params == ["model"]


def test_an_invalid_port_is_named():
    with pytest.raises(UsageError) as e:
        R.parse_endpoint("http://h:99999/v1", "judge")
    assert e.value.template.startswith(f"{opt('judge')}: not a valid URL (") and e.value.template.endswith(
        "): give e.g. http://gpu-box:8000/v1#MODEL")


def test_is_remote():
    assert R.is_remote(" HTTP://x") and R.is_remote("https://h") and R.is_remote("http://")
    assert not R.is_remote("model.gguf") and not R.is_remote("httpx.gguf") and not R.is_remote(Path("http://x"))
    assert not R.is_remote(None)


# --- the key ---------------------------------------------------------------------------------------------


def test_the_key_is_the_first_variable_set(monkeypatch):
    assert R.api_key() == (None, None)
    monkeypatch.setenv("OPENAI_API_KEY", " sk-openai ")
    assert R.api_key() == ("sk-openai", "OPENAI_API_KEY")
    monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", "   ")  # blank: not set
    assert R.api_key() == ("sk-openai", "OPENAI_API_KEY")
    monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", "!sk~")  # the printable ASCII ends
    assert R.api_key() == ("!sk~", "LOCALAUG_REMOTE_API_KEY")
    for bad in ("sk key", "sk\x7f", "clé"):
        monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", bad)
        with pytest.raises(UsageError) as e:
            R.api_key()
        assert str(e.value) == ("LOCALAUG_REMOTE_API_KEY holds spaces or characters an HTTP header cannot carry: set it to "
                                "the key alone")
    assert R.KEY_ENVS == ("LOCALAUG_REMOTE_API_KEY", "OPENAI_API_KEY")


def test_the_headers_of_each_request(monkeypatch):
    with Loopback(lambda seen: Reply(200, {"data": [{"id": "m"}]})) as server:
        c, _ = client(server)
        assert c.models() == ["m"]
        monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", KEY)
        keyed, _ = client(server)
        keyed.call("POST", "/x", {"a": "é\ud800"})
        keyed.close()
        c.close()
    get, post = server.seen
    assert (get.method, get.path, post.method, post.path) == ("GET", "/v1/models", "POST", "/v1/x")
    assert get.headers["Accept"] == "application/json" and get.headers["User-Agent"] == f"localaug/{__version__}"
    assert "Content-Type" not in get.headers and "Authorization" not in get.headers
    assert post.headers["Content-Type"] == "application/json" and post.headers["Authorization"] == f"Bearer {KEY}"
    assert post.body == b'{"a": "\\u00e9\\ud800"}'  # ASCII JSON: a lone surrogate travels as an escape


# --- failures, one at a time --------------------------------------------------------------------------------


def test_remote_failure_text():
    f = RemoteFailure("head", 503, True, 2.0, ": tail")
    assert str(f) == "head: tail" and (f.head, f.tail, f.status, f.retryable, f.retry_after) == ("head", ": tail", 503, True, 2.0)
    g = f.after(4)
    assert str(g) == "head after 4 attempts: tail" and (g.status, g.retryable, g.retry_after) == (503, False, None)
    assert (RemoteFailure("h").status, RemoteFailure("h").retryable, RemoteFailure("h").retry_after, str(RemoteFailure("h"))) == (
        None, False, None, "h")


@pytest.mark.parametrize("status", [400, 404, 408, 409, 413, 422, 499])
def test_a_client_error_fails_at_once_with_the_servers_message(status):
    with Loopback(always(status, {"error": {"message": "no such thing", "type": "invalid"}})) as server:
        c, waits = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered {status}: no such thing"
    assert (e.value.status, e.value.retryable, len(server.seen), waits.waits) == (status, False, 1, [])


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_429_and_5xx_are_retried_with_doubling_backoff(status):
    random.seed(11)
    with Loopback(always(status, {"detail": "busy"})) as server:
        c, waits = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("POST", "/chat/completions", {})
    assert str(e.value) == f"{server.url}/v1 answered {status} after 4 attempts: busy"
    assert (e.value.status, e.value.retryable, len(server.seen)) == (status, False, 4)
    f = jitter(11, 3)
    assert waits.waits == pytest.approx([0.5 * f[0], 1.0 * f[1], 2.0 * f[2]], rel=1e-12)


def test_the_backoff_is_capped_and_the_retries_counted():
    random.seed(3)
    with Loopback(always(503)) as server:
        c, waits = client(server, retries=5, backoff=2.0, max_backoff=5.0)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered 503 after 6 attempts: (no message)" and len(server.seen) == 6
    f = jitter(3, 5)
    assert waits.waits == pytest.approx([2.0 * f[0], 4.0 * f[1], 5.0 * f[2], 5.0 * f[3], 5.0 * f[4]], rel=1e-12)


def test_no_retries_means_one_attempt_and_no_count():
    with Loopback(always(500, "oops")) as server:
        c, waits = client(server, retries=0)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered 500: oops" and len(server.seen) == 1 and waits.waits == []


def test_a_retry_that_succeeds_returns_the_answer():
    answers = iter([Reply(503), Reply(429), Reply(200, {"ok": 1})])
    random.seed(5)
    with Loopback(lambda seen: next(answers)) as server:
        c, waits = client(server)
        assert c.call("GET", "/models") == {"ok": 1}
    f = jitter(5, 2)
    assert len(server.seen) == 3 and waits.waits == pytest.approx([0.5 * f[0], 1.0 * f[1]], rel=1e-12)


@pytest.mark.parametrize(("header", "want"), [("2.5", [2.5, 2.5]), ("100", [30.0, 30.0]), ("0", None), ("-1", None),
                                              ("soon", None), (" 7 ", [7.0, 7.0])])
def test_retry_after_is_honoured_up_to_a_bound(header, want):
    random.seed(9)
    with Loopback(always(503, b"", {"Retry-After": header})) as server:
        c, waits = client(server, retries=2)
        with pytest.raises(RemoteFailure):
            c.call("GET", "/models")
    f = jitter(9, 2)
    assert waits.waits == pytest.approx(want or [0.5 * f[0], 1.0 * f[1]], rel=1e-12)


def test_retry_after_under_a_second_counts():
    with Loopback(always(503, b"", {"Retry-After": "0.5"})) as server:
        c, waits = client(server, retries=1, backoff=0.1)
        with pytest.raises(RemoteFailure):
            c.call("GET", "/models")
    assert waits.waits == [0.5]


def test_retry_after_never_shortens_the_backoff():
    random.seed(2)
    with Loopback(always(429, b"", {"Retry-After": "0.1"})) as server:
        c, waits = client(server, retries=1, backoff=4.0)
        with pytest.raises(RemoteFailure):
            c.call("GET", "/models")
    assert waits.waits == pytest.approx([4.0 * jitter(2, 1)[0]], rel=1e-12)


def test_the_retry_after_bound_is_an_option():
    with Loopback(always(503, b"", {"Retry-After": "9"})) as server:
        c, waits = client(server, retries=1, max_retry_after=4.0)
        with pytest.raises(RemoteFailure):
            c.call("GET", "/models")
    assert waits.waits == [4.0]


def test_a_key_the_server_wants_or_refuses(monkeypatch):
    with Loopback(always(401, {"error": {"message": "Invalid API key"}})) as server:
        c, waits = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
        assert str(e.value) == (f"{server.url}/v1 needs an API key (401: Invalid API key): set LOCALAUG_REMOTE_API_KEY (or "
                                "OPENAI_API_KEY) to the server's key")
        assert (e.value.status, e.value.retryable, len(server.seen), waits.waits) == (401, False, 1, [])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with Loopback(always(403, {"error": {"message": f"key {KEY} is not allowed"}})) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == (f"{server.url}/v1 refused the API key in OPENAI_API_KEY (403: key *** is not allowed): set "
                            "OPENAI_API_KEY to the server's key")
    assert server.seen[0].headers["Authorization"] == f"Bearer {KEY}"


def test_an_echoed_key_is_scrubbed_from_every_message(monkeypatch):
    monkeypatch.setenv("LOCALAUG_REMOTE_API_KEY", KEY)
    with Loopback(always(400, {"error": {"message": f"bad key {KEY}!"}})) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered 400: bad key ***!"


@pytest.mark.parametrize(("body", "said"), [
    ({"error": {"message": "m1"}}, "m1"),
    ({"error": "m2"}, "m2"),
    ({"detail": "m3"}, "m3"),
    ({"message": "m4"}, "m4"),
    ({"error": {"message": "  "}, "detail": "d5", "message": "not this"}, "d5"),
    ({"error": {"message": 5}, "message": "m6"}, "m6"),
    ({"error": {"code": 1}}, '{"error": {"code": 1}}'),
    ([1, 2], "[1, 2]"),
    (b"plain\n   text\tto read", "plain text to read"),
    (b"  \n ", "(no message)"),
    (b"", "(no message)"),
    (b"caf\xc3\xa9 \xff", "café \ufffd"),
    ("w" * 300, "w" * 300),
    ("w" * 301, "w" * 300 + "…"),
])
def test_the_servers_message_in_one_line(body, said):
    with Loopback(always(400, body)) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered 400: {said}"


def test_only_the_first_64_kib_of_an_error_answer_is_read_for_its_message():
    pad = (64 << 10) - len('{"error": {"message": "hidden"}, "pad": "') + 10
    body = json.dumps({"error": {"message": "hidden"}, "pad": "p" * pad})
    assert (64 << 10) < len(body) < (65 << 10)
    with Loopback(always(400, body)) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1 answered 400: " + body[:300] + "…"  # cut: not JSON any more, read as text


@pytest.mark.parametrize("body", [b"<html>not json</html>", b"[" * 100_000])
def test_a_2xx_that_is_not_json_is_not_retried(body):
    with Loopback(always(200, body)) as server:
        c, waits = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == f"{server.url}/v1/models answered 200 with something that is not JSON"
    assert (e.value.status, len(server.seen), waits.waits) == (200, 1, [])


def test_a_2xx_other_than_200_is_an_answer():
    with Loopback(always(201, {"ok": True})) as server:
        c, _ = client(server)
        assert c.call("GET", "/models") == {"ok": True}
    with Loopback(always(299, [])) as server:
        c, _ = client(server)
        assert c.call("GET", "/models") == []
    with Loopback(always(300, "redirect")) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure, match="answered 300: redirect$"):
            c.call("GET", "/models")


def test_a_reply_is_read_up_to_the_limit():
    limit = 1 << 20
    exact = b'"' + b"x" * (limit - 2) + b'"'
    with Loopback(lambda seen: Reply(200, exact if seen.path.endswith("exact") else exact + b" ")) as server:
        c, waits = client(server, max_response_bytes=limit)
        assert c.call("GET", "/exact") == "x" * (limit - 2)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/over")
        assert str(e.value) == f"{server.url}/v1/over answered with more than 1 MiB: lower max_tokens"
        assert (e.value.status, e.value.retryable, len(server.seen), waits.waits) == (200, False, 2, [])
        assert c.call("GET", "/exact") == "x" * (limit - 2)  # the connection was dropped, a new one carries on
    assert [s.connection for s in server.seen] == [1, 1, 2]
    assert R.RemoteOptions().max_response_bytes == 8 << 20


def test_a_reply_over_the_limit_is_not_read_to_its_end():
    with Loopback(always(200, b'"' + b"x" * (32 << 20) + b'"')) as server:
        c, _ = client(server, max_response_bytes=1 << 20, retries=0)
        with pytest.raises(RemoteFailure, match="more than 1 MiB"):
            c.call("GET", "/models")
        deadline = time.monotonic() + 5
        while not server.unsent and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.unsent == 1  # the client hung up after the limit: the rest was never taken


# --- the connection -------------------------------------------------------------------------------------


def test_a_server_that_cannot_be_reached_is_retried_then_named():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    c = RemoteClient(url)
    c._closed = waits = Waits()
    random.seed(4)
    with pytest.raises(RemoteFailure) as e:
        c.models()
    assert str(e.value) == f"cannot reach {url} (Connection refused) after 4 attempts: check the URL and that the server is running"
    assert e.value.status is None and len(waits.waits) == 3


def test_a_server_that_does_not_answer_in_time():
    release = threading.Event()
    with Loopback(lambda seen: (release.wait(5), Reply(200, {}))[1]) as server:
        c, waits = client(server, read_timeout=0.3, retries=1)
        t0 = time.monotonic()
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
        took = time.monotonic() - t0
        release.set()
    assert str(e.value) == f"cannot reach {server.url}/v1 (timed out) after 2 attempts: check the URL and that the server is running"
    assert 0.5 < took < 3 and len(server.seen) == 2 and len(waits.waits) == 1


def test_a_connection_closed_without_an_answer():
    with Loopback(lambda seen: Reply(drop=True)) as server:
        c, waits = client(server, retries=0)
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    assert str(e.value) == (f"cannot reach {server.url}/v1 (Remote end closed connection without response): check the URL "
                            "and that the server is running")
    assert len(server.seen) == 1  # a new connection that fails is not tried again at once


@contextlib.contextmanager
def not_http(status_line: bytes):
    """A server on loopback that answers every request with ``status_line`` and hangs up."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(status_line + b"\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
    finally:
        srv.close()


def test_a_server_that_does_not_speak_http_is_named_in_one_line():
    with not_http(b"HELLO  there") as url:
        with pytest.raises(RemoteFailure) as e:
            RemoteClient(url, RemoteOptions(retries=0)).call("GET", "/models")
    assert str(e.value) == f"cannot reach {url} (HELLO there): check the URL and that the server is running"
    with not_http(b"X" * 400) as url:
        with pytest.raises(RemoteFailure) as e:
            RemoteClient(url, RemoteOptions(retries=0)).call("GET", "/models")
    assert str(e.value) == f"cannot reach {url} ({'X' * 300}…): check the URL and that the server is running"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_does_not_accept_in_time(scheme):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)  # one connection waiting to be accepted fills it: the next one's handshake is not answered
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        c = RemoteClient(f"{scheme}://127.0.0.1:{port}/v1", RemoteOptions(connect_timeout=0.3, retries=0))
        t0 = time.monotonic()
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
        assert time.monotonic() - t0 < 5
    finally:
        filler.close()
        srv.close()
    assert str(e.value) == f"cannot reach {scheme}://127.0.0.1:{port}/v1 (timed out): check the URL and that the server is running"


def test_tls_to_a_plain_http_server_is_named_as_tls():
    with Loopback(always(200, {})) as server:
        c = RemoteClient(server.url.replace("http://", "https://") + "/v1", RemoteOptions(retries=0))
        with pytest.raises(RemoteFailure) as e:
            c.call("GET", "/models")
    head = f"cannot reach {server.url.replace('http://', 'https://')}/v1 (TLS: "
    assert str(e.value).startswith(head)  # OpenSSL's short reason, e.g. WRONG_VERSION_NUMBER
    assert re.fullmatch(r"[A-Z_]+\): check the URL and that the server is running", str(e.value)[len(head):])


def test_a_keep_alive_connection_is_reused_and_one_the_server_dropped_is_replaced_at_once():
    answers = iter([Reply(200, [1]), Reply(200, [2], hang_up=True), Reply(200, [3]), Reply(200, [4])])
    with Loopback(lambda seen: next(answers)) as server:
        c, waits = client(server)
        assert [c.call("GET", "/models") for _ in range(4)] == [[1], [2], [3], [4]]
    assert [s.connection for s in server.seen] == [1, 1, 2, 2] and waits.waits == []


def test_after_a_connection_close_answer_a_new_connection_reads_with_the_read_timeout():
    calls = []

    def answer(seen: Seen) -> Reply:
        calls.append(seen)
        if len(calls) == 2:
            time.sleep(0.4)  # longer than the connect timeout, well within the read timeout
        return Reply(200, [len(calls)], {"Connection": "close"} if len(calls) == 1 else {})

    with Loopback(answer) as server:
        c, _ = client(server, connect_timeout=0.2, read_timeout=5, retries=0)
        assert c.call("GET", "/a") == [1] and c.call("GET", "/b") == [2]
    assert [s.connection for s in server.seen] == [1, 2]


def test_close_ends_a_request_in_flight_and_any_retry():
    release = threading.Event()
    with Loopback(lambda seen: (release.wait(10), Reply(503))[1]) as server:
        c = RemoteClient(f"{server.url}/v1", RemoteOptions(backoff=30))
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RemoteFailure, c.call, "GET", "/models").value))
        t.start()
        deadline = time.monotonic() + 5
        while not server.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        c.close()
        t.join(5)
        release.set()
    assert not t.is_alive() and time.monotonic() - t0 < 3
    [e] = errors
    assert str(e).startswith(f"cannot reach {server.url}/v1 (") and " after " not in str(e) and len(server.seen) == 1
    with pytest.raises(RemoteFailure) as closed:
        c.call("GET", "/models")
    assert str(closed.value) == f"{server.url}/v1: the client is closed" and closed.value.retryable is False


def test_close_stops_the_wait_before_a_retry():
    with Loopback(always(503, "busy")) as server:
        c = RemoteClient(f"{server.url}/v1", RemoteOptions(backoff=30, max_backoff=30))
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RemoteFailure, c.call, "GET", "/models").value))
        t.start()
        deadline = time.monotonic() + 5
        while not server.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        c.close()
        t.join(5)
    assert not t.is_alive()
    [e] = errors
    assert str(e) == f"{server.url}/v1 answered 503: busy" and len(server.seen) == 1


# --- models and chat ------------------------------------------------------------------------------------


def test_models_lists_the_ids():
    with Loopback(always(200, {"data": [{"id": "a"}, {"id": 7}, {"id": None}, "x", {"name": "b"}, {"id": "c"}]})) as server:
        c, _ = client(server)
        assert c.models() == ["a", "7", "c"]
    for body in ({"data": {"id": "a"}}, [{"id": "a"}], {"models": []}):
        with Loopback(always(200, body)) as server:
            c, _ = client(server)
            with pytest.raises(RemoteFailure) as e:
                c.models()
        assert str(e.value) == f"{server.url}/v1/models answered without a data list: is this an OpenAI-compatible server?"


CHAT = Chat(({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a lake."}))


def test_a_chat_request_and_its_answer():
    with Loopback(always(200, completion("West Lake.", "length", {"prompt_tokens": 12, "completion_tokens": "3"}))) as server:
        c, _ = client(server)
        gen = c.chat("judge-7b", CHAT, SamplingParams(temperature=0.3, top_p=0.9, max_tokens=5, seed=11), ("\n", "###"))
    assert server.seen[0].path == "/v1/chat/completions"
    assert server.seen[0].body == json.dumps(
        {"model": "judge-7b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a lake."}],
         "temperature": 0.3, "top_p": 0.9, "max_tokens": 5, "seed": 11, "stop": ["\n", "###"]}).encode()
    assert (gen.text, gen.tokens, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens) == ("West Lake.", [], "length", 12, 3)
    assert 0 <= gen.seconds == gen.first_token_seconds < 5 and gen.reported_completion_tokens == 3


def test_a_chat_request_without_seed_or_stop_and_a_bare_answer():
    with Loopback(always(200, {"choices": [{"message": {"content": None}, "finish_reason": "eos"}], "usage": None})) as server:
        c, _ = client(server)
        gen = c.chat("m", CHAT, SamplingParams(temperature=0.0, top_p=1.0, max_tokens=9, seed=None), ())
    assert set(server.seen[0].json()) == {"model", "messages", "temperature", "top_p", "max_tokens"}
    assert (gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens) == ("", "stop", 0, 0)
    with Loopback(always(200, {"choices": [{"message": {"content": "hi"}}]})) as server:
        c, _ = client(server)
        gen = c.chat("m", CHAT, SamplingParams(seed=0), ())
    assert server.seen[0].json()["seed"] == 0 and (gen.text, gen.finish_reason) == ("hi", "stop")


@pytest.mark.parametrize(("body", "why"), [
    ({}, "KeyError"), ({"choices": []}, "IndexError"), ({"choices": [{"message": {"content": 5}}]}, "TypeError"),
    ({"choices": [{"message": "text"}]}, "AttributeError"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}, "ValueError"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"completion_tokens": [1]}}, "TypeError"),
    ({"choices": None}, "TypeError"),
])
def test_an_answer_without_a_message_is_named(body, why):
    with Loopback(always(200, body)) as server:
        c, _ = client(server)
        with pytest.raises(RemoteFailure) as e:
            c.chat("m", CHAT, SamplingParams(), ())
    assert str(e.value) == f"{server.url}/v1/chat/completions answered without choices[0].message.content ({why})"


# --- the model a URL names ------------------------------------------------------------------------------


def test_a_remote_model_is_its_url_and_name():
    m = RemoteModel("http://h:8000/v1", "qwen")
    assert m.identity() == {"url": "http://h:8000/v1", "model": "qwen"} and str(m) == "http://h:8000/v1#qwen"
    assert m.digest() == hashlib.sha256(b'{"model": "qwen", "url": "http://h:8000/v1"}').hexdigest()


def models_server(names: list[str] | None, status: int = 200):
    return Loopback(lambda seen: Reply(status, {"data": [{"id": n} for n in names or []]} if status == 200 else {"detail": "nope"}))


def test_connect_settles_the_model_name():
    with models_server(["solo"]) as s:
        assert R.connect(Endpoint(f"{s.url}/v1", None)) == RemoteModel(f"{s.url}/v1", "solo")
    with models_server(["a", "b"]) as s:
        base = f"{s.url}/v1"
        assert R.connect(Endpoint(base, "b")) == RemoteModel(base, "b")
        with pytest.raises(UsageError) as e:
            R.connect(Endpoint(base, None))
        assert str(e.value) == f"{base} serves 2 models (a, b): name one as {base}#MODEL"
        with pytest.raises(UsageError) as e:
            R.connect(Endpoint(base, "c"))
        assert str(e.value) == f"{base} does not serve 'c' (it serves a, b): name one as {base}#MODEL"
    with models_server([]) as s:
        base = f"{s.url}/v1"
        with pytest.raises(UsageError) as e:
            R.connect(Endpoint(base, None))
        assert str(e.value) == f"{base} lists no models: name one as {base}#MODEL"
        with pytest.raises(UsageError) as e:
            R.connect(Endpoint(base, "x"))
        assert str(e.value) == f"{base} does not serve 'x' (it serves ): name one as {base}#MODEL"


def test_connect_lists_ten_names_at_most():
    names = [f"m{i}" for i in range(12)]
    with models_server(names) as s:
        with pytest.raises(UsageError) as e:
            R.connect(Endpoint(f"{s.url}/v1", None))
    assert str(e.value) == f"{s.url}/v1 serves 12 models (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, … 2 more): name one as {s.url}/v1#MODEL"
    assert R._listing(names[:10]) == "m0, m1, m2, m3, m4, m5, m6, m7, m8, m9"
    assert R._listing(names[:11]) == "m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, … 1 more"


def test_connect_without_a_model_list():
    with models_server(None, 404) as s:
        base = f"{s.url}/v1"
        assert R.connect(Endpoint(base, "named")) == RemoteModel(base, "named")  # a server that lists none: as given
        with pytest.raises(RemoteError) as e:
            R.connect(Endpoint(base, None))
        assert str(e.value) == f"{base} answered 404: nope"
    with models_server(None, 500) as s:
        with pytest.raises(RemoteError) as e:
            R.connect(Endpoint(f"{s.url}/v1", "named"), RemoteOptions(retries=0))
        assert str(e.value) == f"{s.url}/v1 answered 500: nope" and len(s.seen) == 1


# --- the backend ----------------------------------------------------------------------------------------


def echo(seen: Seen) -> Reply:
    body = seen.json()
    text = body["messages"][-1]["content"]
    if "FAIL" in text:
        return Reply(400, {"error": {"message": "refused"}})
    said = f"{text}|{body.get('seed')}" + (f"|{body['model']}|{body['stop']}" if "stop" in body else "")
    return Reply(200, completion(said, usage={"prompt_tokens": 1, "completion_tokens": 2}))


def chat(text: str) -> Chat:
    return Chat(({"role": "user", "content": text},))


def test_the_backend_runs_every_sample_with_seed_plus_k():
    with Loopback(echo) as server, R.open_remote(RemoteModel(f"{server.url}/v1", "m"), 2) as backend:
        assert isinstance(backend, R.RemoteBackend) and backend.parallel == 2
        results = list(backend.run([
            Request("two", chat("a"), SamplingParams(seed=5), (), 2),
            Request("stop", chat("s"), SamplingParams(seed=0), ("\n",)),
            Request("random", chat("b"), SamplingParams(seed=None)),
            Request("none", chat("c"), SamplingParams(seed=1), (), 0),
            Request("text", "a rendered prompt", SamplingParams(), (), 2),
            Request("text0", "a rendered prompt", SamplingParams(), (), 0),
            Request("bad", chat("FAIL"), SamplingParams(seed=0)),
            Request("odd", Chat(({"role": "user", "content": object()},)), SamplingParams(seed=0)),
        ]))
    got = sorted((r.id, r.index, r.generation.text if r.generation else r.error) for r in results)
    assert got == [
        ("bad", 0, f"{server.url}/v1 answered 400: refused"),
        ("odd", 0, "TypeError: Object of type object is not JSON serializable"),
        ("random", 0, "b|None"),
        ("stop", 0, "s|0|m|['\\n']"),
        ("text", 0, "a remote model takes chat messages, not prompt text"),
        ("text", 1, "a remote model takes chat messages, not prompt text"),
        ("text0", 0, "a remote model takes chat messages, not prompt text"),
        ("two", 0, "a|5"), ("two", 1, "a|6"),
    ]
    assert all(r.generation.completion_tokens == 2 for r in results if r.generation)
    assert len(server.seen) == 5


def test_the_backend_sends_with_its_options():
    with Loopback(always(503)) as server, R.open_remote(RemoteModel(f"{server.url}/v1", "m"), 1, RemoteOptions(retries=0)) as b:
        [result] = list(b.run([Request("r", chat("x"), SamplingParams())]))
    assert result.error == f"{server.url}/v1 answered 503: (no message)" and len(server.seen) == 1


@pytest.mark.parametrize("parallel", [1, 3, 40])
def test_at_most_parallel_requests_are_in_flight_and_requests_are_pulled_as_room_frees(parallel):
    gate = threading.Semaphore(0)

    def held(seen: Seen) -> Reply:
        gate.acquire(timeout=5)
        return echo(seen)

    pulled = []

    def requests():
        for i in range(parallel + 4):
            pulled.append(i)
            yield Request(str(i), chat(f"q{i}"), SamplingParams(seed=i))

    with Loopback(held) as server, R.open_remote(RemoteModel(f"{server.url}/v1", "m"), parallel) as backend:
        it = backend.run(requests())
        firsts = []
        first = threading.Thread(target=lambda: firsts.append(next(it)))
        first.start()
        deadline = time.monotonic() + 5
        while len(server.seen) < parallel and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # room for a request too many to arrive
        assert len(server.seen) == parallel and pulled == list(range(parallel))
        workers = [t for t in threading.enumerate() if t.name.startswith("localaug-remote")]
        assert len(workers) == parallel
        gate.release()  # one answer: it comes back while the others are still held
        first.join(5)
        assert len(firsts) == 1 and server.in_flight == parallel - 1
        for _ in range(parallel + 3):
            gate.release()
        rest = list(it)
    assert sorted(int(r.id) for r in [*firsts, *rest]) == list(range(parallel + 4)) and pulled == list(range(parallel + 4))
    assert server.most_in_flight == parallel


def test_a_closed_backend_runs_nothing_and_closes_once():
    backend = R.RemoteBackend(RemoteModel("http://127.0.0.1:9/v1", "m"), 1)
    backend.close()
    backend.close()
    with pytest.raises(AssertionError) as e:
        next(backend.run([]))
    assert str(e.value) == "the backend is closed"
    with pytest.raises(UsageError) as e:
        R.RemoteBackend(RemoteModel("http://127.0.0.1:9/v1", "m"), 0)
    assert e.value.template == f"{opt('parallel')} must be at least 1"
    with R.RemoteBackend(RemoteModel("http://h/v1", "m")) as default:
        assert R.DEFAULT_PARALLEL == 8 and default.parallel == 8


def test_close_ends_the_samples_in_flight_and_their_threads():
    release = threading.Event()
    with Loopback(lambda seen: (release.wait(10), echo(seen))[1]) as server:
        backend = R.open_remote(RemoteModel(f"{server.url}/v1", "m"), 2)
        results: list = []
        runner = threading.Thread(target=lambda: results.extend(backend.run([Request("r", chat("q"), SamplingParams(seed=0), (), 2)])))
        runner.start()
        deadline = time.monotonic() + 5
        while len(server.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        backend.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("localaug-remote")]  # joined
        runner.join(3)
        took = time.monotonic() - t0
        release.set()
    assert not runner.is_alive() and took < 3
    assert sorted(r.index for r in results) == [0, 1] and all(r.error.startswith(f"cannot reach {server.url}/v1 (") for r in results)


def test_a_backend_whose_construction_failed_closes_quietly():
    half = R.RemoteBackend.__new__(R.RemoteBackend)  # what __del__ sees after __init__ refused its arguments
    half.close()
    assert half._pool is None
