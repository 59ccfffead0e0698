"""Small JSON files (manifests): written whole or not at all (temp name beside, fsync, rename), and
read back leniently (a missing or damaged file reads as None)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from localaug.convert.gguf_out import temp_beside


def write_json_atomic(path: Path, data: Any) -> None:
    with temp_beside(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
