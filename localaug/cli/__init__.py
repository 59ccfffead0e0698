"""The ``localaug`` command: a thin Typer shell over the API; rendering lives in ``localaug.cli.render``."""

from localaug.cli.main import app, main

__all__ = ["app", "main"]
