"""How the command words errors: one line on stderr, every setting an error names spelled as the flag
that sets it here (the API and the HTTP server spell the same settings as parameter names)."""

from __future__ import annotations

from localaug.core.errors import LocalaugError

# Settings (parameter names below the CLI) whose flag is not simply --name-with-dashes.
FLAGS = {
    "output": "-o", "input": "-i", "n": "-n", "n_ctx": "--ctx", "fmt": "--format", "threshold": "--rouge-l",
    "refusals": "--keep-refusals", "address": "--ray", "model": "--model", "quant": "--quant",
}


def flag(param: str) -> str:
    """The flag of a setting named in an error (``max_tokens`` -> ``--max-tokens``)."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def message(error: LocalaugError) -> str:
    """The error as the command shows it."""
    return error.render(flag)
