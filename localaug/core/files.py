"""Files written whole or not at all, read back leniently, hashed, and locked between processes.

- ``temp_beside(dest)``: a fresh temporary name in ``dest``'s folder, always removed afterwards;
  the writer renames it onto ``dest`` when complete (``atomic_output`` does both), so a crash never
  leaves something that looks finished. OSErrors become one-line ``WriteError``s.
- ``write_json_atomic`` / ``read_json``: small JSON files (manifests); a missing or damaged file
  reads as None.
- ``sha256_file``: the sha256 of a file, read in 8 MiB chunks.
- ``exclusive_lock`` / ``locked``: inter-process locks through ``filelock`` (fcntl on POSIX, msvcrt
  on Windows), held by the OS, so a killed process never leaves a stale lock. The lock file stays
  after release: removing it would race a process waiting on it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from localaug.core.errors import WriteError, opt

CHUNK = 8 << 20


@contextlib.contextmanager
def temp_beside(dest: Path, param: str = "output") -> Iterator[Path]:
    """Yield a fresh temporary path in ``dest``'s folder; it is always removed afterwards.

    OSErrors raised inside the block become one-line WriteErrors (disk full named as such);
    ``param`` is the setting that chose ``dest``, named in the advice."""
    dest = Path(dest)
    parent = dest.parent
    if not parent.is_dir():
        if parent.exists():
            raise WriteError(f"output folder {parent} is a file, not a folder: pass another {opt(param)}", path=str(dest))
        raise WriteError(f"output folder {parent} does not exist: create it or pass another {opt(param)}", path=str(dest))
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise WriteError(f"cannot write in {parent}: {e.strerror}; pass a writable {opt(param)} path", path=str(dest)) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WriteError(f"disk full while writing {dest}: free space in {parent} and retry", path=str(dest)) from e
        raise WriteError(f"writing {dest} failed: {e.strerror or e}", path=str(dest)) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_output(dest: Path, param: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; it becomes ``dest`` only if the block succeeds."""
    with temp_beside(dest, param) as tmp:
        yield tmp
        os.replace(tmp, dest)


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` if no other process does; yields False (holding nothing) when one does."""
    held = FileLock(str(lock), is_singleton=False, preserve_lock_file=True)
    try:
        held.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        held.release()


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Wait for ``lock`` and hold it (serialises read-modify-write of a file between processes)."""
    with FileLock(str(lock), is_singleton=False, preserve_lock_file=True):
        yield
