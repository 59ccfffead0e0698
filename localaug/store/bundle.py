"""Model bundles: one tar archive that carries stored models into another store (an air-gapped one).

Layout (an uncompressed POSIX tar; GGUF weights do not compress)::

    localaug-bundle.json              first member: the bundle manifest (below)
    models/<safe-name>/<QUANT>.gguf   one regular file per stored GGUF, laid out as in the store

The bundle manifest holds, per model, its store name, its family entry (repo, revision, task,
prompt format) when it is a family model, and the store manifest record of every file: sha256,
size, quant, source (repo + revision + commit, or checkpoint folder), license, creation time.

Export re-hashes each stored file while streaming it into the archive, so a damaged file is never
carried; the archive is written under a temporary name beside the target and renamed when whole.

Import trusts nothing in the archive. Before a byte is written it refuses: a first member that is
not the manifest, absolute or climbing member names, links, devices and anything else that is not
a regular file, duplicate names, members the manifest does not list, and listed files that are
missing. Then it copies every GGUF into a staging folder inside the store root while hashing it,
and only when every sha256 and size matches renames the files into place under the store lock. Any
failure removes the staging folder, so the store is left exactly as it was. A model already stored
with the same sha256 is left alone; one stored with a different sha256 is refused unless ``force``.

The checksums prove the files are the ones the exporting store held (no corruption in transit);
they do not authenticate who made the bundle: import bundles from people you trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from localaug._version import __version__
from localaug.core.errors import BundleError, LocalaugError, ModelNotFoundError, StoreError, UsageError, opt
from localaug.core.files import CHUNK, refuse_overwriting_inputs, temp_beside, write_json_atomic
from localaug.family import registry
from localaug.store.local import (
    GGUF_MAGIC,
    MANIFEST,
    MANIFEST_FORMAT,
    Source,
    StoreEntry,
    _check_owner,
    _damage,
    _drop_if_empty,
    _entries_in,
    _locked,
    _matching,
    _raise_if_damaged,
    _read_manifest,
    root,
    safe_name,
)

if TYPE_CHECKING:
    from localaug.convert import ConvertProgress

BUNDLE_MANIFEST = "localaug-bundle.json"
BUNDLE_FORMAT = 1
_MAX_MANIFEST = 16 << 20
_SPARE = 64 << 20  # bytes left free after an import
_HEX64 = re.compile(r"[0-9a-f]{64}")
_QUANT = re.compile(r"[A-Z0-9_]{1,32}")
# Store names a bundle may carry: family names, repo ids, checkpoint folder names. No control
# characters, no markup, nothing that safe_name() could turn into "." or "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}")
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


@dataclass(frozen=True)
class BundleFile:
    """One GGUF a bundle carries, as its manifest describes it."""

    entry: StoreEntry  # path: where it lands in this store
    member: str  # its name inside the archive

    @property
    def folder(self) -> str:
        return self.entry.path.parent.name


@dataclass(frozen=True)
class ExportResult:
    path: Path
    entries: list[StoreEntry]
    size: int
    seconds: float


@dataclass(frozen=True)
class ImportResult:
    archive: Path
    added: list[StoreEntry] = field(default_factory=list)  # landed, new to this store
    replaced: list[StoreEntry] = field(default_factory=list)  # landed over a different copy (force)
    unchanged: list[StoreEntry] = field(default_factory=list)  # already stored with the same sha256


def member_name(entry: StoreEntry) -> str:
    return f"models/{safe_name(entry.name)}/{entry.quant}.gguf"


# -- export ---------------------------------------------------------------------------------------


def export_bundle(
    models: list[str], output: Path, *, quant: str | None = None, progress: ConvertProgress | None = None
) -> ExportResult:
    """Write the stored files of ``models`` (every quant, or only ``quant``) into the tar ``output``."""
    start = time.monotonic()
    entries = _select(models, quant)
    out = Path(output).expanduser()
    if out.is_dir():
        raise UsageError(f"{out} is a folder: pass a file name for the bundle, such as {out / 'models.tar'}")
    refuse_overwriting_inputs(out, [p for e in entries for p in (e.path, e.path.parent / MANIFEST)])
    for entry in entries:
        _raise_if_damaged(entry, None, deep=False)  # cheap size check first; the sha256 is checked while copying
    manifest = json.dumps(_manifest(entries), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    with temp_beside(out) as tmp:
        if progress:
            progress.stage(f"bundling {len(entries)} file(s)", sum(e.size for e in entries), "bytes")
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                _add_bytes(tar, BUNDLE_MANIFEST, manifest)
                for entry in entries:
                    _add_entry(tar, entry, progress)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)  # a temp file is private; a bundle is meant to be copied around
        os.replace(tmp, out)
    if progress:
        progress.finish()
    return ExportResult(out, entries, out.stat().st_size, time.monotonic() - start)


def _select(models: list[str], quant: str | None) -> list[StoreEntry]:
    if not models:
        raise UsageError("name at least one stored model to bundle: `localaug models` lists them")
    chosen: dict[tuple[str, str], StoreEntry] = {}
    for model in models:
        found = _matching(model, quant)
        if not found:
            what = f"{model} {quant.strip().upper()}" if quant else model
            raise ModelNotFoundError(
                f"{what} is not in the store: `localaug models` lists what is, `localaug pull {model}` brings it in"
            )
        for entry in found:
            chosen.setdefault((entry.name, entry.quant), entry)
    return list(chosen.values())


def _manifest(entries: list[StoreEntry]) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for entry in entries:
        model = models.setdefault(entry.name, {"name": entry.name, "family": entry.family, "files": {}})
        spec = registry.find(entry.family) if entry.family else None
        if spec is not None:
            model["registry"] = {"name": spec.name, "repo": spec.repo, "revision": spec.revision,
                                 "task": spec.task, "prompt_format": spec.prompt_format}
        model["files"][entry.quant] = entry.record()
    return {
        "format": BUNDLE_FORMAT,
        "created": _now(),
        "localaug_version": __version__,
        "models": list(models.values()),
    }


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, int(time.time()), tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


class _HashingReader:
    """A file read through: hashed, and reported to the progress bar."""

    def __init__(self, f: IO[bytes], progress: ConvertProgress | None, item: str) -> None:
        self._f, self._progress, self._item = f, progress, item
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        if self._progress and data:
            self._progress.advance(len(data), self._item)
        return data


def _add_entry(tar: tarfile.TarFile, entry: StoreEntry, progress: ConvertProgress | None) -> None:
    with open(entry.path, "rb") as f:
        reader = _HashingReader(f, progress, f"{entry.name} {entry.quant}")
        tar.addfile(_tarinfo(member_name(entry), entry.size), reader)  # type: ignore[arg-type]
    digest = reader.sha.hexdigest()
    if digest != entry.sha256:
        raise StoreError(
            f"{entry.path} fails its sha256 check (recorded {entry.sha256[:12]}…, found {digest[:12]}…), so no "
            f"bundle was written: re-pull it with `localaug pull {entry.source.path or entry.name} --quant {entry.quant}`"
        )


# -- import ---------------------------------------------------------------------------------------


def import_bundle(archive: Path, *, force: bool = False, progress: ConvertProgress | None = None) -> ImportResult:
    """Bring every model of the bundle ``archive`` into the store, all or nothing (see the module doc)."""
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise BundleError(f"{archive} does not exist: pass the .tar file written by `localaug bundle export`")
    _refuse_compressed(archive)
    try:
        with tarfile.open(archive, "r:") as tar:
            files, members = _plan(archive, tar)
            _check_conflicts(files, force)
            return _land(archive, tar, files, members, force, progress)
    except tarfile.TarError as e:
        detail = " ".join(str(e).split())  # tarfile's messages may span lines
        raise BundleError(
            f"{archive} is not a readable bundle ({detail}): copy it again or export it again with `localaug bundle export`"
        ) from e
    except OSError as e:
        raise BundleError(
            f"importing {archive} failed ({e.strerror or e}); the store is unchanged: fix that and retry"
        ) from e


# Magic bytes of compressed archives: a bundle is a plain tar (GGUF weights do not compress), and a
# compressed one could expand far beyond its size on disk before any check.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def _refuse_compressed(archive: Path) -> None:
    with open(archive, "rb") as f:
        head = f.read(8)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise BundleError(f"{archive} is {kind}-compressed: import the plain .tar that `localaug bundle export` "
                              "writes (decompress it first)", path=str(archive))


class _UndoFailed(BundleError):
    """A failed import whose changes could not all be rolled back (the stage is kept for recovery)."""


def _refuse(archive: Path, problem: str) -> BundleError:
    return BundleError(f"{archive} {problem}: refusing the whole bundle, nothing was imported; export it again")


def _plan(archive: Path, tar: tarfile.TarFile) -> tuple[list[BundleFile], dict[str, tarfile.TarInfo]]:
    """Read and check the manifest and every member header; nothing is written yet."""
    members = tar.getmembers()  # headers only: an uncompressed tar is seeked through, not read
    if not members or members[0].name != BUNDLE_MANIFEST:
        raise BundleError(
            f"{archive} is not a localaug bundle (no {BUNDLE_MANIFEST} first): pass a file written by `localaug bundle export`"
        )
    head = members[0]
    if head.type not in _REGULAR or head.size > _MAX_MANIFEST:
        raise _refuse(archive, f"has a malformed {BUNDLE_MANIFEST}")
    f = tar.extractfile(head)
    assert f is not None
    try:
        data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else e
        raise _refuse(archive, f"has an unreadable {BUNDLE_MANIFEST} ({reason})") from None
    files = _files_from_manifest(archive, data)
    expected = {bf.member: bf for bf in files}
    seen: dict[str, tarfile.TarInfo] = {}
    for m in members[1:]:
        problem = _member_problem(m, expected, seen)
        if problem:
            raise _refuse(archive, f"holds {m.name!r}, {problem}")
        seen[m.name] = m
    missing = [name for name in expected if name not in seen]
    if missing:
        raise _refuse(archive, f"is incomplete: {missing[0]} is listed in its manifest but missing")
    return files, seen


def _member_problem(m: tarfile.TarInfo, expected: dict[str, BundleFile], seen: dict[str, tarfile.TarInfo]) -> str | None:
    name = m.name
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a path that leaves its folder"
    if m.issym() or m.islnk():
        return "a link"
    if m.type not in _REGULAR:
        return "not a regular file (a folder, device or FIFO)"
    if m.issparse():
        return "a sparse file (it would expand beyond its size in the archive)"
    if name in seen or name == BUNDLE_MANIFEST:
        return "a duplicate member"
    if name not in expected:
        return "a member its manifest does not list"
    if m.size != expected[name].entry.size:
        return f"{m.size} bytes where its manifest says {expected[name].entry.size}"
    return None


def _files_from_manifest(archive: Path, data: Any) -> list[BundleFile]:
    """The manifest's records as store entries of this store, checked field by field."""
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT or not isinstance(data.get("models"), list):
        raise _refuse(archive, f"has a {BUNDLE_MANIFEST} of an unknown format (this localaug reads format {BUNDLE_FORMAT})")
    if not data["models"]:
        raise _refuse(archive, "holds no models")
    base, now, name = root(), _now(), archive.name
    files: list[BundleFile] = []
    folders: set[str] = set()
    for model in data["models"]:
        try:
            files += [_file_from_record(base, model, quant, rec, name, now) for quant, rec in model["files"].items()]
            if not model["files"] or safe_name(model["name"]) in folders:
                raise ValueError(f"{model['name']!r} is listed twice (or under a name with the same folder) or with no files")
            folders.add(safe_name(model["name"]))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise _refuse(archive, f"has a broken manifest entry ({type(e).__name__}: {e})") from e
    return files


def _file_from_record(base: Path, model: dict[str, Any], quant: str, rec: dict[str, Any], bundle: str, now: str) -> BundleFile:
    name, family = model["name"], model.get("family")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or safe_name(name).startswith("."):
        raise ValueError(f"model name {name!r} is not allowed")
    if not isinstance(quant, str) or not _QUANT.fullmatch(quant) or rec["file"] != f"{quant}.gguf":
        raise ValueError(f"file {rec.get('file')!r} of quant {quant!r} is not allowed")
    sha, size = rec["sha256"], rec["size"]
    if not (isinstance(sha, str) and _HEX64.fullmatch(sha)) or not (isinstance(size, int) and size >= 0):
        raise ValueError(f"bad sha256 or size for {name} {quant}")
    for key in ("license", "created", "localaug_version"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ValueError(f"{key} of {name} {quant} is not a string")
    if family is not None and not isinstance(family, str):
        raise ValueError(f"family of {name} is not a string")
    source = replace(Source.from_record(rec.get("source") or {}), bundle=bundle, imported=now)
    entry = StoreEntry(
        name=name, quant=quant, path=base / safe_name(name) / f"{quant}.gguf", sha256=sha, size=size, source=source,
        family=family, license=rec.get("license"), created=rec.get("created") or now,
        localaug_version=rec.get("localaug_version") or "",
    )
    return BundleFile(entry, member_name(entry))


def _stored_record(entry: StoreEntry) -> StoreEntry | None:
    return next((e for e in _entries_in(entry.path.parent) if e.name == entry.name and e.quant == entry.quant), None)


def _same(stored: StoreEntry | None, entry: StoreEntry) -> bool:
    """The store holds this very file, intact (re-hashed: an import is rare, and it may repair)."""
    return stored is not None and stored.sha256 == entry.sha256 and _damage(stored, deep=True) is None


def _check_conflicts(files: list[BundleFile], force: bool) -> None:
    for bf in files:
        folder = bf.entry.path.parent
        _check_owner(folder, bf.entry.name)
        stored = _stored_record(bf.entry)
        if stored is not None and stored.sha256 != bf.entry.sha256 and not force:
            raise BundleError(
                f"{bf.entry.name} {bf.entry.quant} is already in the store with another sha256 "
                f"({stored.sha256[:12]}…, the bundle has {bf.entry.sha256[:12]}…): pass {opt('force')} to replace it"
            )


def _land(
    archive: Path, tar: tarfile.TarFile, files: list[BundleFile], members: dict[str, tarfile.TarInfo],
    force: bool, progress: ConvertProgress | None,
) -> ImportResult:
    base = root()
    need = sum(bf.entry.size for bf in files)
    free = shutil.disk_usage(next(p for p in (base, *base.parents) if p.exists())).free
    if need + _SPARE > free:
        raise BundleError(f"{archive} needs {need} bytes and {base} has {free} free: free space and import again",
                          path=str(archive))
    made = _mkdirs(base)
    stage = Path(tempfile.mkdtemp(dir=base, prefix=".bundle-import-"))
    try:
        if progress:
            progress.stage(f"verifying {archive.name}", sum(bf.entry.size for bf in files), "bytes")
        # In archive order, so an uncompressed tar is read front to back once.
        for bf in sorted(files, key=lambda bf: members[bf.member].offset_data):
            src = tar.extractfile(members[bf.member])
            assert src is not None
            staged = stage / bf.folder / f"{bf.entry.quant}.gguf"
            staged.parent.mkdir(exist_ok=True)
            digest = _copy_hashing(src, staged, progress, f"{bf.entry.name} {bf.entry.quant}", bf.entry.size)
            if digest != bf.entry.sha256:
                raise _refuse(archive, f"is damaged: {bf.member} fails its sha256 check "
                                       f"(the manifest says {bf.entry.sha256[:12]}…, the file is {digest[:12]}…)")
            with open(staged, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    raise _refuse(archive, f"holds {bf.member}, which is not a GGUF file")
        if progress:
            progress.finish()
        result = _commit(archive, files, stage, force)
    except _UndoFailed:
        raise  # the stage holds the files that could not be put back: keep it
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made is not None:
            _rmdirs(base, made)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return result


def _copy_hashing(src: IO[bytes], dest: Path, progress: ConvertProgress | None, item: str, limit: int) -> str:
    """Copy at most ``limit`` bytes (the size the manifest declares) while hashing them."""
    sha = hashlib.sha256()
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise BundleError(f"{item} holds more than the {limit} bytes its manifest declares: refusing the bundle")
            sha.update(chunk)
            out.write(chunk)
            if progress:
                progress.advance(len(chunk), item)
        out.flush()
        os.fsync(out.fileno())
    return sha.hexdigest()


def _commit(archive: Path, files: list[BundleFile], stage: Path, force: bool) -> ImportResult:
    """Rename the staged files into place, all under their folders' locks; undo everything on failure."""
    result = ImportResult(archive)
    undo: list[Callable[[], None]] = []
    folders = sorted({bf.entry.path.parent for bf in files})
    created = [folder for folder in folders if not folder.exists()]
    try:
        with contextlib.ExitStack() as locks:
            for folder in folders:  # sorted: two imports never wait on each other crosswise
                folder.mkdir(exist_ok=True)
                locks.enter_context(_locked(folder))
            _check_conflicts(files, force)  # again, now that nobody else can change these folders
            try:
                for folder in folders:
                    here = [bf for bf in files if bf.entry.path.parent == folder]
                    _commit_folder(folder, here, stage, result, undo)
            except BaseException as e:
                failed = []
                for fn in reversed(undo):
                    try:
                        fn()
                    except (OSError, LocalaugError) as why:
                        failed.append(why)
                if failed:
                    raise _UndoFailed(
                        f"importing {archive} failed ({e}) and could not be fully undone ({failed[0]}): "
                        f"the files it replaced are kept in {stage}; put them back by hand, then run `localaug models`"
                    ) from e
                raise
    finally:
        for folder in created:
            _drop_if_empty(folder)
    return result


def _commit_folder(
    folder: Path, files: list[BundleFile], stage: Path, result: ImportResult, undo: list[Callable[[], None]]
) -> None:
    manifest = folder / MANIFEST
    data = _read_manifest(folder)
    old = manifest.read_bytes() if data is not None else None
    data = data or {"format": MANIFEST_FORMAT, "name": files[0].entry.name, "family": files[0].entry.family, "files": {}}
    changed = False
    for bf in files:
        entry, dest = bf.entry, bf.entry.path
        stored = _stored_record(entry)
        if _same(stored, entry):
            result.unchanged.append(stored)  # type: ignore[arg-type]
            continue
        if dest.exists():
            backup = stage / ".replaced" / bf.folder / dest.name
            backup.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest, backup)
            undo.append(lambda dest=dest, backup=backup: os.replace(backup, dest))
        os.replace(stage / bf.folder / dest.name, dest)
        undo.append(lambda dest=dest: dest.unlink(missing_ok=True))
        data["files"][entry.quant] = entry.record()
        data["family"] = data.get("family") or entry.family
        (result.replaced if stored is not None else result.added).append(entry)
        changed = True
    if changed:
        write_json_atomic(manifest, data)  # whole or not at all: undo only what was written
        undo.append(_restorer(manifest, old))


def _restorer(manifest: Path, old: bytes | None) -> Callable[[], None]:
    def restore() -> None:
        if old is None:
            manifest.unlink(missing_ok=True)
            return
        with temp_beside(manifest) as tmp:
            tmp.write_bytes(old)
            os.replace(tmp, manifest)

    return restore


def _mkdirs(path: Path) -> Path | None:
    """Create ``path`` and its missing parents; return the topmost folder created (None: it existed)."""
    top = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        top = p
    path.mkdir(parents=True, exist_ok=True)
    return top


def _rmdirs(path: Path, top: Path) -> None:
    """Remove the empty folders from ``path`` up to ``top``, as _mkdirs created them."""
    for p in [path, *path.parents]:
        with contextlib.suppress(OSError):
            p.rmdir()
        if p == top:
            break


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

