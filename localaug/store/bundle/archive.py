"""What a bundle's writer and reader agree on: the manifest member's name and format, and the name
of each GGUF inside the archive (its place in the store, under ``models/``)."""

from __future__ import annotations

from datetime import datetime, timezone

from localaug.store.layout import StoreEntry, gguf_name, safe_name

BUNDLE_MANIFEST = "localaug-bundle.json"
BUNDLE_FORMAT = 1


def member_name(entry: StoreEntry) -> str:
    """The archive member that carries ``entry``'s GGUF."""
    return f"models/{safe_name(entry.name)}/{gguf_name(entry.quant)}"


def utc_now() -> str:
    """Now, as the manifests write times (ISO 8601, UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
