"""`localaug serve`: the real server on loopback (uvicorn in a thread), driven by the openai client and httpx.

Models: the tiny random-weight Qwen2 fixture as a family model (F32 weights, F32 KV cache, so greedy
batched decoding is bit-identical to the single-sequence Engine) and SmolLM2-135M-Instruct in
teacher mode (a real chat template from GGUF metadata).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from http_fixture import running
from openai import APIStatusError, AuthenticationError, OpenAI
from scripted_fixture import SCRIPTS

from localaug.api import Augmenter
from localaug.family import prompts
from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams
from localaug.serve.app import Limits, ServerConfig
from localaug.serve.scheduler import CANCELLED, Scheduler, ServedModel, load_model

OPTS = EngineOptions(threads=1, kv_f32=True)
LIMITS = Limits(max_tokens=256, max_n=4, max_body_bytes=64 * 1024)
TEXTS = ["Create a travel guide for Hangzhou.", "写一份杭州旅游指南。", "a poem about rain", "how do magnets work"]


@pytest.fixture(scope="module")
def tiny_path(converted) -> Path:
    return converted("tied", "F32")


@pytest.fixture(scope="module")
def models(tiny_path: Path, smollm2: Path, scripted) -> Iterator[list[ServedModel]]:
    tiny = load_model(tiny_path, name="tiny", prompt_format="qwen2-chatml", opts=OPTS, parallel=4, n_ctx=512)
    smol = load_model(smollm2, name="smol", opts=EngineOptions(threads=1), parallel=2, n_ctx=1024)
    # scripted models (tests/scripted_fixture.py): replies known in advance that end
    pairs = load_model(scripted("pairs"), name="pairs", prompt_format="qwen2-response-pairs", opts=OPTS, parallel=2,
                       n_ctx=256)
    expand = load_model(scripted("expand"), name="expand", prompt_format="qwen2-chatml", opts=OPTS, parallel=2, n_ctx=256)
    yield [tiny, smol, pairs, expand]
    for m in (tiny, smol, pairs, expand):
        m.close()


@pytest.fixture(scope="module")
def url(models: list[ServedModel]) -> Iterator[str]:
    with running(models, ServerConfig(limits=LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def single(tiny_path: Path) -> Iterator[Engine]:
    with Engine(tiny_path, EngineOptions(threads=1, n_ctx=512, kv_f32=True)) as eng:
        yield eng


def chat(text: str) -> str:
    return prompts.qwen2_chatml([{"role": "user", "content": text}])


def metric(base: str, name: str, model: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def idle(base: str, model: str, timeout: float = 15) -> bool:
    """Whether the model's active sequences drop to 0 (the gauge is updated after each decode step)."""
    deadline = time.monotonic() + timeout
    while metric(base, "localaug_active_sequences", model) and time.monotonic() < deadline:
        time.sleep(0.05)
    return metric(base, "localaug_active_sequences", model) == 0


def assert_error(r: httpx.Response, status: int, fragment: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and isinstance(err["message"], str)
    assert fragment.lower() in err["message"].lower(), err["message"]
    return err


# --- the OpenAI client -------------------------------------------------------------------------


def test_models_list(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny", "smol", "pairs", "expand"]
    assert client.models.retrieve("smol").id == "smol"


def test_chat_greedy_equals_single_sequence_engine(client: OpenAI, single: Engine) -> None:
    want = single.generate(chat(TEXTS[0]), SamplingParams(temperature=0, max_tokens=16), prompts.QWEN2_STOP)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": TEXTS[0]}],
                                       max_tokens=16, temperature=0)
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == want.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert r.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_chat_stream_adds_up_to_the_non_streamed_reply(client: OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    whole = client.chat.completions.create(model="smol", messages=messages, max_completion_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="smol", messages=messages, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content and pieces
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n_and_seeded_samples(client: OpenAI) -> None:
    r = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].text == r.choices[1].text != ""
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    # the same seed, the same reply (once the prompt is in the prefix cache: the first, cold request
    # decodes the whole prompt in one batch, which llama.cpp's quantized kernels round differently)
    client.completions.create(model="smol", prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=7)
    a = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=7)
    b = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=7)
    assert a.choices[0].text == b.choices[0].text


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(APIStatusError) as e:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.status_code == 404 and "tiny" in str(e.value)


# --- task endpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def augmenter(tiny_path: Path) -> Iterator[Augmenter]:
    aug = Augmenter.load(tiny_path, prompt_format="qwen2-chatml", threads=1, kv_f32=True, n_ctx=512)
    yield aug
    aug.close()


def test_refine_greedy_equals_augmenter(url: str, augmenter: Augmenter) -> None:
    text = "Explain rainbows to a child. 🌈"
    r = httpx.post(f"{url}/v1/refine", json={"text": text, "model": "tiny", "temperature": 0, "max_tokens": 16}).json()
    assert r["output"] == augmenter.refine(text, temperature=0, max_tokens=16)
    assert r["model"] == "tiny" and r["input"] == text and r["finish_reason"] in ("stop", "length")
    assert r["usage"]["completion_tokens"] > 0


def test_expand_equals_augmenter_expand(url: str, augmenter: Augmenter) -> None:
    body = {"text": TEXTS[2], "n": 2, "seed": 11, "max_tokens": 8}
    r = httpx.post(f"{url}/v1/expand", json=body, timeout=60).json()
    want = augmenter.expand_full(TEXTS[2], n=2, seed=11, max_tokens=8)
    assert isinstance(r["instructions"], list) and all(isinstance(x, str) for x in r["instructions"])
    assert (r["instructions"], r["samples"], r["rejected"], r["shortfall"]) == (
        want.items, want.samples, want.rejected, want.shortfall)


def test_pairs_shape(url: str) -> None:
    body = {"model": "smol", "n": 1, "max_tokens": 48, "seed": 3,
            "seeds": [{"instruction": "Name three primary colors.", "response": "Red, yellow and blue."}]}
    r = httpx.post(f"{url}/v1/pairs", json=body, timeout=60).json()
    assert set(r) >= {"pairs", "samples", "rejected", "shortfall", "usage", "model"}
    assert all(set(p) == {"instruction", "response"} for p in r["pairs"])
    assert len(r["pairs"]) + r["shortfall"] == 1 and r["samples"] >= 1
    # every sample is either a pair (a teacher reply may hold more than one) or counted as rejected
    assert r["samples"] <= len(r["pairs"]) + sum(r["rejected"].values())


def test_pairs_are_parsed_and_every_sample_is_accounted_for(url: str) -> None:
    from localaug.family.prompts import parse_pairs

    script = [{"instruction": p.instruction, "response": p.response} for t in SCRIPTS["pairs"] for p in parse_pairs(t)]
    body = {"model": "pairs", "n": 2, "max_tokens": 48, "seed": 3, "temperature": 0.8,
            "seeds": [{"instruction": "Name a fruit.", "response": "Apple."}]}
    r = httpx.post(f"{url}/v1/pairs", json=body, timeout=60).json()
    assert len(r["pairs"]) == 2 and r["pairs"][0] != r["pairs"][1] and all(p in script for p in r["pairs"])
    assert r["samples"] == len(r["pairs"]) + sum(r["rejected"].values()) and r["shortfall"] == 0
    # a generated pair equal to a seed is an echo, not new data
    echo = httpx.post(f"{url}/v1/pairs", json={**body, "n": 3, "seeds": [{"instruction": "Name three primary colors.",
                                                                       "response": "Red."}]}, timeout=60).json()
    assert "Name three primary colors." not in [p["instruction"] for p in echo["pairs"]]
    assert echo["rejected"].get("echo", 0) >= 1 and echo["shortfall"] == 3 - len(echo["pairs"]) >= 1


def test_sampled_choices_use_seed_plus_k(client: OpenAI, scripted) -> None:
    messages = [{"role": "user", "content": "Seed: plan a holiday."}]
    r = client.chat.completions.create(model="expand", messages=messages, max_tokens=32, temperature=0.9, seed=5, n=2)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1] and set(texts) <= set(SCRIPTS["expand"])
    with Engine(scripted("expand"), OPTS) as eng:
        prompt = prompts.qwen2_chatml(messages)
        want = [eng.generate(prompt, SamplingParams(temperature=0.9, max_tokens=32, seed=5 + k), prompts.QWEN2_STOP).text
                for k in range(2)]
    assert texts == want


def test_sampling_defaults_and_top_k_min_p(client: OpenAI, single: Engine) -> None:
    messages = [{"role": "user", "content": TEXTS[3]}]
    # no max_tokens: what fits the context, at most the server's --max-tokens (the tiny model never stops)
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    n_prompt = len(single.tokenize(chat(TEXTS[3])))
    assert r.usage.completion_tokens == min(LIMITS.max_tokens, 512 - n_prompt) and r.choices[0].finish_reason == "length"
    greedy = single.generate(chat(TEXTS[3]), SamplingParams(temperature=0, max_tokens=24), prompts.QWEN2_STOP).text

    def sampled(**extra: float) -> str:
        body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 1.5, "seed": 1, **extra}
        return httpx.post(f"{client.base_url}chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]

    assert sampled(top_k=1) == greedy  # only the most likely token survives top_k 1
    assert sampled(min_p=1.0) == greedy  # ... and min_p 1
    assert sampled() != greedy  # the defaults (top_k 50, top_p 0.95) at temperature 1.5 do sample


def test_default_body_limit_is_one_mib(models: list[ServedModel]) -> None:
    assert Limits().max_body_bytes == 1 << 20
    with running(models, ServerConfig()) as base:
        over = json.dumps({"text": "x" * (1 << 20)}).encode()
        assert_error(httpx.post(f"{base}/v1/refine", content=over, headers={"Content-Type": "application/json"}), 413,
                     "limit of 1048576 bytes")
        under = json.dumps({"model": "tiny", "text": "x " * 200, "max_tokens": 2}).encode()
        assert httpx.post(f"{base}/v1/refine", content=under, headers={"Content-Type": "application/json"},
                          timeout=60).status_code == 200


# --- batching --------------------------------------------------------------------------------


def test_concurrent_requests_are_decoded_together_and_match(url: str, single: Engine) -> None:
    steps0 = metric(url, "localaug_decode_steps_total", "tiny")
    tokens0 = metric(url, "localaug_batch_tokens_total", "tiny")
    want = [single.generate(chat(t), SamplingParams(temperature=0, max_tokens=24), prompts.QWEN2_STOP).text for t in TEXTS]

    def ask(text: str) -> str:
        body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 24, "temperature": 0}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]

    # a long stream keeps the scheduler busy, so the requests below must join its running batch
    body = {"model": "tiny", "messages": [{"role": "user", "content": TEXTS[1]}], "max_tokens": 250, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as long:
        assert long.status_code == 200
        lines = (line for line in long.iter_lines() if line)
        next(lines)
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            got = list(pool.map(ask, TEXTS))
        assert '"finish_reason": null' in next(lines)  # still going
    assert got == want  # batching does not change greedy results
    assert metric(url, "localaug_active_sequences_peak", "tiny") >= 2
    steps = metric(url, "localaug_decode_steps_total", "tiny") - steps0
    tokens = metric(url, "localaug_batch_tokens_total", "tiny") - tokens0
    prompt_tokens = sum(len(single.tokenize(chat(t))) for t in [TEXTS[1], *TEXTS])
    assert tokens - prompt_tokens > steps  # more than one generated token per llama_decode on average
    assert idle(url, "tiny")  # the closed stream was cancelled


def test_scheduler_direct_submit_wait_and_cancel(tiny_path: Path) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=12)
    with Engine(tiny_path, OPTS, context=False) as engine, BatchEngine(engine, parallel=1, n_ctx=256) as batch:
        want = [r.generation.tokens for r in batch.run([Request("a", chat(TEXTS[3]), greedy, prompts.QWEN2_STOP)])]
        sched = Scheduler(batch, max_queue=4).start()
        try:
            pieces: list[str] = []
            long = sched.submit(Request("long", chat(TEXTS[0]), SamplingParams(temperature=0, max_tokens=200)),
                                on_piece=lambda p: pieces.append(p.text))
            queued = sched.submit(Request("queued", chat(TEXTS[1]), greedy))
            queued.cancel()
            ok = sched.submit(Request("ok", chat(TEXTS[3]), greedy, prompts.QWEN2_STOP))
            deadline = time.monotonic() + 10
            while not pieces and time.monotonic() < deadline:
                time.sleep(0.005)
            long.cancel()
            assert [r.generation.tokens for r in ok.wait(30)] == want
            assert long.wait(5)[0].error == CANCELLED and queued.wait(5)[0].error == CANCELLED
            deadline = time.monotonic() + 5
            while sched.stats.active and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sched.stats.active == 0
        finally:
            sched.stop()


# --- auth --------------------------------------------------------------------------------------


def test_api_key(models: list[ServedModel]) -> None:
    with running(models, ServerConfig(api_key="s3cret", limits=LIMITS)) as base:
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for path in ("/v1/models", "/metrics"):
                err = assert_error(httpx.get(f"{base}{path}", headers=headers), 401, "api key")
                assert err["code"] == "invalid_api_key"
        r = httpx.post(f"{base}/v1/refine", content=b"{not json", headers={"Content-Type": "application/json"})
        assert_error(r, 401)  # refused before the body is read
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        ok = OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [m.id for m in models]


def test_no_key_when_auth_is_off(url: str) -> None:
    assert httpx.get(f"{url}/v1/models").status_code == 200


# --- limits: queue, disconnect, bad requests ---------------------------------------------------


@pytest.fixture(scope="module")
def small(smollm2: Path) -> Iterator[tuple[str, ServedModel]]:
    """SmolLM2 with one slot and a queue of one: the second waiting request is refused."""
    m = load_model(smollm2, name="small", opts=EngineOptions(threads=1), parallel=1, n_ctx=1024, max_queue=1)
    try:
        with running([m], ServerConfig(limits=Limits(max_tokens=900))) as base:
            yield base, m
    finally:
        m.close()


def test_flood_gets_429_with_retry_after(small: tuple[str, ServedModel]) -> None:
    base, _ = small
    body = {"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24, "temperature": 0}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"].isdigit()
    assert assert_error(refused, 429, "retry")["type"] == "rate_limit_error"


def test_disconnect_mid_stream_frees_the_slot(small: tuple[str, ServedModel]) -> None:
    base, m = small
    cancelled0 = m.scheduler.stats.requests_cancelled
    body = {"messages": [{"role": "user", "content": "Write a very long essay on the history of Rome, in twenty parts."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:
                break
    # the connection is closed: the sequence is cancelled and its slot freed
    deadline = time.monotonic() + 15
    while (m.scheduler.stats.active or m.scheduler.stats.requests_cancelled == cancelled0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.scheduler.stats.requests_cancelled == cancelled0 + 1
    assert idle(base, "small")
    done = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0})
    assert done.status_code == 200 and done.json()["choices"][0]["message"]["content"]
    assert idle(base, "small")


BAD_BODIES = [
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "12"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 1.5}, "n"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "limit of 256"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 50}, "limit of 4"),
    ({"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 0.5}, "repeat_penalty"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "over this server's limit"),
    ({"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 256}, "exceeds the context"),
    ([1, 2, 3], "body"),
]


@pytest.mark.parametrize("body,fragment", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_chat_bodies_are_400(url: str, body: object, fragment: str) -> None:
    assert_error(httpx.post(f"{url}/v1/chat/completions", json=body), 400, fragment)


def test_malformed_oversized_and_unknown(url: str) -> None:
    json_headers = {"Content-Type": "application/json"}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/refine", "/v1/expand", "/v1/pairs"):
        assert_error(httpx.post(f"{url}{path}", content=b'{"messages": [', headers=json_headers), 400, "json")
    big = json.dumps({"text": "x" * (LIMITS.max_body_bytes + 10)}).encode()
    assert_error(httpx.post(f"{url}/v1/refine", content=big, headers=json_headers), 413, "limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"text": "'
        for _ in range(LIMITS.max_body_bytes // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'

    assert_error(httpx.post(f"{url}/v1/refine", content=chunks(), headers=json_headers), 413, "limit")
    assert_error(httpx.post(f"{url}/v1/refine", json={"text": "  "}), 400, "non-empty")
    assert_error(httpx.post(f"{url}/v1/refine", json={"text": 5}), 400, "text")
    assert_error(httpx.post(f"{url}/v1/expand", json={"text": "x", "n": 99}), 400, "limit of 4")
    assert_error(httpx.post(f"{url}/v1/pairs", json={"seeds": [], "n": 1}), 400, "seeds")
    assert_error(httpx.post(f"{url}/v1/pairs", json={"seeds": [{"instruction": "x"}]}), 400, "response")
    assert_error(httpx.post(f"{url}/v1/refine", json={"text": "x", "model": "../../etc/passwd"}), 404, "not served")
    assert_error(httpx.get(f"{url}/v1/nope"), 404, "no such endpoint")
    assert_error(httpx.get(f"{url}/v1/chat/completions"), 405)


def test_metrics_text(url: str) -> None:
    httpx.get(f"{url}/health")
    text = httpx.get(f"{url}/metrics").text
    for needle in ('localaug_requests_total{endpoint="/health",status="200"}',
                   'localaug_request_duration_seconds_bucket{endpoint="/health",le="+Inf"}',
                   "# TYPE localaug_request_duration_seconds histogram",
                   'localaug_prompt_tokens_total{model="tiny"}', 'localaug_completion_tokens_total{model="smol"}',
                   'localaug_queue_depth{model="tiny"} 0', 'localaug_slots{model="tiny"} 4'):
        assert needle in text, needle
    assert re.search(r'localaug_requests_total\{endpoint="/v1/chat/completions",status="400"\} \d+', text)


# --- the command -------------------------------------------------------------------------------


def _start_serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    """`localaug serve` as a child process; (process, base URL, banner) once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "localaug.cli", "serve", *args], stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "auth:" in line or not line:
            break
    banner = "".join(lines)
    found = re.search(r"(http://[\d.]+:\d+)/v1", banner)
    assert found, banner
    return proc, found.group(1), banner


def test_cli_serve_sigterm_lets_running_requests_finish(tiny_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc, base, banner = _start_serve(["-m", str(tiny_path), "--host", "127.0.0.1", "--port", "0", "--threads", "1",
                                       "--parallel", "2", "--ctx", "512"], env)
    try:
        assert base.startswith("http://127.0.0.1:") and "auth: off" in banner
        body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 200, "temperature": 0, "stream": True}
        chunks = []
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as stream:
            lines = (line for line in stream.iter_lines() if line)
            chunks.append(next(lines))
            proc.send_signal(signal.SIGTERM)  # while this request is decoding
            chunks += list(lines)
        assert chunks[-1] == "data: [DONE]"
        finishes = [json.loads(c[6:])["choices"][0]["finish_reason"] for c in chunks[:-1] if json.loads(c[6:])["choices"]]
        assert finishes[-1] == "length"  # it ran to its max_tokens: not cut off by the shutdown
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0 and "server stopped" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_host_must_be_an_address_here(tiny_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "serve", "-m", str(tiny_path), "--host", "256.1.1.1",
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not an address of this machine" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_serve_starts_answers_and_stops_on_sigint(smollm2: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "LOCALAUG_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "localaug.cli", "serve", "-m", str(smollm2), "--port", "0",
                             "--threads", "1", "--parallel", "2", "--ctx", "512"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "auth:" in line or not line:
                break
        banner = "".join(lines)
        found = re.search(r"(http://127\.0\.0\.1:\d+)/v1", banner)
        assert found and "auth: on" in banner, banner
        base = found.group(1)
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/v1/models").status_code == 401
        r = httpx.post(f"{base}/v1/completions", headers={"Authorization": "Bearer k"},
                       json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0 and "server stopped" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
