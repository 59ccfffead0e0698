"""Errors, settings and file helpers (atomic writes, temporary names, sha256, locks).

The bottom layer: it imports nothing else of localaug's."""
