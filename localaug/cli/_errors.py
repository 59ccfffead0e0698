"""How the command words errors: one line on stderr, every setting an error names spelled as the flag
that sets it here (the API and the HTTP server spell the same settings as parameter names)."""

from __future__ import annotations

from localaug.core.errors import LocalaugError

# A setting's flag is its name with dashes (``augment.settings``: one name at every layer). These are
# spelled otherwise: the short flags people type, and two keywords whose flag reads better on a
# command line than the Python name would (``fmt`` shadows nothing, ``format`` would; ``address``
# is Ray's own word for what --ray takes).
FLAGS = {"output": "-o", "input": "-i", "n": "-n", "fmt": "--format", "address": "--ray"}


def flag(param: str) -> str:
    """The flag of a setting named in an error (``max_tokens`` -> ``--max-tokens``)."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def message(error: LocalaugError) -> str:
    """The error as the command shows it."""
    return error.render(flag)
