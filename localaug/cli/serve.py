"""``localaug serve``: the HTTP server for other programs."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from localaug.cli.options import Device, DeviceOpt, LayersOpt, ThreadsOpt, gpu_layers, value
from localaug.cli.shell import command, err_console, handled

if TYPE_CHECKING:
    from localaug.serve.settings import ServeSettings


def host_check(host: str, allowed: tuple[str, ...]) -> bool | None:
    """Whether the server checks Host/Origin headers (``serve.settings.host_check``)."""
    from localaug.serve import settings

    return settings.host_check(host, allowed)


@handled
def serve(
    ctx: typer.Context,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", envvar="LOCALAUG_MODEL", help="A model to serve (family name, repo id, GGUF file or checkpoint folder); repeat for several. The first is the default.")] = None,
    host: Annotated[str, typer.Option("--host", envvar="LOCALAUG_HOST", help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="LOCALAUG_PORT", min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LOCALAUG_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Sequences decoded together per model (continuous batching; default: the fastest for this machine, measured once and cached).")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for a slot; past it: 429.")] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most new tokens one request may ask for.")] = 2048,
    max_n: Annotated[int, typer.Option("--max-n", help="Most samples (n) one request may ask for.")] = 16,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", "--ctx", help="Context of one sequence, prompt + completion (default 4096); the KV cache holds --parallel of them. --ctx is the same flag.")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", envvar="LOCALAUG_ALLOWED_HOSTS", help="A Host/Origin name requests may carry besides localhost, 127.0.0.1 and [::1] (repeat, or comma-separated; '*': any). Checked when listening on loopback without --api-key, and whenever given.")] = None,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs: the API as a plain HTML page (no scripts). /openapi.json is always served.")] = False,
    stall_after: Annotated[float, typer.Option("--stall-after", help="Seconds one scheduler step may run before /health answers 503 'degraded' naming the model.")] = 60.0,
    device: DeviceOpt = Device.auto, gpu_layers: LayersOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models,
    and /v1/refine, /v1/expand, /v1/pairs; /health and /metrics.

    Example: [bold]localaug serve --model qwen2-refine:1.5b --model qwen2-exp:1.5b --port 8000[/bold]
    """
    from localaug.cli.render import serve as draw
    from localaug.serve.app import bind, run_server, url_of

    settings = serve_settings(ctx.params)
    settings.check()
    console = err_console()
    sock = bind(settings.host, settings.port)  # before loading, so a busy port fails at once
    try:
        draw.render_loading(console, settings.sources)
        served = settings.load()
    except BaseException:
        sock.close()
        raise
    checked, hosts = settings.checked_host, settings.allow_host
    shown_hosts = hosts if (checked or (checked is None and not settings.api_key)) and "*" not in hosts else None
    open_to = settings.host if not settings.api_key and settings.host not in ("127.0.0.1", "localhost", "::1") else None
    draw.render_serving(console, url_of(sock), served, api_key=bool(settings.api_key), max_tokens=settings.max_tokens,
                        max_n=settings.max_n, max_queue=settings.max_queue, accepted_hosts=shown_hosts, open_to=open_to)
    try:
        run_server(served, settings.server_config(), sock)
    except KeyboardInterrupt:
        pass
    finally:
        for m in served:
            m.close()
        sock.close()
    draw.render_stopped(console)


def serve_settings(params: dict[str, Any]) -> ServeSettings:
    """The server's settings from serve's parameters (what Click parsed: flags and environment)."""
    from localaug.augment.settings import EngineSettings
    from localaug.serve.settings import ServeSettings

    p = {name: value(v) if isinstance(v, Enum) else v for name, v in params.items()}
    engine = EngineSettings(device=p["device"], gpu_layers=gpu_layers(p["gpu_layers"]), threads=p["threads"],
                            n_ctx=p["n_ctx"], parallel=p["parallel"])
    hosts = tuple(h.strip() for item in p["allow_host"] or [] for h in item.split(",") if h.strip())
    return ServeSettings(model=tuple(p["model"] or ()), host=p["host"], port=p["port"], api_key=p["api_key"],
                         max_queue=p["max_queue"], max_tokens=p["max_tokens"], max_n=p["max_n"], allow_host=hosts,
                         docs=p["docs"], stall_after=p["stall_after"], engine=engine)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for fn in (serve,):
        command(app, fn, panel="Serve")
