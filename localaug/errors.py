"""The one exception hierarchy of localaug.

Every message is a single line that says what went wrong *and what to do next*; the CLI prints
it as is (no traceback unless ``--debug``) and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class LocalaugError(Exception):
    """Base class: a failure the user can act on."""

    exit_code: int = 1


class UsageError(LocalaugError):
    """Bad arguments or options (exit 2, like a CLI usage error)."""

    exit_code = 2


class CheckpointError(LocalaugError):
    """A Hugging Face checkpoint directory is missing files or is malformed."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint's architecture or tokenizer is not one localaug converts."""


class ConversionError(LocalaugError):
    """Writing or quantizing a GGUF failed (disk full, unwritable path, quantizer error)."""


class ModelNotFoundError(LocalaugError):
    """A model name, repo or path could not be resolved to a GGUF file."""


class StoreError(LocalaugError):
    """The local model store is inconsistent (checksum mismatch, broken manifest)."""


class GGUFError(LocalaugError):
    """A file is not a readable GGUF."""


class BundleError(LocalaugError):
    """A model bundle cannot be imported (damaged, unsafe or conflicting); the store is left as it was."""


class DownloadError(LocalaugError):
    """The Hugging Face hub (or the mirror in HF_ENDPOINT) could not be reached or refused a download."""


class JobError(LocalaugError):
    """A batch job cannot start or go on (output of a different run, unreadable ledger)."""


class JobLockedError(JobError):
    """Another process is writing the same job output."""


class JobInterrupted(LocalaugError):
    """A batch job was stopped (Ctrl-C); what finished is saved and the same command resumes it."""

    exit_code = 130


class QueueFullError(LocalaugError):
    """The server's model is busy: every slot decoding and its waiting queue full (HTTP 429)."""
