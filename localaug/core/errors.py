"""The one exception hierarchy of localaug, with structured fields.

Every message is one line that says what went wrong *and what to do next*. A message that asks the
user to change a setting names it with ``opt("max_tokens")`` instead of a flag: rendered plainly
(``str(e)``, the API and HTTP wording) it reads ``max_tokens``; the CLI renders it as its flag
(``--max-tokens``). So no layer below the CLI ever words advice in CLI flags, and HTTP clients are
told about the JSON fields they can change. Other structured fields (``path``, ``param``, counts)
travel as keyword arguments in ``e.fields``.

Each class carries the exit code the CLI uses and the HTTP status the server answers with.

Each class is also the built-in exception that says what kind of failure it is, so code that
knows only Python's exceptions catches ours too (as huggingface_hub's errors do): bad arguments,
checkpoints, GGUFs, bundles, prompts and replies are ``ValueError``; a model that is not there is
``FileNotFoundError``; a store whose files do not match their records and a file that cannot be
written are ``OSError``; a hub or server that cannot be reached is ``ConnectionError``; an output
another process is writing is ``BlockingIOError`` (a lock that would block); a conversion, engine,
template, job or busy server that fails while running is ``RuntimeError``. ``JobInterrupted`` is
none of these: it stands for a Ctrl-C whose work was saved. ``LocalaugError`` comes first in every
class's method order, so messages, pickling, exit codes and HTTP statuses are ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_OPT = re.compile("\x00([A-Za-z_][A-Za-z0-9_]*)\x00")


def opt(name: str) -> str:
    """A setting named in an error message: ``max_tokens`` in the API, ``--max-tokens`` in the CLI."""
    return f"\x00{name}\x00"


class LocalaugError(Exception):
    """Base class: a failure the user can act on."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields

    @property
    def template(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def params(self) -> list[str]:
        """The settings the message names, in order."""
        return _OPT.findall(self.template)

    def render(self, name: Callable[[str], str] = lambda param: param) -> str:
        """The message with each named setting spelled by ``name``."""
        return _OPT.sub(lambda m: name(m.group(1)), self.template)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self) -> tuple[Any, ...]:  # keeps fields across pickling (Ray workers)
        return (_rebuild, (type(self), self.template, self.fields))


def _rebuild(cls: type[LocalaugError], message: str, fields: dict[str, Any]) -> LocalaugError:
    return cls(message, **fields)


class UsageError(LocalaugError, ValueError):
    """Bad arguments or options (exit 2, like a CLI usage error; HTTP 400)."""

    exit_code = 2
    http_status = 400


class CheckpointError(LocalaugError, ValueError):
    """A Hugging Face checkpoint directory is missing files or is malformed."""

    http_status = 400


class UnsupportedModelError(CheckpointError):
    """The checkpoint's architecture or tokenizer is not one localaug converts."""


class ConversionError(LocalaugError, RuntimeError):
    """Writing or quantizing a GGUF failed (disk full, unwritable path, quantizer error)."""


class WriteError(ConversionError, OSError):
    """A file could not be written (missing or read-only folder, disk full); nothing half-written is left."""


class ModelNotFoundError(LocalaugError, FileNotFoundError):
    """A model name, repo or path could not be resolved to a GGUF file."""

    http_status = 404


class StoreError(LocalaugError, OSError):
    """The local model store is inconsistent (checksum mismatch, broken manifest)."""


class GGUFError(LocalaugError, ValueError):
    """A file is not a readable GGUF."""


class BundleError(LocalaugError, ValueError):
    """A model bundle cannot be imported (damaged, unsafe or conflicting); the store is left as it was."""


class DownloadError(LocalaugError, ConnectionError):
    """The Hugging Face hub (or the mirror in HF_ENDPOINT) could not be reached or refused a download."""

    http_status = 502


class JobError(LocalaugError, RuntimeError):
    """A batch job cannot start or go on (output of a different run, unreadable ledger)."""


class JobLockedError(JobError, BlockingIOError):
    """Another process is writing the same job output."""


class JobInterrupted(LocalaugError):
    """A batch job was stopped (Ctrl-C); what finished is saved and the same command resumes it."""

    exit_code = 130


class QueueFullError(LocalaugError, RuntimeError):
    """The server's model is busy: every slot decoding and its waiting queue full (HTTP 429)."""

    http_status = 429


class EngineError(LocalaugError, RuntimeError):
    """llama.cpp could not load a model or run a step."""


class PromptTooLongError(LocalaugError, ValueError):
    """Prompt plus max_tokens does not fit the model's context."""

    http_status = 400


class ReplyParseError(LocalaugError, ValueError):
    """A model reply (or seed data) that does not have the expected shape; reported, never silently dropped."""

    http_status = 400


class TemplateRenderError(LocalaugError, RuntimeError):
    """A GGUF chat template that fails to render in the sandbox (the model's fault, not the request's)."""


class RemoteError(LocalaugError, ConnectionError):
    """An OpenAI-compatible server named by URL could not be reached, refused the key, or does not
    serve the model asked for (the key itself never appears in the message)."""

    http_status = 502
