"""A judge or responder on an OpenAI-compatible server: the real `localaug serve` (uvicorn in a
thread, SmolLM2-135M-Instruct, an API key) on loopback, driven by `localaug run` and `localaug judge`
given its URL.

The server decodes one request at a time with no shared-prefix cache, so the same messages always
decode the same way: a job's answers at temperature 0 must equal what a direct request to the
server answers. Faults (500, 503, 400, an oversized reply) come from a small proxy in front of the
real server that answers for requests carrying a marker and forwards the rest.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from http_fixture import keyed_env, one_at_a_time, running, use_key

from localaug.augment.resolve import resolve_style
from localaug.core.errors import JobError, RemoteError, UsageError
from localaug.family import judging
from localaug.family.prompts import Chat
from localaug.jobs.run import JobOptions, run_job
from localaug.report.judge import run_judge
from localaug.runtime.backend import Request
from localaug.runtime.remote import Endpoint, RemoteModel, connect, open_remote, parse_endpoint
from localaug.runtime.sampling import SamplingParams
from localaug.serve.app import Limits, ServerConfig
from localaug.serve.scheduler import ServedModel

KEY = "sk-test-7f3a9c2e51d04b8a"
ENV = keyed_env(KEY)
QUESTIONS = ["Name a color.", "What is 2+2?", "Say hi."]


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_key(monkeypatch, tmp_path / "home", KEY, ENV)


@pytest.fixture(scope="module")
def smol(smollm2: Path) -> Iterator[ServedModel]:
    with one_at_a_time(smollm2) as m:
        yield m


@pytest.fixture(scope="module")
def base(smol: ServedModel) -> Iterator[str]:
    with running([smol], ServerConfig(api_key=KEY, limits=Limits(max_tokens=256))) as url:
        yield url


def direct(base: str, content: str, max_tokens: int, temperature: float = 0.0) -> dict:
    """What the server answers for one user message, asked directly (seed 0, top_p 0.95)."""
    r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"model": "smol", "messages": [{"role": "user", "content": content}],
                         "temperature": temperature, "top_p": 0.95, "max_tokens": max_tokens, "seed": 0})
    assert r.status_code == 200, r.text
    return r.json()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# --- the URL -----------------------------------------------------------------------------------------


def test_a_url_names_a_base_and_a_model_and_never_credentials() -> None:
    assert parse_endpoint("http://GPU-Box:8000/v1/#Qwen/Qwen2-7B-Instruct") == \
        Endpoint("http://gpu-box:8000/v1", "Qwen/Qwen2-7B-Instruct")
    assert parse_endpoint("https://[::1]:8443") == Endpoint("https://[::1]:8443/v1", None)
    assert parse_endpoint("http://h/llm/v1#qwen2-instruct%3A7b") == Endpoint("http://h/llm/v1", "qwen2-instruct:7b")
    for bad, fragment in (("http://user:pa55word@h:8000/v1", "credentials"), ("http://h:8000/v1?key=x", "query"),
                          ("http://h:99999/v1", "not a valid URL"), ("http:///v1", "names a host")):
        with pytest.raises(UsageError) as e:
            parse_endpoint(bad, "judge")
        assert fragment in str(e.value) and "pa55word" not in str(e.value) and e.value.params == ["judge"]
    with pytest.raises(UsageError, match="for localaug run and localaug judge"):
        resolve_style("http://gpu-box:8000/v1#m")  # not a store name to pull
    with pytest.raises(UsageError) as unsent:  # refused before the server is asked
        JobOptions.of("respond", model="http://127.0.0.1:9/v1#m", top_k=5, min_p=0.1).check()
    assert unsent.value.params == ["top_k", "min_p"] and "not sent to a model on a server" in str(unsent.value)
    JobOptions.of("respond", model="x.gguf", top_k=5).check()  # a local model takes them


def test_ray_refuses_a_model_on_a_server_before_it_starts(tmp_path: Path) -> None:
    from localaug.jobs import on_ray

    src = write_jsonl(tmp_path / "q.jsonl", [{"instruction": "hi"}])
    with pytest.raises(UsageError, match="not run on Ray"):
        on_ray.run_job("respond", src, tmp_path / "out", address="local", model="http://127.0.0.1:9/v1#m")
    assert not (tmp_path / "out").exists()


def test_the_model_is_the_servers_only_one_or_a_listed_name(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert connect(parse_endpoint(f"{base}/v1")) == RemoteModel(f"{base}/v1", "smol")
    with pytest.raises(UsageError) as e:
        connect(parse_endpoint(f"{base}/v1#gpt-4"))
    assert str(e.value) == f"{base}/v1 does not serve 'gpt-4' (it serves smol): name one as {base}/v1#MODEL"
    monkeypatch.delenv("LOCALAUG_REMOTE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the fallback
    assert connect(parse_endpoint(f"{base}/v1#smol")).name == "smol"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RemoteError) as no_key:
        connect(parse_endpoint(f"{base}/v1"))
    assert "needs an API key (401" in str(no_key.value) and "LOCALAUG_REMOTE_API_KEY" in str(no_key.value)


# --- respond ---------------------------------------------------------------------------------------


def test_remote_respond_answers_as_the_server_does_and_resumes(tmp_path: Path, base: str) -> None:
    src = write_jsonl(tmp_path / "q.jsonl", [{"instruction": q, "id": i} for i, q in enumerate(QUESTIONS)])
    out = tmp_path / "a.jsonl"
    summary = run_job("respond", src, out, model=f"{base}/v1#smol", temperature=0, max_tokens=24, parallel=3)
    recs = sorted(records(out), key=lambda r: r["row"])
    assert [r["instruction"] for r in recs] == QUESTIONS and [r["id"] for r in recs] == [0, 1, 2]
    for rec in recs:
        want = direct(base, rec["instruction"], 24)
        choice = want["choices"][0]
        assert rec["response"] == choice["message"]["content"].strip() and rec["model"] == "smol"
        assert rec["finish_reason"] == choice["finish_reason"]
        assert (rec["prompt_tokens"], rec["completion_tokens"]) == (want["usage"]["prompt_tokens"],
                                                                    want["usage"]["completion_tokens"])
        assert rec["status"] == ("ok" if choice["finish_reason"] == "stop" else "failed")
    manifest = json.loads((tmp_path / "a.jsonl.manifest.json").read_text())
    assert manifest["model"] == {"remote": f"{base}/v1", "name": "smol", "family": None}
    assert manifest["config"]["remote"] == {"url": f"{base}/v1", "model": "smol"} and manifest["parallel"] == 3
    assert manifest["config"]["model_sha256"] is None and manifest["config"]["prompt_format"] == "teacher"
    again = run_job("respond", src, out, model=f"{base}/v1", temperature=0, max_tokens=24, parallel=3)  # its only model
    assert again.run_id == summary.run_id and again.stats.skipped == 3 and again.stats.done == 0
    other = run_job("respond", src, tmp_path / "b.jsonl", model=f"{base}/v1#smol", temperature=0, max_tokens=16, limit=0)
    assert other.run_id != summary.run_id  # sampling is in the run id
    assert files_holding(tmp_path, KEY) == []


def test_respond_with_a_remote_responder_after_a_remote_refiner(tmp_path: Path, base: str) -> None:
    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "What is 2+2?"}])
    out = tmp_path / "train.json"
    # --prompt-format qwen2-chatml: prompted as a family model, i.e. the bare user turn, which the
    # server wraps in its own template
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "run", "refine", "-i", str(src), "-o", str(out),
                        "--model", f"{base}/v1", "--prompt-format", "qwen2-chatml", "--respond-with", f"{base}/v1#smol",
                        "--format", "alpaca", "--temperature", "0", "--max-tokens", "48", "--respond-max-tokens", "64",
                        "--parallel", "2"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [refined] = records(tmp_path / "train.json.refine.jsonl")
    [answered] = records(tmp_path / "train.json.ledger.jsonl")
    assert refined["status"] == "ok" and refined["model"] == "smol"
    assert refined["output"] == direct(base, "What is 2+2?", 48)["choices"][0]["message"]["content"].strip()
    # the responder answers the new instruction with its own sampling defaults (temperature 0.5), seed 0
    assert answered["instruction"] == refined["output"] and answered["origin"]["source_id"] == refined["source_id"]
    assert answered["response"] == direct(base, refined["output"], 64, 0.5)["choices"][0]["message"]["content"].strip()
    manifests = [json.loads((tmp_path / f"train.json{x}.manifest.json").read_text()) for x in ("", ".refine.jsonl")]
    assert [m["model"]["name"] for m in manifests] == ["smol", "smol"]
    assert [m["config"]["prompt_format"] for m in manifests] == ["teacher", "qwen2-chatml"]
    assert files_holding(tmp_path, KEY) == []


# --- the judge -------------------------------------------------------------------------------------


def _pair_files(tmp_path: Path, n: int) -> tuple[Path, Path]:
    def rec(i: int, answer: str) -> dict:
        return {"source_id": f"k{i}", "task": "respond", "status": "ok", "row": i, "error": None,
                "instruction": f"Name {i + 2} colors.", "response": answer}

    a = write_jsonl(tmp_path / "a.jsonl", [rec(i, "Red.") for i in range(n)])
    b = write_jsonl(tmp_path / "b.jsonl", [rec(i, ", ".join(["red", "blue", "green", "yellow", "white", "black",
                                                              "pink", "grey"][: i + 2]) + ".") for i in range(n)])
    return a, b


def test_remote_judge_resumes_after_kill_9_judging_each_pair_once(tmp_path: Path, base: str) -> None:
    a, b = _pair_files(tmp_path, 2)
    out = tmp_path / "verdicts.jsonl"
    cmd = [sys.executable, "-m", "localaug.cli", "judge", str(a), str(b), "--judge", f"{base}/v1#smol", "-o", str(out),
           "--max-tokens", "12", "--parallel", "1", "--json"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and (not out.exists() or out.read_bytes().count(b"\n") < 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes().count(b"\n")
    assert before == 1
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = records(out)
    assert sorted(x["key"] for x in lines) == ["0:0", "1:0"]  # each pair once
    summary = json.loads(r.stdout)
    assert summary["n"] == 2 and summary["done_now"] == 1 and summary["failed"] == 0
    assert summary["judge"] == f"{base}/v1#smol"
    assert summary["wins"] + summary["ties"] + summary["losses"] == 2
    # each verdict is read from the replies the server gives for the judge prompt, both orders
    first = lines[0]
    key_row = int(first["key"].split(":")[0])
    question = f"Name {key_row + 2} colors."
    answer_b = records(b)[key_row]["response"]
    reply = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                       json={"model": "smol", "messages": judging.messages("detail", question, "Red.", answer_b),
                             "temperature": 0, "top_p": 0.95, "max_tokens": 12, "seed": 0}).json()
    assert first["reply_first"] == reply["choices"][0]["message"]["content"]
    assert files_holding(tmp_path, KEY) == []


# --- failures --------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("setting", ["wrong key", "unreachable"])
def test_a_wrong_key_or_an_unreachable_server_is_one_line(tmp_path: Path, base: str, setting: str) -> None:
    src = write_jsonl(tmp_path / "q.jsonl", [{"instruction": q} for q in QUESTIONS])
    url = f"{base}/v1" if setting == "wrong key" else f"http://127.0.0.1:{_closed_port()}/v1"
    env = {**ENV, "LOCALAUG_REMOTE_API_KEY": "wrong-key-123" if setting == "wrong key" else KEY}
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "run", "respond", "-i", str(src), "-o",
                        str(tmp_path / "a.jsonl"), "--model", url], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if setting == "wrong key":
        assert "refused the API key in LOCALAUG_REMOTE_API_KEY (401" in r.stderr and "wrong-key-123" not in r.stderr
    else:
        assert r.stderr == f"error: cannot reach {url} (Connection refused) after 4 attempts: check the URL and that the " \
                           "server is running\n"
    assert not (tmp_path / "a.jsonl").exists()


class FaultyProxy:
    """A loopback proxy in front of the real server: requests whose body holds a marker get the fault
    it names, every other request is forwarded; attempts per marker and Authorization headers are kept."""

    FAULTS = {"FAIL-500": (500, "injected failure"), "BAD-400": (400, "injected bad request"),
              "FLAKY-503": (503, "injected overload")}

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.attempts: Counter[str] = Counter()
        self.auth: list[str] = []
        self.bodies: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.auth.append(self.headers.get("Authorization", ""))
                text = body.decode("utf-8", "replace")
                if body:
                    proxy.bodies.append(json.loads(body))
                for marker, (status, message) in proxy.FAULTS.items():
                    if marker in text:
                        proxy.attempts[marker] += 1
                        if marker != "FLAKY-503" or proxy.attempts[marker] == 1:
                            err = json.dumps({"error": {"message": message, "type": "test", "code": None}}).encode()
                            return self._answer(status, err, {"Retry-After": "0"} if status == 503 else None)
                if "HUGE-REPLY" in text:
                    return self._answer(200, b'{"choices": [{"message": {"content": "' + b"x" * (9 << 20) + b'"}}]}')
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                self._answer(r.status, data)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failing_request_fails_its_row_only_after_bounded_retries(tmp_path: Path, base: str) -> None:
    rows = ["Name a color.", "FAIL-500 name a fruit.", "BAD-400 say hi.", "FLAKY-503 what is 2+2?", "HUGE-REPLY ok?"]
    src = write_jsonl(tmp_path / "q.jsonl", [{"instruction": q} for q in rows])
    out = tmp_path / "a.jsonl"
    with FaultyProxy(base) as proxy:
        summary = run_job("respond", src, out, model=f"{proxy.url}/v1#smol", temperature=0, max_tokens=32, parallel=4)
    by_row = {r["row"]: r for r in records(out)}
    assert proxy.auth and set(proxy.auth) == {f"Bearer {KEY}"}  # the key travels as a Bearer header only
    assert proxy.attempts == {"FAIL-500": 4, "BAD-400": 1, "FLAKY-503": 2}  # 1 + 3 retries; a 400 is not retried
    assert by_row[1]["status"] == "failed" and by_row[1]["error"] == \
        f"{proxy.url}/v1 answered 500 after 4 attempts: injected failure"
    assert by_row[2]["status"] == "failed" and by_row[2]["error"] == f"{proxy.url}/v1 answered 400: injected bad request"
    assert by_row[4]["status"] == "failed" and "more than 8 MiB" in by_row[4]["error"]
    for row in (0, 3):  # the others are answered as the server answers them
        want = direct(base, rows[row], 32)["choices"][0]["message"]["content"].strip()
        assert by_row[row]["response"] == want and by_row[row]["error"] in (None, "max_tokens hit (32 tokens): raise max_tokens")
    assert summary.stats.failed >= 3 and len(by_row) == 5
    # what a row sends: its messages (the server's template renders them) and the sampling a chat request carries
    assert {"model": "smol", "messages": [{"role": "user", "content": "Name a color."}], "temperature": 0, "top_p": 0.95,
            "max_tokens": 32, "seed": 0} in proxy.bodies
    assert files_holding(tmp_path, KEY) == []


def test_the_samples_of_a_request_use_seed_plus_k_and_its_stop(base: str) -> None:
    chat = Chat(({"role": "user", "content": "Count: one, two,"},))
    with FaultyProxy(base) as proxy, open_remote(RemoteModel(f"{proxy.url}/v1", "smol"), 2) as backend:
        results = list(backend.run([Request("r", chat, SamplingParams(temperature=0.9, max_tokens=3, seed=5), ("\n",), 3),
                                    Request("text", "a rendered prompt", SamplingParams(max_tokens=3))]))
    assert sorted((r.id, r.index, r.ok) for r in results) == [("r", 0, True), ("r", 1, True), ("r", 2, True),
                                                              ("text", 0, False)]
    assert sorted(b["seed"] for b in proxy.bodies) == [5, 6, 7]
    assert all(b["stop"] == ["\n"] and b["temperature"] == 0.9 and b["max_tokens"] == 3 for b in proxy.bodies)
    assert all(0 < r.generation.completion_tokens <= 3 for r in results if r.generation is not None)


def test_a_judge_request_that_fails_is_not_recorded_and_is_retried_by_the_same_command(tmp_path: Path, base: str) -> None:
    a, b = _pair_files(tmp_path, 2)
    rows = records(b)
    rows[1]["instruction"] = "BAD-400 " + rows[1]["instruction"]
    write_jsonl(b, rows)
    a_rows = records(a)
    a_rows[1]["instruction"] = rows[1]["instruction"]  # the question shown is A's
    write_jsonl(a, a_rows)
    out = tmp_path / "v.jsonl"
    with FaultyProxy(base) as proxy:
        s = run_judge(a, b, f"{proxy.url}/v1#smol", output=out, max_tokens=8, parallel=2)
    assert (s.n, s.failed, s.done_now) == (1, 1, 1) and [x["key"] for x in records(out)] == ["0:0"]
    assert ("pairs whose request failed (rerun to judge them)", "1") in s.rows()
    for path in (a, b):  # no pair can be judged: an error, and nothing recorded
        write_jsonl(path, [{**r, "instruction": "BAD-400 " + r["instruction"]} for r in records(path)])
    with FaultyProxy(base) as proxy, pytest.raises(JobError) as e:
        run_judge(a, b, f"{proxy.url}/v1#smol", output=tmp_path / "w.jsonl", max_tokens=8, parallel=2)
    assert str(e.value) == (f"no pair could be judged (2 failed): {proxy.url}/v1 answered 400: injected bad request; run "
                            "the same command again to retry them")
    assert (tmp_path / "w.jsonl").read_bytes() == b""
