"""Hostile input against `localaug serve`: no request (nor a model's own chat template) can stop a
model from serving the others. Each case was a real failure: a 503 followed by a scheduler that
hung forever, a frozen event loop, a 500 for a client's mistake, a field silently ignored.

Ends with a soak: random request bodies built from the server's own schemas (valid, boundary and
invalid values, odd Unicode) for a bounded time, after which the server still answers a plain
request exactly as the engine does.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from http_fixture import running

from localaug.family import prompts
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams
from localaug.serve.app import _Watchdog, unhealthy
from localaug.serve.handlers import Limits, ServerConfig
from localaug.serve.scheduler import MAX_RESTARTS, Scheduler, ServedModel, load_model

OPTS = EngineOptions(threads=1, kv_f32=True)
LIMITS = Limits(max_tokens=64, max_n=4, max_body_bytes=64 * 1024)
NESTED_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"


def chat(text: str) -> str:
    return prompts.qwen2_chatml([{"role": "user", "content": text}])


def with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of checkpoint ``src`` (weights hard-linked) whose tokenizer carries ``template``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "tokenizer_config.json":
            os.link(f, dst / f.name)
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def hostile_gguf(qwen2_tied: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from localaug.convert import convert_checkpoint

    folder = tmp_path_factory.mktemp("hostile")
    ckpt = with_template(qwen2_tied, folder / "hostile-template", NESTED_LOOP)
    return convert_checkpoint(ckpt, folder / "hostile.Q8_0.gguf", "Q8_0").path


@pytest.fixture(scope="module")
def models(converted, hostile_gguf: Path) -> Iterator[list[ServedModel]]:
    tiny = load_model(converted("tied", "F32"), name="tiny", prompt_format="qwen2-chatml", opts=OPTS, parallel=4, n_ctx=512)
    hostile = load_model(hostile_gguf, name="hostile", opts=OPTS, parallel=2, n_ctx=512)  # teacher mode: its template
    yield [tiny, hostile]
    for m in (tiny, hostile):
        m.close()


@pytest.fixture(scope="module")
def url(models: list[ServedModel]) -> Iterator[str]:
    with running(models, ServerConfig(limits=LIMITS)) as base:
        yield base


def post(url: str, path: str, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=timeout)
    return httpx.post(f"{url}{path}", json=body, timeout=timeout)


def plain_request_works(url: str, engine_text: str) -> None:
    r = post(url, "/v1/completions", {"model": "tiny", "prompt": chat("a poem about rain"), "max_tokens": 8,
                                      "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == engine_text, r.text
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


@pytest.fixture(scope="module")
def reference(converted) -> str:
    with Engine(converted("tied", "F32"), EngineOptions(threads=1, n_ctx=512, kv_f32=True)) as eng:
        return eng.generate(chat("a poem about rain"), SamplingParams(temperature=0, max_tokens=8)).text


# --- D1: one request cannot stop a model ------------------------------------------------------------


def test_repeat_penalty_works_and_the_model_keeps_serving(url: str, reference: str) -> None:
    r = post(url, "/v1/refine", {"model": "tiny", "text": "hi", "max_tokens": 4, "repeat_penalty": 1.1})
    assert r.status_code == 200, r.text
    plain_request_works(url, reference)


def test_a_lone_surrogate_is_the_clients_400(url: str, reference: str) -> None:
    for path, body in (("/v1/completions", b'{"model": "tiny", "prompt": "hi", "stop": ["\\udc80"], "max_tokens": 4}'),
                       ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 4}'),
                       ("/v1/refine", b'{"text": "\\udfff", "max_tokens": 4}')):
        r = post(url, path, body)
        assert r.status_code == 400 and "unpaired surrogate" in r.json()["error"]["message"], (path, r.text)
    plain_request_works(url, reference)


def test_empty_completion_prompt_is_a_400(url: str) -> None:
    r = post(url, "/v1/completions", {"model": "tiny", "prompt": "", "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_a_request_that_cannot_start_fails_alone(url: str, models: list[ServedModel], reference: str, monkeypatch) -> None:
    import localaug.runtime.batch as batch

    real = batch.make_sampler

    def refuse_one(p, n_vocab, vocab=None):
        if p.seed == 4242:
            raise RuntimeError("this sampler cannot be made")
        return real(p, n_vocab, vocab)

    monkeypatch.setattr(batch, "make_sampler", refuse_one)
    body = {"model": "tiny", "prompt": chat("a poem about rain"), "max_tokens": 8, "temperature": 0}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda seed: post(url, "/v1/completions", {**body, "seed": seed}), [4242, 1, 2, 3]))
    assert results[0].status_code == 500 and "cannot be made" in results[0].json()["error"]["message"]
    assert all(r.status_code == 200 and r.json()["choices"][0]["text"] == reference for r in results[1:])
    assert models[0].scheduler.stats.restarts == 0  # nothing had to restart: the failure stayed with its request
    plain_request_works(url, reference)


def test_a_scheduler_that_crashes_restarts_then_gives_up_visibly(converted, monkeypatch) -> None:
    m = load_model(converted("tied", "F32"), name="tiny", prompt_format="qwen2-chatml", opts=OPTS, parallel=2, n_ctx=256)
    try:
        with running([m], ServerConfig(limits=LIMITS)) as base:
            real = Scheduler._pull  # a fault outside any one request: in the loop that admits them
            crashes = {"left": 1}

            def crash(self):
                request = real(self)
                if request is not None and crashes["left"]:
                    crashes["left"] -= 1
                    raise RuntimeError("injected scheduler fault")
                return request

            monkeypatch.setattr(Scheduler, "_pull", crash)
            body = {"prompt": chat("x"), "max_tokens": 4, "temperature": 0}
            first = post(base, "/v1/completions", body)
            assert first.status_code == 500 and "internal error" in first.json()["error"]["message"]
            assert post(base, "/v1/completions", body).status_code == 200  # restarted, serving
            assert m.scheduler.stats.restarts == 1 and httpx.get(f"{base}/health").status_code == 200
            crashes["left"] = 10 * MAX_RESTARTS  # now it keeps failing: it gives up, and says so
            for _ in range(MAX_RESTARTS + 1):
                post(base, "/v1/completions", body)
            deadline = time.monotonic() + 10
            while m.scheduler.healthy and time.monotonic() < deadline:
                time.sleep(0.05)
            health = httpx.get(f"{base}/health")
            assert health.status_code == 503 and "injected scheduler fault" in health.json()["models"]["tiny"]
            r = post(base, "/v1/completions", body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
            # and `localaug serve` stops, so that a supervisor restarts it
            server = type("Server", (), {"should_exit": False})()
            watchdog = _Watchdog([m], server, every=0.01)
            time.sleep(0.3)
            watchdog.stop()
            assert server.should_exit and watchdog.down == unhealthy([m])
    finally:
        m.close()


# --- D2: a model's own template cannot freeze the server --------------------------------------------


def test_a_runaway_chat_template_is_a_quick_5xx_and_health_keeps_answering(url: str, reference: str) -> None:
    done = threading.Event()
    seconds: list[float] = []

    def ask() -> httpx.Response:
        started = time.monotonic()
        try:
            return post(url, "/v1/refine", {"model": "hostile", "text": "hi", "max_tokens": 4})
        finally:
            seconds.append(time.monotonic() - started)
            done.set()

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(ask)
        while not done.is_set():  # the event loop answers while the template runs (on a worker thread)
            t0 = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)
        r = future.result()
    assert r.status_code == 500 and "chat template was stopped" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "server_error" and seconds[0] < 10
    chat_r = post(url, "/v1/chat/completions", {"model": "hostile", "messages": [{"role": "user", "content": "hi"}]})
    assert chat_r.status_code == 500
    plain_request_works(url, reference)


# --- fields that change the reply are honoured or refused, never ignored ------------------------------


def test_response_format_json_schema_is_followed(smollm2: Path) -> None:
    m = load_model(smollm2, name="smol", opts=EngineOptions(threads=1), parallel=1, n_ctx=512)
    try:
        with running([m], ServerConfig(limits=Limits(max_tokens=128))) as base:
            schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": ["low", "high"]}},
                      "required": ["ok", "n"], "additionalProperties": False}
            body = {"messages": [{"role": "user", "content": "Answer in JSON: is water wet?"}], "temperature": 0,
                    "max_tokens": 64, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}
            r = post(base, "/v1/chat/completions", body)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            data = json.loads(choice["message"]["content"])
            assert choice["finish_reason"] == "stop" and set(data) == {"ok", "n"}
            assert isinstance(data["ok"], bool) and data["n"] in ("low", "high")
            loose = post(base, "/v1/chat/completions", {**body, "response_format": {"type": "json_object"}})
            assert loose.status_code == 200 and loose.json()["choices"][0]["message"]["content"].lstrip().startswith("{")
            if loose.json()["choices"][0]["finish_reason"] == "stop":
                json.loads(loose.json()["choices"][0]["message"]["content"])
            bad = post(base, "/v1/chat/completions", {**body, "response_format": {"type": "json_schema", "json_schema": {}}})
            assert bad.status_code == 400
    finally:
        m.close()


@pytest.mark.parametrize(("extra", "status"), [({"logit_bias": {"1": 5}}, 400), ({"tool_choice": "auto"}, 400),
                                               ({"functions": [{}]}, 400), ({"best_of": 3}, 400),
                                               ({"frobnicate": 1}, 400), ({"user": "u-1", "metadata": {"a": "b"}}, 200)])
def test_unknown_and_unsupported_openai_fields_are_refused_by_name(url: str, extra: dict, status: int) -> None:
    r = post(url, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra})
    assert r.status_code == status, r.text
    if status == 400:
        assert next(iter(extra)) in r.json()["error"]["message"]
    assert post(url, "/v1/refine", {"model": "tiny", "text": "hi", "max_tokens": 2, "temprature": 0}).status_code == 400


# --- soak: random bodies from the schemas -------------------------------------------------------------

ODD = ["", " ", "\x00", "\u202e", "🌈" * 50, "写一首诗", "\ufeff", "a" * 5000, "\\udc80", "{{ 7*7 }}", "<|im_end|>",
       "\n\n", "\t", "\r\n", "%s%n", "' OR 1=1 --"]
NUMBERS = [0, -1, 1, 2, 3, 7, 63, 64, 65, 2**31, 2**63, -(2**63) - 1, 1e309, -0.0, 0.5, 1.5, 2.5, float("nan")]


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(ODD)
    if kind in (1, 2):
        return rng.choice(NUMBERS)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(1, 20)))
    if kind == 5:
        return rng.choice(["tiny", "hostile", "nope", "user", "system", "assistant", "text", "json_object"])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


FIELDS = ["model", "prompt", "messages", "text", "seeds", "n", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "stream", "echo", "role", "content",
          "instruction", "response", "max_samples", "response_format", "type", "json_schema", "stream_options"]
VALID = {
    "/v1/completions": {"model": "tiny", "prompt": "hello", "max_tokens": 3},
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
    "/v1/refine": {"model": "tiny", "text": "hello", "max_tokens": 3},
    "/v1/expand": {"model": "tiny", "text": "hello", "n": 1, "max_tokens": 3},
    "/v1/pairs": {"model": "tiny", "seeds": [{"instruction": "a", "response": "b"}], "n": 1, "max_tokens": 3},
}


def _mutated(rng: random.Random) -> tuple[str, object]:
    path = rng.choice(list(VALID))
    body: dict = json.loads(json.dumps(VALID[path]))
    for _ in range(rng.randrange(1, 4)):
        move = rng.randrange(3)
        if move == 0:
            body[rng.choice(FIELDS)] = _value(rng)
        elif move == 1 and body:
            body.pop(rng.choice(list(body)))
        else:
            key = rng.choice(list(body) or ["x"])
            body[key] = _value(rng)
    return path, (body if rng.random() > 0.05 else rng.choice([[], "x", 3, None]))


def test_soak_random_bodies_never_break_the_server(url: str, reference: str, models: list[ServedModel]) -> None:
    rng = random.Random(20261130)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 240  # 60 requests take ~25 s on a quiet 2-core machine; a shared one is slower
    while sum(counts.values()) < 60 and time.monotonic() < deadline:
        path, body = _mutated(rng)
        try:
            raw = json.dumps(body, allow_nan=True).encode()
        except (TypeError, ValueError):
            continue
        raw = raw.replace(b'"\\\\udc80"', b'"\\udc80"')  # a real lone surrogate escape, now and then
        r = post(url, path, raw, timeout=60)
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        assert r.status_code < 500 or (r.status_code == 500 and "chat template" in r.text), (path, raw[:300], r.text)
        assert "error" in r.json() if r.status_code >= 400 else True
    assert sum(counts.values()) >= 50 and counts.get(200, 0) >= 5 and sum(v for k, v in counts.items() if 400 <= k < 500) >= 20
    assert all(m.scheduler.stats.restarts == 0 for m in models)
    plain_request_works(url, reference)
