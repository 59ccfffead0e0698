"""Writing a bundle: the stored files of some models, re-hashed while they stream into the archive
so that a damaged file is never carried. The archive is written under a temporary name beside the
target and renamed when whole."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from localaug._version import __version__
from localaug.core.errors import ModelNotFoundError, StoreError, UsageError
from localaug.core.files import CHUNK, refuse_overwriting_inputs, temp_beside
from localaug.family import registry
from localaug.store.bundle.archive import BUNDLE_FORMAT, BUNDLE_MANIFEST, member_name, utc_now
from localaug.store.layout import StoreEntry, manifest_path, raise_if_damaged
from localaug.store.local import matching

if TYPE_CHECKING:
    from localaug.convert import ConvertProgress


@dataclass(frozen=True)
class ExportResult:
    path: Path
    entries: list[StoreEntry]
    size: int
    seconds: float


def export_bundle(
    models: list[str], output: Path, *, quant: str | None = None, progress: ConvertProgress | None = None
) -> ExportResult:
    """Write the stored files of ``models`` (every quant, or only ``quant``) into the tar ``output``."""
    start = time.monotonic()
    entries = _select(models, quant)
    out = Path(output).expanduser()
    if out.is_dir():
        raise UsageError(f"{out} is a folder: pass a file name for the bundle, such as {out / 'models.tar'}")
    refuse_overwriting_inputs(out, [p for e in entries for p in (e.path, manifest_path(e.path.parent))])
    for entry in entries:
        raise_if_damaged(entry, deep=False)  # cheap size check first; the sha256 is checked while copying
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
        found = matching(model, quant)
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
        "created": utc_now(),
        "localaug_version": __version__,
        "models": list(models.values()),
    }


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, int(time.time()), tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
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
