"""Serving throughput: `localaug serve` (continuous batching) with N concurrent clients vs the same
requests sent one at a time, side by side with llama-cpp-python's own server on the same model.

    python benchmarks/serve.py [--model PATH] [--requests 32] [--concurrency 16] [--max-tokens 128]
                               [--parallel 16] [--threads N] [--ctx 2048] [--no-baseline]

Every request is the same kind of OpenAI chat completion (POST /v1/chat/completions, not streamed):
one realistic instruction as the user turn, rendered by each server with the model's chat template
from the GGUF, greedy (temperature 0) by default so both servers generate the same text, at most
--max-tokens new tokens. Each server is started as a child process on a free 127.0.0.1 port, warmed
up with one request, then measured twice on the same request list:

- sequential: one client, one request at a time;
- concurrent: --concurrency clients (threads) taking requests from the shared list.

Reported per server and mode: output tokens/s (sum of usage.completion_tokens / wall time), requests/s
and latency p50/p95. The baseline is `python -m llama_cpp.server` (needs the packages of
`pip install "llama-cpp-python[server]"`); it is skipped, with the reason recorded, when it does not
start. Writes benchmarks/out/serve.json and benchmarks/out/serve.md. Default model: Qwen2.5-Coder-1.5B-Instruct
Q4_K_M (the Qwen2-1.5B stand-in fetched by fetch-test-models).

    python benchmarks/serve.py --ttft [--pairs 3] [--no-baseline]

measures the prompt cache instead: time to the first streamed token of a chat request with a new
~300-token system prompt, then of a second request with the same system prompt and another user
turn (one client, greedy, 8 new tokens), for --pairs different system prompts; reported per
server: both times and their ratio (median over the pairs). Writes serve-ttft.json / serve-ttft.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import INSTRUCTIONS as THROUGHPUT_INSTRUCTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("LOCALAUG_TEST_MODELS", Path.home() / ".cache" / "localaug-test-models"))
DEFAULT_MODEL = MODELS_DIR / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

# 16 of the batch benchmark's instructions (English and Chinese), in this order
INSTRUCTIONS = [THROUGHPUT_INSTRUCTIONS[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 21, 15, 32, 33, 35, 37)]


@dataclass
class Measure:
    mode: str
    clients: int
    requests: int
    errors: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    requests_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    error_sample: str | None = None


@dataclass
class ServerRun:
    server: str
    command: list[str]
    started: bool
    startup_s: float = 0.0
    note: str | None = None
    runs: list[Measure] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.contextmanager
def child(cmd: list[str], ready_url: str, timeout: float, log: Path) -> Iterator[tuple[subprocess.Popen, float]]:
    """Start a server process and wait until ``ready_url`` answers 200; stop it with SIGINT at the end."""
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited with code {proc.returncode}: {log.read_text()[-400:].strip()}")
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"not ready after {timeout:.0f}s")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield proc, time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def measure(base: str, model: str, texts: list[str], clients: int, args: argparse.Namespace) -> Measure:
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    lock = threading.Lock()

    def one(http: httpx.Client, text: str, i: int) -> None:
        nonlocal tokens
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": args.max_tokens,
                "temperature": args.temperature, "seed": args.seed + i}
        t0 = time.monotonic()
        try:
            r = http.post(f"{base}/v1/chat/completions", json=body, timeout=args.request_timeout)
            ok = r.status_code == 200
            n = r.json()["usage"]["completion_tokens"] if ok else 0
            why = None if ok else f"{r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            n, why = 0, f"{type(e).__name__}: {e}"
        dt = time.monotonic() - t0
        with lock:
            if why:
                errors.append(why)
            else:
                latencies.append(dt)
                tokens += n

    jobs = list(enumerate(texts))
    started = time.monotonic()
    if clients == 1:
        with httpx.Client() as http:
            for i, text in jobs:
                one(http, text, i)
    else:
        with httpx.Client(limits=httpx.Limits(max_connections=clients)) as http, ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda job: one(http, job[1], job[0]), jobs))
    wall = time.monotonic() - started
    return Measure("sequential" if clients == 1 else "concurrent", clients, len(texts), len(errors), tokens,
                   round(wall, 3), round(tokens / wall, 2), round(len(latencies) / wall, 3),
                   round(percentile(latencies, 0.5), 3), round(percentile(latencies, 0.95), 3),
                   errors[0] if errors else None)


SYSTEM = ("You are the writing assistant of team {k}. Follow this style guide in every answer. Write in "
          "plain, direct sentences; prefer the active voice; define every technical term the first time you "
          "use it; keep paragraphs under five sentences; use numbered lists for procedures and bullet lists "
          "for options; give units with every number; write dates as YYYY-MM-DD; never invent citations, "
          "statistics or quotations; when a request is ambiguous, say which reading you chose and why; when a "
          "request cannot be answered safely, say so in one sentence and offer a safe alternative; do not "
          "apologise more than once; do not repeat the question; end with a one-line summary only when the "
          "answer is longer than three paragraphs. For code: name the language, keep functions short, handle "
          "errors explicitly, add a usage example, and never hard-code secrets. For translations: keep names, "
          "numbers and formatting, and note idioms that do not carry over. For summaries: keep the author's "
          "claims apart from your own comments, and keep the original order of the arguments. Audience: "
          "engineers and analysts at a mid-sized company who read on phones between meetings, so put the "
          "most useful sentence first. Tone: friendly, calm, never sarcastic, no exclamation marks, no emoji. "
          "Spelling: British English unless the user writes in another language, then answer in that language.")


def ttft(http: httpx.Client, base: str, model: str, system: str, user: str, args: argparse.Namespace) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    body = {"model": model, "stream": True, "max_tokens": 8, "temperature": 0.0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    t0 = time.monotonic()
    with http.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=args.request_timeout) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read()[:200]!r}")
        first = None
        for line in r.iter_lines():
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    first = time.monotonic() - t0
        if first is None:
            raise RuntimeError("no content streamed")
    return first


def bench_ttft(name: str, cmd: list[str], base: str, ready: str, model_id: str, args: argparse.Namespace,
               log: Path) -> dict:
    out: dict = {"server": name, "command": cmd, "pairs": []}
    print(f"[{name}] starting: {' '.join(cmd)}", file=sys.stderr)
    try:
        with child(cmd, ready, args.startup_timeout, log), httpx.Client() as http:
            ttft(http, base, model_id, "Warm-up.", "Say hi.", args)
            for k in range(args.pairs):
                system = SYSTEM.format(k=k + 1)
                first = ttft(http, base, model_id, system, INSTRUCTIONS[2 * k % len(INSTRUCTIONS)], args)
                second = ttft(http, base, model_id, system, INSTRUCTIONS[(2 * k + 1) % len(INSTRUCTIONS)], args)
                out["pairs"].append({"first_s": round(first, 3), "second_s": round(second, 3),
                                     "ratio": round(second / first, 3)})
                print(f"[{name}] first {first:.2f}s second {second:.2f}s ratio {second / first:.2f}", file=sys.stderr)
    except RuntimeError as e:
        out["note"] = str(e)
        print(f"[{name}] {e}", file=sys.stderr)
    if out["pairs"]:
        out["median_first_s"] = statistics.median(p["first_s"] for p in out["pairs"])
        out["median_second_s"] = statistics.median(p["second_s"] for p in out["pairs"])
        out["median_ratio"] = statistics.median(p["ratio"] for p in out["pairs"])
    return out


def bench_server(name: str, cmd: list[str], base: str, ready: str, model_id: str, texts: list[str],
                 args: argparse.Namespace, log: Path) -> ServerRun:
    run = ServerRun(name, cmd, False)
    print(f"[{name}] starting: {' '.join(cmd)}", file=sys.stderr)
    try:
        with child(cmd, ready, args.startup_timeout, log) as (_, startup):
            run.started, run.startup_s = True, round(startup, 2)
            measure(base, model_id, texts[:1], 1, args)  # warm-up
            for clients in (1, args.concurrency):
                m = measure(base, model_id, texts, clients, args)
                print(f"[{name}] {m.mode:10s} {m.tokens_per_s:8.1f} tok/s  p50 {m.latency_p50_s:.2f}s  "
                      f"p95 {m.latency_p95_s:.2f}s  errors {m.errors}", file=sys.stderr)
                run.runs.append(m)
    except RuntimeError as e:
        run.note = f"did not start: {e}"
        print(f"[{name}] {run.note}", file=sys.stderr)
    return run


def markdown(summary: dict) -> str:
    a = summary["settings"]
    lines = [
        "# Serving benchmark",
        "",
        f"Model `{Path(a['model']).name}`, {a['requests']} chat requests, max_tokens {a['max_tokens']}, "
        f"temperature {a['temperature']}, threads {a['threads']}, {a['concurrency']} concurrent clients, "
        f"localaug --parallel {a['parallel']}, context {a['ctx']} per sequence.",
        f"Machine: {summary['machine']['platform']}, {summary['machine']['cpus']} CPUs.",
        "",
        "| server | mode | clients | output tok/s | req/s | p50 latency (s) | p95 latency (s) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in summary["servers"]:
        if not run["started"]:
            lines.append(f"| {run['server']} | — | — | — | — | — | — | {run['note']} |")
        for m in run["runs"]:
            lines.append(f"| {run['server']} | {m['mode']} | {m['clients']} | {m['tokens_per_s']:.1f} | "
                         f"{m['requests_per_s']:.2f} | {m['latency_p50_s']:.2f} | {m['latency_p95_s']:.2f} | {m['errors']} |")
    ours = {m["mode"]: m for r in summary["servers"] if r["server"] == "localaug serve" for m in r["runs"]}
    if "sequential" in ours and "concurrent" in ours and ours["sequential"]["tokens_per_s"]:
        gain = ours["concurrent"]["tokens_per_s"] / ours["sequential"]["tokens_per_s"]
        lines += ["", f"localaug serve, concurrent vs one at a time: {gain:.2f}x output tokens/s."]
    base = {m["mode"]: m for r in summary["servers"] if r["server"] == "llama_cpp.server" for m in r["runs"]}
    if "concurrent" in ours and "concurrent" in base and base["concurrent"]["tokens_per_s"]:
        gain = ours["concurrent"]["tokens_per_s"] / base["concurrent"]["tokens_per_s"]
        lines.append(f"localaug serve vs llama_cpp.server under the same concurrent load: {gain:.2f}x output tokens/s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=None, help="localaug serve --parallel (default: --concurrency)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    ap.add_argument("--no-baseline", action="store_true", help="skip llama-cpp-python's server")
    ap.add_argument("--startup-timeout", type=float, default=180)
    ap.add_argument("--request-timeout", type=float, default=1800)
    ap.add_argument("--ttft", action="store_true", help="measure the prompt cache (see the module docstring)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.model.is_file():
        sys.exit(f"model not found: {args.model} (run fetch-test-models, or pass --model)")
    args.parallel = args.parallel or args.concurrency
    args.out.mkdir(parents=True, exist_ok=True)
    texts = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.requests)]
    servers: list[ServerRun] = []
    if args.ttft:
        return main_ttft(args)

    port = free_port()
    cmd = [sys.executable, "-m", "localaug.cli", "serve", "--model", str(args.model), "--port", str(port),
           "--parallel", str(args.parallel), "--threads", str(args.threads), "--ctx", str(args.ctx),
           "--max-queue", str(max(64, args.requests)), "--max-tokens", str(max(2048, args.max_tokens))]
    base = f"http://127.0.0.1:{port}"
    model_id = re.sub(r"\.gguf$", "", args.model.name)
    servers.append(bench_server("localaug serve", cmd, base, f"{base}/health", model_id, texts, args,
                                args.out / "serve-localaug.log"))

    if not args.no_baseline:
        port = free_port()
        # n_ctx: llama-cpp-python decodes one sequence at a time, so one sequence's context is enough
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
               "--n_ctx", str(args.ctx), "--n_gpu_layers", "-1"]
        base = f"http://127.0.0.1:{port}"
        servers.append(bench_server("llama_cpp.server", cmd, base, f"{base}/v1/models", str(args.model), texts, args,
                                    args.out / "serve-llama-cpp.log"))

    import llama_cpp

    from localaug import __version__

    summary = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "localaug": __version__, "llama-cpp-python": llama_cpp.__version__},
        "servers": [asdict(s) for s in servers],
    }
    (args.out / "serve.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (args.out / "serve.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.md'}", file=sys.stderr)


def main_ttft(args: argparse.Namespace) -> None:
    """localaug serve with its default (calibrated) --parallel, next to llama_cpp.server."""
    import llama_cpp

    results = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "localaug.cli", "serve", "--model", str(args.model), "--port", str(port),
           "--threads", str(args.threads), "--ctx", str(args.ctx)]
    results.append(bench_ttft("localaug serve", cmd, base, f"{base}/health", re.sub(r"\.gguf$", "", args.model.name),
                              args, args.out / "serve-ttft-localaug.log"))
    if not args.no_baseline:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
               "--n_ctx", str(args.ctx)]
        results.append(bench_ttft("llama_cpp.server", cmd, base, f"{base}/v1/models", str(args.model), args,
                                  args.out / "serve-ttft-llama-cpp.log"))
    lines = ["| server | first request TTFT (s) | second request TTFT (s) | ratio |", "|---|---:|---:|---:|"]
    for r in results:
        if "median_ratio" in r:
            lines.append(f"| {r['server']} | {r['median_first_s']:.2f} | {r['median_second_s']:.2f} | "
                         f"{r['median_ratio']:.2f} |")
        else:
            lines.append(f"| {r['server']} | — | — | {r.get('note', '')} |")
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                           "llama-cpp-python": llama_cpp.__version__},
               "servers": results}
    (args.out / "serve-ttft.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (args.out / "serve-ttft.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
