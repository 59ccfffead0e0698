"""The store on disk: where models live, the names of their folders and files, and the manifest that
records each file. ``local`` (pull, resolve, verify, remove), ``bundle`` (export, import) and
``modelfile`` all read and write the store through this module.

Layout under ``settings.localaug_home()``::

    models/<safe-name>/<QUANT>.gguf      one converted file per quantization
    models/<safe-name>/manifest.json     {"format", "name", "family", "files": {QUANT: record}}
    models/<safe-name>/.lock             serialises the manifest's read-modify-write between processes

A record holds the file's sha256 and size, its source (Hugging Face repo + requested revision +
resolved commit, or a local checkpoint folder + a fingerprint of its files), family, license,
creation time and localaug version.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from localaug.core import settings
from localaug.core.errors import StoreError
from localaug.core.files import locked, sha256_file

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
GGUF_MAGIC = b"GGUF"
LOCK = ".lock"


# -- where things are -----------------------------------------------------------------------------


def root() -> Path:
    """The folder that holds one folder per stored model."""
    return settings.localaug_home() / "models"


def safe_name(name: str) -> str:
    """A folder name for a store name: "org/repo" -> "org--repo", "qwen2-refine:1.5b" -> "qwen2-refine_1.5b"."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "--"))


def model_folder(name: str, base: Path | None = None) -> Path:
    """The folder of the store name ``name`` (under ``base``, by default the store's root)."""
    return (root() if base is None else base) / safe_name(name)


def gguf_name(quant: str) -> str:
    """The file name of a model's GGUF of type ``quant`` inside its folder."""
    return f"{quant}.gguf"


def manifest_path(folder: Path) -> Path:
    return folder / MANIFEST


def new_manifest(name: str, family: str | None) -> dict[str, Any]:
    """The manifest of a model folder that records no file yet."""
    return {"format": MANIFEST_FORMAT, "name": name, "family": family, "files": {}}


# -- what the manifest records --------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a stored file came from: a Hugging Face repo, a local checkpoint folder, or both
    (a folder inside a Hugging Face cache snapshot)."""

    repo: str | None = None
    revision: str | None = None  # as asked for: branch, tag or commit
    commit: str | None = None  # what the revision resolved to
    path: str | None = None  # local checkpoint folder
    fingerprint: str | None = None  # of the folder's files (names, sizes, mtimes)
    bundle: str | None = None  # the bundle archive's file name, when imported with `localaug bundle import`
    imported: str | None = None  # when it was imported (ISO 8601, UTC)

    def describe(self) -> str:
        if self.repo:
            return f"{self.repo}@{(self.commit or self.revision or 'main')[:12]}"
        return self.path or "?"

    def origin(self) -> str:
        """Where the file came from, in words: pulled, converted, and/or imported from a bundle."""
        first = f"pulled from {self.describe()}" if self.repo else f"converted from local dir {self.path}" if self.path else ""
        if self.bundle:
            when = f" on {self.imported[:10]}" if self.imported else ""
            return f"imported from bundle {self.bundle}{when}" + (f" ({first})" if first else "")
        return first or "unknown"

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Source:
        """A Source from a manifest record; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in known and v is not None})


@dataclass(frozen=True)
class StoreEntry:
    name: str
    quant: str
    path: Path
    sha256: str
    size: int
    source: Source
    family: str | None
    license: str | None
    created: str
    localaug_version: str
    reused: bool = field(default=False, compare=False)  # True when pull found it stored and intact

    def record(self) -> dict[str, Any]:
        """What the manifest keeps for this file (its path is implied by the layout)."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "quant": self.quant,
            "source": {k: v for k, v in asdict(self.source).items() if v is not None},
            "family": self.family,
            "license": self.license,
            "created": self.created,
            "localaug_version": self.localaug_version,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), **self.record()}


# -- reading and checking -------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a model folder (None: it has none); an unreadable one is a StoreError."""
    path = manifest_path(folder)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
        return data
    except (ValueError, OSError) as e:
        raise StoreError(f"the store manifest {path} is unreadable ({e}): delete {folder} and pull the model again") from e


def entries_in(folder: Path) -> list[StoreEntry]:
    """The entries a model folder's manifest records (none when it has no manifest)."""
    data = read_manifest(folder)
    if data is None:
        return []
    out = []
    for quant, rec in data["files"].items():
        try:
            out.append(StoreEntry(
                name=data["name"], quant=quant, path=folder / rec["file"], sha256=rec["sha256"], size=int(rec["size"]),
                source=Source.from_record(rec.get("source") or {}), family=rec.get("family"), license=rec.get("license"),
                created=rec.get("created", ""), localaug_version=rec.get("localaug_version", ""),
            ))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise StoreError(
                f"the store manifest {manifest_path(folder)} has a broken record for {quant} ({e}): "
                f"delete {folder} and pull the model again"
            ) from e
    return out


def stored_entry(folder: Path, name: str, quant: str) -> StoreEntry | None:
    """The entry ``folder`` records for ``name`` in ``quant``, if any."""
    return next((e for e in entries_in(folder) if e.name == name and e.quant == quant), None)


def damage(entry: StoreEntry, deep: bool) -> str | None:
    """What is wrong with a stored file, or None when it matches its record (``deep``: re-hash it)."""
    try:
        size = entry.path.stat().st_size
    except FileNotFoundError:
        return f"{entry.path} is missing from the store"
    if size != entry.size:
        return f"{entry.path} has {size} bytes but the store recorded {entry.size} (truncated or changed)"
    if deep:
        digest = sha256_file(entry.path)
        if digest != entry.sha256:
            return f"{entry.path} fails its sha256 check (recorded {entry.sha256[:12]}…, found {digest[:12]}…)"
    return None


def raise_if_damaged(entry: StoreEntry, *, deep: bool, again: str | None = None) -> None:
    """A StoreError saying how to re-pull a damaged file; ``again`` is what to pull (by default the
    entry's checkpoint folder, else its name)."""
    problem = damage(entry, deep)
    if problem is not None:
        again = again if again is not None else entry.source.path or entry.name
        raise StoreError(f"{problem}: re-pull it with `localaug pull {again} --quant {entry.quant}`")


def check_owner(folder: Path, name: str) -> None:
    """A StoreError when ``folder`` already holds another store name (two names, one safe name)."""
    data = read_manifest(folder)
    if data is not None and data.get("name") != name:
        raise StoreError(
            f"the store folder {folder} already holds {data.get('name')!r}, not {name!r}: "
            "delete that folder or rename your checkpoint folder, then retry"
        )


# -- changing a folder ----------------------------------------------------------------------------


def folder_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise manifest read-modify-write of a model folder between processes."""
    return locked(folder / LOCK)


def drop_if_empty(folder: Path) -> None:
    """Remove a model folder that holds nothing but its lock file."""
    with contextlib.suppress(OSError):
        if not any(p.name != LOCK for p in folder.iterdir()):
            (folder / LOCK).unlink(missing_ok=True)
            folder.rmdir()
