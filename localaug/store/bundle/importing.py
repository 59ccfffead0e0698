"""Importing a bundle, which trusts nothing in the archive.

Before a byte is written it refuses: a first member that is not the manifest, absolute or climbing
member names, links, devices and anything else that is not a regular file, duplicate names, members
the manifest does not list, and listed files that are missing. Then it copies every GGUF into a
staging folder inside the store root while hashing it, and only when every sha256 and size matches
renames the files into place under the store lock. Any failure removes the staging folder, so the
store is left exactly as it was. A model already stored with the same sha256 is left alone; one
stored with a different sha256 is refused unless ``force``.
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from localaug.core.errors import BundleError, LocalaugError, opt
from localaug.core.files import CHUNK, temp_beside, write_json_atomic
from localaug.store.bundle.archive import BUNDLE_FORMAT, BUNDLE_MANIFEST, member_name, utc_now
from localaug.store.layout import (
    GGUF_MAGIC,
    Source,
    StoreEntry,
    check_owner,
    damage,
    drop_if_empty,
    folder_lock,
    gguf_name,
    manifest_path,
    model_folder,
    new_manifest,
    read_manifest,
    root,
    safe_name,
    stored_entry,
)

if TYPE_CHECKING:
    from localaug.convert import ConvertProgress

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
class ImportResult:
    archive: Path
    added: list[StoreEntry] = field(default_factory=list)  # landed, new to this store
    replaced: list[StoreEntry] = field(default_factory=list)  # landed over a different copy (force)
    unchanged: list[StoreEntry] = field(default_factory=list)  # already stored with the same sha256


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
    except LocalaugError:
        raise  # the store's own errors (a StoreError, a WriteError: OSErrors too) say what to do as they are
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
    base, now, name = root(), utc_now(), archive.name
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
    if not isinstance(quant, str) or not _QUANT.fullmatch(quant) or rec["file"] != gguf_name(quant):
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
        name=name, quant=quant, path=model_folder(name, base) / gguf_name(quant), sha256=sha, size=size, source=source,
        family=family, license=rec.get("license"), created=rec.get("created") or now,
        localaug_version=rec.get("localaug_version") or "",
    )
    return BundleFile(entry, member_name(entry))


def _stored_record(entry: StoreEntry) -> StoreEntry | None:
    return stored_entry(entry.path.parent, entry.name, entry.quant)


def _same(stored: StoreEntry | None, entry: StoreEntry) -> bool:
    """The store holds this very file, intact (re-hashed: an import is rare, and it may repair)."""
    return stored is not None and stored.sha256 == entry.sha256 and damage(stored, deep=True) is None


def _check_conflicts(files: list[BundleFile], force: bool) -> None:
    for bf in files:
        folder = bf.entry.path.parent
        check_owner(folder, bf.entry.name)
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
            staged = stage / bf.folder / gguf_name(bf.entry.quant)
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
                locks.enter_context(folder_lock(folder))
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
            drop_if_empty(folder)
    return result


def _commit_folder(
    folder: Path, files: list[BundleFile], stage: Path, result: ImportResult, undo: list[Callable[[], None]]
) -> None:
    manifest = manifest_path(folder)
    data = read_manifest(folder)
    old = manifest.read_bytes() if data is not None else None
    data = data or new_manifest(files[0].entry.name, files[0].entry.family)
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
