"""The local model store: family name | repo id | checkpoint folder | GGUF path -> a verified GGUF path.

Layout under ``settings.localaug_home()``::

    models/<safe-name>/<QUANT>.gguf      one converted file per quantization
    models/<safe-name>/manifest.json     {"format", "name", "family", "files": {QUANT: record}}

A record holds the file's sha256 and size, its source (Hugging Face repo + requested revision +
resolved commit, or a local checkpoint folder + a fingerprint of its files), family, license,
creation time and localaug version. Files and manifests are written under a temporary name and
renamed when complete, so a crash never leaves something that looks finished.

``resolve`` checks a stored file against its recorded size (cheap, every load); ``verify`` or
``resolve(..., verify=True)`` re-hashes it. ``pull`` re-hashes before declaring a no-op and
replaces a damaged file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localaug._version import __version__
from localaug.convert import DEFAULT_QUANT
from localaug.core import settings
from localaug.core.errors import GGUFError, ModelNotFoundError, StoreError, UsageError
from localaug.core.files import locked, sha256_file, temp_beside, write_json_atomic
from localaug.family import registry
from localaug.family.registry import ModelSpec
from localaug.store import hub

if TYPE_CHECKING:
    from localaug.convert import ConvertProgress

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
GGUF_MAGIC = b"GGUF"
_CHECKPOINT_FILES = tuple(p for p in hub.ALLOW_PATTERNS if p != "README.md")
# Hugging Face repo ids: "org/name", each part starting with a letter or digit.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


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


def root() -> Path:
    return settings.localaug_home() / "models"


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
        _raise_if_damaged(entry, target, deep=True)
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
    _raise_if_damaged(entry, target, deep=verify)
    return entry.path


def list_entries() -> list[StoreEntry]:
    """Everything in the store, by name then quant."""
    base = root()
    if not base.is_dir():
        return []
    entries = [e for d in sorted(base.iterdir()) if (d / MANIFEST).is_file() for e in _entries_in(d)]
    return sorted(entries, key=lambda e: (e.name, e.quant))


def verify(model: str | None = None, quant: str | None = None) -> list[StoreEntry]:
    """Re-hash stored files (all, or those of ``model``); a mismatch is a StoreError saying to re-pull."""
    entries = _matching(model, quant) if model is not None else list_entries()
    for entry in entries:
        _raise_if_damaged(entry, None, deep=True)
    return entries


def remove(model: str, quant: str | None = None) -> list[StoreEntry]:
    """Delete ``model``'s stored files (one quant, or all) and their manifest records."""
    entries = _matching(model, quant)
    if not entries:
        raise ModelNotFoundError(f"{model}{' ' + quant if quant else ''} is not in the store: `localaug models` lists it")
    for entry in entries:
        folder = entry.path.parent
        with _locked(folder):
            entry.path.unlink(missing_ok=True)
            data = _read_manifest(folder) or {"files": {}}
            data["files"].pop(entry.quant, None)
            if data["files"]:
                write_json_atomic(folder / MANIFEST, data)
            else:
                (folder / MANIFEST).unlink(missing_ok=True)
        _drop_if_empty(folder)
    return entries


# -- naming ---------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A folder name for a store name: "org/repo" -> "org--repo", "qwen2-refine:1.5b" -> "qwen2-refine_1.5b"."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "--"))


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
    stored = _entries_in(root() / safe_name(model)) if model.strip() else []
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
    if existing is not None and _damage(existing, deep=True) is None:  # a damaged copy is replaced
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
            if _damage(existing, deep) is None:
                return replace(existing, reused=True)
        else:
            _raise_if_damaged(existing, target, deep=deep)
            return replace(existing, reused=True)
    return _install(target, quant, target.local, source, progress)


def _install(target: _Target, quant: str, checkpoint: Path, source: Source, progress: ConvertProgress | None) -> StoreEntry:
    """Convert ``checkpoint`` into the store, hash it, rename it into place, then record it."""
    from localaug.convert import convert_checkpoint

    folder = root() / safe_name(target.name)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{quant}.gguf"
    try:
        _check_owner(folder, target.name)
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
            with _locked(folder):
                os.replace(tmp, dest)
                data = _read_manifest(folder) or {"format": MANIFEST_FORMAT, "name": target.name, "family": None, "files": {}}
                data["family"] = entry.family
                data["files"][quant] = entry.record()
                write_json_atomic(folder / MANIFEST, data)
    except BaseException:
        _drop_if_empty(folder)  # a failed first pull leaves no empty model folder behind
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


# -- reading and checking -------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
        return data
    except (ValueError, OSError) as e:
        raise StoreError(f"the store manifest {path} is unreadable ({e}): delete {folder} and pull the model again") from e


def _entries_in(folder: Path) -> list[StoreEntry]:
    data = _read_manifest(folder)
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
                f"the store manifest {folder / MANIFEST} has a broken record for {quant} ({e}): "
                f"delete {folder} and pull the model again"
            ) from e
    return out


def _stored(name: str, quant: str) -> StoreEntry | None:
    folder = root() / safe_name(name)
    return next((e for e in _entries_in(folder) if e.name == name and e.quant == quant), None)


def _pick(target: _Target, quant: str | None) -> StoreEntry | None:
    """The stored entry to use: the asked-for quant, else the default quant, else the newest."""
    if quant is not None:
        return _stored(target.name, _quant_for(target, quant))
    entries = [e for e in _entries_in(root() / safe_name(target.name)) if e.name == target.name]
    default = _quant_for(target, None)
    return next((e for e in entries if e.quant == default), None) or max(entries, key=lambda e: e.created, default=None)


def _matching(model: str, quant: str | None) -> list[StoreEntry]:
    spec = registry.find(model)
    names = {model, spec.name} if spec else {model}
    q = quant.strip().upper() if quant else None
    return [
        e for e in list_entries()
        if (e.name in names or e.source.repo == model or e.source.path == model) and (q is None or e.quant == q)
    ]


def _damage(entry: StoreEntry, deep: bool) -> str | None:
    """What is wrong with a stored file, or None when it matches its record."""
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


def _raise_if_damaged(entry: StoreEntry, target: _Target | None, *, deep: bool) -> None:
    problem = _damage(entry, deep)
    if problem is not None:
        again = target.arg if target else (entry.source.path or entry.name)
        raise StoreError(f"{problem}: re-pull it with `localaug pull {again} --quant {entry.quant}`")


def _check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file: pass a .gguf file, a model name, a repo id or a checkpoint folder")


def _check_owner(folder: Path, name: str) -> None:
    data = _read_manifest(folder)
    if data is not None and data.get("name") != name:
        raise StoreError(
            f"the store folder {folder} already holds {data.get('name')!r}, not {name!r}: "
            "delete that folder or rename your checkpoint folder, then retry"
        )


def _drop_if_empty(folder: Path) -> None:
    """Remove a model folder that holds nothing but its lock file."""
    with contextlib.suppress(OSError):
        if not any(p.name != ".lock" for p in folder.iterdir()):
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()


def _locked(folder: Path):
    """Serialise manifest read-modify-write of a model folder between processes."""
    return locked(folder / ".lock")
