"""``localaug serve``'s settings: the models and where they run (``augment.settings.EngineSettings``,
the same object a job builds), where the server listens, and what one request may ask for.

The command builds one ``ServeSettings`` (flags, or ``LOCALAUG_*`` environment defaults) and hands
it over: ``check`` refuses bad values before anything is bound or loaded, ``load`` loads the
models, ``server_config`` is what the HTTP layer runs with.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from localaug.augment.resolve import DEFAULT_MODELS
from localaug.augment.settings import EngineSettings
from localaug.core.errors import UsageError, opt
from localaug.serve.handlers import Limits, ServerConfig
from localaug.serve.scheduler import ServedModel, load_models

__all__ = ["ServeSettings", "host_check", "is_loopback"]


@dataclass(frozen=True)
class ServeSettings:
    model: tuple[str, ...] = ()  # the first is the default; none: the family's refiner
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 64
    max_tokens: int = 2048
    max_n: int = 16
    allow_host: tuple[str, ...] = ()  # Host/Origin names besides the loopback ones ("*": any)
    docs: bool = False
    stall_after: float = 60.0
    engine: EngineSettings = field(default_factory=EngineSettings)

    def check(self) -> None:
        if min(self.engine.parallel or 1, self.max_tokens, self.max_n) < 1 or self.max_queue < 0 or not self.stall_after > 0:
            raise UsageError(f"{opt('parallel')}, {opt('max_tokens')} and {opt('max_n')} must be at least 1, "
                             f"{opt('max_queue')} at least 0, {opt('stall_after')} over 0")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"{opt('port')} {self.port}: give a TCP port from 0 to 65535")

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(self.model or (DEFAULT_MODELS["refine"],)))

    def load(self) -> list[ServedModel]:
        """Each model loaded once, its scheduler started (on a failure the ones loaded are freed)."""
        e = self.engine
        return load_models(self.sources, opts=e.options(), parallel=e.parallel, n_ctx=e.n_ctx, max_queue=self.max_queue)

    @property
    def checked_host(self) -> bool | None:
        return host_check(self.host, self.allow_host)

    def server_config(self) -> ServerConfig:
        return ServerConfig(api_key=self.api_key or None, limits=Limits(max_tokens=self.max_tokens, max_n=self.max_n),
                            allowed_hosts=self.allow_host, check_host=self.checked_host, docs=self.docs,
                            stall_after_s=self.stall_after)


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
