"""``python -m localaug.cli``: the ``localaug`` command."""

from localaug.cli.main import main

main()
