"""``localaug serve``: the HTTP server for other programs."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Optional

import typer

from localaug.cli.shell import command, err_console, handled
from localaug.cli.options import Device, DeviceOpt, LayersOpt, ThreadsOpt, gpu_layers, value


@handled
def serve(
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="A model to serve (family name, repo id, GGUF file or checkpoint folder); repeat for several. The first is the default.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LOCALAUG_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Sequences decoded together per model (continuous batching; default: the fastest for this machine, measured once and cached).")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for a slot; past it: 429.")] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most new tokens one request may ask for.")] = 2048,
    max_n: Annotated[int, typer.Option("--max-n", help="Most samples (n) one request may ask for.")] = 16,
    ctx: Annotated[Optional[int], typer.Option("--ctx", help="Context of one sequence, prompt + completion (default 4096); the KV cache holds --parallel of them.")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", envvar="LOCALAUG_ALLOWED_HOSTS", help="A Host/Origin name requests may carry besides localhost, 127.0.0.1 and [::1] (repeat, or comma-separated; '*': any). Checked when listening on loopback without --api-key, and whenever given.")] = None,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs: the API as a plain HTML page (no scripts). /openapi.json is always served.")] = False,
    stall_after: Annotated[float, typer.Option("--stall-after", help="Seconds one scheduler step may run before /health answers 503 'degraded' naming the model.")] = 60.0,
    device: DeviceOpt = Device.auto, layers: LayersOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models,
    and /v1/refine, /v1/expand, /v1/pairs; /health and /metrics.

    Example: [bold]localaug serve --model qwen2-refine:1.5b --model qwen2-exp:1.5b --port 8000[/bold]
    """
    from localaug.api import DEFAULT_MODELS
    from localaug.core.errors import UsageError
    from localaug.runtime.engine import EngineOptions
    from localaug.serve.app import Limits, ServerConfig, bind, run_server, url_of
    from localaug.serve.scheduler import load_models

    if min(parallel or 1, max_tokens, max_n) < 1 or max_queue < 0 or not stall_after > 0:
        raise UsageError("--parallel, --max-tokens and --max-n must be at least 1, --max-queue at least 0, "
                         "--stall-after over 0")
    hosts = tuple(h.strip() for item in allow_host or [] for h in item.split(",") if h.strip())
    from localaug.cli.render import serve as draw

    console = err_console()
    sock = bind(host, port)  # before loading, so a busy port fails at once
    try:
        opts = EngineOptions(device=value(device), gpu_layers=gpu_layers(layers), threads=threads, n_ctx=ctx)  # type: ignore[arg-type]
        sources = list(dict.fromkeys(model or [DEFAULT_MODELS["refine"]]))
        draw.render_loading(console, sources)
        served = load_models(sources, opts=opts, parallel=parallel, n_ctx=ctx, max_queue=max_queue)
    except BaseException:
        sock.close()
        raise
    checked = host_check(host, hosts)
    shown_hosts = hosts if (checked or (checked is None and not api_key)) and "*" not in hosts else None
    open_to = host if not api_key and host not in ("127.0.0.1", "localhost", "::1") else None
    draw.render_serving(console, url_of(sock), served, api_key=bool(api_key), max_tokens=max_tokens, max_n=max_n,
                        max_queue=max_queue, accepted_hosts=shown_hosts, open_to=open_to)
    config = ServerConfig(api_key=api_key or None, limits=Limits(max_tokens=max_tokens, max_n=max_n),
                          allowed_hosts=hosts, check_host=checked, docs=docs, stall_after_s=stall_after)
    try:
        run_server(served, config, sock)
    except KeyboardInterrupt:
        pass
    finally:
        for m in served:
            m.close()
        sock.close()
    draw.render_stopped(console)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_check(host: str, allowed: tuple[str, ...]) -> bool | None:
    """Whether the server checks Host/Origin headers: always when names are given; on a loopback
    bind None (the server's default: checked unless an API key is set); otherwise not (clients
    reach it by whatever name or address the network gives it)."""
    if allowed:
        return True
    return None if is_loopback(host) else False


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (serve,):
        command(app, fn, panel="Serve")
