"""The local model store: family name | repo id | checkpoint folder | GGUF path -> a verified GGUF path.

Where files live and what their manifest records is ``store.layout``. Files and manifests are
written under a temporary name and renamed when complete, so a crash never leaves something that
looks finished.

``resolve`` checks a stored file against its recorded size (cheap, every load); ``verify`` or
``resolve(..., verify=True)`` re-hashes it. ``pull`` re-hashes before declaring a no-op and
replaces a damaged file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from localaug._version import __version__
from localaug.convert import DEFAULT_QUANT
from localaug.core.errors import GGUFError, ModelNotFoundError, UsageError
from localaug.core.files import sha256_file, temp_beside, write_json_atomic
from localaug.family import registry
from localaug.family.registry import ModelSpec
from localaug.store import hub
from localaug.store.layout import (
    GGUF_MAGIC,
    Source,
    StoreEntry,
    check_owner,
    damage,
    drop_if_empty,
    entries_in,
    folder_lock,
    gguf_name,
    manifest_path,
    model_folder,
    new_manifest,
    raise_if_damaged,
    read_manifest,
    root,
    safe_name,
    stored_entry,
)

if TYPE_CHECKING:
    from localaug.convert import ConvertProgress

# What this module offers; the store's records and names come from ``layout`` (``store.root()``,
# ``store.StoreEntry``...).
__all__ = ["Source", "StoreEntry", "list_entries", "matching", "pull", "remove", "resolve", "root", "safe_name", "verify"]

_CHECKPOINT_FILES = tuple(p for p in hub.ALLOW_PATTERNS if p != "README.md")
# Hugging Face repo ids: "org/name", each part starting with a letter or digit.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class _Target:
    """A model as the user named it, classified."""

    name: str  # the store name: family name, repo id, or the checkpoint folder's name
    arg: str  # what to type to pull it again
    repo: str | None = None
    revision: str | None = None
    local: Path | None = None
    commit: str | None = None  # known up front for folders inside a Hugging Face cache snapshot
    spec: ModelSpec | None = None


# -- public API -----------------------------------------------------------------------------------


def pull(
    model: str, *, revision: str | None = None, quant: str | None = None, progress: ConvertProgress | None = None
) -> StoreEntry:
    """Bring ``model`` into the store as a GGUF of type ``quant`` and return its entry.

    ``model`` is a family name, a Hugging Face repo id or a local checkpoint folder. A stored,
    intact (sha256-checked) copy from the same source is a no-op (``entry.reused``); a damaged
    one is replaced.
    """
    if Path(model).expanduser().is_file():
        raise UsageError(f"{model} is a file: pass it directly (GGUF files need no pull), or pull a checkpoint folder")
    target = _target(model, revision)
    q = _quant_for(target, quant)
    if target.local is not None:
        return _pull_local(target, q, progress, deep=True, repair=True)
    if target.repo is None:  # stored from a local folder that is gone: nothing to pull it from
        entry = _stored(target.name, q)
        if entry is None:
            raise ModelNotFoundError(f"{model} {q} is not in the store and its checkpoint folder is gone: pull the folder again")
        raise_if_damaged(entry, deep=True, again=target.arg)
        return replace(entry, reused=True)
    return _pull_hub(target, q, progress)


def resolve(
    model: str, quant: str | None = None, *, verify: bool = False, progress: ConvertProgress | None = None
) -> Path:
    """A verified GGUF path for ``model``: a GGUF path (magic-checked), a family name, a repo id
    or a checkpoint folder. Missing models are pulled (and converted) on first use."""
    path = Path(model).expanduser()
    if path.is_file():
        _check_magic(path)
        return path
    target = _target(model, None)
    if target.local is not None:
        stored = _pick(target, quant)
        same = stored is not None and stored.source.path == str(target.local)
        q = stored.quant if same and quant is None else _quant_for(target, quant)  # type: ignore[union-attr]
        return _pull_local(target, q, progress, deep=verify, repair=False).path
    entry = _pick(target, quant)
    if entry is None:
        return pull(model, quant=quant, progress=progress).path
    raise_if_damaged(entry, deep=verify, again=target.arg)
    return entry.path


def list_entries() -> list[StoreEntry]:
    """Everything in the store, by name then quant."""
    base = root()
    if not base.is_dir():
        return []
    entries = [e for d in sorted(base.iterdir()) if manifest_path(d).is_file() for e in entries_in(d)]
    return sorted(entries, key=lambda e: (e.name, e.quant))


def matching(model: str, quant: str | None = None) -> list[StoreEntry]:
    """The stored entries of ``model`` (a store name, family name, repo id or checkpoint folder), of every
    quant or only ``quant``."""
    spec = registry.find(model)
    names = {model, spec.name} if spec else {model}
    q = quant.strip().upper() if quant else None
    return [
        e for e in list_entries()
        if (e.name in names or e.source.repo == model or e.source.path == model) and (q is None or e.quant == q)
    ]


def verify(model: str | None = None, quant: str | None = None) -> list[StoreEntry]:
    """Re-hash stored files (all, or those of ``model``); a mismatch is a StoreError saying to re-pull."""
    entries = matching(model, quant) if model is not None else list_entries()
    for entry in entries:
        raise_if_damaged(entry, deep=True)
    return entries


def remove(model: str, quant: str | None = None) -> list[StoreEntry]:
    """Delete ``model``'s stored files (one quant, or all) and their manifest records."""
    entries = matching(model, quant)
    if not entries:
        raise ModelNotFoundError(f"{model}{' ' + quant if quant else ''} is not in the store: `localaug models` lists it")
    for entry in entries:
        folder = entry.path.parent
        with folder_lock(folder):
            entry.path.unlink(missing_ok=True)
            data = read_manifest(folder) or {"files": {}}
            data["files"].pop(entry.quant, None)
            if data["files"]:
                write_json_atomic(manifest_path(folder), data)
            else:
                manifest_path(folder).unlink(missing_ok=True)
        drop_if_empty(folder)
    return entries


# -- what the user named ---------------------------------------------------------------------------------------


def _target(model: str, revision: str | None) -> _Target:
    path = Path(model).expanduser()
    if path.is_dir():
        local = path.resolve()
        repo, commit = _hf_snapshot_origin(local)
        spec = registry.find(repo) if repo else None
        name = spec.name if spec else repo or local.name
        return _Target(name, str(local), repo=repo, revision=commit, local=local, commit=commit, spec=spec)
    spec = registry.find(model)
    if spec is not None:
        return _Target(spec.name, spec.name, repo=spec.repo, revision=revision or spec.revision, spec=spec)
    if _REPO_ID.fullmatch(model.strip()):
        repo = model.strip()
        return _Target(repo, repo, repo=repo, revision=revision)
    stored = entries_in(model_folder(model)) if model.strip() else []
    if any(e.name == model for e in stored):
        # A name the store gave a local checkpoint folder: follow the folder while it exists.
        origin = next((Path(e.source.path) for e in stored if e.source.path and Path(e.source.path).is_dir()), None)
        return _target(str(origin), None) if origin is not None else _Target(model, model)
    if model.startswith((".", "/", "~")) or model.endswith(".gguf") or os.sep in model:
        raise ModelNotFoundError(f"{model} does not exist: pass an existing checkpoint folder or .gguf file")
    registry.get(model)  # raises the "unknown model" message listing the family
    raise AssertionError("unreachable")  # pragma: no cover


def _hf_snapshot_origin(folder: Path) -> tuple[str | None, str | None]:
    """(repo, commit) when ``folder`` is ``.../models--org--name/snapshots/<commit>`` in a HF cache."""
    parts = folder.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and hub.COMMIT.fullmatch(parts[-1]):
        return parts[-3].removeprefix("models--").replace("--", "/"), parts[-1]
    return None, None


def _quant_for(target: _Target, quant: str | None) -> str:
    from localaug.convert import normalize_quant

    return normalize_quant(quant or (target.spec.default_quant if target.spec else DEFAULT_QUANT))


# -- pulling --------------------------------------------------------------------------------------


def _pull_hub(target: _Target, quant: str, progress: ConvertProgress | None) -> StoreEntry:
    existing = _stored(target.name, quant)
    if existing is not None and damage(existing, deep=True) is None:  # a damaged copy is replaced
        commit = hub.known_commit(target.repo, target.revision)  # type: ignore[arg-type]
        # Unknown upstream (hub unreachable, not in the HF cache): the verified copy is what we have.
        if commit is None or commit == existing.source.commit:
            return replace(existing, reused=True)
    folder = hub.snapshot(target.repo, target.revision, asked_as=target.arg)  # type: ignore[arg-type]
    commit = folder.name if hub.COMMIT.fullmatch(folder.name) else None
    source = Source(repo=target.repo, revision=target.revision or "main", commit=commit)
    return _install(target, quant, folder, source, progress)


def _pull_local(target: _Target, quant: str, progress: ConvertProgress | None, *, deep: bool, repair: bool) -> StoreEntry:
    assert target.local is not None
    source = Source(
        repo=target.repo, revision=target.revision, commit=target.commit,
        path=str(target.local), fingerprint=_fingerprint(target.local),
    )
    existing = _stored(target.name, quant)
    if existing is not None and (existing.source.path, existing.source.fingerprint) == (source.path, source.fingerprint):
        if repair:
            if damage(existing, deep) is None:
                return replace(existing, reused=True)
        else:
            raise_if_damaged(existing, deep=deep, again=target.arg)
            return replace(existing, reused=True)
    return _install(target, quant, target.local, source, progress)


def _install(target: _Target, quant: str, checkpoint: Path, source: Source, progress: ConvertProgress | None) -> StoreEntry:
    """Convert ``checkpoint`` into the store, hash it, rename it into place, then record it."""
    from localaug.convert import convert_checkpoint

    folder = model_folder(target.name)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / gguf_name(quant)
    try:
        check_owner(folder, target.name)
        with temp_beside(dest) as tmp:
            convert_checkpoint(
                checkpoint, tmp, quant, source_repo=source.repo,
                source_revision=source.commit or source.revision, progress=progress,
            )
            entry = StoreEntry(
                name=target.name, quant=quant, path=dest, sha256=sha256_file(tmp), size=tmp.stat().st_size,
                source=source, family=target.spec.name if target.spec else None,
                license=target.spec.license if target.spec else _card_license(checkpoint),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), localaug_version=__version__,
            )
            # File and record change together, so concurrent pulls of the same model cannot cross them.
            with folder_lock(folder):
                os.replace(tmp, dest)
                data = read_manifest(folder) or new_manifest(target.name, None)
                data["family"] = entry.family
                data["files"][quant] = entry.record()
                write_json_atomic(manifest_path(folder), data)
    except BaseException:
        drop_if_empty(folder)  # a failed first pull leaves no empty model folder behind
        raise
    return entry


def _card_license(checkpoint: Path) -> str | None:
    """The ``license:`` of a model card's YAML header, if there is one."""
    card = checkpoint / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"---\s*\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace")[:20000], re.S)
    lic = re.search(r"^license:\s*['\"]?([\w.+-]+)", m.group(1), re.M) if m else None
    return lic.group(1) if lic else None


def _fingerprint(folder: Path) -> str:
    """Cheap identity of a checkpoint folder's files: names, sizes and mtimes (content is hashed only in the GGUF)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and any(Path(p.name).match(pat) for pat in _CHECKPOINT_FILES):
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stored(name: str, quant: str) -> StoreEntry | None:
    return stored_entry(model_folder(name), name, quant)


def _pick(target: _Target, quant: str | None) -> StoreEntry | None:
    """The stored entry to use: the asked-for quant, else the default quant, else the newest."""
    if quant is not None:
        return _stored(target.name, _quant_for(target, quant))
    entries = [e for e in entries_in(model_folder(target.name)) if e.name == target.name]
    default = _quant_for(target, None)
    return next((e for e in entries if e.quant == default), None) or max(entries, key=lambda e: e.created, default=None)


def _check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file: pass a .gguf file, a model name, a repo id or a checkpoint folder")
