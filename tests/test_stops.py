"""Stop strings that really stop: matched in the decoded text across token boundaries, through the
single-sequence Engine, the continuous-batching engine and the HTTP server.

The scripted model writes a known text (tests/scripted_fixture.py) in which a newline arrives
inside a merged token (``"],\\n\\n"``), so a stop of ``"\\n"`` -- itself one token -- must be found
in the text, not by token id. The expected output is that text cut where the stop first appears,
computed here from the script, not from the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_fixture import running
from openai import OpenAI
from scripted_fixture import SCRIPTS

from localaug.family import prompts
from localaug.runtime.backend import Request
from localaug.runtime.batch import BatchEngine
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation
from localaug.serve.app import Limits, ServerConfig
from localaug.serve.scheduler import ServedModel, load_model

FULL = SCRIPTS["refine"][0]
GREEDY = SamplingParams(temperature=0.0, max_tokens=64)
OPTS = EngineOptions(threads=1, n_ctx=256)

# (stop strings, why this case)
CASES = [
    (["\n"], "one token (id 198) that arrives inside the merged token '],\\n\\n'"),
    (["\n\n"], "one token that arrives merged with '],'"),
    (['"food"'], "several tokens"),
    (['ood"],'], "begins inside a token and ends inside another"),
    (["guide", "Hangzhou"], "two stops: the earlier one in the text wins"),
    (["tips."], "the last characters before the end of the reply"),
    (["no such text"], "never appears: the reply ends at end of generation"),
]


def expected(stops: list[str]) -> str:
    found = [FULL.find(s) for s in stops if s in FULL]
    return FULL[: min(found)] if found else FULL


def chat(text: str) -> str:
    return prompts.qwen2_chatml([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def model(scripted) -> Path:
    return scripted("refine")


@pytest.fixture(scope="module")
def engine(model: Path) -> Iterator[Engine]:
    with Engine(model, OPTS) as eng:
        yield eng


def test_the_script_runs_without_stops(engine: Engine) -> None:
    gen = engine.generate(chat("Create a travel guide for Hangzhou."), GREEDY, prompts.QWEN2_STOP)
    assert (gen.text, gen.finish_reason) == (FULL, "stop")
    assert "\n" not in [engine.detokenize([t]) for t in gen.tokens]  # the newline only comes inside merged tokens


@pytest.mark.parametrize(("stops", "why"), CASES, ids=[c[1] for c in CASES])
def test_engine_cuts_at_the_first_stop(engine: Engine, stops: list[str], why: str) -> None:
    pieces: list[str] = []
    gen: Generation | None = None
    for item in engine.stream(chat("Plan a trip."), GREEDY, (*prompts.QWEN2_STOP, *stops)):
        if isinstance(item, Generation):
            gen = item
        else:
            pieces.append(item)
    assert gen is not None
    assert gen.text == expected(stops), why
    assert gen.finish_reason == "stop"
    assert "".join(pieces) == gen.text  # streamed text never shows a stop string, then takes it back


def test_batch_engine_cuts_each_request_at_its_own_stops(engine: Engine) -> None:
    requests = [Request(str(i), chat(f"request {i}"), GREEDY, (*prompts.QWEN2_STOP, *stops))
                for i, (stops, _) in enumerate(CASES)]
    with BatchEngine(engine, parallel=3, n_ctx=256) as batch:
        got = {r.id: r for r in batch.run(requests)}
    for i, (stops, why) in enumerate(CASES):
        gen = got[str(i)].generation
        assert gen is not None and (gen.text, gen.finish_reason) == (expected(stops), "stop"), why


def test_a_stop_that_no_text_can_contain_is_harmless(engine: Engine) -> None:
    gen = engine.generate(chat("x"), GREEDY, (*prompts.QWEN2_STOP, "\udc80"))
    assert (gen.text, gen.finish_reason) == (FULL, "stop")


# --- through the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(model: Path) -> Iterator[str]:
    served: ServedModel = load_model(model, name="scripted", prompt_format="qwen2-chatml", opts=OPTS, parallel=2, n_ctx=256)
    try:
        with running([served], ServerConfig(limits=Limits(max_tokens=64))) as base:
            yield base
    finally:
        served.close()


@pytest.mark.parametrize(("stops", "why"), CASES[:4], ids=[c[1] for c in CASES[:4]])
def test_openai_stop_parameter(url: str, stops: list[str], why: str) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Write a guide."}]
    r = client.chat.completions.create(model="scripted", messages=messages, max_tokens=64, temperature=0, stop=stops)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected(stops), "stop"), why
    stream = client.chat.completions.create(model="scripted", messages=messages, max_tokens=64, temperature=0,
                                            stop=stops, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == expected(stops), why
    completion = client.completions.create(model="scripted", prompt=chat("Write a guide."), max_tokens=64,
                                           temperature=0, stop=stops)
    assert completion.choices[0].text == expected(stops) and completion.choices[0].finish_reason == "stop", why


def test_stop_as_one_string(url: str) -> None:
    body = {"prompt": chat("Write a guide."), "max_tokens": 64, "temperature": 0, "stop": "\n"}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"][0]["text"] == expected(["\n"])
