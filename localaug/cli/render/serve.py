"""What ``localaug serve`` shows on stderr: what it loads, where it listens, each model's slots,
auth and limits, the Host/Origin names it accepts, and a warning when it is open to the network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from localaug.serve.scheduler import ServedModel


def render_loading(console: Console, sources: list[str]) -> None:
    console.print(f"loading {escape(', '.join(sources))}…", highlight=False)


def render_serving(console: Console, url: str, served: list[ServedModel], *, api_key: bool, max_tokens: int, max_n: int,
                   max_queue: int, accepted_hosts: tuple[str, ...] | None, open_to: str | None) -> None:
    """``accepted_hosts``: the names besides loopback a checked Host/Origin may carry (None: not
    checked); ``open_to``: the address it listens on without a key, when that is not loopback."""
    console.print(f"[bold]localaug serve[/bold] on [bold]{escape(url)}/v1[/bold]  (OpenAI base_url)", highlight=False)
    for m in served:
        console.print(f"  model [bold]{escape(m.id)}[/bold]: {escape(str(m.path))} ({m.style.prompt_format}, "
                      f"{m.batch.parallel} slots x {m.n_ctx} tokens)", highlight=False, soft_wrap=True)
    console.print(f"  auth: {'on (Bearer key)' if api_key else 'off'}; limits: max_tokens {max_tokens}, n {max_n}, "
                  f"queue {max_queue}; Ctrl-C stops", highlight=False)
    if accepted_hosts is not None:
        console.print(f"  Host/Origin accepted: localhost, 127.0.0.1, [::1]{escape(''.join(', ' + h for h in accepted_hosts))}",
                      highlight=False)
    if open_to is not None:
        console.print(f"[bold yellow]warning:[/bold yellow] listening on {escape(open_to)} without --api-key: anyone who can "
                      "reach this port can use the models", highlight=False)


def render_stopped(console: Console) -> None:
    console.print("server stopped", highlight=False)
